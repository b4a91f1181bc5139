//! Container environment: service links (`<SVC>_SERVICE_HOST`, …), values, `$(VAR)` expansion,
//! envFrom, configMapKeyRef, secretKeyRef, fieldRef and resourceFieldRef.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, ResourceFieldSelector, Service};

use crate::sources::ObjectSource;
use crate::AgentError;
use kinit_rules::quantity;

/// Runtime facts fieldRefs may ask for.
#[derive(Debug, Clone, Default)]
pub struct PodFacts {
    /// The pod's IP (host IP for hostNetwork pods).
    pub pod_ip: String,
    /// The node's IP.
    pub host_ip: String,
}

/// Value of a downward-API field path that does not depend on runtime facts.
pub fn field_value(pod: &Pod, node_name: &str, path: &str) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let map_key = |prefix: &str, m: &Option<BTreeMap<String, String>>| {
        path.strip_prefix(prefix)
            .and_then(|k| k.strip_prefix("['").and_then(|k| k.strip_suffix("']")))
            .map(|k| {
                m.as_ref()
                    .and_then(|m| m.get(k))
                    .cloned()
                    .unwrap_or_default()
            })
    };
    Some(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_else(|| "default".into()),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| node_name.to_string()),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "metadata.labels" | "metadata.annotations" => {
            let m = if path == "metadata.labels" {
                &meta.labels
            } else {
                &meta.annotations
            };
            m.iter()
                .flatten()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect::<Vec<_>>()
                .join("\n")
        }
        _ => {
            return map_key("metadata.labels", &meta.labels)
                .or_else(|| map_key("metadata.annotations", &meta.annotations))
        }
    })
}

/// Value of a resourceFieldRef (`limits.cpu`, `requests.memory`, …) for `container` (or the
/// selector's container).
pub fn resource_value(
    pod: &Pod,
    selector: &ResourceFieldSelector,
    container: Option<&Container>,
) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let container = match selector.container_name.as_deref().filter(|n| !n.is_empty()) {
        Some(name) => spec.containers.iter().find(|c| c.name == name)?,
        None => container.or(spec.containers.first())?,
    };
    let resources = container.resources.clone().unwrap_or_default();
    let (kind, name) = selector.resource.split_once('.')?;
    let map = if kind == "limits" {
        resources.limits.clone()
    } else {
        resources.requests.clone()
    };
    let value = map.as_ref().and_then(|m| m.get(name)).map(|q| q.0.clone());
    let divisor = selector.divisor.as_ref().map(|q| q.0.as_str());
    Some(match name {
        "cpu" => {
            // Unset limits fall back to the node's allocatable in the kubelet; kinit reports the
            // host's CPUs.
            let millis = value
                .as_deref()
                .and_then(quantity::parse_milli_value)
                .unwrap_or_else(|| {
                    std::thread::available_parallelism()
                        .map(|n| n.get() as i64 * 1000)
                        .unwrap_or(1000)
                });
            let div = divisor
                .and_then(quantity::parse_milli_value)
                .unwrap_or(1000)
                .max(1);
            ((millis + div - 1) / div).to_string()
        }
        _ => {
            let bytes = value
                .as_deref()
                .and_then(quantity::parse_value)
                .unwrap_or(0);
            let div = divisor.and_then(quantity::parse_value).unwrap_or(1).max(1);
            ((bytes + div - 1) / div).to_string()
        }
    })
}

/// Expands `$(VAR)` references with earlier variables; `$$` escapes, unknown references stay.
pub fn expand(input: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let name = &body[..end];
                    match vars.get(name) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = body;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The variables the kubelet derives from Services: for every Service with a cluster IP in the
/// pod's namespace (when `enableServiceLinks` is not false) plus the API's own `kubernetes`
/// Service of `default` (always, so in-cluster clients find the API), `<NAME>_SERVICE_HOST`,
/// `<NAME>_SERVICE_PORT`, `<NAME>_SERVICE_PORT_<PORT>` per named port, and the Docker-link style
/// `<NAME>_PORT`, `<NAME>_PORT_<port>_<PROTO>{,_PROTO,_PORT,_ADDR}`. `<NAME>` is the Service
/// name upper-cased with `-` as `_`. Services are given in any order; names sort the output.
pub fn service_links(
    pod: &Pod,
    namespace_services: &[Service],
    master: Option<&Service>,
) -> Vec<(String, String)> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    let mut chosen: BTreeMap<String, &Service> = BTreeMap::new();
    // The kubelet always adds the master Service; a same-named Service of the pod's own
    // namespace takes precedence over it.
    if let Some(master) = master {
        chosen.insert("kubernetes".into(), master);
    }
    if links {
        for svc in namespace_services
            .iter()
            .filter(|s| s.metadata.namespace.as_deref().unwrap_or("default") == ns)
        {
            if let Some(name) = &svc.metadata.name {
                chosen.insert(name.clone(), svc);
            }
        }
    }
    let mut out = Vec::new();
    for (name, svc) in chosen {
        let Some(spec) = svc
            .spec
            .as_ref()
            .filter(|_| kinit_rules::has_cluster_ip(svc))
        else {
            continue;
        };
        let ip = spec.cluster_ip.as_deref().unwrap_or_default();
        let prefix = name.to_uppercase().replace('-', "_");
        let ports = spec.ports.as_deref().unwrap_or_default();
        let host_port = |port: i32| match ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
            _ => format!("{ip}:{port}"),
        };
        out.push((format!("{prefix}_SERVICE_HOST"), ip.to_string()));
        if let Some(first) = ports.first() {
            out.push((format!("{prefix}_SERVICE_PORT"), first.port.to_string()));
        }
        for p in ports {
            if let Some(port_name) = p.name.as_deref().filter(|n| !n.is_empty()) {
                out.push((
                    format!(
                        "{prefix}_SERVICE_PORT_{}",
                        port_name.to_uppercase().replace('-', "_")
                    ),
                    p.port.to_string(),
                ));
            }
        }
        if let Some(first) = ports.first() {
            let proto = first.protocol.as_deref().unwrap_or("TCP").to_lowercase();
            out.push((
                format!("{prefix}_PORT"),
                format!("{proto}://{}", host_port(first.port)),
            ));
        }
        for p in ports {
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            let base = format!("{prefix}_PORT_{}_{}", p.port, proto.to_uppercase());
            let lower = proto.to_lowercase();
            out.push((base.clone(), format!("{lower}://{}", host_port(p.port))));
            out.push((format!("{base}_PROTO"), lower));
            out.push((format!("{base}_PORT"), p.port.to_string()));
            out.push((format!("{base}_ADDR"), ip.to_string()));
        }
    }
    out
}

/// The container's environment in order, ready for CRI.
pub async fn resolve(
    pod: &Pod,
    container: &Container,
    node_name: &str,
    facts: &PodFacts,
    sources: &dyn ObjectSource,
) -> Result<Vec<(String, String)>, AgentError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut set = |vars: &mut BTreeMap<String, String>, k: String, v: String| {
        if !vars.contains_key(&k) {
            order.push(k.clone());
        }
        vars.insert(k, v);
    };
    // Service links come first, so the container's own variables override them and `$(VAR)`
    // can refer to them, as with the kubelet. Without an answer from the API the container
    // starts without them rather than not at all.
    let namespace_services = sources.services(ns).await.unwrap_or_else(|e| {
        tracing::warn!("service environment variables left out: {e}");
        Vec::new()
    });
    let master = if ns == "default" {
        namespace_services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some("kubernetes"))
            .cloned()
    } else {
        sources
            .services("default")
            .await
            .unwrap_or_default()
            .into_iter()
            .find(|s| s.metadata.name.as_deref() == Some("kubernetes"))
    };
    for (k, v) in service_links(pod, &namespace_services, master.as_ref()) {
        set(&mut vars, k, v);
    }
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match sources.config_map(ns, &r.name).await? {
                Some(cm) => {
                    for (k, v) in cm.data.unwrap_or_default() {
                        set(&mut vars, format!("{prefix}{k}"), v);
                    }
                }
                None if r.optional.unwrap_or(false) => {}
                None => {
                    return Err(AgentError::Volume(format!(
                        "envFrom: configmap {ns}/{} not found",
                        r.name
                    )))
                }
            }
        }
        if let Some(r) = &from.secret_ref {
            match sources.secret(ns, &r.name).await? {
                Some(s) => {
                    for (k, v) in s.data.unwrap_or_default() {
                        set(
                            &mut vars,
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v.0).into(),
                        );
                    }
                }
                None if r.optional.unwrap_or(false) => {}
                None => {
                    return Err(AgentError::Volume(format!(
                        "envFrom: secret {ns}/{} not found",
                        r.name
                    )))
                }
            }
        }
    }
    for e in container.env.iter().flatten() {
        let value = if let Some(v) = &e.value {
            expand(v, &vars)
        } else if let Some(from) = &e.value_from {
            if let Some(f) = &from.field_ref {
                match f.field_path.as_str() {
                    "status.podIP" => facts.pod_ip.clone(),
                    "status.podIPs" => facts.pod_ip.clone(),
                    "status.hostIP" | "status.hostIPs" => facts.host_ip.clone(),
                    path => field_value(pod, node_name, path).ok_or_else(|| {
                        AgentError::Volume(format!(
                            "env {}: unsupported fieldPath {path:?}",
                            e.name
                        ))
                    })?,
                }
            } else if let Some(r) = &from.resource_field_ref {
                resource_value(pod, r, Some(container)).ok_or_else(|| {
                    AgentError::Volume(format!(
                        "env {}: unsupported resource {:?}",
                        e.name, r.resource
                    ))
                })?
            } else if let Some(r) = &from.config_map_key_ref {
                let v = sources
                    .config_map(ns, &r.name)
                    .await?
                    .and_then(|cm| cm.data.and_then(|d| d.get(&r.key).cloned()));
                match v {
                    Some(v) => v,
                    None if r.optional.unwrap_or(false) => continue,
                    None => {
                        return Err(AgentError::Volume(format!(
                            "env {}: key {:?} of configmap {ns}/{} not found",
                            e.name, r.key, r.name
                        )))
                    }
                }
            } else if let Some(r) = &from.secret_key_ref {
                let v = sources
                    .secret(ns, &r.name)
                    .await?
                    .and_then(|s| s.data.and_then(|d| d.get(&r.key).cloned()));
                match v {
                    Some(v) => String::from_utf8_lossy(&v.0).into_owned(),
                    None if r.optional.unwrap_or(false) => continue,
                    None => {
                        return Err(AgentError::Volume(format!(
                            "env {}: key {:?} of secret {ns}/{} not found",
                            e.name, r.key, r.name
                        )))
                    }
                }
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        set(&mut vars, e.name.clone(), value);
    }
    Ok(order
        .into_iter()
        .map(|k| {
            let v = vars.get(&k).cloned().unwrap_or_default();
            (k, v)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(ns: &str, name: &str, ip: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "ports": ports}
        }))
        .unwrap()
    }

    #[test]
    fn service_links_match_the_kubelets() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {"containers": [{"name": "c"}]}
        }))
        .unwrap();
        let master = service(
            "default",
            "kubernetes",
            "10.96.0.1",
            serde_json::json!([{"name": "https", "port": 443, "protocol": "TCP"}]),
        );
        let services = vec![
            service(
                "shop",
                "web-db",
                "10.96.3.4",
                serde_json::json!([{"name": "sql", "port": 3306}, {"name": "metrics-x", "port": 9104, "protocol": "UDP"}]),
            ),
            service(
                "shop",
                "headless",
                "None",
                serde_json::json!([{"port": 80}]),
            ),
            service(
                "other",
                "elsewhere",
                "10.96.9.9",
                serde_json::json!([{"port": 80}]),
            ),
        ];
        let env: BTreeMap<String, String> = service_links(&pod, &services, Some(&master))
            .into_iter()
            .collect();
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "10.96.0.1");
        assert_eq!(env["KUBERNETES_SERVICE_PORT"], "443");
        assert_eq!(env["KUBERNETES_SERVICE_PORT_HTTPS"], "443");
        assert_eq!(env["KUBERNETES_PORT"], "tcp://10.96.0.1:443");
        assert_eq!(env["KUBERNETES_PORT_443_TCP_ADDR"], "10.96.0.1");
        assert_eq!(env["WEB_DB_SERVICE_HOST"], "10.96.3.4");
        assert_eq!(env["WEB_DB_SERVICE_PORT"], "3306");
        assert_eq!(env["WEB_DB_SERVICE_PORT_SQL"], "3306");
        assert_eq!(env["WEB_DB_SERVICE_PORT_METRICS_X"], "9104");
        assert_eq!(env["WEB_DB_PORT"], "tcp://10.96.3.4:3306");
        assert_eq!(env["WEB_DB_PORT_9104_UDP"], "udp://10.96.3.4:9104");
        assert_eq!(env["WEB_DB_PORT_9104_UDP_PROTO"], "udp");
        assert_eq!(env["WEB_DB_PORT_9104_UDP_PORT"], "9104");
        assert!(!env.keys().any(|k| k.starts_with("HEADLESS_")), "{env:?}");
        assert!(!env.keys().any(|k| k.starts_with("ELSEWHERE_")), "{env:?}");

        // enableServiceLinks: false keeps only the master Service.
        let mut quiet = pod.clone();
        quiet.spec.as_mut().unwrap().enable_service_links = Some(false);
        let env: BTreeMap<String, String> = service_links(&quiet, &services, Some(&master))
            .into_iter()
            .collect();
        assert!(env.contains_key("KUBERNETES_SERVICE_HOST"));
        assert!(!env.contains_key("WEB_DB_SERVICE_HOST"));

        // IPv6 cluster IPs are bracketed in the URL forms.
        let v6 = service("shop", "v6", "fd00::10", serde_json::json!([{"port": 80}]));
        let env: BTreeMap<String, String> = service_links(&pod, &[v6], None).into_iter().collect();
        assert_eq!(env["V6_PORT"], "tcp://[fd00::10]:80");
        assert_eq!(env["V6_PORT_80_TCP_ADDR"], "fd00::10");
    }

    #[test]
    fn expansion() {
        let vars = BTreeMap::from([("A".to_string(), "1".to_string())]);
        assert_eq!(expand("x$(A)y", &vars), "x1y");
        assert_eq!(expand("$$(A) $(B) $", &vars), "$(A) $(B) $");
    }

    #[test]
    fn fields_and_resources() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "i",
                "resources": {"limits": {"cpu": "1500m", "memory": "64Mi"}}}]}
        }))
        .unwrap();
        assert_eq!(field_value(&pod, "n1", "spec.nodeName").unwrap(), "n1");
        assert_eq!(
            field_value(&pod, "n1", "metadata.labels['app']").unwrap(),
            "web"
        );
        let sel = |r: &str, d: Option<&str>| ResourceFieldSelector {
            resource: r.into(),
            divisor: d.map(|d| k8s_openapi::apimachinery::pkg::api::resource::Quantity(d.into())),
            container_name: None,
        };
        assert_eq!(
            resource_value(&pod, &sel("limits.cpu", None), None).unwrap(),
            "2"
        );
        assert_eq!(
            resource_value(&pod, &sel("limits.cpu", Some("1m")), None).unwrap(),
            "1500"
        );
        assert_eq!(
            resource_value(&pod, &sel("limits.memory", Some("1Mi")), None).unwrap(),
            "64"
        );
    }
}
