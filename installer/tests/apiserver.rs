//! The shipped binary end to end on one machine: `kinit certs generate` makes the PKI and
//! kubeconfigs, `kinit apiserver` serves with them, and an unmodified kubectl uses admin.conf.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const PINNED_KUBECTL: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.32";

/// `$KUBECTL`, else the machine image's kubectl 1.32, else `kubectl` on PATH.
fn kubectl_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("KUBECTL") {
        return Some(PathBuf::from(path)).filter(|p| p.exists());
    }
    Some(PathBuf::from(PINNED_KUBECTL))
        .filter(|p| p.exists())
        .or_else(|| {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(|dir| dir.join("kubectl"))
                .find(|p| p.is_file())
        })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn kinit(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_kinit"))
        .args(args)
        .output()
        .expect("run kinit");
    assert!(
        out.status.success(),
        "kinit {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Kills the server when the test ends, pass or fail, and shows its log on failure.
struct Server {
    child: Child,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- kinit apiserver log ---\n{log}");
        }
    }
}

struct Kubectl {
    binary: PathBuf,
    kubeconfig: PathBuf,
    home: PathBuf,
}

impl Kubectl {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(&self.binary)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env("HOME", &self.home)
            .env("KUBECACHEDIR", self.home.join("cache"))
            .output()
            .expect("run kubectl")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn start_apiserver(dir: &Path, port: u16) -> Server {
    let pki = dir.join("pki");
    let p = |name: &str| pki.join(name).display().to_string();
    let log = dir.join("apiserver.log");
    let child = Command::new(env!("CARGO_BIN_EXE_kinit"))
        .args([
            "apiserver",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
        ])
        .arg(format!("--secure-port={port}"))
        .arg(format!("--tls-cert-file={}", p("apiserver.crt")))
        .arg(format!("--tls-private-key-file={}", p("apiserver.key")))
        .arg(format!("--client-ca-file={}", p("ca.crt")))
        .arg(format!("--service-account-key-file={}", p("sa.pub")))
        .arg(format!(
            "--service-account-signing-key-file={}",
            p("sa.key")
        ))
        .arg(format!("--data-dir={}", dir.join("data").display()))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start kinit apiserver");
    Server { child, log }
}

#[test]
fn kubectl_drives_kinit_apiserver_with_generated_admin_conf() {
    let Some(binary) = kubectl_binary() else {
        assert!(
            std::env::var_os("KINIT_E2E").is_none_or(|v| v != "1"),
            "kubectl not found, but KINIT_E2E=1 requires it (set KUBECTL=/path/to/kubectl)"
        );
        eprintln!("\n*** SKIPPED: kubectl not found (set KUBECTL=/path/to/kubectl) ***\n");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let endpoint = format!("127.0.0.1:{port}");
    kinit(&[
        "certs",
        "generate",
        "--cert-dir",
        dir.path().join("pki").to_str().unwrap(),
        "--node-name",
        "cp-1",
        "--node-ip",
        "127.0.0.1",
        "--control-plane-endpoint",
        &endpoint,
    ]);
    let mut server = start_apiserver(dir.path(), port);
    let kubectl = Kubectl {
        binary,
        kubeconfig: dir.path().join("admin.conf"),
        home: dir.path().join("home"),
    };

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if kubectl.run(&["get", "--raw", "/readyz"]).status.success() {
            break;
        }
        if let Some(status) = server.child.try_wait().unwrap() {
            panic!("kinit apiserver exited early with {status}");
        }
        assert!(Instant::now() < deadline, "API server not ready after 30 s");
        std::thread::sleep(Duration::from_millis(200));
    }

    let namespaces = kubectl.ok(&["get", "namespaces", "-o", "name"]);
    for ns in [
        "namespace/default",
        "namespace/kube-system",
        "namespace/kube-public",
    ] {
        assert!(namespaces.lines().any(|l| l == ns), "{namespaces}");
    }
    // admin.conf carries O=kubeadm:cluster-admins; RBAC must grant it everything.
    assert_eq!(kubectl.ok(&["auth", "can-i", "*", "*"]).trim(), "yes");
    kubectl.ok(&[
        "create",
        "configmap",
        "settings",
        "--from-literal=mode=fast",
    ]);
    let value = kubectl.ok(&[
        "get",
        "configmap",
        "settings",
        "-o",
        "jsonpath={.data.mode}",
    ]);
    assert_eq!(value, "fast");

    // The per-node agent kubeconfig is a node identity: it may read its node's scope but not
    // list secrets cluster-wide.
    let agent = Kubectl {
        kubeconfig: dir.path().join("kubelet.conf"),
        ..kubectl
    };
    assert_eq!(
        agent.ok(&[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}"
        ]),
        "system:node:cp-1"
    );
    let denied = agent.run(&["get", "secrets", "-A"]);
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("Forbidden"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );

    // State survives a restart: the embedded store is on disk in --data-dir.
    drop(server);
    let _server = start_apiserver(dir.path(), port);
    let deadline = Instant::now() + Duration::from_secs(30);
    let kubectl = Kubectl {
        kubeconfig: dir.path().join("admin.conf"),
        ..agent
    };
    while !kubectl.run(&["get", "--raw", "/readyz"]).status.success() {
        assert!(
            Instant::now() < deadline,
            "API server not ready after restart"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let value = kubectl.ok(&[
        "get",
        "configmap",
        "settings",
        "-o",
        "jsonpath={.data.mode}",
    ]);
    assert_eq!(value, "fast");
}
