//! Authentication and authorization for kinit's API server.
//!
//! Authentication ([`Authenticator`]) maps a request's credential to a [`UserInfo`]:
//! - a TLS client certificate (already verified against the client CA): CN is the user, every O a group;
//! - a bootstrap token `<id>.<secret>` matching secret `kube-system/bootstrap-token-<id>`
//!   → `system:bootstrap:<id>` in `system:bootstrappers` and the token's `auth-extra-groups`;
//! - a service-account JWT (RS256, signed with `sa.key`, verified with `sa.pub`), bound
//!   (TokenRequest / projected volumes: issuer, audience, expiry, bound pod or secret checked) or
//!   legacy (secret-based) → `system:serviceaccount:<ns>:<name>`.
//!
//! [`TokenIssuer`] issues service-account tokens.
//!
//! Authorization ([`Authorizer`]) chains the [`NodeAuthorizer`] (kubelets may touch only what
//! their pods need) and the [`RbacAuthorizer`] (Kubernetes RBAC, with aggregation). The default
//! RBAC objects a fresh cluster needs come from [`default_policy`]. [`NodeAuthorizer::admit`] is
//! the write-side companion (Kubernetes' NodeRestriction admission) for checks that need the body;
//! [`uncovered`] is the coverage test behind RBAC's privilege-escalation prevention.

mod attributes;
mod authenticator;
mod authorizer;
mod bootstrap;
mod error;
mod escalation;
mod keys;
mod lookup;
mod node;
mod policy;
mod rbac;
mod rules;
mod selector;
mod service_account;
mod user;
mod x509;

#[cfg(test)]
mod testing;

pub use attributes::{Attributes, Decision};
pub use authenticator::{Authenticator, AuthenticatorConfig};
pub use authorizer::Authorizer;
pub use bootstrap::{
    is_valid_bootstrap_group, parse_bootstrap_token, BOOTSTRAP_GROUP_PREFIX,
    BOOTSTRAP_TOKEN_NAMESPACE, BOOTSTRAP_TOKEN_SECRET_PREFIX, BOOTSTRAP_TOKEN_SECRET_TYPE,
};
pub use error::AuthError;
pub use escalation::{describe_rule, full_authority, uncovered};
pub use lookup::ObjectLookup;
pub use node::{
    NodeAuthorizer, NodeWrite, MIRROR_POD_ANNOTATION, NODE_LEASE_NAMESPACE,
    NODE_RESTRICTION_LABEL_PREFIX,
};
pub use policy::{
    default_policy, DefaultPolicy, AGGREGATE_TO_ADMIN, AGGREGATE_TO_EDIT, AGGREGATE_TO_VIEW,
    AUTOUPDATE_ANNOTATION, BOOTSTRAPPING_LABEL, BOOTSTRAPPING_VALUE, DEFAULT_NODE_TOKEN_GROUP,
};
pub use rbac::{RbacAuthorizer, RbacKind, RbacObject};
pub use service_account::{
    TokenClaims, TokenIssuer, LEGACY_ISSUER, MAX_EXPIRATION_SECONDS, MIN_EXPIRATION_SECONDS,
};
pub use user::{
    service_account_namespace_group, service_account_user_name, UserInfo, BOOTSTRAP_USER_PREFIX,
    EXTRA_CREDENTIAL_ID, EXTRA_POD_NAME, EXTRA_POD_UID, GROUP_AUTHENTICATED, GROUP_BOOTSTRAPPERS,
    GROUP_MASTERS, GROUP_NODES, GROUP_SERVICE_ACCOUNTS, GROUP_UNAUTHENTICATED, NODE_USER_PREFIX,
    SERVICE_ACCOUNT_USER_PREFIX, USER_ANONYMOUS,
};
pub use x509::user_from_client_certificate;

#[cfg(test)]
mod tests {
    use super::*;

    fn shared_across_tasks<T: Send + Sync + 'static>() {}

    #[test]
    fn api_server_can_share_everything_across_tasks() {
        // Compile-time check: the API server keeps these in `Arc`s used by many request tasks.
        shared_across_tasks::<Authenticator>();
        shared_across_tasks::<TokenIssuer>();
        shared_across_tasks::<RbacAuthorizer>();
        shared_across_tasks::<NodeAuthorizer>();
        shared_across_tasks::<Authorizer>();
        shared_across_tasks::<std::sync::Arc<dyn ObjectLookup>>();
        let json = serde_json::to_value(UserInfo::new("alice", ["dev"])).unwrap();
        assert_eq!(json["name"], "alice");
        assert_eq!(json["groups"][0], "dev");
    }
}
