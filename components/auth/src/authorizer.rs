//! The authorizer chain the API server calls for every request.

use std::sync::Arc;

use crate::{Attributes, Decision, NodeAuthorizer, RbacAuthorizer};

/// Chain: node authorizer, then RBAC. (Do NOT special-case system:masters in code: the default
/// policy binds it to cluster-admin like Kubernetes does.)
#[derive(Debug, Clone)]
pub struct Authorizer {
    node: Arc<NodeAuthorizer>,
    rbac: Arc<RbacAuthorizer>,
}

impl Authorizer {
    /// Chains `node` before `rbac`.
    pub fn new(node: Arc<NodeAuthorizer>, rbac: Arc<RbacAuthorizer>) -> Self {
        Authorizer { node, rbac }
    }

    /// Allowed when the node authorizer or RBAC allows. A refusal carries both authorizers'
    /// reasons (the node authorizer's only for node identities).
    pub async fn authorize(&self, attrs: &Attributes) -> Decision {
        let node_reason = match self.node.authorize(attrs).await {
            Some(decision) if decision.allowed => return decision,
            Some(decision) => Some(decision.reason),
            None => None,
        };
        let rbac = self.rbac.authorize(attrs);
        match node_reason {
            Some(reason) if !rbac.allowed => Decision::deny(format!("{reason}; {}", rbac.reason)),
            _ => rbac,
        }
    }
}
