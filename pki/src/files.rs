//! File handling shared by generation and renewal: atomic writes with fixed modes, and backups.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use crate::error::PkiError;

/// Mode of private key files and kubeconfigs (which embed a private key).
pub(crate) const MODE_SECRET: u32 = 0o600;
/// Mode of certificate and public key files.
pub(crate) const MODE_PUBLIC: u32 = 0o644;
/// Mode of directories created for the PKI.
pub(crate) const MODE_DIR: u32 = 0o755;

/// Creates `dir` and any missing parents with mode 0755.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), PkiError> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(MODE_DIR)
        .create(dir)
        .map_err(|e| PkiError::io("create directory", dir, e))
}

/// Writes `contents` to `path` atomically: a temporary file in the same directory gets the final
/// mode and contents, is flushed to disk, then renamed over `path`. Readers never see a partial
/// file, and a key file (mode 0600) is never readable by others, not even briefly. Every key,
/// certificate and kubeconfig kinit writes on the admin box or a node goes through here.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    ensure_dir(&dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".kinit-")
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(|e| PkiError::io("create temporary file in", &dir, e))?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| PkiError::io("set permissions on temporary file for", path, e))?;
    tmp.write_all(contents)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| PkiError::io("write", path, e))?;
    tmp.persist(path)
        .map_err(|e| PkiError::io("rename temporary file onto", path, e.error))?;
    // Make the rename itself durable; failure here does not leave a torn file, so it is not fatal.
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads a file, mapping "not found" to `None`.
pub(crate) fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, PkiError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PkiError::io("read", path, e)),
    }
}

/// A timestamped directory holding copies of files before they are replaced.
///
/// Layout: `<parent of pki dir>/kinit-backup/<kind>-<YYYYmmddHHMMSS>/`, with PKI files under
/// `pki/<path relative to the pki dir>` and kubeconfigs at the top, mirroring `/etc/kubernetes`.
/// The directory is created (mode 0700, it holds private keys) on the first file backed up.
#[derive(Debug)]
pub(crate) struct Backup {
    root: PathBuf,
    kind: &'static str,
    created: Option<PathBuf>,
}

impl Backup {
    /// Plans a backup next to `pki_dir`; nothing is created until [`Backup::save`] is called.
    pub(crate) fn new(pki_dir: &Path, kind: &'static str) -> Self {
        let parent = pki_dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Backup {
            root: parent.join("kinit-backup"),
            kind,
            created: None,
        }
    }

    /// The backup directory, if anything was backed up.
    pub(crate) fn dir(&self) -> Option<&Path> {
        self.created.as_deref()
    }

    fn ensure_created(&mut self) -> Result<PathBuf, PkiError> {
        if let Some(d) = &self.created {
            return Ok(d.clone());
        }
        ensure_dir(&self.root)?;
        let stamp = backup_timestamp(OffsetDateTime::now_utc());
        // Two runs within one second get distinct directories instead of mixing their files.
        for attempt in 0..100u32 {
            let name = if attempt == 0 {
                format!("{}-{stamp}", self.kind)
            } else {
                format!("{}-{stamp}-{attempt}", self.kind)
            };
            let dir = self.root.join(name);
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {
                    self.created = Some(dir.clone());
                    return Ok(dir);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(PkiError::io("create backup directory", &dir, e)),
            }
        }
        Err(PkiError::io(
            "create backup directory in",
            &self.root,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "too many backups within one second",
            ),
        ))
    }

    /// Copies `source` (if it exists) to `<backup>/<relative>`, keeping its permissions.
    pub(crate) fn save(&mut self, source: &Path, relative: &Path) -> Result<(), PkiError> {
        if !source.exists() {
            return Ok(());
        }
        let dir = self.ensure_created()?;
        let dest = dir.join(relative);
        if let Some(parent) = dest.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| PkiError::io("create backup directory", parent, e))?;
        }
        fs::copy(source, &dest).map_err(|e| PkiError::io("back up", source, e))?;
        Ok(())
    }
}

/// Relative path of a file inside a backup directory: `pki/<path relative to the pki dir>`
/// for PKI files, the bare file name for anything else (kubeconfigs).
pub(crate) fn backup_name(path: &Path, pki_dir: &Path) -> PathBuf {
    match path.strip_prefix(pki_dir) {
        Ok(rel) => Path::new("pki").join(rel),
        Err(_) => PathBuf::from(path.file_name().unwrap_or(path.as_os_str())),
    }
}

/// `YYYYmmddHHMMSS` in UTC.
pub(crate) fn backup_timestamp(t: OffsetDateTime) -> String {
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn atomic_write_sets_mode_and_replaces_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/file.key");
        write_atomic(&path, b"one", MODE_SECRET).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(dir.path().join("sub")).unwrap().mode() & 0o777,
            0o755
        );
        write_atomic(&path, b"two", MODE_PUBLIC).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o644);
        // No temporary files are left behind.
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }

    #[test]
    fn backup_copies_into_unique_timestamped_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        fs::create_dir_all(&pki).unwrap();
        fs::write(pki.join("a.crt"), b"A").unwrap();
        let mut first = Backup::new(&pki, "certs");
        assert!(first.dir().is_none());
        first
            .save(&pki.join("a.crt"), Path::new("pki/a.crt"))
            .unwrap();
        first
            .save(&pki.join("missing.crt"), Path::new("pki/missing.crt"))
            .unwrap();
        let mut second = Backup::new(&pki, "certs");
        second
            .save(&pki.join("a.crt"), Path::new("pki/a.crt"))
            .unwrap();
        let (d1, d2) = (first.dir().unwrap(), second.dir().unwrap());
        assert_ne!(d1, d2);
        assert!(d1.starts_with(dir.path().join("kinit-backup")));
        assert!(d1
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("certs-"));
        assert_eq!(fs::read(d1.join("pki/a.crt")).unwrap(), b"A");
        assert!(!d1.join("pki/missing.crt").exists());
    }

    #[test]
    fn timestamp_format() {
        let t = time::macros::datetime!(2024-03-05 07:08:09 UTC);
        assert_eq!(backup_timestamp(t), "20240305070809");
    }
}
