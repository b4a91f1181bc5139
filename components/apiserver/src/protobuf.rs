//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`, as kubectl, helm 3
//! and client-go send them), turned into Kubernetes JSON by the `kinit-protobuf` crate for every
//! built-in kind, `DeleteOptions`, `Scale`, `Eviction` and the review kinds.
//!
//! A well-formed body this server cannot decode (unknown kind, a field the schema does not know,
//! a compressed object) is refused with 415 (send it as JSON); a malformed one with 400.

use serde_json::Value;

use crate::error::ApiError;

/// The protobuf magic prefix.
pub const MAGIC: &[u8] = kinit_protobuf::MAGIC;

/// Decodes a Kubernetes protobuf body into the JSON form of the object.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    kinit_protobuf::decode(body)
        .map(|decoded| decoded.object)
        .map_err(|e| {
            if e.is_unsupported() {
                ApiError::unsupported_media_type(e.to_string())
            } else {
                ApiError::bad_request(e.to_string())
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_415_or_400() {
        assert_eq!(decode(b"{}").unwrap_err().code, 400);
        let widget = kinit_protobuf::envelope("example.com/v1", "Widget", &[]);
        assert_eq!(decode(&widget).unwrap_err().code, 415);
        // DeleteOptions{propagationPolicy: "Background"}: field 4, length 10
        let mut raw = vec![0x22, 10];
        raw.extend(b"Background");
        let v = decode(&kinit_protobuf::envelope("v1", "DeleteOptions", &raw)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"})
        );
        // an unknown field number (15, varint) in DeleteOptions
        let unknown = kinit_protobuf::envelope("v1", "DeleteOptions", &[0x78, 1]);
        assert_eq!(decode(&unknown).unwrap_err().code, 415);
        assert!(MAGIC.starts_with(b"k8s"));
    }
}
