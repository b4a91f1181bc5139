//! Bootstrap tokens (`<id>.<secret>`), used by joining nodes before they have a certificate.

use k8s_openapi::api::core::v1::Secret;
use subtle::ConstantTimeEq;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::user::{BOOTSTRAP_USER_PREFIX, GROUP_BOOTSTRAPPERS};
use crate::{AuthError, ObjectLookup, UserInfo};

/// Namespace holding bootstrap-token secrets.
pub const BOOTSTRAP_TOKEN_NAMESPACE: &str = "kube-system";
/// Secret type of bootstrap tokens.
pub const BOOTSTRAP_TOKEN_SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
/// Name prefix of bootstrap-token secrets: `bootstrap-token-<id>`.
pub const BOOTSTRAP_TOKEN_SECRET_PREFIX: &str = "bootstrap-token-";
/// Prefix every `auth-extra-groups` entry must carry.
pub const BOOTSTRAP_GROUP_PREFIX: &str = "system:bootstrappers:";

const KEY_TOKEN_ID: &str = "token-id";
const KEY_TOKEN_SECRET: &str = "token-secret";
const KEY_EXPIRATION: &str = "expiration";
const KEY_USAGE_AUTHENTICATION: &str = "usage-bootstrap-authentication";
const KEY_EXTRA_GROUPS: &str = "auth-extra-groups";

fn is_token_part(part: &str, len: usize) -> bool {
    part.len() == len
        && part
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Splits a bootstrap token `[a-z0-9]{6}.[a-z0-9]{16}` into `(id, secret)`; `None` when the
/// string does not have that shape.
pub fn parse_bootstrap_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    (is_token_part(id, 6) && is_token_part(secret, 16)).then_some((id, secret))
}

/// Whether `group` is a valid extra group for bootstrap tokens
/// (`system:bootstrappers:[a-z0-9:-]{0,255}[a-z0-9]`).
pub fn is_valid_bootstrap_group(group: &str) -> bool {
    let Some(rest) = group.strip_prefix(BOOTSTRAP_GROUP_PREFIX) else {
        return false;
    };
    let Some(last) = rest.bytes().last() else {
        return false;
    };
    rest.len() <= 256
        && (last.is_ascii_lowercase() || last.is_ascii_digit())
        && rest
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b':' || b == b'-')
}

/// A value of the secret's `data` (or, for objects not yet normalised, `stringData`).
fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    if let Some(value) = secret.data.as_ref().and_then(|d| d.get(key)) {
        return Some(String::from_utf8_lossy(&value.0).into_owned());
    }
    secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .cloned()
}

/// Authenticates a bootstrap token against `kube-system/bootstrap-token-<id>`.
pub(crate) async fn authenticate_bootstrap_token(
    lookup: &dyn ObjectLookup,
    token: &str,
    now: OffsetDateTime,
) -> Result<UserInfo, AuthError> {
    let Some((id, token_secret)) = parse_bootstrap_token(token) else {
        return Err(AuthError::unauthorized(
            "bearer token is not a bootstrap token of the form [a-z0-9]{6}.[a-z0-9]{16}",
        ));
    };
    let secret_name = format!("{BOOTSTRAP_TOKEN_SECRET_PREFIX}{id}");
    let where_ = format!("secret {BOOTSTRAP_TOKEN_NAMESPACE}/{secret_name}");
    let rejected = |why: String| {
        AuthError::unauthorized(format!(
            "bootstrap token {id}: {why}; create a new one with `kinit token create`"
        ))
    };
    let Some(secret) = lookup
        .secret(BOOTSTRAP_TOKEN_NAMESPACE, &secret_name)
        .await?
    else {
        return Err(rejected(format!("{where_} does not exist")));
    };
    if secret.metadata.deletion_timestamp.is_some() {
        return Err(rejected(format!("{where_} is being deleted")));
    }
    if secret.type_.as_deref() != Some(BOOTSTRAP_TOKEN_SECRET_TYPE) {
        return Err(rejected(format!(
            "{where_} has type {:?}, not {BOOTSTRAP_TOKEN_SECRET_TYPE}",
            secret.type_.as_deref().unwrap_or("")
        )));
    }
    if secret_value(&secret, KEY_TOKEN_ID).as_deref() != Some(id) {
        return Err(rejected(format!("{where_} has a different {KEY_TOKEN_ID}")));
    }
    let stored = secret_value(&secret, KEY_TOKEN_SECRET).unwrap_or_default();
    if !bool::from(stored.as_bytes().ct_eq(token_secret.as_bytes())) {
        return Err(rejected(format!(
            "the token secret does not match {where_}"
        )));
    }
    if let Some(expiration) = secret_value(&secret, KEY_EXPIRATION) {
        let expires = OffsetDateTime::parse(expiration.trim(), &Rfc3339).map_err(|e| {
            rejected(format!(
                "{where_} has an unreadable {KEY_EXPIRATION} {expiration:?} ({e})"
            ))
        })?;
        if expires <= now {
            return Err(rejected(format!("it expired at {expiration}")));
        }
    }
    if secret_value(&secret, KEY_USAGE_AUTHENTICATION).as_deref() != Some("true") {
        return Err(rejected(format!(
            "{where_} does not allow authentication ({KEY_USAGE_AUTHENTICATION} is not \"true\")"
        )));
    }
    let mut groups = vec![GROUP_BOOTSTRAPPERS.to_string()];
    if let Some(extra) = secret_value(&secret, KEY_EXTRA_GROUPS) {
        for group in extra.split(',').map(str::trim).filter(|g| !g.is_empty()) {
            if !is_valid_bootstrap_group(group) {
                return Err(rejected(format!(
                    "{where_} lists {KEY_EXTRA_GROUPS} entry {group:?}, which must match \
                     {BOOTSTRAP_GROUP_PREFIX}[a-z0-9:-]*[a-z0-9]"
                )));
            }
            if !groups.iter().any(|g| g == group) {
                groups.push(group.to_string());
            }
        }
    }
    Ok(UserInfo::new(format!("{BOOTSTRAP_USER_PREFIX}{id}"), groups).with_authenticated_group())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testing::{meta, MemoryObjects};
    use crate::GROUP_AUTHENTICATED;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    /// A bootstrap-token secret for `abcdef.0123456789abcdef` with the given overrides.
    pub(crate) fn token_secret(fields: &[(&str, &str)]) -> Secret {
        let mut data: BTreeMap<String, ByteString> = [
            (KEY_TOKEN_ID, "abcdef"),
            (KEY_TOKEN_SECRET, "0123456789abcdef"),
            (KEY_USAGE_AUTHENTICATION, "true"),
            (
                KEY_EXTRA_GROUPS,
                "system:bootstrappers:kubeadm:default-node-token",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect();
        for (k, v) in fields {
            if v.is_empty() {
                data.remove(*k);
            } else {
                data.insert(k.to_string(), ByteString(v.as_bytes().to_vec()));
            }
        }
        Secret {
            metadata: meta(
                BOOTSTRAP_TOKEN_NAMESPACE,
                "bootstrap-token-abcdef",
                "uid-bt",
            ),
            type_: Some(BOOTSTRAP_TOKEN_SECRET_TYPE.to_string()),
            data: Some(data),
            ..Secret::default()
        }
    }

    async fn authenticate(secret: Option<Secret>, token: &str) -> Result<UserInfo, AuthError> {
        let objects = MemoryObjects::default();
        if let Some(secret) = secret {
            objects.put_secret(secret);
        }
        authenticate_bootstrap_token(&objects, token, OffsetDateTime::now_utc()).await
    }

    const TOKEN: &str = "abcdef.0123456789abcdef";

    #[test]
    fn token_shape() {
        assert_eq!(
            parse_bootstrap_token(TOKEN),
            Some(("abcdef", "0123456789abcdef"))
        );
        assert_eq!(parse_bootstrap_token("ABCDEF.0123456789abcdef"), None);
        assert_eq!(parse_bootstrap_token("abcdef.0123456789abcde"), None);
        assert_eq!(parse_bootstrap_token("abcdef0123456789abcdef"), None);
        assert!(is_valid_bootstrap_group(
            "system:bootstrappers:kubeadm:default-node-token"
        ));
        assert!(!is_valid_bootstrap_group("system:masters"));
        assert!(!is_valid_bootstrap_group("system:bootstrappers:"));
        assert!(!is_valid_bootstrap_group("system:bootstrappers:x-"));
    }

    #[tokio::test]
    async fn valid_token_maps_to_bootstrap_user() {
        let future = (OffsetDateTime::now_utc() + time::Duration::hours(1))
            .format(&Rfc3339)
            .unwrap();
        let user = authenticate(Some(token_secret(&[(KEY_EXPIRATION, &future)])), TOKEN)
            .await
            .unwrap();
        assert_eq!(user.name, "system:bootstrap:abcdef");
        assert_eq!(
            user.groups,
            vec![
                GROUP_BOOTSTRAPPERS,
                "system:bootstrappers:kubeadm:default-node-token",
                GROUP_AUTHENTICATED
            ]
        );
    }

    #[tokio::test]
    async fn expired_token_is_rejected() {
        let past = (OffsetDateTime::now_utc() - time::Duration::minutes(1))
            .format(&Rfc3339)
            .unwrap();
        let err = authenticate(Some(token_secret(&[(KEY_EXPIRATION, &past)])), TOKEN)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
        let err = authenticate(Some(token_secret(&[(KEY_EXPIRATION, "tomorrow")])), TOKEN)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("unreadable"), "{err}");
    }

    #[tokio::test]
    async fn wrong_secret_missing_secret_and_wrong_type_are_rejected() {
        let err = authenticate(Some(token_secret(&[])), "abcdef.0123456789abcdee")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        assert!(
            !err.to_string().contains("0123456789abcde"),
            "leaks secret: {err}"
        );

        let err = authenticate(None, TOKEN).await.unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");

        let mut opaque = token_secret(&[]);
        opaque.type_ = Some("Opaque".into());
        let err = authenticate(Some(opaque), TOKEN).await.unwrap_err();
        assert!(err.to_string().contains("type"), "{err}");
    }

    #[tokio::test]
    async fn missing_usage_and_bad_extra_groups_are_rejected() {
        let err = authenticate(Some(token_secret(&[(KEY_USAGE_AUTHENTICATION, "")])), TOKEN)
            .await
            .unwrap_err();
        assert!(err.to_string().contains(KEY_USAGE_AUTHENTICATION), "{err}");

        let err = authenticate(
            Some(token_secret(&[(KEY_EXTRA_GROUPS, "system:masters")])),
            TOKEN,
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("system:masters"), "{err}");
    }
}
