//! The upstream Kubernetes v1.33 OpenAPI v3 documents compiled into the binary (gzip-compressed,
//! byte-identical to the published files once decompressed; origin and license in
//! `data/kubernetes-v1.33/README.md`).

use std::io::Read;

use serde_json::Value;

use crate::OpenApiError;

/// The Kubernetes release the vendored documents describe.
pub const KUBERNETES_RELEASE: &str = "v1.33";

/// One vendored document: its index key (`api/v1`, `apis/apps/v1`) and compressed bytes.
struct Vendored {
    key: &'static str,
    gzip: &'static [u8],
}

macro_rules! vendored {
    ($key:literal, $file:literal) => {
        Vendored {
            key: $key,
            gzip: include_bytes!(concat!("../data/kubernetes-v1.33/", $file, ".gz")),
        }
    };
}

static DOCUMENTS: &[Vendored] = &[
    vendored!("api/v1", "api__v1_openapi.json"),
    vendored!("apis/apps/v1", "apis__apps__v1_openapi.json"),
    vendored!(
        "apis/authentication.k8s.io/v1",
        "apis__authentication.k8s.io__v1_openapi.json"
    ),
    vendored!(
        "apis/authorization.k8s.io/v1",
        "apis__authorization.k8s.io__v1_openapi.json"
    ),
    vendored!("apis/batch/v1", "apis__batch__v1_openapi.json"),
    vendored!(
        "apis/certificates.k8s.io/v1",
        "apis__certificates.k8s.io__v1_openapi.json"
    ),
    vendored!(
        "apis/coordination.k8s.io/v1",
        "apis__coordination.k8s.io__v1_openapi.json"
    ),
    vendored!(
        "apis/discovery.k8s.io/v1",
        "apis__discovery.k8s.io__v1_openapi.json"
    ),
    vendored!(
        "apis/networking.k8s.io/v1",
        "apis__networking.k8s.io__v1_openapi.json"
    ),
    vendored!("apis/policy/v1", "apis__policy__v1_openapi.json"),
    vendored!(
        "apis/rbac.authorization.k8s.io/v1",
        "apis__rbac.authorization.k8s.io__v1_openapi.json"
    ),
    vendored!(
        "apis/scheduling.k8s.io/v1",
        "apis__scheduling.k8s.io__v1_openapi.json"
    ),
    vendored!(
        "apis/storage.k8s.io/v1",
        "apis__storage.k8s.io__v1_openapi.json"
    ),
];

/// The index key of a group-version: `api/v1` for the core group, `apis/<group>/<version>`.
pub fn key(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The upstream document of `key`, decompressed and parsed.
pub fn document(key: &str) -> Result<Value, OpenApiError> {
    let vendored =
        DOCUMENTS
            .iter()
            .find(|d| d.key == key)
            .ok_or_else(|| OpenApiError::NotVendored {
                group_version: key.to_string(),
            })?;
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(vendored.gzip)
        .read_to_end(&mut json)
        .map_err(|source| OpenApiError::Decompress {
            group_version: key.to_string(),
            source,
        })?;
    serde_json::from_slice(&json).map_err(|source| OpenApiError::Parse {
        group_version: key.to_string(),
        source,
    })
}

/// Sizes of the vendored data: (compressed bytes, number of documents).
pub fn compressed_size() -> (usize, usize) {
    (
        DOCUMENTS.iter().map(|d| d.gzip.len()).sum(),
        DOCUMENTS.len(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_vendored_document_decodes_as_openapi_3() {
        for d in DOCUMENTS {
            let doc = document(d.key).unwrap();
            assert_eq!(doc["openapi"], "3.0.0", "{}", d.key);
            let prefix = format!("/{}", d.key);
            let paths = doc["paths"].as_object().unwrap();
            assert!(
                paths.keys().all(|p| p.starts_with(&prefix)),
                "{} holds paths of another group-version",
                d.key
            );
        }
    }
}
