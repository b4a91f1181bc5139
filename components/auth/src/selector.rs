//! Label selectors, as used by ClusterRole aggregation rules.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` satisfy `selector` (an empty selector matches everything). An unknown
/// operator matches nothing, so a malformed rule never grants more.
pub(crate) fn selector_matches(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_match = selector.match_expressions.iter().flatten().all(|req| {
        let values = req.values.as_deref().unwrap_or_default();
        let value = labels.get(&req.key);
        match req.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_match && expressions_match
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn selector_operators() {
        let l = labels(&[("a", "1"), ("b", "2")]);
        assert!(selector_matches(&LabelSelector::default(), &l));
        let by_label = |k: &str, v: &str| LabelSelector {
            match_labels: Some(labels(&[(k, v)])),
            ..LabelSelector::default()
        };
        assert!(selector_matches(&by_label("a", "1"), &l));
        assert!(!selector_matches(&by_label("a", "2"), &l));
        let by_expr = |e| LabelSelector {
            match_expressions: Some(vec![e]),
            ..LabelSelector::default()
        };
        assert!(selector_matches(&by_expr(expr("a", "In", &["1", "3"])), &l));
        assert!(!selector_matches(&by_expr(expr("a", "NotIn", &["1"])), &l));
        assert!(selector_matches(&by_expr(expr("c", "NotIn", &["1"])), &l));
        assert!(selector_matches(&by_expr(expr("b", "Exists", &[])), &l));
        assert!(selector_matches(
            &by_expr(expr("c", "DoesNotExist", &[])),
            &l
        ));
        assert!(!selector_matches(&by_expr(expr("a", "Gt", &["0"])), &l));
    }
}
