//! Cluster networking on the lab, checked from admin-box pods and from the admin box (this
//! machine), once per pod-network mode:
//!
//! - a pod reaches pods on the other worker by IP, keeping its own address (no NAT), and a node
//!   by its address (still its own address); traffic leaving the cluster is masqueraded;
//! - a ClusterIP Service answers from every node and from pods on every node and spreads over its
//!   endpoints; a NodePort answers on every node address; a pod reaches its own Service
//!   (hairpin); a hostPort answers on its node's address;
//! - cluster DNS: `kubernetes.default`, a Service's short and full name, a headless Service (all
//!   ready pod IPs), a StatefulSet pod's stable name, an ExternalName, an external name forwarded
//!   to the lab's upstream, NXDOMAIN for a missing Service;
//! - a pod made unready leaves the rotation; a Service scaled to zero refuses connections;
//! - once: an edit of the `coredns` ConfigMap takes effect without a restart, the DNS metrics
//!   listener wants a token allowed to get `/metrics` (401 without, 403 for another account),
//!   `kubectl port-forward` and `kubectl run -i` (attach).
//!
//! Figures printed: pod-to-pod vs node-to-node throughput across nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use kinit_e2e::{eventually, Kubectl};
use kinit_executor::{Host, SshHost};
use serde_json::Value;

/// The name the lab's upstream DNS servers answer (TEST-NET addresses, never contacted).
pub const EXTERNAL_NAME: &str = "external.kinit.test";
/// What the upstream on port 53 answers for [`EXTERNAL_NAME`].
pub const EXTERNAL_ADDRESS: &str = "192.0.2.10";
/// What the second upstream (port 5353, used after the Corefile edit) answers.
pub const EDITED_ADDRESS: &str = "192.0.2.20";

/// One lab node as the checks see it.
pub struct Node<'a> {
    /// Node name (`node1`…).
    pub name: String,
    /// Its lab address.
    pub ip: String,
    /// SSH to it.
    pub ssh: &'a SshHost,
}

/// The cluster under test.
pub struct Net<'a> {
    /// kubectl with the admin kubeconfig.
    pub kubectl: &'a Kubectl,
    /// Every node (node1 is the control plane).
    pub nodes: Vec<Node<'a>>,
    /// Tag of kinit's images.
    pub tag: String,
}

/// Stand-ins for the site's DNS servers on the lab bridge (the lab hosts' resolv.conf names
/// 10.88.0.1): port 53 answers [`EXTERNAL_NAME`] with [`EXTERNAL_ADDRESS`], port 5353 with
/// [`EDITED_ADDRESS`]; everything else is NXDOMAIN. TTL 1 s, so caches forget quickly.
pub struct Upstream {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Upstream {
    /// Starts both servers on `gateway` (the lab bridge address).
    pub fn start(gateway: &str) -> Upstream {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (port, address) in [(53, EXTERNAL_ADDRESS), (5353, EDITED_ADDRESS)] {
            let socket = UdpSocket::bind((gateway, port)).unwrap_or_else(|e| {
                panic!("the lab upstream DNS cannot bind {gateway}:{port}: {e}")
            });
            socket
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let stop = stop.clone();
            let address: std::net::Ipv4Addr = address.parse().unwrap();
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    if let Some(answer) = upstream_answer(&buf[..n], address) {
                        let _ = socket.send_to(&answer, from);
                    }
                }
            }));
        }
        Upstream { stop, threads }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn upstream_answer(query: &[u8], address: std::net::Ipv4Addr) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let question = request.queries.first()?.clone();
    let mut response = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_query(question.clone());
    let name = question.name().to_ascii();
    if name
        .trim_end_matches('.')
        .eq_ignore_ascii_case(EXTERNAL_NAME)
    {
        if question.query_type() == RecordType::A {
            response.add_answer(Record::from_rdata(
                question.name().clone(),
                1,
                RData::A(A(address)),
            ));
        }
    } else {
        response.metadata.response_code = ResponseCode::NXDomain;
    }
    response.to_vec().ok()
}

/// The objects the checks use; `TAG` is the image tag.
const MANIFESTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: demo}
spec:
  selector: {app: demo}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: demo-np}
spec:
  type: NodePort
  selector: {app: demo}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: demo-headless}
spec:
  clusterIP: None
  selector: {app: demo}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec:
  type: ExternalName
  externalName: external.kinit.test
---
apiVersion: v1
kind: Service
metadata: {name: hairpin}
spec:
  selector: {role: client, node: node2}
  ports: [{name: web, port: 8000, targetPort: web}]
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: http, port: 8080}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  replicas: 1
  serviceName: db
  selector:
    matchLabels: {app: db}
  template:
    metadata:
      labels: {app: db}
    spec:
      containers:
      - name: db
        image: kinit.local/demoapp:TAG
        imagePullPolicy: IfNotPresent
        readinessProbe:
          httpGet: {path: /healthz, port: 8080}
          periodSeconds: 1
"#;

/// Pods pinned to nodes: an admin box per node (serving its hostname on :8000 with busybox
/// httpd), host-network admin boxes on the workers, a host-network demo app on node3 and a
/// hostPort demo app on node2.
fn pinned_pods(tag: &str) -> String {
    let mut out = String::new();
    for node in ["node1", "node2", "node3"] {
        out.push_str(&format!(
            r#"---
apiVersion: v1
kind: Pod
metadata:
  name: client-{node}
  labels: {{role: client, node: {node}}}
spec:
  nodeName: {node}
  tolerations: [{{operator: Exists}}]
  terminationGracePeriodSeconds: 1
  containers:
  - name: box
    image: kinit.local/admin-box:{tag}
    imagePullPolicy: IfNotPresent
    command: [sh, -c, "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8000 -h /www"]
    ports: [{{containerPort: 8000, name: web}}]
"#
        ));
    }
    for node in ["node2", "node3"] {
        out.push_str(&format!(
            r#"---
apiVersion: v1
kind: Pod
metadata:
  name: hostbox-{node}
spec:
  nodeName: {node}
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
  - name: box
    image: kinit.local/admin-box:{tag}
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
"#
        ));
    }
    out.push_str(&format!(
        r#"---
apiVersion: v1
kind: Pod
metadata:
  name: hostnet-demo
spec:
  nodeName: node3
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
  - name: demo
    image: kinit.local/demoapp:{tag}
    imagePullPolicy: IfNotPresent
    env: [{{name: PORT, value: "18090"}}]
---
apiVersion: v1
kind: Pod
metadata:
  name: hostport-demo
spec:
  nodeName: node2
  terminationGracePeriodSeconds: 1
  containers:
  - name: demo
    image: kinit.local/demoapp:{tag}
    imagePullPolicy: IfNotPresent
    ports: [{{containerPort: 8080, hostPort: 18080}}]
"#
    ));
    out
}

const PINNED: [&str; 7] = [
    "client-node1",
    "client-node2",
    "client-node3",
    "hostbox-node2",
    "hostbox-node3",
    "hostnet-demo",
    "hostport-demo",
];

/// A scraper allowed to read /metrics and a bystander who is not.
const METRICS_RBAC: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: scraper}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: bystander}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: metrics-reader}
rules:
- nonResourceURLs: [/metrics]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: scraper-metrics}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: metrics-reader}
subjects: [{kind: ServiceAccount, name: scraper, namespace: default}]
"#;

/// Throughput figures of one mode, in MB/s.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    /// Pod on node2 → pod on node3.
    pub pod_to_pod: f64,
    /// node2 → node3 (host network).
    pub node_to_node: f64,
}

impl<'a> Net<'a> {
    fn node(&self, name: &str) -> &Node<'a> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// `kubectl exec POD -- sh -c SCRIPT`.
    fn exec(&self, pod: &str, script: &str) -> Output {
        self.kubectl
            .output(&["exec", pod, "--", "sh", "-c", script], None)
    }

    /// Like [`Net::exec`], panicking with the output when the script fails.
    fn exec_ok(&self, pod: &str, script: &str) -> String {
        let out = self.exec(pod, script);
        assert!(
            out.status.success(),
            "in {pod}: {script}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn pod(&self, name: &str) -> Value {
        self.kubectl.json(&["get", "pod", name])
    }

    fn pod_ip(&self, name: &str) -> String {
        self.pod(name)["status"]["podIP"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no IP"))
            .to_string()
    }

    fn cluster_ip(&self, service: &str) -> String {
        self.kubectl.json(&["get", "service", service])["spec"]["clusterIP"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Names of the demo pods that answered, with how often.
    fn answered_by(text: &str) -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        for line in text.lines() {
            if let Some(pod) = line
                .split(" | ")
                .find_map(|part| part.strip_prefix("pod: "))
            {
                *seen.entry(pod.to_string()).or_insert(0) += 1;
            }
        }
        seen
    }

    /// Creates the Services, the StatefulSet and the pinned pods.
    pub fn deploy(&self) {
        self.kubectl.apply(&MANIFESTS.replace("TAG", &self.tag));
        self.kubectl.apply(&pinned_pods(&self.tag));
    }

    /// Deletes the pinned pods and recreates them (after a mode switch their interfaces have
    /// the old MTU), and restarts the Deployments and the StatefulSet for the same reason.
    pub async fn recreate_pods(&self) {
        let mut args = vec!["delete", "pod", "--wait=true", "--timeout=120s"];
        args.extend(PINNED);
        self.kubectl.ok(&args);
        self.kubectl.apply(&pinned_pods(&self.tag));
        for target in ["deployment/demo", "statefulset/db"] {
            self.kubectl.ok(&["rollout", "restart", target]);
        }
        self.kubectl.ok(&[
            "-n",
            "kube-system",
            "rollout",
            "restart",
            "deployment/coredns",
        ]);
    }

    /// Removes what [`Net::deploy`] created.
    pub fn remove(&self) {
        let mut args = vec!["delete", "pod", "--wait=false"];
        args.extend(PINNED);
        self.kubectl.ok(&args);
        self.kubectl.ok(&[
            "delete",
            "service,statefulset",
            "demo",
            "demo-np",
            "demo-headless",
            "ext",
            "hairpin",
            "db",
            "--wait=false",
            "--ignore-not-found",
        ]);
    }

    /// Waits until everything the checks use runs and is ready.
    pub async fn wait_ready(&self) {
        let ready = |pod: &Value| {
            pod["status"]["phase"] == "Running"
                && pod["metadata"]["deletionTimestamp"].is_null()
                && pod["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
        };
        self.kubectl
            .ok(&["rollout", "status", "deployment/demo", "--timeout=180s"]);
        self.kubectl
            .ok(&["rollout", "status", "statefulset/db", "--timeout=180s"]);
        self.kubectl.ok(&[
            "-n",
            "kube-system",
            "rollout",
            "status",
            "deployment/coredns",
            "--timeout=180s",
        ]);
        eventually("the pinned pods ready", Duration::from_secs(120), || {
            let list = self.kubectl.json(&["get", "pods"]);
            let items = list["items"].as_array()?;
            PINNED
                .iter()
                .all(|name| {
                    items
                        .iter()
                        .any(|p| p["metadata"]["name"] == *name && ready(p))
                })
                .then_some(())
        })
        .await;
        eventually("3 demo pods ready", Duration::from_secs(120), || {
            let pods = self.kubectl.running_pods("app=demo");
            (pods.len() == 3 && pods.values().all(ready)).then_some(())
        })
        .await;
    }

    /// Ready endpoint addresses of `service` from its EndpointSlices.
    fn ready_endpoints(&self, service: &str) -> BTreeSet<String> {
        let slices = self.kubectl.json(&[
            "get",
            "endpointslices",
            "-l",
            &format!("kubernetes.io/service-name={service}"),
        ]);
        slices["items"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["conditions"]["ready"] == true)
            .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect()
    }

    /// Every check of one mode; returns the throughput figures.
    pub async fn check(&self, mode: &str, once: bool) -> Throughput {
        println!("--- [{mode}] pods reach pods on the other worker by IP, without NAT");
        let demo = self.kubectl.running_pods("app=demo");
        let on = |node: &str| -> Vec<(String, String)> {
            demo.iter()
                .filter(|(_, p)| p["spec"]["nodeName"] == node)
                .map(|(n, p)| {
                    (
                        n.clone(),
                        p["status"]["podIP"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        };
        for (client_node, other) in [("node2", "node3"), ("node3", "node2")] {
            let client = format!("client-{client_node}");
            let client_ip = self.pod_ip(&client);
            let targets = on(other);
            assert!(!targets.is_empty(), "a demo pod on {other}: {demo:?}");
            for (name, ip) in targets {
                let answer =
                    self.exec_ok(&client, &format!("timeout 5 wget -qO- http://{ip}:8080/"));
                assert!(answer.contains(&format!("pod: {name}")), "{answer}");
                assert!(
                    answer.contains(&format!("client: {client_ip}\n")),
                    "the pod sees the client pod's own address: {answer}"
                );
                // And from the node itself.
                let out = self
                    .node(client_node)
                    .ssh
                    .run_checked(&format!("curl -sS --max-time 5 http://{ip}:8080/"))
                    .await
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(text.contains(&format!("pod: {name}")), "{text}");
            }
        }
        let mtu = self.exec_ok("client-node2", "cat /sys/class/net/eth0/mtu");
        println!("[{mode}] pod MTU {}", mtu.trim());
        if mode == "vxlan" {
            assert_eq!(mtu.trim(), "1450", "uplink MTU 1500 − 50 in VXLAN mode");
        } else {
            assert_eq!(mtu.trim(), "1500");
        }

        println!(
            "--- [{mode}] pod → node keeps the pod address; leaving the cluster is masqueraded"
        );
        let client_ip = self.pod_ip("client-node2");
        let node3 = self.node("node3").ip.clone();
        let answer = self.exec_ok(
            "client-node2",
            &format!("timeout 5 wget -qO- http://{node3}:18090/"),
        );
        assert!(
            answer.contains(&format!("client: {client_ip}\n")),
            "{answer}"
        );
        let listener = TcpListener::bind((kinit_lab::GATEWAY, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(false).unwrap();
        let accept = std::thread::spawn(move || listener.accept().map(|(_, peer)| peer));
        self.exec_ok(
            "client-node2",
            &format!("echo hello | nc -w 3 {} {port}", kinit_lab::GATEWAY),
        );
        let peer: SocketAddr = accept.join().unwrap().unwrap();
        assert_eq!(
            peer.ip().to_string(),
            self.node("node2").ip,
            "traffic to an address outside the cluster leaves with the node's address"
        );

        println!("--- [{mode}] a ClusterIP Service answers from every node and every node's pods, spread");
        let cluster_ip = self.cluster_ip("demo");
        let names: BTreeSet<String> = self.kubectl.running_pods("app=demo").into_keys().collect();
        for node in &self.nodes {
            let out = node
                .ssh
                .run_checked(&format!(
                    "for i in $(seq 30); do curl -s --max-time 3 http://{cluster_ip}/; done"
                ))
                .await
                .unwrap();
            let seen = Self::answered_by(&String::from_utf8_lossy(&out.stdout));
            assert_eq!(
                seen.keys().cloned().collect::<BTreeSet<_>>(),
                names,
                "from {}: {seen:?}",
                node.name
            );
            assert_eq!(
                seen.values().sum::<usize>(),
                30,
                "from {}: {seen:?}",
                node.name
            );
        }
        for node in ["node1", "node2", "node3"] {
            // By the short name: the pod's resolver, its search path and cluster DNS.
            let text = self.exec_ok(
                &format!("client-{node}"),
                "for i in $(seq 30); do timeout 3 wget -qO- http://demo/; done",
            );
            let seen = Self::answered_by(&text);
            assert_eq!(
                seen.keys().cloned().collect::<BTreeSet<_>>(),
                names,
                "from the pod on {node}: {seen:?}"
            );
        }

        println!("--- [{mode}] NodePort on every node address, hairpin, hostPort");
        let node_port = self.kubectl.json(&["get", "service", "demo-np"])["spec"]["ports"][0]
            ["nodePort"]
            .as_i64()
            .unwrap();
        assert!((30000..=32767).contains(&node_port), "{node_port}");
        for node in &self.nodes {
            let text = http_get(&format!("{}:{node_port}", node.ip)).unwrap_or_else(|e| {
                panic!("NodePort {node_port} on {}: {e}", node.ip);
            });
            assert!(text.contains("Hello from kinit demoapp"), "{text}");
        }
        let hairpin = self.exec_ok("client-node2", "timeout 5 wget -qO- http://hairpin:8000/");
        assert_eq!(
            hairpin.trim(),
            "client-node2",
            "a pod reaches its own Service"
        );
        let text = http_get(&format!("{}:18080", self.node("node2").ip)).expect("the hostPort");
        assert!(text.contains("host: hostport-demo"), "{text}");

        println!("--- [{mode}] cluster DNS");
        let lookup = |name: &str| -> (bool, BTreeSet<String>, String) {
            let out = self.exec("client-node3", &format!("nslookup {name}"));
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            (out.status.success(), nslookup_addresses(&text), text)
        };
        let (_, addresses, text) = lookup("kubernetes.default.svc.cluster.local");
        assert_eq!(
            addresses,
            BTreeSet::from(["10.96.0.1".to_string()]),
            "{text}"
        );
        let (_, addresses, text) = lookup("demo.default.svc.cluster.local");
        assert_eq!(addresses, BTreeSet::from([cluster_ip.clone()]), "{text}");
        let pod_ips: BTreeSet<String> = self
            .kubectl
            .running_pods("app=demo")
            .values()
            .map(|p| p["status"]["podIP"].as_str().unwrap().to_string())
            .collect();
        let (_, addresses, text) = lookup("demo-headless.default.svc.cluster.local");
        assert_eq!(
            addresses, pod_ips,
            "a headless Service gives every ready pod: {text}"
        );
        let db0 = self.pod_ip("db-0");
        let (_, addresses, text) = lookup("db-0.db.default.svc.cluster.local");
        assert_eq!(addresses, BTreeSet::from([db0]), "{text}");
        let (_, addresses, text) = lookup("ext.default.svc.cluster.local");
        assert!(text.contains(EXTERNAL_NAME), "the CNAME: {text}");
        assert!(addresses.contains(EXTERNAL_ADDRESS), "{text}");
        let (_, addresses, text) = lookup(EXTERNAL_NAME);
        assert_eq!(
            addresses,
            BTreeSet::from([EXTERNAL_ADDRESS.to_string()]),
            "forwarded to the upstream of the node's resolv.conf: {text}"
        );
        let (found, addresses, text) = lookup("missing.default.svc.cluster.local");
        assert!(!found && addresses.is_empty(), "{text}");
        assert!(text.contains("NXDOMAIN"), "{text}");

        println!("--- [{mode}] a pod made unready leaves the rotation");
        let (victim, victim_pod) = self
            .kubectl
            .running_pods("app=demo")
            .into_iter()
            .next()
            .unwrap();
        let victim_ip = victim_pod["status"]["podIP"].as_str().unwrap().to_string();
        self.exec_ok(
            "client-node2",
            &format!("timeout 5 wget -qO- --post-data readyz=FAIL http://{victim_ip}:8080/readyz"),
        );
        eventually(
            "the unready pod out of the slices",
            Duration::from_secs(30),
            || (!self.ready_endpoints("demo").contains(&victim_ip)).then_some(()),
        )
        .await;
        // The proxy follows the slices within a second or so.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let out = self
            .node("node2")
            .ssh
            .run_checked(&format!(
                "for i in $(seq 30); do curl -s --max-time 3 http://{cluster_ip}/; done"
            ))
            .await
            .unwrap();
        let seen = Self::answered_by(&String::from_utf8_lossy(&out.stdout));
        assert!(
            !seen.contains_key(&victim),
            "{victim} still answers: {seen:?}"
        );
        assert_eq!(seen.values().sum::<usize>(), 30, "{seen:?}");
        self.exec_ok(
            "client-node2",
            &format!("timeout 5 wget -qO- --post-data readyz=OK http://{victim_ip}:8080/readyz"),
        );
        eventually(
            "the pod back in the slices",
            Duration::from_secs(30),
            || {
                self.ready_endpoints("demo")
                    .contains(&victim_ip)
                    .then_some(())
            },
        )
        .await;

        println!("--- [{mode}] a Service scaled to zero refuses connections");
        self.kubectl
            .ok(&["scale", "deployment/demo", "--replicas=0"]);
        eventually("no endpoints left", Duration::from_secs(60), || {
            self.ready_endpoints("demo").is_empty().then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let started = Instant::now();
        let refused = self
            .node("node2")
            .ssh
            .run(&format!("curl -sS --max-time 5 http://{cluster_ip}/"))
            .await
            .unwrap();
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(
            refused.status.code(),
            Some(7),
            "curl: connection refused: {stderr}"
        );
        assert!(
            took < Duration::from_secs(3),
            "refused, not timed out: {took:?}"
        );
        let out = self.exec("client-node3", "timeout 5 wget -qO- http://demo/");
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("refused"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let np = TcpStream::connect_timeout(
            &format!("{}:{node_port}", self.node("node3").ip)
                .parse()
                .unwrap(),
            Duration::from_secs(3),
        );
        assert_eq!(
            np.map(|_| ()).map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionRefused),
            "the NodePort refuses too"
        );
        self.kubectl
            .ok(&["scale", "deployment/demo", "--replicas=3"]);
        self.kubectl
            .ok(&["rollout", "status", "deployment/demo", "--timeout=180s"]);
        eventually("3 demo endpoints ready", Duration::from_secs(60), || {
            (self.ready_endpoints("demo").len() == 3).then_some(())
        })
        .await;

        if once {
            self.check_once().await;
        }

        println!("--- [{mode}] throughput across nodes");
        let throughput = Throughput {
            pod_to_pod: self
                .throughput("client-node2", "client-node3", 8000, false)
                .await,
            node_to_node: self
                .throughput("hostbox-node2", "hostbox-node3", 18100, true)
                .await,
        };
        println!(
            "[{mode}] throughput node2 → node3: pod-to-pod {:.0} MB/s, node-to-node {:.0} MB/s (ratio {:.2})",
            throughput.pod_to_pod,
            throughput.node_to_node,
            throughput.pod_to_pod / throughput.node_to_node
        );
        throughput
    }

    /// The cluster DNS pods (`k8s-app=kube-dns` in kube-system).
    fn dns_pods(&self) -> Vec<Value> {
        let list =
            self.kubectl
                .json(&["-n", "kube-system", "get", "pods", "-l", "k8s-app=kube-dns"]);
        list["items"].as_array().cloned().unwrap_or_default()
    }

    /// Writes `corefile` into the `coredns` ConfigMap.
    fn set_corefile(&self, corefile: &str) {
        let patch = serde_json::json!({"data": {"Corefile": corefile}}).to_string();
        self.kubectl.ok(&[
            "-n",
            "kube-system",
            "patch",
            "configmap",
            "coredns",
            "--type=merge",
            "-p",
            &patch,
        ]);
    }

    /// Checks that do not depend on the pod-network mode.
    async fn check_once(&self) {
        println!("--- an edit of the coredns ConfigMap takes effect without a restart");
        let uids = |pods: Vec<Value>| -> BTreeSet<String> {
            pods.iter()
                .map(|p| p["metadata"]["uid"].as_str().unwrap().to_string())
                .collect()
        };
        let before = uids(self.dns_pods());
        let config = self
            .kubectl
            .json(&["-n", "kube-system", "get", "configmap", "coredns"]);
        let corefile = config["data"]["Corefile"].as_str().unwrap().to_string();
        assert!(
            corefile.contains("forward . /etc/resolv.conf"),
            "{corefile}"
        );
        let edited = corefile.replace(
            "forward . /etc/resolv.conf",
            &format!("forward . {}:5353", kinit_lab::GATEWAY),
        );
        self.set_corefile(&edited);
        let started = Instant::now();
        eventually(
            "the edited upstream answers",
            Duration::from_secs(120),
            || {
                let out = self.exec("client-node2", &format!("nslookup {EXTERNAL_NAME}"));
                nslookup_addresses(&String::from_utf8_lossy(&out.stdout))
                    .contains(EDITED_ADDRESS)
                    .then_some(())
            },
        )
        .await;
        println!(
            "the Corefile edit answered after {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let after = uids(self.dns_pods());
        assert_eq!(before, after, "no DNS pod was restarted for the edit");
        // Put back (the rest of the test does not wait for it).
        self.set_corefile(&corefile);

        println!("--- the DNS metrics listener wants a token allowed to get /metrics");
        self.kubectl.apply(METRICS_RBAC);
        let token = self
            .kubectl
            .ok(&["create", "token", "scraper"])
            .trim()
            .to_string();
        let other = self
            .kubectl
            .ok(&["create", "token", "bystander"])
            .trim()
            .to_string();
        let dns_pod = self.dns_pods()[0]["status"]["podIP"]
            .as_str()
            .unwrap()
            .to_string();
        let scrape = |header: String| {
            format!(
                "curl -sk --max-time 5 -o /tmp/metrics.txt -w '%{{http_code}}' {header} https://{dns_pod}:9153/metrics; echo; grep -c '^coredns_dns_requests_total' /tmp/metrics.txt || true"
            )
        };
        let node2 = self.node("node2").ssh;
        for (header, code) in [
            (String::new(), "401"),
            (format!("-H 'Authorization: Bearer {other}'"), "403"),
            (format!("-H 'Authorization: Bearer {token}'"), "200"),
        ] {
            let out = node2.run_checked(&scrape(header)).await.unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(text.starts_with(code), "expected {code}: {text}");
            if code == "200" {
                assert!(
                    text.lines().nth(1).is_some_and(|n| n != "0"),
                    "the metrics name requests: {text}"
                );
            }
        }

        println!("--- kubectl port-forward to a Service");
        let mut forward = self
            .kubectl
            .command()
            .args(["port-forward", "svc/demo", "18081:80"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let answer = eventually("port-forward answers", Duration::from_secs(30), || {
            http_get("127.0.0.1:18081").ok()
        })
        .await;
        let _ = forward.kill();
        let _ = forward.wait();
        assert!(answer.contains("Hello from kinit demoapp"), "{answer}");

        println!("--- kubectl run -i (attach) with the admin box");
        let out = self.kubectl.output(
            &[
                "run",
                "attach-test",
                &format!("--image=kinit.local/admin-box:{}", self.tag),
                "--image-pull-policy=IfNotPresent",
                "-i",
                "--rm",
                "--restart=Never",
                "--",
                "sh",
                "-c",
                "read line; echo got:$line; nslookup kubernetes.default.svc.cluster.local",
            ],
            Some("hello\n"),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("got:hello"), "{text}");
        assert!(text.contains("10.96.0.1"), "{text}");
    }

    /// MB/s of a 512 MiB download by `from` (an admin box) from busybox httpd in `to` (an
    /// admin box serving on `port`, started here when `start_server`), the median of three.
    async fn throughput(&self, from: &str, to: &str, port: u16, start_server: bool) -> f64 {
        let address = self.pod_ip(to);
        let serve = if start_server {
            format!(" && (httpd -p {port} -h /www &)")
        } else {
            String::new()
        };
        self.exec_ok(
            to,
            &format!(
                "mkdir -p /www && dd if=/dev/zero of=/www/big bs=1048576 count=512 2>/dev/null{serve}"
            ),
        );
        let text = self.exec_ok(
            from,
            &format!(
                "for i in 1 2 3; do time wget -qO /dev/null http://{address}:{port}/big; done 2>&1"
            ),
        );
        let mut seconds: Vec<f64> = text
            .lines()
            .filter(|l| l.trim_start().starts_with("real"))
            .filter_map(busybox_real_seconds)
            .collect();
        assert_eq!(seconds.len(), 3, "three timed downloads: {text:?}");
        seconds.sort_by(f64::total_cmp);
        512.0 / seconds[1].max(0.01)
    }
}

/// The addresses in busybox nslookup's answer section (after the first `Name:` line).
pub fn nslookup_addresses(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut in_answer = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("Name:") {
            in_answer = true;
        } else if in_answer {
            if let Some(addr) = line.strip_prefix("Address:") {
                out.insert(addr.trim().to_string());
            }
        }
    }
    out
}

/// `real\t0m 1.23s` from busybox's `time` → 1.23.
fn busybox_real_seconds(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.trim_start().starts_with("real"))?;
    let value = line.trim_start().trim_start_matches("real").trim();
    let (minutes, seconds) = value.split_once('m')?;
    let minutes: f64 = minutes.trim().parse().ok()?;
    let seconds: f64 = seconds.trim().trim_end_matches('s').parse().ok()?;
    Some(minutes * 60.0 + seconds)
}

/// A plain HTTP/1.1 GET of `/` at `address`; the body on 200.
pub fn http_get(address: &str) -> Result<String, String> {
    let addr: SocketAddr = address.parse().map_err(|e| format!("{address}: {e}"))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(
            format!("GET / HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    if !response.starts_with("HTTP/1.1 200") {
        return Err(format!("not 200: {response}"));
    }
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default())
}

/// kinit's pod routes and VXLAN entries on `host` (`ip route show proto …`, the FDB of the
/// VXLAN device), for checking that a reset node's entries disappear from the others.
pub async fn network_entries(host: &SshHost) -> String {
    let out = host
        .run(&format!(
            "ip route show proto {}; bridge fdb show dev {} 2>/dev/null",
            kinit_cni::network::ROUTE_PROTOCOL,
            kinit_cni::network::VXLAN_DEVICE
        ))
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_busybox_output() {
        let text = "Server:\t\t10.96.0.10\nAddress:\t10.96.0.10:53\n\nName:\tdemo-headless.default.svc.cluster.local\nAddress: 10.244.1.4\nName:\tdemo-headless.default.svc.cluster.local\nAddress: 10.244.2.5\n";
        assert_eq!(
            nslookup_addresses(text),
            BTreeSet::from(["10.244.1.4".to_string(), "10.244.2.5".to_string()])
        );
        assert_eq!(
            busybox_real_seconds("real\t0m 1.25s\nuser\t0m 0.01s\n"),
            Some(1.25)
        );
        assert_eq!(busybox_real_seconds("real\t1m 2.50s\n"), Some(62.5));
    }

    #[test]
    fn upstream_answers_only_its_name() {
        let mut query = Message::new(7, MessageType::Query, OpCode::Query);
        query.add_query(hickory_proto::op::Query::query(
            hickory_proto::rr::Name::from_ascii("external.kinit.test.").unwrap(),
            RecordType::A,
        ));
        let answer = Message::from_vec(
            &upstream_answer(&query.to_vec().unwrap(), "192.0.2.10".parse().unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(answer.metadata.id, 7);
        assert_eq!(answer.answers.len(), 1);
        let mut other = Message::new(8, MessageType::Query, OpCode::Query);
        other.add_query(hickory_proto::op::Query::query(
            hickory_proto::rr::Name::from_ascii("else.where.").unwrap(),
            RecordType::A,
        ));
        let answer = Message::from_vec(
            &upstream_answer(&other.to_vec().unwrap(), "192.0.2.10".parse().unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    }
}
