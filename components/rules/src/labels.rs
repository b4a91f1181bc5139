//! Label-selector matching (`matchLabels`/`matchExpressions`, Kubernetes'
//! `LabelSelectorAsSelector`) and the map selectors of Services and ReplicationControllers.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};

/// Whether `selector` matches `labels` (absent labels are none). An empty selector matches
/// everything; a selector that does not convert (unknown operator, `In` without values) matches
/// nothing, so a malformed selector never adopts or grants more.
pub fn label_selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    match Selector::try_from(selector.clone()) {
        Ok(sel) => sel.matches(labels),
        Err(_) => false,
    }
}

/// Whether a workload's `spec.selector` matches an object's labels. A missing selector matches
/// nothing, an empty one everything, as in Kubernetes' `LabelSelectorAsSelector`.
pub fn selector_matches(
    selector: Option<&LabelSelector>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    let Some(selector) = selector else {
        return false;
    };
    let empty = BTreeMap::new();
    label_selector_matches(selector, labels.unwrap_or(&empty))
}

/// Whether `labels` contain every pair of a map selector (a Service's `spec.selector`); an
/// empty map matches everything (callers decide whether an empty Service selector selects).
pub fn map_selector_matches(
    selector: &BTreeMap<String, String>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A map selector as a `key=value,…` label-selector string (for list and watch calls).
pub fn map_selector_string(selector: &BTreeMap<String, String>) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
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

    // Moved from the workload controllers' pod helpers.
    #[test]
    fn selectors_follow_kubernetes_nil_and_empty_rules() {
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        assert!(!selector_matches(None, Some(&labels)));
        assert!(selector_matches(
            Some(&LabelSelector::default()),
            Some(&labels)
        ));
        let sel = LabelSelector {
            match_labels: Some(labels.clone()),
            ..Default::default()
        };
        assert!(selector_matches(Some(&sel), Some(&labels)));
        assert!(!selector_matches(Some(&sel), None));
    }

    #[test]
    fn match_expressions_operators() {
        let l = labels(&[("tier", "web"), ("env", "prod")]);
        let with = |exprs: Vec<LabelSelectorRequirement>| LabelSelector {
            match_expressions: Some(exprs),
            ..Default::default()
        };
        assert!(label_selector_matches(
            &with(vec![expr("tier", "In", &["web", "db"])]),
            &l
        ));
        assert!(!label_selector_matches(
            &with(vec![expr("tier", "In", &["db"])]),
            &l
        ));
        assert!(label_selector_matches(
            &with(vec![expr("tier", "NotIn", &["db"])]),
            &l
        ));
        assert!(label_selector_matches(
            &with(vec![expr("x", "NotIn", &["db"])]),
            &l
        ));
        assert!(label_selector_matches(
            &with(vec![expr("env", "Exists", &[])]),
            &l
        ));
        assert!(!label_selector_matches(
            &with(vec![expr("x", "Exists", &[])]),
            &l
        ));
        assert!(label_selector_matches(
            &with(vec![expr("x", "DoesNotExist", &[])]),
            &l
        ));
        assert!(!label_selector_matches(
            &with(vec![expr("tier", "Bogus", &["web"])]),
            &l
        ));
        let both = LabelSelector {
            match_labels: Some(labels(&[("env", "prod")])),
            match_expressions: Some(vec![expr("tier", "In", &["db"])]),
        };
        assert!(
            !label_selector_matches(&both, &l),
            "labels and expressions are ANDed"
        );
    }

    #[test]
    fn map_selectors() {
        let l = labels(&[("app", "web"), ("x", "y")]);
        assert!(map_selector_matches(&labels(&[("app", "web")]), Some(&l)));
        assert!(!map_selector_matches(&labels(&[("app", "db")]), Some(&l)));
        assert!(!map_selector_matches(&labels(&[("app", "web")]), None));
        assert!(map_selector_matches(&BTreeMap::new(), None));
        assert_eq!(map_selector_string(&l), "app=web,x=y");
    }
}
