//! RBAC privilege-escalation prevention, with Kubernetes' semantics: a user may write a role,
//! or bind one, only when it already holds every permission the role grants (or is allowed the
//! `escalate` / `bind` verb on it, or is in `system:masters`). Otherwise anyone allowed to
//! create RoleBindings could bind `cluster-admin` to itself.
//!
//! [`uncovered`] is the coverage test: each servant rule is broken down into single
//! (verb, group, resource, name) or (verb, URL) permissions, and each must be covered by one
//! owner rule.

use k8s_openapi::api::rbac::v1::PolicyRule;

const ALL: &str = "*";

fn list(values: &Option<Vec<String>>) -> &[String] {
    values.as_deref().unwrap_or_default()
}

fn one(value: &str) -> Option<Vec<String>> {
    Some(vec![value.to_string()])
}

/// The single permissions `rule` grants, each as a PolicyRule with one verb and one
/// group/resource/name or one URL.
fn break_down(rule: &PolicyRule) -> Vec<PolicyRule> {
    let mut out = Vec::new();
    for verb in &rule.verbs {
        for group in list(&rule.api_groups) {
            for resource in list(&rule.resources) {
                let names = list(&rule.resource_names);
                if names.is_empty() {
                    out.push(PolicyRule {
                        verbs: vec![verb.clone()],
                        api_groups: one(group),
                        resources: one(resource),
                        ..PolicyRule::default()
                    });
                }
                for name in names {
                    out.push(PolicyRule {
                        verbs: vec![verb.clone()],
                        api_groups: one(group),
                        resources: one(resource),
                        resource_names: one(name),
                        ..PolicyRule::default()
                    });
                }
            }
        }
        for url in list(&rule.non_resource_urls) {
            out.push(PolicyRule {
                verbs: vec![verb.clone()],
                non_resource_urls: one(url),
                ..PolicyRule::default()
            });
        }
    }
    out
}

fn has(values: &[String], value: &str) -> bool {
    values.iter().any(|v| v == ALL || v == value)
}

/// Whether `owner` grants the single permission `servant` (one verb, one resource or URL).
fn covers(owner: &PolicyRule, servant: &PolicyRule) -> bool {
    let Some(verb) = servant.verbs.first() else {
        return true;
    };
    if !has(&owner.verbs, verb) {
        return false;
    }
    if let Some(url) = list(&servant.non_resource_urls).first() {
        return list(&owner.non_resource_urls).iter().any(|u| {
            u == ALL
                || u == url
                || u.strip_suffix('*')
                    .is_some_and(|prefix| url.starts_with(prefix))
        });
    }
    let group = list(&servant.api_groups).first().map_or("", String::as_str);
    let resource = list(&servant.resources).first().map_or("", String::as_str);
    if !has(list(&owner.api_groups), group) {
        return false;
    }
    let owner_resources = list(&owner.resources);
    let resource_covered = has(owner_resources, resource)
        || resource.split_once('/').is_some_and(|(_, sub)| {
            owner_resources
                .iter()
                .any(|r| r.strip_prefix("*/") == Some(sub))
        });
    if !resource_covered {
        return false;
    }
    let owner_names = list(&owner.resource_names);
    if owner_names.is_empty() {
        return true;
    }
    match list(&servant.resource_names).first() {
        Some(name) => owner_names.iter().any(|n| n == name),
        // A rule for every name is not covered by a rule for some names.
        None => false,
    }
}

/// The single permissions of `servant` that no rule of `owner` grants (empty = covered).
pub fn uncovered(owner: &[PolicyRule], servant: &[PolicyRule]) -> Vec<PolicyRule> {
    servant
        .iter()
        .flat_map(break_down)
        .filter(|s| !owner.iter().any(|o| covers(o, s)))
        .collect()
}

/// Rules granting everything: what a user needs to write an aggregated ClusterRole, whose
/// aggregation can gather any permission.
pub fn full_authority() -> Vec<PolicyRule> {
    vec![
        PolicyRule {
            verbs: vec![ALL.into()],
            api_groups: one(ALL),
            resources: one(ALL),
            ..PolicyRule::default()
        },
        PolicyRule {
            verbs: vec![ALL.into()],
            non_resource_urls: one(ALL),
            ..PolicyRule::default()
        },
    ]
}

/// One permission as Kubernetes prints it in escalation errors:
/// `{APIGroups:["apps"], Resources:["deployments"], Verbs:["get"]}`.
pub fn describe_rule(rule: &PolicyRule) -> String {
    let quoted = |values: &[String]| {
        values
            .iter()
            .map(|v| format!("{v:?}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut parts = Vec::new();
    if !list(&rule.api_groups).is_empty() {
        parts.push(format!("APIGroups:[{}]", quoted(list(&rule.api_groups))));
    }
    if !list(&rule.resources).is_empty() {
        parts.push(format!("Resources:[{}]", quoted(list(&rule.resources))));
    }
    if !list(&rule.resource_names).is_empty() {
        parts.push(format!(
            "ResourceNames:[{}]",
            quoted(list(&rule.resource_names))
        ));
    }
    if !list(&rule.non_resource_urls).is_empty() {
        parts.push(format!(
            "NonResourceURLs:[{}]",
            quoted(list(&rule.non_resource_urls))
        ));
    }
    parts.push(format!("Verbs:[{}]", quoted(&rule.verbs)));
    format!("{{{}}}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Rule;

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
        Rule::new(verbs, groups, resources).build()
    }

    #[test]
    fn exact_and_wildcard_owners_cover() {
        let owner = vec![
            rule(&["get", "list"], &[""], &["pods", "configmaps"]),
            rule(&["*"], &["apps"], &["deployments"]),
        ];
        assert!(uncovered(&owner, &[rule(&["get"], &[""], &["pods"])]).is_empty());
        assert!(uncovered(&owner, &[rule(&["delete"], &["apps"], &["deployments"])]).is_empty());
        let missing = uncovered(
            &owner,
            &[rule(
                &["get", "delete"],
                &["", "apps"],
                &["pods", "secrets"],
            )],
        );
        let shown: Vec<String> = missing.iter().map(describe_rule).collect();
        assert_eq!(
            shown,
            [
                r#"{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}"#,
                r#"{APIGroups:["apps"], Resources:["pods"], Verbs:["get"]}"#,
                r#"{APIGroups:["apps"], Resources:["secrets"], Verbs:["get"]}"#,
                r#"{APIGroups:[""], Resources:["pods"], Verbs:["delete"]}"#,
                r#"{APIGroups:[""], Resources:["secrets"], Verbs:["delete"]}"#,
                r#"{APIGroups:["apps"], Resources:["pods"], Verbs:["delete"]}"#,
                r#"{APIGroups:["apps"], Resources:["secrets"], Verbs:["delete"]}"#,
            ]
        );
        // The servant's wildcard is a permission of its own: only a wildcard covers it.
        assert_eq!(
            uncovered(&owner, &[rule(&["*"], &[""], &["pods"])]).len(),
            1
        );
        assert!(uncovered(&full_authority(), &[rule(&["*"], &["*"], &["*"])]).is_empty());
    }

    #[test]
    fn subresources_and_resource_names() {
        let owner = vec![
            rule(&["update"], &["*"], &["*/status"]),
            Rule::new(&["get"], &[""], &["configmaps"])
                .names(&["a", "b"])
                .build(),
        ];
        assert!(uncovered(
            &owner,
            &[rule(&["update"], &["apps"], &["deployments/status"])]
        )
        .is_empty());
        assert_eq!(
            uncovered(&owner, &[rule(&["update"], &["apps"], &["deployments"])]).len(),
            1
        );
        let named = Rule::new(&["get"], &[""], &["configmaps"])
            .names(&["b"])
            .build();
        assert!(uncovered(&owner, &[named]).is_empty());
        let other = Rule::new(&["get"], &[""], &["configmaps"])
            .names(&["c"])
            .build();
        assert_eq!(uncovered(&owner, &[other]).len(), 1);
        // Every name is more than some names.
        assert_eq!(
            uncovered(&owner, &[rule(&["get"], &[""], &["configmaps"])]).len(),
            1
        );
    }

    #[test]
    fn non_resource_urls() {
        let owner = vec![Rule::urls(&["get"], &["/healthz", "/metrics/*"]).build()];
        assert!(uncovered(
            &owner,
            &[Rule::urls(&["get"], &["/healthz", "/metrics/cadvisor"]).build()]
        )
        .is_empty());
        let missing = uncovered(
            &owner,
            &[Rule::urls(&["get", "post"], &["/version"]).build()],
        );
        assert_eq!(missing.len(), 2);
        assert_eq!(
            describe_rule(&missing[0]),
            r#"{NonResourceURLs:["/version"], Verbs:["get"]}"#
        );
        // Resource rules never cover URLs.
        assert_eq!(
            uncovered(
                &[rule(&["*"], &["*"], &["*"])],
                &[Rule::urls(&["get"], &["/healthz"]).build()]
            )
            .len(),
            1
        );
    }
}
