//! User impersonation (`kubectl --as`, `--as-group`, `--as-uid`): the `Impersonate-*` headers
//! make a request run as another identity when the caller is allowed the `impersonate` verb on
//! each part of it, as in Kubernetes:
//!
//! - `Impersonate-User: name` → `users` (core group), or `serviceaccounts` in the namespace
//!   for `system:serviceaccount:<ns>:<name>`;
//! - each `Impersonate-Group` → `groups`;
//! - `Impersonate-Uid` → `uids` in `authentication.k8s.io`;
//! - each `Impersonate-Extra-<key>` value → `userextras/<key>` in `authentication.k8s.io`.
//!
//! The impersonated user gets `system:authenticated` (unless it is anonymous or asked for
//! `system:unauthenticated`), and a service account without requested groups gets its fixed
//! service-account groups.

use std::collections::BTreeMap;

use http::HeaderMap;
use kinit_auth::{
    service_account_namespace_group, Attributes, UserInfo, GROUP_AUTHENTICATED,
    GROUP_SERVICE_ACCOUNTS, GROUP_UNAUTHENTICATED, USER_ANONYMOUS,
};

use crate::access::{self, Access};
use crate::error::ApiError;

const HEADER_USER: &str = "impersonate-user";
const HEADER_UID: &str = "impersonate-uid";
const HEADER_GROUP: &str = "impersonate-group";
const HEADER_EXTRA_PREFIX: &str = "impersonate-extra-";
const AUTHENTICATION_GROUP: &str = "authentication.k8s.io";

/// What the headers ask for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Requested {
    user: Option<String>,
    uid: Option<String>,
    groups: Vec<String>,
    extra: BTreeMap<String, Vec<String>>,
}

fn header_text(name: &str, value: &http::HeaderValue) -> Result<String, ApiError> {
    value
        .to_str()
        .map(str::to_string)
        .map_err(|_| ApiError::bad_request(format!("header {name} is not valid text")))
}

fn requested(headers: &HeaderMap) -> Result<Requested, ApiError> {
    let mut out = Requested::default();
    for (name, value) in headers {
        let name = name.as_str();
        if name == HEADER_USER {
            out.user = Some(header_text(name, value)?);
        } else if name == HEADER_UID {
            out.uid = Some(header_text(name, value)?);
        } else if name == HEADER_GROUP {
            out.groups.push(header_text(name, value)?);
        } else if let Some(key) = name.strip_prefix(HEADER_EXTRA_PREFIX) {
            // Keys travel percent-encoded (HTTP header names cannot hold every character).
            let key = percent_encoding::percent_decode_str(key)
                .decode_utf8()
                .map_err(|_| ApiError::bad_request(format!("header {name}: invalid key")))?
                .to_lowercase();
            out.extra
                .entry(key)
                .or_default()
                .push(header_text(name, value)?);
        }
    }
    Ok(out)
}

/// The identity a request runs as: `requester` itself without `Impersonate-*` headers, else
/// the impersonated user once every part of it is authorized.
pub async fn effective_user(
    access: &Access,
    requester: UserInfo,
    headers: &HeaderMap,
) -> Result<UserInfo, ApiError> {
    let wanted = requested(headers)?;
    if wanted == Requested::default() {
        return Ok(requester);
    }
    let Some(name) = wanted.user.clone().filter(|n| !n.is_empty()) else {
        return Err(ApiError::bad_request(
            "impersonating groups, a uid or extra fields requires impersonating a user (Impersonate-User)",
        ));
    };

    let mut checks: Vec<Attributes> = Vec::new();
    let check = |verb_target: (&str, &str, &str, &str)| {
        let (namespace, group, resource, object) = verb_target;
        Attributes::resource(
            requester.clone(),
            "impersonate",
            namespace,
            group,
            resource,
            object,
        )
    };
    let service_account = UserInfo::new(name.clone(), Vec::<String>::new())
        .service_account()
        .map(|(ns, sa)| (ns.to_string(), sa.to_string()));
    match &service_account {
        Some((ns, sa)) => checks.push(check((ns, "", "serviceaccounts", sa))),
        None => checks.push(check(("", "", "users", &name))),
    }
    for group in &wanted.groups {
        checks.push(check(("", "", "groups", group)));
    }
    if let Some(uid) = &wanted.uid {
        checks.push(check(("", AUTHENTICATION_GROUP, "uids", uid)));
    }
    for (key, values) in &wanted.extra {
        for value in values {
            checks.push(check((
                "",
                AUTHENTICATION_GROUP,
                &format!("userextras/{key}"),
                value,
            )));
        }
    }
    for attrs in &checks {
        let decision = access.authorize(attrs).await;
        if !decision.allowed {
            return Err(access::forbidden(attrs, &decision.reason));
        }
    }

    let mut groups = wanted.groups.clone();
    if let Some((ns, _)) = &service_account {
        if groups.is_empty() {
            groups = vec![
                GROUP_SERVICE_ACCOUNTS.to_string(),
                service_account_namespace_group(ns),
            ];
        }
    }
    if name == USER_ANONYMOUS {
        if !groups.iter().any(|g| g == GROUP_UNAUTHENTICATED) {
            groups.push(GROUP_UNAUTHENTICATED.to_string());
        }
    } else if !groups
        .iter()
        .any(|g| g == GROUP_AUTHENTICATED || g == GROUP_UNAUTHENTICATED)
    {
        groups.push(GROUP_AUTHENTICATED.to_string());
    }
    Ok(UserInfo {
        name,
        uid: wanted.uid.unwrap_or_default(),
        groups,
        extra: wanted.extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn headers_are_collected_and_extra_keys_decoded() {
        let r = requested(&headers(&[
            ("Impersonate-User", "alice"),
            ("Impersonate-Group", "dev"),
            ("Impersonate-Group", "ops"),
            ("Impersonate-Uid", "u-1"),
            ("Impersonate-Extra-Scopes", "view"),
            ("Impersonate-Extra-Example.com%2fteam", "blue"),
            ("Accept", "application/json"),
        ]))
        .unwrap();
        assert_eq!(r.user.as_deref(), Some("alice"));
        assert_eq!(r.groups, ["dev", "ops"]);
        assert_eq!(r.uid.as_deref(), Some("u-1"));
        assert_eq!(r.extra["scopes"], ["view"]);
        assert_eq!(r.extra["example.com/team"], ["blue"]);
        assert_eq!(requested(&headers(&[])).unwrap(), Requested::default());
    }
}
