//! Kubernetes rules that several components apply to the same objects, kept in one place so
//! they cannot come to disagree: Services and EndpointSlices (the service proxy, the cluster
//! DNS, the agent's service environment variables, the EndpointSlice controller) here at the
//! top, and per topic:
//!
//! - [`tolerations`]: whether tolerations tolerate taints (scheduler, DaemonSet controller,
//!   taint eviction);
//! - [`node_affinity`]: `nodeSelector` and required node affinity against a node;
//! - [`labels`]: label selectors and Service map selectors;
//! - [`qos`]: a pod's QoS class;
//! - [`owners`]: controller references;
//! - [`quantity`]: resource quantities as exact integers;
//! - [`errors`]: not-found and conflict answers of the API server.

#![warn(missing_docs)]

pub mod errors;
pub mod labels;
pub mod node_affinity;
pub mod owners;
pub mod qos;
pub mod quantity;
pub mod tolerations;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::Endpoint;

/// Label naming the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Label by which a Service asks for another proxy than the default one (kube-proxy and kinit's
/// proxy skip Services that carry it).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// `clusterIP: None`: a headless Service.
pub const CLUSTER_IP_NONE: &str = "None";

/// Whether the Service has a virtual IP (Kubernetes' `IsServiceIPSet`): `spec.clusterIP` is
/// set and not `None`. ExternalName Services have none.
pub fn has_cluster_ip(service: &Service) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .is_some_and(|ip| !ip.is_empty() && ip != CLUSTER_IP_NONE)
}

/// Whether the Service is headless: `clusterIP: None`, so DNS answers with its endpoints.
pub fn is_headless(service: &Service) -> bool {
    service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some(CLUSTER_IP_NONE)
}

/// Whether the Service is an ExternalName (a DNS alias, never proxied).
pub fn is_external_name(service: &Service) -> bool {
    service.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ExternalName")
}

/// The endpoint's `ready` condition; unset means ready (the EndpointSlice API's rule).
pub fn endpoint_ready(endpoint: &Endpoint) -> bool {
    endpoint
        .conditions
        .as_ref()
        .and_then(|c| c.ready)
        .unwrap_or(true)
}

/// The endpoint's `serving` condition; unset means the same as `ready`.
pub fn endpoint_serving(endpoint: &Endpoint) -> bool {
    endpoint
        .conditions
        .as_ref()
        .and_then(|c| c.serving)
        .unwrap_or_else(|| endpoint_ready(endpoint))
}

/// The endpoint's `terminating` condition; unset means not terminating.
pub fn endpoint_terminating(endpoint: &Endpoint) -> bool {
    endpoint
        .conditions
        .as_ref()
        .and_then(|c| c.terminating)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(spec: serde_json::Value) -> Service {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "s"}, "spec": spec}))
            .unwrap()
    }

    fn endpoint(conditions: serde_json::Value) -> Endpoint {
        serde_json::from_value(
            serde_json::json!({"addresses": ["10.0.0.1"], "conditions": conditions}),
        )
        .unwrap()
    }

    #[test]
    fn cluster_ip_headless_and_external_name() {
        let normal = service(serde_json::json!({"clusterIP": "10.96.0.5"}));
        assert!(has_cluster_ip(&normal) && !is_headless(&normal));
        let headless = service(serde_json::json!({"clusterIP": "None"}));
        assert!(!has_cluster_ip(&headless) && is_headless(&headless));
        let unallocated = service(serde_json::json!({"clusterIP": ""}));
        assert!(!has_cluster_ip(&unallocated) && !is_headless(&unallocated));
        let external =
            service(serde_json::json!({"type": "ExternalName", "externalName": "x.example"}));
        assert!(is_external_name(&external) && !has_cluster_ip(&external));
    }

    #[test]
    fn endpoint_conditions_default_as_the_api_says() {
        let unset = endpoint(serde_json::json!({}));
        assert!(
            endpoint_ready(&unset) && endpoint_serving(&unset) && !endpoint_terminating(&unset)
        );
        let draining =
            endpoint(serde_json::json!({"ready": false, "serving": true, "terminating": true}));
        assert!(
            !endpoint_ready(&draining)
                && endpoint_serving(&draining)
                && endpoint_terminating(&draining)
        );
        let not_ready = endpoint(serde_json::json!({"ready": false}));
        assert!(
            !endpoint_serving(&not_ready),
            "serving follows ready when unset"
        );
    }
}
