//! The agent with a REAL containerd + runc (started by this test with a private root, state,
//! socket and runc root) and a real API server. Needs root and the Debian packages containerd,
//! runc and busybox. Without them the test is skipped loudly, unless KINIT_E2E=1 (then it
//! fails). Pods use hostNetwork: this containerd has no CNI configuration.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kinit_agent::config::{AgentConfiguration, CgroupDriver};
use kinit_agent::runtime::{CriRuntime, Runtime};
use kinit_agent::{client_from_kubeconfig, Agent, Settings};
use kinit_apiserver::testing::TestServer;
use kube::api::{Api, DeleteParams, PostParams};
use sha2::{Digest, Sha256};

const IMAGE: &str = "docker.io/kinit/busybox:test";

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(bin))
            .find(|p| p.is_file())
    })
}

/// Why this machine cannot run the test, if it cannot.
fn missing_prerequisites() -> Option<String> {
    for bin in [
        "containerd",
        "containerd-shim-runc-v2",
        "runc",
        "ctr",
        "busybox",
    ] {
        if which(bin).is_none() {
            return Some(format!(
                "{bin} is not installed (apt-get install containerd runc busybox)"
            ));
        }
    }
    if unsafe { libc::geteuid() } != 0 {
        return Some("containerd needs root".into());
    }
    None
}

struct Containerd {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    cgroup: String,
}

impl Containerd {
    fn start() -> Containerd {
        let dir = PathBuf::from(format!("/tmp/kinit-agent-ctd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("cni-conf")).unwrap();
        std::fs::create_dir_all(dir.join("cni-bin")).unwrap();
        let socket = dir.join("c.sock");
        let d = dir.display();
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{d}/c.sock"
[ttrpc]
  address = "{d}/c.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni-bin"
    conf_dir = "{d}/cni-conf"
"#
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start containerd");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "containerd did not create its socket; see {}/containerd.log",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Containerd {
            child,
            socket,
            cgroup: format!("/kinit-agent-test-{}", std::process::id()),
            dir,
        }
    }

    fn import_image(&self) {
        let tar = self.dir.join("busybox.tar");
        build_image_tar(&tar);
        let out = Command::new("ctr")
            .args([
                "-a",
                self.socket.to_str().unwrap(),
                "-n",
                "k8s.io",
                "images",
                "import",
            ])
            .arg(&tar)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ctr import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    async fn remove_everything(&self, rt: &CriRuntime) {
        for c in rt.list_containers(None).await.unwrap_or_default() {
            let _ = rt.stop_container(&c.id, 0).await;
            let _ = rt.remove_container(&c.id).await;
        }
        for s in rt.list_pod_sandboxes(None).await.unwrap_or_default() {
            let _ = rt.stop_pod_sandbox(&s.id).await;
            let _ = rt.remove_pod_sandbox(&s.id).await;
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // containerd was started by this test: stop exactly that process.
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Empty per-test cgroups left in each hierarchy (cgroupfs driver).
        for entry in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let base = entry.path().join(self.cgroup.trim_start_matches('/'));
            remove_cgroup_tree(&base);
        }
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.join("root"))
            .status();
        if std::env::var_os("KINIT_KEEP_CONTAINERD").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn remove_cgroup_tree(p: &Path) {
    if !p.is_dir() {
        return;
    }
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            remove_cgroup_tree(&e.path());
        }
    }
    let _ = std::fs::remove_dir(p);
}

fn sha(b: &[u8]) -> String {
    format!("{:x}", Sha256::digest(b))
}

/// An OCI image archive with busybox (and the libraries it links) and sleep as default command.
fn build_image_tar(out: &Path) {
    let mut layer = tar::Builder::new(Vec::new());
    let add_file = |layer: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_entry_type(tar::EntryType::Regular);
        layer.append_data(&mut h, path, data).unwrap();
    };
    let add_dir = |layer: &mut tar::Builder<Vec<u8>>, path: &str| {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o755);
        h.set_entry_type(tar::EntryType::Directory);
        layer.append_data(&mut h, path, &[][..]).unwrap();
    };
    for d in [
        "bin",
        "etc",
        "tmp",
        "lib",
        "lib64",
        "lib/x86_64-linux-gnu",
        "var",
        "www",
    ] {
        add_dir(&mut layer, d);
    }
    let busybox = std::fs::read(which("busybox").unwrap()).unwrap();
    add_file(&mut layer, "bin/busybox", &busybox, 0o755);
    for applet in [
        "sh", "sleep", "echo", "cat", "httpd", "true", "false", "ls", "nc", "env", "wget",
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o777);
        h.set_entry_type(tar::EntryType::Symlink);
        layer
            .append_link(&mut h, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    let ldd = Command::new("ldd")
        .arg(which("busybox").unwrap())
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = line
            .split("=>")
            .last()
            .and_then(|s| s.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(path) = path {
            let data = std::fs::read(path).unwrap();
            add_file(&mut layer, path.trim_start_matches('/'), &data, 0o755);
        }
    }
    add_file(
        &mut layer,
        "etc/passwd",
        b"root:x:0:0:root:/:/bin/sh\n",
        0o644,
    );
    add_file(&mut layer, "www/index.html", b"ok\n", 0o644);
    let layer = layer.into_inner().unwrap();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sleep", "2147483647"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha(&layer))]}
    });
    let config = serde_json::to_vec(&config).unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", sha(&config)), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{}", sha(&layer)), "size": layer.len()}]
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", sha(&manifest)), "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": IMAGE, "org.opencontainers.image.ref.name": "test"}}]
    }))
    .unwrap();
    let mut archive = tar::Builder::new(std::fs::File::create(out).unwrap());
    let mut put = |path: String, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        archive.append_data(&mut h, path, data).unwrap();
    };
    put("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#);
    put("index.json".into(), &index);
    for blob in [&layer, &config, &manifest] {
        put(format!("blobs/sha256/{}", sha(blob)), blob);
    }
    archive.finish().unwrap();
}

fn settings(dir: &Path, ctd: &Containerd) -> Settings {
    let config = AgentConfiguration {
        cgroup_driver: CgroupDriver::Cgroupfs,
        cgroup_parent: ctd.cgroup.clone(),
        root_dir: dir.join("root"),
        pod_logs_dir: dir.join("logs"),
        pod_manifest_path: dir.join("manifests"),
        container_runtime_endpoint: format!("unix://{}", ctd.socket.display()),
        node_status_update_frequency_seconds: 2,
        ..Default::default()
    };
    Settings {
        node_name: "n1".into(),
        node_ip: Some("127.0.0.1".parse().unwrap()),
        kubeconfig: dir.join("unused"),
        config,
    }
}

fn pod(name: &str, spec: serde_json::Value) -> Pod {
    let mut full = serde_json::json!({"nodeName": "n1", "hostNetwork": true, "terminationGracePeriodSeconds": 2});
    full.as_object_mut()
        .unwrap()
        .extend(spec.as_object().unwrap().clone());
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": full
    }))
    .unwrap()
}

async fn wait_pod(
    pods: &Api<Pod>,
    name: &str,
    secs: u64,
    what: &str,
    f: impl Fn(&Pod) -> bool,
) -> Pod {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(p) = pods.get_opt(name).await.unwrap() {
            if f(&p) {
                return p;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {name} to be {what}: {:?}", p.status);
            }
        } else if Instant::now() > deadline {
            panic!("timed out waiting for {name} to be {what}: it does not exist");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

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
    let ctd = Containerd::start();
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
