//! Shared harness of the tests that need a REAL containerd + runc: a private containerd (own
//! root, state, socket and runc root), a busybox image built from the host's busybox, and
//! helpers for hostNetwork pods (this containerd has no CNI configuration). Needs root and the
//! Debian packages containerd, runc and busybox.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kinit_agent::config::{AgentConfiguration, CgroupDriver};
use kinit_agent::runtime::{CriRuntime, Runtime};
use kinit_agent::Settings;
use kube::api::Api;
use sha2::{Digest, Sha256};

pub const IMAGE: &str = "docker.io/kinit/busybox:test";

pub fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(bin))
            .find(|p| p.is_file())
    })
}

/// Why this machine cannot run the test, if it cannot.
pub fn missing_prerequisites() -> Option<String> {
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

pub struct Containerd {
    child: Child,
    /// Private directory (config, root, state, socket, log).
    pub dir: PathBuf,
    /// CRI socket.
    pub socket: PathBuf,
    /// cgroup parent for pods.
    pub cgroup: String,
}

impl Containerd {
    /// Starts containerd on a private root/state/socket.
    pub fn start(tag: &str) -> Containerd {
        let dir = PathBuf::from(format!("/tmp/kinit-agent-ctd-{tag}-{}", std::process::id()));
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
            cgroup: format!("/kinit-agent-test-{tag}-{}", std::process::id()),
            dir,
        }
    }

    /// Builds and imports the busybox test image.
    pub fn import_image(&self) {
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

    /// Stops and removes every container and sandbox.
    pub async fn remove_everything(&self, rt: &CriRuntime) {
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

pub fn remove_cgroup_tree(p: &Path) {
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

pub fn sha(b: &[u8]) -> String {
    format!("{:x}", Sha256::digest(b))
}

/// An OCI image archive with busybox (and the libraries it links) and sleep as default command.
pub fn build_image_tar(out: &Path) {
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
        "sh", "sleep", "echo", "cat", "httpd", "true", "false", "ls", "nc", "env", "wget", "head",
        "tty", "stty", "wc",
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

pub fn settings(dir: &Path, ctd: &Containerd) -> Settings {
    let config = AgentConfiguration {
        cgroup_driver: CgroupDriver::Cgroupfs,
        cgroup_parent: ctd.cgroup.clone(),
        root_dir: dir.join("root"),
        pod_logs_dir: dir.join("logs"),
        pod_manifest_path: dir.join("manifests"),
        container_runtime_endpoint: format!("unix://{}", ctd.socket.display()),
        node_status_update_frequency_seconds: 2,
        // These tests run in the machine's own network namespace: no service proxy table
        // there (the proxy has its own tests in private namespaces).
        service_proxy: false,
        ..Default::default()
    };
    Settings {
        node_name: "n1".into(),
        node_ip: Some("127.0.0.1".parse().unwrap()),
        kubeconfig: dir.join("unused"),
        config,
    }
}

pub fn pod(name: &str, spec: serde_json::Value) -> Pod {
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

pub async fn wait_pod(
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

pub fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}
