//! The state file through which the node network tells the CNI plugin what pods need.
//!
//! It lives on persistent storage ([`super::DEFAULT_STATE_FILE`] is under `/var/lib/kinit`),
//! so after a reboot pods started before the agent's first sync still get the overlay's MTU.

use std::io::{ErrorKind, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Backend;
use crate::error::CniError;

/// Contents of the state file ([`super::DEFAULT_STATE_FILE`]), e.g.
/// `{"backend":"vxlan","mtu":1450}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkState {
    /// The backend in place.
    pub backend: Backend,
    /// The MTU pods' interfaces must have.
    pub mtu: u32,
}

impl NetworkState {
    /// Reads the file; `None` when it does not exist (yet).
    pub fn read(path: &Path) -> Result<Option<NetworkState>, CniError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CniError::io("cannot read the network state file", path, e)),
        };
        serde_json::from_slice(&text).map(Some).map_err(|e| {
            CniError::Io {
                what: "the network state file is not valid JSON (the node agent rewrites it on its next sync; delete it to fall back to the uplink MTU)",
                path: path.to_path_buf(),
                source: std::io::Error::new(ErrorKind::InvalidData, e),
            }
        })
    }

    /// Reads the file, waiting up to `timeout` for it to appear (polling, so it works on any
    /// file system); `None` when it is still missing then. Used by ADD when the
    /// configuration names the file: on a node's first boot the agent may not have synced
    /// yet when the first pods start.
    pub fn wait_for(path: &Path, timeout: Duration) -> Result<Option<NetworkState>, CniError> {
        const POLL: Duration = Duration::from_millis(100);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(state) = NetworkState::read(path)? {
                return Ok(Some(state));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            std::thread::sleep(POLL.min(deadline - now));
        }
    }

    /// Writes the file atomically (temporary file in the same directory, then rename);
    /// an identical file is left alone. Returns whether it was written.
    pub fn write(&self, path: &Path) -> Result<bool, CniError> {
        let text = serde_json::to_vec(self).expect("state serializes");
        if std::fs::read(path).is_ok_and(|old| old == text) {
            return Ok(false);
        }
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .map_err(|e| CniError::io("cannot create the directory of", path, e))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "network.json".into());
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(&text)?;
            f.sync_all()
        });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(CniError::io("cannot write", &tmp, e));
        }
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            CniError::io("cannot move the network state file into place at", path, e)
        })?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_atomically_and_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("network.json");
        assert_eq!(NetworkState::read(&path).unwrap(), None);
        let s = NetworkState {
            backend: Backend::Vxlan,
            mtu: 1450,
        };
        assert!(s.write(&path).unwrap());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            r#"{"backend":"vxlan","mtu":1450}"#
        );
        assert!(
            !s.write(&path).unwrap(),
            "unchanged content is not rewritten"
        );
        assert_eq!(NetworkState::read(&path).unwrap(), Some(s));
        let h = NetworkState {
            backend: Backend::HostGw,
            mtu: 1500,
        };
        assert!(h.write(&path).unwrap());
        assert_eq!(NetworkState::read(&path).unwrap(), Some(h));
        // No temporary files are left behind.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
        std::fs::write(&path, "{").unwrap();
        let e = NetworkState::read(&path).unwrap_err();
        assert!(e.to_string().contains("not valid JSON"), "{e}");
    }

    #[test]
    fn waiting_picks_up_a_file_written_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cni").join("network.json");
        let s = NetworkState {
            backend: Backend::Vxlan,
            mtu: 1450,
        };
        let writer = {
            let path = path.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                s.write(&path).unwrap();
            })
        };
        let started = Instant::now();
        assert_eq!(
            NetworkState::wait_for(&path, Duration::from_secs(10)).unwrap(),
            Some(s)
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "returns as soon as the file is there"
        );
        writer.join().unwrap();
        // Present: no wait at all.
        let started = Instant::now();
        assert_eq!(
            NetworkState::wait_for(&path, Duration::from_secs(10)).unwrap(),
            Some(s)
        );
        assert!(started.elapsed() < Duration::from_millis(100));
        // Never written: gives up after the timeout.
        let missing = dir.path().join("missing.json");
        let started = Instant::now();
        assert_eq!(
            NetworkState::wait_for(&missing, Duration::from_millis(250)).unwrap(),
            None
        );
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
    }
}
