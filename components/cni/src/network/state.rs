//! The runtime file through which the node network tells the CNI plugin what pods need.

use std::io::{ErrorKind, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Backend;
use crate::error::CniError;

/// Contents of the runtime file ([`super::DEFAULT_STATE_FILE`]), e.g.
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
}
