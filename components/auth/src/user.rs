//! The authenticated identity of a request and the well-known names Kubernetes gives to users
//! and groups.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Group every authenticated user belongs to.
pub const GROUP_AUTHENTICATED: &str = "system:authenticated";
/// Group of unauthenticated requests (only used by the default policy: kinit answers 401).
pub const GROUP_UNAUTHENTICATED: &str = "system:unauthenticated";
/// Group bound to `cluster-admin` by the default policy.
pub const GROUP_MASTERS: &str = "system:masters";
/// Group of all kubelets.
pub const GROUP_NODES: &str = "system:nodes";
/// Group of every bootstrap-token user.
pub const GROUP_BOOTSTRAPPERS: &str = "system:bootstrappers";
/// Group of every service account.
pub const GROUP_SERVICE_ACCOUNTS: &str = "system:serviceaccounts";
/// User name of unauthenticated requests.
pub const USER_ANONYMOUS: &str = "system:anonymous";
/// Prefix of node user names: `system:node:<node name>`.
pub const NODE_USER_PREFIX: &str = "system:node:";
/// Prefix of service-account user names: `system:serviceaccount:<namespace>:<name>`.
pub const SERVICE_ACCOUNT_USER_PREFIX: &str = "system:serviceaccount:";
/// Prefix of bootstrap-token user names: `system:bootstrap:<token id>`.
pub const BOOTSTRAP_USER_PREFIX: &str = "system:bootstrap:";
/// `UserInfo::extra` key naming the pod a bound service-account token belongs to.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// `UserInfo::extra` key with the uid of the pod a bound service-account token belongs to.
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
/// `UserInfo::extra` key identifying the credential (`JTI=<id>` for service-account tokens).
pub const EXTRA_CREDENTIAL_ID: &str = "authentication.kubernetes.io/credential-id";

/// Who is making a request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// User name (certificate CN, `system:serviceaccount:<ns>:<name>`, ...).
    pub name: String,
    /// Stable uid when the identity has one (service accounts), else empty.
    pub uid: String,
    /// Groups, always including `system:authenticated` for authenticated users.
    pub groups: Vec<String>,
    /// Additional attributes (pod binding of service-account tokens, ...).
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// A user with a name and groups, no uid and no extra attributes.
    pub fn new(
        name: impl Into<String>,
        groups: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        UserInfo {
            name: name.into(),
            uid: String::new(),
            groups: groups.into_iter().map(Into::into).collect(),
            extra: BTreeMap::new(),
        }
    }

    /// Whether the user is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// The node name when this is a kubelet identity (`system:node:<name>` in `system:nodes`).
    pub fn node_name(&self) -> Option<&str> {
        let node = self.name.strip_prefix(NODE_USER_PREFIX)?;
        (!node.is_empty() && self.in_group(GROUP_NODES)).then_some(node)
    }

    /// `(namespace, name)` when this is a service-account identity.
    pub fn service_account(&self) -> Option<(&str, &str)> {
        let rest = self.name.strip_prefix(SERVICE_ACCOUNT_USER_PREFIX)?;
        let (namespace, name) = rest.split_once(':')?;
        (!namespace.is_empty() && !name.is_empty() && !name.contains(':'))
            .then_some((namespace, name))
    }

    /// Adds `system:authenticated` unless already present (Kubernetes does this for every
    /// authenticated, non-anonymous user).
    pub(crate) fn with_authenticated_group(mut self) -> Self {
        if !self.in_group(GROUP_AUTHENTICATED) {
            self.groups.push(GROUP_AUTHENTICATED.to_string());
        }
        self
    }
}

/// User name of a service account.
pub fn service_account_user_name(namespace: &str, name: &str) -> String {
    format!("{SERVICE_ACCOUNT_USER_PREFIX}{namespace}:{name}")
}

/// Group of all service accounts of one namespace.
pub fn service_account_namespace_group(namespace: &str) -> String {
    format!("{GROUP_SERVICE_ACCOUNTS}:{namespace}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_name_needs_prefix_and_group() {
        let node = UserInfo::new("system:node:w1", [GROUP_NODES]);
        assert_eq!(node.node_name(), Some("w1"));
        let no_group = UserInfo::new("system:node:w1", ["dev"]);
        assert_eq!(no_group.node_name(), None);
        let empty = UserInfo::new("system:node:", [GROUP_NODES]);
        assert_eq!(empty.node_name(), None);
    }

    #[test]
    fn service_account_names_roundtrip() {
        let user = UserInfo::new(service_account_user_name("kube-system", "dns"), [""; 0]);
        assert_eq!(user.service_account(), Some(("kube-system", "dns")));
        assert_eq!(UserInfo::new("alice", [""; 0]).service_account(), None);
        assert_eq!(
            service_account_namespace_group("dev"),
            "system:serviceaccounts:dev"
        );
    }

    #[test]
    fn authenticated_group_added_once() {
        let user = UserInfo::new("a", [GROUP_AUTHENTICATED]).with_authenticated_group();
        assert_eq!(user.groups, vec![GROUP_AUTHENTICATED.to_string()]);
        let user = UserInfo::new("a", ["dev"]).with_authenticated_group();
        assert_eq!(
            user.groups,
            vec!["dev".to_string(), GROUP_AUTHENTICATED.to_string()]
        );
    }
}
