//! kinit's Kubernetes-compatible API server.
//!
//! Serves the Kubernetes REST API over HTTPS for an unmodified kubectl: discovery (aggregated
//! and legacy), a minimal OpenAPI v3, CRUD/patch/apply/watch on the built-in kinds of
//! [`registry::RESOURCES`] stored in a [`kinit_store::Store`], server-side Tables, protobuf
//! request bodies, Status errors, and authentication/authorization through `kinit-auth`
//! (client certificates, bootstrap and service-account tokens, Node + RBAC).
//!
//! Entry points: [`run`] for `kinit apiserver` (flags in [`ApiServerArgs`]), and
//! [`ApiServer::new`] + [`ApiServer::serve`] for embedding and tests.

//!
//! Module layout, top to bottom (a module uses only modules below it):
//! - [`args`] → [`server`]: flags, TLS, routing, authentication/authorization, dispatch;
//! - the request handlers: [`handlers`] (generic verbs, one module per verb group),
//!   [`subresources`], [`reviews`], [`componentstatus`], [`watch`] and [`bootstrap`];
//! - [`admission`] (with [`escalation`]): the admission plugins the table names;
//! - [`state`]: [`state::State`] and the per-request [`state::Ctx`];
//! - [`paging`], [`response`], [`access`], [`services`], [`objects`] (the one door to the
//!   store), [`registry`] with [`kinds`] (the resource table and per-kind hooks), and the
//!   helpers ([`request`], [`validation`], [`tables`], [`selectors`], [`patch`],
//!   [`protobuf`], [`error`]).

pub mod access;
pub mod admission;
pub mod agent_proxy;
pub mod args;
pub mod bootstrap;
pub mod componentstatus;
pub mod discovery;
pub mod error;
pub mod escalation;
pub mod handlers;
pub mod impersonation;
pub mod kinds;
pub mod names;
pub mod node_proxy;
pub mod objects;
pub mod paging;
pub mod patch;
pub mod probes;
pub mod protobuf;
pub mod registry;
pub mod request;
pub mod response;
pub mod reviews;
pub mod selectors;
pub mod server;
pub mod services;
pub mod state;
pub mod subresources;
pub mod sync;
pub mod tables;
#[cfg(feature = "testing")]
pub mod testing;
pub mod validation;
pub mod watch;

pub use access::AuthorizationMode;
pub use args::{run, ApiServerArgs};
pub use error::{ApiError, ApiServerError, StatusReason};
pub use node_proxy::{NodeEndpoint, NodeProxy, NodeRequest};
pub use probes::ComponentStatusConfig;
pub use server::{ApiServer, ApiServerConfig, TlsMaterial};
