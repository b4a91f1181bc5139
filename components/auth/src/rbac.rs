//! The RBAC authorizer: an in-memory index of roles and bindings, kept in sync by the API server.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, PoisonError, RwLock};

use k8s_openapi::api::authorization::v1::{NonResourceRule, ResourceRule};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};

use crate::rules::rules_allow;
use crate::selector::selector_matches;
use crate::user::service_account_user_name;
use crate::{Attributes, Decision, UserInfo};

/// One RBAC object, as the API server's store holds it.
#[derive(Debug, Clone, PartialEq)]
pub enum RbacObject {
    /// A namespaced role.
    Role(Role),
    /// A cluster role.
    ClusterRole(ClusterRole),
    /// A namespaced binding (to a Role of its namespace or to a ClusterRole).
    RoleBinding(RoleBinding),
    /// A cluster-wide binding to a ClusterRole.
    ClusterRoleBinding(ClusterRoleBinding),
}

/// The kind of an [`RbacObject`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RbacKind {
    /// `Role`
    Role,
    /// `ClusterRole`
    ClusterRole,
    /// `RoleBinding`
    RoleBinding,
    /// `ClusterRoleBinding`
    ClusterRoleBinding,
}

impl RbacObject {
    /// The kind of this object.
    pub fn kind(&self) -> RbacKind {
        match self {
            RbacObject::Role(_) => RbacKind::Role,
            RbacObject::ClusterRole(_) => RbacKind::ClusterRole,
            RbacObject::RoleBinding(_) => RbacKind::RoleBinding,
            RbacObject::ClusterRoleBinding(_) => RbacKind::ClusterRoleBinding,
        }
    }
}

type Rules = Arc<Vec<PolicyRule>>;

#[derive(Default)]
struct Index {
    /// Rules of roles by (namespace, name).
    roles: HashMap<(String, String), Rules>,
    cluster_roles: BTreeMap<String, ClusterRole>,
    /// Effective rules of every cluster role (aggregation resolved), recomputed on change.
    cluster_role_rules: HashMap<String, Rules>,
    /// Role bindings by namespace, then name.
    role_bindings: HashMap<String, BTreeMap<String, RoleBinding>>,
    cluster_role_bindings: BTreeMap<String, ClusterRoleBinding>,
}

fn name_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<(String, String)> {
    let name = meta.name.clone().filter(|n| !n.is_empty())?;
    Some((meta.namespace.clone().unwrap_or_default(), name))
}

/// Appends the rules of `from` to `into`, skipping duplicates (aggregation union).
fn union_into(into: &mut Vec<PolicyRule>, from: &[PolicyRule]) {
    for rule in from {
        if !into.contains(rule) {
            into.push(rule.clone());
        }
    }
}

impl Index {
    /// Effective rules of `name`: its own rules, or for aggregated cluster roles the union of
    /// the effective rules of every other cluster role matched by its selectors.
    fn resolve(
        &self,
        name: &str,
        visiting: &mut BTreeSet<String>,
        done: &mut HashMap<String, Rules>,
    ) -> Rules {
        if let Some(rules) = done.get(name) {
            return rules.clone();
        }
        let Some(role) = self.cluster_roles.get(name) else {
            return Rules::default();
        };
        let Some(aggregation) = &role.aggregation_rule else {
            let rules = Arc::new(role.rules.clone().unwrap_or_default());
            done.insert(name.to_string(), rules.clone());
            return rules;
        };
        if !visiting.insert(name.to_string()) {
            // Aggregation cycle: contribute nothing from this path.
            return Rules::default();
        }
        let selectors = aggregation
            .cluster_role_selectors
            .as_deref()
            .unwrap_or_default();
        let mut rules = Vec::new();
        for (other, candidate) in &self.cluster_roles {
            if other == name {
                continue;
            }
            let labels = candidate.metadata.labels.clone().unwrap_or_default();
            if selectors.iter().any(|s| selector_matches(s, &labels)) {
                union_into(&mut rules, &self.resolve(other, visiting, done));
            }
        }
        visiting.remove(name);
        let rules = Arc::new(rules);
        done.insert(name.to_string(), rules.clone());
        rules
    }

    fn recompute_cluster_role_rules(&mut self) {
        let mut done = HashMap::new();
        let names: Vec<String> = self.cluster_roles.keys().cloned().collect();
        for name in names {
            self.resolve(&name, &mut BTreeSet::new(), &mut done);
        }
        self.cluster_role_rules = done;
    }

    /// Rules a binding's roleRef points at, or an error text when the role does not exist.
    fn role_ref_rules(&self, binding_namespace: &str, role_ref: &RoleRef) -> Result<Rules, String> {
        match role_ref.kind.as_str() {
            "ClusterRole" => self
                .cluster_role_rules
                .get(&role_ref.name)
                .cloned()
                .ok_or_else(|| format!("clusterrole {:?} not found", role_ref.name)),
            "Role" if !binding_namespace.is_empty() => self
                .roles
                .get(&(binding_namespace.to_string(), role_ref.name.clone()))
                .cloned()
                .ok_or_else(|| format!("role {binding_namespace}/{} not found", role_ref.name)),
            other => Err(format!("roleRef kind {other:?} is not valid here")),
        }
    }
}

/// Whether `subject` (of a binding in `binding_namespace`, empty for cluster role bindings)
/// names `user`.
fn subject_applies(user: &UserInfo, subject: &Subject, binding_namespace: &str) -> bool {
    match subject.kind.as_str() {
        "User" => user.name == subject.name,
        "Group" => user.in_group(&subject.name),
        "ServiceAccount" => {
            // A ServiceAccount subject without namespace means the binding's own namespace.
            let namespace = subject
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or(binding_namespace);
            !namespace.is_empty()
                && user.name == service_account_user_name(namespace, &subject.name)
        }
        _ => false,
    }
}

fn applicable_subject<'a>(
    user: &UserInfo,
    subjects: &'a Option<Vec<Subject>>,
    namespace: &str,
) -> Option<&'a Subject> {
    subjects
        .iter()
        .flatten()
        .find(|s| subject_applies(user, s, namespace))
}

/// RBAC: an in-memory index the API server keeps in sync from its store (it calls upsert/remove on every
/// watch event for roles, clusterroles, rolebindings, clusterrolebindings).
#[derive(Default)]
pub struct RbacAuthorizer {
    index: RwLock<Index>,
}

impl std::fmt::Debug for RbacAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("RbacAuthorizer")
            .field("roles", &index.roles.len())
            .field("cluster_roles", &index.cluster_roles.len())
            .field(
                "role_bindings",
                &index
                    .role_bindings
                    .values()
                    .map(BTreeMap::len)
                    .sum::<usize>(),
            )
            .field("cluster_role_bindings", &index.cluster_role_bindings.len())
            .finish()
    }
}

impl RbacAuthorizer {
    /// An empty index (denies everything until objects are added).
    pub fn new() -> Self {
        RbacAuthorizer::default()
    }

    /// An index holding `objects`.
    pub fn with_objects(objects: impl IntoIterator<Item = RbacObject>) -> Self {
        let authorizer = RbacAuthorizer::new();
        for object in objects {
            authorizer.upsert(object);
        }
        authorizer
    }

    /// Adds or replaces an object (watch ADDED/MODIFIED). Objects without a name are ignored.
    /// Changing a cluster role recomputes every aggregated cluster role.
    pub fn upsert(&self, object: RbacObject) {
        let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
        match object {
            RbacObject::Role(role) => {
                if let Some(key) = name_of(&role.metadata) {
                    index
                        .roles
                        .insert(key, Arc::new(role.rules.unwrap_or_default()));
                }
            }
            RbacObject::ClusterRole(role) => {
                if let Some((_, name)) = name_of(&role.metadata) {
                    index.cluster_roles.insert(name, role);
                    index.recompute_cluster_role_rules();
                }
            }
            RbacObject::RoleBinding(binding) => {
                if let Some((namespace, name)) = name_of(&binding.metadata) {
                    index
                        .role_bindings
                        .entry(namespace)
                        .or_default()
                        .insert(name, binding);
                }
            }
            RbacObject::ClusterRoleBinding(binding) => {
                if let Some((_, name)) = name_of(&binding.metadata) {
                    index.cluster_role_bindings.insert(name, binding);
                }
            }
        }
    }

    /// Removes an object (watch DELETED); `namespace` is ignored for cluster-scoped kinds.
    pub fn remove(&self, kind: RbacKind, namespace: &str, name: &str) {
        let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
        match kind {
            RbacKind::Role => {
                index
                    .roles
                    .remove(&(namespace.to_string(), name.to_string()));
            }
            RbacKind::ClusterRole => {
                if index.cluster_roles.remove(name).is_some() {
                    index.recompute_cluster_role_rules();
                }
            }
            RbacKind::RoleBinding => {
                if let Some(bindings) = index.role_bindings.get_mut(namespace) {
                    bindings.remove(name);
                    if bindings.is_empty() {
                        index.role_bindings.remove(namespace);
                    }
                }
            }
            RbacKind::ClusterRoleBinding => {
                index.cluster_role_bindings.remove(name);
            }
        }
    }

    /// The rules a cluster role grants, with aggregation resolved (what Kubernetes' aggregation
    /// controller writes into `.rules`); `None` when the cluster role does not exist.
    pub fn effective_cluster_role_rules(&self, name: &str) -> Option<Vec<PolicyRule>> {
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        index
            .cluster_role_rules
            .get(name)
            .map(|r| r.as_ref().clone())
    }

    /// Decides a request: allowed when a ClusterRoleBinding, or a RoleBinding in the request's
    /// namespace, binds the user (or one of its groups, or its service account) to a role with a
    /// rule covering the request. The reason names the binding, or explains the refusal.
    pub fn authorize(&self, attrs: &Attributes) -> Decision {
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        let user = &attrs.user;
        let mut applicable = Vec::new();
        let mut errors = Vec::new();
        for (name, binding) in &index.cluster_role_bindings {
            let Some(subject) = applicable_subject(user, &binding.subjects, "") else {
                continue;
            };
            if binding.role_ref.kind != "ClusterRole" {
                errors.push(format!(
                    "ClusterRoleBinding {name:?} refers to a {} (must be ClusterRole)",
                    binding.role_ref.kind
                ));
                continue;
            }
            match index.role_ref_rules("", &binding.role_ref) {
                Ok(rules) if rules_allow(&rules, attrs) => {
                    return Decision::allow(format!(
                        "RBAC: allowed by ClusterRoleBinding {name:?} of ClusterRole {:?} to {} {:?}",
                        binding.role_ref.name, subject.kind, subject.name
                    ));
                }
                Ok(_) => applicable.push(format!(
                    "ClusterRoleBinding {name:?} (ClusterRole {:?})",
                    binding.role_ref.name
                )),
                Err(e) => errors.push(format!("ClusterRoleBinding {name:?}: {e}")),
            }
        }
        if attrs.resource_request && !attrs.namespace.is_empty() {
            let namespace = attrs.namespace.as_str();
            for (name, binding) in index.role_bindings.get(namespace).into_iter().flatten() {
                let Some(subject) = applicable_subject(user, &binding.subjects, namespace) else {
                    continue;
                };
                match index.role_ref_rules(namespace, &binding.role_ref) {
                    Ok(rules) if rules_allow(&rules, attrs) => {
                        return Decision::allow(format!(
                            "RBAC: allowed by RoleBinding \"{namespace}/{name}\" of {} {:?} to {} {:?}",
                            binding.role_ref.kind, binding.role_ref.name, subject.kind, subject.name
                        ));
                    }
                    Ok(_) => applicable.push(format!(
                        "RoleBinding \"{namespace}/{name}\" ({} {:?})",
                        binding.role_ref.kind, binding.role_ref.name
                    )),
                    Err(e) => errors.push(format!("RoleBinding \"{namespace}/{name}\": {e}")),
                }
            }
        }
        let scope = if attrs.resource_request && !attrs.namespace.is_empty() {
            format!(
                "no ClusterRoleBinding, and no RoleBinding in namespace {:?},",
                attrs.namespace
            )
        } else {
            "no ClusterRoleBinding".to_string()
        };
        let mut reason = format!(
            "RBAC: User {:?} (groups {:?}) cannot {}: {scope} grants it",
            user.name,
            user.groups,
            attrs.describe()
        );
        if applicable.is_empty() {
            reason.push_str("; no binding names this user, its groups or its service account");
        } else {
            reason.push_str(&format!(
                "; bindings that apply but whose roles have no matching rule: {}",
                applicable.join(", ")
            ));
        }
        if !errors.is_empty() {
            reason.push_str(&format!("; broken bindings: {}", errors.join(", ")));
        }
        Decision::deny(reason)
    }

    /// The rules a binding's roleRef grants in `binding_namespace` (empty for a
    /// ClusterRoleBinding); an error names a missing role or a bad reference.
    pub fn role_ref_rules(
        &self,
        binding_namespace: &str,
        role_ref: &RoleRef,
    ) -> Result<Vec<PolicyRule>, String> {
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        index
            .role_ref_rules(binding_namespace, role_ref)
            .map(|r| r.as_ref().clone())
    }

    /// Every rule granted to `user` cluster-wide, plus in `namespace` when not empty.
    pub fn policy_rules_for(&self, user: &UserInfo, namespace: &str) -> Vec<PolicyRule> {
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        let mut collected: Vec<PolicyRule> = Vec::new();
        for binding in index.cluster_role_bindings.values() {
            if binding.role_ref.kind == "ClusterRole"
                && applicable_subject(user, &binding.subjects, "").is_some()
            {
                if let Ok(rules) = index.role_ref_rules("", &binding.role_ref) {
                    union_into(&mut collected, &rules);
                }
            }
        }
        if !namespace.is_empty() {
            for binding in index
                .role_bindings
                .get(namespace)
                .into_iter()
                .flatten()
                .map(|(_, b)| b)
            {
                if applicable_subject(user, &binding.subjects, namespace).is_some() {
                    if let Ok(rules) = index.role_ref_rules(namespace, &binding.role_ref) {
                        union_into(&mut collected, &rules);
                    }
                }
            }
        }
        collected
    }

    /// For SelfSubjectRulesReview / `kubectl auth can-i --list`.
    pub fn rules_for(
        &self,
        user: &UserInfo,
        namespace: &str,
    ) -> (Vec<ResourceRule>, Vec<NonResourceRule>) {
        let mut resource_rules = Vec::new();
        let mut non_resource_rules = Vec::new();
        for rule in self.policy_rules_for(user, namespace) {
            if rule.resources.as_ref().is_some_and(|r| !r.is_empty()) {
                resource_rules.push(ResourceRule {
                    verbs: rule.verbs.clone(),
                    api_groups: rule.api_groups.clone(),
                    resources: rule.resources.clone(),
                    resource_names: rule.resource_names.clone(),
                });
            }
            if rule
                .non_resource_urls
                .as_ref()
                .is_some_and(|u| !u.is_empty())
            {
                non_resource_rules.push(NonResourceRule {
                    verbs: rule.verbs,
                    non_resource_urls: rule.non_resource_urls,
                });
            }
        }
        (resource_rules, non_resource_rules)
    }
}

#[cfg(test)]
#[path = "rbac_tests.rs"]
mod tests;
