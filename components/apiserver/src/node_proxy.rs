//! The interface to node agents the pod subresources (`log`, `exec`, `attach`,
//! `portforward`) are forwarded through: where an agent listens and the forwarder trait the
//! agent proxy implements.

use async_trait::async_trait;
use axum::body::Body;
use axum::response::Response;
use serde_json::Value;

use crate::error::ApiError;
use crate::objects::meta_str;

/// Where a node's agent listens, from the Node object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEndpoint {
    /// Node name.
    pub node: String,
    /// Address (InternalIP, else ExternalIP, else Hostname).
    pub address: String,
    /// Agent port (`status.daemonEndpoints.kubeletEndpoint.Port`, default 10250).
    pub port: u16,
}

/// A forwarded pod request: the agent path (`/containerLogs/<ns>/<pod>/<container>`,
/// `/exec/<ns>/<pod>/<container>`, ...) plus the original request (upgrade headers included).
pub struct NodeRequest {
    /// Target agent.
    pub endpoint: NodeEndpoint,
    /// Path and query on the agent.
    pub path_and_query: String,
    /// The client's request.
    pub request: http::Request<Body>,
}

/// Forwards pod log/exec/attach/port-forward requests to node agents. The agent component
/// provides the implementation; without one the API server answers 503.
#[async_trait]
pub trait NodeProxy: Send + Sync {
    /// Forwards the request and returns the agent's response (streaming or upgraded).
    async fn forward(&self, request: NodeRequest) -> Result<Response, ApiError>;
}

/// The endpoint of `node` from its Node object.
pub fn node_endpoint(node: &Value) -> Option<NodeEndpoint> {
    let addresses = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)?;
    let pick = |t: &str| {
        addresses
            .iter()
            .find(|a| a.get("type").and_then(Value::as_str) == Some(t))
            .and_then(|a| a.get("address").and_then(Value::as_str))
            .filter(|a| !a.is_empty())
    };
    let address = pick("InternalIP")
        .or_else(|| pick("ExternalIP"))
        .or_else(|| pick("Hostname"))?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .filter(|p| *p > 0 && *p < 65536)
        .unwrap_or(10250) as u16;
    Some(NodeEndpoint {
        node: meta_str(node, "name").to_string(),
        address: address.to_string(),
        port,
    })
}
