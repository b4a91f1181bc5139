//! The one error type of this crate.

/// What went wrong while authenticating, authorizing or issuing credentials.
///
/// Every message says what failed and, where it helps, what to do about it. Messages of
/// [`AuthError::Unauthorized`] never contain secret material (token secrets, signatures).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The presented credential was rejected (HTTP 401).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The caller is known but the write is not allowed for it (HTTP 403; node restriction).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Reading an object from the API server's store failed (HTTP 500; retry).
    #[error("lookup failed: {0}")]
    Lookup(String),
    /// A signing or verification key could not be used (configuration error at start-up).
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// A token request was malformed (HTTP 400/422), e.g. a too short expiration.
    #[error("invalid token request: {0}")]
    InvalidRequest(String),
    /// Producing a signature failed.
    #[error("signing failed: {0}")]
    Signing(String),
}

impl AuthError {
    /// The HTTP status code an API server should answer with for this error.
    pub fn http_status(&self) -> u16 {
        match self {
            AuthError::Unauthorized(_) => 401,
            AuthError::Forbidden(_) => 403,
            AuthError::InvalidRequest(_) => 422,
            AuthError::Lookup(_) | AuthError::InvalidKey(_) | AuthError::Signing(_) => 500,
        }
    }

    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        AuthError::Unauthorized(message.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_http_status_codes() {
        assert_eq!(AuthError::unauthorized("x").http_status(), 401);
        assert_eq!(AuthError::Forbidden("x".into()).http_status(), 403);
        assert_eq!(AuthError::InvalidRequest("x".into()).http_status(), 422);
        assert_eq!(AuthError::Lookup("x".into()).http_status(), 500);
        assert_eq!(
            AuthError::unauthorized("token expired").to_string(),
            "unauthorized: token expired"
        );
    }
}
