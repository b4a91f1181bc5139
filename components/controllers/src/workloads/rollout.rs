//! Deployment arithmetic as in Kubernetes' `deployment/util`: surge and unavailability
//! fenceposts, how far the new ReplicaSet may grow, how far old ones may shrink, proportional
//! scaling, and the `pod-template-hash`.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The label (and selector key) that ties a ReplicaSet to one version of the template.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// `GetScaledValueFromIntOrPercent`: an int as is, a percentage of `total` rounded up or down.
pub fn scaled_value(v: Option<&IntOrString>, total: i32, round_up: bool) -> Result<i32, String> {
    match v {
        None => Ok(0),
        Some(IntOrString::Int(i)) => Ok(*i),
        Some(IntOrString::String(s)) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|n| n.trim().parse().ok())
                .ok_or_else(|| format!("invalid value for IntOrString: {s:?}: must be an integer or a percentage like \"25%\""))?;
            let scaled = pct * i64::from(total);
            let v = if round_up {
                (scaled + 99).div_euclid(100)
            } else {
                scaled.div_euclid(100)
            };
            Ok(v as i32)
        }
    }
}

/// `ResolveFenceposts`: (maxSurge rounded up, maxUnavailable rounded down); when both are zero
/// maxUnavailable becomes 1 so a rollout can make progress.
pub fn resolve_fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    desired: i32,
) -> Result<(i32, i32), String> {
    let surge = scaled_value(max_surge, desired, true)?;
    let mut unavailable = scaled_value(max_unavailable, desired, false)?;
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    Ok((surge, unavailable))
}

/// One ReplicaSet as the arithmetic sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RsCounts {
    /// `spec.replicas`.
    pub replicas: i32,
    /// `status.availableReplicas`.
    pub available: i32,
}

/// `NewRSNewReplicas` for RollingUpdate: the new ReplicaSet's size this step, never letting all
/// ReplicaSets together exceed `desired + max_surge`.
pub fn new_rs_replicas(desired: i32, max_surge: i32, all_replicas: i32, new_replicas: i32) -> i32 {
    let max_total = desired + max_surge;
    if all_replicas >= max_total {
        return new_replicas;
    }
    let up = (max_total - all_replicas).min(desired - new_replicas);
    new_replicas + up.max(0)
}

/// `reconcileOldReplicaSets` for RollingUpdate: the new sizes of `old` (ordered oldest first)
/// given the new ReplicaSet, keeping at least `desired - max_unavailable` pods available.
/// Unhealthy old pods go first (`cleanupUnhealthyReplicas`), then available ones
/// (`scaleDownOldReplicaSetsForRollingUpdate`).
pub fn scale_down_old(
    desired: i32,
    max_unavailable: i32,
    new: RsCounts,
    old: &[RsCounts],
) -> Vec<i32> {
    let mut sizes: Vec<i32> = old.iter().map(|o| o.replicas).collect();
    let old_total: i32 = sizes.iter().sum();
    if old_total == 0 {
        return sizes;
    }
    let all = old_total + new.replicas;
    let min_available = desired - max_unavailable;
    let new_unavailable = new.replicas - new.available;
    let max_scaled_down = all - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return sizes;
    }
    // Unhealthy replicas first.
    let mut cleaned = 0;
    for (i, o) in old.iter().enumerate() {
        if cleaned >= max_scaled_down {
            break;
        }
        if sizes[i] == 0 || sizes[i] == o.available {
            continue;
        }
        let n = (max_scaled_down - cleaned).min(sizes[i] - o.available);
        sizes[i] -= n;
        cleaned += n;
    }
    // Then available ones, as long as enough stay available.
    let available: i32 = new.available + old.iter().map(|o| o.available).sum::<i32>();
    if available <= min_available {
        return sizes;
    }
    let total_down = available - min_available;
    let mut down = 0;
    for size in sizes.iter_mut() {
        if down >= total_down {
            break;
        }
        if *size == 0 {
            continue;
        }
        let n = (*size).min(total_down - down);
        *size -= n;
        down += n;
    }
    sizes
}

/// Proportional scaling (`scale` in Kubernetes' sync.go) of active ReplicaSets (ordered newest
/// first) when the deployment is resized mid-rollout: `allowed - sum(sizes)` replicas are added
/// (or removed) in proportion to each ReplicaSet's size; the rounding leftover goes to the
/// first (newest when adding, largest-oldest handled by the caller's order).
pub fn proportional(sizes: &[i32], allowed: i32) -> Vec<i32> {
    let total: i32 = sizes.iter().sum();
    let to_add = allowed - total;
    if to_add == 0 || total == 0 {
        return sizes.to_vec();
    }
    let mut out = sizes.to_vec();
    let mut added = 0;
    for (i, s) in sizes.iter().enumerate() {
        let share = (i64::from(*s) * i64::from(to_add) / i64::from(total)) as i32;
        // Never remove more than a ReplicaSet has, never overshoot what is left to add.
        let share = if to_add > 0 {
            share.min(to_add - added)
        } else {
            share.max(to_add - added).max(-*s)
        };
        out[i] += share;
        added += share;
    }
    let leftover = to_add - added;
    if leftover != 0 {
        if let Some(first) = out.iter_mut().find(|v| leftover > 0 || **v >= -leftover) {
            *first += leftover;
        }
    }
    out
}

/// 32-bit FNV-1a, the hash Kubernetes uses for `pod-template-hash`.
pub fn fnv32a(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in data {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Kubernetes' `rand.SafeEncodeString`: maps each character to an alphabet without vowels or
/// look-alikes, so the hash never spells words.
pub fn safe_encode(s: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

/// `ComputeHash`: FNV-1a over the template (canonical JSON, any `pod-template-hash` label
/// removed) and the collision count, decimal, safe-encoded. Equal templates give equal hashes,
/// so a rollback finds its old ReplicaSet by name as well as by template.
pub fn pod_template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let template = strip_hash(template);
    let mut data = serde_json::to_vec(&template).unwrap_or_default();
    if let Some(c) = collision_count {
        data.extend_from_slice(&(c as u32).to_le_bytes());
    }
    safe_encode(&fnv32a(&data).to_string())
}

/// The template without the `pod-template-hash` label (and without an empty label map).
pub fn strip_hash(template: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = template.clone();
    if let Some(meta) = t.metadata.as_mut() {
        if let Some(labels) = meta.labels.as_mut() {
            labels.remove(POD_TEMPLATE_HASH);
            if labels.is_empty() {
                meta.labels = None;
            }
        }
    }
    t
}

/// `EqualIgnoreHash`: templates equal apart from the `pod-template-hash` label.
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    serde_json::to_value(strip_hash(a)).ok() == serde_json::to_value(strip_hash(b)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    fn pct(s: &str) -> IntOrString {
        IntOrString::String(s.into())
    }

    #[test]
    fn percentages_round_like_kubernetes() {
        assert_eq!(scaled_value(Some(&pct("25%")), 10, true), Ok(3));
        assert_eq!(scaled_value(Some(&pct("25%")), 10, false), Ok(2));
        assert_eq!(scaled_value(Some(&pct("25%")), 3, true), Ok(1));
        assert_eq!(scaled_value(Some(&pct("25%")), 3, false), Ok(0));
        assert_eq!(scaled_value(Some(&IntOrString::Int(2)), 3, false), Ok(2));
        assert!(scaled_value(Some(&pct("abc")), 3, false).is_err());
        // Default 25%/25% on 3 replicas: surge 1, unavailable 0.
        assert_eq!(
            resolve_fenceposts(Some(&pct("25%")), Some(&pct("25%")), 3),
            Ok((1, 0))
        );
        // Both zero: unavailable forced to 1.
        assert_eq!(
            resolve_fenceposts(Some(&IntOrString::Int(0)), Some(&pct("10%")), 3),
            Ok((0, 1))
        );
    }

    #[test]
    fn new_replica_set_grows_within_surge() {
        // 3 desired, surge 1: old has 3, new 0 -> new may go to 1.
        assert_eq!(new_rs_replicas(3, 1, 3, 0), 1);
        // Already at the limit: stays.
        assert_eq!(new_rs_replicas(3, 1, 4, 1), 1);
        // Never beyond desired.
        assert_eq!(new_rs_replicas(3, 5, 0, 0), 3);
        assert_eq!(new_rs_replicas(3, 5, 3, 2), 3);
    }

    #[test]
    fn old_replica_sets_shrink_keeping_minimum_available() {
        let c = |replicas, available| RsCounts {
            replicas,
            available,
        };
        // desired 3, maxUnavailable 0; new has 1 not yet available: nothing may go.
        assert_eq!(scale_down_old(3, 0, c(1, 0), &[c(3, 3)]), vec![3]);
        // new pod became available: one old pod may go.
        assert_eq!(scale_down_old(3, 0, c(1, 1), &[c(3, 3)]), vec![2]);
        // maxUnavailable 1: one may go immediately.
        assert_eq!(scale_down_old(3, 1, c(0, 0), &[c(3, 3)]), vec![2]);
        // Unhealthy old pods go first, even below the availability floor.
        assert_eq!(
            scale_down_old(3, 0, c(1, 0), &[c(2, 0), c(3, 3)]),
            vec![0, 3]
        );
        // ... but only as many as the surge budget allows.
        assert_eq!(
            scale_down_old(3, 0, c(1, 0), &[c(3, 0), c(3, 3)]),
            vec![0, 3]
        );
        assert_eq!(
            scale_down_old(3, 0, c(0, 0), &[c(2, 0), c(3, 3)]),
            vec![0, 3]
        );
        // Oldest first.
        assert_eq!(
            scale_down_old(4, 0, c(2, 2), &[c(1, 1), c(3, 3)]),
            vec![0, 2]
        );
    }

    #[test]
    fn proportional_scaling_keeps_ratios() {
        assert_eq!(proportional(&[5, 5], 20), vec![10, 10]);
        assert_eq!(proportional(&[6, 3], 12), vec![8, 4]);
        assert_eq!(proportional(&[6, 3], 6), vec![4, 2]);
        assert_eq!(proportional(&[1, 1], 3).iter().sum::<i32>(), 3);
        assert_eq!(proportional(&[2, 1], 1).iter().sum::<i32>(), 1);
    }

    fn template(image: &str, hash: Option<&str>) -> PodTemplateSpec {
        let mut labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        if let Some(h) = hash {
            labels.insert(POD_TEMPLATE_HASH.into(), h.into());
        }
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    image: Some(image.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    #[test]
    fn hash_is_stable_ignores_its_label_and_changes_with_template() {
        let a = pod_template_hash(&template("nginx:1", None), None);
        assert_eq!(
            a,
            pod_template_hash(&template("nginx:1", Some("zzz")), None)
        );
        assert_ne!(a, pod_template_hash(&template("nginx:2", None), None));
        assert_ne!(a, pod_template_hash(&template("nginx:1", None), Some(1)));
        assert!(a.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        assert!(equal_ignore_hash(
            &template("x", Some(&a)),
            &template("x", None)
        ));
        assert!(!equal_ignore_hash(
            &template("x", None),
            &template("y", None)
        ));
    }

    #[test]
    fn fnv_matches_reference_vectors() {
        assert_eq!(fnv32a(b""), 0x811c9dc5);
        assert_eq!(fnv32a(b"a"), 0xe40c292c);
        assert_eq!(fnv32a(b"foobar"), 0xbf9cf968);
    }
}
