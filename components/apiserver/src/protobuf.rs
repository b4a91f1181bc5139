//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`), as kubectl's
//! `create deployment|configmap|secret|namespace|service|job|cronjob|role|...|token` and
//! `auth can-i` send them: the `k8s\0` magic, a `runtime.Unknown` envelope, then the object,
//! decoded with the `k8s-pb` prost types and converted to Kubernetes JSON.
//!
//! `k8s-pb` types carry no serde support, so each supported kind is mapped field by field. Every
//! converter consumes the fields it maps and then checks that nothing else was set: a body using
//! a field this module does not map is refused with 415 (send it as JSON) instead of silently
//! losing data.

use std::collections::BTreeMap;
use std::fmt::Debug;

use base64::Engine;
use k8s_pb::api::{
    apps::v1 as apps, authentication::v1 as authn, authorization::v1 as authz, batch::v1 as batch,
    core::v1 as core, rbac::v1 as rbac,
};
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::Unknown;
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use prost::Message;
use serde_json::{json, Map, Value};

use crate::error::ApiError;

/// The protobuf magic prefix.
pub const MAGIC: &[u8] = b"k8s\0";

type R<T> = Result<T, ApiError>;

fn unsupported(path: &str, rest: &dyn Debug) -> ApiError {
    ApiError::unsupported_media_type(format!(
        "the protobuf body sets fields at `{path}` that this server cannot decode from protobuf ({rest:?}); send the object as JSON instead (e.g. kubectl create -f / apply -f)"
    ))
}

/// Succeeds when nothing is left in `rest` (every set field was mapped).
fn done<T: Default + PartialEq + Debug>(rest: T, path: &str) -> R<()> {
    if rest == T::default() {
        Ok(())
    } else {
        Err(unsupported(path, &rest))
    }
}

#[derive(Default)]
struct Obj(Map<String, Value>);

impl Obj {
    /// Non-pointer string (`omitempty`): empty is absent.
    fn str(&mut self, k: &str, v: Option<String>) {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            self.0.insert(k.into(), json!(v));
        }
    }
    /// Pointer string: present even when empty.
    fn opt_str(&mut self, k: &str, v: Option<String>) {
        if let Some(v) = v {
            self.0.insert(k.into(), json!(v));
        }
    }
    fn int<T: Into<i64>>(&mut self, k: &str, v: Option<T>) {
        if let Some(v) = v {
            self.0.insert(k.into(), json!(v.into()));
        }
    }
    /// Non-pointer integer (`omitempty`): zero is absent.
    fn int_nz<T: Into<i64>>(&mut self, k: &str, v: Option<T>) {
        if let Some(v) = v.map(Into::into).filter(|v| *v != 0) {
            self.0.insert(k.into(), json!(v));
        }
    }
    fn boolean(&mut self, k: &str, v: Option<bool>) {
        if let Some(v) = v {
            self.0.insert(k.into(), json!(v));
        }
    }
    /// Non-pointer bool (`omitempty`): false is absent.
    fn bool_nz(&mut self, k: &str, v: Option<bool>) {
        if v == Some(true) {
            self.0.insert(k.into(), json!(true));
        }
    }
    fn strs(&mut self, k: &str, v: Vec<String>) {
        if !v.is_empty() {
            self.0.insert(k.into(), json!(v));
        }
    }
    fn map(&mut self, k: &str, v: BTreeMap<String, String>) {
        if !v.is_empty() {
            self.0.insert(k.into(), json!(v));
        }
    }
    fn bytes_map(&mut self, k: &str, v: BTreeMap<String, Vec<u8>>) {
        if !v.is_empty() {
            let m: Map<String, Value> = v
                .into_iter()
                .map(|(k, b)| {
                    (
                        k,
                        json!(base64::engine::general_purpose::STANDARD.encode(b)),
                    )
                })
                .collect();
            self.0.insert(k.into(), Value::Object(m));
        }
    }
    fn val(&mut self, k: &str, v: Option<Value>) {
        if let Some(v) = v {
            self.0.insert(k.into(), v);
        }
    }
    fn list(&mut self, k: &str, v: Vec<Value>) {
        if !v.is_empty() {
            self.0.insert(k.into(), Value::Array(v));
        }
    }
    fn done(self) -> Value {
        Value::Object(self.0)
    }
}

fn each<T, F: Fn(T, &str) -> R<Value>>(items: Vec<T>, path: &str, f: F) -> R<Vec<Value>> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, x)| f(x, &format!("{path}[{i}]")))
        .collect()
}

fn opt<T, F: Fn(T, &str) -> R<Value>>(v: Option<T>, path: &str, f: F) -> R<Option<Value>> {
    v.map(|x| f(x, path)).transpose()
}

// ---- meta ----

fn object_meta(mut m: meta::ObjectMeta, path: &str) -> R<Value> {
    let mut o = Obj::default();
    o.str("name", m.name.take());
    o.str("generateName", m.generate_name.take());
    o.str("namespace", m.namespace.take());
    o.str("uid", m.uid.take());
    o.str("resourceVersion", m.resource_version.take());
    o.map("labels", std::mem::take(&mut m.labels));
    o.map("annotations", std::mem::take(&mut m.annotations));
    o.strs("finalizers", std::mem::take(&mut m.finalizers));
    let owners = each(
        std::mem::take(&mut m.owner_references),
        &format!("{path}.ownerReferences"),
        owner_reference,
    )?;
    o.list("ownerReferences", owners);
    // Server-managed fields: ignored on writes, like the JSON path does.
    m.self_link = None;
    m.generation = None;
    m.creation_timestamp = None;
    m.deletion_timestamp = None;
    m.deletion_grace_period_seconds = None;
    done(m, path)?;
    Ok(o.done())
}

fn owner_reference(mut r: meta::OwnerReference, path: &str) -> R<Value> {
    let mut o = Obj::default();
    o.str("apiVersion", r.api_version.take());
    o.str("kind", r.kind.take());
    o.str("name", r.name.take());
    o.str("uid", r.uid.take());
    o.boolean("controller", r.controller.take());
    o.boolean("blockOwnerDeletion", r.block_owner_deletion.take());
    done(r, path)?;
    Ok(o.done())
}

fn label_selector(mut s: meta::LabelSelector, path: &str) -> R<Value> {
    let mut o = Obj::default();
    o.map("matchLabels", std::mem::take(&mut s.match_labels));
    let exprs = each(
        std::mem::take(&mut s.match_expressions),
        &format!("{path}.matchExpressions"),
        |mut e: meta::LabelSelectorRequirement, p| {
            let mut o = Obj::default();
            o.str("key", e.key.take());
            o.str("operator", e.operator.take());
            o.strs("values", std::mem::take(&mut e.values));
            done(e, p)?;
            Ok(o.done())
        },
    )?;
    o.list("matchExpressions", exprs);
    done(s, path)?;
    Ok(o.done())
}

fn int_or_string(mut v: IntOrString, path: &str) -> R<Value> {
    let t = v.r#type.take().unwrap_or(0);
    let out = if t == 1 {
        json!(v.str_val.take().unwrap_or_default())
    } else {
        json!(v.int_val.take().unwrap_or(0))
    };
    v.int_val = None;
    v.str_val = None;
    done(v, path)?;
    Ok(out)
}

// ---- pods ----

fn quantities(
    m: BTreeMap<String, k8s_pb::apimachinery::pkg::api::resource::Quantity>,
) -> BTreeMap<String, String> {
    m.into_iter()
        .map(|(k, q)| (k, q.string.unwrap_or_default()))
        .collect()
}

fn container(mut c: core::Container, path: &str) -> R<Value> {
    let mut o = Obj::default();
    o.str("name", c.name.take());
    o.str("image", c.image.take());
    o.strs("command", std::mem::take(&mut c.command));
    o.strs("args", std::mem::take(&mut c.args));
    o.str("workingDir", c.working_dir.take());
    let ports = each(
        std::mem::take(&mut c.ports),
        &format!("{path}.ports"),
        |mut p: core::ContainerPort, pp| {
            let mut o = Obj::default();
            o.str("name", p.name.take());
            o.int_nz("hostPort", p.host_port.take());
            o.int("containerPort", p.container_port.take());
            o.str("protocol", p.protocol.take());
            o.str("hostIP", p.host_ip.take());
            done(p, pp)?;
            Ok(o.done())
        },
    )?;
    o.list("ports", ports);
    let env = each(
        std::mem::take(&mut c.env),
        &format!("{path}.env"),
        |mut e: core::EnvVar, pp| {
            let mut o = Obj::default();
            o.str("name", e.name.take());
            o.str("value", e.value.take());
            done(e, pp)?;
            Ok(o.done())
        },
    )?;
    o.list("env", env);
    if let Some(mut r) = c.resources.take() {
        let mut ro = Obj::default();
        ro.map("limits", quantities(std::mem::take(&mut r.limits)));
        ro.map("requests", quantities(std::mem::take(&mut r.requests)));
        done(r, &format!("{path}.resources"))?;
        o.val("resources", Some(ro.done()));
    }
    o.str("terminationMessagePath", c.termination_message_path.take());
    o.str(
        "terminationMessagePolicy",
        c.termination_message_policy.take(),
    );
    o.str("imagePullPolicy", c.image_pull_policy.take());
    o.opt_str("restartPolicy", c.restart_policy.take());
    o.bool_nz("stdin", c.stdin.take());
    o.bool_nz("stdinOnce", c.stdin_once.take());
    o.bool_nz("tty", c.tty.take());
    done(c, path)?;
    Ok(o.done())
}

fn local_ref(mut r: core::LocalObjectReference, path: &str) -> R<Value> {
    let mut o = Obj::default();
    o.str("name", r.name.take());
    done(r, path)?;
    Ok(o.done())
}

fn pod_spec(mut s: core::PodSpec, path: &str) -> R<Value> {
    let mut o = Obj::default();
    o.list(
        "initContainers",
        each(
            std::mem::take(&mut s.init_containers),
            &format!("{path}.initContainers"),
            container,
        )?,
    );
    o.list(
        "containers",
        each(
            std::mem::take(&mut s.containers),
            &format!("{path}.containers"),
            container,
        )?,
    );
    o.str("restartPolicy", s.restart_policy.take());
    o.int(
        "terminationGracePeriodSeconds",
        s.termination_grace_period_seconds.take(),
    );
    o.int("activeDeadlineSeconds", s.active_deadline_seconds.take());
    o.str("dnsPolicy", s.dns_policy.take());
    o.map("nodeSelector", std::mem::take(&mut s.node_selector));
    o.str("serviceAccountName", s.service_account_name.take());
    o.str("serviceAccount", s.service_account.take());
    o.boolean(
        "automountServiceAccountToken",
        s.automount_service_account_token.take(),
    );
    o.str("nodeName", s.node_name.take());
    o.bool_nz("hostNetwork", s.host_network.take());
    o.bool_nz("hostPID", s.host_pid.take());
    o.bool_nz("hostIPC", s.host_ipc.take());
    o.boolean("shareProcessNamespace", s.share_process_namespace.take());
    o.str("hostname", s.hostname.take());
    o.str("subdomain", s.subdomain.take());
    o.str("schedulerName", s.scheduler_name.take());
    o.str("priorityClassName", s.priority_class_name.take());
    o.int("priority", s.priority.take());
    o.boolean("enableServiceLinks", s.enable_service_links.take());
    o.list(
        "imagePullSecrets",
        each(
            std::mem::take(&mut s.image_pull_secrets),
            &format!("{path}.imagePullSecrets"),
            local_ref,
        )?,
    );
    if s.security_context
        .as_ref()
        .is_some_and(|c| *c == core::PodSecurityContext::default())
    {
        s.security_context = None;
        o.val("securityContext", Some(json!({})));
    }
    done(s, path)?;
    Ok(o.done())
}

fn pod_template(mut t: core::PodTemplateSpec, path: &str) -> R<Value> {
    let mut o = Obj::default();
    o.val(
        "metadata",
        opt(t.metadata.take(), &format!("{path}.metadata"), object_meta)?,
    );
    o.val(
        "spec",
        opt(t.spec.take(), &format!("{path}.spec"), pod_spec)?,
    );
    done(t, path)?;
    Ok(o.done())
}

// ---- kinds ----

fn top<F: FnOnce(&mut Obj) -> R<()>>(
    api_version: &str,
    kind: &str,
    metadata: Option<meta::ObjectMeta>,
    f: F,
) -> R<Value> {
    let mut o = Obj::default();
    o.val("apiVersion", Some(json!(api_version)));
    o.val("kind", Some(json!(kind)));
    o.val(
        "metadata",
        Some(opt(metadata, "metadata", object_meta)?.unwrap_or_else(|| json!({}))),
    );
    f(&mut o)?;
    Ok(o.done())
}

fn namespace(mut n: core::Namespace) -> R<Value> {
    top("v1", "Namespace", n.metadata.take(), |o| {
        if let Some(mut spec) = n.spec.take() {
            let mut so = Obj::default();
            so.strs("finalizers", std::mem::take(&mut spec.finalizers));
            done(spec, "spec")?;
            o.val("spec", Some(so.done()));
        }
        n.status = None; // set by the server
        done(n, "")
    })
}

fn config_map(mut c: core::ConfigMap) -> R<Value> {
    top("v1", "ConfigMap", c.metadata.take(), |o| {
        o.boolean("immutable", c.immutable.take());
        o.map("data", std::mem::take(&mut c.data));
        o.bytes_map("binaryData", std::mem::take(&mut c.binary_data));
        done(c, "")
    })
}

fn secret(mut s: core::Secret) -> R<Value> {
    top("v1", "Secret", s.metadata.take(), |o| {
        o.boolean("immutable", s.immutable.take());
        o.bytes_map("data", std::mem::take(&mut s.data));
        o.map("stringData", std::mem::take(&mut s.string_data));
        o.str("type", s.r#type.take());
        done(s, "")
    })
}

fn service(mut s: core::Service) -> R<Value> {
    top("v1", "Service", s.metadata.take(), |o| {
        if let Some(mut spec) = s.spec.take() {
            let mut so = Obj::default();
            let ports = each(
                std::mem::take(&mut spec.ports),
                "spec.ports",
                |mut p: core::ServicePort, path| {
                    let mut po = Obj::default();
                    po.str("name", p.name.take());
                    po.str("protocol", p.protocol.take());
                    po.opt_str("appProtocol", p.app_protocol.take());
                    po.int("port", p.port.take());
                    po.val(
                        "targetPort",
                        opt(
                            p.target_port.take(),
                            &format!("{path}.targetPort"),
                            int_or_string,
                        )?,
                    );
                    po.int_nz("nodePort", p.node_port.take());
                    done(p, path)?;
                    Ok(po.done())
                },
            )?;
            so.list("ports", ports);
            so.map("selector", std::mem::take(&mut spec.selector));
            so.str("clusterIP", spec.cluster_ip.take());
            so.strs("clusterIPs", std::mem::take(&mut spec.cluster_ips));
            so.str("type", spec.r#type.take());
            so.strs("externalIPs", std::mem::take(&mut spec.external_ips));
            so.str("sessionAffinity", spec.session_affinity.take());
            so.str("loadBalancerIP", spec.load_balancer_ip.take());
            so.strs(
                "loadBalancerSourceRanges",
                std::mem::take(&mut spec.load_balancer_source_ranges),
            );
            so.str("externalName", spec.external_name.take());
            so.str("externalTrafficPolicy", spec.external_traffic_policy.take());
            so.int_nz("healthCheckNodePort", spec.health_check_node_port.take());
            so.bool_nz(
                "publishNotReadyAddresses",
                spec.publish_not_ready_addresses.take(),
            );
            so.strs("ipFamilies", std::mem::take(&mut spec.ip_families));
            so.opt_str("ipFamilyPolicy", spec.ip_family_policy.take());
            so.boolean(
                "allocateLoadBalancerNodePorts",
                spec.allocate_load_balancer_node_ports.take(),
            );
            so.opt_str("loadBalancerClass", spec.load_balancer_class.take());
            so.opt_str("internalTrafficPolicy", spec.internal_traffic_policy.take());
            so.opt_str("trafficDistribution", spec.traffic_distribution.take());
            done(spec, "spec")?;
            o.val("spec", Some(so.done()));
        }
        s.status = None;
        done(s, "")
    })
}

fn service_account(mut s: core::ServiceAccount) -> R<Value> {
    top("v1", "ServiceAccount", s.metadata.take(), |o| {
        o.list(
            "imagePullSecrets",
            each(
                std::mem::take(&mut s.image_pull_secrets),
                "imagePullSecrets",
                local_ref,
            )?,
        );
        o.boolean(
            "automountServiceAccountToken",
            s.automount_service_account_token.take(),
        );
        done(s, "")
    })
}

fn deployment(mut d: apps::Deployment) -> R<Value> {
    top("apps/v1", "Deployment", d.metadata.take(), |o| {
        if let Some(mut spec) = d.spec.take() {
            let mut so = Obj::default();
            so.int("replicas", spec.replicas.take());
            so.val(
                "selector",
                opt(spec.selector.take(), "spec.selector", label_selector)?,
            );
            so.val(
                "template",
                opt(spec.template.take(), "spec.template", pod_template)?,
            );
            if let Some(mut st) = spec.strategy.take() {
                let mut sto = Obj::default();
                sto.str("type", st.r#type.take());
                if let Some(mut ru) = st.rolling_update.take() {
                    let mut ruo = Obj::default();
                    ruo.val(
                        "maxUnavailable",
                        opt(
                            ru.max_unavailable.take(),
                            "spec.strategy.rollingUpdate.maxUnavailable",
                            int_or_string,
                        )?,
                    );
                    ruo.val(
                        "maxSurge",
                        opt(
                            ru.max_surge.take(),
                            "spec.strategy.rollingUpdate.maxSurge",
                            int_or_string,
                        )?,
                    );
                    done(ru, "spec.strategy.rollingUpdate")?;
                    sto.val("rollingUpdate", Some(ruo.done()));
                }
                done(st, "spec.strategy")?;
                so.val("strategy", Some(sto.done()));
            }
            so.int_nz("minReadySeconds", spec.min_ready_seconds.take());
            so.int("revisionHistoryLimit", spec.revision_history_limit.take());
            so.bool_nz("paused", spec.paused.take());
            so.int(
                "progressDeadlineSeconds",
                spec.progress_deadline_seconds.take(),
            );
            done(spec, "spec")?;
            o.val("spec", Some(so.done()));
        }
        d.status = None; // reset by the server on create
        done(d, "")
    })
}

fn job_spec(mut spec: batch::JobSpec, path: &str) -> R<Value> {
    let mut so = Obj::default();
    so.int("parallelism", spec.parallelism.take());
    so.int("completions", spec.completions.take());
    so.int("activeDeadlineSeconds", spec.active_deadline_seconds.take());
    so.int("backoffLimit", spec.backoff_limit.take());
    so.int("backoffLimitPerIndex", spec.backoff_limit_per_index.take());
    so.int("maxFailedIndexes", spec.max_failed_indexes.take());
    so.val(
        "selector",
        opt(
            spec.selector.take(),
            &format!("{path}.selector"),
            label_selector,
        )?,
    );
    so.boolean("manualSelector", spec.manual_selector.take());
    so.val(
        "template",
        opt(
            spec.template.take(),
            &format!("{path}.template"),
            pod_template,
        )?,
    );
    so.int(
        "ttlSecondsAfterFinished",
        spec.ttl_seconds_after_finished.take(),
    );
    so.opt_str("completionMode", spec.completion_mode.take());
    so.boolean("suspend", spec.suspend.take());
    so.opt_str("podReplacementPolicy", spec.pod_replacement_policy.take());
    so.opt_str("managedBy", spec.managed_by.take());
    done(spec, path)?;
    Ok(so.done())
}

fn job(mut j: batch::Job) -> R<Value> {
    top("batch/v1", "Job", j.metadata.take(), |o| {
        o.val("spec", opt(j.spec.take(), "spec", job_spec)?);
        j.status = None;
        done(j, "")
    })
}

fn cron_job(mut c: batch::CronJob) -> R<Value> {
    top("batch/v1", "CronJob", c.metadata.take(), |o| {
        if let Some(mut spec) = c.spec.take() {
            let mut so = Obj::default();
            so.str("schedule", spec.schedule.take());
            so.opt_str("timeZone", spec.time_zone.take());
            so.int(
                "startingDeadlineSeconds",
                spec.starting_deadline_seconds.take(),
            );
            so.str("concurrencyPolicy", spec.concurrency_policy.take());
            so.boolean("suspend", spec.suspend.take());
            so.int(
                "successfulJobsHistoryLimit",
                spec.successful_jobs_history_limit.take(),
            );
            so.int(
                "failedJobsHistoryLimit",
                spec.failed_jobs_history_limit.take(),
            );
            if let Some(mut jt) = spec.job_template.take() {
                let mut jo = Obj::default();
                jo.val(
                    "metadata",
                    opt(jt.metadata.take(), "spec.jobTemplate.metadata", object_meta)?,
                );
                jo.val(
                    "spec",
                    opt(jt.spec.take(), "spec.jobTemplate.spec", job_spec)?,
                );
                done(jt, "spec.jobTemplate")?;
                so.val("jobTemplate", Some(jo.done()));
            }
            done(spec, "spec")?;
            o.val("spec", Some(so.done()));
        }
        c.status = None;
        done(c, "")
    })
}

fn policy_rule(mut r: rbac::PolicyRule, path: &str) -> R<Value> {
    let mut o = Obj::default();
    o.strs("verbs", std::mem::take(&mut r.verbs));
    if !r.api_groups.is_empty() {
        o.val("apiGroups", Some(json!(std::mem::take(&mut r.api_groups))));
    }
    o.strs("resources", std::mem::take(&mut r.resources));
    o.strs("resourceNames", std::mem::take(&mut r.resource_names));
    o.strs("nonResourceURLs", std::mem::take(&mut r.non_resource_ur_ls));
    done(r, path)?;
    Ok(o.done())
}

fn subject(mut s: rbac::Subject, path: &str) -> R<Value> {
    let mut o = Obj::default();
    o.str("kind", s.kind.take());
    o.str("apiGroup", s.api_group.take());
    o.str("name", s.name.take());
    o.str("namespace", s.namespace.take());
    done(s, path)?;
    Ok(o.done())
}

fn role_ref(mut r: rbac::RoleRef, path: &str) -> R<Value> {
    let mut o = Obj::default();
    o.str("apiGroup", r.api_group.take());
    o.str("kind", r.kind.take());
    o.str("name", r.name.take());
    done(r, path)?;
    Ok(o.done())
}

fn role(mut r: rbac::Role) -> R<Value> {
    top(
        "rbac.authorization.k8s.io/v1",
        "Role",
        r.metadata.take(),
        |o| {
            o.list(
                "rules",
                each(std::mem::take(&mut r.rules), "rules", policy_rule)?,
            );
            done(r, "")
        },
    )
}

fn cluster_role(mut r: rbac::ClusterRole) -> R<Value> {
    top(
        "rbac.authorization.k8s.io/v1",
        "ClusterRole",
        r.metadata.take(),
        |o| {
            o.list(
                "rules",
                each(std::mem::take(&mut r.rules), "rules", policy_rule)?,
            );
            if let Some(mut agg) = r.aggregation_rule.take() {
                let sels = each(
                    std::mem::take(&mut agg.cluster_role_selectors),
                    "aggregationRule.clusterRoleSelectors",
                    label_selector,
                )?;
                done(agg, "aggregationRule")?;
                o.val(
                    "aggregationRule",
                    Some(json!({"clusterRoleSelectors": sels})),
                );
            }
            done(r, "")
        },
    )
}

fn role_binding(mut b: rbac::RoleBinding) -> R<Value> {
    top(
        "rbac.authorization.k8s.io/v1",
        "RoleBinding",
        b.metadata.take(),
        |o| {
            o.list(
                "subjects",
                each(std::mem::take(&mut b.subjects), "subjects", subject)?,
            );
            o.val("roleRef", opt(b.role_ref.take(), "roleRef", role_ref)?);
            done(b, "")
        },
    )
}

fn cluster_role_binding(mut b: rbac::ClusterRoleBinding) -> R<Value> {
    top(
        "rbac.authorization.k8s.io/v1",
        "ClusterRoleBinding",
        b.metadata.take(),
        |o| {
            o.list(
                "subjects",
                each(std::mem::take(&mut b.subjects), "subjects", subject)?,
            );
            o.val("roleRef", opt(b.role_ref.take(), "roleRef", role_ref)?);
            done(b, "")
        },
    )
}

fn self_subject_access_review(mut r: authz::SelfSubjectAccessReview) -> R<Value> {
    top(
        "authorization.k8s.io/v1",
        "SelfSubjectAccessReview",
        r.metadata.take(),
        |o| {
            let mut so = Obj::default();
            if let Some(mut spec) = r.spec.take() {
                if let Some(mut ra) = spec.resource_attributes.take() {
                    let mut ro = Obj::default();
                    ro.str("namespace", ra.namespace.take());
                    ro.str("verb", ra.verb.take());
                    ro.str("group", ra.group.take());
                    ro.str("version", ra.version.take());
                    ro.str("resource", ra.resource.take());
                    ro.str("subresource", ra.subresource.take());
                    ro.str("name", ra.name.take());
                    done(ra, "spec.resourceAttributes")?;
                    so.val("resourceAttributes", Some(ro.done()));
                }
                if let Some(mut na) = spec.non_resource_attributes.take() {
                    let mut no = Obj::default();
                    no.str("path", na.path.take());
                    no.str("verb", na.verb.take());
                    done(na, "spec.nonResourceAttributes")?;
                    so.val("nonResourceAttributes", Some(no.done()));
                }
                done(spec, "spec")?;
            }
            o.val("spec", Some(so.done()));
            r.status = None;
            done(r, "")
        },
    )
}

fn self_subject_rules_review(mut r: authz::SelfSubjectRulesReview) -> R<Value> {
    top(
        "authorization.k8s.io/v1",
        "SelfSubjectRulesReview",
        r.metadata.take(),
        |o| {
            let mut so = Obj::default();
            if let Some(mut spec) = r.spec.take() {
                so.str("namespace", spec.namespace.take());
                done(spec, "spec")?;
            }
            o.val("spec", Some(so.done()));
            r.status = None;
            done(r, "")
        },
    )
}

fn self_subject_review(mut r: authn::SelfSubjectReview) -> R<Value> {
    top(
        "authentication.k8s.io/v1",
        "SelfSubjectReview",
        r.metadata.take(),
        |_| {
            r.status = None;
            done(r, "")
        },
    )
}

fn token_request(mut t: authn::TokenRequest) -> R<Value> {
    top(
        "authentication.k8s.io/v1",
        "TokenRequest",
        t.metadata.take(),
        |o| {
            if let Some(mut spec) = t.spec.take() {
                let mut so = Obj::default();
                so.strs("audiences", std::mem::take(&mut spec.audiences));
                so.int("expirationSeconds", spec.expiration_seconds.take());
                if let Some(mut b) = spec.bound_object_ref.take() {
                    let mut bo = Obj::default();
                    bo.str("kind", b.kind.take());
                    bo.str("apiVersion", b.api_version.take());
                    bo.str("name", b.name.take());
                    bo.str("uid", b.u_id.take());
                    done(b, "spec.boundObjectRef")?;
                    so.val("boundObjectRef", Some(bo.done()));
                }
                done(spec, "spec")?;
                o.val("spec", Some(so.done()));
            }
            t.status = None;
            done(t, "")
        },
    )
}

fn decode_as<M: Message + Default>(raw: &[u8], kind: &str) -> R<M> {
    M::decode(raw).map_err(|e| ApiError::bad_request(format!("invalid protobuf {kind}: {e}")))
}

/// Decodes a Kubernetes protobuf body into the JSON form of the object.
pub fn decode(body: &[u8]) -> R<Value> {
    let payload = body.strip_prefix(MAGIC).ok_or_else(|| {
        ApiError::bad_request(
            "protobuf body does not start with the Kubernetes magic prefix `k8s\\0`",
        )
    })?;
    let unknown = Unknown::decode(payload)
        .map_err(|e| ApiError::bad_request(format!("invalid protobuf envelope: {e}")))?;
    let type_meta = unknown.type_meta.unwrap_or_default();
    let api_version = type_meta.api_version.unwrap_or_default();
    let kind = type_meta.kind.unwrap_or_default();
    let raw = unknown.raw.unwrap_or_default();
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => namespace(decode_as(&raw, &kind)?),
        ("v1", "ConfigMap") => config_map(decode_as(&raw, &kind)?),
        ("v1", "Secret") => secret(decode_as(&raw, &kind)?),
        ("v1", "Service") => service(decode_as(&raw, &kind)?),
        ("v1", "ServiceAccount") => service_account(decode_as(&raw, &kind)?),
        ("apps/v1", "Deployment") => deployment(decode_as(&raw, &kind)?),
        ("batch/v1", "Job") => job(decode_as(&raw, &kind)?),
        ("batch/v1", "CronJob") => cron_job(decode_as(&raw, &kind)?),
        ("rbac.authorization.k8s.io/v1", "Role") => role(decode_as(&raw, &kind)?),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => cluster_role(decode_as(&raw, &kind)?),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => role_binding(decode_as(&raw, &kind)?),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => cluster_role_binding(decode_as(&raw, &kind)?),
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => self_subject_access_review(decode_as(&raw, &kind)?),
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview") => self_subject_rules_review(decode_as(&raw, &kind)?),
        ("authentication.k8s.io/v1", "SelfSubjectReview") => self_subject_review(decode_as(&raw, &kind)?),
        ("authentication.k8s.io/v1", "TokenRequest") => token_request(decode_as(&raw, &kind)?),
        _ => Err(ApiError::unsupported_media_type(format!(
            "protobuf bodies of kind {kind} ({api_version}) are not supported by this server; send JSON"
        ))),
    }
}

/// Encodes `msg` of `api_version`/`kind` the way client-go does (used by tests).
pub fn encode<M: Message>(api_version: &str, kind: &str, msg: &M) -> Vec<u8> {
    let unknown = Unknown {
        type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
        }),
        raw: Some(msg.encode_to_vec()),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut out = MAGIC.to_vec();
    out.extend(unknown.encode_to_vec());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta_named(name: &str) -> meta::ObjectMeta {
        meta::ObjectMeta {
            name: Some(name.into()),
            creation_timestamp: Some(meta::Time::default()),
            labels: [("app".to_string(), name.to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn deployment_like_kubectl_create() {
        let container = core::Container {
            name: Some("nginx".into()),
            image: Some("nginx:1.27".into()),
            resources: Some(core::ResourceRequirements::default()),
            stdin: Some(false),
            ports: vec![core::ContainerPort {
                container_port: Some(80),
                host_port: Some(0),
                ..Default::default()
            }],
            ..Default::default()
        };
        let d = apps::Deployment {
            metadata: Some(meta_named("web")),
            spec: Some(apps::DeploymentSpec {
                replicas: Some(2),
                selector: Some(meta::LabelSelector {
                    match_labels: [("app".to_string(), "web".to_string())].into(),
                    ..Default::default()
                }),
                template: Some(core::PodTemplateSpec {
                    metadata: Some(meta_named("web")),
                    spec: Some(core::PodSpec {
                        containers: vec![container],
                        host_network: Some(false),
                        ..Default::default()
                    }),
                }),
                strategy: Some(apps::DeploymentStrategy::default()),
                min_ready_seconds: Some(0),
                paused: Some(false),
                ..Default::default()
            }),
            status: Some(apps::DeploymentStatus {
                replicas: Some(0),
                ..Default::default()
            }),
        };
        let v = decode(&encode("apps/v1", "Deployment", &d)).unwrap();
        assert_eq!(v["kind"], "Deployment");
        assert_eq!(v["metadata"]["name"], "web");
        assert_eq!(v["spec"]["replicas"], 2);
        assert_eq!(v["spec"]["selector"]["matchLabels"]["app"], "web");
        assert_eq!(
            v["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx:1.27"
        );
        assert_eq!(
            v["spec"]["template"]["spec"]["containers"][0]["ports"][0],
            json!({"containerPort": 80})
        );
        assert!(v["spec"].get("minReadySeconds").is_none());
        assert!(v.get("status").is_none());
    }

    #[test]
    fn secrets_and_access_reviews() {
        let s = core::Secret {
            metadata: Some(meta_named("s")),
            data: [("k".to_string(), b"v".to_vec())].into(),
            r#type: Some("Opaque".into()),
            ..Default::default()
        };
        let v = decode(&encode("v1", "Secret", &s)).unwrap();
        assert_eq!(v["data"]["k"], "dg==");
        let r = authz::SelfSubjectAccessReview {
            metadata: Some(meta::ObjectMeta::default()),
            spec: Some(authz::SelfSubjectAccessReviewSpec {
                resource_attributes: Some(authz::ResourceAttributes {
                    verb: Some("list".into()),
                    resource: Some("pods".into()),
                    namespace: Some("default".into()),
                    ..Default::default()
                }),
                non_resource_attributes: None,
            }),
            status: None,
        };
        let v = decode(&encode(
            "authorization.k8s.io/v1",
            "SelfSubjectAccessReview",
            &r,
        ))
        .unwrap();
        assert_eq!(
            v["spec"]["resourceAttributes"],
            json!({"verb": "list", "resource": "pods", "namespace": "default"})
        );
    }

    #[test]
    fn unmapped_fields_are_refused_not_dropped() {
        let c = core::Container {
            name: Some("a".into()),
            image: Some("b".into()),
            liveness_probe: Some(core::Probe::default()),
            ..Default::default()
        };
        let j = batch::Job {
            metadata: Some(meta_named("j")),
            spec: Some(batch::JobSpec {
                template: Some(core::PodTemplateSpec {
                    metadata: None,
                    spec: Some(core::PodSpec {
                        containers: vec![c],
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
            status: None,
        };
        let err = decode(&encode("batch/v1", "Job", &j)).unwrap_err();
        assert_eq!(err.code, 415);
        assert!(
            err.message.contains("spec.template.spec.containers[0]"),
            "{}",
            err.message
        );
        assert_eq!(decode(b"{}").unwrap_err().code, 400);
        let pod = core::Pod::default();
        assert_eq!(decode(&encode("v1", "Pod", &pod)).unwrap_err().code, 415);
    }
}
