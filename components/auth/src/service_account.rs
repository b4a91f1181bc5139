//! Service-account tokens: issuing (TokenRequest, projected volumes, legacy secrets) with `sa.key`
//! and verifying them with `sa.pub`.

use std::collections::BTreeMap;

use jsonwebtoken::{Algorithm, Header, Validation};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::keys::{self, SigningKey, VerifyingKey};
use crate::user::{
    service_account_namespace_group, service_account_user_name, EXTRA_CREDENTIAL_ID,
    EXTRA_POD_NAME, EXTRA_POD_UID, GROUP_SERVICE_ACCOUNTS,
};
use crate::{AuthError, ObjectLookup, UserInfo};

/// Issuer of legacy (secret-based, non-expiring) service-account tokens.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";
/// Shortest lifetime a TokenRequest may ask for (10 minutes, as Kubernetes).
pub const MIN_EXPIRATION_SECONDS: i64 = 600;
/// Longest lifetime a TokenRequest may ask for (2^32 seconds, as Kubernetes).
pub const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;
/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECONDS: i64 = 60;
/// A bound object being deleted keeps its tokens valid this long (graceful termination).
const DELETION_GRACE_SECONDS: i64 = 60;

/// What a service-account token is issued for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenClaims {
    /// Namespace of the service account.
    pub namespace: String,
    /// Name of the service account.
    pub service_account: String,
    /// Uid of the service account (the token dies with it).
    pub service_account_uid: String,
    /// Intended audiences; empty means the issuer itself (the API server's default audience).
    pub audiences: Vec<String>,
    /// Lifetime in seconds, 600 ..= 2^32.
    pub expiration_seconds: i64,
    /// `(name, uid)` of the pod the token is bound to (projected volumes, kubelet TokenRequests).
    pub bound_pod: Option<(String, String)>,
    /// `(name, uid)` of the secret the token is bound to.
    pub bound_secret: Option<(String, String)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ObjectReference {
    name: String,
    uid: String,
}

/// The private `kubernetes.io` claim of bound tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct KubernetesClaims {
    namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pod: Option<ObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret: Option<ObjectReference>,
    serviceaccount: ObjectReference,
}

#[derive(Serialize)]
struct BoundTokenClaims<'a> {
    aud: &'a [String],
    exp: i64,
    iat: i64,
    iss: &'a str,
    jti: String,
    #[serde(rename = "kubernetes.io")]
    kubernetes: KubernetesClaims,
    nbf: i64,
    sub: String,
}

#[derive(Serialize)]
struct LegacyTokenClaims<'a> {
    iss: &'static str,
    #[serde(rename = "kubernetes.io/serviceaccount/namespace")]
    namespace: &'a str,
    #[serde(rename = "kubernetes.io/serviceaccount/secret.name")]
    secret_name: &'a str,
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.name")]
    service_account_name: &'a str,
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.uid")]
    service_account_uid: &'a str,
    sub: String,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// Claims of any received token; which ones must be present depends on the issuer.
#[derive(Debug, Deserialize)]
struct ReceivedClaims {
    iss: Option<String>,
    aud: Option<Audience>,
    exp: Option<i64>,
    nbf: Option<i64>,
    jti: Option<String>,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<KubernetesClaims>,
    #[serde(rename = "kubernetes.io/serviceaccount/namespace")]
    legacy_namespace: Option<String>,
    #[serde(rename = "kubernetes.io/serviceaccount/secret.name")]
    legacy_secret_name: Option<String>,
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.name")]
    legacy_service_account_name: Option<String>,
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.uid")]
    legacy_service_account_uid: Option<String>,
}

/// Issues service-account tokens (TokenRequest, projected volumes) with sa.key.
pub struct TokenIssuer {
    key: SigningKey,
    issuer: String,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("issuer", &self.issuer)
            .field("key_id", &self.key.key_id)
            .finish_non_exhaustive()
    }
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn header(key_id: &str) -> Header {
    Header {
        typ: None,
        kid: Some(key_id.to_string()),
        ..Header::new(Algorithm::RS256)
    }
}

fn non_empty(value: &str, field: &str) -> Result<(), AuthError> {
    if value.is_empty() {
        return Err(AuthError::InvalidRequest(format!(
            "{field} must not be empty"
        )));
    }
    Ok(())
}

impl TokenIssuer {
    /// Loads the RSA signing key (`sa.key`: PKCS#1 or PKCS#8 PEM) and the issuer URL that goes
    /// into every bound token's `iss` claim.
    pub fn new(private_key_pem: &[u8], issuer: String) -> Result<Self, AuthError> {
        if issuer.is_empty() {
            return Err(AuthError::InvalidKey(
                "service-account issuer is empty; set it, e.g. https://kubernetes.default.svc.cluster.local".into(),
            ));
        }
        let key = keys::parse_signing_key(private_key_pem, "service-account signing key")?;
        Ok(TokenIssuer { key, issuer })
    }

    /// The issuer URL put into tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The `kid` header of issued tokens (base64url SHA-256 of the public key's PKIX DER).
    pub fn key_id(&self) -> &str {
        &self.key.key_id
    }

    /// Issues a bound token valid from now; returns the token and its expiry (unix seconds).
    pub fn issue(&self, request: &TokenClaims) -> Result<(String, i64), AuthError> {
        self.issue_at(request, now_unix())
    }

    /// Issues a bound token as if the time were `now` (unix seconds).
    pub fn issue_at(&self, request: &TokenClaims, now: i64) -> Result<(String, i64), AuthError> {
        non_empty(&request.namespace, "namespace")?;
        non_empty(&request.service_account, "service account name")?;
        non_empty(&request.service_account_uid, "service account uid")?;
        if !(MIN_EXPIRATION_SECONDS..=MAX_EXPIRATION_SECONDS).contains(&request.expiration_seconds)
        {
            return Err(AuthError::InvalidRequest(format!(
                "spec.expirationSeconds {} is out of range: use {MIN_EXPIRATION_SECONDS} (10 minutes) to {MAX_EXPIRATION_SECONDS}",
                request.expiration_seconds
            )));
        }
        if request.bound_pod.is_some() && request.bound_secret.is_some() {
            return Err(AuthError::InvalidRequest(
                "spec.boundObjectRef: a token can be bound to a pod or a secret, not both".into(),
            ));
        }
        let reference = |bound: &Option<(String, String)>, kind: &str| -> Result<_, AuthError> {
            bound
                .as_ref()
                .map(|(name, uid)| {
                    non_empty(name, &format!("bound {kind} name"))?;
                    non_empty(uid, &format!("bound {kind} uid"))?;
                    Ok(ObjectReference {
                        name: name.clone(),
                        uid: uid.clone(),
                    })
                })
                .transpose()
        };
        let default_audience = [self.issuer.clone()];
        let audiences = if request.audiences.is_empty() {
            &default_audience[..]
        } else {
            &request.audiences[..]
        };
        let exp = now + request.expiration_seconds;
        let claims = BoundTokenClaims {
            aud: audiences,
            exp,
            iat: now,
            iss: &self.issuer,
            jti: uuid::Uuid::new_v4().to_string(),
            kubernetes: KubernetesClaims {
                namespace: request.namespace.clone(),
                pod: reference(&request.bound_pod, "pod")?,
                secret: reference(&request.bound_secret, "secret")?,
                serviceaccount: ObjectReference {
                    name: request.service_account.clone(),
                    uid: request.service_account_uid.clone(),
                },
            },
            nbf: now,
            sub: service_account_user_name(&request.namespace, &request.service_account),
        };
        let token = jsonwebtoken::encode(&header(&self.key.key_id), &claims, &self.key.encoding)
            .map_err(|e| AuthError::Signing(format!("service-account token: {e}")))?;
        Ok((token, exp))
    }

    /// Issues a legacy, non-expiring token for a `kubernetes.io/service-account-token` secret
    /// (the token controller stores it in the secret's `token` key).
    pub fn issue_legacy(
        &self,
        namespace: &str,
        service_account: &str,
        service_account_uid: &str,
        secret_name: &str,
    ) -> Result<String, AuthError> {
        non_empty(namespace, "namespace")?;
        non_empty(service_account, "service account name")?;
        non_empty(service_account_uid, "service account uid")?;
        non_empty(secret_name, "secret name")?;
        let claims = LegacyTokenClaims {
            iss: LEGACY_ISSUER,
            namespace,
            secret_name,
            service_account_name: service_account,
            service_account_uid,
            sub: service_account_user_name(namespace, service_account),
        };
        jsonwebtoken::encode(&header(&self.key.key_id), &claims, &self.key.encoding)
            .map_err(|e| AuthError::Signing(format!("legacy service-account token: {e}")))
    }
}

/// Verifies service-account JWTs and maps them to users.
pub(crate) struct ServiceAccountVerifier {
    pub(crate) keys: Vec<VerifyingKey>,
    pub(crate) issuer: String,
    pub(crate) audiences: Vec<String>,
}

fn deleted_before_grace(meta: &ObjectMeta, now: i64) -> bool {
    meta.deletion_timestamp
        .as_ref()
        .is_some_and(|t| t.0.as_second() + DELETION_GRACE_SECONDS < now)
}

fn required<'a>(value: &'a Option<String>, claim: &str) -> Result<&'a str, AuthError> {
    match value.as_deref() {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(AuthError::unauthorized(format!(
            "service-account token lacks the {claim} claim"
        ))),
    }
}

impl ServiceAccountVerifier {
    /// Checks the signature against every configured key (the one named by `kid` first).
    fn verified_claims(&self, token: &str) -> Result<ReceivedClaims, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            AuthError::unauthorized(format!("bearer token is not a valid JWT: {e}"))
        })?;
        if header.alg != Algorithm::RS256 {
            return Err(AuthError::unauthorized(format!(
                "service-account token is signed with {:?}; only RS256 is accepted",
                header.alg
            )));
        }
        let mut validation = Validation::new(Algorithm::RS256);
        // Time, issuer and audience are checked below, against the caller's clock and with
        // messages that say which claim failed.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let mut ordered: Vec<&VerifyingKey> = self.keys.iter().collect();
        ordered.sort_by_key(|k| Some(&k.key_id) != header.kid.as_ref());
        for key in ordered {
            match jsonwebtoken::decode::<ReceivedClaims>(token, &key.decoding, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature) => {
                }
                Err(e) => {
                    return Err(AuthError::unauthorized(format!(
                        "service-account token is malformed: {e}"
                    )))
                }
            }
        }
        Err(AuthError::unauthorized(
            "service-account token signature does not verify with any configured public key \
             (sa.pub); was it issued by another cluster?",
        ))
    }

    /// Authenticates a service-account JWT as of `now` (unix seconds).
    pub(crate) async fn authenticate(
        &self,
        lookup: &dyn ObjectLookup,
        token: &str,
        now: i64,
    ) -> Result<UserInfo, AuthError> {
        let claims = self.verified_claims(token)?;
        if let Some(nbf) = claims.nbf {
            if nbf > now + LEEWAY_SECONDS {
                return Err(AuthError::unauthorized(format!(
                    "service-account token is not valid before {nbf} (unix time); check the clocks of the control-plane hosts"
                )));
            }
        }
        if let Some(exp) = claims.exp {
            if exp + LEEWAY_SECONDS < now {
                return Err(AuthError::unauthorized(format!(
                    "service-account token expired at {exp} (unix time); request a new one"
                )));
            }
        }
        match claims.iss.as_deref() {
            Some(LEGACY_ISSUER) => self.authenticate_legacy(lookup, token, &claims, now).await,
            Some(iss) if iss == self.issuer => self.authenticate_bound(lookup, &claims, now).await,
            other => Err(AuthError::unauthorized(format!(
                "service-account token issuer {:?} is not accepted; this API server accepts {:?}",
                other.unwrap_or(""),
                self.issuer
            ))),
        }
    }

    async fn authenticate_bound(
        &self,
        lookup: &dyn ObjectLookup,
        claims: &ReceivedClaims,
        now: i64,
    ) -> Result<UserInfo, AuthError> {
        if claims.exp.is_none() {
            return Err(AuthError::unauthorized(
                "service-account token has no exp claim; bound tokens must expire",
            ));
        }
        let audiences: Vec<&str> = match &claims.aud {
            Some(Audience::One(a)) => vec![a.as_str()],
            Some(Audience::Many(a)) => a.iter().map(String::as_str).collect(),
            None => Vec::new(),
        };
        if !audiences
            .iter()
            .any(|a| self.audiences.iter().any(|b| b == a))
        {
            return Err(AuthError::unauthorized(format!(
                "service-account token audiences {audiences:?} do not include any audience of this API server {:?}",
                self.audiences
            )));
        }
        let Some(k8s) = &claims.kubernetes else {
            return Err(AuthError::unauthorized(
                "service-account token lacks the kubernetes.io claim",
            ));
        };
        let namespace = k8s.namespace.as_str();
        let sa = &k8s.serviceaccount;
        self.check_service_account(lookup, namespace, &sa.name, &sa.uid, now)
            .await?;
        let mut extra = BTreeMap::new();
        if let Some(secret_ref) = &k8s.secret {
            let secret = lookup.secret(namespace, &secret_ref.name).await?;
            check_bound(
                "secret",
                namespace,
                secret_ref,
                secret.as_ref().map(|s| &s.metadata),
                now,
            )?;
        }
        if let Some(pod_ref) = &k8s.pod {
            let pod = lookup.pod(namespace, &pod_ref.name).await?;
            check_bound(
                "pod",
                namespace,
                pod_ref,
                pod.as_ref().map(|p| &p.metadata),
                now,
            )?;
            extra.insert(EXTRA_POD_NAME.to_string(), vec![pod_ref.name.clone()]);
            extra.insert(EXTRA_POD_UID.to_string(), vec![pod_ref.uid.clone()]);
        }
        if let Some(jti) = claims.jti.as_deref().filter(|j| !j.is_empty()) {
            extra.insert(EXTRA_CREDENTIAL_ID.to_string(), vec![format!("JTI={jti}")]);
        }
        Ok(service_account_user(namespace, &sa.name, &sa.uid, extra))
    }

    async fn authenticate_legacy(
        &self,
        lookup: &dyn ObjectLookup,
        token: &str,
        claims: &ReceivedClaims,
        now: i64,
    ) -> Result<UserInfo, AuthError> {
        let namespace = required(
            &claims.legacy_namespace,
            "kubernetes.io/serviceaccount/namespace",
        )?;
        let secret_name = required(
            &claims.legacy_secret_name,
            "kubernetes.io/serviceaccount/secret.name",
        )?;
        let sa_name = required(
            &claims.legacy_service_account_name,
            "kubernetes.io/serviceaccount/service-account.name",
        )?;
        let sa_uid = required(
            &claims.legacy_service_account_uid,
            "kubernetes.io/serviceaccount/service-account.uid",
        )?;
        let where_ = format!("secret {namespace}/{secret_name}");
        let Some(secret) = lookup.secret(namespace, secret_name).await? else {
            return Err(AuthError::unauthorized(format!(
                "legacy service-account token: {where_} no longer exists"
            )));
        };
        if deleted_before_grace(&secret.metadata, now) {
            return Err(AuthError::unauthorized(format!(
                "legacy service-account token: {where_} has been deleted"
            )));
        }
        let invalid_since = secret
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/legacy-token-invalid-since"));
        if let Some(since) = invalid_since {
            return Err(AuthError::unauthorized(format!(
                "legacy service-account token: {where_} was invalidated on {since}; use a bound token (TokenRequest)"
            )));
        }
        let stored = secret
            .data
            .as_ref()
            .and_then(|d| d.get("token"))
            .map(|t| t.0.as_slice())
            .unwrap_or_default();
        if !bool::from(stored.ct_eq(token.as_bytes())) {
            return Err(AuthError::unauthorized(format!(
                "legacy service-account token does not match the token stored in {where_}"
            )));
        }
        self.check_service_account(lookup, namespace, sa_name, sa_uid, now)
            .await?;
        Ok(service_account_user(
            namespace,
            sa_name,
            sa_uid,
            BTreeMap::new(),
        ))
    }

    async fn check_service_account(
        &self,
        lookup: &dyn ObjectLookup,
        namespace: &str,
        name: &str,
        uid: &str,
        now: i64,
    ) -> Result<(), AuthError> {
        let sa = lookup.service_account(namespace, name).await?;
        let reference = ObjectReference {
            name: name.to_string(),
            uid: uid.to_string(),
        };
        check_bound(
            "service account",
            namespace,
            &reference,
            sa.as_ref().map(|s| &s.metadata),
            now,
        )
    }
}

/// The object a token refers to must exist with the same uid and not have been deleted.
fn check_bound(
    kind: &str,
    namespace: &str,
    reference: &ObjectReference,
    found: Option<&ObjectMeta>,
    now: i64,
) -> Result<(), AuthError> {
    let name = &reference.name;
    let Some(meta) = found else {
        return Err(AuthError::unauthorized(format!(
            "service-account token refers to {kind} {namespace}/{name}, which no longer exists"
        )));
    };
    let uid = meta.uid.as_deref().unwrap_or("");
    if uid != reference.uid {
        return Err(AuthError::unauthorized(format!(
            "service-account token refers to {kind} {namespace}/{name} with uid {}, but it now has uid {uid} (it was re-created)",
            reference.uid
        )));
    }
    if deleted_before_grace(meta, now) {
        return Err(AuthError::unauthorized(format!(
            "service-account token refers to {kind} {namespace}/{name}, which has been deleted"
        )));
    }
    Ok(())
}

fn service_account_user(
    namespace: &str,
    name: &str,
    uid: &str,
    extra: BTreeMap<String, Vec<String>>,
) -> UserInfo {
    UserInfo {
        name: service_account_user_name(namespace, name),
        uid: uid.to_string(),
        groups: vec![
            GROUP_SERVICE_ACCOUNTS.to_string(),
            service_account_namespace_group(namespace),
        ],
        extra,
    }
    .with_authenticated_group()
}
