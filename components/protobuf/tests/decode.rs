//! Bodies built with the `k8s-pb` prost types and framed as client-go frames them (magic +
//! `runtime.Unknown`), decoded generically and compared with the JSON a JSON client sends.

use k8s_pb::api::{
    apps::v1 as apps, authentication::v1 as authn, authorization::v1 as authz,
    autoscaling::v1 as autoscaling, batch::v1 as batch, coordination::v1 as coordination,
    core::v1 as core, networking::v1 as networking, policy::v1 as policy,
};
use k8s_pb::apimachinery::pkg::api::resource::Quantity;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::RawExtension;
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use kinit_protobuf::{decode, envelope, ProtobufError};
use prost::Message;
use serde_json::{json, Value};

fn encode<M: Message>(api_version: &str, kind: &str, msg: &M) -> Vec<u8> {
    envelope(api_version, kind, &msg.encode_to_vec())
}

fn roundtrip<M: Message>(api_version: &str, kind: &str, msg: &M) -> Value {
    let d = decode(&encode(api_version, kind, msg)).unwrap();
    assert_eq!(d.api_version, api_version);
    assert_eq!(d.kind, kind);
    d.object
}

fn meta_named(name: &str) -> meta::ObjectMeta {
    meta::ObjectMeta {
        name: Some(name.into()),
        creation_timestamp: Some(meta::Time::default()),
        labels: [("app".to_string(), name.to_string())].into(),
        ..Default::default()
    }
}

/// ObjectMeta as Go's marshaller writes it: every non-pointer field, zero or not.
fn go_meta(name: &str, namespace: &str) -> meta::ObjectMeta {
    meta::ObjectMeta {
        name: Some(name.into()),
        generate_name: Some(String::new()),
        namespace: Some(namespace.into()),
        self_link: Some(String::new()),
        uid: Some(String::new()),
        resource_version: Some(String::new()),
        generation: Some(0),
        creation_timestamp: Some(meta::Time::default()),
        ..Default::default()
    }
}

#[test]
fn deployment_like_kubectl_create() {
    let container = core::Container {
        name: Some("nginx".into()),
        image: Some("nginx:1.27".into()),
        resources: Some(core::ResourceRequirements::default()),
        stdin: Some(false),
        ports: vec![core::ContainerPort {
            container_port: Some(80),
            host_port: Some(0),
            ..Default::default()
        }],
        ..Default::default()
    };
    let d = apps::Deployment {
        metadata: Some(meta_named("web")),
        spec: Some(apps::DeploymentSpec {
            replicas: Some(2),
            selector: Some(meta::LabelSelector {
                match_labels: [("app".to_string(), "web".to_string())].into(),
                ..Default::default()
            }),
            template: Some(core::PodTemplateSpec {
                metadata: Some(meta_named("web")),
                spec: Some(core::PodSpec {
                    containers: vec![container],
                    host_network: Some(false),
                    ..Default::default()
                }),
            }),
            strategy: Some(apps::DeploymentStrategy::default()),
            min_ready_seconds: Some(0),
            paused: Some(false),
            ..Default::default()
        }),
        status: Some(apps::DeploymentStatus {
            replicas: Some(0),
            ..Default::default()
        }),
    };
    let v = roundtrip("apps/v1", "Deployment", &d);
    assert_eq!(v["kind"], "Deployment");
    assert_eq!(v["metadata"]["name"], "web");
    assert_eq!(v["spec"]["replicas"], 2);
    assert_eq!(v["spec"]["selector"]["matchLabels"]["app"], "web");
    assert_eq!(
        v["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.27"
    );
    assert_eq!(
        v["spec"]["template"]["spec"]["containers"][0]["ports"][0],
        json!({"containerPort": 80})
    );
    assert!(v["spec"].get("minReadySeconds").is_none());
    assert!(v.get("status").is_none());
    // the whole object, as `kubectl create deployment -o json` writes it (nulls left out)
    assert_eq!(
        v,
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"name": "web", "labels": {"app": "web"}},
                    "spec": {"containers": [{
                        "name": "nginx", "image": "nginx:1.27", "resources": {},
                        "ports": [{"containerPort": 80}]
                    }]}
                },
                "strategy": {}
            }
        })
    );
}

#[test]
fn go_zero_values_are_not_invented() {
    // what client-go writes for a new Deployment with replicas 0: every non-pointer field
    let d = apps::Deployment {
        metadata: Some(go_meta("zero", "default")),
        spec: Some(apps::DeploymentSpec {
            replicas: Some(0),
            selector: None,
            template: Some(core::PodTemplateSpec {
                metadata: Some(go_meta("", "")),
                spec: Some(core::PodSpec::default()),
            }),
            strategy: Some(apps::DeploymentStrategy {
                r#type: Some(String::new()),
                rolling_update: None,
            }),
            min_ready_seconds: Some(0),
            paused: Some(false),
            ..Default::default()
        }),
        status: Some(apps::DeploymentStatus {
            observed_generation: Some(0),
            replicas: Some(0),
            updated_replicas: Some(0),
            ready_replicas: Some(0),
            available_replicas: Some(0),
            unavailable_replicas: Some(0),
            ..Default::default()
        }),
    };
    let v = roundtrip("apps/v1", "Deployment", &d);
    assert_eq!(
        v,
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "zero", "namespace": "default"},
            "spec": {"replicas": 0, "template": {"metadata": {}, "spec": {}}, "strategy": {}}
        })
    );
    // a set status (a /status update) is kept
    let mut d = d;
    if let Some(s) = d.status.as_mut() {
        s.ready_replicas = Some(3);
    }
    let v = roundtrip("apps/v1", "Deployment", &d);
    assert_eq!(v["status"], json!({"readyReplicas": 3}));
}

#[test]
fn secrets_and_access_reviews() {
    let s = core::Secret {
        metadata: Some(meta_named("s")),
        data: [("k".to_string(), b"v".to_vec())].into(),
        r#type: Some("Opaque".into()),
        ..Default::default()
    };
    let v = roundtrip("v1", "Secret", &s);
    assert_eq!(v["data"]["k"], "dg==");
    let r = authz::SelfSubjectAccessReview {
        metadata: Some(meta::ObjectMeta::default()),
        spec: Some(authz::SelfSubjectAccessReviewSpec {
            resource_attributes: Some(authz::ResourceAttributes {
                verb: Some("list".into()),
                resource: Some("pods".into()),
                namespace: Some("default".into()),
                ..Default::default()
            }),
            non_resource_attributes: None,
        }),
        status: None,
    };
    let v = roundtrip("authorization.k8s.io/v1", "SelfSubjectAccessReview", &r);
    assert_eq!(
        v["spec"]["resourceAttributes"],
        json!({"verb": "list", "resource": "pods", "namespace": "default"})
    );
}

fn len_field(tag: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

#[test]
fn unknown_fields_are_refused_not_dropped() {
    // a container carrying a field number (999) that Container does not have
    let mut container = core::Container {
        name: Some("a".into()),
        image: Some("b".into()),
        ..Default::default()
    }
    .encode_to_vec();
    prost::encoding::encode_key(999, prost::encoding::WireType::Varint, &mut container);
    prost::encoding::encode_varint(1, &mut container);
    let pod_spec = len_field(2, &container); // PodSpec.containers
    let template = len_field(2, &pod_spec); // PodTemplateSpec.spec
    let job_spec = len_field(6, &template); // JobSpec.template
    let mut job = len_field(1, &meta_named("j").encode_to_vec()); // Job.metadata
    job.extend(len_field(2, &job_spec)); // Job.spec
    let err = decode(&envelope("batch/v1", "Job", &job)).unwrap_err();
    assert!(err.is_unsupported(), "{err}");
    assert!(
        err.to_string().contains("spec.template.spec.containers[0]"),
        "{err}"
    );
    assert!(err.to_string().contains("send the object as JSON"), "{err}");
    // the same Job without the unknown field decodes, and a Job is a batch/v1 kind
    let good = batch::Job {
        metadata: Some(meta_named("j")),
        ..Default::default()
    };
    assert_eq!(roundtrip("batch/v1", "Job", &good)["metadata"]["name"], "j");

    let err = decode(b"{}").unwrap_err();
    assert_eq!(err, ProtobufError::MissingMagic);
    assert!(!err.is_unsupported());
    let err = decode(&envelope("example.com/v1", "Widget", &[])).unwrap_err();
    assert!(err.is_unsupported(), "{err}");
    assert!(err.to_string().contains("Widget (example.com/v1)"), "{err}");
    // the envelope itself is not a kind
    assert!(decode(&envelope("v1", "Unknown", &[]))
        .unwrap_err()
        .is_unsupported());
    // garbage object bytes are a bad request
    let err = decode(&envelope("v1", "Pod", &[0x0a, 0xff])).unwrap_err();
    assert!(matches!(err, ProtobufError::Malformed { .. }), "{err}");
}

#[test]
fn helm_uninstall_delete_options() {
    // helm 3 `uninstall`: metav1.DeleteOptions{PropagationPolicy: &Background}, apiVersion v1
    let o = meta::DeleteOptions {
        propagation_policy: Some("Background".into()),
        ..Default::default()
    };
    assert_eq!(
        roundtrip("v1", "DeleteOptions", &o),
        json!({"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"})
    );
    // registered in every group version
    let o = meta::DeleteOptions {
        grace_period_seconds: Some(0),
        dry_run: vec!["All".into()],
        preconditions: Some(meta::Preconditions {
            uid: Some("u-1".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    assert_eq!(
        roundtrip("apps/v1", "DeleteOptions", &o),
        json!({"apiVersion": "apps/v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
               "dryRun": ["All"], "preconditions": {"uid": "u-1"}})
    );
    assert_eq!(
        roundtrip("meta.k8s.io/v1", "DeleteOptions", &o)["gracePeriodSeconds"],
        0
    );
}

#[test]
fn scale_eviction_and_token_request() {
    let s = autoscaling::Scale {
        metadata: Some(go_meta("web", "default")),
        spec: Some(autoscaling::ScaleSpec { replicas: Some(3) }),
        status: Some(autoscaling::ScaleStatus {
            replicas: Some(0),
            selector: Some(String::new()),
        }),
    };
    assert_eq!(
        roundtrip("autoscaling/v1", "Scale", &s),
        json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
               "metadata": {"name": "web", "namespace": "default"}, "spec": {"replicas": 3}})
    );
    let e = policy::Eviction {
        metadata: Some(go_meta("pod-1", "default")),
        delete_options: Some(meta::DeleteOptions {
            grace_period_seconds: Some(0),
            ..Default::default()
        }),
    };
    assert_eq!(
        roundtrip("policy/v1", "Eviction", &e),
        json!({"apiVersion": "policy/v1", "kind": "Eviction",
               "metadata": {"name": "pod-1", "namespace": "default"},
               "deleteOptions": {"gracePeriodSeconds": 0}})
    );
    let t = authn::TokenRequest {
        metadata: Some(go_meta("default", "kube-system")),
        spec: Some(authn::TokenRequestSpec {
            audiences: vec!["https://kubernetes.default.svc".into()],
            expiration_seconds: Some(3600),
            bound_object_ref: Some(authn::BoundObjectReference {
                kind: Some("Pod".into()),
                api_version: Some("v1".into()),
                name: Some("p".into()),
                u_id: Some("uid-1".into()),
            }),
        }),
        status: Some(authn::TokenRequestStatus {
            token: Some(String::new()),
            expiration_timestamp: Some(meta::Time::default()),
        }),
    };
    assert_eq!(
        roundtrip("authentication.k8s.io/v1", "TokenRequest", &t),
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
               "metadata": {"name": "default", "namespace": "kube-system"},
               "spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 3600,
                        "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "p", "uid": "uid-1"}}})
    );
}

#[test]
fn review_kinds() {
    let r = authz::SubjectAccessReview {
        metadata: Some(meta::ObjectMeta::default()),
        spec: Some(authz::SubjectAccessReviewSpec {
            user: Some("alice".into()),
            groups: vec!["dev".into()],
            extra: [(
                "scopes".to_string(),
                authz::ExtraValue {
                    items: vec!["a".into(), "b".into()],
                },
            )]
            .into(),
            non_resource_attributes: Some(authz::NonResourceAttributes {
                path: Some("/healthz".into()),
                verb: Some("get".into()),
            }),
            ..Default::default()
        }),
        status: Some(authz::SubjectAccessReviewStatus {
            allowed: Some(false),
            ..Default::default()
        }),
    };
    assert_eq!(
        roundtrip("authorization.k8s.io/v1", "SubjectAccessReview", &r),
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "metadata": {},
               "spec": {"user": "alice", "groups": ["dev"], "extra": {"scopes": ["a", "b"]},
                        "nonResourceAttributes": {"path": "/healthz", "verb": "get"}}})
    );
    let l = authz::LocalSubjectAccessReview {
        metadata: Some(go_meta("", "ns")),
        spec: Some(authz::SubjectAccessReviewSpec {
            user: Some("bob".into()),
            resource_attributes: Some(authz::ResourceAttributes {
                verb: Some("get".into()),
                resource: Some("pods".into()),
                namespace: Some("ns".into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    };
    let v = roundtrip("authorization.k8s.io/v1", "LocalSubjectAccessReview", &l);
    assert_eq!(
        v["spec"]["resourceAttributes"],
        json!({"verb": "get", "resource": "pods", "namespace": "ns"})
    );
    assert_eq!(v["metadata"], json!({"namespace": "ns"}));
    let t = authn::TokenReview {
        metadata: Some(meta::ObjectMeta::default()),
        spec: Some(authn::TokenReviewSpec {
            token: Some("abc".into()),
            audiences: vec![],
        }),
        status: None,
    };
    assert_eq!(
        roundtrip("authentication.k8s.io/v1", "TokenReview", &t),
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "metadata": {},
               "spec": {"token": "abc"}})
    );
    let s = authn::SelfSubjectReview {
        metadata: Some(meta::ObjectMeta::default()),
        status: Some(authn::SelfSubjectReviewStatus {
            user_info: Some(authn::UserInfo::default()),
        }),
    };
    assert_eq!(
        roundtrip("authentication.k8s.io/v1", "SelfSubjectReview", &s),
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview", "metadata": {}})
    );
    let s = authz::SelfSubjectRulesReview {
        metadata: Some(meta::ObjectMeta::default()),
        spec: Some(authz::SelfSubjectRulesReviewSpec {
            namespace: Some("default".into()),
        }),
        status: None,
    };
    assert_eq!(
        roundtrip("authorization.k8s.io/v1", "SelfSubjectRulesReview", &s)["spec"],
        json!({"namespace": "default"})
    );
}

#[test]
fn pvc_with_empty_storage_class_keeps_it() {
    let pvc = core::PersistentVolumeClaim {
        metadata: Some(go_meta("data", "default")),
        spec: Some(core::PersistentVolumeClaimSpec {
            access_modes: vec!["ReadWriteOnce".into()],
            resources: Some(core::VolumeResourceRequirements {
                requests: [(
                    "storage".to_string(),
                    Quantity {
                        string: Some("1Gi".into()),
                    },
                )]
                .into(),
                ..Default::default()
            }),
            storage_class_name: Some(String::new()),
            volume_name: Some(String::new()),
            ..Default::default()
        }),
        status: None,
    };
    assert_eq!(
        roundtrip("v1", "PersistentVolumeClaim", &pvc),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": "data", "namespace": "default"},
               "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                        "storageClassName": ""}})
    );
}

#[test]
fn kinds_the_old_mapping_refused() {
    // StatefulSet with an inlined volume source and a claim template
    let ss = apps::StatefulSet {
        metadata: Some(go_meta("db", "default")),
        spec: Some(apps::StatefulSetSpec {
            replicas: Some(1),
            service_name: Some("db".into()),
            template: Some(core::PodTemplateSpec {
                metadata: None,
                spec: Some(core::PodSpec {
                    containers: vec![core::Container {
                        name: Some("db".into()),
                        image: Some("postgres".into()),
                        liveness_probe: Some(core::Probe {
                            handler: Some(core::ProbeHandler {
                                tcp_socket: Some(core::TcpSocketAction {
                                    port: Some(IntOrString {
                                        r#type: Some(0),
                                        int_val: Some(5432),
                                        str_val: None,
                                    }),
                                    host: Some(String::new()),
                                }),
                                ..Default::default()
                            }),
                            period_seconds: Some(10),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    volumes: vec![core::Volume {
                        name: Some("cfg".into()),
                        volume_source: Some(core::VolumeSource {
                            config_map: Some(core::ConfigMapVolumeSource {
                                local_object_reference: Some(core::LocalObjectReference {
                                    name: Some("db-cfg".into()),
                                }),
                                default_mode: Some(0o644),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                    }],
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
        status: None,
    };
    let v = roundtrip("apps/v1", "StatefulSet", &ss);
    let pod = &v["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"][0],
        json!({"name": "cfg", "configMap": {"name": "db-cfg", "defaultMode": 420}})
    );
    assert_eq!(
        pod["containers"][0]["livenessProbe"],
        json!({"tcpSocket": {"port": 5432}, "periodSeconds": 10})
    );
    assert_eq!(v["spec"]["serviceName"], "db");

    let ing = networking::Ingress {
        metadata: Some(go_meta("web", "default")),
        spec: Some(networking::IngressSpec {
            ingress_class_name: Some("nginx".into()),
            rules: vec![networking::IngressRule {
                host: Some("example.test".into()),
                ingress_rule_value: Some(networking::IngressRuleValue {
                    http: Some(networking::HttpIngressRuleValue {
                        paths: vec![networking::HttpIngressPath {
                            path: Some("/".into()),
                            path_type: Some("Prefix".into()),
                            backend: Some(networking::IngressBackend {
                                service: Some(networking::IngressServiceBackend {
                                    name: Some("web".into()),
                                    port: Some(networking::ServiceBackendPort {
                                        name: Some(String::new()),
                                        number: Some(80),
                                    }),
                                }),
                                resource: None,
                            }),
                        }],
                    }),
                }),
            }],
            ..Default::default()
        }),
        status: Some(networking::IngressStatus {
            load_balancer: Some(networking::IngressLoadBalancerStatus::default()),
        }),
    };
    let v = roundtrip("networking.k8s.io/v1", "Ingress", &ing);
    assert_eq!(
        v["spec"],
        json!({"ingressClassName": "nginx", "rules": [{"host": "example.test", "http": {"paths": [{
            "path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]})
    );
    // a zero status (`{"loadBalancer": {}}` in Go's JSON) is left out
    assert!(v.get("status").is_none());

    let np = networking::NetworkPolicy {
        metadata: Some(go_meta("deny", "default")),
        spec: Some(networking::NetworkPolicySpec {
            pod_selector: Some(meta::LabelSelector::default()),
            ingress: vec![networking::NetworkPolicyIngressRule {
                ports: vec![networking::NetworkPolicyPort {
                    protocol: Some("TCP".into()),
                    port: Some(IntOrString {
                        r#type: Some(1),
                        int_val: Some(0),
                        str_val: Some("http".into()),
                    }),
                    end_port: None,
                }],
                from: vec![],
            }],
            policy_types: vec!["Ingress".into()],
            ..Default::default()
        }),
    };
    assert_eq!(
        roundtrip("networking.k8s.io/v1", "NetworkPolicy", &np)["spec"],
        json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "TCP", "port": "http"}]}],
               "policyTypes": ["Ingress"]})
    );

    let pdb = policy::PodDisruptionBudget {
        metadata: Some(go_meta("pdb", "default")),
        spec: Some(policy::PodDisruptionBudgetSpec {
            min_available: Some(IntOrString {
                r#type: Some(1),
                int_val: Some(0),
                str_val: Some("50%".into()),
            }),
            selector: Some(meta::LabelSelector {
                match_expressions: vec![meta::LabelSelectorRequirement {
                    key: Some("app".into()),
                    operator: Some("In".into()),
                    values: vec!["web".into()],
                }],
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    };
    assert_eq!(
        roundtrip("policy/v1", "PodDisruptionBudget", &pdb)["spec"],
        json!({"minAvailable": "50%", "selector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]}})
    );
}

#[test]
fn times_bytes_and_embedded_objects() {
    let lease = coordination::Lease {
        metadata: Some(go_meta("node-1", "kube-node-lease")),
        spec: Some(coordination::LeaseSpec {
            holder_identity: Some("node-1".into()),
            lease_duration_seconds: Some(40),
            renew_time: Some(meta::MicroTime {
                seconds: Some(1_700_000_000),
                nanos: Some(123_456_789),
            }),
            ..Default::default()
        }),
    };
    assert_eq!(
        roundtrip("coordination.k8s.io/v1", "Lease", &lease)["spec"],
        json!({"holderIdentity": "node-1", "leaseDurationSeconds": 40, "renewTime": "2023-11-14T22:13:20.123456Z"})
    );
    let mut m = go_meta("cm", "default");
    m.deletion_timestamp = Some(meta::Time {
        seconds: Some(1_700_000_000),
        nanos: Some(0),
    });
    m.managed_fields = vec![meta::ManagedFieldsEntry {
        manager: Some("kubectl".into()),
        operation: Some("Update".into()),
        fields_type: Some("FieldsV1".into()),
        fields_v1: Some(meta::FieldsV1 {
            raw: Some(br#"{"f:data":{}}"#.to_vec()),
        }),
        ..Default::default()
    }];
    let cm = core::ConfigMap {
        metadata: Some(m),
        binary_data: [("b".to_string(), vec![0, 1, 2])].into(),
        immutable: Some(false),
        ..Default::default()
    };
    let v = roundtrip("v1", "ConfigMap", &cm);
    assert_eq!(v["metadata"]["deletionTimestamp"], "2023-11-14T22:13:20Z");
    assert_eq!(
        v["metadata"]["managedFields"],
        json!([{"manager": "kubectl", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {}}}])
    );
    assert_eq!(v["binaryData"], json!({"b": "AAEC"}));
    assert_eq!(v["immutable"], false);

    // ControllerRevision data: JSON as is, or a protobuf object decoded in turn
    let json_rev = apps::ControllerRevision {
        metadata: Some(go_meta("r1", "default")),
        data: Some(RawExtension {
            raw: Some(br#"{"spec":{"template":{}}}"#.to_vec()),
        }),
        revision: Some(1),
    };
    assert_eq!(
        roundtrip("apps/v1", "ControllerRevision", &json_rev)["data"],
        json!({"spec": {"template": {}}})
    );
    let inner = encode(
        "v1",
        "ConfigMap",
        &core::ConfigMap {
            metadata: Some(go_meta("in", "")),
            ..Default::default()
        },
    );
    let pb_rev = apps::ControllerRevision {
        data: Some(RawExtension { raw: Some(inner) }),
        ..json_rev.clone()
    };
    assert_eq!(
        roundtrip("apps/v1", "ControllerRevision", &pb_rev)["data"],
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "in"}})
    );
    let bad = apps::ControllerRevision {
        data: Some(RawExtension {
            raw: Some(b"not: json".to_vec()),
        }),
        ..json_rev
    };
    let err = decode(&encode("apps/v1", "ControllerRevision", &bad)).unwrap_err();
    assert!(
        matches!(&err, ProtobufError::InvalidValue { path, .. } if path == "data"),
        "{err}"
    );
}

#[test]
fn services_with_int_or_string_ports() {
    let s = core::Service {
        metadata: Some(go_meta("web", "default")),
        spec: Some(core::ServiceSpec {
            ports: vec![core::ServicePort {
                name: Some("http".into()),
                protocol: Some("TCP".into()),
                port: Some(80),
                target_port: Some(IntOrString {
                    r#type: Some(0),
                    int_val: Some(8080),
                    str_val: Some(String::new()),
                }),
                node_port: Some(0),
                ..Default::default()
            }],
            selector: [("app".to_string(), "web".to_string())].into(),
            cluster_ip: Some(String::new()),
            r#type: Some("ClusterIP".into()),
            session_affinity: Some(String::new()),
            ..Default::default()
        }),
        status: Some(core::ServiceStatus {
            load_balancer: Some(core::LoadBalancerStatus::default()),
            conditions: vec![],
        }),
    };
    let v = roundtrip("v1", "Service", &s);
    assert_eq!(
        v["spec"],
        json!({"ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}],
               "selector": {"app": "web"}, "type": "ClusterIP"})
    );
    assert!(v.get("status").is_none());
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    const KINDS: &[(&str, &str)] = &[
        ("v1", "Pod"),
        ("apps/v1", "Deployment"),
        ("v1", "DeleteOptions"),
        ("batch/v1", "CronJob"),
        ("apps/v1", "ControllerRevision"),
        ("authorization.k8s.io/v1", "SubjectAccessReview"),
        ("v1", "Service"),
        ("coordination.k8s.io/v1", "Lease"),
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&body);
            let mut framed = MAGIC_PREFIX.to_vec();
            framed.extend(&body);
            let _ = decode(&framed);
        }

        #[test]
        fn arbitrary_objects_never_panic(
            which in 0..KINDS.len(),
            raw in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let (api_version, kind) = KINDS[which];
            if let Ok(d) = decode(&envelope(api_version, kind, &raw)) {
                prop_assert_eq!(&d.object["kind"], kind);
            }
        }

        #[test]
        fn mutated_real_bodies_never_panic(at in 0usize..4096, byte in any::<u8>()) {
            let mut body = encode("apps/v1", "StatefulSet", &apps::StatefulSet {
                metadata: Some(go_meta("db", "default")),
                spec: Some(apps::StatefulSetSpec {
                    replicas: Some(1),
                    template: Some(core::PodTemplateSpec {
                        metadata: Some(go_meta("", "")),
                        spec: Some(core::PodSpec {
                            containers: vec![core::Container { name: Some("c".into()), ..Default::default() }],
                            ..Default::default()
                        }),
                    }),
                    ..Default::default()
                }),
                status: None,
            });
            let i = at % body.len();
            body[i] = byte;
            let _ = decode(&body);
        }
    }

    const MAGIC_PREFIX: &[u8] = kinit_protobuf::MAGIC;
}
