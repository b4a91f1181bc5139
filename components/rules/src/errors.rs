//! How a client tells the API server's answers apart: not found and conflict.

/// True when `e` is an API 404 (the object or its namespace does not exist).
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// True when `e` is an API 409: a stale `resourceVersion` (Conflict) or a create of a name that
/// exists (AlreadyExists).
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, reason: &str) -> kube::Error {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "reason": reason, "code": code, "message": "m"
        }))
        .unwrap();
        kube::Error::Api(Box::new(status))
    }

    #[test]
    fn codes_decide() {
        assert!(is_not_found(&api(404, "NotFound")));
        assert!(!is_not_found(&api(409, "Conflict")));
        assert!(is_conflict(&api(409, "Conflict")));
        assert!(is_conflict(&api(409, "AlreadyExists")));
        assert!(!is_conflict(&api(404, "NotFound")));
        assert!(!is_conflict(&kube::Error::LinesCodecMaxLineLengthExceeded));
    }
}
