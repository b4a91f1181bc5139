//! The agent with a REAL containerd + runc (started by this test with a private root, state,
//! socket and runc root) and a real API server. Needs root and the Debian packages containerd,
//! runc and busybox. Without them the test is skipped loudly, unless KINIT_E2E=1 (then it
//! fails). Pods use hostNetwork: this containerd has no CNI configuration.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kinit_agent::runtime::{CriRuntime, Runtime};
use kinit_agent::{client_from_kubeconfig, Agent};
use kinit_apiserver::testing::TestServer;
use kube::api::{Api, DeleteParams, PostParams};

mod common;

use common::{missing_prerequisites, phase, pod, settings, wait_pod, Containerd, IMAGE};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_on_real_containerd() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "kinit_agent=info".into()),
        )
        .with_test_writer()
        .try_init();
    if let Some(why) = missing_prerequisites() {
        if std::env::var("KINIT_E2E").as_deref() == Ok("1") {
            panic!("KINIT_E2E=1 but the containerd test cannot run: {why}");
        }
        // Written to stderr directly: libtest's capture would hide an eprintln! of a passing test.
        let _ = writeln!(std::io::stderr(), "SKIPPED pods_on_real_containerd: {why}");
        return;
    }
    let ctd = Containerd::start("pods");
    ctd.import_image();
    let rt = CriRuntime::connect(&format!("unix://{}", ctd.socket.display()))
        .await
        .unwrap();
    assert!(rt.version().await.unwrap().starts_with("containerd://"));
    assert!(
        rt.image_id(IMAGE).await.unwrap().is_some(),
        "the imported image is visible to CRI"
    );

    let result = tokio::time::timeout(Duration::from_secs(240), scenario(&ctd, rt.clone())).await;
    ctd.remove_everything(&rt).await;
    result.expect("the containerd scenario timed out");
}

async fn scenario(ctd: &Containerd, rt: CriRuntime) {
    let ts = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("manifests")).unwrap();
    let (admin, _) = client_from_kubeconfig(&ts.admin_kubeconfig())
        .await
        .unwrap();
    let (client, ca) =
        client_from_kubeconfig(&ts.kubeconfig_for("system:node:n1", &["system:nodes"]))
            .await
            .unwrap();
    let mut s = settings(dir.path(), ctd);
    let pki = ts.dir.path().join("pki");
    s.config.client_ca_file = pki.join("ca.crt");
    let tls = kinit_agent::server::serving_tls(&s).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent_port = listener.local_addr().unwrap().port();
    let agent = Agent::start(s, Arc::new(rt.clone()), client, ca, Some((listener, tls)));
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let t0 = Instant::now();

    // 1. A job-like pod: env from fieldRef, output in the CRI log, Succeeded.
    pods.create(
        &PostParams::default(),
        &pod("hello", serde_json::json!({"restartPolicy": "Never", "containers": [{
            "name": "c", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
            "command": ["sh", "-c", "echo hello from $POD_NAME on $NODE; echo oops >&2"],
            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]}]})),
    )
    .await
    .unwrap();
    let done = wait_pod(&pods, "hello", 60, "Succeeded", |p| phase(p) == "Succeeded").await;
    let cs = &done
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0];
    let term = cs.state.as_ref().unwrap().terminated.clone().unwrap();
    assert_eq!(term.exit_code, 0);
    assert!(cs
        .container_id
        .as_deref()
        .unwrap()
        .starts_with("containerd://"));
    assert!(cs.image_id.starts_with("sha256:"), "{}", cs.image_id);

    // Logs through the agent server, as the API server's node proxy would fetch them.
    let mut pem = std::fs::read(pki.join("apiserver-kubelet-client.crt")).unwrap();
    pem.extend(std::fs::read(pki.join("apiserver-kubelet-client.key")).unwrap());
    let http = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(
                &std::fs::read(dir.path().join("root/pki/agent.crt")).unwrap(),
            )
            .unwrap(),
        )
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let logs = http
        .get(format!(
            "https://127.0.0.1:{agent_port}/containerLogs/default/hello/c"
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // stdout and stderr are separate pipes: containerd may log the two lines in either order.
    let mut lines: Vec<&str> = logs.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["hello from hello on n1", "oops"], "{logs}");

    eprintln!("phase done at {:?}", t0.elapsed());
    // 2. A web server with HTTP readiness, TCP liveness and exec startup probes.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    pods.create(
        &PostParams::default(),
        &pod("web", serde_json::json!({"containers": [{
            "name": "httpd", "image": IMAGE,
            "command": ["httpd", "-f", "-p", format!("127.0.0.1:{port}"), "-h", "/www"],
            "resources": {"limits": {"cpu": "200m", "memory": "32Mi"}},
            "startupProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1},
            "readinessProbe": {"httpGet": {"path": "/index.html", "port": port}, "periodSeconds": 1},
            "livenessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 1}}]})),
    )
    .await
    .unwrap();
    let web = wait_pod(&pods, "web", 60, "Ready", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    })
    .await;
    assert_eq!(
        web.status.as_ref().unwrap().pod_ip.as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        web.status.as_ref().unwrap().qos_class.as_deref(),
        Some("Guaranteed")
    );
    let body = reqwest::get(format!("http://127.0.0.1:{port}/index.html"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "ok\n");
    // Exec through the agent server (the runtime's streaming URL, proxied), websocket flavour.
    let resp = http
        .get(format!(
            "https://127.0.0.1:{agent_port}/exec/default/web/httpd?command=echo&command=exec-works&output=1&error=1"
        ))
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("Sec-WebSocket-Protocol", "v4.channel.k8s.io")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 101, "{:?}", resp.headers());
    let mut upgraded = resp.upgrade().await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut upgraded, &mut raw),
    )
    .await;
    assert!(
        String::from_utf8_lossy(&raw).contains("exec-works"),
        "exec output: {:?}",
        String::from_utf8_lossy(&raw)
    );

    // The configured cgroup parent is honoured (cgroupfs: <parent>/pod<uid>).
    let uid = web.metadata.uid.clone().unwrap();
    let cg = PathBuf::from("/sys/fs/cgroup/memory")
        .join(ctd.cgroup.trim_start_matches('/'))
        .join(format!("pod{uid}"));
    assert!(cg.is_dir(), "{} exists", cg.display());

    eprintln!("phase done at {:?}", t0.elapsed());
    // 3. A crashing container: restarted, then held in CrashLoopBackOff.
    pods.create(
        &PostParams::default(),
        &pod("crash", serde_json::json!({"containers": [{"name": "c", "image": IMAGE, "command": ["sh", "-c", "exit 3"]}]})),
    )
    .await
    .unwrap();
    let crashed = wait_pod(&pods, "crash", 60, "in CrashLoopBackOff", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.waiting.as_ref())
            .is_some_and(|w| w.reason.as_deref() == Some("CrashLoopBackOff"))
    })
    .await;
    let cs = &crashed.status.unwrap().container_statuses.unwrap()[0];
    assert!(cs.restart_count >= 1);
    assert_eq!(
        cs.last_state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        3
    );

    eprintln!("phase done at {:?}", t0.elapsed());
    // 4. Startup latency of 20 pods (create → Running).
    let created_at = Instant::now();
    for i in 0..20 {
        pods.create(
            &PostParams::default(),
            &pod(
                &format!("load-{i}"),
                serde_json::json!({"terminationGracePeriodSeconds": 1,
                "containers": [{"name": "c", "image": IMAGE, "command": ["sleep", "3600"]}]}),
            ),
        )
        .await
        .unwrap();
    }
    let mut latencies = Vec::new();
    let mut pending: Vec<usize> = (0..20).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !pending.is_empty() {
        assert!(Instant::now() < deadline, "pods not Running: {pending:?}");
        let mut still = Vec::new();
        for i in pending {
            let p = pods.get(&format!("load-{i}")).await.unwrap();
            if phase(&p) == "Running" {
                latencies.push(created_at.elapsed());
            } else {
                still.push(i);
            }
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    latencies.sort();
    eprintln!(
        "STARTUP LATENCY 20 pods (create -> Running, real containerd): p50 {:?}, p99 {:?}, max {:?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().unwrap()
    );
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(rss) = status.lines().find(|l| l.starts_with("VmRSS")) {
            eprintln!("TEST PROCESS (agent + API server + client) {rss}");
        }
    }

    eprintln!("phase done at {:?}", t0.elapsed());
    // 5. Deletion: graceful stop, final delete, sandboxes removed.
    for name in ["web", "crash"]
        .into_iter()
        .map(String::from)
        .chain((0..20).map(|i| format!("load-{i}")))
    {
        pods.delete(&name, &DeleteParams::default()).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let left: Vec<String> = pods
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .filter(|n| n != "hello")
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "pods not deleted: {left:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sandboxes = rt.list_pod_sandboxes(None).await.unwrap();
        if sandboxes.len() == 1 {
            break; // only the finished "hello" pod's sandbox remains
        }
        assert!(
            Instant::now() < deadline,
            "{} sandboxes remain",
            sandboxes.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    agent.stop();
}
