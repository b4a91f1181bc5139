//! Whether a pod's tolerations let it stay on or be placed on a node with taints (Kubernetes'
//! `Toleration.ToleratesTaint`), as the scheduler, the DaemonSet controller and the node
//! lifecycle controller's taint eviction must all decide it.

use k8s_openapi::api::core::v1::{Taint, Toleration};

/// `NoSchedule`: new pods that do not tolerate the taint are not placed on the node.
pub const EFFECT_NO_SCHEDULE: &str = "NoSchedule";
/// `PreferNoSchedule`: the scheduler avoids the node for pods that do not tolerate the taint.
pub const EFFECT_PREFER_NO_SCHEDULE: &str = "PreferNoSchedule";
/// `NoExecute`: running pods that do not tolerate the taint are evicted.
pub const EFFECT_NO_EXECUTE: &str = "NoExecute";

/// Whether `toleration` tolerates `taint`, following `k8s.io/api/core/v1` `ToleratesTaint`:
///
/// 1. an empty effect matches every effect, otherwise the effects must be equal;
/// 2. an empty key matches every key, otherwise the keys must be equal;
/// 3. `Exists` matches every value; `Equal` (or no operator) needs equal values — also when
///    the key is empty, where it tolerates every taint with that value (the API server's
///    validation rejects that combination, so only unvalidated pods can carry it);
/// 4. any other operator tolerates nothing.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or("");
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("") {
        "" | "Equal" => {
            toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        "Exists" => true,
        _ => false,
    }
}

/// Whether any of `tolerations` tolerates `taint` (`TolerationsTolerateTaint`).
pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

/// The first of `taints` for which `applies` holds and that no toleration tolerates
/// (`FindMatchingUntoleratedTaint`).
pub fn first_untolerated<'a>(
    tolerations: &[Toleration],
    taints: &'a [Taint],
    applies: impl Fn(&Taint) -> bool,
) -> Option<&'a Taint> {
    taints
        .iter()
        .filter(|t| applies(t))
        .find(|t| !tolerated(tolerations, t))
}

/// Whether the taint keeps pods off the node (`NoSchedule` or `NoExecute`), the taints the
/// scheduler's filter and the DaemonSet controller check.
pub fn is_hard(taint: &Taint) -> bool {
    taint.effect == EFFECT_NO_SCHEDULE || taint.effect == EFFECT_NO_EXECUTE
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(v: serde_json::Value) -> Toleration {
        serde_json::from_value(v).unwrap()
    }

    fn taint(key: &str, value: Option<&str>, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: value.map(Into::into),
            effect: effect.into(),
            ..Default::default()
        }
    }

    #[test]
    fn empty_key_with_equal_compares_only_the_value_like_kubernetes() {
        // ToleratesTaint: an empty key matches every key, and Equal compares the values.
        let k_v = taint("k", Some("v"), EFFECT_NO_SCHEDULE);
        let equal_v = t(json!({"operator": "Equal", "value": "v"}));
        assert!(tolerates(&equal_v, &k_v));
        assert!(tolerates(
            &equal_v,
            &taint("other", Some("v"), EFFECT_NO_EXECUTE)
        ));
        assert!(!tolerates(
            &equal_v,
            &taint("k", Some("w"), EFFECT_NO_SCHEDULE)
        ));
        assert!(!tolerates(&equal_v, &taint("k", None, EFFECT_NO_SCHEDULE)));
        // No operator means Equal.
        assert!(tolerates(&t(json!({"value": "v"})), &k_v));
        // Empty key, Equal, empty value: every taint without a value.
        let equal_empty = t(json!({"operator": "Equal"}));
        assert!(tolerates(
            &equal_empty,
            &taint("k", None, EFFECT_NO_SCHEDULE)
        ));
        assert!(!tolerates(&equal_empty, &k_v));
    }

    // Moved from the scheduler's filter tests (all but the empty-key case, which is above).
    #[test]
    fn toleration_matching_rules() {
        let taint = taint("k", Some("v"), "NoSchedule");
        assert!(tolerates(&t(json!({"key": "k", "value": "v"})), &taint));
        assert!(tolerates(
            &t(json!({"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"})),
            &taint
        ));
        assert!(!tolerates(&t(json!({"key": "k", "value": "w"})), &taint));
        assert!(tolerates(
            &t(json!({"key": "k", "operator": "Exists"})),
            &taint
        ));
        assert!(tolerates(&t(json!({"operator": "Exists"})), &taint));
        assert!(!tolerates(
            &t(json!({"key": "k", "operator": "Exists", "effect": "NoExecute"})),
            &taint
        ));
        assert!(!tolerates(
            &t(json!({"key": "other", "operator": "Exists"})),
            &taint
        ));
        assert!(!tolerates(
            &t(json!({"key": "k", "operator": "Bogus", "value": "v"})),
            &taint
        ));
    }

    // Moved from the DaemonSet controller's tests.
    #[test]
    fn toleration_operators() {
        let t = Toleration {
            key: Some("k".into()),
            operator: Some("Equal".into()),
            value: Some("v".into()),
            effect: None,
            toleration_seconds: None,
        };
        let mut taint = taint("k", None, "NoSchedule");
        assert!(!tolerates(&t, &taint));
        taint.value = Some("v".into());
        assert!(tolerates(&t, &taint));
        let wildcard = Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        };
        assert!(tolerates(&wildcard, &taint));
    }

    #[test]
    fn first_untolerated_skips_filtered_and_tolerated_taints() {
        let taints = [
            taint("soft", None, EFFECT_PREFER_NO_SCHEDULE),
            taint("a", Some("1"), EFFECT_NO_SCHEDULE),
            taint("b", Some("2"), EFFECT_NO_EXECUTE),
        ];
        let tolerations = [t(json!({"key": "a", "operator": "Exists"}))];
        assert_eq!(
            first_untolerated(&tolerations, &taints, is_hard).map(|t| t.key.as_str()),
            Some("b")
        );
        assert_eq!(
            first_untolerated(&[], &taints, |_| true).map(|t| t.key.as_str()),
            Some("soft")
        );
        let all = [t(json!({"operator": "Exists"}))];
        assert!(first_untolerated(&all, &taints, |_| true).is_none());
    }
}
