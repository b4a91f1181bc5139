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

pub mod access;
pub mod agent_proxy;
pub mod args;
pub mod bootstrap;
pub mod discovery;
pub mod error;
pub mod escalation;
pub mod handlers;
pub mod impersonation;
pub mod objects;
pub mod patch;
pub mod protobuf;
pub mod registry;
pub mod request;
pub mod reviews;
pub mod selectors;
pub mod server;
pub mod services;
pub mod subresources;
pub mod sync;
pub mod tables;
#[cfg(feature = "testing")]
pub mod testing;
pub mod validation;
pub mod watch;

pub use access::AuthorizationMode;
pub use args::{run, ApiServerArgs};
pub use error::{ApiError, ApiServerError};
pub use server::{ApiServer, ApiServerConfig, TlsMaterial};
pub use subresources::{NodeEndpoint, NodeProxy, NodeRequest};
