//! Per-kind behaviour of the generic handlers, as Kubernetes' REST strategies hold it: what a
//! new object starts with, the fields every answer carries, and how a delete proceeds. Each
//! [`ResourceDef`](crate::registry::ResourceDef) points at one [`KindHooks`]; the trait's
//! default methods are the generic behaviour, so a kind with nothing special (and a resource
//! added at run time) uses [`GENERIC`].
//!
//! Behaviour that needs the running server (admission plugins, address allocation, objects
//! created alongside) is named in the table by [`Admission`] and [`Lifecycle`] and carried out
//! by the handlers.

use serde_json::{json, Value};

/// Per-kind hooks; every method has the generic behaviour as its default.
pub trait KindHooks: Send + Sync {
    /// Changes a new object gets after defaulting and before validation (the status a new
    /// object starts with, fields derived from the spec).
    fn prepare_create(&self, _obj: &mut Value) {}

    /// Fills the fields Kubernetes always returns for the kind (`status: {}` for kinds with a
    /// status struct); applied to every object answered.
    fn status_defaults(&self, _obj: &mut Value) {}

    /// The grace period (seconds) a delete gives `obj`, `requested` being the client's
    /// `gracePeriodSeconds`; 0 removes it at once (once its finalizers are gone).
    fn grace_period(&self, _obj: &Value, _requested: Option<i64>) -> i64 {
        0
    }

    /// Whether a delete marks the object `Terminating` (`status.phase`) while it waits for
    /// finalizers, instead of the generic deletion timestamp with propagation finalizers.
    fn delete_marks_terminating(&self) -> bool {
        false
    }

    /// Finalizers of the kind beyond `metadata.finalizers` that keep a deleted object
    /// (a namespace's `spec.finalizers`).
    fn pending_finalizers(&self, _obj: &Value) -> bool {
        false
    }

    /// Whether a deleted object waits for its node agent to confirm (a bound pod in its grace
    /// period) after its finalizers are gone.
    fn awaits_agent(&self, _obj: &Value) -> bool {
        false
    }

    /// Whether DELETE answers with the deleted object rather than a `Status`.
    fn delete_returns_object(&self) -> bool {
        false
    }

    /// Whether requests on an object of this kind are authorized in the namespace the object
    /// names (namespaces themselves).
    fn authorized_in_own_namespace(&self) -> bool {
        false
    }
}

/// An admission plugin a kind's writes go through (run by the `admission` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// NodeRestriction for pods a node creates (mirror pods only, bound to itself).
    NodeRestrictionPodCreate,
    /// NodeRestriction for writes of Node objects (a node writes only its own).
    NodeRestrictionNode,
    /// DefaultTolerationSeconds: pods tolerate `not-ready`/`unreachable` for 300 s.
    DefaultTolerationSeconds,
    /// The CSR requester (`spec.username/groups/uid/extra`) comes from authentication.
    CertificateRequester,
    /// RBAC escalation prevention for roles (`escalate` or holding every rule).
    RoleEscalation,
    /// RBAC escalation prevention for bindings (`bind` or holding every rule of the role).
    BindingEscalation,
}

/// Server-side work around storing objects of a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// ClusterIPs and NodePorts are allocated on create/update and released on delete.
    ServiceAddresses,
    /// A new namespace gets its `default` ServiceAccount.
    DefaultServiceAccount,
}

/// The generic behaviour (kinds without a status struct).
pub struct Generic;
impl KindHooks for Generic {}

/// Hooks of kinds with nothing special.
pub static GENERIC: Generic = Generic;

/// The zero value of a status field Go's JSON encoding always writes (no `omitempty`).
#[derive(Debug, Clone, Copy)]
pub enum Zero {
    /// A counter: `0`.
    Int,
    /// A struct: `{}`.
    Object,
    /// A defaulted string (a phase).
    Str(&'static str),
}

impl Zero {
    fn value(self) -> Value {
        match self {
            Zero::Int => json!(0),
            Zero::Object => json!({}),
            Zero::Str(s) => json!(s),
        }
    }
}

/// Kinds with a status struct: answered with the status a zero Go struct encodes to (`{}`
/// plus the fields without `omitempty`, e.g. a ReplicaSet's `replicas: 0`) when those are
/// missing; typed clients (the Python client's models) require them.
pub struct WithStatus {
    /// Fields always present in the kind's status, with their zero value.
    pub always: &'static [(&'static str, Zero)],
}
impl KindHooks for WithStatus {
    fn status_defaults(&self, obj: &mut Value) {
        status_with(obj, self.always);
    }
}

/// Hooks of kinds whose status struct has only `omitempty` fields (answered `status: {}`).
pub static WITH_STATUS: WithStatus = WithStatus { always: &[] };
/// Hooks of ReplicaSets (`status.replicas` is always written).
pub static REPLICA_SET: WithStatus = WithStatus {
    always: &[("replicas", Zero::Int)],
};
/// Hooks of StatefulSets.
pub static STATEFUL_SET: WithStatus = WithStatus {
    always: &[("replicas", Zero::Int), ("availableReplicas", Zero::Int)],
};
/// Hooks of DaemonSets.
pub static DAEMON_SET: WithStatus = WithStatus {
    always: &[
        ("currentNumberScheduled", Zero::Int),
        ("numberMisscheduled", Zero::Int),
        ("desiredNumberScheduled", Zero::Int),
        ("numberReady", Zero::Int),
    ],
};
/// Hooks of PodDisruptionBudgets.
pub static POD_DISRUPTION_BUDGET: WithStatus = WithStatus {
    always: &[
        ("disruptionsAllowed", Zero::Int),
        ("currentHealthy", Zero::Int),
        ("desiredHealthy", Zero::Int),
        ("expectedPods", Zero::Int),
    ],
};
/// Hooks of PersistentVolumeClaims and PersistentVolumes (defaulted to phase Pending).
pub static PENDING_PHASE: WithStatus = WithStatus {
    always: &[("phase", Zero::Str("Pending"))],
};
/// Hooks of Ingresses (`status.loadBalancer` is a struct, always encoded).
pub static INGRESS: WithStatus = WithStatus {
    always: &[("loadBalancer", Zero::Object)],
};

/// Sets `status: {}` on an object without one (Kubernetes' typed objects always carry it).
pub fn empty_status(obj: &mut Value) {
    status_with(obj, &[]);
}

/// Sets `status` to at least `{}` with the `always` fields at their zero value when missing.
fn status_with(obj: &mut Value, always: &[(&str, Zero)]) {
    let Some(m) = obj.as_object_mut() else { return };
    if !m.get("status").is_some_and(Value::is_object) {
        m.insert("status".into(), json!({}));
    }
    if let Some(status) = m.get_mut("status").and_then(Value::as_object_mut) {
        for (field, zero) in always {
            if !status.contains_key(*field) {
                status.insert((*field).into(), zero.value());
            }
        }
    }
}

/// Pods: start Pending with their QoS class; graceful deletion once bound to a node.
pub struct PodHooks;
impl KindHooks for PodHooks {
    fn prepare_create(&self, obj: &mut Value) {
        let qos = pod_qos_class(obj);
        obj["status"] = json!({"phase": "Pending", "qosClass": qos});
    }

    fn status_defaults(&self, obj: &mut Value) {
        empty_status(obj);
    }

    fn grace_period(&self, obj: &Value, requested: Option<i64>) -> i64 {
        let bound = obj
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        let running = obj
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .is_none_or(|p| p != "Succeeded" && p != "Failed");
        if !(bound && running) {
            return 0;
        }
        requested.unwrap_or_else(|| {
            obj.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(30)
        })
    }

    fn awaits_agent(&self, obj: &Value) -> bool {
        let named = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        let bound = obj
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        let grace = obj
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        named && bound && grace > 0
    }

    fn delete_returns_object(&self) -> bool {
        true
    }
}

/// Hooks of pods.
pub static POD: PodHooks = PodHooks;

/// Services: start with an empty load-balancer status.
pub struct ServiceHooks;
impl KindHooks for ServiceHooks {
    fn prepare_create(&self, obj: &mut Value) {
        obj["status"] = json!({"loadBalancer": {}});
    }

    fn status_defaults(&self, obj: &mut Value) {
        empty_status(obj);
    }
}

/// Hooks of services.
pub static SERVICE: ServiceHooks = ServiceHooks;

/// Namespaces: start Active; a delete makes them Terminating until the namespace controller
/// has emptied them and removed `spec.finalizers`.
pub struct NamespaceHooks;
impl KindHooks for NamespaceHooks {
    fn prepare_create(&self, obj: &mut Value) {
        obj["status"] = json!({"phase": "Active"});
    }

    fn status_defaults(&self, obj: &mut Value) {
        empty_status(obj);
    }

    fn delete_marks_terminating(&self) -> bool {
        true
    }

    fn pending_finalizers(&self, obj: &Value) -> bool {
        obj.pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty())
    }

    fn authorized_in_own_namespace(&self) -> bool {
        true
    }
}

/// Hooks of namespaces.
pub static NAMESPACE: NamespaceHooks = NamespaceHooks;

/// Jobs: selector and pod labels derived from the new object's uid.
pub struct JobHooks;
impl KindHooks for JobHooks {
    fn prepare_create(&self, obj: &mut Value) {
        crate::validation::prepare_job(obj);
    }

    fn status_defaults(&self, obj: &mut Value) {
        empty_status(obj);
    }
}

/// Hooks of jobs.
pub static JOB: JobHooks = JobHooks;

/// Kubernetes' QoS class of a pod: Guaranteed, Burstable or BestEffort.
pub fn pod_qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .flat_map(|k| {
            pod.pointer(&format!("/spec/{k}"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .collect();
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for c in &containers {
        let requests = c.pointer("/resources/requests").and_then(Value::as_object);
        let limits = c.pointer("/resources/limits").and_then(Value::as_object);
        if requests.is_some_and(|r| !r.is_empty()) || limits.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        for res in ["cpu", "memory"] {
            let l = limits.and_then(|l| l.get(res));
            let r = requests.and_then(|r| r.get(res)).or(l);
            if l.is_none() || r != l {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos_classes() {
        assert_eq!(
            pod_qos_class(&json!({"spec": {"containers": [{"name": "a"}]}})),
            "BestEffort"
        );
        assert_eq!(
            pod_qos_class(
                &json!({"spec": {"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}})
            ),
            "Guaranteed"
        );
        assert_eq!(
            pod_qos_class(
                &json!({"spec": {"containers": [{"resources": {"requests": {"cpu": "1"}}}]}})
            ),
            "Burstable"
        );
    }

    #[test]
    fn zero_status_fields_go_always_writes() {
        let mut rs = json!({"metadata": {"name": "r"}});
        REPLICA_SET.status_defaults(&mut rs);
        assert_eq!(rs["status"], json!({"replicas": 0}));
        let mut ds = json!({"status": {"numberReady": 2}});
        DAEMON_SET.status_defaults(&mut ds);
        assert_eq!(
            ds["status"],
            json!({"currentNumberScheduled": 0, "numberMisscheduled": 0, "desiredNumberScheduled": 0, "numberReady": 2})
        );
        let mut pvc = json!({"status": {"phase": "Bound"}});
        PENDING_PHASE.status_defaults(&mut pvc);
        assert_eq!(pvc["status"], json!({"phase": "Bound"}));
        let mut pvc = json!({});
        PENDING_PHASE.status_defaults(&mut pvc);
        assert_eq!(pvc["status"], json!({"phase": "Pending"}));
        let def = crate::registry::by_kind("apps", "StatefulSet").expect("statefulsets are served");
        let mut sts = json!({});
        def.hooks.status_defaults(&mut sts);
        assert_eq!(
            sts["status"],
            json!({"replicas": 0, "availableReplicas": 0})
        );
    }

    #[test]
    fn empty_status_only_where_missing() {
        let mut d = json!({"metadata": {"name": "d"}});
        WITH_STATUS.status_defaults(&mut d);
        assert_eq!(d["status"], json!({}));
        let mut s = json!({"status": {"replicas": 2}});
        WITH_STATUS.status_defaults(&mut s);
        assert_eq!(s["status"], json!({"replicas": 2}));
        let mut cm = json!({"data": {}});
        GENERIC.status_defaults(&mut cm);
        assert!(cm.get("status").is_none());
    }
}
