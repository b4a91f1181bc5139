//! API discovery (aggregated v2 and legacy), `/version`, and the OpenAPI v2/v3 documents of
//! the served kinds (Kubernetes' own schemas, from `kinit-openapi`).

use serde_json::{json, Value};

use crate::error::ApiError;
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

/// The served resources as the OpenAPI builder needs them.
fn openapi_served_kinds() -> Vec<kinit_openapi::ServedKind> {
    registry::RESOURCES
        .iter()
        .map(|def| kinit_openapi::ServedKind {
            group: def.group.to_string(),
            version: def.version.to_string(),
            kind: def.kind.to_string(),
            resource: def.resource.to_string(),
            namespaced: def.namespaced,
            subresources: def
                .subresources
                .iter()
                .map(|s| s.name.to_string())
                .collect(),
        })
        .collect()
}

/// The OpenAPI documents of the resource table, built on first use and kept in memory.
fn openapi_documents() -> Result<&'static kinit_openapi::OpenApi, ApiError> {
    static DOCUMENTS: std::sync::OnceLock<Result<kinit_openapi::OpenApi, String>> =
        std::sync::OnceLock::new();
    DOCUMENTS
        .get_or_init(|| {
            kinit_openapi::OpenApi::new(&openapi_served_kinds()).map_err(|e| {
                tracing::error!(error = %e, "building the OpenAPI documents failed");
                e.to_string()
            })
        })
        .as_ref()
        .map_err(|e| ApiError::internal(format!("OpenAPI documents are unavailable: {e}")))
}

/// `/openapi/v3`: the index of per group-version documents.
pub fn openapi_index() -> Value {
    match openapi_documents() {
        Ok(docs) => docs.v3_index("/openapi/v3"),
        Err(_) => json!({"paths": {}}),
    }
}

/// `/openapi/v3/<api/v1 | apis/g/v>` as JSON: Kubernetes' own schemas of the served kinds and
/// the operations on their paths.
pub fn openapi_document(group: &str, version: &str) -> Option<Value> {
    let doc = openapi_documents().ok()?.v3_document(group, version)?;
    serde_json::from_slice(doc.json()).ok()
}

/// Whether `If-None-Match` already names `etag`.
fn openapi_not_modified(headers: &http::HeaderMap, etag: &str) -> bool {
    headers
        .get_all(http::header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

/// Whether `Accept` allows JSON (absent, `*/*`, `application/*`, `application/json`).
fn openapi_accepts_json(headers: &http::HeaderMap) -> bool {
    let accept = headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    accept.trim().is_empty()
        || accept.split(',').any(|part| {
            let media = part.split(';').next().unwrap_or("").trim();
            matches!(media, "*/*" | "application/*" | "application/json")
        })
}

/// A document response as kube-apiserver sends it: `ETag`, `304` on a matching
/// `If-None-Match`, and immutable caching when the URL carries the document's hash.
fn openapi_document_response(
    doc: &kinit_openapi::Document,
    headers: &http::HeaderMap,
    immutable: bool,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let etag = doc.etag();
    let mut builder = http::Response::builder()
        .header(http::header::ETAG, &etag)
        .header(http::header::VARY, "Accept");
    if immutable {
        let expires = time::OffsetDateTime::now_utc() + time::Duration::days(365);
        let format = time::macros::format_description!(
            "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
        );
        builder = builder.header(http::header::CACHE_CONTROL, "public, immutable");
        if let Ok(expires) = expires.format(&format) {
            builder = builder.header(http::header::EXPIRES, expires);
        }
    } else {
        builder = builder.header(http::header::CACHE_CONTROL, "no-cache, private");
    }
    let response = if openapi_not_modified(headers, &etag) {
        builder
            .status(http::StatusCode::NOT_MODIFIED)
            .body(axum::body::Body::empty())
    } else {
        builder
            .status(http::StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(doc.json().to_vec()))
    };
    response.unwrap_or_else(|e| {
        ApiError::internal(format!("building the OpenAPI response failed: {e}")).into_response()
    })
}

/// Serves `/openapi/v2` and `/openapi/v3[/<api/v1 | apis/g/v>]`; `segs` are the path segments
/// after `openapi`, `query` the raw query string.
pub fn openapi_response(
    path: &str,
    segs: &[&str],
    headers: &http::HeaderMap,
    query: Option<&str>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let docs = openapi_documents()?;
    if !openapi_accepts_json(headers) {
        return Ok((
            http::StatusCode::NOT_ACCEPTABLE,
            [(http::header::CONTENT_TYPE, "text/plain")],
            format!(
                "{path} is served as application/json only (the protobuf forms {} and {} are not supported); ask for application/json",
                kinit_openapi::V2_PROTOBUF_MEDIA_TYPE,
                kinit_openapi::V3_PROTOBUF_MEDIA_TYPE
            ),
        )
            .into_response());
    }
    let (group, version) = match segs {
        ["v2"] => return Ok(openapi_document_response(docs.v2(), headers, false)),
        ["v3"] => {
            let index = serde_json::to_vec(&docs.v3_index("/openapi/v3"))
                .map_err(|e| ApiError::internal(format!("encoding the OpenAPI v3 index: {e}")))?;
            return Ok((
                http::StatusCode::OK,
                [(http::header::CONTENT_TYPE, "application/json")],
                index,
            )
                .into_response());
        }
        ["v3", "api", v] => ("", *v),
        ["v3", "apis", g, v] => (*g, *v),
        _ => return Err(ApiError::path_not_found(path)),
    };
    let doc = docs
        .v3_document(group, version)
        .ok_or_else(|| ApiError::path_not_found(path))?;
    let requested_hash = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("hash="));
    match requested_hash {
        // A stale hash: send the client to the current document, as kube-apiserver does.
        Some(hash) if hash != doc.hash() => {
            let location = format!("{path}?hash={}", doc.hash());
            Ok((
                http::StatusCode::MOVED_PERMANENTLY,
                [(http::header::LOCATION, location)],
            )
                .into_response())
        }
        Some(_) => Ok(openapi_document_response(doc, headers, true)),
        None => Ok(openapi_document_response(doc, headers, false)),
    }
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
