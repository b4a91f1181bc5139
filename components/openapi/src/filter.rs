//! Cuts an upstream group-version document down to what the server serves: the paths of its
//! resources and subresources, and the schemas those paths and kinds reference (transitively).

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::{OpenApiError, ServedKind};

/// Prefix of `$ref`s to component schemas in a v3 document.
pub const V3_SCHEMA_REF: &str = "#/components/schemas/";

/// Whether the upstream path `path` (under `prefix`, e.g. `/apis/apps/v1`) belongs to a served
/// resource (or subresource) of `kinds` (all of one group-version).
fn path_is_served(prefix: &str, path: &str, kinds: &[&ServedKind]) -> bool {
    let Some(rest) = path.strip_prefix(prefix) else {
        return false;
    };
    let mut segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    if segs.is_empty() {
        // The group-version root (`GET /apis/apps/v1/`: its APIResourceList).
        return true;
    }
    if segs[0] == "watch" {
        segs.remove(0);
    }
    let in_namespace = segs.len() >= 3 && segs[0] == "namespaces" && segs[1] == "{namespace}";
    let rest = if in_namespace { &segs[2..] } else { &segs[..] };
    let Some(resource) = rest.first() else {
        return false;
    };
    let Some(kind) = kinds.iter().find(|k| k.resource == *resource) else {
        return false;
    };
    if in_namespace && !kind.namespaced {
        return false;
    }
    match rest.get(2) {
        None => true,
        Some(sub) => kind.subresources.iter().any(|s| s == sub),
    }
}

/// Every component-schema name `value` references.
pub fn collect_refs(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    if let Some(name) = v.as_str().and_then(|r| r.strip_prefix(prefix)) {
                        out.insert(name.to_string());
                    }
                } else {
                    collect_refs(v, prefix, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, prefix, out)),
        _ => {}
    }
}

/// Whether a schema's `x-kubernetes-group-version-kind` names `kind`.
pub fn schema_has_gvk(schema: &Value, group: &str, version: &str, kind: &str) -> bool {
    schema["x-kubernetes-group-version-kind"]
        .as_array()
        .is_some_and(|gvks| {
            gvks.iter()
                .any(|g| g["group"] == group && g["version"] == version && g["kind"] == kind)
        })
}

/// The filtered document of one group-version (`key` is `api/v1` or `apis/<g>/<v>`).
pub fn served_document(
    key: &str,
    mut doc: Value,
    kinds: &[&ServedKind],
) -> Result<Value, OpenApiError> {
    let prefix = format!("/{key}");
    let paths: Map<String, Value> = doc["paths"]
        .as_object()
        .map(|paths| {
            paths
                .iter()
                .filter(|(p, _)| path_is_served(&prefix, p, kinds))
                .map(|(p, v)| (p.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let schemas = doc["components"]["schemas"]
        .as_object()
        .cloned()
        .unwrap_or_default();

    // Roots: everything the kept paths mention, plus each served kind's own schema.
    let mut wanted = BTreeSet::new();
    collect_refs(&Value::Object(paths.clone()), V3_SCHEMA_REF, &mut wanted);
    for kind in kinds {
        let (name, _) = schemas
            .iter()
            .find(|(_, s)| schema_has_gvk(s, &kind.group, &kind.version, &kind.kind))
            .ok_or_else(|| OpenApiError::KindMissing {
                group_version: key.to_string(),
                kind: kind.kind.clone(),
            })?;
        wanted.insert(name.clone());
    }
    // Transitive closure over the schemas' own references.
    let mut kept = Map::new();
    let mut queue: Vec<String> = wanted.into_iter().collect();
    while let Some(name) = queue.pop() {
        if kept.contains_key(&name) {
            continue;
        }
        let schema = schemas
            .get(&name)
            .ok_or_else(|| OpenApiError::DanglingReference {
                group_version: key.to_string(),
                reference: name.clone(),
            })?;
        let mut refs = BTreeSet::new();
        collect_refs(schema, V3_SCHEMA_REF, &mut refs);
        queue.extend(refs.into_iter().filter(|r| !kept.contains_key(r)));
        kept.insert(name, schema.clone());
    }
    doc["paths"] = Value::Object(paths);
    doc["components"]["schemas"] = Value::Object(kept);
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(resource: &str, namespaced: bool, subs: &[&str]) -> ServedKind {
        ServedKind {
            group: "apps".into(),
            version: "v1".into(),
            kind: "Deployment".into(),
            resource: resource.into(),
            namespaced,
            subresources: subs.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn paths_of_served_resources_and_subresources_only() {
        let d = kind("deployments", true, &["status", "scale"]);
        let kinds = [&d];
        let p = "/apis/apps/v1";
        for served in [
            "/apis/apps/v1/",
            "/apis/apps/v1/deployments",
            "/apis/apps/v1/namespaces/{namespace}/deployments",
            "/apis/apps/v1/namespaces/{namespace}/deployments/{name}",
            "/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale",
            "/apis/apps/v1/watch/namespaces/{namespace}/deployments/{name}",
        ] {
            assert!(path_is_served(p, served, &kinds), "{served}");
        }
        for not_served in [
            "/apis/apps/v1/daemonsets",
            "/apis/apps/v1/namespaces/{namespace}/deployments/{name}/rollback",
            "/apis/batch/v1/jobs",
        ] {
            assert!(!path_is_served(p, not_served, &kinds), "{not_served}");
        }
        // A cluster-scoped resource whose name happens to follow `namespaces/`.
        let ns = kind("namespaces", false, &["status", "finalize"]);
        let kinds = [&ns];
        assert!(path_is_served(
            "/api/v1",
            "/api/v1/namespaces/{name}",
            &kinds
        ));
        assert!(path_is_served(
            "/api/v1",
            "/api/v1/namespaces/{name}/finalize",
            &kinds
        ));
        assert!(!path_is_served(
            "/api/v1",
            "/api/v1/namespaces/{namespace}/pods",
            &kinds
        ));
    }
}
