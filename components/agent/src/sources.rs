//! Objects pods reference (ConfigMaps, Secrets, service-account tokens), read through the API
//! with the node's credentials, or refused for static pods when the API is not used.

use async_trait::async_trait;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::reflector::Store;
use std::sync::{Arc, OnceLock};

use crate::AgentError;

/// Where pod references are resolved.
#[async_trait]
pub trait ObjectSource: Send + Sync + 'static {
    /// A ConfigMap, `None` when it does not exist.
    async fn config_map(&self, ns: &str, name: &str) -> Result<Option<ConfigMap>, AgentError>;
    /// A Secret, `None` when it does not exist.
    async fn secret(&self, ns: &str, name: &str) -> Result<Option<Secret>, AgentError>;
    /// A service-account token bound to `pod`; returns the token and its lifetime in seconds.
    async fn token(
        &self,
        pod: &Pod,
        service_account: &str,
        audience: Option<&str>,
        expiration_seconds: i64,
    ) -> Result<(String, i64), AgentError>;
    /// The cluster CA (PEM) for `ca.crt` in projected service-account volumes, used when the
    /// namespace's `kube-root-ca.crt` ConfigMap is absent.
    fn cluster_ca(&self) -> Option<String>;
    /// The Services of namespace `ns`, for the containers' service environment variables.
    /// Sources without an API have none (static pods start without them, as the kubelet's).
    async fn services(&self, _ns: &str) -> Result<Vec<Service>, AgentError> {
        Ok(Vec::new())
    }
}

/// Resolves references through the API server as `system:node:<name>`.
#[derive(Clone)]
pub struct ApiObjects {
    client: kube::Client,
    ca_pem: Option<String>,
    services: Arc<OnceLock<Store<Service>>>,
}

impl ApiObjects {
    /// Uses `client`; `ca_pem` is the cluster CA from the agent's kubeconfig.
    pub fn new(client: kube::Client, ca_pem: Option<String>) -> ApiObjects {
        ApiObjects {
            client,
            ca_pem,
            services: Arc::new(OnceLock::new()),
        }
    }

    /// Reads Services from the store put into `cache` (the service proxy's, once it runs and
    /// has its first list) instead of listing them per container start.
    pub fn with_service_cache(mut self, cache: Arc<OnceLock<Store<Service>>>) -> ApiObjects {
        self.services = cache;
        self
    }
}

#[async_trait]
impl ObjectSource for ApiObjects {
    async fn config_map(&self, ns: &str, name: &str) -> Result<Option<ConfigMap>, AgentError> {
        Api::<ConfigMap>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await
            .map_err(|e| AgentError::api(&format!("reading configmap {ns}/{name}"), e))
    }

    async fn secret(&self, ns: &str, name: &str) -> Result<Option<Secret>, AgentError> {
        Api::<Secret>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await
            .map_err(|e| AgentError::api(&format!("reading secret {ns}/{name}"), e))
    }

    async fn token(
        &self,
        pod: &Pod,
        service_account: &str,
        audience: Option<&str>,
        expiration_seconds: i64,
    ) -> Result<(String, i64), AgentError> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: audience.map(|a| vec![a.to_string()]).unwrap_or_default(),
                expiration_seconds: Some(expiration_seconds),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: pod.metadata.name.clone(),
                    uid: pod.metadata.uid.clone(),
                }),
            },
            ..Default::default()
        };
        let response: TokenRequest = Api::<ServiceAccount>::namespaced(self.client.clone(), ns)
            .create_subresource("token", service_account, &PostParams::default(), &request)
            .await
            .map_err(|e| {
                AgentError::api(
                    &format!("requesting a token for service account {ns}/{service_account}"),
                    e,
                )
            })?;
        let status = response.status.ok_or_else(|| {
            AgentError::Internal("the TokenRequest response has no status".into())
        })?;
        let lifetime = response
            .spec
            .expiration_seconds
            .unwrap_or(expiration_seconds);
        Ok((status.token, lifetime))
    }

    fn cluster_ca(&self) -> Option<String> {
        self.ca_pem.clone()
    }

    async fn services(&self, ns: &str) -> Result<Vec<Service>, AgentError> {
        let ready = |s: &&Store<Service>| {
            futures::FutureExt::now_or_never(s.wait_until_ready()).is_some_and(|r| r.is_ok())
        };
        if let Some(store) = self.services.get().filter(ready) {
            return Ok(store
                .state()
                .iter()
                .filter(|s| s.metadata.namespace.as_deref() == Some(ns))
                .map(|s| (**s).clone())
                .collect());
        }
        Api::<Service>::namespaced(self.client.clone(), ns)
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .map_err(|e| AgentError::api(&format!("listing the services of namespace {ns}"), e))
    }
}

/// For static pods while the API is unreachable: every reference is refused with a clear reason.
pub struct NoApi;

fn no_api(what: &str) -> AgentError {
    AgentError::Config(format!(
        "cannot resolve {what}: the API server is not reachable (static pods may not reference API objects)"
    ))
}

#[async_trait]
impl ObjectSource for NoApi {
    async fn config_map(&self, ns: &str, name: &str) -> Result<Option<ConfigMap>, AgentError> {
        Err(no_api(&format!("configmap {ns}/{name}")))
    }
    async fn secret(&self, ns: &str, name: &str) -> Result<Option<Secret>, AgentError> {
        Err(no_api(&format!("secret {ns}/{name}")))
    }
    async fn token(
        &self,
        _pod: &Pod,
        service_account: &str,
        _audience: Option<&str>,
        _expiration_seconds: i64,
    ) -> Result<(String, i64), AgentError> {
        Err(no_api(&format!("a token for {service_account}")))
    }
    fn cluster_ca(&self) -> Option<String> {
        None
    }
}
