//! Whether a node satisfies a pod's `nodeSelector` and required node affinity (Kubernetes'
//! `nodeaffinity.GetRequiredNodeAffinity(pod).Match(node)`), as the scheduler and the
//! DaemonSet controller must both decide it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
};

/// The only field `matchFields` may name.
pub const FIELD_METADATA_NAME: &str = "metadata.name";

/// One requirement against the value of its key on the node (`None` when the label is absent):
/// `In`, `NotIn`, `Exists`, `DoesNotExist`, and `Gt`/`Lt` with one integer bound. Unknown
/// operators and malformed bounds match nothing.
pub fn requirement_matches(req: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = req.values.as_deref().unwrap_or(&[]);
    let number = |s: &str| s.parse::<i64>().ok();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| values.iter().all(|x| x != v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), [bound]) = (value.and_then(number), values) else {
                return false;
            };
            let Some(bound) = number(bound) else {
                return false;
            };
            if req.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Whether a node selector term matches: all `matchExpressions` (labels) and all `matchFields`
/// (only `metadata.name`, with `In`/`NotIn`) hold. A term with neither matches no node.
pub fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or(&[]);
    let fields = term.match_fields.as_deref().unwrap_or(&[]);
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.metadata.labels.as_ref();
    let name = node.metadata.name.as_deref().unwrap_or("");
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.and_then(|l| l.get(&r.key)).map(String::as_str)))
        && fields.iter().all(|r| {
            r.key == FIELD_METADATA_NAME
                && matches!(r.operator.as_str(), "In" | "NotIn")
                && requirement_matches(r, Some(name))
        })
}

/// Whether one of the selector's terms matches the node (terms are ORed; no terms match no
/// node, like Kubernetes).
pub fn node_selector_matches(selector: &NodeSelector, node: &Node) -> bool {
    selector
        .node_selector_terms
        .iter()
        .any(|t| term_matches(t, node))
}

/// Whether the node carries every label of a pod's `spec.nodeSelector`.
pub fn node_labels_match(node_selector: &BTreeMap<String, String>, node: &Node) -> bool {
    let labels = node.metadata.labels.as_ref();
    node_selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// Whether the node satisfies a pod's `nodeSelector` and its
/// `requiredDuringSchedulingIgnoredDuringExecution` node affinity (either may be absent).
pub fn matches_selector_and_required_affinity(
    node_selector: Option<&BTreeMap<String, String>>,
    affinity: Option<&NodeAffinity>,
    node: &Node,
) -> bool {
    node_selector.is_none_or(|s| node_labels_match(s, node))
        && affinity
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .is_none_or(|required| node_selector_matches(required, node))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, labels: serde_json::Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    }

    fn selector(terms: serde_json::Value) -> NodeSelector {
        serde_json::from_value(json!({ "nodeSelectorTerms": terms })).unwrap()
    }

    #[test]
    fn requirement_operators() {
        let n = node("n1", json!({"zone": "a", "cores": "8"}));
        let fits = |op: &str, values: serde_json::Value, key: &str| {
            node_selector_matches(
                &selector(
                    json!([{"matchExpressions": [{"key": key, "operator": op, "values": values}]}]),
                ),
                &n,
            )
        };
        assert!(fits("In", json!(["a", "b"]), "zone"));
        assert!(!fits("In", json!(["b"]), "zone"));
        assert!(!fits("In", json!(["a"]), "absent"));
        assert!(fits("NotIn", json!(["b"]), "zone"));
        assert!(!fits("NotIn", json!(["a"]), "zone"));
        assert!(fits("NotIn", json!(["a"]), "absent"));
        assert!(fits("Exists", json!(null), "zone"));
        assert!(!fits("Exists", json!(null), "absent"));
        assert!(fits("DoesNotExist", json!(null), "absent"));
        assert!(!fits("DoesNotExist", json!(null), "zone"));
        assert!(fits("Gt", json!(["4"]), "cores"));
        assert!(!fits("Gt", json!(["8"]), "cores"));
        assert!(fits("Lt", json!(["9"]), "cores"));
        assert!(!fits("Lt", json!(["8"]), "cores"));
        assert!(!fits("Gt", json!(["x"]), "cores"), "non-numeric bound");
        assert!(!fits("Gt", json!(["1"]), "zone"), "non-numeric label");
        assert!(!fits("Gt", json!(["1", "2"]), "cores"), "one bound only");
        assert!(!fits("Bogus", json!(["a"]), "zone"));
    }

    #[test]
    fn terms_are_ored_fields_match_the_name_and_empty_matches_nothing() {
        let n = node("n1", json!({"zone": "a"}));
        assert!(node_selector_matches(
            &selector(json!([
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}
            ])),
            &n
        ));
        assert!(!node_selector_matches(
            &selector(
                json!([{"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n1"]}]}])
            ),
            &n
        ));
        assert!(
            !node_selector_matches(
                &selector(
                    json!([{"matchFields": [{"key": "metadata.uid", "operator": "NotIn", "values": ["x"]}]}])
                ),
                &n
            ),
            "only metadata.name is a node field"
        );
        assert!(
            !node_selector_matches(
                &selector(json!([{
                    "matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}],
                    "matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]
                }])),
                &n
            ),
            "both parts of one term must hold"
        );
        assert!(!node_selector_matches(&selector(json!([{}])), &n));
        assert!(!node_selector_matches(&selector(json!([])), &n));
    }

    #[test]
    fn node_selector_and_affinity_together() {
        let n = node("n", json!({"disk": "ssd", "zone": "a"}));
        let sel = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(matches_selector_and_required_affinity(None, None, &n));
        assert!(matches_selector_and_required_affinity(
            Some(&sel(&[("disk", "ssd"), ("zone", "a")])),
            None,
            &n
        ));
        assert!(!matches_selector_and_required_affinity(
            Some(&sel(&[("disk", "hdd")])),
            None,
            &n
        ));
        assert!(!matches_selector_and_required_affinity(
            Some(&sel(&[("gpu", "yes")])),
            None,
            &n
        ));
        let affinity: NodeAffinity = serde_json::from_value(json!({
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}
            ]}
        }))
        .unwrap();
        assert!(!matches_selector_and_required_affinity(
            None,
            Some(&affinity),
            &n
        ));
        assert!(
            matches_selector_and_required_affinity(None, Some(&NodeAffinity::default()), &n),
            "only preferred terms: no requirement"
        );
    }
}
