//! Matching one RBAC PolicyRule against request attributes, with Kubernetes' exact semantics.

use k8s_openapi::api::rbac::v1::PolicyRule;

use crate::Attributes;

const ALL: &str = "*";

fn list(values: &Option<Vec<String>>) -> &[String] {
    values.as_deref().unwrap_or_default()
}

/// Whether the rule's verbs contain `*` or `verb`.
pub(crate) fn verb_matches(rule: &PolicyRule, verb: &str) -> bool {
    rule.verbs.iter().any(|v| v == ALL || v == verb)
}

/// Whether the rule's apiGroups contain `*` or `group`.
pub(crate) fn api_group_matches(rule: &PolicyRule, group: &str) -> bool {
    list(&rule.api_groups)
        .iter()
        .any(|g| g == ALL || g == group)
}

/// Whether the rule's resources contain `*`, `resource[/subresource]`, or `*/subresource`.
pub(crate) fn resource_matches(rule: &PolicyRule, combined: &str, subresource: &str) -> bool {
    list(&rule.resources).iter().any(|r| {
        r == ALL
            || r == combined
            || (!subresource.is_empty()
                && r.strip_prefix("*/").is_some_and(|sub| sub == subresource))
    })
}

/// Whether the rule has no resourceNames, or lists `name`.
pub(crate) fn resource_name_matches(rule: &PolicyRule, name: &str) -> bool {
    let names = list(&rule.resource_names);
    names.is_empty() || names.iter().any(|n| n == name)
}

/// Whether the rule's nonResourceURLs contain `*`, `path`, or a `prefix*` covering `path`.
pub(crate) fn non_resource_url_matches(rule: &PolicyRule, path: &str) -> bool {
    list(&rule.non_resource_urls).iter().any(|u| {
        u == ALL
            || u == path
            || u.strip_suffix('*')
                .is_some_and(|prefix| path.starts_with(prefix))
    })
}

/// Whether `rule` allows the request.
pub(crate) fn rule_allows(rule: &PolicyRule, attrs: &Attributes) -> bool {
    if attrs.resource_request {
        verb_matches(rule, &attrs.verb)
            && api_group_matches(rule, &attrs.api_group)
            && resource_matches(rule, &attrs.combined_resource(), &attrs.subresource)
            && resource_name_matches(rule, &attrs.name)
    } else {
        verb_matches(rule, &attrs.verb) && non_resource_url_matches(rule, &attrs.path)
    }
}

/// Whether any of `rules` allows the request.
pub(crate) fn rules_allow(rules: &[PolicyRule], attrs: &Attributes) -> bool {
    rules.iter().any(|r| rule_allows(r, attrs))
}

/// Builds PolicyRules tersely (the default policy and tests are written with it).
#[derive(Debug, Clone)]
pub(crate) struct Rule(PolicyRule);

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| v.to_string()).collect()
}

impl Rule {
    /// A resource rule: `verbs` on `resources` in `groups`.
    pub(crate) fn new(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Self {
        Rule(PolicyRule {
            verbs: strings(verbs),
            api_groups: Some(strings(groups)),
            resources: Some(strings(resources)),
            ..PolicyRule::default()
        })
    }

    /// A non-resource rule: `verbs` on `urls`.
    pub(crate) fn urls(verbs: &[&str], urls: &[&str]) -> Self {
        Rule(PolicyRule {
            verbs: strings(verbs),
            non_resource_urls: Some(strings(urls)),
            ..PolicyRule::default()
        })
    }

    /// Restricts the rule to objects with these names.
    pub(crate) fn names(mut self, names: &[&str]) -> Self {
        self.0.resource_names = Some(strings(names));
        self
    }

    pub(crate) fn build(self) -> PolicyRule {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UserInfo;

    fn res(verb: &str, ns: &str, group: &str, resource: &str, name: &str) -> Attributes {
        Attributes::resource(UserInfo::default(), verb, ns, group, resource, name)
    }

    #[test]
    fn rule_matching_table() {
        let url =
            |verb: &str, path: &str| Attributes::non_resource(UserInfo::default(), verb, path);
        let cases: Vec<(PolicyRule, Attributes, bool, &str)> = vec![
            (
                Rule::new(&["get"], &[""], &["pods"]).build(),
                res("get", "d", "", "pods", "a"),
                true,
                "exact",
            ),
            (
                Rule::new(&["get"], &[""], &["pods"]).build(),
                res("list", "d", "", "pods", ""),
                false,
                "verb differs",
            ),
            (
                Rule::new(&["*"], &[""], &["pods"]).build(),
                res("deletecollection", "d", "", "pods", ""),
                true,
                "verb wildcard",
            ),
            (
                Rule::new(&["get"], &["apps"], &["pods"]).build(),
                res("get", "d", "", "pods", "a"),
                false,
                "group differs",
            ),
            (
                Rule::new(&["get"], &["*"], &["deployments"]).build(),
                res("get", "d", "apps", "deployments", "a"),
                true,
                "group wildcard",
            ),
            (
                Rule::new(&["get"], &[""], &["*"]).build(),
                res("get", "d", "", "pods/log", "a"),
                true,
                "resource wildcard covers subresources",
            ),
            (
                Rule::new(&["get"], &[""], &["pods"]).build(),
                res("get", "d", "", "pods/log", "a"),
                false,
                "resource does not cover subresource",
            ),
            (
                Rule::new(&["get"], &[""], &["pods/log"]).build(),
                res("get", "d", "", "pods/log", "a"),
                true,
                "explicit subresource",
            ),
            (
                Rule::new(&["get"], &[""], &["pods/log"]).build(),
                res("get", "d", "", "pods", "a"),
                false,
                "subresource rule does not cover parent",
            ),
            (
                Rule::new(&["update"], &["*"], &["*/status"]).build(),
                res("update", "d", "apps", "deployments/status", "a"),
                true,
                "*/subresource",
            ),
            (
                Rule::new(&["update"], &["*"], &["*/status"]).build(),
                res("update", "d", "apps", "deployments/scale", "a"),
                false,
                "*/subresource other subresource",
            ),
            (
                Rule::new(&["update"], &["*"], &["*/status"]).build(),
                res("update", "d", "apps", "deployments", "a"),
                false,
                "*/subresource without subresource",
            ),
            (
                Rule::new(&["get"], &[""], &["configmaps"])
                    .names(&["cluster-info"])
                    .build(),
                res("get", "kube-public", "", "configmaps", "cluster-info"),
                true,
                "resourceName match",
            ),
            (
                Rule::new(&["get"], &[""], &["configmaps"])
                    .names(&["cluster-info"])
                    .build(),
                res("get", "kube-public", "", "configmaps", "other"),
                false,
                "resourceName mismatch",
            ),
            (
                Rule::new(&["list"], &[""], &["configmaps"])
                    .names(&["cluster-info"])
                    .build(),
                res("list", "kube-public", "", "configmaps", ""),
                false,
                "resourceNames never match unnamed requests",
            ),
            (
                Rule::urls(&["get"], &["/healthz"]).build(),
                url("get", "/healthz"),
                true,
                "url exact",
            ),
            (
                Rule::urls(&["get"], &["/healthz"]).build(),
                url("get", "/healthz/etcd"),
                false,
                "url exact is not a prefix",
            ),
            (
                Rule::urls(&["get"], &["/apis/*"]).build(),
                url("get", "/apis/apps/v1"),
                true,
                "url trailing star",
            ),
            (
                Rule::urls(&["get"], &["/apis/*"]).build(),
                url("get", "/apis"),
                false,
                "url star needs the slash",
            ),
            (
                Rule::urls(&["*"], &["*"]).build(),
                url("post", "/anything"),
                true,
                "url wildcard",
            ),
            (
                Rule::urls(&["get"], &["*"]).build(),
                res("get", "d", "", "pods", ""),
                false,
                "url rules never match resources",
            ),
            (
                Rule::new(&["get"], &["*"], &["*"]).build(),
                url("get", "/version"),
                false,
                "resource rules never match urls",
            ),
        ];
        for (rule, attrs, expected, what) in cases {
            assert_eq!(rule_allows(&rule, &attrs), expected, "{what}");
        }
    }
}
