//! What every handler works with: [`State`], the shared state of a running server, and
//! [`Ctx`], one request's context (target, query, headers, caller, warnings). Below the
//! handlers, admission and the server in the module graph.

use std::sync::{Arc, Mutex};

use axum::response::Response;
use http::{header, HeaderMap, HeaderValue};
use kinit_auth::{TokenIssuer, UserInfo};

use crate::access::Access;
use crate::error::ApiError;
use crate::node_proxy::NodeProxy;
use crate::objects::Objects;
use crate::probes::ComponentStatusConfig;
use crate::registry::ResourceDef;
use crate::request::{Query, Target};
use crate::services::ServiceAllocator;

/// Shared state of a running server.
pub struct State {
    /// The store, through its one door.
    pub objects: Objects,
    /// Authentication and authorization.
    pub access: Access,
    /// Service IP/port allocation.
    pub services: ServiceAllocator,
    /// Issuer of service-account tokens.
    pub token_issuer: Option<TokenIssuer>,
    /// Audiences of issued tokens by default.
    pub api_audiences: Vec<String>,
    /// Node agent forwarder.
    pub node_proxy: Option<Arc<dyn NodeProxy>>,
    /// `https://host:port` this server advertises.
    pub server_address: String,
    /// Where `componentstatuses` probes.
    pub component_status: ComponentStatusConfig,
}

/// Per-request context.
pub struct Ctx<'a> {
    /// Server state.
    pub state: &'a Arc<State>,
    /// The target.
    pub target: &'a Target,
    /// Query parameters.
    pub query: &'a Query,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The caller.
    pub user: &'a UserInfo,
    /// `Warning` headers to add.
    pub warnings: Mutex<Vec<String>>,
}

impl Ctx<'_> {
    /// The resource of the request.
    pub fn def(&self) -> &'static ResourceDef {
        self.target.def
    }

    /// Whether `dryRun=All` is set.
    pub fn dry_run(&self) -> Result<bool, ApiError> {
        self.query.dry_run()
    }

    /// The same request aimed at another object of the same resource (deletecollection).
    pub fn for_target<'b>(&'b self, target: &'b Target) -> Ctx<'b> {
        Ctx {
            state: self.state,
            target,
            query: self.query,
            headers: self.headers,
            user: self.user,
            warnings: Mutex::new(Vec::new()),
        }
    }

    /// The field manager: `?fieldManager=` or the user agent's product name.
    pub fn manager(&self) -> String {
        if let Some(m) = self.query.get("fieldManager").filter(|m| !m.is_empty()) {
            return m.to_string();
        }
        let ua = self
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown");
        ua.split('/').next().unwrap_or("unknown").to_string()
    }

    /// Adds a `Warning` header to the response.
    pub fn warn(&self, message: String) {
        if let Ok(mut w) = self.warnings.lock() {
            w.push(message);
        }
    }

    /// Adds the collected warnings to a response.
    pub fn finish(&self, mut resp: Response) -> Response {
        if let Ok(w) = self.warnings.lock() {
            for message in w.iter() {
                let v = format!(
                    "299 - {}",
                    serde_json::to_string(message).unwrap_or_default()
                );
                if let Ok(h) = HeaderValue::from_str(&v) {
                    resp.headers_mut().append(header::WARNING, h);
                }
            }
        }
        resp
    }
}
