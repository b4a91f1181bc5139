//! Helpers for kinit's end-to-end tests on lab hosts.
//!
//! The tests need root and the lab's outer-machine tools, so they run only when `KINIT_E2E=1`
//! (the CI script sets it); otherwise each test prints one line saying it was skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use kinit_lab::{system, LabConfig, LabState};

/// Environment variable that enables the end-to-end tests.
pub const ENABLE_VAR: &str = "KINIT_E2E";

/// True when end-to-end tests should run; prints why a test is skipped otherwise.
pub fn e2e_enabled(test: &str) -> bool {
    if std::env::var(ENABLE_VAR).as_deref() == Ok("1") {
        true
    } else {
        skip_notice(&format!(
            "SKIPPED {test}: end-to-end tests run only with {ENABLE_VAR}=1, as root, with the \
             lab's tools installed ({})",
            system::APT_INSTALL
        ));
        false
    }
}

/// Prints a line the test harness does not capture (written to stderr directly, not through
/// `println!`), so a skipped test is visible in every `cargo test` run.
pub fn skip_notice(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The kinit binary under test, from `KINIT_BIN`, if set.
pub fn kinit_bin() -> Option<PathBuf> {
    std::env::var_os("KINIT_BIN").map(PathBuf::from)
}

/// Lab settings for a test: default paths (so the cached base image is shared) and `name`.
pub fn test_config(name: &str, nodes: usize) -> LabConfig {
    LabConfig {
        name: name.to_string(),
        nodes,
        ..LabConfig::default()
    }
}

/// Tears a lab down when dropped (also when a test panics), so no run leaves hosts behind.
pub struct LabGuard {
    run_dir: PathBuf,
    name: String,
    armed: bool,
}

impl LabGuard {
    /// Guards lab `name` whose state lives in `run_dir`.
    pub fn new(run_dir: &Path, name: &str) -> Self {
        LabGuard {
            run_dir: run_dir.to_path_buf(),
            name: name.to_string(),
            armed: true,
        }
    }

    /// The test tore the lab down itself.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let run_dir = self.run_dir.clone();
        let name = self.name.clone();
        // Drop may run inside an async runtime: tear down from a thread with its own runtime.
        let result = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(kinit_lab::down(&run_dir, &name, &()))
                .or_else(|e| match e {
                    kinit_lab::LabError::NotUp { .. } => Ok(()),
                    other => Err(other.to_string()),
                })
        })
        .join();
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("lab guard: tearing down {:?} failed: {e}", self.name),
            Err(_) => eprintln!("lab guard: tearing down {:?} panicked", self.name),
        }
    }
}

/// What is still around of a lab after `down` (empty = nothing).
pub fn leftovers(state: &LabState, run_dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    if LabState::file(run_dir, &state.name).exists() {
        found.push(format!(
            "state file {}",
            LabState::file(run_dir, &state.name).display()
        ));
    }
    for mount in system::mounts_under(&state.lab_dir) {
        found.push(format!("mount {}", mount.display()));
    }
    let mut links = vec![state.bridge.clone()];
    links.extend(state.hosts.iter().filter_map(|h| h.veth.clone()));
    for link in links {
        if Path::new("/sys/class/net").join(&link).exists() {
            found.push(format!("link {link}"));
        }
    }
    for host in &state.hosts {
        for (pid, ticks) in [
            (host.nspawn_pid, host.nspawn_start_ticks),
            (host.leader_pid, host.leader_start_ticks),
        ] {
            if let (Some(pid), Some(ticks)) = (pid, ticks) {
                if system::process_alive(pid, ticks) {
                    found.push(format!("process {pid} of {}", host.name));
                }
            }
        }
    }
    if state.lab_dir.exists() {
        found.push(format!("directory {}", state.lab_dir.display()));
    }
    for file in &state.files {
        if file.exists() {
            found.push(format!("file {}", file.display()));
        }
    }
    found
}

/// Turns on a swap file on the outer machine for the guard's lifetime.
///
/// Swap is kernel-wide: a container cannot have its own (and `swapon` of a file on the hosts'
/// overlay root is refused by the kernel), so this enables real swap for the shared kernel,
/// which every lab host then sees in /proc/swaps, exactly as a host with swap would. The file
/// lives on the outer file system and is removed again on drop.
pub struct SwapGuard {
    path: PathBuf,
}

impl SwapGuard {
    /// Creates a small swap file at `path` and enables it.
    pub fn enable(path: &Path) -> Result<SwapGuard, String> {
        let run = |program: &str, args: &[&str]| -> Result<(), String> {
            let output = std::process::Command::new(program)
                .args(args)
                .output()
                .map_err(|e| format!("cannot run {program}: {e}"))?;
            if output.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{program} {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&output.stderr).trim()
                ))
            }
        };
        let file = path.to_str().ok_or("swap path is not UTF-8")?;
        let guard = SwapGuard {
            path: path.to_path_buf(),
        };
        run(
            "dd",
            &[
                "if=/dev/zero",
                &format!("of={file}"),
                "bs=1M",
                "count=32",
                "status=none",
            ],
        )?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(|e| e.to_string())?;
        run("mkswap", &[file])?;
        run("swapon", &[file])?;
        Ok(guard)
    }
}

impl Drop for SwapGuard {
    fn drop(&mut self) {
        if let Some(file) = self.path.to_str() {
            let active = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
            if active
                .lines()
                .any(|l| l.split_whitespace().next() == Some(file))
            {
                let _ = std::process::Command::new("swapoff").arg(file).status();
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// kubectl 1.32 as the machine image ships it; `$KUBECTL` overrides, `kubectl` on PATH is
/// the fallback. The end-to-end tests use it as the reference client.
pub fn kubectl_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("KUBECTL") {
        return Some(PathBuf::from(path)).filter(|p| p.exists());
    }
    let pinned = PathBuf::from("/usr/lib/google-cloud-sdk/bin/kubectl.1.32");
    if pinned.exists() {
        return Some(pinned);
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("kubectl"))
        .find(|p| p.is_file())
}

/// The reference client against a cluster: kubectl with a kubeconfig and a throwaway home (so
/// no discovery cache survives between tests).
pub struct Kubectl {
    /// The kubectl binary.
    pub bin: PathBuf,
    /// The kubeconfig it uses.
    pub kubeconfig: PathBuf,
    /// `HOME` for kubectl (its cache lives there).
    pub home: tempfile::TempDir,
}

impl Kubectl {
    /// kubectl `bin` with `kubeconfig` and a fresh home.
    pub fn new(bin: PathBuf, kubeconfig: PathBuf) -> Kubectl {
        Kubectl {
            bin,
            kubeconfig,
            home: tempfile::tempdir().expect("a temporary home for kubectl"),
        }
    }

    /// Runs kubectl with `stdin` piped in (or nothing), returning the whole output.
    pub fn output(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        {
            use std::io::Write;
            let mut pipe = child.stdin.take().expect("piped stdin");
            if let Some(text) = stdin {
                pipe.write_all(text.as_bytes())
                    .expect("write kubectl's stdin");
            }
        }
        child.wait_with_output().expect("wait for kubectl")
    }

    /// A kubectl command with the kubeconfig and home set, for callers that need a child.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.bin);
        command
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.home.path());
        command
    }

    /// Runs kubectl and returns stdout; panics with stderr on failure.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args, None);
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl ARGS -o json`, parsed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all)).expect("kubectl printed JSON")
    }

    /// `kubectl apply -f -` of `manifest`; panics on failure.
    pub fn apply(&self, manifest: &str) {
        let out = self.output(&["apply", "-f", "-"], Some(manifest));
        assert!(
            out.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Running, not terminating pods matching the label `selector`, by name.
    pub fn running_pods(&self, selector: &str) -> BTreeMap<String, Value> {
        let list = self.json(&["get", "pods", "-l", selector]);
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| {
                p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
            })
            .filter_map(|p| Some((p["metadata"]["name"].as_str()?.to_string(), p.clone())))
            .collect()
    }
}

/// Waits (up to `limit`) until `check` returns Some, checking every 250 ms.
pub async fn eventually<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Polls `check` every 100 ms until it returns true or `limit` passes.
pub async fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check()
}

/// A copy of the binary without debug info in `dir`: the same program, a quarter of the bytes
/// to upload and build images from. Falls back to `kinit` itself when `strip` is missing.
pub fn stripped(kinit: &Path, dir: &Path) -> PathBuf {
    let out = dir.join("kinit");
    let status = std::process::Command::new("strip")
        .arg("-o")
        .arg(&out)
        .arg(kinit)
        .status();
    match status {
        Ok(s) if s.success() => out,
        _ => kinit.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_config_uses_the_shared_cache() {
        let config = test_config("e2e", 3);
        assert_eq!(config.name, "e2e");
        assert_eq!(config.nodes, 3);
        assert_eq!(config.root_dir, LabConfig::default().root_dir);
    }

    #[test]
    fn leftovers_of_a_lab_that_never_existed_are_none() {
        let run = tempfile::tempdir().unwrap();
        let state = LabState {
            name: "ghost".into(),
            phase: kinit_lab::LabPhase::Starting,
            bridge: "kinit-ghost-br".into(),
            bridge_created: false,
            gateway: "10.88.0.1/24".into(),
            lab_dir: run.path().join("lab"),
            base_image: run.path().join("base"),
            out_dir: run.path().join("lab"),
            files: vec![run.path().join("lab/id_ed25519")],
            out_dir_created: false,
            ssh_key: run.path().join("lab/id_ed25519"),
            known_hosts: run.path().join("lab/known_hosts"),
            inventory: run.path().join("lab/inventory.yaml"),
            hosts: vec![],
        };
        assert!(leftovers(&state, run.path()).is_empty());
        std::fs::create_dir_all(&state.lab_dir).unwrap();
        assert_eq!(leftovers(&state, run.path()).len(), 1);
    }
}
