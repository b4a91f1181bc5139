//! Endpoints and EndpointSlice controllers: for every Service with a selector, the addresses of
//! the matching pods (ready and not ready) with the Service's ports resolved against the pods'
//! container ports. Services without a selector (like `default/kubernetes`, which the API server
//! maintains itself) are never touched.
//!
//! kinit's Endpoints carry an owner reference to their Service (Kubernetes' endpoints controller
//! deletes them by hand instead); the garbage collector then removes them with the Service.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
    ServicePort,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};

use super::util::{controller_reference_to, is_not_found, selector_matches, selector_string};
use super::{ClusterControllerError, ReconcileError};
use crate::informer::{owners, Informers};

/// Label naming the Service of an EndpointSlice.
pub use kinit_rules::SERVICE_NAME_LABEL;
/// Label naming the controller that manages an EndpointSlice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's `managed-by` value (the one Kubernetes uses).
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Most endpoints per slice (Kubernetes' default `--max-endpoints-per-slice`).
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// Which objects to maintain.
#[derive(Debug, Clone, Copy)]
pub struct EndpointsConfig {
    /// core/v1 Endpoints.
    pub endpoints: bool,
    /// discovery.k8s.io/v1 EndpointSlices.
    pub slices: bool,
}

/// One pod's resolved view for a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodEndpoint {
    ip: String,
    name: String,
    namespace: String,
    uid: String,
    node: Option<String>,
    hostname: Option<String>,
    ready: bool,
    serving: bool,
    terminating: bool,
    /// `(service port index, resolved port)`.
    ports: Vec<(usize, i32)>,
}

/// Resolves a Service port against a pod: a named targetPort is looked up among the pod's
/// container ports (matching protocol), a numeric one (or none) is used as is.
pub fn find_port(pod: &Pod, port: &ServicePort) -> Option<i32> {
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse::<i32>() {
                return Some(n);
            }
            pod.spec.as_ref()?.containers.iter().find_map(|c| {
                c.ports.as_ref()?.iter().find_map(|p| {
                    (p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol)
                        .then_some(p.container_port)
                })
            })
        }
    }
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_endpoint(service: &Service, pod: &Pod) -> Option<PodEndpoint> {
    let status = pod.status.as_ref()?;
    let phase = status.phase.as_deref().unwrap_or("");
    if phase == "Succeeded" || phase == "Failed" {
        return None;
    }
    let ip = status.pod_ip.clone().filter(|ip| !ip.is_empty())?;
    let spec = service.spec.as_ref()?;
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let ready_condition = pod_ready(pod);
    let ports = spec
        .ports
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, p)| find_port(pod, p).map(|n| (i, n)))
        .collect();
    let hostname = pod.spec.as_ref().and_then(|s| {
        let subdomain = s.subdomain.as_deref()?;
        (Some(subdomain) == service.metadata.name.as_deref())
            .then(|| s.hostname.clone())
            .flatten()
    });
    Some(PodEndpoint {
        ip,
        name: pod.name_any(),
        namespace: pod.namespace().unwrap_or_default(),
        uid: pod.uid().unwrap_or_default(),
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        hostname,
        ready: publish_not_ready || (ready_condition && !terminating),
        serving: publish_not_ready || ready_condition,
        terminating,
        ports,
    })
}

fn target_ref(e: &PodEndpoint) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        name: Some(e.name.clone()),
        namespace: Some(e.namespace.clone()),
        uid: Some(e.uid.clone()),
        ..ObjectReference::default()
    }
}

fn endpoints_of(service: &Service, pods: &[Pod]) -> Vec<PodEndpoint> {
    let mut out: Vec<PodEndpoint> = pods
        .iter()
        .filter_map(|p| pod_endpoint(service, p))
        .collect();
    out.sort_by(|a, b| (&a.ip, &a.name).cmp(&(&b.ip, &b.name)));
    out
}

/// The Endpoints subsets of `service` for `pods`: each pod's address under every port it
/// resolves, packed into subsets of identical port sets (Kubernetes' RepackSubsets); terminating
/// pods are left out unless `publishNotReadyAddresses`.
pub fn build_subsets(service: &Service, pods: &[Pod]) -> Vec<EndpointSubset> {
    let Some(spec) = service.spec.as_ref() else {
        return Vec::new();
    };
    let service_ports: Vec<&ServicePort> = spec.ports.iter().flatten().collect();
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    // port set -> (ready addresses, not-ready addresses)
    type Group = (Vec<EndpointAddress>, Vec<EndpointAddress>);
    let mut groups: BTreeMap<Vec<(String, i32, String)>, Group> = BTreeMap::new();
    for e in endpoints_of(service, pods) {
        if e.terminating && !publish_not_ready {
            continue;
        }
        let mut ports: Vec<(String, i32, String)> = e
            .ports
            .iter()
            .map(|(i, n)| {
                let p = service_ports[*i];
                (
                    p.name.clone().unwrap_or_default(),
                    *n,
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                )
            })
            .collect();
        if ports.is_empty() && !service_ports.is_empty() {
            continue;
        }
        ports.sort();
        let address = EndpointAddress {
            ip: e.ip.clone(),
            hostname: e.hostname.clone(),
            node_name: e.node.clone(),
            target_ref: Some(target_ref(&e)),
        };
        let group = groups.entry(ports).or_default();
        if e.ready {
            group.0.push(address);
        } else {
            group.1.push(address);
        }
    }
    groups
        .into_iter()
        .map(|(ports, (ready, not_ready))| EndpointSubset {
            addresses: (!ready.is_empty()).then_some(ready),
            not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
            ports: (!ports.is_empty()).then(|| {
                ports
                    .into_iter()
                    .map(|(name, port, protocol)| EndpointPort {
                        name: (!name.is_empty()).then_some(name),
                        port,
                        protocol: Some(protocol),
                        app_protocol: None,
                    })
                    .collect()
            }),
        })
        .collect()
}

/// The EndpointSlices `service` should have for `pods` (without names): one slice per address
/// type and port set, at most [`MAX_ENDPOINTS_PER_SLICE`] endpoints each, with conditions
/// ready/serving/terminating, labelled for the Service and owned by it.
pub fn build_slices(service: &Service, pods: &[Pod]) -> Vec<EndpointSlice> {
    let Some(spec) = service.spec.as_ref() else {
        return Vec::new();
    };
    let service_ports: Vec<&ServicePort> = spec.ports.iter().flatten().collect();
    // (address type, resolved ports) -> endpoints
    type SliceKey = (String, Vec<(usize, i32)>);
    let mut groups: BTreeMap<SliceKey, Vec<Endpoint>> = BTreeMap::new();
    for e in endpoints_of(service, pods) {
        if e.ports.is_empty() && !service_ports.is_empty() {
            continue;
        }
        let family = match e.ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => "IPv4",
            Ok(IpAddr::V6(_)) => "IPv6",
            Err(_) => continue,
        };
        let endpoint = Endpoint {
            addresses: vec![e.ip.clone()],
            conditions: Some(EndpointConditions {
                ready: Some(e.ready),
                serving: Some(e.serving),
                terminating: Some(e.terminating),
            }),
            hostname: e.hostname.clone(),
            node_name: e.node.clone(),
            target_ref: Some(target_ref(&e)),
            ..Endpoint::default()
        };
        groups
            .entry((family.to_string(), e.ports.clone()))
            .or_default()
            .push(endpoint);
    }
    let service_name = service.name_any();
    let mut labels: BTreeMap<String, String> = service.labels().clone();
    labels.insert(SERVICE_NAME_LABEL.into(), service_name.clone());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    let owner = controller_reference_to(service);
    let mut out = Vec::new();
    for ((family, ports), endpoints) in groups {
        let slice_ports: Vec<SlicePort> = ports
            .iter()
            .map(|(i, n)| {
                let p = service_ports[*i];
                SlicePort {
                    name: Some(p.name.clone().unwrap_or_default()),
                    port: Some(*n),
                    protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                    app_protocol: p.app_protocol.clone(),
                }
            })
            .collect();
        for chunk in endpoints.chunks(MAX_ENDPOINTS_PER_SLICE) {
            out.push(EndpointSlice {
                metadata: ObjectMeta {
                    generate_name: Some(format!("{service_name}-")),
                    namespace: service.namespace(),
                    labels: Some(labels.clone()),
                    owner_references: Some(vec![owner.clone()]),
                    ..ObjectMeta::default()
                },
                address_type: family.clone(),
                endpoints: chunk.to_vec(),
                ports: Some(slice_ports.clone()),
            });
        }
    }
    out
}

struct Ctx {
    client: Client,
    config: EndpointsConfig,
}

fn has_selector(service: &Service) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|s| !s.is_empty())
}

async fn reconcile(service: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    if !has_selector(&service) || service.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = service.namespace().unwrap_or_default();
    let name = service.name_any();
    let selector = service
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pods = pods
        .list(&ListParams::default().labels(&selector_string(&selector)))
        .await
        .map_err(ReconcileError::kube(format!(
            "listing pods of service {ns}/{name}"
        )))?
        .items;
    if ctx.config.endpoints {
        sync_endpoints(&ctx.client, &service, &pods).await?;
    }
    if ctx.config.slices {
        sync_slices(&ctx.client, &service, &pods).await?;
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

async fn sync_endpoints(
    client: &Client,
    service: &Service,
    pods: &[Pod],
) -> Result<(), ReconcileError> {
    let ns = service.namespace().unwrap_or_default();
    let name = service.name_any();
    let api: Api<Endpoints> = Api::namespaced(client.clone(), &ns);
    let subsets = build_subsets(service, pods);
    let subsets = (!subsets.is_empty()).then_some(subsets);
    let labels = service.labels().clone();
    let owner = Some(vec![controller_reference_to(service)]);
    let what = format!("endpoints {ns}/{name}");
    match api
        .get_opt(&name)
        .await
        .map_err(ReconcileError::kube(format!("reading {what}")))?
    {
        Some(mut existing) => {
            let same_labels = existing.metadata.labels.clone().unwrap_or_default() == labels;
            let owned = existing.metadata.owner_references == owner;
            if existing.subsets == subsets && same_labels && owned {
                return Ok(());
            }
            existing.subsets = subsets;
            existing.metadata.labels = Some(labels);
            existing.metadata.owner_references = owner;
            api.replace(&name, &PostParams::default(), &existing)
                .await
                .map_err(ReconcileError::kube(format!("updating {what}")))?;
        }
        None => {
            let endpoints = Endpoints {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    labels: Some(labels),
                    owner_references: owner,
                    ..ObjectMeta::default()
                },
                subsets,
            };
            api.create(&PostParams::default(), &endpoints)
                .await
                .map_err(ReconcileError::kube(format!("creating {what}")))?;
        }
    }
    Ok(())
}

fn same_slice(a: &EndpointSlice, b: &EndpointSlice) -> bool {
    a.address_type == b.address_type
        && a.endpoints == b.endpoints
        && a.ports == b.ports
        && a.metadata.labels == b.metadata.labels
        && a.metadata.owner_references == b.metadata.owner_references
}

async fn sync_slices(
    client: &Client,
    service: &Service,
    pods: &[Pod],
) -> Result<(), ReconcileError> {
    let ns = service.namespace().unwrap_or_default();
    let name = service.name_any();
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    let selector = format!("{SERVICE_NAME_LABEL}={name},{MANAGED_BY_LABEL}={MANAGED_BY}");
    let mut existing = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(ReconcileError::kube(format!(
            "listing endpointslices of service {ns}/{name}"
        )))?
        .items;
    existing.sort_by_key(|s| s.name_any());
    let desired = build_slices(service, pods);
    let mut existing = existing.into_iter();
    for want in desired {
        match existing.next() {
            Some(have) if same_slice(&have, &want) => {}
            Some(mut have) => {
                let slice_name = have.name_any();
                have.address_type = want.address_type;
                have.endpoints = want.endpoints;
                have.ports = want.ports;
                have.metadata.labels = want.metadata.labels;
                have.metadata.owner_references = want.metadata.owner_references;
                api.replace(&slice_name, &PostParams::default(), &have)
                    .await
                    .map_err(ReconcileError::kube(format!(
                        "updating endpointslice {ns}/{slice_name}"
                    )))?;
            }
            None => {
                api.create(&PostParams::default(), &want)
                    .await
                    .map_err(ReconcileError::kube(format!(
                        "creating an endpointslice for service {ns}/{name}"
                    )))?;
            }
        }
    }
    for extra in existing {
        let slice_name = extra.name_any();
        match api.delete(&slice_name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                return Err(ReconcileError::Kube {
                    action: format!("deleting endpointslice {ns}/{slice_name}"),
                    source: e,
                })
            }
        }
    }
    Ok(())
}

fn error_policy(service: Arc<Service>, error: &ReconcileError, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(
        service = %format!("{}/{}", service.namespace().unwrap_or_default(), service.name_any()),
        %error,
        "endpoints sync failed; retrying"
    );
    Action::requeue(Duration::from_secs(2))
}

/// Sets the Endpoints and/or EndpointSlice controller up on the shared `informers` (Services,
/// Pods, and the objects it writes) and returns the future that runs it until dropped.
pub fn run(
    informers: &mut Informers,
    config: EndpointsConfig,
) -> impl Future<Output = Result<(), ClusterControllerError>> + Send + 'static {
    let client = informers.client().clone();
    let services_informer = informers.get::<Service>();
    let objects = services_informer.objects();
    let services = services_informer.store();
    let controller = Controller::for_stream(objects, services.clone());
    // Services a pod matched last time, so a pod whose labels stop matching still triggers them.
    let previous: Arc<Mutex<HashMap<String, HashSet<ObjectRef<Service>>>>> = Arc::default();
    let mapper = move |pod: &Pod| {
        let ns = pod.namespace().unwrap_or_default();
        let uid = pod.uid().unwrap_or_default();
        let now: HashSet<ObjectRef<Service>> = services
            .state()
            .iter()
            .filter(|s| s.namespace().as_deref() == Some(ns.as_str()) && has_selector(s))
            .filter(|s| {
                let selector = s.spec.as_ref().and_then(|x| x.selector.as_ref());
                selector.is_some_and(|sel| selector_matches(sel, pod.metadata.labels.as_ref()))
            })
            .map(|s| ObjectRef::from_obj(s.as_ref()))
            .collect();
        let mut previous = previous.lock().unwrap_or_else(|e| e.into_inner());
        let mut all = previous.remove(&uid).unwrap_or_default();
        all.extend(now.iter().cloned());
        if !now.is_empty() {
            previous.insert(uid, now);
        }
        all.into_iter().collect()
    };
    let pod_triggers = informers
        .get::<Pod>()
        .triggers(move |pod: &Pod, _, _| mapper(pod));
    let mut controller = controller.reconcile_on(pod_triggers);
    if config.endpoints {
        let owned = informers
            .get::<Endpoints>()
            .triggers(|e: &Endpoints, _, _| owners::<Service, _>(e));
        controller = controller.reconcile_on(owned);
    }
    if config.slices {
        // Only the slices this controller manages (`managed-by`), as a label-selected watch
        // would give; the shared informer holds every slice.
        let owned = informers
            .get::<EndpointSlice>()
            .triggers(|slice: &EndpointSlice, _, _| {
                let managed = slice
                    .labels()
                    .get(MANAGED_BY_LABEL)
                    .is_some_and(|m| m == MANAGED_BY);
                if managed {
                    owners::<Service, _>(slice)
                } else {
                    Vec::new()
                }
            });
        controller = controller.reconcile_on(owned);
    }
    let ctx = Arc::new(Ctx { client, config });
    async move {
        controller
            .run(reconcile, error_policy, ctx)
            .for_each(|result| async move {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "endpoints controller event");
                }
            })
            .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, PodCondition, PodSpec, PodStatus, ServiceSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn service(ports: Vec<ServicePort>) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                uid: Some("svc-uid".into()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                selector: Some([("app".to_string(), "web".to_string())].into()),
                ports: Some(ports),
                ..ServiceSpec::default()
            }),
            status: None,
        }
    }

    fn port(name: &str, port: i32, target: Option<IntOrString>) -> ServicePort {
        ServicePort {
            name: Some(name.into()),
            port,
            target_port: target,
            protocol: Some("TCP".into()),
            ..ServicePort::default()
        }
    }

    fn pod(name: &str, ip: &str, ready: bool, named_ports: &[(&str, i32)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("{name}-uid")),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node1".into()),
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(
                        named_ports
                            .iter()
                            .map(|(n, p)| ContainerPort {
                                name: Some(n.to_string()),
                                container_port: *p,
                                ..ContainerPort::default()
                            })
                            .collect(),
                    ),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: (!ip.is_empty()).then(|| ip.to_string()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
        }
    }

    #[test]
    fn subsets_split_ready_and_not_ready_and_resolve_named_ports() {
        let svc = service(vec![port(
            "http",
            80,
            Some(IntOrString::String("web".into())),
        )]);
        let pods = vec![
            pod("a", "10.244.0.5", true, &[("web", 8080)]),
            pod("b", "10.244.0.6", false, &[("web", 8080)]),
            pod("c", "", true, &[("web", 8080)]),
            pod("d", "10.244.0.7", true, &[("other", 9090)]),
        ];
        let subsets = build_subsets(&svc, &pods);
        assert_eq!(subsets.len(), 1);
        let s = &subsets[0];
        let ready: Vec<&str> = s
            .addresses
            .iter()
            .flatten()
            .map(|a| a.ip.as_str())
            .collect();
        let not_ready: Vec<&str> = s
            .not_ready_addresses
            .iter()
            .flatten()
            .map(|a| a.ip.as_str())
            .collect();
        assert_eq!(ready, ["10.244.0.5"]);
        assert_eq!(not_ready, ["10.244.0.6"]);
        let a = &s.addresses.as_ref().unwrap()[0];
        assert_eq!(a.node_name.as_deref(), Some("node1"));
        assert_eq!(a.target_ref.as_ref().unwrap().name.as_deref(), Some("a"));
        let ports = s.ports.as_ref().unwrap();
        assert_eq!(
            (ports[0].name.as_deref(), ports[0].port),
            (Some("http"), 8080)
        );
    }

    #[test]
    fn pods_resolving_different_ports_get_separate_subsets() {
        let svc = service(vec![
            port("http", 80, Some(IntOrString::String("web".into()))),
            port("metrics", 9000, Some(IntOrString::Int(9100))),
        ]);
        let pods = vec![
            pod("a", "10.0.0.1", true, &[("web", 8080)]),
            pod("b", "10.0.0.2", true, &[]),
        ];
        let subsets = build_subsets(&svc, &pods);
        assert_eq!(subsets.len(), 2);
        let with_two = subsets
            .iter()
            .find(|s| s.ports.as_ref().unwrap().len() == 2)
            .unwrap();
        assert_eq!(with_two.addresses.as_ref().unwrap()[0].ip, "10.0.0.1");
    }

    #[test]
    fn terminating_pods_only_in_slices_with_conditions() {
        let svc = service(vec![port("http", 80, None)]);
        let mut gone = pod("t", "10.0.0.9", true, &[]);
        gone.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        let pods = vec![pod("a", "10.0.0.1", true, &[]), gone];
        let subsets = build_subsets(&svc, &pods);
        assert_eq!(subsets[0].addresses.as_ref().unwrap().len(), 1);
        assert!(subsets[0].not_ready_addresses.is_none());

        let slices = build_slices(&svc, &pods);
        assert_eq!(slices.len(), 1);
        let slice = &slices[0];
        assert_eq!(slice.address_type, "IPv4");
        let labels = slice.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[SERVICE_NAME_LABEL], "web");
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(
            slice.metadata.owner_references.as_ref().unwrap()[0].uid,
            "svc-uid"
        );
        let t = slice
            .endpoints
            .iter()
            .find(|e| e.addresses[0] == "10.0.0.9")
            .unwrap();
        let c = t.conditions.as_ref().unwrap();
        assert_eq!(
            (c.ready, c.serving, c.terminating),
            (Some(false), Some(true), Some(true))
        );
        assert_eq!(slice.ports.as_ref().unwrap()[0].port, Some(80));
    }

    #[test]
    fn slices_split_by_family_and_size() {
        let svc = service(vec![port("http", 80, None)]);
        let mut pods: Vec<Pod> = (0..150)
            .map(|i| {
                pod(
                    &format!("p{i}"),
                    &format!("10.1.{}.{}", i / 200, i % 200 + 1),
                    true,
                    &[],
                )
            })
            .collect();
        pods.push(pod("v6", "fd00::5", true, &[]));
        let slices = build_slices(&svc, &pods);
        let v4: Vec<_> = slices.iter().filter(|s| s.address_type == "IPv4").collect();
        assert_eq!(v4.len(), 2);
        assert_eq!(v4[0].endpoints.len() + v4[1].endpoints.len(), 150);
        assert_eq!(
            slices.iter().filter(|s| s.address_type == "IPv6").count(),
            1
        );
    }

    #[test]
    fn publish_not_ready_marks_everything_ready() {
        let mut svc = service(vec![port("http", 80, None)]);
        svc.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let subsets = build_subsets(&svc, &[pod("b", "10.0.0.2", false, &[])]);
        assert_eq!(subsets[0].addresses.as_ref().unwrap().len(), 1);
    }
}
