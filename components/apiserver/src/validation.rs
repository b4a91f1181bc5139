//! Defaulting and validation per kind, on the JSON form of objects. Invalid objects are
//! answered with 422 Invalid and one [`Cause`] per problem.

use std::collections::{BTreeMap, HashSet};

use base64::Engine;
use serde_json::{json, Map, Value};

use crate::error::Cause;
use crate::selectors::{object_labels, LabelSelector};

// ---- name rules ----

pub use crate::names::{is_dns1035_label, is_dns1123_label, is_dns1123_subdomain};

/// Which rule a kind's object names follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// DNS-1123 subdomain (most kinds).
    Subdomain,
    /// DNS-1123 label (namespaces).
    Label,
    /// DNS-1035 label (services).
    Dns1035,
    /// Path segment: anything without `/` or `%`, not `.` or `..` (RBAC objects, nodes too lenient).
    PathSegment,
}

impl NameRule {
    /// Checks `name`, returning the reason it is bad.
    pub fn check(self, name: &str) -> Option<String> {
        let ok = match self {
            NameRule::Subdomain => is_dns1123_subdomain(name),
            NameRule::Label => is_dns1123_label(name),
            NameRule::Dns1035 => is_dns1035_label(name),
            NameRule::PathSegment => {
                !name.is_empty()
                    && name != "."
                    && name != ".."
                    && !name.contains('/')
                    && !name.contains('%')
            }
        };
        if ok {
            return None;
        }
        Some(match self {
            NameRule::Subdomain => "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".into(),
            NameRule::Label => "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')".into(),
            NameRule::Dns1035 => "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')".into(),
            NameRule::PathSegment => "may not be '.' or '..' and may not contain '/' or '%'".into(),
        })
    }
}

/// Validates `metadata` (name, labels, annotations) common to every kind.
pub fn validate_metadata(obj: &Value, rule: NameRule) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if name.is_empty() {
        causes.push(Cause::required("metadata.name"));
    } else if let Some(why) = rule.check(name) {
        causes.push(Cause::invalid("metadata.name", name, &why));
    }
    if let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in labels {
            let v = v.as_str().unwrap_or("");
            if LabelSelector::parse(&format!("{k}={v}")).is_err() || v.contains(',') {
                causes.push(Cause::invalid(
                    format!("metadata.labels[{k}]"),
                    v,
                    "label keys are [prefix/]name and values must be 63 characters or less, alphanumerics, '-', '_' or '.', beginning and ending with an alphanumeric",
                ));
            }
        }
    }
    if let Some(ann) = obj
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        let total: usize = ann
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map(str::len).unwrap_or(0))
            .sum();
        if total > 256 * 1024 {
            causes.push(Cause {
                reason: "FieldValueTooLong",
                message: "Too long: must have at most 262144 bytes".into(),
                field: "metadata.annotations".into(),
            });
        }
    }
    causes
}

// ---- helpers ----

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn arr<'a>(v: &'a Value, ptr: &str) -> &'a [Value] {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Sets `obj[key]` to `value` when missing or null.
fn default_field(obj: &mut Value, key: &str, value: Value) {
    if let Some(m) = obj.as_object_mut() {
        match m.get(key) {
            Some(v) if !v.is_null() => {}
            _ => {
                m.insert(key.to_string(), value);
            }
        }
    }
}

/// The object at `ptr`, created (as `{}`) along the way when missing.
fn ensure_object<'a>(obj: &'a mut Value, path: &[&str]) -> &'a mut Value {
    let mut cur = obj;
    for key in path {
        if !cur.is_object() {
            *cur = json!({});
        }
        let m = cur.as_object_mut().expect("object");
        let entry = m.entry(key.to_string()).or_insert_with(|| json!({}));
        if entry.is_null() {
            *entry = json!({});
        }
        cur = entry;
    }
    cur
}

fn each_mut(obj: &mut Value, key: &str, mut f: impl FnMut(&mut Value)) {
    if let Some(list) = obj.get_mut(key).and_then(Value::as_array_mut) {
        for item in list {
            f(item);
        }
    }
}

fn valid_port(p: i64) -> bool {
    (1..=65535).contains(&p)
}

fn valid_data_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && k != "."
        && k != ".."
}

// ---- pods ----

/// Kubernetes' defaults for a pod spec (restartPolicy, dnsPolicy, schedulerName, grace period,
/// container pull policy, termination message, port protocol).
pub fn default_pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    default_field(spec, "restartPolicy", json!("Always"));
    default_field(spec, "dnsPolicy", json!("ClusterFirst"));
    default_field(spec, "schedulerName", json!("default-scheduler"));
    default_field(spec, "terminationGracePeriodSeconds", json!(30));
    default_field(spec, "securityContext", json!({}));
    default_field(spec, "enableServiceLinks", json!(true));
    for key in ["containers", "initContainers"] {
        each_mut(spec, key, |c| {
            let image = s(c, "/image").to_string();
            let last = image.rsplit('/').next().unwrap_or("");
            let tag_latest =
                !image.contains('@') && (!last.contains(':') || last.ends_with(":latest"));
            default_field(
                c,
                "imagePullPolicy",
                json!(if tag_latest { "Always" } else { "IfNotPresent" }),
            );
            default_field(c, "terminationMessagePath", json!("/dev/termination-log"));
            default_field(c, "terminationMessagePolicy", json!("File"));
            default_field(c, "resources", json!({}));
            each_mut(c, "ports", |p| default_field(p, "protocol", json!("TCP")));
            each_mut(c, "env", |_| {});
        });
    }
}

fn validate_pod_spec(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    let containers = arr(spec, "/containers");
    if containers.is_empty() {
        causes.push(Cause::required(format!("{path}.containers")));
    }
    let mut names = HashSet::new();
    let volumes: HashSet<&str> = arr(spec, "/volumes")
        .iter()
        .map(|v| s(v, "/name"))
        .collect();
    let mut seen_volumes = HashSet::new();
    for (i, v) in arr(spec, "/volumes").iter().enumerate() {
        let n = s(v, "/name");
        let field = format!("{path}.volumes[{i}].name");
        if n.is_empty() {
            causes.push(Cause::required(field));
        } else if !is_dns1123_label(n) {
            causes.push(Cause::invalid(
                field,
                n,
                &NameRule::Label.check(n).unwrap_or_default(),
            ));
        } else if !seen_volumes.insert(n) {
            causes.push(Cause::duplicate(field, n));
        }
    }
    for key in ["initContainers", "containers"] {
        for (i, c) in arr(spec, &format!("/{key}")).iter().enumerate() {
            let base = format!("{path}.{key}[{i}]");
            let n = s(c, "/name");
            if n.is_empty() {
                causes.push(Cause::required(format!("{base}.name")));
            } else if !is_dns1123_label(n) {
                causes.push(Cause::invalid(
                    format!("{base}.name"),
                    n,
                    &NameRule::Label.check(n).unwrap_or_default(),
                ));
            } else if !names.insert(n.to_string()) {
                causes.push(Cause::duplicate(format!("{base}.name"), n));
            }
            if s(c, "/image").trim().is_empty() {
                causes.push(Cause::required(format!("{base}.image")));
            }
            let mut port_names = HashSet::new();
            for (j, p) in arr(c, "/ports").iter().enumerate() {
                let cp = p.get("containerPort").and_then(Value::as_i64).unwrap_or(0);
                if !valid_port(cp) {
                    causes.push(Cause::invalid(
                        format!("{base}.ports[{j}].containerPort"),
                        cp,
                        "must be between 1 and 65535, inclusive",
                    ));
                }
                if let Some(hp) = p.get("hostPort").and_then(Value::as_i64) {
                    if hp != 0 && !valid_port(hp) {
                        causes.push(Cause::invalid(
                            format!("{base}.ports[{j}].hostPort"),
                            hp,
                            "must be between 1 and 65535, inclusive",
                        ));
                    }
                }
                let pn = s(p, "/name");
                if !pn.is_empty() {
                    if pn.len() > 15
                        || !is_dns1123_label(pn)
                        || !pn.bytes().any(|b| b.is_ascii_lowercase())
                    {
                        causes.push(Cause::invalid(format!("{base}.ports[{j}].name"), pn, "must be no more than 15 characters, lower-case alphanumerics or '-', with at least one letter"));
                    } else if !port_names.insert(pn) {
                        causes.push(Cause::duplicate(format!("{base}.ports[{j}].name"), pn));
                    }
                }
                let proto = s(p, "/protocol");
                if !proto.is_empty() && !["TCP", "UDP", "SCTP"].contains(&proto) {
                    causes.push(Cause::not_supported(
                        format!("{base}.ports[{j}].protocol"),
                        proto,
                        &["SCTP", "TCP", "UDP"],
                    ));
                }
            }
            for (j, m) in arr(c, "/volumeMounts").iter().enumerate() {
                let vn = s(m, "/name");
                if !volumes.contains(vn) {
                    causes.push(Cause {
                        reason: "FieldValueNotFound",
                        message: format!("Not found: \"{vn}\""),
                        field: format!("{base}.volumeMounts[{j}].name"),
                    });
                }
                if s(m, "/mountPath").is_empty() {
                    causes.push(Cause::required(format!(
                        "{base}.volumeMounts[{j}].mountPath"
                    )));
                }
            }
            let pull = s(c, "/imagePullPolicy");
            if !pull.is_empty() && !["Always", "IfNotPresent", "Never"].contains(&pull) {
                causes.push(Cause::not_supported(
                    format!("{base}.imagePullPolicy"),
                    pull,
                    &["Always", "IfNotPresent", "Never"],
                ));
            }
        }
    }
    let rp = s(spec, "/restartPolicy");
    if !rp.is_empty() && !["Always", "OnFailure", "Never"].contains(&rp) {
        causes.push(Cause::not_supported(
            format!("{path}.restartPolicy"),
            rp,
            &["Always", "OnFailure", "Never"],
        ));
    }
    if let Some(g) = spec
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
    {
        if g < 0 {
            causes.push(Cause::invalid(
                format!("{path}.terminationGracePeriodSeconds"),
                g,
                "must be greater than or equal to 0",
            ));
        }
    }
}

/// Pod defaults.
pub fn default_pod(obj: &mut Value) {
    if let Some(spec) = obj.get_mut("spec") {
        default_pod_spec(spec);
    }
}

/// Pod validation.
pub fn validate_pod(obj: &Value) -> Vec<Cause> {
    let mut causes = validate_metadata(obj, NameRule::Subdomain);
    match obj.get("spec") {
        Some(spec) if spec.is_object() => validate_pod_spec(spec, "spec", &mut causes),
        _ => causes.push(Cause::required("spec")),
    }
    causes
}

/// Pod updates may only change images, activeDeadlineSeconds, tolerations (additions) and a
/// few scheduling gates; everything else in `spec` is immutable.
pub fn validate_pod_update(new: &Value, old: &Value) -> Vec<Cause> {
    let mut a = new.get("spec").cloned().unwrap_or(Value::Null);
    let mut b = old.get("spec").cloned().unwrap_or(Value::Null);
    for spec in [&mut a, &mut b] {
        for key in ["containers", "initContainers"] {
            each_mut(spec, key, |c| {
                if let Some(m) = c.as_object_mut() {
                    m.remove("image");
                }
            });
        }
        if let Some(m) = spec.as_object_mut() {
            m.remove("activeDeadlineSeconds");
            m.remove("tolerations");
            m.remove("schedulingGates");
            m.remove("nodeName");
        }
    }
    let mut causes = Vec::new();
    if a != b {
        causes.push(Cause::forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        ));
    }
    let old_node = s(old, "/spec/nodeName");
    let new_node = s(new, "/spec/nodeName");
    if !old_node.is_empty() && old_node != new_node {
        causes.push(Cause::immutable("spec.nodeName"));
    }
    causes
}

// ---- workloads ----

fn validate_template(obj: &Value, causes: &mut Vec<Cause>, selector_required: bool) {
    let selector = obj.pointer("/spec/selector");
    let template_labels = obj
        .pointer("/spec/template")
        .map(|t| {
            object_labels(&json!({"metadata": t.get("metadata").cloned().unwrap_or(Value::Null)}))
        })
        .unwrap_or_default();
    match selector {
        Some(sel) if sel.is_object() => match LabelSelector::from_object(sel) {
            Ok(parsed) => {
                if parsed.is_empty() {
                    causes.push(Cause::invalid(
                        "spec.selector",
                        "{}",
                        "empty selector is invalid for deployment",
                    ));
                } else if !parsed.matches(&template_labels) {
                    causes.push(Cause::invalid(
                        "spec.template.metadata.labels",
                        render_labels(&template_labels),
                        "`selector` does not match template `labels`",
                    ));
                }
            }
            Err(why) => causes.push(Cause::invalid("spec.selector", "", &why)),
        },
        _ if selector_required => causes.push(Cause::required("spec.selector")),
        _ => {}
    }
    match obj.pointer("/spec/template/spec") {
        Some(spec) if spec.is_object() => validate_pod_spec(spec, "spec.template.spec", causes),
        _ => causes.push(Cause::required("spec.template.spec")),
    }
}

fn render_labels(l: &BTreeMap<String, String>) -> String {
    let parts: Vec<String> = l.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    format!("map[{}]", parts.join(" "))
}

fn validate_replicas(obj: &Value, causes: &mut Vec<Cause>) {
    if let Some(r) = obj.pointer("/spec/replicas").and_then(Value::as_i64) {
        if r < 0 {
            causes.push(Cause::invalid(
                "spec.replicas",
                r,
                "must be greater than or equal to 0",
            ));
        }
    }
}

fn default_template(obj: &mut Value) {
    if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
        default_pod_spec(spec);
    }
}

/// Deployment defaults (replicas 1, RollingUpdate 25%/25%, revisionHistoryLimit 10, progress
/// deadline 600 s) and pod template defaults.
pub fn default_deployment(obj: &mut Value) {
    let spec = ensure_object(obj, &["spec"]);
    default_field(spec, "replicas", json!(1));
    default_field(spec, "revisionHistoryLimit", json!(10));
    default_field(spec, "progressDeadlineSeconds", json!(600));
    let strategy = ensure_object(spec, &["strategy"]);
    default_field(strategy, "type", json!("RollingUpdate"));
    if s(strategy, "/type") == "RollingUpdate" {
        let ru = ensure_object(strategy, &["rollingUpdate"]);
        default_field(ru, "maxSurge", json!("25%"));
        default_field(ru, "maxUnavailable", json!("25%"));
    }
    default_template(obj);
}

/// Deployment validation.
pub fn validate_deployment(obj: &Value) -> Vec<Cause> {
    let mut causes = validate_metadata(obj, NameRule::Subdomain);
    validate_replicas(obj, &mut causes);
    validate_template(obj, &mut causes, true);
    let st = s(obj, "/spec/strategy/type");
    if !st.is_empty() && !["Recreate", "RollingUpdate"].contains(&st) {
        causes.push(Cause::not_supported(
            "spec.strategy.type",
            st,
            &["Recreate", "RollingUpdate"],
        ));
    }
    if st == "Recreate"
        && obj
            .pointer("/spec/strategy/rollingUpdate")
            .is_some_and(|v| !v.is_null())
    {
        causes.push(Cause::forbidden(
            "spec.strategy.rollingUpdate",
            "may not be specified when strategy `type` is 'Recreate'",
        ));
    }
    causes
}

/// Selector is immutable for apps/v1 workloads.
pub fn validate_selector_immutable(new: &Value, old: &Value) -> Vec<Cause> {
    if new.pointer("/spec/selector") != old.pointer("/spec/selector") {
        vec![Cause::immutable("spec.selector")]
    } else {
        Vec::new()
    }
}

/// ReplicaSet defaults.
pub fn default_replica_set(obj: &mut Value) {
    let spec = ensure_object(obj, &["spec"]);
    default_field(spec, "replicas", json!(1));
    default_template(obj);
}

/// ReplicaSet validation.
pub fn validate_replica_set(obj: &Value) -> Vec<Cause> {
    let mut causes = validate_metadata(obj, NameRule::Subdomain);
    validate_replicas(obj, &mut causes);
    validate_template(obj, &mut causes, true);
    causes
}

/// DaemonSet defaults.
pub fn default_daemon_set(obj: &mut Value) {
    let spec = ensure_object(obj, &["spec"]);
    default_field(spec, "revisionHistoryLimit", json!(10));
    let strategy = ensure_object(spec, &["updateStrategy"]);
    default_field(strategy, "type", json!("RollingUpdate"));
    if s(strategy, "/type") == "RollingUpdate" {
        let ru = ensure_object(strategy, &["rollingUpdate"]);
        default_field(ru, "maxUnavailable", json!(1));
        default_field(ru, "maxSurge", json!(0));
    }
    default_template(obj);
}

/// DaemonSet validation.
pub fn validate_daemon_set(obj: &Value) -> Vec<Cause> {
    let mut causes = validate_metadata(obj, NameRule::Subdomain);
    validate_template(obj, &mut causes, true);
    if let Some(rp) = obj
        .pointer("/spec/template/spec/restartPolicy")
        .and_then(Value::as_str)
    {
        if rp != "Always" {
            causes.push(Cause::not_supported(
                "spec.template.spec.restartPolicy",
                rp,
                &["Always"],
            ));
        }
    }
    causes
}

/// StatefulSet defaults.
pub fn default_stateful_set(obj: &mut Value) {
    let spec = ensure_object(obj, &["spec"]);
    default_field(spec, "replicas", json!(1));
    default_field(spec, "podManagementPolicy", json!("OrderedReady"));
    default_field(spec, "revisionHistoryLimit", json!(10));
    default_field(
        spec,
        "persistentVolumeClaimRetentionPolicy",
        json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
    );
    let strategy = ensure_object(spec, &["updateStrategy"]);
    default_field(strategy, "type", json!("RollingUpdate"));
    if s(strategy, "/type") == "RollingUpdate" {
        let ru = ensure_object(strategy, &["rollingUpdate"]);
        default_field(ru, "partition", json!(0));
    }
    default_template(obj);
}

/// StatefulSet validation.
pub fn validate_stateful_set(obj: &Value) -> Vec<Cause> {
    let mut causes = validate_metadata(obj, NameRule::Subdomain);
    validate_replicas(obj, &mut causes);
    validate_template(obj, &mut causes, true);
    let pmp = s(obj, "/spec/podManagementPolicy");
    if !pmp.is_empty() && !["OrderedReady", "Parallel"].contains(&pmp) {
        causes.push(Cause::not_supported(
            "spec.podManagementPolicy",
            pmp,
            &["OrderedReady", "Parallel"],
        ));
    }
    causes
}

/// Job defaults; the selector and template labels are generated from the uid (see
/// [`prepare_job`]).
pub fn default_job(obj: &mut Value) {
    let spec = ensure_object(obj, &["spec"]);
    let indexed = s(spec, "/completionMode") == "Indexed";
    default_field(spec, "parallelism", json!(1));
    if indexed {
        default_field(spec, "completions", json!(1));
    }
    default_field(spec, "backoffLimit", json!(6));
    default_field(spec, "completionMode", json!("NonIndexed"));
    default_field(spec, "suspend", json!(false));
    default_field(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    default_template(obj);
}

/// Generates the job selector and template labels from the uid, as Kubernetes does unless
/// `spec.manualSelector` is true.
pub fn prepare_job(obj: &mut Value) {
    let uid = s(obj, "/metadata/uid").to_string();
    let name = s(obj, "/metadata/name").to_string();
    if obj.pointer("/spec/manualSelector").and_then(Value::as_bool) == Some(true) || uid.is_empty()
    {
        return;
    }
    let labels = ensure_object(obj, &["spec", "template", "metadata", "labels"]);
    if let Some(m) = labels.as_object_mut() {
        m.insert("batch.kubernetes.io/controller-uid".into(), json!(uid));
        m.insert("batch.kubernetes.io/job-name".into(), json!(name));
        m.insert("controller-uid".into(), json!(uid));
        m.insert("job-name".into(), json!(name));
    }
    let spec = ensure_object(obj, &["spec"]);
    if spec.get("selector").is_none_or(Value::is_null) {
        spec["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
    }
}

/// Job validation.
pub fn validate_job(obj: &Value) -> Vec<Cause> {
    let mut causes = validate_metadata(obj, NameRule::Subdomain);
    validate_template(obj, &mut causes, false);
    let rp = s(obj, "/spec/template/spec/restartPolicy");
    if !["OnFailure", "Never"].contains(&rp) {
        causes.push(Cause::not_supported(
            "spec.template.spec.restartPolicy",
            rp,
            &["OnFailure", "Never"],
        ));
    }
    for key in ["parallelism", "completions", "backoffLimit"] {
        if let Some(v) = obj.pointer(&format!("/spec/{key}")).and_then(Value::as_i64) {
            if v < 0 {
                causes.push(Cause::invalid(
                    format!("spec.{key}"),
                    v,
                    "must be greater than or equal to 0",
                ));
            }
        }
    }
    causes
}

/// CronJob defaults.
pub fn default_cron_job(obj: &mut Value) {
    let spec = ensure_object(obj, &["spec"]);
    default_field(spec, "concurrencyPolicy", json!("Allow"));
    default_field(spec, "suspend", json!(false));
    default_field(spec, "successfulJobsHistoryLimit", json!(3));
    default_field(spec, "failedJobsHistoryLimit", json!(1));
    if let Some(tpl) = obj.pointer_mut("/spec/jobTemplate/spec/template/spec") {
        default_pod_spec(tpl);
    }
}

/// CronJob validation.
pub fn validate_cron_job(obj: &Value) -> Vec<Cause> {
    let mut causes = validate_metadata(obj, NameRule::Subdomain);
    let schedule = s(obj, "/spec/schedule");
    if schedule.is_empty() {
        causes.push(Cause::required("spec.schedule"));
    } else if !valid_cron(schedule) {
        causes.push(Cause::invalid("spec.schedule", schedule, "unparseable schedule: expected 5 fields (minute hour day-of-month month day-of-week) or a @descriptor"));
    }
    let cp = s(obj, "/spec/concurrencyPolicy");
    if !cp.is_empty() && !["Allow", "Forbid", "Replace"].contains(&cp) {
        causes.push(Cause::not_supported(
            "spec.concurrencyPolicy",
            cp,
            &["Allow", "Forbid", "Replace"],
        ));
    }
    match obj.pointer("/spec/jobTemplate/spec/template/spec") {
        Some(spec) if spec.is_object() => {
            validate_pod_spec(spec, "spec.jobTemplate.spec.template.spec", &mut causes);
            let rp = s(spec, "/restartPolicy");
            if !["OnFailure", "Never"].contains(&rp) {
                causes.push(Cause::not_supported(
                    "spec.jobTemplate.spec.template.spec.restartPolicy",
                    rp,
                    &["OnFailure", "Never"],
                ));
            }
        }
        _ => causes.push(Cause::required("spec.jobTemplate.spec.template.spec")),
    }
    causes
}

/// Accepts standard 5-field cron expressions and `@hourly`-style descriptors.
fn valid_cron(schedule: &str) -> bool {
    let schedule = schedule.trim();
    let schedule = match schedule
        .strip_prefix("TZ=")
        .or_else(|| schedule.strip_prefix("CRON_TZ="))
    {
        Some(rest) => match rest.split_once(' ') {
            Some((_, r)) => r.trim(),
            None => return false,
        },
        None => schedule,
    };
    if schedule.starts_with('@') {
        return [
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@midnight",
            "@hourly",
        ]
        .contains(&schedule)
            || schedule.starts_with("@every ");
    }
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    fields.len() == 5
        && fields.iter().all(|f| {
            f.split(',').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '*' | '/' | '-' | '?'))
            })
        })
}

// ---- services ----

/// Service defaults (type ClusterIP, sessionAffinity None, port protocol TCP, targetPort = port).
pub fn default_service(obj: &mut Value) {
    let spec = ensure_object(obj, &["spec"]);
    default_field(spec, "type", json!("ClusterIP"));
    let external_name = s(spec, "/type") == "ExternalName";
    if !external_name {
        default_field(spec, "sessionAffinity", json!("None"));
        default_field(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if ["NodePort", "LoadBalancer"].contains(&s(spec, "/type")) {
        default_field(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    each_mut(spec, "ports", |p| {
        default_field(p, "protocol", json!("TCP"));
        if let Some(port) = p.get("port").cloned() {
            default_field(p, "targetPort", port);
        }
    });
}

/// Service validation.
pub fn validate_service(obj: &Value) -> Vec<Cause> {
    let mut causes = validate_metadata(obj, NameRule::Dns1035);
    let t = s(obj, "/spec/type");
    let types = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
    if !t.is_empty() && !types.contains(&t) {
        causes.push(Cause::not_supported("spec.type", t, &types));
    }
    let ports = arr(obj, "/spec/ports");
    if ports.is_empty() && t != "ExternalName" && s(obj, "/spec/clusterIP") != "None" {
        causes.push(Cause::required("spec.ports"));
    }
    if t == "ExternalName" && s(obj, "/spec/externalName").is_empty() {
        causes.push(Cause::required("spec.externalName"));
    }
    let mut names = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !valid_port(port) {
            causes.push(Cause::invalid(
                format!("spec.ports[{i}].port"),
                port,
                "must be between 1 and 65535, inclusive",
            ));
        }
        let name = s(p, "/name");
        if ports.len() > 1 && name.is_empty() {
            causes.push(Cause::required(format!("spec.ports[{i}].name")));
        }
        if !name.is_empty() && !names.insert(name) {
            causes.push(Cause::duplicate(format!("spec.ports[{i}].name"), name));
        }
        if let Some(np) = p.get("nodePort").and_then(Value::as_i64) {
            if np != 0 && t != "NodePort" && t != "LoadBalancer" {
                causes.push(Cause::forbidden(
                    format!("spec.ports[{i}].nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            }
        }
        match p.get("targetPort") {
            Some(Value::Number(n)) if !valid_port(n.as_i64().unwrap_or(0)) => {
                causes.push(Cause::invalid(
                    format!("spec.ports[{i}].targetPort"),
                    n,
                    "must be between 1 and 65535, inclusive",
                ));
            }
            _ => {}
        }
        let proto = s(p, "/protocol");
        if !proto.is_empty() && !["TCP", "UDP", "SCTP"].contains(&proto) {
            causes.push(Cause::not_supported(
                format!("spec.ports[{i}].protocol"),
                proto,
                &["SCTP", "TCP", "UDP"],
            ));
        }
    }
    causes
}

/// clusterIP is immutable once set.
pub fn validate_service_update(new: &Value, old: &Value) -> Vec<Cause> {
    let old_ip = s(old, "/spec/clusterIP");
    let new_ip = s(new, "/spec/clusterIP");
    if !old_ip.is_empty() && !new_ip.is_empty() && old_ip != new_ip {
        vec![Cause::immutable("spec.clusterIPs[0]")]
    } else {
        Vec::new()
    }
}

// ---- config ----

fn validate_keys(obj: &Value, field: &str, causes: &mut Vec<Cause>) {
    if let Some(m) = obj.get(field).and_then(Value::as_object) {
        for k in m.keys() {
            if !valid_data_key(k) {
                causes.push(Cause::invalid(format!("{field}[{k}]"), k, "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"));
            }
        }
    }
}

/// ConfigMap validation.
pub fn validate_config_map(obj: &Value) -> Vec<Cause> {
    let mut causes = validate_metadata(obj, NameRule::Subdomain);
    validate_keys(obj, "data", &mut causes);
    validate_keys(obj, "binaryData", &mut causes);
    if let (Some(d), Some(b)) = (
        obj.get("data").and_then(Value::as_object),
        obj.get("binaryData").and_then(Value::as_object),
    ) {
        for k in d.keys().filter(|k| b.contains_key(*k)) {
            causes.push(Cause::invalid(
                format!("data[{k}]"),
                k,
                "duplicate of key present in binaryData",
            ));
        }
    }
    causes
}

/// Immutable ConfigMaps/Secrets cannot change their data.
pub fn validate_immutable_data(new: &Value, old: &Value) -> Vec<Cause> {
    if old.get("immutable").and_then(Value::as_bool) != Some(true) {
        return Vec::new();
    }
    let mut causes = Vec::new();
    if new.get("immutable").and_then(Value::as_bool) != Some(true) {
        causes.push(Cause::forbidden(
            "immutable",
            "field is immutable when `immutable` is set",
        ));
    }
    for key in ["data", "binaryData", "stringData"] {
        if new.get(key) != old.get(key) {
            causes.push(Cause::forbidden(
                key,
                "field is immutable when `immutable` is set",
            ));
        }
    }
    causes
}

/// Secret defaults: type Opaque; `stringData` is merged into `data` (base64) and dropped.
pub fn default_secret(obj: &mut Value) {
    default_field(obj, "type", json!("Opaque"));
    if let Some(Value::Object(sd)) = obj.as_object_mut().and_then(|m| m.remove("stringData")) {
        let data = ensure_object(obj, &["data"]);
        if let Some(m) = data.as_object_mut() {
            for (k, v) in sd {
                let text = v.as_str().unwrap_or_default();
                m.insert(
                    k,
                    json!(base64::engine::general_purpose::STANDARD.encode(text)),
                );
            }
        }
    }
}

/// Secret validation (keys, base64 values, type-specific required keys).
pub fn validate_secret(obj: &Value) -> Vec<Cause> {
    let mut causes = validate_metadata(obj, NameRule::Subdomain);
    validate_keys(obj, "data", &mut causes);
    let data: Map<String, Value> = obj
        .get("data")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (k, v) in &data {
        if base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or(""))
            .is_err()
        {
            causes.push(Cause::invalid(
                format!("data[{k}]"),
                "<secret contents redacted>",
                "must be base64-encoded",
            ));
        }
    }
    let required: &[&str] = match s(obj, "/type") {
        "kubernetes.io/tls" => &["tls.crt", "tls.key"],
        "kubernetes.io/dockerconfigjson" => &[".dockerconfigjson"],
        "kubernetes.io/dockercfg" => &[".dockercfg"],
        "kubernetes.io/basic-auth"
        | "kubernetes.io/ssh-auth"
        | "bootstrap.kubernetes.io/token"
        | "Opaque"
        | "" => &[],
        _ => &[],
    };
    for key in required {
        if !data.contains_key(*key) {
            causes.push(Cause::required(format!("data[{key}]")));
        }
    }
    if s(obj, "/type") == "kubernetes.io/service-account-token"
        && obj
            .pointer("/metadata/annotations/kubernetes.io~1service-account.name")
            .is_none()
    {
        causes.push(Cause::required(
            "metadata.annotations[kubernetes.io/service-account.name]",
        ));
    }
    causes
}

// ---- misc kinds ----

/// Namespace defaults: phase Active, `kubernetes` finalizer, and the name label.
pub fn default_namespace(obj: &mut Value) {
    let name = s(obj, "/metadata/name").to_string();
    let labels = ensure_object(obj, &["metadata", "labels"]);
    if !name.is_empty() {
        labels["kubernetes.io/metadata.name"] = json!(name);
    }
    let spec = ensure_object(obj, &["spec"]);
    default_field(spec, "finalizers", json!(["kubernetes"]));
    let status = ensure_object(obj, &["status"]);
    default_field(status, "phase", json!("Active"));
}

/// Namespace validation (name must be a DNS label).
pub fn validate_namespace(obj: &Value) -> Vec<Cause> {
    validate_metadata(obj, NameRule::Label)
}

/// Only the name rule (for kinds whose spec the typed schema check covers).
pub fn validate_subdomain_name(obj: &Value) -> Vec<Cause> {
    validate_metadata(obj, NameRule::Subdomain)
}

/// Name rule for RBAC objects and other path-segment names.
pub fn validate_path_segment_name(obj: &Value) -> Vec<Cause> {
    validate_metadata(obj, NameRule::PathSegment)
}

/// No defaults.
pub fn no_defaults(_: &mut Value) {}

/// No update-specific checks.
pub fn no_update_checks(_: &Value, _: &Value) -> Vec<Cause> {
    Vec::new()
}

/// RoleBinding / ClusterRoleBinding validation.
pub fn validate_role_binding(obj: &Value) -> Vec<Cause> {
    let mut causes = validate_metadata(obj, NameRule::PathSegment);
    let kind = s(obj, "/roleRef/kind");
    if s(obj, "/roleRef/apiGroup") != "rbac.authorization.k8s.io" {
        causes.push(Cause::not_supported(
            "roleRef.apiGroup",
            s(obj, "/roleRef/apiGroup"),
            &["rbac.authorization.k8s.io"],
        ));
    }
    let allowed: &[&str] = if s(obj, "/kind") == "ClusterRoleBinding" {
        &["ClusterRole"]
    } else {
        &["Role", "ClusterRole"]
    };
    if !allowed.contains(&kind) {
        causes.push(Cause::not_supported("roleRef.kind", kind, allowed));
    }
    if s(obj, "/roleRef/name").is_empty() {
        causes.push(Cause::required("roleRef.name"));
    }
    for (i, subj) in arr(obj, "/subjects").iter().enumerate() {
        let k = s(subj, "/kind");
        if !["User", "Group", "ServiceAccount"].contains(&k) {
            causes.push(Cause::not_supported(
                format!("subjects[{i}].kind"),
                k,
                &["ServiceAccount", "User", "Group"],
            ));
        }
        if s(subj, "/name").is_empty() {
            causes.push(Cause::required(format!("subjects[{i}].name")));
        }
        if k == "ServiceAccount"
            && s(obj, "/kind") == "ClusterRoleBinding"
            && s(subj, "/namespace").is_empty()
        {
            causes.push(Cause::required(format!("subjects[{i}].namespace")));
        }
    }
    causes
}

/// roleRef cannot change.
pub fn validate_role_binding_update(new: &Value, old: &Value) -> Vec<Cause> {
    if new.get("roleRef") != old.get("roleRef") {
        vec![Cause::invalid("roleRef", "", "cannot change roleRef")]
    } else {
        Vec::new()
    }
}

/// Role / ClusterRole validation: every rule has verbs, and resources or nonResourceURLs.
pub fn validate_role(obj: &Value) -> Vec<Cause> {
    let mut causes = validate_metadata(obj, NameRule::PathSegment);
    for (i, rule) in arr(obj, "/rules").iter().enumerate() {
        if arr(rule, "/verbs").is_empty() {
            causes.push(Cause::required(format!("rules[{i}].verbs")));
        }
        let has_resources = !arr(rule, "/resources").is_empty();
        let has_urls = !arr(rule, "/nonResourceURLs").is_empty();
        if s(obj, "/kind") == "Role" && has_urls {
            causes.push(Cause::invalid(
                format!("rules[{i}].nonResourceURLs"),
                "",
                "namespaced rules cannot apply to non-resource URLs",
            ));
        }
        if !has_resources && !has_urls {
            causes.push(Cause::required(format!("rules[{i}].resources")));
        }
        if has_resources && rule.get("apiGroups").is_none_or(Value::is_null) {
            causes.push(Cause::required(format!("rules[{i}].apiGroups")));
        }
    }
    causes
}

/// Ingress validation: backends name a service and a port.
pub fn validate_ingress(obj: &Value) -> Vec<Cause> {
    let mut causes = validate_metadata(obj, NameRule::Subdomain);
    let check_backend = |b: &Value, path: String, causes: &mut Vec<Cause>| {
        if let Some(svc) = b.get("service") {
            if s(svc, "/name").is_empty() {
                causes.push(Cause::required(format!("{path}.service.name")));
            }
            let port = svc.get("port");
            let has_port = port.is_some_and(|p| {
                p.get("number")
                    .and_then(Value::as_i64)
                    .is_some_and(|n| n > 0)
                    || !s(p, "/name").is_empty()
            });
            if !has_port {
                causes.push(Cause::required(format!("{path}.service.port")));
            }
        } else if b.get("resource").is_none() {
            causes.push(Cause::required(format!("{path}.service")));
        }
    };
    if let Some(b) = obj.pointer("/spec/defaultBackend") {
        check_backend(b, "spec.defaultBackend".into(), &mut causes);
    }
    let rules = arr(obj, "/spec/rules");
    if rules.is_empty() && obj.pointer("/spec/defaultBackend").is_none() {
        causes.push(Cause::invalid(
            "spec.rules",
            "[]",
            "either `defaultBackend` or `rules` must be specified",
        ));
    }
    for (i, r) in rules.iter().enumerate() {
        for (j, p) in arr(r, "/http/paths").iter().enumerate() {
            let base = format!("spec.rules[{i}].http.paths[{j}]");
            let pt = s(p, "/pathType");
            if !["Exact", "Prefix", "ImplementationSpecific"].contains(&pt) {
                causes.push(Cause::not_supported(
                    format!("{base}.pathType"),
                    pt,
                    &["Exact", "ImplementationSpecific", "Prefix"],
                ));
            }
            match p.get("backend") {
                Some(b) => check_backend(b, format!("{base}.backend"), &mut causes),
                None => causes.push(Cause::required(format!("{base}.backend"))),
            }
        }
    }
    causes
}

/// CertificateSigningRequest validation.
pub fn validate_csr(obj: &Value) -> Vec<Cause> {
    let mut causes = validate_metadata(obj, NameRule::Subdomain);
    if s(obj, "/spec/request").is_empty() {
        causes.push(Cause::required("spec.request"));
    }
    if s(obj, "/spec/signerName").is_empty() {
        causes.push(Cause::required("spec.signerName"));
    }
    if arr(obj, "/spec/usages").is_empty() {
        causes.push(Cause::required("spec.usages"));
    }
    causes
}

/// Event validation: involvedObject and reason-less events are allowed, but the involved
/// object's namespace must match the event's.
pub fn validate_event(obj: &Value) -> Vec<Cause> {
    let mut causes = validate_metadata(obj, NameRule::Subdomain);
    let ns = s(obj, "/metadata/namespace");
    let io_ns = s(obj, "/involvedObject/namespace");
    if !io_ns.is_empty() && !ns.is_empty() && io_ns != ns {
        causes.push(Cause::invalid(
            "involvedObject.namespace",
            io_ns,
            "does not match event.namespace",
        ));
    }
    causes
}

/// Lease validation.
pub fn validate_lease(obj: &Value) -> Vec<Cause> {
    let mut causes = validate_metadata(obj, NameRule::Subdomain);
    if let Some(d) = obj
        .pointer("/spec/leaseDurationSeconds")
        .and_then(Value::as_i64)
    {
        if d <= 0 {
            causes.push(Cause::invalid(
                "spec.leaseDurationSeconds",
                d,
                "must be greater than 0",
            ));
        }
    }
    causes
}

/// EndpointSlice validation.
pub fn validate_endpoint_slice(obj: &Value) -> Vec<Cause> {
    let mut causes = validate_metadata(obj, NameRule::Subdomain);
    let t = s(obj, "/addressType");
    if !["IPv4", "IPv6", "FQDN"].contains(&t) {
        causes.push(Cause::not_supported(
            "addressType",
            t,
            &["FQDN", "IPv4", "IPv6"],
        ));
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(c: &[Cause]) -> Vec<&str> {
        c.iter().map(|c| c.field.as_str()).collect()
    }

    #[test]
    fn names() {
        assert!(is_dns1123_subdomain("web.example-1"));
        assert!(!is_dns1123_subdomain("Web"));
        assert!(!is_dns1123_label("a.b"));
        assert!(!is_dns1035_label("1abc"));
        assert!(NameRule::PathSegment.check("system:node").is_none());
        assert!(NameRule::PathSegment.check("a/b").is_some());
    }

    #[test]
    fn pod_container_names_unique_and_ports() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "image": "x", "ports": [{"containerPort": 0}]},
            {"name": "a", "image": ""}
        ]}});
        let c = validate_pod(&pod);
        assert_eq!(
            fields(&c),
            [
                "spec.containers[0].ports[0].containerPort",
                "spec.containers[1].name",
                "spec.containers[1].image"
            ]
        );
        assert_eq!(c[1].reason, "FieldValueDuplicate");
    }

    #[test]
    fn deployment_selector_must_match_template() {
        let mut d = json!({"metadata": {"name": "web"}, "spec": {"replicas": -1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "other"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}});
        default_deployment(&mut d);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "Always"
        );
        let c = validate_deployment(&d);
        assert_eq!(
            fields(&c),
            ["spec.replicas", "spec.template.metadata.labels"]
        );
    }

    #[test]
    fn pull_policy_by_tag() {
        let mut spec = json!({"containers": [{"name": "a", "image": "nginx:1.25"}, {"name": "b", "image": "reg:5000/x"}]});
        default_pod_spec(&mut spec);
        assert_eq!(spec["containers"][0]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(spec["containers"][1]["imagePullPolicy"], "Always");
        assert_eq!(
            spec["containers"][0]["terminationMessagePath"],
            "/dev/termination-log"
        );
    }

    #[test]
    fn service_defaults_and_checks() {
        let mut svc = json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}, {"port": 70000, "name": "b"}]}});
        default_service(&mut svc);
        assert_eq!(svc["spec"]["type"], "ClusterIP");
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 80);
        let c = validate_service(&svc);
        assert_eq!(
            fields(&c),
            [
                "spec.ports[0].name",
                "spec.ports[1].port",
                "spec.ports[1].targetPort"
            ]
        );
        let bad = json!({"metadata": {"name": "1web"}, "spec": {"ports": [{"port": 80}]}});
        assert_eq!(fields(&validate_service(&bad)), ["metadata.name"]);
    }

    #[test]
    fn secret_string_data_is_encoded() {
        let mut s = json!({"metadata": {"name": "s"}, "stringData": {"user": "admin"}});
        default_secret(&mut s);
        assert_eq!(s["data"]["user"], "YWRtaW4=");
        assert_eq!(s["type"], "Opaque");
        assert!(s.get("stringData").is_none());
        assert!(validate_secret(&s).is_empty());
        let tls = json!({"metadata": {"name": "t"}, "type": "kubernetes.io/tls", "data": {"tls.crt": "!!"}});
        assert_eq!(
            fields(&validate_secret(&tls)),
            ["data[tls.crt]", "data[tls.key]"]
        );
    }

    #[test]
    fn job_selector_generated_and_restart_policy_checked() {
        let mut j = json!({"metadata": {"name": "pi", "uid": "u1"}, "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "perl"}], "restartPolicy": "Never"}}}});
        default_job(&mut j);
        prepare_job(&mut j);
        assert_eq!(
            j["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
            "u1"
        );
        assert_eq!(
            j["spec"]["template"]["metadata"]["labels"]["job-name"],
            "pi"
        );
        assert!(validate_job(&j).is_empty(), "{:?}", validate_job(&j));
        j["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
        assert_eq!(
            fields(&validate_job(&j)),
            ["spec.template.spec.restartPolicy"]
        );
    }

    #[test]
    fn pod_update_only_image() {
        let old =
            json!({"spec": {"containers": [{"name": "a", "image": "x:1"}], "nodeName": "n1"}});
        let mut new = old.clone();
        new["spec"]["containers"][0]["image"] = json!("x:2");
        assert!(validate_pod_update(&new, &old).is_empty());
        new["spec"]["containers"][0]["name"] = json!("b");
        assert_eq!(validate_pod_update(&new, &old).len(), 1);
    }

    #[test]
    fn rbac_checks() {
        let rb = json!({"kind": "RoleBinding", "metadata": {"name": "x"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Foo", "name": "r"}, "subjects": [{"kind": "Robot", "name": "a"}]});
        assert_eq!(
            fields(&validate_role_binding(&rb)),
            ["roleRef.kind", "subjects[0].kind"]
        );
        let role =
            json!({"kind": "Role", "metadata": {"name": "r"}, "rules": [{"verbs": ["get"]}]});
        assert_eq!(fields(&validate_role(&role)), ["rules[0].resources"]);
    }

    #[test]
    fn cron_schedules() {
        assert!(valid_cron("*/5 * * * *"));
        assert!(valid_cron("@hourly"));
        assert!(valid_cron("0 0 1-5 JAN MON"));
        assert!(!valid_cron("* * *"));
    }

    #[test]
    fn namespace_defaults() {
        let mut ns = json!({"metadata": {"name": "dev"}});
        default_namespace(&mut ns);
        assert_eq!(ns["status"]["phase"], "Active");
        assert_eq!(ns["spec"]["finalizers"][0], "kubernetes");
        assert_eq!(
            ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
            "dev"
        );
        assert_eq!(
            fields(&validate_namespace(&json!({"metadata": {"name": "a.b"}}))),
            ["metadata.name"]
        );
    }
}
