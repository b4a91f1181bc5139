//! Server-side tables (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`): the columns
//! kubectl prints for each kind, with the cells rendered like Kubernetes' printers.

use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use crate::selectors::LabelSelector;

/// One column of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// Header, e.g. `Name`, `Ready` (kubectl upper-cases it).
    pub name: &'static str,
    /// OpenAPI type of the cells: `string`, `integer`, `date`.
    pub kind: &'static str,
    /// 0 = always shown; 1 = only with `-o wide`.
    pub priority: u8,
    /// Column description.
    pub description: &'static str,
}

const fn col(
    name: &'static str,
    kind: &'static str,
    priority: u8,
    description: &'static str,
) -> Column {
    Column {
        name,
        kind,
        priority,
        description,
    }
}

const NAME: Column = col(
    "Name",
    "string",
    0,
    "Name must be unique within a namespace.",
);
const AGE: Column = col(
    "Age",
    "string",
    0,
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
);

/// How one kind is printed: its columns and a function computing one row's cells.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    /// Columns, in order.
    pub columns: &'static [Column],
    /// Cells of one object, one per column.
    pub cells: fn(&Value, OffsetDateTime) -> Vec<Value>,
}

/// List metadata and options of a Table response.
#[derive(Debug, Clone, Copy)]
pub struct TableOptions<'a> {
    /// `metadata.resourceVersion`.
    pub resource_version: &'a str,
    /// `metadata.continue`.
    pub continue_token: Option<&'a str>,
    /// `metadata.remainingItemCount`.
    pub remaining: Option<usize>,
    /// `Metadata` (the default: rows carry PartialObjectMetadata), `Object` or `None`.
    pub include_object: &'a str,
    /// Whether to send `columnDefinitions` (false for watch events after the first).
    pub with_columns: bool,
}

impl<'a> TableOptions<'a> {
    /// Options for a single object or watch event.
    pub fn single(resource_version: &'a str, include_object: &'a str, with_columns: bool) -> Self {
        TableOptions {
            resource_version,
            continue_token: None,
            remaining: None,
            include_object,
            with_columns,
        }
    }
}

/// Builds a `meta.k8s.io/v1` Table for `objects`.
pub fn build_table(
    printer: &Printer,
    objects: &[Value],
    options: &TableOptions<'_>,
    now: OffsetDateTime,
) -> Value {
    let TableOptions {
        resource_version,
        continue_token,
        remaining,
        include_object,
        with_columns,
    } = *options;
    let columns: Vec<Value> = if with_columns {
        printer
            .columns
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "type": c.kind,
                    "format": if c.name == "Name" { "name" } else { "" },
                    "description": c.description,
                    "priority": c.priority,
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut row = json!({ "cells": (printer.cells)(o, now) });
            match include_object {
                "None" => {}
                "Object" => row["object"] = o.clone(),
                _ => row["object"] = partial_object_metadata(o),
            }
            row
        })
        .collect();
    let mut metadata = json!({ "resourceVersion": resource_version });
    if let Some(c) = continue_token {
        metadata["continue"] = json!(c);
    }
    if let Some(r) = remaining {
        metadata["remainingItemCount"] = json!(r);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns,
        "rows": rows,
    })
}

/// `PartialObjectMetadata` of an object (what table rows carry by default).
pub fn partial_object_metadata(object: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

// ---- helpers ----

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn i(v: &Value, ptr: &str) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn arr<'a>(v: &'a Value, ptr: &str) -> &'a [Value] {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn obj<'a>(v: &'a Value, ptr: &str) -> Option<&'a Map<String, Value>> {
    v.pointer(ptr).and_then(Value::as_object)
}

fn or_none(v: String) -> Value {
    if v.is_empty() {
        json!("<none>")
    } else {
        json!(v)
    }
}

fn name(o: &Value) -> Value {
    json!(s(o, "/metadata/name"))
}

/// Parses an RFC 3339 timestamp.
pub fn parse_time(value: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339).ok()
}

/// Formats a timestamp as Kubernetes does (`2024-01-02T03:04:05Z`).
pub fn format_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Human duration as kubectl prints ages (`45s`, `3m20s`, `5h`, `2d3h`, `90d`, `2y10d`).
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    let seconds = seconds.max(0);
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 192 {
        let h = hours % 24;
        let d = hours / 24;
        return if h == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{h}h")
        };
    }
    let days = hours / 24;
    if days < 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if years < 8 {
        let d = days % 365;
        return if d == 0 {
            format!("{years}y")
        } else {
            format!("{years}y{d}d")
        };
    }
    format!("{years}y")
}

fn since(ts: &str, now: OffsetDateTime) -> String {
    match parse_time(ts) {
        Some(t) => human_duration((now - t).whole_seconds()),
        None => "<unknown>".into(),
    }
}

fn age(o: &Value, now: OffsetDateTime) -> Value {
    json!(since(s(o, "/metadata/creationTimestamp"), now))
}

fn label_map(m: Option<&Map<String, Value>>) -> String {
    m.map(|m| {
        m.iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect::<Vec<_>>()
            .join(",")
    })
    .unwrap_or_default()
}

fn selector_string(o: &Value, ptr: &str) -> Value {
    match o.pointer(ptr) {
        Some(sel) => match LabelSelector::from_object(sel) {
            Ok(sel) => or_none(sel.render()),
            Err(_) => json!("<invalid>"),
        },
        None => json!("<none>"),
    }
}

fn containers_images(o: &Value, spec_ptr: &str) -> (Value, Value) {
    let cs = arr(o, &format!("{spec_ptr}/containers"));
    let names: Vec<&str> = cs.iter().map(|c| s(c, "/name")).collect();
    let images: Vec<&str> = cs.iter().map(|c| s(c, "/image")).collect();
    (json!(names.join(",")), json!(images.join(",")))
}

fn workload_wide(o: &Value, spec_ptr: &str, selector_ptr: &str) -> [Value; 3] {
    let (c, im) = containers_images(o, spec_ptr);
    [c, im, selector_string(o, selector_ptr)]
}

const WIDE_WORKLOAD: [Column; 3] = [
    col(
        "Containers",
        "string",
        1,
        "Names of each container in the template.",
    ),
    col(
        "Images",
        "string",
        1,
        "Images referenced by each container in the template.",
    ),
    col("Selector", "string", 1, "Label selector for pods."),
];

// ---- default ----

/// NAME AGE, for kinds without a dedicated printer.
pub const DEFAULT: Printer = Printer {
    columns: &[NAME, AGE],
    cells: |o, now| vec![name(o), age(o, now)],
};

// ---- core/v1 ----

fn component_status_cells(o: &Value, _now: OffsetDateTime) -> Vec<Value> {
    let healthy = o.get("conditions").and_then(Value::as_array).and_then(|c| {
        c.iter()
            .find(|c| c.get("type").and_then(Value::as_str) == Some("Healthy"))
    });
    let text = |c: &Value, key: &str| c.get(key).and_then(Value::as_str).unwrap_or("").to_string();
    let (status, message, error) = match healthy {
        Some(c) => (
            if c.get("status").and_then(Value::as_str) == Some("True") {
                "Healthy"
            } else {
                "Unhealthy"
            },
            text(c, "message"),
            text(c, "error"),
        ),
        None => ("Unknown", String::new(), String::new()),
    };
    vec![
        json!(o
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")),
        json!(status),
        json!(message),
        json!(error),
    ]
}

/// `kubectl get componentstatuses`: NAME STATUS MESSAGE ERROR.
pub const COMPONENT_STATUS: Printer = Printer {
    columns: &[
        NAME,
        col("Status", "string", 0, "Status of the component conditions"),
        col(
            "Message",
            "string",
            0,
            "Message of the component conditions",
        ),
        col("Error", "string", 0, "Error of the component conditions"),
    ],
    cells: component_status_cells,
};

/// Pods: NAME READY STATUS RESTARTS AGE IP NODE NOMINATED NODE READINESS GATES.
pub const POD: Printer = Printer {
    columns: &[
        NAME,
        col("Ready", "string", 0, "The aggregate readiness state of this pod for accepting traffic."),
        col("Status", "string", 0, "The aggregate status of the containers in this pod."),
        col("Restarts", "string", 0, "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
        AGE,
        col("IP", "string", 1, "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated."),
        col("Node", "string", 1, "NodeName is a request to schedule this pod onto a specific node."),
        col("Nominated Node", "string", 1, "nominatedNodeName is set only when this pod preempts other pods on the node."),
        col("Readiness Gates", "string", 1, "If specified, all readiness gates will be evaluated for pod readiness."),
    ],
    cells: pod_cells,
};

/// The STATUS column of a pod, following kubectl's rules.
pub fn pod_status_reason(pod: &Value) -> String {
    let mut reason = s(pod, "/status/phase").to_string();
    if reason.is_empty() {
        reason = "Pending".into();
    }
    if !s(pod, "/status/reason").is_empty() {
        reason = s(pod, "/status/reason").to_string();
    }
    let init_total = arr(pod, "/spec/initContainers").len();
    let mut initializing = false;
    for (idx, st) in arr(pod, "/status/initContainerStatuses").iter().enumerate() {
        if let Some(t) = st.pointer("/state/terminated") {
            if i(t, "/exitCode") == 0 {
                continue;
            }
            reason = if !s(t, "/reason").is_empty() {
                format!("Init:{}", s(t, "/reason"))
            } else if i(t, "/signal") != 0 {
                format!("Init:Signal:{}", i(t, "/signal"))
            } else {
                format!("Init:ExitCode:{}", i(t, "/exitCode"))
            };
            initializing = true;
            break;
        }
        let waiting = s(st, "/state/waiting/reason");
        if !waiting.is_empty() && waiting != "PodInitializing" {
            reason = format!("Init:{waiting}");
        } else {
            reason = format!("Init:{idx}/{init_total}");
        }
        initializing = true;
        break;
    }
    if !initializing {
        let mut has_running = false;
        for st in arr(pod, "/status/containerStatuses").iter().rev() {
            let waiting = s(st, "/state/waiting/reason");
            if !waiting.is_empty() {
                reason = waiting.to_string();
            } else if let Some(t) = st.pointer("/state/terminated") {
                reason = if !s(t, "/reason").is_empty() {
                    s(t, "/reason").to_string()
                } else if i(t, "/signal") != 0 {
                    format!("Signal:{}", i(t, "/signal"))
                } else {
                    format!("ExitCode:{}", i(t, "/exitCode"))
                };
            } else if st.get("ready").and_then(Value::as_bool) == Some(true)
                && st.pointer("/state/running").is_some()
            {
                has_running = true;
            }
        }
        if reason == "Completed" && has_running {
            let ready = arr(pod, "/status/conditions")
                .iter()
                .any(|c| s(c, "/type") == "Ready" && s(c, "/status") == "True");
            reason = if ready {
                "Running".into()
            } else {
                "NotReady".into()
            };
        }
    }
    if pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        reason = if s(pod, "/status/reason") == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    reason
}

fn pod_cells(pod: &Value, now: OffsetDateTime) -> Vec<Value> {
    let total = arr(pod, "/spec/containers").len();
    let statuses = arr(pod, "/status/containerStatuses");
    let ready = statuses
        .iter()
        .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
        .count();
    let restarts: i64 = statuses.iter().map(|c| i(c, "/restartCount")).sum();
    let last_restart = statuses
        .iter()
        .filter_map(|c| parse_time(s(c, "/lastState/terminated/finishedAt")))
        .max();
    let restarts = match last_restart {
        Some(t) if restarts > 0 => {
            format!(
                "{restarts} ({} ago)",
                human_duration((now - t).whole_seconds())
            )
        }
        _ => restarts.to_string(),
    };
    let gates = arr(pod, "/spec/readinessGates");
    let gates_cell = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let met = gates
            .iter()
            .filter(|g| {
                arr(pod, "/status/conditions")
                    .iter()
                    .any(|c| s(c, "/type") == s(g, "/conditionType") && s(c, "/status") == "True")
            })
            .count();
        format!("{met}/{}", gates.len())
    };
    vec![
        name(pod),
        json!(format!("{ready}/{total}")),
        json!(pod_status_reason(pod)),
        json!(restarts),
        age(pod, now),
        or_none(s(pod, "/status/podIP").to_string()),
        or_none(s(pod, "/spec/nodeName").to_string()),
        or_none(s(pod, "/status/nominatedNodeName").to_string()),
        json!(gates_cell),
    ]
}

/// Nodes: NAME STATUS ROLES AGE VERSION (+ addresses, OS, kernel, runtime).
pub const NODE: Printer = Printer {
    columns: &[
        NAME,
        col("Status", "string", 0, "The status of the node"),
        col("Roles", "string", 0, "The roles of the node"),
        AGE,
        col("Version", "string", 0, "Kubelet Version reported by the node."),
        col("Internal-IP", "string", 1, "List of internal IPs in the node."),
        col("External-IP", "string", 1, "List of external IPs in the node."),
        col("OS-Image", "string", 1, "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy))."),
        col("Kernel-Version", "string", 1, "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64)."),
        col("Container-Runtime", "string", 1, "Container Runtime Version reported by the node through runtime remote API (e.g. containerd://1.4.2)."),
    ],
    cells: |n, now| {
        let mut status = match arr(n, "/status/conditions").iter().find(|c| s(c, "/type") == "Ready") {
            Some(c) if s(c, "/status") == "True" => "Ready".to_string(),
            Some(_) => "NotReady".to_string(),
            None => "Unknown".to_string(),
        };
        if n.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
            status.push_str(",SchedulingDisabled");
        }
        let mut roles: Vec<String> = obj(n, "/metadata/labels")
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| {
                        if let Some(r) = k.strip_prefix("node-role.kubernetes.io/") {
                            Some(r.to_string())
                        } else if k == "kubernetes.io/role" {
                            v.as_str().map(String::from)
                        } else {
                            None
                        }
                    })
                    .filter(|r| !r.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        roles.sort();
        roles.dedup();
        let addr = |t: &str| {
            let list: Vec<&str> = arr(n, "/status/addresses")
                .iter()
                .filter(|a| s(a, "/type") == t)
                .map(|a| s(a, "/address"))
                .collect();
            or_none(list.join(","))
        };
        vec![
            name(n),
            json!(status),
            or_none(roles.join(",")),
            age(n, now),
            json!(s(n, "/status/nodeInfo/kubeletVersion")),
            addr("InternalIP"),
            addr("ExternalIP"),
            or_none(s(n, "/status/nodeInfo/osImage").to_string()),
            or_none(s(n, "/status/nodeInfo/kernelVersion").to_string()),
            or_none(s(n, "/status/nodeInfo/containerRuntimeVersion").to_string()),
        ]
    },
};

/// Namespaces: NAME STATUS AGE.
pub const NAMESPACE: Printer = Printer {
    columns: &[
        NAME,
        col("Status", "string", 0, "The status of the namespace"),
        AGE,
    ],
    cells: |o, now| vec![name(o), json!(s(o, "/status/phase")), age(o, now)],
};

fn service_ports(o: &Value) -> String {
    let ports: Vec<String> = arr(o, "/spec/ports")
        .iter()
        .map(|p| {
            let proto = match s(p, "/protocol") {
                "" => "TCP",
                x => x,
            };
            let node_port = i(p, "/nodePort");
            if node_port > 0 {
                format!("{}:{node_port}/{proto}", i(p, "/port"))
            } else {
                format!("{}/{proto}", i(p, "/port"))
            }
        })
        .collect();
    ports.join(",")
}

/// Services: NAME TYPE CLUSTER-IP EXTERNAL-IP PORT(S) AGE SELECTOR.
pub const SERVICE: Printer = Printer {
    columns: &[
        NAME,
        col("Type", "string", 0, "The type of the service."),
        col("Cluster-IP", "string", 0, "The IP address of the service."),
        col(
            "External-IP",
            "string",
            0,
            "The external IP address of the service.",
        ),
        col("Port(s)", "string", 0, "The ports of the service."),
        AGE,
        col("Selector", "string", 1, "The selector of the service."),
    ],
    cells: |o, now| {
        let kind = match s(o, "/spec/type") {
            "" => "ClusterIP",
            t => t,
        };
        let external_ips: Vec<&str> = arr(o, "/spec/externalIPs")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let external = match kind {
            "ExternalName" => s(o, "/spec/externalName").to_string(),
            "LoadBalancer" => {
                let mut ips: Vec<String> = arr(o, "/status/loadBalancer/ingress")
                    .iter()
                    .map(|x| {
                        if s(x, "/ip").is_empty() {
                            s(x, "/hostname").to_string()
                        } else {
                            s(x, "/ip").to_string()
                        }
                    })
                    .collect();
                ips.extend(external_ips.iter().map(|s| s.to_string()));
                if ips.is_empty() {
                    "<pending>".to_string()
                } else {
                    ips.join(",")
                }
            }
            _ => external_ips.join(","),
        };
        let cluster_ip = match s(o, "/spec/clusterIP") {
            "" => "<none>".to_string(),
            ip => ip.to_string(),
        };
        vec![
            name(o),
            json!(kind),
            json!(cluster_ip),
            or_none(external),
            or_none(service_ports(o)),
            age(o, now),
            or_none(label_map(obj(o, "/spec/selector"))),
        ]
    },
};

fn limited(list: Vec<String>, max: usize) -> String {
    if list.len() > max {
        format!("{} + {} more...", list[..max].join(","), list.len() - max)
    } else {
        list.join(",")
    }
}

/// Endpoints: NAME ENDPOINTS AGE.
pub const ENDPOINTS: Printer = Printer {
    columns: &[
        NAME,
        col("Endpoints", "string", 0, "Endpoints of the service."),
        AGE,
    ],
    cells: |o, now| {
        let mut eps = Vec::new();
        for subset in arr(o, "/subsets") {
            for a in arr(subset, "/addresses") {
                let ports = arr(subset, "/ports");
                if ports.is_empty() {
                    eps.push(s(a, "/ip").to_string());
                }
                for p in ports {
                    eps.push(format!("{}:{}", s(a, "/ip"), i(p, "/port")));
                }
            }
        }
        vec![name(o), or_none(limited(eps, 3)), age(o, now)]
    },
};

fn count(o: &Value, ptr: &str) -> usize {
    obj(o, ptr).map(Map::len).unwrap_or(0)
}

/// ConfigMaps: NAME DATA AGE.
pub const CONFIG_MAP: Printer = Printer {
    columns: &[
        NAME,
        col("Data", "integer", 0, "Number of data entries."),
        AGE,
    ],
    cells: |o, now| {
        vec![
            name(o),
            json!(count(o, "/data") + count(o, "/binaryData")),
            age(o, now),
        ]
    },
};

/// Secrets: NAME TYPE DATA AGE.
pub const SECRET: Printer = Printer {
    columns: &[
        NAME,
        col("Type", "string", 0, "The type of the secret"),
        col(
            "Data",
            "integer",
            0,
            "The number of data entries in the secret",
        ),
        AGE,
    ],
    cells: |o, now| {
        vec![
            name(o),
            json!(s(o, "/type")),
            json!(count(o, "/data")),
            age(o, now),
        ]
    },
};

/// ServiceAccounts: NAME SECRETS AGE.
pub const SERVICE_ACCOUNT: Printer = Printer {
    columns: &[NAME, col("Secrets", "integer", 0, "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use."), AGE],
    cells: |o, now| vec![name(o), json!(arr(o, "/secrets").len()), age(o, now)],
};

/// PriorityClasses: NAME VALUE GLOBAL-DEFAULT AGE PREEMPTIONPOLICY.
pub const PRIORITY_CLASS: Printer = Printer {
    columns: &[
        NAME,
        col("Value", "integer", 0, "Value is the integer value of this priority class."),
        col("Global-Default", "boolean", 0, "globalDefault specifies whether this PriorityClass should be considered as the default priority."),
        AGE,
        col("PreemptionPolicy", "string", 0, "PreemptionPolicy is the Policy for preempting pods with lower priority."),
    ],
    cells: |o, now| {
        vec![
            name(o),
            json!(i(o, "/value")),
            json!(o.pointer("/globalDefault").and_then(Value::as_bool).unwrap_or(false)),
            age(o, now),
            json!(match s(o, "/preemptionPolicy") {
                "" => "PreemptLowerPriority",
                p => p,
            }),
        ]
    },
};

/// Events: LAST SEEN TYPE REASON OBJECT MESSAGE (+ subobject, source, first seen, count, name).
pub const EVENT: Printer = Printer {
    columns: &[
        col("Last Seen", "string", 0, "Time when last this event was observed"),
        col("Type", "string", 0, "Type of this event (Normal, Warning), new types could be added in the future."),
        col("Reason", "string", 0, "This should be a short, machine understandable string that gives the reason for this event being generated."),
        col("Object", "string", 0, "Object this event is about."),
        col("Subobject", "string", 1, "Field path of the involved object's part this event is about."),
        col("Source", "string", 1, "The component reporting this event."),
        col("Message", "string", 0, "A human-readable description of the status of this operation."),
        col("First Seen", "string", 1, "The time at which the event was first recorded."),
        col("Count", "string", 1, "The number of times this event has occurred."),
        col("Name", "string", 1, "Name must be unique within a namespace."),
    ],
    cells: |o, now| {
        let last = [s(o, "/lastTimestamp"), s(o, "/eventTime"), s(o, "/firstTimestamp"), s(o, "/metadata/creationTimestamp")]
            .into_iter()
            .find(|t| !t.is_empty())
            .unwrap_or("");
        let first = [s(o, "/firstTimestamp"), s(o, "/eventTime"), s(o, "/metadata/creationTimestamp")]
            .into_iter()
            .find(|t| !t.is_empty())
            .unwrap_or("");
        let source = if s(o, "/source/component").is_empty() {
            s(o, "/reportingComponent").to_string()
        } else if s(o, "/source/host").is_empty() {
            s(o, "/source/component").to_string()
        } else {
            format!("{}, {}", s(o, "/source/component"), s(o, "/source/host"))
        };
        let count = match i(o, "/count") {
            0 => 1,
            c => c,
        };
        vec![
            json!(since(last, now)),
            json!(s(o, "/type")),
            json!(s(o, "/reason")),
            json!(format!(
                "{}/{}",
                s(o, "/involvedObject/kind").to_lowercase(),
                s(o, "/involvedObject/name")
            )),
            json!(s(o, "/involvedObject/fieldPath")),
            json!(source),
            json!(s(o, "/message").trim()),
            json!(since(first, now)),
            json!(count.to_string()),
            name(o),
        ]
    },
};

// ---- apps/v1 ----

/// Deployments: NAME READY UP-TO-DATE AVAILABLE AGE.
pub const DEPLOYMENT: Printer = Printer {
    columns: &[
        NAME,
        col("Ready", "string", 0, "Number of the pod with ready state"),
        col("Up-to-date", "integer", 0, "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
        col("Available", "integer", 0, "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
        AGE,
        WIDE_WORKLOAD[0],
        WIDE_WORKLOAD[1],
        WIDE_WORKLOAD[2],
    ],
    cells: |o, now| {
        let desired = o.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
        let [c, im, sel] = workload_wide(o, "/spec/template/spec", "/spec/selector");
        vec![
            name(o),
            json!(format!("{}/{desired}", i(o, "/status/readyReplicas"))),
            json!(i(o, "/status/updatedReplicas")),
            json!(i(o, "/status/availableReplicas")),
            age(o, now),
            c,
            im,
            sel,
        ]
    },
};

/// ReplicaSets: NAME DESIRED CURRENT READY AGE.
pub const REPLICA_SET: Printer = Printer {
    columns: &[
        NAME,
        col(
            "Desired",
            "integer",
            0,
            "Replicas is the number of desired pods.",
        ),
        col(
            "Current",
            "integer",
            0,
            "Replicas is the most recently observed number of replicas.",
        ),
        col(
            "Ready",
            "integer",
            0,
            "The number of ready replicas for this replica set.",
        ),
        AGE,
        WIDE_WORKLOAD[0],
        WIDE_WORKLOAD[1],
        WIDE_WORKLOAD[2],
    ],
    cells: |o, now| {
        let desired = o
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let [c, im, sel] = workload_wide(o, "/spec/template/spec", "/spec/selector");
        vec![
            name(o),
            json!(desired),
            json!(i(o, "/status/replicas")),
            json!(i(o, "/status/readyReplicas")),
            age(o, now),
            c,
            im,
            sel,
        ]
    },
};

/// DaemonSets: NAME DESIRED CURRENT READY UP-TO-DATE AVAILABLE NODE SELECTOR AGE.
pub const DAEMON_SET: Printer = Printer {
    columns: &[
        NAME,
        col("Desired", "integer", 0, "The total number of nodes that should be running the daemon pod."),
        col("Current", "integer", 0, "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod."),
        col("Ready", "integer", 0, "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready."),
        col("Up-to-date", "integer", 0, "The total number of nodes that are running updated daemon pod"),
        col("Available", "integer", 0, "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available."),
        col("Node Selector", "string", 0, "NodeSelector is a selector which must be true for the pod to fit on a node."),
        AGE,
        WIDE_WORKLOAD[0],
        WIDE_WORKLOAD[1],
        WIDE_WORKLOAD[2],
    ],
    cells: |o, now| {
        let [c, im, sel] = workload_wide(o, "/spec/template/spec", "/spec/selector");
        vec![
            name(o),
            json!(i(o, "/status/desiredNumberScheduled")),
            json!(i(o, "/status/currentNumberScheduled")),
            json!(i(o, "/status/numberReady")),
            json!(i(o, "/status/updatedNumberScheduled")),
            json!(i(o, "/status/numberAvailable")),
            or_none(label_map(obj(o, "/spec/template/spec/nodeSelector"))),
            age(o, now),
            c,
            im,
            sel,
        ]
    },
};

/// StatefulSets: NAME READY AGE.
pub const STATEFUL_SET: Printer = Printer {
    columns: &[
        NAME,
        col("Ready", "string", 0, "Number of the pod with ready state"),
        AGE,
        WIDE_WORKLOAD[0],
        WIDE_WORKLOAD[1],
    ],
    cells: |o, now| {
        let desired = o
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let (c, im) = containers_images(o, "/spec/template/spec");
        vec![
            name(o),
            json!(format!("{}/{desired}", i(o, "/status/readyReplicas"))),
            age(o, now),
            c,
            im,
        ]
    },
};

/// ControllerRevisions: NAME CONTROLLER REVISION AGE.
pub const CONTROLLER_REVISION: Printer = Printer {
    columns: &[
        NAME,
        col("Controller", "string", 0, "Controller of the object."),
        col(
            "Revision",
            "integer",
            0,
            "Revision indicates the revision of the state represented by Data.",
        ),
        AGE,
    ],
    cells: |o, now| {
        let controller = arr(o, "/metadata/ownerReferences")
            .iter()
            .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
            .map(|r| {
                let group = s(r, "/apiVersion").split('/').next().unwrap_or("");
                let kind = s(r, "/kind").to_lowercase();
                if s(r, "/apiVersion").contains('/') {
                    format!("{kind}.{group}/{}", s(r, "/name"))
                } else {
                    format!("{kind}/{}", s(r, "/name"))
                }
            })
            .unwrap_or_default();
        vec![
            name(o),
            or_none(controller),
            json!(i(o, "/revision")),
            age(o, now),
        ]
    },
};

// ---- batch/v1 ----

fn job_status(o: &Value) -> &'static str {
    let conds = arr(o, "/status/conditions");
    let has = |t: &str| {
        conds
            .iter()
            .any(|c| s(c, "/type") == t && s(c, "/status") == "True")
    };
    if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if o
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        "Terminating"
    } else if has("FailureTarget") {
        "FailureTarget"
    } else if has("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else if has("Suspended") {
        "Suspended"
    } else {
        "Running"
    }
}

/// Jobs: NAME STATUS COMPLETIONS DURATION AGE.
pub const JOB: Printer = Printer {
    columns: &[
        NAME,
        col("Status", "string", 0, "Status of the job."),
        col(
            "Completions",
            "string",
            0,
            "The desired number of successfully finished pods the job should be run with.",
        ),
        col(
            "Duration",
            "string",
            0,
            "Time required to complete the job.",
        ),
        AGE,
        WIDE_WORKLOAD[0],
        WIDE_WORKLOAD[1],
        WIDE_WORKLOAD[2],
    ],
    cells: |o, now| {
        let succeeded = i(o, "/status/succeeded");
        let completions = match o.pointer("/spec/completions").and_then(Value::as_i64) {
            Some(c) => format!("{succeeded}/{c}"),
            None => {
                let parallelism = o
                    .pointer("/spec/parallelism")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                if parallelism > 1 {
                    format!("{succeeded}/1 of {parallelism}")
                } else {
                    format!("{succeeded}/1")
                }
            }
        };
        let duration = match parse_time(s(o, "/status/startTime")) {
            None => String::new(),
            Some(start) => {
                let end = parse_time(s(o, "/status/completionTime")).unwrap_or(now);
                human_duration((end - start).whole_seconds())
            }
        };
        let [c, im, sel] = workload_wide(o, "/spec/template/spec", "/spec/selector");
        vec![
            name(o),
            json!(job_status(o)),
            json!(completions),
            json!(duration),
            age(o, now),
            c,
            im,
            sel,
        ]
    },
};

/// CronJobs: NAME SCHEDULE TIMEZONE SUSPEND ACTIVE LAST SCHEDULE AGE.
pub const CRON_JOB: Printer = Printer {
    columns: &[
        NAME,
        col("Schedule", "string", 0, "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron."),
        col("Timezone", "string", 0, "The time zone name for the given schedule, see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones."),
        col("Suspend", "boolean", 0, "This flag tells the controller to suspend subsequent executions, it does not apply to already started executions."),
        col("Active", "integer", 0, "A list of pointers to currently running jobs."),
        col("Last Schedule", "string", 0, "Information when was the last time the job was successfully scheduled."),
        AGE,
        WIDE_WORKLOAD[0],
        WIDE_WORKLOAD[1],
        WIDE_WORKLOAD[2],
    ],
    cells: |o, now| {
        let last = match s(o, "/status/lastScheduleTime") {
            "" => "<none>".to_string(),
            t => since(t, now),
        };
        let suspend = o.pointer("/spec/suspend").and_then(Value::as_bool).unwrap_or(false);
        let [c, im, sel] = workload_wide(o, "/spec/jobTemplate/spec/template/spec", "/spec/jobTemplate/spec/selector");
        vec![
            name(o),
            json!(s(o, "/spec/schedule")),
            or_none(s(o, "/spec/timeZone").to_string()),
            json!(if suspend { "True" } else { "False" }),
            json!(arr(o, "/status/active").len()),
            json!(last),
            age(o, now),
            c,
            im,
            sel,
        ]
    },
};

// ---- networking, discovery, coordination, policy ----

/// Ingresses: NAME CLASS HOSTS ADDRESS PORTS AGE.
pub const INGRESS: Printer = Printer {
    columns: &[
        NAME,
        col("Class", "string", 0, "The name of the IngressClass resource that should be used for ingress class configuration"),
        col("Hosts", "string", 0, "Hosts that incoming requests are matched against before the ingress rule"),
        col("Address", "string", 0, "Address is a list containing ingress points for the load-balancer"),
        col("Ports", "string", 0, "Ports of TLS configurations that open"),
        AGE,
    ],
    cells: |o, now| {
        let hosts: Vec<&str> = arr(o, "/spec/rules").iter().map(|r| s(r, "/host")).filter(|h| !h.is_empty()).collect();
        let hosts = if hosts.is_empty() { "*".to_string() } else { limited(hosts.iter().map(|h| h.to_string()).collect(), 4) };
        let addresses: Vec<String> = arr(o, "/status/loadBalancer/ingress")
            .iter()
            .map(|x| if s(x, "/ip").is_empty() { s(x, "/hostname").to_string() } else { s(x, "/ip").to_string() })
            .collect();
        let ports = if arr(o, "/spec/tls").is_empty() { "80" } else { "80, 443" };
        vec![
            name(o),
            or_none(s(o, "/spec/ingressClassName").to_string()),
            json!(hosts),
            json!(addresses.join(",")),
            json!(ports),
            age(o, now),
        ]
    },
};

/// IngressClasses: NAME CONTROLLER PARAMETERS AGE.
pub const INGRESS_CLASS: Printer = Printer {
    columns: &[
        NAME,
        col(
            "Controller",
            "string",
            0,
            "Controller that is responsible for handling this class",
        ),
        col(
            "Parameters",
            "string",
            0,
            "A reference to a resource with additional parameters",
        ),
        AGE,
    ],
    cells: |o, now| {
        let params = match o.pointer("/spec/parameters") {
            Some(p) if p.is_object() => {
                let group = s(p, "/apiGroup");
                let kind = if group.is_empty() {
                    s(p, "/kind").to_string()
                } else {
                    format!("{}.{group}", s(p, "/kind"))
                };
                format!("{kind}/{}", s(p, "/name"))
            }
            _ => String::new(),
        };
        vec![
            name(o),
            json!(s(o, "/spec/controller")),
            or_none(params),
            age(o, now),
        ]
    },
};

/// NetworkPolicies: NAME POD-SELECTOR AGE.
pub const NETWORK_POLICY: Printer = Printer {
    columns: &[
        NAME,
        col(
            "Pod-Selector",
            "string",
            0,
            "Selects the pods to which this NetworkPolicy object applies.",
        ),
        AGE,
    ],
    cells: |o, now| {
        let sel = match o.pointer("/spec/podSelector") {
            Some(p) => LabelSelector::from_object(p)
                .map(|s| s.render())
                .unwrap_or_default(),
            None => String::new(),
        };
        vec![name(o), or_none(sel), age(o, now)]
    },
};

/// EndpointSlices: NAME ADDRESSTYPE PORTS ENDPOINTS AGE.
pub const ENDPOINT_SLICE: Printer = Printer {
    columns: &[
        NAME,
        col(
            "AddressType",
            "string",
            0,
            "The type of address carried by this EndpointSlice.",
        ),
        col(
            "Ports",
            "string",
            0,
            "Ports contained in this EndpointSlice.",
        ),
        col(
            "Endpoints",
            "string",
            0,
            "Endpoints contained in this EndpointSlice.",
        ),
        AGE,
    ],
    cells: |o, now| {
        let ports: Vec<String> = arr(o, "/ports")
            .iter()
            .map(|p| i(p, "/port").to_string())
            .collect();
        let ports = if ports.is_empty() {
            "<unset>".to_string()
        } else {
            ports.join(",")
        };
        let addrs: Vec<String> = arr(o, "/endpoints")
            .iter()
            .flat_map(|e| {
                arr(e, "/addresses")
                    .iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
            })
            .collect();
        vec![
            name(o),
            json!(s(o, "/addressType")),
            json!(ports),
            or_none(limited(addrs, 3)),
            age(o, now),
        ]
    },
};

/// Leases: NAME HOLDER AGE.
pub const LEASE: Printer = Printer {
    columns: &[
        NAME,
        col("Holder", "string", 0, "The holder of the lease"),
        AGE,
    ],
    cells: |o, now| vec![name(o), json!(s(o, "/spec/holderIdentity")), age(o, now)],
};

/// PodDisruptionBudgets: NAME MIN AVAILABLE MAX UNAVAILABLE ALLOWED DISRUPTIONS AGE.
pub const POD_DISRUPTION_BUDGET: Printer = Printer {
    columns: &[
        NAME,
        col(
            "Min Available",
            "string",
            0,
            "The minimum number of pods that must be available.",
        ),
        col(
            "Max Unavailable",
            "string",
            0,
            "The maximum number of pods that may be unavailable.",
        ),
        col(
            "Allowed Disruptions",
            "integer",
            0,
            "Calculated number of pods that may be disrupted at this time.",
        ),
        AGE,
    ],
    cells: |o, now| {
        let show = |p: &str| match o.pointer(p) {
            Some(Value::String(x)) => x.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => "N/A".to_string(),
        };
        vec![
            name(o),
            json!(show("/spec/minAvailable")),
            json!(show("/spec/maxUnavailable")),
            json!(i(o, "/status/disruptionsAllowed")),
            age(o, now),
        ]
    },
};

// ---- rbac, certificates ----

/// Roles and ClusterRoles: NAME CREATED AT.
pub const ROLE: Printer = Printer {
    columns: &[
        NAME,
        col(
            "Created At",
            "date",
            0,
            "Time at which the object was created.",
        ),
    ],
    cells: |o, _| vec![name(o), json!(s(o, "/metadata/creationTimestamp"))],
};

/// RoleBindings and ClusterRoleBindings: NAME ROLE AGE (+ users, groups, service accounts).
pub const ROLE_BINDING: Printer = Printer {
    columns: &[
        NAME,
        col("Role", "string", 0, "Role referenced by the binding."),
        AGE,
        col("Users", "string", 1, "Users in the binding."),
        col("Groups", "string", 1, "Groups in the binding."),
        col(
            "ServiceAccounts",
            "string",
            1,
            "ServiceAccounts in the binding.",
        ),
    ],
    cells: |o, now| {
        let subjects = arr(o, "/subjects");
        let of = |k: &str| -> Vec<String> {
            subjects
                .iter()
                .filter(|x| s(x, "/kind") == k)
                .map(|x| {
                    if k == "ServiceAccount" {
                        format!("{}/{}", s(x, "/namespace"), s(x, "/name"))
                    } else {
                        s(x, "/name").to_string()
                    }
                })
                .collect()
        };
        vec![
            name(o),
            json!(format!(
                "{}/{}",
                s(o, "/roleRef/kind"),
                s(o, "/roleRef/name")
            )),
            age(o, now),
            json!(of("User").join(", ")),
            json!(of("Group").join(", ")),
            json!(of("ServiceAccount").join(", ")),
        ]
    },
};

/// CertificateSigningRequests: NAME AGE SIGNERNAME REQUESTOR REQUESTEDDURATION CONDITION.
pub const CSR: Printer = Printer {
    columns: &[
        NAME,
        AGE,
        col(
            "SignerName",
            "string",
            0,
            "Only one signer allowed per CSR.",
        ),
        col(
            "Requestor",
            "string",
            0,
            "Name of the user requesting the certificate.",
        ),
        col(
            "RequestedDuration",
            "string",
            0,
            "Requested certificate duration.",
        ),
        col(
            "Condition",
            "string",
            0,
            "Condition of the certificate request.",
        ),
    ],
    cells: |o, now| {
        let mut conds: Vec<String> = arr(o, "/status/conditions")
            .iter()
            .filter(|c| s(c, "/status") != "False")
            .map(|c| s(c, "/type").to_string())
            .collect();
        if o.pointer("/status/certificate")
            .and_then(Value::as_str)
            .is_some_and(|c| !c.is_empty())
        {
            conds.push("Issued".into());
        }
        let cond = if conds.is_empty() {
            "Pending".to_string()
        } else {
            conds.join(",")
        };
        let duration = match o.pointer("/spec/expirationSeconds").and_then(Value::as_i64) {
            Some(d) => human_duration(d),
            None => "<none>".to_string(),
        };
        vec![
            name(o),
            age(o, now),
            json!(s(o, "/spec/signerName")),
            json!(s(o, "/spec/username")),
            json!(duration),
            json!(cond),
        ]
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        parse_time("2024-05-01T12:00:00Z").unwrap()
    }

    #[test]
    fn durations_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(200), "3m20s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 60), "3h1m");
        assert_eq!(human_duration(10 * 3600), "10h");
        assert_eq!(human_duration(3 * 86400 + 3600), "3d1h");
        assert_eq!(human_duration(30 * 86400), "30d");
        assert_eq!(human_duration(800 * 86400), "2y70d");
    }

    #[test]
    fn pod_row_and_wide_columns() {
        let pod = json!({
            "metadata": {"name": "web-1", "creationTimestamp": "2024-05-01T11:55:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.244.0.5", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}},
                 "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2024-05-01T11:59:00Z"}}},
                {"name": "b", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
            ]}
        });
        let t = build_table(
            &POD,
            &[pod],
            &TableOptions::single("7", "Metadata", true),
            now(),
        );
        assert_eq!(t["kind"], "Table");
        let cols: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            cols,
            [
                "Name",
                "Ready",
                "Status",
                "Restarts",
                "Age",
                "IP",
                "Node",
                "Nominated Node",
                "Readiness Gates"
            ]
        );
        assert_eq!(t["columnDefinitions"][5]["priority"], 1);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "web-1");
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "CrashLoopBackOff");
        assert_eq!(cells[3], "2 (60s ago)");
        assert_eq!(cells[4], "5m");
        assert_eq!(cells[5], "10.244.0.5");
        assert_eq!(cells[6], "n1");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }

    #[test]
    fn pod_status_pending_init_and_terminating() {
        let pending =
            json!({"spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Pending"}});
        assert_eq!(pod_status_reason(&pending), "Pending");
        let init = json!({"spec": {"initContainers": [{"name": "i"}, {"name": "j"}]}, "status": {"phase": "Pending",
            "initContainerStatuses": [{"state": {"terminated": {"exitCode": 0}}}, {"state": {"running": {}}}]}});
        assert_eq!(pod_status_reason(&init), "Init:1/2");
        let term = json!({"metadata": {"deletionTimestamp": "2024-05-01T12:00:00Z"}, "status": {"phase": "Running"}});
        assert_eq!(pod_status_reason(&term), "Terminating");
    }

    #[test]
    fn deployment_and_service_rows() {
        let d = json!({"metadata": {"name": "web", "creationTimestamp": "2024-05-01T11:00:00Z"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:1"}]}}},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}});
        let cells = (DEPLOYMENT.cells)(&d, now());
        assert_eq!(
            cells,
            vec![
                json!("web"),
                json!("2/3"),
                json!(3),
                json!(2),
                json!("60m"),
                json!("nginx"),
                json!("nginx:1"),
                json!("app=web")
            ]
        );
        let svc = json!({"metadata": {"name": "s", "creationTimestamp": "2024-05-01T12:00:00Z"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}});
        let cells = (SERVICE.cells)(&svc, now());
        assert_eq!(cells[1], "NodePort");
        assert_eq!(cells[2], "10.96.0.10");
        assert_eq!(cells[3], "<none>");
        assert_eq!(cells[4], "80:30080/TCP,53/UDP");
    }

    #[test]
    fn node_status_and_roles() {
        let n = json!({"metadata": {"name": "cp1", "labels": {"node-role.kubernetes.io/control-plane": ""}, "creationTimestamp": "2024-05-01T12:00:00Z"},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}], "nodeInfo": {"kubeletVersion": "v1.33.0"}}});
        let cells = (NODE.cells)(&n, now());
        assert_eq!(cells[1], "Ready,SchedulingDisabled");
        assert_eq!(cells[2], "control-plane");
        assert_eq!(cells[4], "v1.33.0");
    }
}
