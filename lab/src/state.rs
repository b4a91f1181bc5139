//! The lab's state file: everything `up` created, so `down` removes exactly that.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::LabError;
use crate::system::write_atomic;

/// How far `up` got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabPhase {
    /// `up` is running (or died): some resources may exist.
    Starting,
    /// All hosts booted and answer over SSH.
    Up,
}

/// One lab host and the resources it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostState {
    /// Host name (also hostname and machine name).
    pub name: String,
    /// IPv4 address on the lab bridge.
    pub address: String,
    /// The host's directory (overlay upper/work, merged root, containerd data, console log).
    pub dir: PathBuf,
    /// Merged root file system (the overlay mount point).
    pub root: PathBuf,
    /// Whether the overlay is mounted.
    pub mounted: bool,
    /// PID of the systemd-nspawn process.
    pub nspawn_pid: Option<i32>,
    /// Its start time (ticks), so a recycled PID is never signalled.
    pub nspawn_start_ticks: Option<u64>,
    /// PID of the container's init (systemd), as seen from the outer machine.
    pub leader_pid: Option<i32>,
    /// Its start time (ticks).
    pub leader_start_ticks: Option<u64>,
    /// Outer end of the host's veth pair.
    pub veth: Option<String>,
}

impl HostState {
    /// Directory with overlay upper layer.
    pub fn upper_dir(&self) -> PathBuf {
        self.dir.join("upper")
    }

    /// Overlay work directory.
    pub fn work_dir(&self) -> PathBuf {
        self.dir.join("work")
    }

    /// Data directory bound to the host's `/var/lib/containerd` (a plain file system, so
    /// containerd's overlay snapshotter works inside the host).
    pub fn containerd_dir(&self) -> PathBuf {
        self.dir.join("containerd")
    }

    /// Console output of the host.
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
}

/// Everything one lab consists of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabState {
    /// Lab name.
    pub name: String,
    /// How far `up` got.
    pub phase: LabPhase,
    /// Bridge name.
    pub bridge: String,
    /// Whether `up` created the bridge (and `down` must delete it).
    pub bridge_created: bool,
    /// Bridge (gateway) address with prefix, e.g. `10.88.0.1/24`.
    pub gateway: String,
    /// The lab's directory under the lab root (host directories live in it).
    pub lab_dir: PathBuf,
    /// The base image the hosts overlay (kept by `down`).
    pub base_image: PathBuf,
    /// Where key, known_hosts and inventory were written.
    pub out_dir: PathBuf,
    /// Files `up` wrote into `out_dir` (removed by `down`).
    pub files: Vec<PathBuf>,
    /// Whether `up` created `out_dir` (removed by `down` when empty).
    pub out_dir_created: bool,
    /// Private key that logs into every host (root and the sudo user).
    pub ssh_key: PathBuf,
    /// known_hosts with every host's key.
    pub known_hosts: PathBuf,
    /// Inventory file for kinit.
    pub inventory: PathBuf,
    /// The hosts, in order.
    pub hosts: Vec<HostState>,
}

impl LabState {
    /// Path of the state file of lab `name` under `run_dir`.
    pub fn file(run_dir: &Path, name: &str) -> PathBuf {
        run_dir.join(format!("{name}.json"))
    }

    /// Writes the state atomically.
    pub fn save(&self, run_dir: &Path) -> Result<(), LabError> {
        std::fs::create_dir_all(run_dir)
            .map_err(|e| LabError::io(format!("cannot create {}", run_dir.display()), e))?;
        let path = Self::file(run_dir, &self.name);
        let json = serde_json::to_vec_pretty(self).map_err(|e| LabError::State {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&path, &json, 0o600)
    }

    /// Reads the state of lab `name`.
    pub fn load(run_dir: &Path, name: &str) -> Result<LabState, LabError> {
        let path = Self::file(run_dir, name);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LabError::NotUp {
                    name: name.to_string(),
                    state_file: path,
                })
            }
            Err(e) => return Err(LabError::io(format!("cannot read {}", path.display()), e)),
        };
        serde_json::from_str(&text).map_err(|e| LabError::State {
            path,
            reason: format!("{e}; remove the lab's resources by hand or delete the file"),
        })
    }

    /// Names of all labs with a state file under `run_dir`.
    pub fn list(run_dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(run_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".json")
                    .filter(|n| !n.starts_with('.'))
                    .map(str::to_string)
            })
            .collect();
        names.sort();
        names
    }

    /// Deletes the state file.
    pub fn remove(run_dir: &Path, name: &str) -> Result<(), LabError> {
        let path = Self::file(run_dir, name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(LabError::io(format!("cannot remove {}", path.display()), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LabState {
        LabState {
            name: "lab".into(),
            phase: LabPhase::Starting,
            bridge: "kinitlab0".into(),
            bridge_created: true,
            gateway: "10.88.0.1/24".into(),
            lab_dir: "/var/lib/kinit-lab/lab".into(),
            base_image: "/var/lib/kinit-lab/base-bookworm-x".into(),
            out_dir: "/var/lib/kinit-lab/lab".into(),
            files: vec!["/var/lib/kinit-lab/lab/id_ed25519".into()],
            out_dir_created: false,
            ssh_key: "/var/lib/kinit-lab/lab/id_ed25519".into(),
            known_hosts: "/var/lib/kinit-lab/lab/known_hosts".into(),
            inventory: "/var/lib/kinit-lab/lab/inventory.yaml".into(),
            hosts: vec![HostState {
                name: "node1".into(),
                address: "10.88.0.11".into(),
                dir: "/var/lib/kinit-lab/lab/node1".into(),
                root: "/var/lib/kinit-lab/lab/node1/root".into(),
                mounted: true,
                nspawn_pid: Some(42),
                nspawn_start_ticks: Some(7),
                leader_pid: None,
                leader_start_ticks: None,
                veth: Some("vb-node1".into()),
            }],
        }
    }

    #[test]
    fn state_round_trips_and_lists() {
        let run = tempfile::tempdir().unwrap();
        let state = sample();
        state.save(run.path()).unwrap();
        assert_eq!(LabState::load(run.path(), "lab").unwrap(), state);
        assert_eq!(LabState::list(run.path()), vec!["lab".to_string()]);
        LabState::remove(run.path(), "lab").unwrap();
        LabState::remove(run.path(), "lab").unwrap();
        assert!(matches!(
            LabState::load(run.path(), "lab"),
            Err(LabError::NotUp { .. })
        ));
        assert!(LabState::list(run.path()).is_empty());
    }

    #[test]
    fn corrupt_state_is_reported_with_its_path() {
        let run = tempfile::tempdir().unwrap();
        std::fs::write(run.path().join("lab.json"), "{not json").unwrap();
        let err = LabState::load(run.path(), "lab").unwrap_err();
        assert!(err.to_string().contains("lab.json"), "{err}");
    }

    #[test]
    fn host_paths() {
        let host = &sample().hosts[0];
        assert_eq!(
            host.upper_dir(),
            PathBuf::from("/var/lib/kinit-lab/lab/node1/upper")
        );
        assert_eq!(
            host.containerd_dir(),
            PathBuf::from("/var/lib/kinit-lab/lab/node1/containerd")
        );
    }
}
