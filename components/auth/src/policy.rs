//! The RBAC objects a new cluster starts with: Kubernetes' bootstrap policy, what kubeadm adds,
//! and the one role kinit's single-identity controller manager needs.

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::{
    AggregationRule, ClusterRole, ClusterRoleBinding, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::rules::Rule;
use crate::{RbacAuthorizer, RbacObject};

/// Label on every default policy object.
pub const BOOTSTRAPPING_LABEL: &str = "kubernetes.io/bootstrapping";
/// Value of [`BOOTSTRAPPING_LABEL`].
pub const BOOTSTRAPPING_VALUE: &str = "rbac-defaults";
/// Annotation telling the API server it may reconcile the object at start.
pub const AUTOUPDATE_ANNOTATION: &str = "rbac.authorization.kubernetes.io/autoupdate";
/// Aggregation label selecting rules into `admin`.
pub const AGGREGATE_TO_ADMIN: &str = "rbac.authorization.k8s.io/aggregate-to-admin";
/// Aggregation label selecting rules into `edit`.
pub const AGGREGATE_TO_EDIT: &str = "rbac.authorization.k8s.io/aggregate-to-edit";
/// Aggregation label selecting rules into `view`.
pub const AGGREGATE_TO_VIEW: &str = "rbac.authorization.k8s.io/aggregate-to-view";
/// Group kubeadm puts into default join tokens' `auth-extra-groups`.
pub const DEFAULT_NODE_TOKEN_GROUP: &str = "system:bootstrappers:kubeadm:default-node-token";

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// The default policy objects the API server creates at start when missing (Kubernetes'
/// bootstrap policy + what kubeadm adds), labelled kubernetes.io/bootstrapping=rbac-defaults,
/// annotated rbac.authorization.kubernetes.io/autoupdate=true.
#[derive(Debug, Clone, PartialEq)]
pub struct DefaultPolicy {
    /// Cluster roles (`admin`, `edit`, `view` carry aggregation rules and their resolved rules).
    pub cluster_roles: Vec<ClusterRole>,
    /// Cluster role bindings.
    pub cluster_role_bindings: Vec<ClusterRoleBinding>,
    /// Namespaced roles (kube-public, kube-system).
    pub roles: Vec<Role>,
    /// Namespaced role bindings.
    pub role_bindings: Vec<RoleBinding>,
}

impl DefaultPolicy {
    /// All objects, cluster roles first, in the order they should be created.
    pub fn into_objects(self) -> Vec<RbacObject> {
        let mut objects = Vec::new();
        objects.extend(self.cluster_roles.into_iter().map(RbacObject::ClusterRole));
        objects.extend(self.roles.into_iter().map(RbacObject::Role));
        objects.extend(
            self.cluster_role_bindings
                .into_iter()
                .map(RbacObject::ClusterRoleBinding),
        );
        objects.extend(self.role_bindings.into_iter().map(RbacObject::RoleBinding));
        objects
    }
}

fn meta(name: &str, namespace: Option<&str>, labels: &[(&str, &str)]) -> ObjectMeta {
    let mut all: BTreeMap<String, String> = [(
        BOOTSTRAPPING_LABEL.to_string(),
        BOOTSTRAPPING_VALUE.to_string(),
    )]
    .into();
    all.extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.map(str::to_string),
        labels: Some(all),
        annotations: Some([(AUTOUPDATE_ANNOTATION.to_string(), "true".to_string())].into()),
        ..ObjectMeta::default()
    }
}

fn cluster_role(name: &str, labels: &[(&str, &str)], rules: Vec<Rule>) -> ClusterRole {
    ClusterRole {
        metadata: meta(name, None, labels),
        rules: Some(rules.into_iter().map(Rule::build).collect()),
        aggregation_rule: None,
    }
}

fn aggregated_cluster_role(name: &str, labels: &[(&str, &str)], select: &str) -> ClusterRole {
    ClusterRole {
        metadata: meta(name, None, labels),
        rules: Some(Vec::new()),
        aggregation_rule: Some(AggregationRule {
            cluster_role_selectors: Some(vec![LabelSelector {
                match_labels: Some([(select.to_string(), "true".to_string())].into()),
                ..LabelSelector::default()
            }]),
        }),
    }
}

fn user(name: &str) -> Subject {
    Subject {
        kind: "User".into(),
        name: name.into(),
        api_group: Some(RBAC_GROUP.into()),
        namespace: None,
    }
}

fn group(name: &str) -> Subject {
    Subject {
        kind: "Group".into(),
        name: name.into(),
        api_group: Some(RBAC_GROUP.into()),
        namespace: None,
    }
}

fn service_account(namespace: &str, name: &str) -> Subject {
    Subject {
        kind: "ServiceAccount".into(),
        name: name.into(),
        api_group: None,
        namespace: Some(namespace.into()),
    }
}

fn role_ref(kind: &str, name: &str) -> RoleRef {
    RoleRef {
        api_group: RBAC_GROUP.into(),
        kind: kind.into(),
        name: name.into(),
    }
}

fn binding(name: &str, role: &str, subjects: Vec<Subject>) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(name, None, &[]),
        role_ref: role_ref("ClusterRole", role),
        subjects: Some(subjects),
    }
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const READ_WRITE: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const EVENTS: &[&str] = &["create", "patch", "update"];

fn view_rules() -> Vec<Rule> {
    vec![
        Rule::new(
            READ,
            &[""],
            &[
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/status",
            ],
        ),
        Rule::new(
            READ,
            &[""],
            &[
                "bindings",
                "events",
                "limitranges",
                "namespaces/status",
                "pods/log",
                "pods/status",
                "replicationcontrollers/status",
                "resourcequotas",
                "resourcequotas/status",
            ],
        ),
        Rule::new(READ, &[""], &["namespaces"]),
        Rule::new(READ, &["discovery.k8s.io"], &["endpointslices"]),
        Rule::new(
            READ,
            &["apps"],
            &[
                "controllerrevisions",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
            ],
        ),
        Rule::new(
            READ,
            &["autoscaling"],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
        ),
        Rule::new(
            READ,
            &["batch"],
            &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
        ),
        Rule::new(
            READ,
            &["extensions"],
            &[
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "ingresses",
                "ingresses/status",
                "networkpolicies",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "replicationcontrollers/scale",
            ],
        ),
        Rule::new(
            READ,
            &["policy"],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
        ),
        Rule::new(
            READ,
            &["networking.k8s.io"],
            &["ingresses", "ingresses/status", "networkpolicies"],
        ),
    ]
}

fn edit_rules() -> Vec<Rule> {
    vec![
        Rule::new(
            WRITE,
            &[""],
            &[
                "pods",
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
            ],
        ),
        Rule::new(&["create"], &[""], &["pods/eviction"]),
        Rule::new(
            WRITE,
            &[""],
            &[
                "configmaps",
                "events",
                "persistentvolumeclaims",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "secrets",
                "serviceaccounts",
                "services",
                "services/proxy",
            ],
        ),
        Rule::new(&["create"], &[""], &["serviceaccounts/token"]),
        Rule::new(
            WRITE,
            &["apps"],
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "replicasets",
                "replicasets/scale",
                "statefulsets",
                "statefulsets/scale",
            ],
        ),
        Rule::new(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
        Rule::new(WRITE, &["batch"], &["cronjobs", "jobs"]),
        Rule::new(
            WRITE,
            &["extensions"],
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "ingresses",
                "networkpolicies",
                "replicasets",
                "replicasets/scale",
                "replicationcontrollers/scale",
            ],
        ),
        Rule::new(WRITE, &["policy"], &["poddisruptionbudgets"]),
        Rule::new(
            WRITE,
            &["networking.k8s.io"],
            &["ingresses", "networkpolicies"],
        ),
        Rule::new(
            READ,
            &[""],
            &[
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
                "secrets",
                "services/proxy",
            ],
        ),
        Rule::new(&["impersonate"], &[""], &["serviceaccounts"]),
    ]
}

fn admin_rules() -> Vec<Rule> {
    vec![
        Rule::new(
            &["create"],
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews"],
        ),
        Rule::new(READ_WRITE, &[RBAC_GROUP], &["rolebindings", "roles"]),
    ]
}

fn node_rules() -> Vec<Rule> {
    vec![
        Rule::new(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        Rule::new(
            &["create"],
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews", "subjectaccessreviews"],
        ),
        Rule::new(READ, &[""], &["services"]),
        Rule::new(&["create", "get", "list", "watch"], &[""], &["nodes"]),
        Rule::new(&["patch", "update"], &[""], &["nodes/status"]),
        Rule::new(&["patch", "update"], &[""], &["nodes"]),
        Rule::new(EVENTS, &["", "events.k8s.io"], &["events"]),
        Rule::new(READ, &[""], &["pods"]),
        Rule::new(&["create", "delete"], &[""], &["pods"]),
        Rule::new(&["patch", "update"], &[""], &["pods/status"]),
        Rule::new(&["create"], &[""], &["pods/eviction"]),
        Rule::new(&["get"], &[""], &["configmaps", "secrets"]),
        Rule::new(
            &["get"],
            &[""],
            &["persistentvolumeclaims", "persistentvolumes"],
        ),
        Rule::new(&["get"], &[""], &["endpoints"]),
        Rule::new(
            &["create", "get", "list", "watch"],
            &["certificates.k8s.io"],
            &["certificatesigningrequests"],
        ),
        Rule::new(
            &["create", "delete", "get", "patch", "update"],
            &["coordination.k8s.io"],
            &["leases"],
        ),
        Rule::new(&["get"], &["storage.k8s.io"], &["volumeattachments"]),
        Rule::new(&["create"], &[""], &["serviceaccounts/token"]),
        Rule::new(
            &["get", "patch", "update"],
            &[""],
            &["persistentvolumeclaims/status"],
        ),
        Rule::new(READ, &["storage.k8s.io"], &["csidrivers"]),
        Rule::new(
            &["create", "delete", "get", "patch", "update"],
            &["storage.k8s.io"],
            &["csinodes"],
        ),
        Rule::new(READ, &["node.k8s.io"], &["runtimeclasses"]),
    ]
}

fn scheduler_rules() -> Vec<Rule> {
    vec![
        Rule::new(EVENTS, &["", "events.k8s.io"], &["events"]),
        Rule::new(&["create"], &["coordination.k8s.io"], &["leases"]),
        Rule::new(&["get", "update"], &["coordination.k8s.io"], &["leases"])
            .names(&["kube-scheduler"]),
        Rule::new(READ, &[""], &["nodes"]),
        Rule::new(READ, &[""], &["namespaces"]),
        Rule::new(&["delete", "get", "list", "watch"], &[""], &["pods"]),
        Rule::new(&["create"], &[""], &["bindings", "pods/binding"]),
        Rule::new(&["patch", "update"], &[""], &["pods/status"]),
        Rule::new(READ, &[""], &["replicationcontrollers", "services"]),
        Rule::new(READ, &["apps", "extensions"], &["replicasets"]),
        Rule::new(READ, &["apps"], &["statefulsets"]),
        Rule::new(READ, &["policy"], &["poddisruptionbudgets"]),
        Rule::new(
            READ,
            &[""],
            &["persistentvolumeclaims", "persistentvolumes"],
        ),
        Rule::new(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        Rule::new(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews"],
        ),
        Rule::new(READ, &["storage.k8s.io"], &["csinodes"]),
        Rule::new(
            READ,
            &["storage.k8s.io"],
            &["csidrivers", "csistoragecapacities"],
        ),
    ]
}

fn controller_manager_rules() -> Vec<Rule> {
    vec![
        Rule::new(EVENTS, &["", "events.k8s.io"], &["events"]),
        Rule::new(&["create"], &["coordination.k8s.io"], &["leases"]),
        Rule::new(&["get", "update"], &["coordination.k8s.io"], &["leases"])
            .names(&["kube-controller-manager"]),
        Rule::new(&["create"], &[""], &["secrets", "serviceaccounts"]),
        Rule::new(&["delete"], &[""], &["secrets"]),
        Rule::new(
            &["get"],
            &[""],
            &["configmaps", "namespaces", "secrets", "serviceaccounts"],
        ),
        Rule::new(&["update"], &[""], &["secrets", "serviceaccounts"]),
        Rule::new(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        Rule::new(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews"],
        ),
        Rule::new(&["list", "watch"], &["*"], &["*"]),
        Rule::new(&["create"], &[""], &["serviceaccounts/token"]),
    ]
}

/// kinit runs every controller under the controller manager's own certificate (no per-controller
/// service accounts), so that identity needs the union of the controllers' permissions: garbage
/// collection and namespace deletion touch every resource, the workload controllers create pods
/// and replica sets, and the CSR controllers approve and sign node certificates.
fn kinit_controller_manager_rules() -> Vec<Rule> {
    vec![
        Rule::new(
            &[
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ],
            &["*"],
            &["*"],
        ),
        Rule::new(
            &["create"],
            &[""],
            &[
                "configmaps",
                "endpoints",
                "events",
                "persistentvolumeclaims",
                "pods",
                "pods/eviction",
                "secrets",
                "serviceaccounts",
                "serviceaccounts/token",
            ],
        ),
        Rule::new(
            &["create"],
            &["apps"],
            &["controllerrevisions", "replicasets"],
        ),
        Rule::new(&["create"], &["batch"], &["jobs"]),
        Rule::new(&["create"], &["discovery.k8s.io"], &["endpointslices"]),
        Rule::new(&["create"], &["coordination.k8s.io"], &["leases"]),
        Rule::new(&["create"], &["events.k8s.io"], &["events"]),
        Rule::new(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews"],
        ),
        Rule::new(&["approve", "sign"], &["certificates.k8s.io"], &["signers"]).names(&[
            "kubernetes.io/kube-apiserver-client",
            "kubernetes.io/kube-apiserver-client-kubelet",
            "kubernetes.io/kubelet-serving",
            "kubernetes.io/legacy-unknown",
        ]),
    ]
}

fn signer_approver(signer: &str) -> ClusterRole {
    cluster_role(
        &format!(
            "system:certificates.k8s.io:{}-approver",
            signer.trim_start_matches("kubernetes.io/")
        ),
        &[],
        vec![Rule::new(&["approve"], &["certificates.k8s.io"], &["signers"]).names(&[signer])],
    )
}

fn cluster_roles() -> Vec<ClusterRole> {
    fn aggregate(label: &str) -> [(&str, &str); 1] {
        [(label, "true")]
    }
    let mut roles = vec![
        cluster_role(
            "cluster-admin",
            &[],
            vec![
                Rule::new(&["*"], &["*"], &["*"]),
                Rule::urls(&["*"], &["*"]),
            ],
        ),
        aggregated_cluster_role("admin", &[], AGGREGATE_TO_ADMIN),
        aggregated_cluster_role("edit", &aggregate(AGGREGATE_TO_ADMIN), AGGREGATE_TO_EDIT),
        aggregated_cluster_role("view", &aggregate(AGGREGATE_TO_EDIT), AGGREGATE_TO_VIEW),
        cluster_role(
            "system:aggregate-to-admin",
            &aggregate(AGGREGATE_TO_ADMIN),
            admin_rules(),
        ),
        cluster_role(
            "system:aggregate-to-edit",
            &aggregate(AGGREGATE_TO_EDIT),
            edit_rules(),
        ),
        cluster_role(
            "system:aggregate-to-view",
            &aggregate(AGGREGATE_TO_VIEW),
            view_rules(),
        ),
        cluster_role(
            "system:discovery",
            &[],
            vec![Rule::urls(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        cluster_role(
            "system:basic-user",
            &[],
            vec![
                Rule::new(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                Rule::new(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
            ],
        ),
        cluster_role(
            "system:public-info-viewer",
            &[],
            vec![Rule::urls(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
        ),
        cluster_role(
            "system:monitoring",
            &[],
            vec![Rule::urls(
                &["get"],
                &[
                    "/healthz",
                    "/healthz/*",
                    "/livez",
                    "/livez/*",
                    "/metrics",
                    "/metrics/slis",
                    "/readyz",
                    "/readyz/*",
                ],
            )],
        ),
        cluster_role(
            "system:auth-delegator",
            &[],
            vec![
                Rule::new(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                Rule::new(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
            ],
        ),
        cluster_role(
            "system:service-account-issuer-discovery",
            &[],
            vec![Rule::urls(
                &["get"],
                &[
                    "/.well-known/openid-configuration",
                    "/.well-known/openid-configuration/",
                    "/openid/v1/jwks",
                    "/openid/v1/jwks/",
                ],
            )],
        ),
        cluster_role("system:node", &[], node_rules()),
        cluster_role(
            "system:node-bootstrapper",
            &[],
            vec![Rule::new(
                &["create", "get", "list", "watch"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests"],
            )],
        ),
        cluster_role(
            "system:node-proxier",
            &[],
            vec![
                Rule::new(&["list", "watch"], &[""], &["endpoints", "services"]),
                Rule::new(READ, &[""], &["nodes"]),
                Rule::new(EVENTS, &["", "events.k8s.io"], &["events"]),
                Rule::new(
                    &["list", "watch"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
            ],
        ),
        cluster_role(
            "system:kube-dns",
            &[],
            vec![
                Rule::new(&["list", "watch"], &[""], &["endpoints", "services"]),
                Rule::new(
                    &["list", "watch"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
            ],
        ),
        cluster_role("system:kube-scheduler", &[], scheduler_rules()),
        cluster_role(
            "system:volume-scheduler",
            &[],
            vec![
                Rule::new(
                    &["get", "list", "patch", "update", "watch"],
                    &[""],
                    &["persistentvolumes"],
                ),
                Rule::new(READ, &["storage.k8s.io"], &["storageclasses"]),
                Rule::new(
                    &["get", "list", "patch", "update", "watch"],
                    &[""],
                    &["persistentvolumeclaims"],
                ),
            ],
        ),
        cluster_role(
            "system:kube-controller-manager",
            &[],
            controller_manager_rules(),
        ),
        cluster_role(
            "kinit:controller-manager",
            &[],
            kinit_controller_manager_rules(),
        ),
        cluster_role(
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            &[],
            vec![Rule::new(
                &["create"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests/nodeclient"],
            )],
        ),
        cluster_role(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            &[],
            vec![Rule::new(
                &["create"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests/selfnodeclient"],
            )],
        ),
        signer_approver("kubernetes.io/kube-apiserver-client"),
        signer_approver("kubernetes.io/kube-apiserver-client-kubelet"),
        signer_approver("kubernetes.io/kubelet-serving"),
        signer_approver("kubernetes.io/legacy-unknown"),
        cluster_role(
            "kubeadm:get-nodes",
            &[],
            vec![Rule::new(&["get"], &[""], &["nodes"])],
        ),
    ];
    // Store admin/edit/view with their aggregated rules filled in, as Kubernetes' aggregation
    // controller would, so `kubectl describe clusterrole admin` shows them.
    let resolved = RbacAuthorizer::with_objects(roles.iter().cloned().map(RbacObject::ClusterRole));
    for role in roles.iter_mut().filter(|r| r.aggregation_rule.is_some()) {
        let name = role.metadata.name.clone().unwrap_or_default();
        role.rules = resolved.effective_cluster_role_rules(&name);
    }
    roles
}

fn cluster_role_bindings() -> Vec<ClusterRoleBinding> {
    let authenticated = || group(crate::GROUP_AUTHENTICATED);
    vec![
        binding(
            "cluster-admin",
            "cluster-admin",
            vec![group(crate::GROUP_MASTERS)],
        ),
        binding(
            "system:discovery",
            "system:discovery",
            vec![authenticated()],
        ),
        binding(
            "system:basic-user",
            "system:basic-user",
            vec![authenticated()],
        ),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            vec![authenticated(), group(crate::GROUP_UNAUTHENTICATED)],
        ),
        binding(
            "system:monitoring",
            "system:monitoring",
            vec![group("system:monitoring")],
        ),
        binding(
            "system:service-account-issuer-discovery",
            "system:service-account-issuer-discovery",
            vec![group(crate::GROUP_SERVICE_ACCOUNTS)],
        ),
        binding("system:node", "system:node", vec![]),
        binding(
            "system:node-proxier",
            "system:node-proxier",
            vec![user("system:kube-proxy")],
        ),
        binding(
            "system:kube-dns",
            "system:kube-dns",
            vec![service_account("kube-system", "kube-dns")],
        ),
        binding(
            "system:kube-scheduler",
            "system:kube-scheduler",
            vec![user("system:kube-scheduler")],
        ),
        binding(
            "system:volume-scheduler",
            "system:volume-scheduler",
            vec![user("system:kube-scheduler")],
        ),
        binding(
            "system:kube-controller-manager",
            "system:kube-controller-manager",
            vec![user("system:kube-controller-manager")],
        ),
        binding(
            "kinit:controller-manager",
            "kinit:controller-manager",
            vec![user("system:kube-controller-manager")],
        ),
        binding(
            "kubeadm:kubelet-bootstrap",
            "system:node-bootstrapper",
            vec![
                group(DEFAULT_NODE_TOKEN_GROUP),
                group(crate::GROUP_BOOTSTRAPPERS),
            ],
        ),
        binding(
            "kubeadm:node-autoapprove-bootstrap",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            vec![group(DEFAULT_NODE_TOKEN_GROUP)],
        ),
        binding(
            "kubeadm:node-autoapprove-certificate-rotation",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            vec![group(crate::GROUP_NODES)],
        ),
        binding(
            "kubeadm:get-nodes",
            "kubeadm:get-nodes",
            vec![group(DEFAULT_NODE_TOKEN_GROUP)],
        ),
        binding(
            "kubeadm:cluster-admins",
            "cluster-admin",
            vec![group("kubeadm:cluster-admins")],
        ),
    ]
}

fn roles() -> Vec<Role> {
    vec![
        Role {
            metadata: meta(
                "kubeadm:bootstrap-signer-clusterinfo",
                Some("kube-public"),
                &[],
            ),
            rules: Some(vec![Rule::new(&["get"], &[""], &["configmaps"])
                .names(&["cluster-info"])
                .build()]),
        },
        Role {
            metadata: meta(
                "extension-apiserver-authentication-reader",
                Some("kube-system"),
                &[],
            ),
            rules: Some(vec![Rule::new(READ, &[""], &["configmaps"])
                .names(&["extension-apiserver-authentication"])
                .build()]),
        },
    ]
}

fn role_bindings() -> Vec<RoleBinding> {
    vec![
        RoleBinding {
            metadata: meta(
                "kubeadm:bootstrap-signer-clusterinfo",
                Some("kube-public"),
                &[],
            ),
            role_ref: role_ref("Role", "kubeadm:bootstrap-signer-clusterinfo"),
            // kubeadm names the anonymous user; kinit answers anonymous requests with 401, so
            // every authenticated user (joining nodes with a bootstrap token) may read it too.
            subjects: Some(vec![
                user(crate::USER_ANONYMOUS),
                group(crate::GROUP_AUTHENTICATED),
            ]),
        },
        RoleBinding {
            metadata: meta(
                "system::extension-apiserver-authentication-reader",
                Some("kube-system"),
                &[],
            ),
            role_ref: role_ref("Role", "extension-apiserver-authentication-reader"),
            subjects: Some(vec![
                user("system:kube-controller-manager"),
                user("system:kube-scheduler"),
            ]),
        },
    ]
}

/// The default policy objects (Kubernetes' bootstrap policy + kubeadm's additions + kinit's
/// controller-manager role). See [`DefaultPolicy`].
pub fn default_policy() -> DefaultPolicy {
    DefaultPolicy {
        cluster_roles: cluster_roles(),
        cluster_role_bindings: cluster_role_bindings(),
        roles: roles(),
        role_bindings: role_bindings(),
    }
}

/// Rules of a default cluster role, for tests and documentation.
#[cfg(test)]
pub(crate) fn default_cluster_role_rules(
    name: &str,
) -> Vec<k8s_openapi::api::rbac::v1::PolicyRule> {
    default_policy()
        .cluster_roles
        .into_iter()
        .find(|r| r.metadata.name.as_deref() == Some(name))
        .and_then(|r| r.rules)
        .unwrap_or_default()
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
