//! API discovery (aggregated v2 and legacy), `/version`, and a minimal OpenAPI v3 that lets
//! kubectl delegate validation to the server.

use serde_json::{json, Value};

use crate::registry::{self, ResourceDef};

/// The Kubernetes version this server speaks (the k8s-openapi feature it is built with).
pub const KUBERNETES_VERSION: &str = "v1.33.0";

/// Content type of aggregated discovery responses.
pub const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether the client asked for aggregated discovery v2.
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let p: Vec<&str> = part.split(';').map(str::trim).collect();
        p.contains(&"g=apidiscovery.k8s.io")
            && p.contains(&"v=v2")
            && p.contains(&"as=APIGroupDiscoveryList")
    })
}

/// `/version`.
pub fn version() -> Value {
    let (major, minor) = {
        let v = KUBERNETES_VERSION.trim_start_matches('v');
        let mut it = v.split('.');
        (
            it.next().unwrap_or("1").to_string(),
            it.next().unwrap_or("0").to_string(),
        )
    };
    json!({
        "major": major,
        "minor": minor,
        "gitVersion": format!("{KUBERNETES_VERSION}+kinit"),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, goarch()),
        "kinitVersion": env!("CARGO_PKG_VERSION"),
    })
}

fn goarch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn scope(def: &ResourceDef) -> &'static str {
    if def.namespaced {
        "Namespaced"
    } else {
        "Cluster"
    }
}

fn aggregated_resource(def: &ResourceDef) -> Value {
    let subresources: Vec<Value> = def
        .subresources
        .iter()
        .map(|s| {
            json!({
                "subresource": s.name,
                "responseKind": {"group": s.group, "version": s.version, "kind": s.kind},
                "verbs": s.verbs,
            })
        })
        .collect();
    let mut r = json!({
        "resource": def.resource,
        "responseKind": {"group": def.group, "version": def.version, "kind": def.kind},
        "scope": scope(def),
        "singularResource": def.singular,
        "verbs": def.verbs,
    });
    if !def.short_names.is_empty() {
        r["shortNames"] = json!(def.short_names);
    }
    if !def.categories.is_empty() {
        r["categories"] = json!(def.categories);
    }
    if !subresources.is_empty() {
        r["subresources"] = json!(subresources);
    }
    r
}

fn aggregated_group(group: &str, versions: &[&str]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| {
            let resources: Vec<Value> = registry::resources_of(group, v)
                .map(aggregated_resource)
                .collect();
            json!({"version": v, "resources": resources, "freshness": "Current"})
        })
        .collect();
    let mut g = json!({"metadata": {"creationTimestamp": null}, "versions": versions});
    if !group.is_empty() {
        g["metadata"]["name"] = json!(group);
    }
    g
}

/// Aggregated discovery for `/api` (`legacy` = true) or `/apis`.
pub fn aggregated(legacy: bool) -> Value {
    let items: Vec<Value> = registry::groups()
        .into_iter()
        .filter(|(g, _)| g.is_empty() == legacy)
        .map(|(g, versions)| aggregated_group(g, &versions))
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

/// Legacy `/api`.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_entry(group: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({
        "name": group,
        "versions": vs,
        "preferredVersion": {"groupVersion": format!("{group}/{}", versions[0]), "version": versions[0]},
    })
}

/// Legacy `/apis`.
pub fn api_group_list() -> Value {
    let groups: Vec<Value> = registry::groups()
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, versions)| group_entry(g, &versions))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// Legacy `/apis/<group>`, if served.
pub fn api_group(group: &str) -> Option<Value> {
    registry::groups()
        .into_iter()
        .find(|(g, _)| *g == group && !g.is_empty())
        .map(|(g, versions)| {
            let mut e = group_entry(g, &versions);
            e["kind"] = json!("APIGroup");
            e["apiVersion"] = json!("v1");
            e
        })
}

/// Legacy `/api/v1` or `/apis/<group>/<version>`, if served.
pub fn api_resource_list(group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for def in registry::resources_of(group, version) {
        let mut r = json!({
            "name": def.resource,
            "singularName": def.singular,
            "namespaced": def.namespaced,
            "kind": def.kind,
            "verbs": def.verbs,
        });
        if !def.short_names.is_empty() {
            r["shortNames"] = json!(def.short_names);
        }
        if !def.categories.is_empty() {
            r["categories"] = json!(def.categories);
        }
        resources.push(r);
        for s in def.subresources {
            let mut sr = json!({
                "name": format!("{}/{}", def.resource, s.name),
                "singularName": "",
                "namespaced": def.namespaced,
                "kind": s.kind,
                "verbs": s.verbs,
            });
            if s.group != def.group || s.version != def.version {
                sr["group"] = json!(s.group);
                sr["version"] = json!(s.version);
            }
            resources.push(sr);
        }
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

fn openapi_key(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: the index of per group-version documents.
pub fn openapi_index() -> Value {
    let mut paths = serde_json::Map::new();
    for (g, versions) in registry::groups() {
        for v in versions {
            let key = openapi_key(g, v);
            paths.insert(
                key.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={}", openapi_hash(g, v))}),
            );
        }
    }
    json!({ "paths": paths })
}

fn openapi_hash(group: &str, version: &str) -> String {
    // Stable per binary: the document only changes with the registry.
    let doc = openapi_document(group, version)
        .map(|d| d.to_string())
        .unwrap_or_default();
    let mut h: u64 = 0xcbf29ce484222325;
    for b in doc.bytes().chain(env!("CARGO_PKG_VERSION").bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016X}")
}

/// `/openapi/v3/<api/v1 | apis/g/v>`: one PATCH operation per kind carrying
/// `x-kubernetes-group-version-kind` and the `fieldValidation` parameter, so kubectl validates
/// server-side. Schemas are open objects (the server is the validator).
pub fn openapi_document(group: &str, version: &str) -> Option<Value> {
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    let prefix = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    for def in registry::resources_of(group, version) {
        let schema_name = format!(
            "io.k8s.api.{}.{}.{}",
            if group.is_empty() {
                "core"
            } else {
                group.split('.').next().unwrap_or(group)
            },
            version,
            def.kind
        );
        schemas.insert(
            schema_name.clone(),
            json!({
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": true,
                "x-kubernetes-group-version-kind": [{"group": group, "version": version, "kind": def.kind}],
            }),
        );
        let gvk = json!({"group": group, "version": version, "kind": def.kind});
        let path = if def.namespaced {
            format!(
                "{prefix}/namespaces/{{namespace}}/{}/{{name}}",
                def.resource
            )
        } else {
            format!("{prefix}/{}/{{name}}", def.resource)
        };
        let schema_ref = json!({"$ref": format!("#/components/schemas/{schema_name}")});
        let mut params = vec![
            json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string", "uniqueItems": true}}),
            json!({"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}}),
            json!({"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}}),
            json!({"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}}),
            json!({"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}}),
        ];
        if def.namespaced {
            params.push(json!({"name": "namespace", "in": "path", "required": true, "schema": {"type": "string", "uniqueItems": true}}));
        }
        // kubectl looks for `fieldValidation` among the PATCH operation's own parameters.
        let op = |verb: &str| {
            json!({
                "operationId": format!("{verb}{}", def.kind),
                "parameters": params,
                "x-kubernetes-action": verb,
                "x-kubernetes-group-version-kind": gvk,
                "requestBody": {"content": {
                    "application/json-patch+json": {"schema": {"type": "object"}},
                    "application/merge-patch+json": {"schema": {"type": "object"}},
                    "application/apply-patch+yaml": {"schema": {"type": "object"}},
                }, "required": true},
                "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": schema_ref}}}},
            })
        };
        paths.insert(
            path,
            json!({
                "get": {"operationId": format!("read{}", def.kind), "x-kubernetes-action": "get", "x-kubernetes-group-version-kind": gvk,
                        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": schema_ref}}}}},
                "patch": op("patch"),
            }),
        );
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": KUBERNETES_VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregated_discovery_has_required_fields() {
        let core = aggregated(true);
        assert_eq!(core["kind"], "APIGroupDiscoveryList");
        let v1 = &core["items"][0]["versions"][0];
        assert_eq!(v1["version"], "v1");
        let pods = v1["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "pods")
            .unwrap();
        assert_eq!(pods["responseKind"]["kind"], "Pod");
        assert_eq!(pods["scope"], "Namespaced");
        assert_eq!(pods["categories"][0], "all");
        assert!(pods["subresources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["subresource"] == "eviction" && s["responseKind"]["group"] == "policy"));
        let apis = aggregated(false);
        assert!(apis["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["metadata"]["name"] == "apps"));
    }

    #[test]
    fn accept_header_detection() {
        assert!(wants_aggregated("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"));
        assert!(!wants_aggregated("application/json"));
    }

    #[test]
    fn legacy_lists_eviction_and_scale() {
        let v1 = api_resource_list("", "v1").unwrap();
        let ev = v1["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "pods/eviction")
            .unwrap();
        assert_eq!(ev["group"], "policy");
        assert_eq!(ev["kind"], "Eviction");
        let apps = api_resource_list("apps", "v1").unwrap();
        assert!(apps["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "deployments/scale" && r["group"] == "autoscaling"));
        assert!(api_resource_list("nope", "v1").is_none());
        assert_eq!(
            api_group("apps").unwrap()["preferredVersion"]["version"],
            "v1"
        );
    }

    #[test]
    fn openapi_has_patch_with_field_validation() {
        let doc = openapi_document("apps", "v1").unwrap();
        let p = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"];
        assert_eq!(
            p["patch"]["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        assert!(p["patch"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == "fieldValidation" && x["in"] == "query"));
        let idx = openapi_index();
        assert!(idx["paths"]["api/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap()
            .starts_with("/openapi/v3/api/v1?hash="));
        assert!(version()["gitVersion"].as_str().unwrap().starts_with("v1."));
    }
}
