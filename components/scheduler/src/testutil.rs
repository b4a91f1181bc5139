//! Builders for nodes and pods in unit tests.

use serde_json::{json, Value};

use k8s_openapi::api::core::v1::{Node, Pod};

pub struct NodeBuilder(Value);

pub fn node(name: &str) -> NodeBuilder {
    NodeBuilder(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {},
        "status": {
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    }))
}

impl NodeBuilder {
    pub fn cpu(mut self, q: &str) -> Self {
        self.0["status"]["allocatable"]["cpu"] = json!(q);
        self
    }
    pub fn memory(mut self, q: &str) -> Self {
        self.0["status"]["allocatable"]["memory"] = json!(q);
        self
    }
    pub fn pods(mut self, n: i64) -> Self {
        self.0["status"]["allocatable"]["pods"] = json!(n.to_string());
        self
    }
    pub fn allocatable(mut self, name: &str, q: &str) -> Self {
        self.0["status"]["allocatable"][name] = json!(q);
        self
    }
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.0["metadata"]["labels"][k] = json!(v);
        self
    }
    pub fn taint(mut self, key: &str, value: &str, effect: &str) -> Self {
        let taints = self.0["spec"]
            .as_object_mut()
            .unwrap()
            .entry("taints")
            .or_insert(json!([]));
        taints
            .as_array_mut()
            .unwrap()
            .push(json!({"key": key, "value": value, "effect": effect}));
        self
    }
    pub fn unschedulable(mut self) -> Self {
        self.0["spec"]["unschedulable"] = json!(true);
        self
    }
    pub fn not_ready(mut self) -> Self {
        self.0["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
        self
    }
    pub fn build(self) -> Node {
        serde_json::from_value(self.0).unwrap()
    }
}

pub struct PodBuilder(Value);

pub fn pod(name: &str) -> PodBuilder {
    PodBuilder(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
        "spec": {"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {}}}]}
    }))
}

impl PodBuilder {
    fn requests(&mut self) -> &mut Value {
        &mut self.0["spec"]["containers"][0]["resources"]["requests"]
    }
    pub fn cpu(mut self, q: &str) -> Self {
        self.requests()["cpu"] = json!(q);
        self
    }
    pub fn memory(mut self, q: &str) -> Self {
        self.requests()["memory"] = json!(q);
        self
    }
    pub fn request(mut self, name: &str, q: &str) -> Self {
        self.requests()[name] = json!(q);
        self
    }
    pub fn host_port(mut self, port: i32) -> Self {
        self.0["spec"]["containers"][0]["ports"] =
            json!([{"containerPort": port, "hostPort": port}]);
        self
    }
    pub fn owner(mut self, uid: &str) -> Self {
        self.0["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
            "uid": uid, "controller": true
        }]);
        self
    }
    pub fn node_name(mut self, n: &str) -> Self {
        self.0["spec"]["nodeName"] = json!(n);
        self
    }
    pub fn node_selector(mut self, k: &str, v: &str) -> Self {
        self.0["spec"]["nodeSelector"][k] = json!(v);
        self
    }
    pub fn toleration(mut self, t: Value) -> Self {
        let spec = self.0["spec"].as_object_mut().unwrap();
        spec.entry("tolerations")
            .or_insert(json!([]))
            .as_array_mut()
            .unwrap()
            .push(t);
        self
    }
    pub fn node_affinity(mut self, a: Value) -> Self {
        self.0["spec"]["affinity"] = json!({ "nodeAffinity": a });
        self
    }
    pub fn build(self) -> Pod {
        serde_json::from_value(self.0).unwrap()
    }
}
