//! End-to-end: a whole cluster on 3 lab hosts (1 control plane, 2 workers) from `kinit apply`,
//! driven by the real kubectl.
//!
//! - apply: static control plane from manifests, every node Ready;
//! - the demo app Deployment (3 replicas) spreads over the workers, every pod answers on its
//!   pod IP, `kubectl logs` and `kubectl exec … -- hostname` work;
//! - a deleted pod is replaced, a failing liveness probe restarts the container, `kubectl
//!   rollout undo` restores the previous image;
//! - 20 pods' create → Running latency and the components' RSS are printed;
//! - a second apply changes nothing; `kinit reset` of a worker leaves nothing of kinit on it and
//!   deletes its Node; an apply killed midway and run again brings it back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kinit_e2e::{
    e2e_enabled, eventually, kinit_bin, kubectl_binary, stripped, test_config, Kubectl, LabGuard,
};
use kinit_executor::{Host, SshHost};
use serde_json::{json, Value};

#[path = "cluster/network.rs"]
mod network;
#[path = "cluster/python.rs"]
mod python;

const DEMO: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: demo
spec:
  replicas: 3
  selector:
    matchLabels: {app: demo}
  template:
    metadata:
      labels: {app: demo}
    spec:
      containers:
      - name: demo
        image: kinit.local/demoapp:TAG
        imagePullPolicy: IfNotPresent
        ports: [{containerPort: 8080, name: http}]
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        - name: POD_IP
          valueFrom: {fieldRef: {fieldPath: status.podIP}}
        readinessProbe:
          httpGet: {path: /readyz, port: 8080}
          periodSeconds: 1
        livenessProbe:
          httpGet: {path: /livez, port: 8080}
          periodSeconds: 1
          failureThreshold: 2
"#;

const STATEFUL: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
spec:
  replicas: 2
  serviceName: web
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: kinit.local/demoapp:TAG
        imagePullPolicy: IfNotPresent
        readinessProbe:
          httpGet: {path: /healthz, port: 8080}
          periodSeconds: 1
"#;

const CRON: &str = r#"
apiVersion: batch/v1
kind: CronJob
metadata:
  name: tick
spec:
  schedule: "MINUTE * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - name: tick
            image: kinit.local/demoapp:TAG
            imagePullPolicy: IfNotPresent
            command: ["hostname"]
"#;

struct Apply {
    kinit: PathBuf,
    inventory: PathBuf,
    known_hosts: PathBuf,
    state_dir: PathBuf,
    binary: PathBuf,
}

impl Apply {
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.kinit);
        cmd.arg("apply")
            .arg("-i")
            .arg(&self.inventory)
            .arg("--known-hosts")
            .arg(&self.known_hosts)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--binary")
            .arg(&self.binary)
            .args(["--wait-timeout", "180", "-o", "json"])
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `kinit apply` to the end; returns its JSON report and wall time.
    fn run(&self) -> (Value, Duration) {
        let started = Instant::now();
        let out = self.command().output().expect("run kinit apply");
        let took = started.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "kinit apply failed\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (serde_json::from_str(&stdout).unwrap(), took)
    }
}

/// What of kinit is left on a reset host (empty = nothing).
async fn kinit_leftovers(host: &SshHost) -> Vec<String> {
    let script = r#"
for p in /usr/local/bin/kinit /etc/kubernetes /var/lib/kinit /var/log/pods /etc/cni/net.d/10-kinit.conflist \
         /opt/cni/bin/kinit-cni /etc/systemd/system/kinit-agent.service /run/kinit-phase.lock; do
  { [ -e "$p" ] || [ -L "$p" ]; } && echo "file $p"
done
[ -L /opt/cni/bin/loopback ] && [ "$(readlink /opt/cni/bin/loopback)" = /usr/local/bin/kinit ] && echo "file /opt/cni/bin/loopback"
systemctl list-unit-files --no-legend 'kinit*' | awk '{print "unit " $1}'
ps -eo pid=,comm= | awk '$2 ~ /^(kinit|containerd-shim)/ {print "process " $1 " " $2}'
awk '$5 ~ /^\/var\/lib\/kinit|^\/var\/log\/pods|^\/run\/containerd\/io\.containerd|^\/var\/lib\/containerd\/.+/ {print "mount " $5}' /proc/self/mountinfo
for l in $(ls /sys/class/net); do case "$l" in cni0|kinit*|veth*) echo "link $l";; esac; done
ip netns list 2>/dev/null | awk '{print "netns " $1}'
ip route show proto ROUTE_PROTO 2>/dev/null | sed 's/^/route /'
ip rule show 2>/dev/null | awk '$1 == "RULE_PREF:" {print "rule " $0}'
nft list tables 2>/dev/null | grep kinit | sed 's/^/nft /'
ctr -n k8s.io containers ls -q 2>/dev/null | sed 's/^/container /'
ctr -n k8s.io images ls -q 2>/dev/null | grep kinit | sed 's/^/image /'
true
"#;
    let script = script
        .replace(
            "ROUTE_PROTO",
            &kinit_cni::network::ROUTE_PROTOCOL.to_string(),
        )
        .replace(
            "RULE_PREF",
            &kinit_cni::network::POLICY_RULE_PRIORITY.to_string(),
        );
    let out = host
        .run_checked(&format!(
            "sh -c {}",
            kinit_executor::shell_quote(&script).unwrap()
        ))
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn apply_runs_a_three_node_cluster_end_to_end() {
    if !e2e_enabled("apply_runs_a_three_node_cluster_end_to_end") {
        return;
    }
    let kinit = kinit_bin().expect("KINIT_BIN names the kinit binary under test");
    let kubectl = kubectl_binary().expect("kubectl is needed for the cluster end-to-end test");
    let config = test_config("cluster", 3);
    let lab = kinit_lab::up(&config, &()).await.expect("lab up");
    let _guard = LabGuard::new(&config.run_dir, &config.name);
    // The site's DNS server as the lab hosts' resolv.conf names it.
    let _upstream = network::Upstream::start(kinit_lab::GATEWAY);
    let work = tempfile::tempdir().unwrap();
    let apply = Apply {
        kinit: kinit.clone(),
        inventory: lab.inventory.clone(),
        known_hosts: lab.known_hosts.clone(),
        state_dir: work.path().join("state"),
        binary: stripped(&kinit, work.path()),
    };
    let hosts = lab.ssh_hosts("root");
    let host_of = |node: &str| -> &SshHost {
        let index = lab.hosts.iter().position(|h| h.name == node).unwrap();
        &hosts[index]
    };

    println!("--- kinit apply --dry-run plans every host and changes nothing");
    let out = apply.command().arg("--dry-run").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["changed"], true);
    for h in plan["hosts"].as_array().unwrap() {
        let phases: Vec<&str> = h["phases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert!(phases.contains(&"start node agent"), "{h}");
    }
    assert!(
        !apply.state_dir.exists(),
        "a dry run writes no cluster state"
    );
    assert!(!hosts[0].exists("/usr/local/bin/kinit").await.unwrap());

    println!("--- kinit apply on 3 fresh hosts");
    let (first_report, took) = apply.run();
    println!("apply (3 hosts, fresh) took {:.1} s", took.as_secs_f64());
    assert_eq!(first_report["changed"], true);
    assert!(first_report["pki_generated"].as_u64().unwrap() > 0);
    for h in first_report["hosts"].as_array().unwrap() {
        assert_eq!(h["node"], "ready", "{h}");
        assert!(!h["phases"].as_array().unwrap().is_empty());
    }
    let kubectl = Kubectl::new(kubectl, apply.state_dir.join("admin.conf"));

    let nodes = kubectl.json(&["get", "nodes"]);
    let nodes = nodes["items"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for node in nodes {
        let ready = node["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "True", "{node}");
    }
    // Each Node carries the pod range kinit recorded for its host.
    let record: BTreeMap<String, String> = serde_yaml::from_str(
        &std::fs::read_to_string(apply.state_dir.join("pod-cidrs.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(record.len(), 3, "{record:?}");
    for node in nodes {
        let name = node["metadata"]["name"].as_str().unwrap();
        assert_eq!(node["spec"]["podCIDR"], record[name].as_str(), "{name}");
    }
    let table = kubectl.ok(&["get", "nodes"]);
    println!("{table}");
    assert!(table
        .lines()
        .any(|l| l.starts_with("node1 ") && l.contains("control-plane")));
    let static_pods = kubectl.ok(&["get", "pods", "-n", "kube-system", "-o", "wide"]);
    println!("{static_pods}");
    for component in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ] {
        assert!(
            static_pods
                .lines()
                .any(|l| l.starts_with(&format!("{component}-node1 ")) && l.contains("Running")),
            "{component} runs as a static pod: {static_pods}"
        );
    }

    println!("--- the demo app: 3 replicas spread over the workers, each answers");
    let tag = kinit_images::KinitImage::default_tag();
    kubectl.apply(&DEMO.replace("TAG", &tag));
    kubectl.ok(&["rollout", "status", "deployment/demo", "--timeout=180s"]);
    let pods = eventually("3 demo pods Running", Duration::from_secs(60), || {
        Some(kubectl.running_pods("app=demo")).filter(|p| p.len() == 3)
    })
    .await;
    let used: BTreeSet<&str> = pods
        .values()
        .map(|p| p["spec"]["nodeName"].as_str().unwrap())
        .collect();
    assert!(
        !used.contains("node1"),
        "the control plane is tainted: {used:?}"
    );
    assert_eq!(used.len(), 2, "replicas spread over both workers: {used:?}");
    for (name, pod) in &pods {
        let ip = pod["status"]["podIP"].as_str().expect("pod IP");
        let node = pod["spec"]["nodeName"].as_str().unwrap();
        let answer = host_of(node)
            .run_checked(&format!("curl -sS --max-time 5 http://{ip}:8080/"))
            .await
            .unwrap();
        let answer = String::from_utf8_lossy(&answer.stdout);
        assert!(answer.contains(&format!("pod: {name}")), "{answer}");
        assert!(answer.contains(&format!("ip: {ip}")), "{answer}");
    }
    let (first, first_pod) = pods.iter().next().unwrap();
    let logs = kubectl.ok(&["logs", first]);
    assert!(logs.contains("listening"), "{logs}");
    let hostname = kubectl.ok(&["exec", first, "--", "hostname"]);
    assert_eq!(hostname.trim(), first);

    println!("--- the official Python client drives the cluster");
    match python::run_client_suite(&kubectl.kubeconfig, &format!("kinit.local/demoapp:{tag}")) {
        Ok(out) => println!("{out}"),
        Err(e) => panic!("{e}"),
    }

    println!("--- a deleted pod is replaced");
    kubectl.ok(&["delete", "pod", first, "--wait=false"]);
    let replaced = eventually("a replacement pod", Duration::from_secs(60), || {
        Some(kubectl.running_pods("app=demo")).filter(|p| p.len() == 3 && !p.contains_key(first))
    })
    .await;

    println!("--- a failing liveness probe restarts the container");
    let (victim, pod) = replaced.iter().next().unwrap();
    let restarts = |pod: &Value| pod["status"]["containerStatuses"][0]["restartCount"].as_i64();
    let before = restarts(pod).unwrap();
    let ip = pod["status"]["podIP"].as_str().unwrap();
    host_of(pod["spec"]["nodeName"].as_str().unwrap())
        .run_checked(&format!("curl -sS --max-time 5 http://{ip}:8080/fail"))
        .await
        .unwrap();
    let after = eventually("RESTARTS increments", Duration::from_secs(60), || {
        let pod = kubectl.json(&["get", "pod", victim]);
        restarts(&pod).filter(|r| *r > before)
    })
    .await;
    println!("{victim}: restarts {before} -> {after}");
    let table = kubectl.ok(&["get", "pod", victim]);
    assert!(table.contains("Running"), "{table}");

    println!("--- rollout to another image, then rollout undo");
    let original = format!("kinit.local/demoapp:{tag}");
    for node in &used {
        host_of(node)
            .run_checked(&format!(
                "ctr -n k8s.io images tag --force {original} kinit.local/demoapp:v2-e2e"
            ))
            .await
            .unwrap();
    }
    kubectl.ok(&[
        "set",
        "image",
        "deployment/demo",
        "demo=kinit.local/demoapp:v2-e2e",
    ]);
    kubectl.ok(&["rollout", "status", "deployment/demo", "--timeout=180s"]);
    let image_of = |pods: &BTreeMap<String, Value>| -> BTreeSet<String> {
        pods.values()
            .map(|p| {
                p["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    eventually("3 pods on v2-e2e", Duration::from_secs(60), || {
        let pods = kubectl.running_pods("app=demo");
        (pods.len() == 3
            && image_of(&pods) == BTreeSet::from(["kinit.local/demoapp:v2-e2e".to_string()]))
        .then_some(())
    })
    .await;
    let history = kubectl.ok(&["rollout", "history", "deployment/demo"]);
    assert!(history.contains('2'), "{history}");
    kubectl.ok(&["rollout", "undo", "deployment/demo"]);
    kubectl.ok(&["rollout", "status", "deployment/demo", "--timeout=180s"]);
    eventually(
        "3 pods back on the original image",
        Duration::from_secs(60),
        || {
            let pods = kubectl.running_pods("app=demo");
            (pods.len() == 3 && image_of(&pods) == BTreeSet::from([original.clone()])).then_some(())
        },
    )
    .await;
    let deployment = kubectl.json(&["get", "deployment", "demo"]);
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        original.as_str()
    );
    let _ = first_pod;

    println!("--- 20 pods: create -> Running latency");
    let mut created = BTreeMap::new();
    for i in 0..20 {
        let name = format!("latency-{i}");
        let manifest = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: latency}}\nspec:\n  containers:\n  - name: app\n    image: {original}\n    imagePullPolicy: IfNotPresent\n"
        );
        created.insert(name, Instant::now());
        kubectl.apply(&manifest);
    }
    let mut running: BTreeMap<String, Duration> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    while running.len() < 20 {
        assert!(
            Instant::now() < deadline,
            "20 pods not Running: {running:?}"
        );
        let list = kubectl.json(&["get", "pods", "-l", "app=latency"]);
        let now = Instant::now();
        for p in list["items"].as_array().unwrap() {
            let name = p["metadata"]["name"].as_str().unwrap();
            if p["status"]["phase"] == "Running" && !running.contains_key(name) {
                running.insert(name.to_string(), now - created[name]);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut seconds: Vec<f64> = running.values().map(Duration::as_secs_f64).collect();
    seconds.sort_by(f64::total_cmp);
    println!(
        "pod startup (create -> Running seen, 20 pods, 2 workers): p50 {:.2} s, p99 {:.2} s",
        percentile(&seconds, 50.0),
        percentile(&seconds, 99.0)
    );
    kubectl.ok(&["delete", "pods", "-l", "app=latency", "--wait=false"]);
    for node in ["node1", "node2", "node3"] {
        let rss = host_of(node)
            .run_checked("ps -eo rss=,args= | awk '$2 ~ /(^|\\/)kinit$/ {printf \"%.1f MiB %s\\n\", $1/1024, $3}'")
            .await
            .unwrap();
        println!(
            "RSS of kinit's processes on {node} (agent with the proxy; dns where a DNS pod runs):\n{}",
            String::from_utf8_lossy(&rss.stdout)
        );
    }

    println!("--- a StatefulSet and a CronJob run on the workers");
    kubectl.apply(&STATEFUL.replace("TAG", &tag));
    kubectl.ok(&["rollout", "status", "statefulset/web", "--timeout=120s"]);
    let hostname = kubectl.ok(&["exec", "web-1", "--", "hostname"]);
    assert_eq!(hostname.trim(), "web-1");
    // Scheduled two minutes ago, hourly; a status from "ten minutes ago" makes that time due now.
    let now = chrono::Utc::now();
    let minute = chrono::Timelike::minute(&(now - chrono::Duration::minutes(2)));
    kubectl.apply(
        &CRON
            .replace("TAG", &tag)
            .replace("MINUTE", &minute.to_string()),
    );
    let ten_ago =
        (now - chrono::Duration::minutes(10)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    kubectl.ok(&[
        "patch",
        "cronjob",
        "tick",
        "--subresource=status",
        "--type=merge",
        "-p",
        &format!(r#"{{"status":{{"lastScheduleTime":"{ten_ago}"}}}}"#),
    ]);
    let job = eventually(
        "the CronJob's Job Complete",
        Duration::from_secs(90),
        || {
            let jobs = kubectl.json(&["get", "jobs"]);
            jobs["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|j| {
                    j["metadata"]["ownerReferences"][0]["name"] == "tick"
                        && j["status"]["conditions"].as_array().is_some_and(|c| {
                            c.iter()
                                .any(|c| c["type"] == "Complete" && c["status"] == "True")
                        })
                })
                .map(|j| j["metadata"]["name"].as_str().unwrap().to_string())
        },
    )
    .await;
    let logs = kubectl.ok(&["logs", &format!("job/{job}")]);
    assert!(logs.trim().starts_with(&format!("{job}-")), "{logs}");
    eventually("lastSuccessfulTime", Duration::from_secs(30), || {
        let cj = kubectl.json(&["get", "cronjob", "tick"]);
        cj["status"]["lastSuccessfulTime"].is_string().then_some(())
    })
    .await;
    kubectl.ok(&["delete", "cronjob", "tick"]);
    kubectl.ok(&["delete", "statefulset", "web", "--wait=false"]);

    println!("--- cluster DNS is installed the way kubeadm installs CoreDNS");
    let dns = kubectl.json(&["-n", "kube-system", "get", "service", "kube-dns"]);
    assert_eq!(dns["spec"]["clusterIP"], "10.96.0.10");
    kubectl.ok(&[
        "-n",
        "kube-system",
        "rollout",
        "status",
        "deployment/coredns",
        "--timeout=180s",
    ]);
    let dns_pods = kubectl.json(&["-n", "kube-system", "get", "pods", "-l", "k8s-app=kube-dns"]);
    assert_eq!(dns_pods["items"].as_array().unwrap().len(), 2, "{dns_pods}");

    let net = network::Net {
        kubectl: &kubectl,
        nodes: lab
            .hosts
            .iter()
            .zip(&hosts)
            .map(|(h, ssh)| network::Node {
                name: h.name.clone(),
                ip: h.address.clone(),
                ssh,
            })
            .collect(),
        tag: tag.clone(),
    };
    net.deploy();
    net.wait_ready().await;
    let host_gw = net.check("host-gw", false).await;
    // `auto` on one subnet is host-gw: a route per peer's range via its address, no VXLAN.
    let entries = network::network_entries(host_of("node2")).await;
    assert!(entries.contains("via 10.88.0.13"), "{entries}");
    assert!(!entries.contains("dst 10.88.0.13"), "{entries}");

    println!("--- the same cluster switched to VXLAN by the inventory");
    let vxlan_inventory = work.path().join("inventory-vxlan.yaml");
    let mut doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&lab.inventory).unwrap()).unwrap();
    doc["spec"]["cluster"]["cni"] = serde_yaml::from_str("{mode: vxlan}").unwrap();
    std::fs::write(&vxlan_inventory, serde_yaml::to_string(&doc).unwrap()).unwrap();
    let apply = Apply {
        inventory: vxlan_inventory,
        ..apply
    };
    let (report, took) = apply.run();
    println!("apply (switch to vxlan) took {:.1} s", took.as_secs_f64());
    for h in report["hosts"].as_array().unwrap() {
        assert_eq!(h["node"], "ready", "{h}");
    }
    for node in ["node1", "node2", "node3"] {
        let deadline = Instant::now() + Duration::from_secs(30);
        let text = loop {
            let out = host_of(node)
                .run(&format!(
                    "ip -d link show {}",
                    kinit_cni::network::VXLAN_DEVICE
                ))
                .await
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.success() || Instant::now() > deadline {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        assert!(text.contains("vxlan id 1"), "{node}: {text}");
        assert!(text.contains("dstport 8472"), "{node}: {text}");
        assert!(text.contains("mtu 1450"), "{node}: {text}");
    }
    let entries = network::network_entries(host_of("node2")).await;
    assert!(
        entries.contains("dst 10.88.0.13"),
        "the FDB names node3: {entries}"
    );
    assert!(
        !entries.contains("via 10.88.0.13"),
        "no host-gw route left: {entries}"
    );
    net.recreate_pods().await;
    net.wait_ready().await;
    let vxlan = net.check("vxlan", true).await;
    println!(
        "pod-to-pod / node-to-node throughput: host-gw {:.2}, vxlan {:.2}",
        host_gw.pod_to_pod / host_gw.node_to_node,
        vxlan.pod_to_pod / vxlan.node_to_node
    );
    net.remove();

    println!("--- a second apply changes nothing");
    let (report, took) = apply.run();
    println!(
        "apply (3 hosts, converged) took {:.1} s",
        took.as_secs_f64()
    );
    assert_eq!(report["changed"], false, "{report:#}");
    for h in report["hosts"].as_array().unwrap() {
        assert!(h["phases"].as_array().unwrap().is_empty(), "{h}");
        assert_eq!(h["node"], "ready");
    }

    println!("--- apply --only files,agent and --skip-phases images run just those phases");
    let image_on_node2 = || async {
        let out = host_of("node2")
            .run_checked("ctr -n k8s.io images ls -q")
            .await
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains(&original)
    };
    host_of("node2")
        .run_checked(&format!(
            "ctr -n k8s.io images rm {original} && systemctl stop kinit-agent"
        ))
        .await
        .unwrap();
    let node2_of = |report: &Value| -> Value {
        report["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["host"] == "node2")
            .cloned()
            .unwrap_or_else(|| panic!("node2 in the report: {report:#}"))
    };
    let run_with = |extra: &[&str]| -> Value {
        let out = apply
            .command()
            .args(extra)
            .output()
            .expect("run kinit apply");
        assert!(
            out.status.success(),
            "kinit apply {extra:?} failed\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let only = run_with(&["--only", "files,agent"]);
    let node2 = node2_of(&only);
    assert_eq!(node2["phases"], json!(["start node agent"]), "{node2:#}");
    assert!(
        node2["skipped"].as_array().is_some_and(|s| s
            .iter()
            .any(|p| p.as_str().is_some_and(|p| p.starts_with("import images")))),
        "images left out: {node2:#}"
    );
    assert!(
        !image_on_node2().await,
        "--only files,agent imported images"
    );
    let skip = run_with(&["--skip-phases", "images"]);
    let node2 = node2_of(&skip);
    assert_eq!(node2["phases"], json!([]), "{node2:#}");
    assert_eq!(node2["node"], "ready", "{node2:#}");
    assert!(
        !image_on_node2().await,
        "--skip-phases images imported images"
    );
    let (full, _) = apply.run();
    let node2 = node2_of(&full);
    assert_eq!(node2["phases"], json!(["import images"]), "{node2:#}");
    assert!(
        image_on_node2().await,
        "a plain apply imports the images again"
    );
    let out = apply.command().args(["--only", "bogus"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("wait-for-nodes") && err.contains("cni-plugins"),
        "{err}"
    );

    println!("--- kinit reset of node3 leaves nothing and removes its Node");
    let node3 = host_of("node3");
    assert!(
        !kinit_leftovers(node3).await.is_empty(),
        "node3 has kinit before the reset"
    );
    // A bare pod on node3 (no controller will replace it) and the demo replicas there: both
    // must leave the API once node3's Node is gone (pod garbage collection).
    kubectl.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bare-on-node3\nspec:\n  nodeName: node3\n  containers:\n  - name: app\n    image: {original}\n    imagePullPolicy: IfNotPresent\n"
    ));
    eventually("bare-on-node3 Running", Duration::from_secs(60), || {
        let pod = kubectl.json(&["get", "pod", "bare-on-node3"]);
        (pod["status"]["phase"] == "Running").then_some(())
    })
    .await;
    let demo_on_node3: Vec<String> = kubectl
        .running_pods("app=demo")
        .into_iter()
        .filter(|(_, p)| p["spec"]["nodeName"] == "node3")
        .map(|(name, _)| name)
        .collect();
    // `kinit reset --only node3 --yes`; its table output.
    let reset_node3 = || -> String {
        let out = Command::new(&kinit)
            .args(["reset", "-i"])
            .arg(&lab.inventory)
            .arg("--known-hosts")
            .arg(&lab.known_hosts)
            .arg("--kubeconfig")
            .arg(&kubectl.kubeconfig)
            .args(["--only", "node3", "--yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let node3_range = record["node3"].clone();
    let before = network::network_entries(host_of("node2")).await;
    assert!(
        before.contains(&node3_range),
        "node2 routes to node3's pods: {before}"
    );
    let text = reset_node3();
    assert!(text.contains("deleted Node node3"), "{text}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = network::network_entries(host_of("node2")).await;
        if !now.contains(&node3_range) && !now.contains("10.88.0.13") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node2 still has entries for node3 after its reset: {now}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let left = kinit_leftovers(node3).await;
    assert!(left.is_empty(), "left on node3 after reset: {left:#?}");
    let missing = kubectl.output(&["get", "node", "node3"], None);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NotFound"));

    println!("--- pods of the deleted node are garbage-collected and replaced elsewhere");
    let started = Instant::now();
    let pods_now = eventually(
        "no pod left on node3 and 3 demo replicas elsewhere",
        Duration::from_secs(150),
        || {
            let all = kubectl.json(&["get", "pods"]);
            let on_node3 = all["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["spec"]["nodeName"] == "node3");
            let demo = kubectl.running_pods("app=demo");
            (!on_node3 && demo.len() == 3).then_some(demo)
        },
    )
    .await;
    println!(
        "pods of the deleted Node collected and replaced after {:.0} s ({} demo replicas were on node3)",
        started.elapsed().as_secs_f64(),
        demo_on_node3.len()
    );
    for name in &demo_on_node3 {
        assert!(!pods_now.contains_key(name), "{name} still listed");
    }
    assert!(pods_now.values().all(|p| p["spec"]["nodeName"] == "node2"));

    println!("--- kinit join: node3 comes back through a bootstrap token and TLS bootstrap");
    let join_line = Command::new(&kinit)
        .args(["token", "create", "--print-join-command", "--kubeconfig"])
        .arg(&kubectl.kubeconfig)
        .output()
        .unwrap();
    assert!(
        join_line.status.success(),
        "{}",
        String::from_utf8_lossy(&join_line.stderr)
    );
    let join_line = String::from_utf8_lossy(&join_line.stdout)
        .trim()
        .to_string();
    let join_args = join_line
        .strip_prefix("kinit ")
        .expect("a kinit command line");
    assert!(
        join_args.contains("--discovery-token-ca-cert-hash sha256:"),
        "{join_args}"
    );
    node3
        .upload(
            kinit_executor::UploadSource::File(&apply.binary),
            "/root/kinit",
            &kinit_executor::FileAttrs::mode(0o755),
        )
        .await
        .unwrap();
    // A wrong CA pin is refused before the token is ever sent.
    let wrong_pin = format!("sha256:{}", "0".repeat(64));
    let refused = node3
        .run(&format!(
            "/root/kinit join 10.88.0.11:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash {wrong_pin}"
        ))
        .await
        .unwrap();
    assert!(!refused.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("matches no"));
    let started = Instant::now();
    let joined = node3
        .run_checked(&format!("/root/kinit {join_args} -o json"))
        .await
        .unwrap();
    println!("join took {:.1} s", started.elapsed().as_secs_f64());
    let joined: Value = serde_json::from_slice(&joined.stdout).unwrap();
    assert_eq!(joined["state"], "ready", "{joined}");
    // The same join again reuses the certificates and changes nothing.
    let again = node3
        .run_checked(&format!("/root/kinit {join_args} -o json"))
        .await
        .unwrap();
    let again: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again["state"], "ready", "{again}");
    assert_eq!(again["phases"], serde_json::json!([]), "{again}");
    // The name of another Ready node is not taken over.
    let taken = node3
        .run(&format!("/root/kinit {join_args} --node-name node2"))
        .await
        .unwrap();
    assert!(!taken.success());
    assert!(
        String::from_utf8_lossy(&taken.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&taken.stderr)
    );
    let csrs = kubectl.ok(&["get", "csr"]);
    for signer in [
        "kubernetes.io/kube-apiserver-client-kubelet",
        "kubernetes.io/kubelet-serving",
    ] {
        assert!(
            csrs.lines()
                .any(|l| l.contains(signer) && l.contains("Approved,Issued")),
            "{signer} CSR approved and issued: {csrs}"
        );
    }
    // Logs through the API server prove the serving certificate from the CSR verifies.
    kubectl.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: on-node3\nspec:\n  nodeName: node3\n  containers:\n  - name: app\n    image: {original}\n    imagePullPolicy: IfNotPresent\n"
    ));
    eventually("on-node3 Running", Duration::from_secs(60), || {
        let pod = kubectl.json(&["get", "pod", "on-node3"]);
        (pod["status"]["phase"] == "Running").then_some(())
    })
    .await;
    let logs = kubectl.ok(&["logs", "on-node3"]);
    assert!(logs.contains("listening"), "{logs}");
    // The usual way out before a reset: drain (cordon, then evict through the API).
    let drained = kubectl.ok(&[
        "drain",
        "node3",
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--force",
        "--timeout=120s",
    ]);
    assert!(drained.contains("node/node3 drained"), "{drained}");
    assert!(
        !kubectl
            .output(&["get", "pod", "on-node3"], None)
            .status
            .success(),
        "on-node3 still listed after the drain"
    );
    assert_eq!(
        kubectl.json(&["get", "node", "node3"])["spec"]["unschedulable"],
        true
    );
    reset_node3();
    node3.run_checked("rm -f /root/kinit").await.unwrap();
    let left = kinit_leftovers(node3).await;
    assert!(
        left.is_empty(),
        "left on node3 after the second reset: {left:#?}"
    );

    println!("--- an apply killed midway, then run again, converges");
    // The kill point is drawn from the clock, between 3% and 45% of the time node3 took on
    // the first apply (a lone host converges in about half of that), so over runs it lands in
    // different phases.
    let node3_seconds = first_report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == "node3")
        .and_then(|h| h["seconds"].as_f64())
        .unwrap();
    let fraction = 0.03
        + 0.42
            * f64::from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .subsec_millis(),
            )
            / 1000.0;
    let delay = Duration::from_secs_f64(node3_seconds * fraction);
    let mut child = apply
        .command()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(delay).await;
    let _ = child.kill();
    let _ = child.wait();
    let reached = node3
        .run("ls /usr/local/bin/kinit /etc/kubernetes/kubelet.conf /opt/cni/bin/kinit-cni /var/lib/kinit/images/binary.sha256 2>/dev/null; systemctl is-active kinit-agent")
        .await
        .unwrap();
    println!(
        "killed after {:.1} s; node3 had: {}",
        delay.as_secs_f64(),
        String::from_utf8_lossy(&reached.stdout).replace('\n', " ")
    );
    let (report, took) = apply.run();
    println!("apply after the kill took {:.1} s", took.as_secs_f64());
    let node3_report = report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == "node3")
        .unwrap();
    assert_eq!(node3_report["node"], "ready");
    eventually("node3 Ready in the API", Duration::from_secs(60), || {
        let node = kubectl.json(&["get", "node", "node3"]);
        node["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
            .then_some(())
    })
    .await;
    let (report, _) = apply.run();
    assert_eq!(
        report["changed"], false,
        "converged after the re-run: {report:#}"
    );
}
