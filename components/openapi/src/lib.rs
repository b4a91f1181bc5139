//! OpenAPI v2 and v3 documents for the kinds the API server serves.
//!
//! The schemas are Kubernetes' own (v1.33, vendored in `data/`): descriptions, `required`,
//! formats, `x-kubernetes-group-version-kind`, strategic-merge `x-kubernetes-patch-strategy` /
//! `x-kubernetes-patch-merge-key`, list types and int-or-string, exactly as upstream publishes
//! them; nothing is hand-written. [`OpenApi::new`] cuts each served group-version's upstream
//! document down to the served resources and the definitions they reference, derives the
//! Swagger 2.0 document from the result, and hashes each document once; the server then serves
//! the bytes from memory.

#![warn(missing_docs)]

mod filter;
mod v2;
mod vendored;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};
use sha2::{Digest, Sha512};

pub use vendored::KUBERNETES_RELEASE;

/// Media type of the protobuf form of `/openapi/v2` (client-go's `OpenAPISchema` asks for it).
pub const V2_PROTOBUF_MEDIA_TYPE: &str =
    "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";

/// Media type of the protobuf form of the v3 documents.
pub const V3_PROTOBUF_MEDIA_TYPE: &str =
    "application/com.github.proto-openapi.spec.v3@v1.0+protobuf";

/// One served resource, as the API server's resource table describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedKind {
    /// API group (`""` for core).
    pub group: String,
    /// Version (`v1`).
    pub version: String,
    /// Kind (`Deployment`).
    pub kind: String,
    /// Plural resource name (`deployments`).
    pub resource: String,
    /// Namespace-scoped or cluster-scoped.
    pub namespaced: bool,
    /// Served subresources (`status`, `scale`, `log`, …).
    pub subresources: Vec<String>,
}

/// Why the documents could not be built (only possible if the vendored data is damaged).
#[derive(Debug, thiserror::Error)]
pub enum OpenApiError {
    /// The server serves a group-version no vendored document covers.
    #[error("no vendored Kubernetes {KUBERNETES_RELEASE} OpenAPI document for {group_version}: vendor the upstream file into components/openapi/data")]
    NotVendored {
        /// `api/v1` or `apis/<group>/<version>`.
        group_version: String,
    },
    /// A vendored document did not decompress.
    #[error(
        "vendored OpenAPI document {group_version} does not decompress ({source}); re-vendor it"
    )]
    Decompress {
        /// `api/v1` or `apis/<group>/<version>`.
        group_version: String,
        /// The decoder's error.
        source: std::io::Error,
    },
    /// A vendored document is not JSON.
    #[error(
        "vendored OpenAPI document {group_version} is not valid JSON ({source}); re-vendor it"
    )]
    Parse {
        /// `api/v1` or `apis/<group>/<version>`.
        group_version: String,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A served kind has no schema in its group-version's document.
    #[error("the OpenAPI document {group_version} has no schema for served kind {kind}: vendor a document of the release that defines it")]
    KindMissing {
        /// `api/v1` or `apis/<group>/<version>`.
        group_version: String,
        /// The kind.
        kind: String,
    },
    /// A schema references a definition the document lacks.
    #[error("the OpenAPI document {group_version} references {reference}, which it does not define; re-vendor it")]
    DanglingReference {
        /// `api/v1` or `apis/<group>/<version>`.
        group_version: String,
        /// The missing definition's name.
        reference: String,
    },
}

/// One serialized document and its content hash.
#[derive(Debug, Clone)]
pub struct Document {
    json: Vec<u8>,
    hash: String,
}

impl Document {
    fn new(value: &Value) -> Document {
        let json = serde_json::to_vec(value).expect("a JSON value always serializes");
        // Upper-case hex SHA-512, as kube-apiserver hashes its documents.
        let hash = Sha512::digest(&json)
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        Document { json, hash }
    }

    /// The document as JSON.
    pub fn json(&self) -> &[u8] {
        &self.json
    }

    /// The content hash (upper-case hex SHA-512), as in the v3 index's `?hash=`.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The `ETag` header value (the quoted hash).
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.hash)
    }
}

/// The OpenAPI documents of the served kinds, built once.
#[derive(Debug, Clone)]
pub struct OpenApi {
    v2: Document,
    /// v3 documents by index key (`api/v1`, `apis/apps/v1`).
    v3: BTreeMap<String, Document>,
}

impl OpenApi {
    /// Builds the v2 document and one v3 document per served group-version.
    pub fn new(kinds: &[ServedKind]) -> Result<OpenApi, OpenApiError> {
        let mut by_gv: BTreeMap<String, Vec<&ServedKind>> = BTreeMap::new();
        for k in kinds {
            by_gv
                .entry(vendored::key(&k.group, &k.version))
                .or_default()
                .push(k);
        }
        let mut docs = BTreeMap::new();
        for (key, kinds) in &by_gv {
            let upstream = vendored::document(key)?;
            docs.insert(key.clone(), filter::served_document(key, upstream, kinds)?);
        }
        let v2 = Document::new(&v2::document(docs.values(), KUBERNETES_RELEASE));
        let v3 = docs
            .iter()
            .map(|(key, doc)| (key.clone(), Document::new(doc)))
            .collect();
        Ok(OpenApi { v2, v3 })
    }

    /// The Swagger 2.0 document (`/openapi/v2`).
    pub fn v2(&self) -> &Document {
        &self.v2
    }

    /// The Swagger 2.0 document as JSON.
    pub fn v2_json(&self) -> &[u8] {
        self.v2.json()
    }

    /// The `/openapi/v3` index: each served group-version with its `serverRelativeURL`
    /// (`<base>/<key>?hash=<hash>`; `base` is normally `/openapi/v3`).
    pub fn v3_index(&self, base: &str) -> Value {
        let base = base.trim_end_matches('/');
        let paths: serde_json::Map<String, Value> = self
            .v3
            .iter()
            .map(|(key, doc)| {
                (
                    key.clone(),
                    json!({"serverRelativeURL": format!("{base}/{key}?hash={}", doc.hash())}),
                )
            })
            .collect();
        json!({ "paths": paths })
    }

    /// The v3 document of one served group-version (`""` group for core).
    pub fn v3_document(&self, group: &str, version: &str) -> Option<&Document> {
        self.v3.get(&vendored::key(group, version))
    }

    /// The served group-versions' index keys (`api/v1`, `apis/apps/v1`, …).
    pub fn v3_keys(&self) -> BTreeSet<&str> {
        self.v3.keys().map(String::as_str).collect()
    }
}

/// Compressed size in bytes of the vendored upstream documents compiled into the binary, and
/// their number.
pub fn vendored_size() -> (usize, usize) {
    vendored::compressed_size()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(
        group: &str,
        kind: &str,
        resource: &str,
        namespaced: bool,
        subs: &[&str],
    ) -> ServedKind {
        ServedKind {
            group: group.into(),
            version: "v1".into(),
            kind: kind.into(),
            resource: resource.into(),
            namespaced,
            subresources: subs.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn sample() -> Vec<ServedKind> {
        vec![
            kind("", "Pod", "pods", true, &["status", "log", "eviction"]),
            kind(
                "",
                "Namespace",
                "namespaces",
                false,
                &["status", "finalize"],
            ),
            kind(
                "apps",
                "Deployment",
                "deployments",
                true,
                &["status", "scale"],
            ),
            kind(
                "rbac.authorization.k8s.io",
                "ClusterRole",
                "clusterroles",
                false,
                &[],
            ),
        ]
    }

    fn parse(doc: &Document) -> Value {
        serde_json::from_slice(doc.json()).unwrap()
    }

    #[test]
    fn index_lists_exactly_the_served_group_versions_with_their_hash() {
        let api = OpenApi::new(&sample()).unwrap();
        let idx = api.v3_index("/openapi/v3");
        let keys: Vec<&String> = idx["paths"].as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "api/v1",
                "apis/apps/v1",
                "apis/rbac.authorization.k8s.io/v1"
            ]
        );
        let doc = api.v3_document("apps", "v1").unwrap();
        assert_eq!(
            idx["paths"]["apis/apps/v1"]["serverRelativeURL"],
            format!("/openapi/v3/apis/apps/v1?hash={}", doc.hash())
        );
        assert_eq!(doc.hash().len(), 128);
        assert!(api.v3_document("batch", "v1").is_none());
    }

    #[test]
    fn documents_hold_only_served_paths() {
        let api = OpenApi::new(&sample()).unwrap();
        let apps = parse(api.v3_document("apps", "v1").unwrap());
        let paths = apps["paths"].as_object().unwrap();
        assert!(paths.contains_key("/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"));
        assert!(!paths.keys().any(|p| p.contains("daemonsets")));
        let core = parse(api.v3_document("", "v1").unwrap());
        let paths = core["paths"].as_object().unwrap();
        assert!(paths.contains_key("/api/v1/namespaces/{namespace}/pods/{name}/log"));
        assert!(!paths.contains_key("/api/v1/namespaces/{namespace}/pods/{name}/exec"));
        assert!(!paths.keys().any(|p| p.contains("configmaps")));
        assert!(core["components"]["schemas"]
            .get("io.k8s.api.core.v1.ConfigMap")
            .is_none());
    }

    #[test]
    fn strategic_merge_metadata_and_patch_content_types_are_kept() {
        let api = OpenApi::new(&sample()).unwrap();
        let core = parse(api.v3_document("", "v1").unwrap());
        let containers = &core["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"]["properties"]
            ["containers"];
        assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(containers["x-kubernetes-list-type"], "map");
        let intstr =
            &core["components"]["schemas"]["io.k8s.apimachinery.pkg.util.intstr.IntOrString"];
        assert_eq!(intstr["format"], "int-or-string");
        let apps = parse(api.v3_document("apps", "v1").unwrap());
        let patch =
            &apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert!(patch["requestBody"]["content"]
            .get("application/strategic-merge-patch+json")
            .is_some());
        assert!(patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation"));
    }

    /// Every kind the API server's table serves (group, kind, resource) — the same set the
    /// server passes — has a schema with its GVK, and every reference resolves.
    #[test]
    fn every_served_kind_has_its_schema_and_references_resolve() {
        let served: &[(&str, &str, &str)] = &[
            ("", "Namespace", "namespaces"),
            ("", "Node", "nodes"),
            ("", "Pod", "pods"),
            ("", "Service", "services"),
            ("", "Endpoints", "endpoints"),
            ("", "ConfigMap", "configmaps"),
            ("", "Secret", "secrets"),
            ("", "ServiceAccount", "serviceaccounts"),
            ("", "Event", "events"),
            ("", "PersistentVolumeClaim", "persistentvolumeclaims"),
            ("", "PersistentVolume", "persistentvolumes"),
            ("", "ComponentStatus", "componentstatuses"),
            ("apps", "Deployment", "deployments"),
            ("apps", "ReplicaSet", "replicasets"),
            ("apps", "DaemonSet", "daemonsets"),
            ("apps", "StatefulSet", "statefulsets"),
            ("apps", "ControllerRevision", "controllerrevisions"),
            ("batch", "Job", "jobs"),
            ("batch", "CronJob", "cronjobs"),
            ("networking.k8s.io", "Ingress", "ingresses"),
            ("networking.k8s.io", "IngressClass", "ingressclasses"),
            ("networking.k8s.io", "NetworkPolicy", "networkpolicies"),
            ("discovery.k8s.io", "EndpointSlice", "endpointslices"),
            ("coordination.k8s.io", "Lease", "leases"),
            ("policy", "PodDisruptionBudget", "poddisruptionbudgets"),
            ("rbac.authorization.k8s.io", "ClusterRole", "clusterroles"),
            (
                "rbac.authorization.k8s.io",
                "ClusterRoleBinding",
                "clusterrolebindings",
            ),
            ("rbac.authorization.k8s.io", "Role", "roles"),
            ("rbac.authorization.k8s.io", "RoleBinding", "rolebindings"),
            (
                "certificates.k8s.io",
                "CertificateSigningRequest",
                "certificatesigningrequests",
            ),
            ("scheduling.k8s.io", "PriorityClass", "priorityclasses"),
            ("storage.k8s.io", "StorageClass", "storageclasses"),
            (
                "authorization.k8s.io",
                "SelfSubjectAccessReview",
                "selfsubjectaccessreviews",
            ),
            (
                "authorization.k8s.io",
                "SelfSubjectRulesReview",
                "selfsubjectrulesreviews",
            ),
            (
                "authorization.k8s.io",
                "SubjectAccessReview",
                "subjectaccessreviews",
            ),
            (
                "authorization.k8s.io",
                "LocalSubjectAccessReview",
                "localsubjectaccessreviews",
            ),
            (
                "authentication.k8s.io",
                "SelfSubjectReview",
                "selfsubjectreviews",
            ),
            ("authentication.k8s.io", "TokenReview", "tokenreviews"),
        ];
        let kinds: Vec<ServedKind> = served
            .iter()
            .map(|(g, k, r)| kind(g, k, r, true, &[]))
            .collect();
        let api = OpenApi::new(&kinds).unwrap();
        let v2: Value = serde_json::from_slice(api.v2_json()).unwrap();
        for k in &kinds {
            let doc = parse(api.v3_document(&k.group, &k.version).unwrap());
            let schemas = doc["components"]["schemas"].as_object().unwrap();
            assert!(
                schemas
                    .values()
                    .any(|s| filter::schema_has_gvk(s, &k.group, &k.version, &k.kind)),
                "no v3 schema for {}/{}",
                k.group,
                k.kind
            );
            let mut refs = BTreeSet::new();
            filter::collect_refs(&doc, filter::V3_SCHEMA_REF, &mut refs);
            for r in refs {
                assert!(schemas.contains_key(&r), "dangling {r} in {}", k.group);
            }
            assert!(
                v2["definitions"]
                    .as_object()
                    .unwrap()
                    .values()
                    .any(|s| filter::schema_has_gvk(s, &k.group, &k.version, &k.kind)),
                "no v2 definition for {}/{}",
                k.group,
                k.kind
            );
        }
        let mut refs = BTreeSet::new();
        filter::collect_refs(&v2, "#/definitions/", &mut refs);
        let defs = v2["definitions"].as_object().unwrap();
        assert!(refs.iter().all(|r| defs.contains_key(r)));
        assert!(!v2.to_string().contains("#/components/"));
    }

    #[test]
    fn v2_keeps_strategic_merge_metadata_and_field_validation() {
        let api = OpenApi::new(&sample()).unwrap();
        let v2: Value = serde_json::from_slice(api.v2_json()).unwrap();
        assert_eq!(v2["swagger"], "2.0");
        let spec = &v2["definitions"]["io.k8s.api.core.v1.PodSpec"]["properties"];
        assert_eq!(spec["containers"]["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(
            spec["containers"]["items"]["$ref"],
            "#/definitions/io.k8s.api.core.v1.Container"
        );
        let patch =
            &v2["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert!(patch["consumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "application/strategic-merge-patch+json"));
        assert!(patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation" && p["type"] == "string"));
    }

    #[test]
    fn unknown_group_version_is_an_error_naming_it() {
        let err = OpenApi::new(&[kind("example.com", "Widget", "widgets", true, &[])]).unwrap_err();
        assert!(err.to_string().contains("apis/example.com/v1"), "{err}");
    }
}
