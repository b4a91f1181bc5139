//! Host files for kinit, rendered from templates embedded in the binary.
//!
//! The installer fills a [`ClusterRenderContext`] per host from the inventory; [`render_all`]
//! validates it and renders every file that applies to the host's roles: kubeadm-style static
//! pods (API server, controller manager, scheduler, etcd), the node agent's systemd unit and
//! config, containerd's config, the CNI conflist, and haproxy/keepalived for the API VIP.
//!
//! Templates are minijinja with strict undefined behaviour (a missing value is an error naming
//! the template and the variable, never an empty string) and no auto-escaping. Strings placed
//! in YAML, JSON or TOML go through `tojson`, so no value can break the document around it.
//!
//! ```
//! use kinit_templates::{render_all, ClusterRenderContext};
//!
//! let files = render_all(&ClusterRenderContext::default()).unwrap();
//! assert!(files
//!     .iter()
//!     .any(|f| f.path.ends_with("manifests/kube-apiserver.yaml")));
//! ```

#![warn(missing_docs)]

mod context;
mod engine;
mod error;
mod render;

pub use context::{
    ApiHealthCheck, CgroupDriver, ClusterRenderContext, ClusterSettings, ControlPlaneSettings,
    EtcdClusterSettings, EtcdInitialClusterState, EtcdMember, EtcdMemberSettings, ImageSettings,
    LoadBalancerBackend, LoadBalancerSettings, NodeSettings, Taint, TaintEffect, VrrpState,
};
pub use engine::{render_source, render_template, template_names, template_source};
pub use error::{ContextProblem, TemplateError};
pub use render::{
    render_all, HostFile, RenderedFile, AGENT_CONFIG_PATH, AGENT_UNIT_PATH, PKI_DIR,
    STATIC_POD_MANIFEST_DIR,
};
