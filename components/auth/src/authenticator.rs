//! The request authenticator: client certificates and bearer tokens.

use std::sync::Arc;

use crate::bootstrap::{authenticate_bootstrap_token, parse_bootstrap_token};
use crate::keys;
use crate::service_account::ServiceAccountVerifier;
use crate::{AuthError, ObjectLookup, UserInfo};

/// Settings of the [`Authenticator`] (the API server's `--service-account-*` flags).
#[derive(Debug, Clone, Default)]
pub struct AuthenticatorConfig {
    /// PEM files (contents) with the RSA keys that verify service-account tokens (`sa.pub`).
    pub service_account_public_keys: Vec<Vec<u8>>,
    /// Issuer of bound service-account tokens, e.g. `https://kubernetes.default.svc.cluster.local`.
    pub service_account_issuer: String,
    /// Audiences this API server accepts in bound tokens; empty means `[issuer]`.
    pub api_audiences: Vec<String>,
    /// Whether bootstrap tokens (`kube-system/bootstrap-token-*`) authenticate.
    pub enable_bootstrap_tokens: bool,
}

/// Maps credentials to users: verified client certificates, bootstrap tokens and
/// service-account JWTs. Anonymous requests are not authenticated here (the API server answers 401).
pub struct Authenticator {
    service_accounts: ServiceAccountVerifier,
    enable_bootstrap_tokens: bool,
    lookup: Arc<dyn ObjectLookup>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("issuer", &self.service_accounts.issuer)
            .field("audiences", &self.service_accounts.audiences)
            .field("keys", &self.service_accounts.keys.len())
            .field("enable_bootstrap_tokens", &self.enable_bootstrap_tokens)
            .finish()
    }
}

impl Authenticator {
    /// Validates the configuration and loads the service-account public keys.
    pub fn new(
        config: AuthenticatorConfig,
        lookup: Arc<dyn ObjectLookup>,
    ) -> Result<Self, AuthError> {
        if config.service_account_issuer.is_empty() {
            return Err(AuthError::InvalidKey(
                "service-account issuer is empty; set it, e.g. https://kubernetes.default.svc.cluster.local".into(),
            ));
        }
        if config.service_account_public_keys.is_empty() {
            return Err(AuthError::InvalidKey(
                "no service-account public keys given; pass the contents of /etc/kubernetes/pki/sa.pub".into(),
            ));
        }
        let mut verifying = Vec::new();
        for (index, pem) in config.service_account_public_keys.iter().enumerate() {
            verifying.extend(keys::parse_public_keys(
                pem,
                &format!("service-account public key file #{}", index + 1),
            )?);
        }
        let audiences = if config.api_audiences.is_empty() {
            vec![config.service_account_issuer.clone()]
        } else {
            config.api_audiences
        };
        Ok(Authenticator {
            service_accounts: ServiceAccountVerifier {
                keys: verifying,
                issuer: config.service_account_issuer,
                audiences,
            },
            enable_bootstrap_tokens: config.enable_bootstrap_tokens,
            lookup,
        })
    }

    /// TLS has already verified the chain against the client CA; this maps the leaf to a user:
    /// CN = name, O = groups, plus `system:authenticated`.
    pub fn from_client_certificate(&self, leaf_der: &[u8]) -> Result<UserInfo, AuthError> {
        crate::x509::user_from_client_certificate(leaf_der)
    }

    /// Authenticates a bearer token: a bootstrap token (`<id>.<secret>`) or a service-account
    /// JWT (bound or legacy). See the crate documentation for the checks made.
    pub async fn from_bearer_token(&self, token: &str) -> Result<UserInfo, AuthError> {
        let now = time::OffsetDateTime::now_utc();
        self.authenticate_token_at(token, now).await
    }

    async fn authenticate_token_at(
        &self,
        token: &str,
        now: time::OffsetDateTime,
    ) -> Result<UserInfo, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::unauthorized("empty bearer token"));
        }
        if parse_bootstrap_token(token).is_some() {
            if !self.enable_bootstrap_tokens {
                return Err(AuthError::unauthorized(
                    "bootstrap tokens are disabled on this API server",
                ));
            }
            return authenticate_bootstrap_token(self.lookup.as_ref(), token, now).await;
        }
        if token.split('.').count() == 3 {
            return self
                .service_accounts
                .authenticate(self.lookup.as_ref(), token, now.unix_timestamp())
                .await;
        }
        Err(AuthError::unauthorized(
            "bearer token is neither a bootstrap token (<id>.<secret>) nor a service-account JWT",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootstrap::tests::token_secret;
    use crate::testing::{meta, rsa_key_pem, rsa_public_pem, MemoryObjects};
    use crate::{TokenClaims, TokenIssuer, EXTRA_POD_NAME, EXTRA_POD_UID, GROUP_AUTHENTICATED};
    use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::ByteString;

    const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

    fn setup(audiences: &[&str]) -> (Arc<MemoryObjects>, Authenticator, TokenIssuer) {
        let objects = Arc::new(MemoryObjects::default());
        objects.put_service_account(ServiceAccount {
            metadata: meta("apps", "builder", "sa-uid-1"),
            ..ServiceAccount::default()
        });
        objects.put_pod(Pod {
            metadata: meta("apps", "web-0", "pod-uid-1"),
            ..Pod::default()
        });
        let authenticator = Authenticator::new(
            AuthenticatorConfig {
                service_account_public_keys: vec![rsa_public_pem(0).into_bytes()],
                service_account_issuer: ISSUER.into(),
                api_audiences: audiences.iter().map(|a| a.to_string()).collect(),
                enable_bootstrap_tokens: true,
            },
            objects.clone(),
        )
        .unwrap();
        let issuer = TokenIssuer::new(rsa_key_pem(0).as_bytes(), ISSUER.into()).unwrap();
        (objects, authenticator, issuer)
    }

    fn claims() -> TokenClaims {
        TokenClaims {
            namespace: "apps".into(),
            service_account: "builder".into(),
            service_account_uid: "sa-uid-1".into(),
            audiences: vec![],
            expiration_seconds: 3600,
            bound_pod: None,
            bound_secret: None,
        }
    }

    #[tokio::test]
    async fn issued_token_roundtrips_to_service_account_user() {
        let (_, auth, issuer) = setup(&[]);
        let (token, exp) = issuer.issue(&claims()).unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!((exp - now - 3600).abs() <= 5, "exp {exp} now {now}");
        let user = auth.from_bearer_token(&token).await.unwrap();
        assert_eq!(user.name, "system:serviceaccount:apps:builder");
        assert_eq!(user.uid, "sa-uid-1");
        assert_eq!(
            user.groups,
            vec![
                "system:serviceaccounts",
                "system:serviceaccounts:apps",
                GROUP_AUTHENTICATED
            ]
        );
        assert!(user.extra.keys().all(|k| k == crate::EXTRA_CREDENTIAL_ID));
    }

    #[tokio::test]
    async fn pod_bound_token_carries_pod_and_dies_with_it() {
        let (objects, auth, issuer) = setup(&[]);
        let bound = TokenClaims {
            bound_pod: Some(("web-0".into(), "pod-uid-1".into())),
            ..claims()
        };
        let (token, _) = issuer.issue(&bound).unwrap();
        let user = auth.from_bearer_token(&token).await.unwrap();
        assert_eq!(user.extra[EXTRA_POD_NAME], vec!["web-0"]);
        assert_eq!(user.extra[EXTRA_POD_UID], vec!["pod-uid-1"]);

        // Re-created under the same name: different uid.
        objects.put_pod(Pod {
            metadata: meta("apps", "web-0", "pod-uid-2"),
            ..Pod::default()
        });
        let err = auth.from_bearer_token(&token).await.unwrap_err();
        assert!(err.to_string().contains("re-created"), "{err}");

        objects.delete_pod("apps", "web-0");
        let err = auth.from_bearer_token(&token).await.unwrap_err();
        assert!(err.to_string().contains("pod apps/web-0"), "{err}");
    }

    #[tokio::test]
    async fn pod_deleted_long_ago_invalidates_token() {
        let (objects, auth, issuer) = setup(&[]);
        let bound = TokenClaims {
            bound_pod: Some(("web-0".into(), "pod-uid-1".into())),
            ..claims()
        };
        let (token, _) = issuer.issue(&bound).unwrap();
        let mut pod = Pod {
            metadata: meta("apps", "web-0", "pod-uid-1"),
            ..Pod::default()
        };
        let two_minutes_ago = time::OffsetDateTime::now_utc().unix_timestamp() - 120;
        let deleted = k8s_openapi::jiff::Timestamp::new(two_minutes_ago, 0).unwrap();
        pod.metadata.deletion_timestamp = Some(Time(deleted));
        objects.put_pod(pod);
        let err = auth.from_bearer_token(&token).await.unwrap_err();
        assert!(err.to_string().contains("has been deleted"), "{err}");
    }

    #[tokio::test]
    async fn deleted_service_account_invalidates_token() {
        let (objects, auth, issuer) = setup(&[]);
        let (token, _) = issuer.issue(&claims()).unwrap();
        objects.delete_service_account("apps", "builder");
        let err = auth.from_bearer_token(&token).await.unwrap_err();
        assert!(
            err.to_string().contains("service account apps/builder"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn wrong_issuer_audience_and_key_are_rejected() {
        let (_, auth, _) = setup(&[]);
        let other_issuer =
            TokenIssuer::new(rsa_key_pem(0).as_bytes(), "https://elsewhere".into()).unwrap();
        let (token, _) = other_issuer.issue(&claims()).unwrap();
        let err = auth.from_bearer_token(&token).await.unwrap_err();
        assert!(err.to_string().contains("issuer"), "{err}");

        let issuer = TokenIssuer::new(rsa_key_pem(0).as_bytes(), ISSUER.into()).unwrap();
        let vault = TokenClaims {
            audiences: vec!["vault".into()],
            ..claims()
        };
        let (token, _) = issuer.issue(&vault).unwrap();
        let err = auth.from_bearer_token(&token).await.unwrap_err();
        assert!(err.to_string().contains("audiences"), "{err}");

        let foreign = TokenIssuer::new(rsa_key_pem(1).as_bytes(), ISSUER.into()).unwrap();
        let (token, _) = foreign.issue(&claims()).unwrap();
        let err = auth.from_bearer_token(&token).await.unwrap_err();
        assert!(err.to_string().contains("signature"), "{err}");
    }

    #[tokio::test]
    async fn configured_audiences_are_honoured() {
        let (_, auth, issuer) = setup(&["api", "vault"]);
        let vault = TokenClaims {
            audiences: vec!["vault".into()],
            ..claims()
        };
        let (token, _) = issuer.issue(&vault).unwrap();
        assert!(auth.from_bearer_token(&token).await.is_ok());
        let (token, _) = issuer.issue(&claims()).unwrap(); // audience = issuer, not accepted here
        assert!(auth.from_bearer_token(&token).await.is_err());
    }

    #[tokio::test]
    async fn expired_and_not_yet_valid_tokens_are_rejected() {
        let (_, auth, issuer) = setup(&[]);
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let (token, _) = issuer.issue_at(&claims(), now - 7200).unwrap();
        let err = auth.from_bearer_token(&token).await.unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
        let (token, _) = issuer.issue_at(&claims(), now + 7200).unwrap();
        let err = auth.from_bearer_token(&token).await.unwrap_err();
        assert!(err.to_string().contains("not valid before"), "{err}");
    }

    #[test]
    fn issue_validates_the_request() {
        let issuer = TokenIssuer::new(rsa_key_pem(0).as_bytes(), ISSUER.into()).unwrap();
        let short = TokenClaims {
            expiration_seconds: 60,
            ..claims()
        };
        assert!(matches!(
            issuer.issue(&short),
            Err(AuthError::InvalidRequest(_))
        ));
        let both = TokenClaims {
            bound_pod: Some(("p".into(), "u".into())),
            bound_secret: Some(("s".into(), "u".into())),
            ..claims()
        };
        assert!(matches!(
            issuer.issue(&both),
            Err(AuthError::InvalidRequest(_))
        ));
        let no_uid = TokenClaims {
            service_account_uid: String::new(),
            ..claims()
        };
        assert!(matches!(
            issuer.issue(&no_uid),
            Err(AuthError::InvalidRequest(_))
        ));
        assert!(TokenIssuer::new(b"nope", ISSUER.into()).is_err());
        assert!(TokenIssuer::new(rsa_key_pem(0).as_bytes(), String::new()).is_err());
    }

    fn legacy_secret(token: &str) -> Secret {
        Secret {
            metadata: meta("apps", "builder-token", "secret-uid"),
            type_: Some("kubernetes.io/service-account-token".into()),
            data: Some([("token".to_string(), ByteString(token.as_bytes().to_vec()))].into()),
            ..Secret::default()
        }
    }

    #[tokio::test]
    async fn legacy_token_needs_its_secret() {
        let (objects, auth, issuer) = setup(&["some-other-audience"]);
        let token = issuer
            .issue_legacy("apps", "builder", "sa-uid-1", "builder-token")
            .unwrap();
        let err = auth.from_bearer_token(&token).await.unwrap_err();
        assert!(err.to_string().contains("no longer exists"), "{err}");

        objects.put_secret(legacy_secret("something else"));
        let err = auth.from_bearer_token(&token).await.unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");

        objects.put_secret(legacy_secret(&token));
        let user = auth.from_bearer_token(&token).await.unwrap();
        assert_eq!(user.name, "system:serviceaccount:apps:builder");

        let mut invalidated = legacy_secret(&token);
        invalidated.metadata.labels = Some(
            [(
                "kubernetes.io/legacy-token-invalid-since".to_string(),
                "2025-01-01".to_string(),
            )]
            .into(),
        );
        objects.put_secret(invalidated);
        let err = auth.from_bearer_token(&token).await.unwrap_err();
        assert!(err.to_string().contains("invalidated"), "{err}");
    }

    #[tokio::test]
    async fn bearer_dispatch_bootstrap_and_garbage() {
        let (objects, auth, _) = setup(&[]);
        objects.put_secret(token_secret(&[]));
        let user = auth
            .from_bearer_token("abcdef.0123456789abcdef")
            .await
            .unwrap();
        assert_eq!(user.name, "system:bootstrap:abcdef");
        let err = auth.from_bearer_token("opaque-token").await.unwrap_err();
        assert!(err.to_string().contains("neither"), "{err}");
        assert!(auth.from_bearer_token("").await.is_err());

        let disabled = Authenticator::new(
            AuthenticatorConfig {
                service_account_public_keys: vec![rsa_public_pem(0).into_bytes()],
                service_account_issuer: ISSUER.into(),
                api_audiences: vec![],
                enable_bootstrap_tokens: false,
            },
            objects.clone(),
        )
        .unwrap();
        let err = disabled
            .from_bearer_token("abcdef.0123456789abcdef")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("disabled"), "{err}");
    }

    #[tokio::test]
    async fn store_failures_are_lookup_errors() {
        let (objects, auth, issuer) = setup(&[]);
        let (token, _) = issuer.issue(&claims()).unwrap();
        *objects.fail.lock().unwrap() = true;
        let err = auth.from_bearer_token(&token).await.unwrap_err();
        assert_eq!(err.http_status(), 500);
    }

    #[test]
    fn config_is_validated() {
        let objects: Arc<dyn ObjectLookup> = Arc::new(MemoryObjects::default());
        let missing_keys = AuthenticatorConfig {
            service_account_issuer: ISSUER.into(),
            ..AuthenticatorConfig::default()
        };
        let err = Authenticator::new(missing_keys, objects.clone()).unwrap_err();
        assert!(err.to_string().contains("sa.pub"), "{err}");
        let bad_key = AuthenticatorConfig {
            service_account_public_keys: vec![b"junk".to_vec()],
            service_account_issuer: ISSUER.into(),
            ..AuthenticatorConfig::default()
        };
        let err = Authenticator::new(bad_key, objects).unwrap_err();
        assert!(err.to_string().contains("#1"), "{err}");
    }
}
