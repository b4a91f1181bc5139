//! A pod's quality-of-service class (Kubernetes' `ComputePodQOS`), which the API server sets at
//! creation and the agent reports in `status.qosClass`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::quantity::parse_milli;

/// A positive amount of `name` in `list`, in thousandths.
fn amount(list: Option<&BTreeMap<String, Quantity>>, name: &str) -> Option<i128> {
    list.and_then(|l| l.get(name))
        .and_then(|q| parse_milli(&q.0))
        .filter(|v| *v > 0)
}

/// The three QoS classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    /// Every container has CPU and memory limits equal to its requests.
    Guaranteed,
    /// Some container requests or limits CPU or memory, but not Guaranteed.
    Burstable,
    /// No container requests or limits CPU or memory.
    BestEffort,
}

impl QosClass {
    /// The name as written in `status.qosClass`.
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }
}

/// The resources QoS looks at.
const QOS_RESOURCES: [&str; 2] = ["cpu", "memory"];

/// The QoS class of a pod with `spec`: app and init containers count (ephemeral containers
/// have no resources), only CPU and memory, only non-zero amounts, compared as quantities
/// (`1` equals `1000m`). A request missing where a limit is set counts as the limit, as the
/// API server's defaulting makes it.
pub fn qos_class(spec: &PodSpec) -> QosClass {
    let mut requests: BTreeMap<&str, i128> = BTreeMap::new();
    let mut limits: BTreeMap<&str, i128> = BTreeMap::new();
    let mut guaranteed = true;
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let res = c.resources.as_ref();
        let req_list = res.and_then(|r| r.requests.as_ref());
        let lim_list = res.and_then(|r| r.limits.as_ref());
        let mut limits_found = 0;
        for name in QOS_RESOURCES {
            let limit = amount(lim_list, name);
            let request = if req_list.is_some_and(|l| l.contains_key(name)) {
                amount(req_list, name)
            } else {
                limit
            };
            if let Some(r) = request {
                *requests.entry(name).or_default() += r;
            }
            if let Some(l) = limit {
                *limits.entry(name).or_default() += l;
                limits_found += 1;
            }
        }
        if limits_found < QOS_RESOURCES.len() {
            guaranteed = false;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return QosClass::BestEffort;
    }
    if guaranteed
        && requests.len() == limits.len()
        && requests.iter().all(|(name, r)| limits.get(name) == Some(r))
    {
        QosClass::Guaranteed
    } else {
        QosClass::Burstable
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn class(spec: serde_json::Value) -> &'static str {
        qos_class(&serde_json::from_value(spec).unwrap()).as_str()
    }

    // Moved from the API server's admission tests.
    #[test]
    fn qos_classes() {
        assert_eq!(class(json!({"containers": [{"name": "a"}]})), "BestEffort");
        assert_eq!(
            class(
                json!({"containers": [{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]})
            ),
            "Guaranteed"
        );
        assert_eq!(
            class(json!({"containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}]})),
            "Burstable"
        );
    }

    #[test]
    fn quantities_compare_by_value_and_zero_or_other_resources_do_not_count() {
        assert_eq!(
            class(json!({"containers": [{"name": "a", "resources": {
                "requests": {"cpu": "1000m", "memory": "1024Mi"},
                "limits": {"cpu": "1", "memory": "1Gi"}}}]})),
            "Guaranteed"
        );
        assert_eq!(
            class(json!({"containers": [{"name": "a", "resources": {
                "requests": {"cpu": "500m", "memory": "1Gi"},
                "limits": {"cpu": "1", "memory": "1Gi"}}}]})),
            "Burstable"
        );
        assert_eq!(
            class(
                json!({"containers": [{"name": "a", "resources": {"requests": {"cpu": "0", "ephemeral-storage": "1Gi"}}}]})
            ),
            "BestEffort"
        );
        // Every container needs both limits for Guaranteed.
        assert_eq!(
            class(json!({"containers": [
                {"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}},
                {"name": "b"}
            ]})),
            "Burstable"
        );
        // Init containers count too.
        assert_eq!(
            class(json!({"containers": [{"name": "a"}],
                "initContainers": [{"name": "i", "resources": {"requests": {"memory": "1Mi"}}}]})),
            "Burstable"
        );
    }
}
