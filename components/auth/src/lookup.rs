//! Read access to the objects authentication and authorization depend on.

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};

use crate::AuthError;

/// Objects the authenticators/authorizers need to read (backed by the API server's store).
#[async_trait]
pub trait ObjectLookup: Send + Sync {
    /// The secret `namespace/name`, or `None` when it does not exist.
    async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>, AuthError>;
    /// The service account `namespace/name`, or `None` when it does not exist.
    async fn service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ServiceAccount>, AuthError>;
    /// The pod `namespace/name`, or `None` when it does not exist.
    async fn pod(&self, namespace: &str, name: &str) -> Result<Option<Pod>, AuthError>;
    /// Pods whose spec.nodeName is `node` (node authorizer).
    async fn pods_on_node(&self, node: &str) -> Result<Vec<Pod>, AuthError>;
}
