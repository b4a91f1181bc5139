//! The table of served resources: one [`ResourceDef`] per resource says everything the generic
//! handlers need (names, scope, verbs, subresources, printing, defaulting, validation). Adding a
//! kind is adding one entry to [`RESOURCES`].

use k8s_openapi::api::{
    apps::v1 as apps, batch::v1 as batch, certificates::v1 as certs, coordination::v1 as coord,
    core::v1 as core, discovery::v1 as disc, networking::v1 as net, policy::v1 as policy,
    rbac::v1 as rbac, scheduling::v1 as sched, storage::v1 as storage,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::Cause;
use crate::kinds::{self, Admission, KindHooks, Lifecycle};
use crate::tables::{self, Printer};
use crate::validation as v;

/// A subresource (`pods/status`, `deployments/scale`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subresource {
    /// Path segment after the object name.
    pub name: &'static str,
    /// Group of the kind it accepts/returns (`""` for core, `autoscaling` for scale).
    pub group: &'static str,
    /// Version of that kind.
    pub version: &'static str,
    /// Kind it accepts/returns.
    pub kind: &'static str,
    /// Verbs.
    pub verbs: &'static [&'static str],
}

/// How objects of a resource are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// Stored in the store under `/registry/...`.
    Stored,
    /// Computed per request and never stored (access reviews).
    Virtual,
    /// Read-only, computed on every read (component statuses).
    Computed,
}

/// The review a virtual resource answers (which identity and which question).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Review {
    /// SubjectAccessReview: may the user in `spec` do this?
    SubjectAccess,
    /// SelfSubjectAccessReview: may I do this?
    SelfSubjectAccess,
    /// LocalSubjectAccessReview: SubjectAccessReview limited to the URL's namespace.
    LocalSubjectAccess,
    /// SelfSubjectRulesReview: what may I do in a namespace?
    SelfSubjectRules,
    /// SelfSubjectReview: who am I?
    SelfSubject,
    /// TokenReview: who does this token authenticate?
    Token,
}

/// The typed schema check of one kind: the input round-tripped through its k8s-openapi type.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalized {
    /// The object as the typed schema sees it (unknown fields dropped).
    pub object: Value,
    /// Paths of fields the schema does not know (`.spec.foo`), for `fieldValidation`.
    pub unknown_fields: Vec<String>,
}

/// Everything the generic handlers know about one resource.
#[derive(Clone, Copy)]
pub struct ResourceDef {
    /// API group (`""` = core).
    pub group: &'static str,
    /// Version.
    pub version: &'static str,
    /// Plural resource name (URL segment).
    pub resource: &'static str,
    /// Singular name.
    pub singular: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Namespace-scoped or cluster-scoped.
    pub namespaced: bool,
    /// `kubectl get po`-style short names.
    pub short_names: &'static [&'static str],
    /// Categories (`all`).
    pub categories: &'static [&'static str],
    /// Verbs on the collection/object.
    pub verbs: &'static [&'static str],
    /// Subresources.
    pub subresources: &'static [Subresource],
    /// Stored or computed.
    pub persistence: Persistence,
    /// Whether `metadata.generation` is bumped on spec changes.
    pub tracks_generation: bool,
    /// Whether a `status` subresource exists (main writes keep status, status writes keep the rest).
    pub has_status: bool,
    /// Whether status is cleared on create.
    pub reset_status_on_create: bool,
    /// Extra fields allowed in field selectors (besides metadata.name/namespace).
    pub field_selectors: &'static [&'static str],
    /// Table printer.
    pub printer: &'static Printer,
    /// Typed schema round trip.
    pub normalize: fn(Value) -> Result<Normalized, String>,
    /// Defaulting.
    pub default: fn(&mut Value),
    /// Validation of a whole object.
    pub validate: fn(&Value) -> Vec<Cause>,
    /// Extra checks on update (immutable fields): `(new, old)`.
    pub validate_update: fn(&Value, &Value) -> Vec<Cause>,
    /// Per-kind behaviour (create preparation, status defaults, delete policy).
    pub hooks: &'static dyn KindHooks,
    /// Admission plugins writes of the kind go through, in order.
    pub admission: &'static [Admission],
    /// Server-side work around storing objects of the kind.
    pub lifecycle: &'static [Lifecycle],
    /// The review a virtual resource answers.
    pub review: Option<Review>,
}

impl std::fmt::Debug for ResourceDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceDef")
            .field("group", &self.group)
            .field("version", &self.version)
            .field("resource", &self.resource)
            .field("kind", &self.kind)
            .field("namespaced", &self.namespaced)
            .field("persistence", &self.persistence)
            .finish_non_exhaustive()
    }
}

impl ResourceDef {
    /// `apps/v1` or `v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The subresource named `name`.
    pub fn subresource(&self, name: &str) -> Option<&'static Subresource> {
        self.subresources.iter().find(|s| s.name == name)
    }

    /// Store prefix for all objects (`namespace` None) or one namespace.
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        let base = if self.group.is_empty() {
            format!("/registry/{}/", self.resource)
        } else {
            format!("/registry/{}/{}/", self.group, self.resource)
        };
        match namespace {
            Some(ns) if self.namespaced => format!("{base}{ns}/"),
            _ => base,
        }
    }

    /// Store key of one object.
    pub fn key(&self, namespace: &str, name: &str) -> String {
        if self.namespaced {
            format!("{}{name}", self.prefix(Some(namespace)))
        } else {
            format!("{}{name}", self.prefix(None))
        }
    }
}

const QUANTITY_PARENTS: &[&str] = &[
    "limits",
    "requests",
    "capacity",
    "allocatable",
    "hard",
    "used",
    "overhead",
    "sizeLimit",
];

/// Round-trips `input` through the k8s-openapi type `K`: type errors become messages naming
/// the field; fields the type does not know are listed (and dropped).
pub fn normalize<K: DeserializeOwned + Serialize>(mut input: Value) -> Result<Normalized, String> {
    strip_nulls(&mut input);
    // Quantities may be written as JSON numbers (`cpu: 1`); the typed form wants strings.
    for _ in 0..64 {
        let de = serde_path_to_error::deserialize::<_, K>(&input);
        match de {
            Ok(typed) => {
                let object = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
                let mut unknown_fields = Vec::new();
                unknown(&input, &object, String::new(), &mut unknown_fields);
                return Ok(Normalized {
                    object,
                    unknown_fields,
                });
            }
            Err(err) => {
                let path = err.path().to_string();
                let segments: Vec<String> = err
                    .path()
                    .iter()
                    .map(|s| match s {
                        serde_path_to_error::Segment::Seq { index } => index.to_string(),
                        serde_path_to_error::Segment::Map { key } => key.clone(),
                        serde_path_to_error::Segment::Enum { variant } => variant.clone(),
                        serde_path_to_error::Segment::Unknown => String::new(),
                    })
                    .collect();
                let parent_is_quantity = segments.len() >= 2
                    && QUANTITY_PARENTS.contains(&segments[segments.len() - 2].as_str());
                let last_is_quantity = segments
                    .last()
                    .is_some_and(|l| l == "sizeLimit" || l == "storage");
                if parent_is_quantity || last_is_quantity {
                    let ptr: String = segments
                        .iter()
                        .map(|s| format!("/{}", s.replace('~', "~0").replace('/', "~1")))
                        .collect();
                    if let Some(slot) = input.pointer_mut(&ptr) {
                        if let Value::Number(n) = slot {
                            *slot = Value::String(n.to_string());
                            continue;
                        }
                    }
                }
                return Err(format!("{path}: {}", err.inner()));
            }
        }
    }
    Err("too many numeric quantities to convert".into())
}

/// Removes `null` members (they mean "absent" in Kubernetes JSON).
pub fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            for x in m.values_mut() {
                strip_nulls(x);
            }
        }
        Value::Array(a) => {
            for x in a {
                strip_nulls(x);
            }
        }
        _ => {}
    }
}

fn unknown(input: &Value, output: &Value, path: String, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                let p = format!("{path}.{k}");
                match b.get(k) {
                    Some(vb) => unknown(va, vb, p, out),
                    None => out.push(p),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (va, vb)) in a.iter().zip(b.iter()).enumerate() {
                unknown(va, vb, format!("{path}[{i}]"), out);
            }
        }
        (Value::Object(a), _) if !a.is_empty() => out.push(path),
        _ => {}
    }
}

/// Normalization for virtual kinds that are checked by their handlers.
fn passthrough(input: Value) -> Result<Normalized, String> {
    Ok(Normalized {
        object: input,
        unknown_fields: Vec::new(),
    })
}

const CRUD: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const CRUD_NO_COLLECTION: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];
const CREATE_ONLY: &[&str] = &["create"];
const GET_PATCH_UPDATE: &[&str] = &["get", "patch", "update"];

const fn status(group: &'static str, version: &'static str, kind: &'static str) -> Subresource {
    Subresource {
        name: "status",
        group,
        version,
        kind,
        verbs: GET_PATCH_UPDATE,
    }
}

const fn scale() -> Subresource {
    Subresource {
        name: "scale",
        group: "autoscaling",
        version: "v1",
        kind: "Scale",
        verbs: GET_PATCH_UPDATE,
    }
}

const BASE: ResourceDef = ResourceDef {
    group: "",
    version: "v1",
    resource: "",
    singular: "",
    kind: "",
    namespaced: true,
    short_names: &[],
    categories: &[],
    verbs: CRUD,
    subresources: &[],
    persistence: Persistence::Stored,
    tracks_generation: false,
    has_status: false,
    reset_status_on_create: false,
    field_selectors: &[],
    printer: &tables::DEFAULT,
    normalize: passthrough,
    default: v::no_defaults,
    validate: v::validate_subdomain_name,
    validate_update: v::no_update_checks,
    hooks: &kinds::GENERIC,
    admission: &[],
    lifecycle: &[],
    review: None,
};

const POD_FIELDS: &[&str] = &[
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];

const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

/// Every served resource, in discovery order (first group/version listed = preferred).
pub static RESOURCES: &[ResourceDef] = &[
    // ---- core/v1 ----
    ResourceDef {
        resource: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        short_names: &["ns"],
        verbs: CRUD_NO_COLLECTION,
        subresources: &[
            status("", "v1", "Namespace"),
            Subresource {
                name: "finalize",
                group: "",
                version: "v1",
                kind: "Namespace",
                verbs: &["update"],
            },
        ],
        has_status: true,
        field_selectors: &["status.phase"],
        printer: &tables::NAMESPACE,
        normalize: normalize::<core::Namespace>,
        default: v::default_namespace,
        validate: v::validate_namespace,
        hooks: &kinds::NAMESPACE,
        lifecycle: &[Lifecycle::DefaultServiceAccount],
        ..BASE
    },
    ResourceDef {
        resource: "nodes",
        singular: "node",
        kind: "Node",
        namespaced: false,
        short_names: &["no"],
        subresources: &[status("", "v1", "Node")],
        has_status: true,
        field_selectors: &["spec.unschedulable"],
        printer: &tables::NODE,
        normalize: normalize::<core::Node>,
        validate: v::validate_subdomain_name,
        hooks: &kinds::WITH_STATUS,
        admission: &[Admission::NodeRestrictionNode],
        ..BASE
    },
    ResourceDef {
        resource: "pods",
        singular: "pod",
        kind: "Pod",
        short_names: &["po"],
        categories: &["all"],
        subresources: &[
            status("", "v1", "Pod"),
            Subresource {
                name: "binding",
                group: "",
                version: "v1",
                kind: "Binding",
                verbs: CREATE_ONLY,
            },
            Subresource {
                name: "eviction",
                group: "policy",
                version: "v1",
                kind: "Eviction",
                verbs: CREATE_ONLY,
            },
            Subresource {
                name: "log",
                group: "",
                version: "v1",
                kind: "Pod",
                verbs: &["get"],
            },
            Subresource {
                name: "exec",
                group: "",
                version: "v1",
                kind: "PodExecOptions",
                verbs: &["create", "get"],
            },
            Subresource {
                name: "attach",
                group: "",
                version: "v1",
                kind: "PodAttachOptions",
                verbs: &["create", "get"],
            },
            Subresource {
                name: "portforward",
                group: "",
                version: "v1",
                kind: "PodPortForwardOptions",
                verbs: &["create", "get"],
            },
            Subresource {
                name: "ephemeralcontainers",
                group: "",
                version: "v1",
                kind: "Pod",
                verbs: GET_PATCH_UPDATE,
            },
        ],
        has_status: true,
        reset_status_on_create: true,
        field_selectors: POD_FIELDS,
        printer: &tables::POD,
        normalize: normalize::<core::Pod>,
        default: v::default_pod,
        validate: v::validate_pod,
        validate_update: v::validate_pod_update,
        hooks: &kinds::POD,
        admission: &[
            Admission::DefaultTolerationSeconds,
            Admission::NodeRestrictionPodCreate,
        ],
        ..BASE
    },
    ResourceDef {
        resource: "services",
        singular: "service",
        kind: "Service",
        short_names: &["svc"],
        categories: &["all"],
        verbs: CRUD,
        subresources: &[status("", "v1", "Service")],
        has_status: true,
        reset_status_on_create: true,
        printer: &tables::SERVICE,
        normalize: normalize::<core::Service>,
        default: v::default_service,
        validate: v::validate_service,
        validate_update: v::validate_service_update,
        hooks: &kinds::SERVICE,
        lifecycle: &[Lifecycle::ServiceAddresses],
        ..BASE
    },
    ResourceDef {
        resource: "endpoints",
        singular: "endpoints",
        kind: "Endpoints",
        short_names: &["ep"],
        printer: &tables::ENDPOINTS,
        normalize: normalize::<core::Endpoints>,
        ..BASE
    },
    ResourceDef {
        resource: "configmaps",
        singular: "configmap",
        kind: "ConfigMap",
        short_names: &["cm"],
        printer: &tables::CONFIG_MAP,
        normalize: normalize::<core::ConfigMap>,
        validate: v::validate_config_map,
        validate_update: v::validate_immutable_data,
        ..BASE
    },
    ResourceDef {
        resource: "secrets",
        singular: "secret",
        kind: "Secret",
        field_selectors: &["type"],
        printer: &tables::SECRET,
        normalize: normalize::<core::Secret>,
        default: v::default_secret,
        validate: v::validate_secret,
        validate_update: v::validate_immutable_data,
        ..BASE
    },
    ResourceDef {
        resource: "serviceaccounts",
        singular: "serviceaccount",
        kind: "ServiceAccount",
        short_names: &["sa"],
        subresources: &[Subresource {
            name: "token",
            group: "authentication.k8s.io",
            version: "v1",
            kind: "TokenRequest",
            verbs: CREATE_ONLY,
        }],
        printer: &tables::SERVICE_ACCOUNT,
        normalize: normalize::<core::ServiceAccount>,
        ..BASE
    },
    ResourceDef {
        resource: "events",
        singular: "event",
        kind: "Event",
        short_names: &["ev"],
        field_selectors: EVENT_FIELDS,
        printer: &tables::EVENT,
        normalize: normalize::<core::Event>,
        validate: v::validate_event,
        ..BASE
    },
    ResourceDef {
        resource: "persistentvolumeclaims",
        singular: "persistentvolumeclaim",
        kind: "PersistentVolumeClaim",
        short_names: &["pvc"],
        subresources: &[status("", "v1", "PersistentVolumeClaim")],
        has_status: true,
        reset_status_on_create: true,
        normalize: normalize::<core::PersistentVolumeClaim>,
        hooks: &kinds::PENDING_PHASE,
        ..BASE
    },
    ResourceDef {
        resource: "persistentvolumes",
        singular: "persistentvolume",
        kind: "PersistentVolume",
        namespaced: false,
        short_names: &["pv"],
        subresources: &[status("", "v1", "PersistentVolume")],
        has_status: true,
        reset_status_on_create: true,
        normalize: normalize::<core::PersistentVolume>,
        hooks: &kinds::PENDING_PHASE,
        ..BASE
    },
    ResourceDef {
        resource: "componentstatuses",
        singular: "componentstatus",
        kind: "ComponentStatus",
        namespaced: false,
        short_names: &["cs"],
        verbs: &["get", "list"],
        persistence: Persistence::Computed,
        printer: &tables::COMPONENT_STATUS,
        normalize: normalize::<core::ComponentStatus>,
        ..BASE
    },
    // ---- apps/v1 ----
    ResourceDef {
        group: "apps",
        resource: "deployments",
        singular: "deployment",
        kind: "Deployment",
        short_names: &["deploy"],
        categories: &["all"],
        subresources: &[status("apps", "v1", "Deployment"), scale()],
        tracks_generation: true,
        has_status: true,
        reset_status_on_create: true,
        printer: &tables::DEPLOYMENT,
        normalize: normalize::<apps::Deployment>,
        default: v::default_deployment,
        validate: v::validate_deployment,
        validate_update: v::validate_selector_immutable,
        hooks: &kinds::WITH_STATUS,
        ..BASE
    },
    ResourceDef {
        group: "apps",
        resource: "replicasets",
        singular: "replicaset",
        kind: "ReplicaSet",
        short_names: &["rs"],
        categories: &["all"],
        subresources: &[status("apps", "v1", "ReplicaSet"), scale()],
        tracks_generation: true,
        has_status: true,
        reset_status_on_create: true,
        field_selectors: &["status.replicas"],
        printer: &tables::REPLICA_SET,
        normalize: normalize::<apps::ReplicaSet>,
        default: v::default_replica_set,
        validate: v::validate_replica_set,
        validate_update: v::validate_selector_immutable,
        hooks: &kinds::REPLICA_SET,
        ..BASE
    },
    ResourceDef {
        group: "apps",
        resource: "daemonsets",
        singular: "daemonset",
        kind: "DaemonSet",
        short_names: &["ds"],
        categories: &["all"],
        subresources: &[status("apps", "v1", "DaemonSet")],
        tracks_generation: true,
        has_status: true,
        reset_status_on_create: true,
        printer: &tables::DAEMON_SET,
        normalize: normalize::<apps::DaemonSet>,
        default: v::default_daemon_set,
        validate: v::validate_daemon_set,
        validate_update: v::validate_selector_immutable,
        hooks: &kinds::DAEMON_SET,
        ..BASE
    },
    ResourceDef {
        group: "apps",
        resource: "statefulsets",
        singular: "statefulset",
        kind: "StatefulSet",
        short_names: &["sts"],
        categories: &["all"],
        subresources: &[status("apps", "v1", "StatefulSet"), scale()],
        tracks_generation: true,
        has_status: true,
        reset_status_on_create: true,
        printer: &tables::STATEFUL_SET,
        normalize: normalize::<apps::StatefulSet>,
        default: v::default_stateful_set,
        validate: v::validate_stateful_set,
        validate_update: v::validate_selector_immutable,
        hooks: &kinds::STATEFUL_SET,
        ..BASE
    },
    ResourceDef {
        group: "apps",
        resource: "controllerrevisions",
        singular: "controllerrevision",
        kind: "ControllerRevision",
        printer: &tables::CONTROLLER_REVISION,
        normalize: normalize::<apps::ControllerRevision>,
        ..BASE
    },
    // ---- batch/v1 ----
    ResourceDef {
        group: "batch",
        resource: "jobs",
        singular: "job",
        kind: "Job",
        categories: &["all"],
        subresources: &[status("batch", "v1", "Job")],
        tracks_generation: true,
        has_status: true,
        reset_status_on_create: true,
        field_selectors: &["status.successful"],
        printer: &tables::JOB,
        normalize: normalize::<batch::Job>,
        default: v::default_job,
        validate: v::validate_job,
        validate_update: v::validate_selector_immutable,
        hooks: &kinds::JOB,
        ..BASE
    },
    ResourceDef {
        group: "batch",
        resource: "cronjobs",
        singular: "cronjob",
        kind: "CronJob",
        short_names: &["cj"],
        categories: &["all"],
        subresources: &[status("batch", "v1", "CronJob")],
        tracks_generation: true,
        has_status: true,
        reset_status_on_create: true,
        printer: &tables::CRON_JOB,
        normalize: normalize::<batch::CronJob>,
        default: v::default_cron_job,
        validate: v::validate_cron_job,
        hooks: &kinds::WITH_STATUS,
        ..BASE
    },
    // ---- networking.k8s.io/v1 ----
    ResourceDef {
        group: "networking.k8s.io",
        resource: "ingresses",
        singular: "ingress",
        kind: "Ingress",
        short_names: &["ing"],
        subresources: &[status("networking.k8s.io", "v1", "Ingress")],
        tracks_generation: true,
        has_status: true,
        reset_status_on_create: true,
        printer: &tables::INGRESS,
        normalize: normalize::<net::Ingress>,
        validate: v::validate_ingress,
        hooks: &kinds::INGRESS,
        ..BASE
    },
    ResourceDef {
        group: "networking.k8s.io",
        resource: "ingressclasses",
        singular: "ingressclass",
        kind: "IngressClass",
        namespaced: false,
        printer: &tables::INGRESS_CLASS,
        normalize: normalize::<net::IngressClass>,
        ..BASE
    },
    ResourceDef {
        group: "networking.k8s.io",
        resource: "networkpolicies",
        singular: "networkpolicy",
        kind: "NetworkPolicy",
        short_names: &["netpol"],
        tracks_generation: true,
        printer: &tables::NETWORK_POLICY,
        normalize: normalize::<net::NetworkPolicy>,
        ..BASE
    },
    // ---- discovery.k8s.io/v1 ----
    ResourceDef {
        group: "discovery.k8s.io",
        resource: "endpointslices",
        singular: "endpointslice",
        kind: "EndpointSlice",
        field_selectors: &["addressType"],
        printer: &tables::ENDPOINT_SLICE,
        normalize: normalize::<disc::EndpointSlice>,
        validate: v::validate_endpoint_slice,
        ..BASE
    },
    // ---- coordination.k8s.io/v1 ----
    ResourceDef {
        group: "coordination.k8s.io",
        resource: "leases",
        singular: "lease",
        kind: "Lease",
        printer: &tables::LEASE,
        normalize: normalize::<coord::Lease>,
        validate: v::validate_lease,
        ..BASE
    },
    // ---- policy/v1 ----
    ResourceDef {
        group: "policy",
        resource: "poddisruptionbudgets",
        singular: "poddisruptionbudget",
        kind: "PodDisruptionBudget",
        short_names: &["pdb"],
        subresources: &[status("policy", "v1", "PodDisruptionBudget")],
        tracks_generation: true,
        has_status: true,
        reset_status_on_create: true,
        printer: &tables::POD_DISRUPTION_BUDGET,
        normalize: normalize::<policy::PodDisruptionBudget>,
        hooks: &kinds::POD_DISRUPTION_BUDGET,
        ..BASE
    },
    // ---- rbac.authorization.k8s.io/v1 ----
    ResourceDef {
        group: "rbac.authorization.k8s.io",
        resource: "clusterroles",
        singular: "clusterrole",
        kind: "ClusterRole",
        namespaced: false,
        printer: &tables::ROLE,
        normalize: normalize::<rbac::ClusterRole>,
        validate: v::validate_role,
        admission: &[Admission::RoleEscalation],
        ..BASE
    },
    ResourceDef {
        group: "rbac.authorization.k8s.io",
        resource: "clusterrolebindings",
        singular: "clusterrolebinding",
        kind: "ClusterRoleBinding",
        namespaced: false,
        printer: &tables::ROLE_BINDING,
        normalize: normalize::<rbac::ClusterRoleBinding>,
        validate: v::validate_role_binding,
        validate_update: v::validate_role_binding_update,
        admission: &[Admission::BindingEscalation],
        ..BASE
    },
    ResourceDef {
        group: "rbac.authorization.k8s.io",
        resource: "roles",
        singular: "role",
        kind: "Role",
        printer: &tables::ROLE,
        normalize: normalize::<rbac::Role>,
        validate: v::validate_role,
        admission: &[Admission::RoleEscalation],
        ..BASE
    },
    ResourceDef {
        group: "rbac.authorization.k8s.io",
        resource: "rolebindings",
        singular: "rolebinding",
        kind: "RoleBinding",
        printer: &tables::ROLE_BINDING,
        normalize: normalize::<rbac::RoleBinding>,
        validate: v::validate_role_binding,
        validate_update: v::validate_role_binding_update,
        admission: &[Admission::BindingEscalation],
        ..BASE
    },
    // ---- certificates.k8s.io/v1 ----
    ResourceDef {
        group: "certificates.k8s.io",
        resource: "certificatesigningrequests",
        singular: "certificatesigningrequest",
        kind: "CertificateSigningRequest",
        namespaced: false,
        short_names: &["csr"],
        subresources: &[
            status("certificates.k8s.io", "v1", "CertificateSigningRequest"),
            Subresource {
                name: "approval",
                group: "certificates.k8s.io",
                version: "v1",
                kind: "CertificateSigningRequest",
                verbs: GET_PATCH_UPDATE,
            },
        ],
        has_status: true,
        reset_status_on_create: true,
        field_selectors: &["spec.signerName"],
        printer: &tables::CSR,
        normalize: normalize::<certs::CertificateSigningRequest>,
        validate: v::validate_csr,
        hooks: &kinds::WITH_STATUS,
        admission: &[Admission::CertificateRequester],
        ..BASE
    },
    // ---- scheduling / storage ----
    ResourceDef {
        group: "scheduling.k8s.io",
        resource: "priorityclasses",
        singular: "priorityclass",
        kind: "PriorityClass",
        namespaced: false,
        short_names: &["pc"],
        normalize: normalize::<sched::PriorityClass>,
        printer: &tables::PRIORITY_CLASS,
        ..BASE
    },
    ResourceDef {
        group: "storage.k8s.io",
        resource: "storageclasses",
        singular: "storageclass",
        kind: "StorageClass",
        namespaced: false,
        short_names: &["sc"],
        normalize: normalize::<storage::StorageClass>,
        ..BASE
    },
    // ---- authorization.k8s.io/v1 (virtual) ----
    ResourceDef {
        group: "authorization.k8s.io",
        resource: "selfsubjectaccessreviews",
        singular: "selfsubjectaccessreview",
        kind: "SelfSubjectAccessReview",
        namespaced: false,
        verbs: CREATE_ONLY,
        persistence: Persistence::Virtual,
        review: Some(Review::SelfSubjectAccess),
        ..BASE
    },
    ResourceDef {
        group: "authorization.k8s.io",
        resource: "selfsubjectrulesreviews",
        singular: "selfsubjectrulesreview",
        kind: "SelfSubjectRulesReview",
        namespaced: false,
        verbs: CREATE_ONLY,
        persistence: Persistence::Virtual,
        review: Some(Review::SelfSubjectRules),
        ..BASE
    },
    ResourceDef {
        group: "authorization.k8s.io",
        resource: "subjectaccessreviews",
        singular: "subjectaccessreview",
        kind: "SubjectAccessReview",
        namespaced: false,
        verbs: CREATE_ONLY,
        persistence: Persistence::Virtual,
        review: Some(Review::SubjectAccess),
        ..BASE
    },
    ResourceDef {
        group: "authorization.k8s.io",
        resource: "localsubjectaccessreviews",
        singular: "localsubjectaccessreview",
        kind: "LocalSubjectAccessReview",
        verbs: CREATE_ONLY,
        persistence: Persistence::Virtual,
        review: Some(Review::LocalSubjectAccess),
        ..BASE
    },
    // ---- authentication.k8s.io/v1 (virtual) ----
    ResourceDef {
        group: "authentication.k8s.io",
        resource: "selfsubjectreviews",
        singular: "selfsubjectreview",
        kind: "SelfSubjectReview",
        namespaced: false,
        verbs: CREATE_ONLY,
        persistence: Persistence::Virtual,
        review: Some(Review::SelfSubject),
        ..BASE
    },
    ResourceDef {
        group: "authentication.k8s.io",
        resource: "tokenreviews",
        singular: "tokenreview",
        kind: "TokenReview",
        namespaced: false,
        verbs: CREATE_ONLY,
        persistence: Persistence::Virtual,
        review: Some(Review::Token),
        ..BASE
    },
];

/// The resource `resource` in `group`/`version`.
pub fn find(group: &str, version: &str, resource: &str) -> Option<&'static ResourceDef> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.resource == resource)
}

/// The resource serving `kind` in `group`.
pub fn by_kind(group: &str, kind: &str) -> Option<&'static ResourceDef> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.kind == kind)
}

/// Served groups with their versions, in discovery order (`""` = core).
pub fn groups() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for r in RESOURCES {
        match out.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, versions)) => {
                if !versions.contains(&r.version) {
                    versions.push(r.version);
                }
            }
            None => out.push((r.group, vec![r.version])),
        }
    }
    out
}

/// Resources of one group/version.
pub fn resources_of<'a>(
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'static ResourceDef> + use<'a> {
    RESOURCES
        .iter()
        .filter(move |r| r.group == group && r.version == version)
}

/// Removes the system-managed parts of `metadata` a client must not set on create.
pub fn clear_system_metadata(meta: &mut Map<String, Value>) {
    for key in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "selfLink",
    ] {
        meta.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_and_prefixes_do_not_collide() {
        let pods = find("", "v1", "pods").unwrap();
        assert_eq!(pods.key("default", "web"), "/registry/pods/default/web");
        assert_eq!(pods.prefix(None), "/registry/pods/");
        let deploy = find("apps", "v1", "deployments").unwrap();
        assert_eq!(deploy.prefix(Some("ns")), "/registry/apps/deployments/ns/");
        let nodes = find("", "v1", "nodes").unwrap();
        assert_eq!(nodes.key("ignored", "n1"), "/registry/nodes/n1");
        // every resource has a unique prefix and a kind
        let mut prefixes: Vec<String> = RESOURCES.iter().map(|r| r.prefix(None)).collect();
        prefixes.sort();
        prefixes.dedup();
        assert_eq!(prefixes.len(), RESOURCES.len());
    }

    #[test]
    fn normalize_reports_type_errors_and_unknown_fields() {
        let err = normalize::<k8s_openapi::api::apps::v1::Deployment>(json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}, "spec": {"replicas": "three"}
        }))
        .unwrap_err();
        assert!(err.starts_with("spec.replicas"), "{err}");
        let n = normalize::<k8s_openapi::api::core::v1::Pod>(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x", "bogus": 1},
            "spec": {"containers": [{"name": "a", "image": "b", "imagePullPolicyy": "Always",
                "resources": {"limits": {"cpu": 1, "memory": "64Mi"}}}]}
        }))
        .unwrap();
        assert_eq!(
            n.unknown_fields,
            vec![".metadata.bogus", ".spec.containers[0].imagePullPolicyy"]
        );
        assert_eq!(
            n.object["spec"]["containers"][0]["resources"]["limits"]["cpu"],
            "1"
        );
    }

    #[test]
    fn groups_in_order() {
        let g = groups();
        assert_eq!(g[0], ("", vec!["v1"]));
        assert!(g.iter().any(|(g, _)| *g == "apps"));
        assert!(by_kind("apps", "Deployment").is_some());
    }
}
