//! Bringing a host's files to their desired state: observe (one remote command for all files),
//! then upload only what differs, backing up every file it replaces.

use std::fmt::Write as _;

use kinit_executor::{shell_quote, ExecError, FileAttrs, Host, UploadSource};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::desired::DesiredFile;

/// kinit's state directory on hosts.
pub const STATE_ROOT: &str = "/var/lib/kinit";

/// Paths relative to a state root:
/// - `backup/<run id>/<path>`: every file a run replaced, as it was;
/// - `originals/<path>`: files that existed before kinit first wrote them (what `reset` restores);
/// - `managed-files`: every path kinit has written, one per line (what `reset` removes).
pub const MANAGED_LIST: &str = "managed-files";

/// How a host's copy of a file compares with the desired one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileStatus {
    /// Same bytes and mode: nothing to do.
    UpToDate,
    /// Not on the host.
    Missing,
    /// Different bytes.
    Changed,
    /// Same bytes, different permission bits.
    ModeChanged,
}

/// One file's observed status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileChange {
    /// Absolute path on the host.
    pub path: String,
    /// What differs.
    pub status: FileStatus,
}

fn hex_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn quoted(host: &str, path: &str) -> Result<String, ExecError> {
    shell_quote(path).ok_or_else(|| ExecError::Unquotable {
        host: host.to_string(),
        what: format!("path {path}"),
    })
}

/// The script that prints `<sha256> <mode>` or `missing` per path, one line each, in order.
fn observe_script(host: &str, files: &[DesiredFile]) -> Result<String, ExecError> {
    let mut script = String::from("set -u\n");
    for file in files {
        let p = quoted(host, &file.path.display().to_string())?;
        let _ = writeln!(
            script,
            "if [ -f {p} ]; then printf '%s %s\\n' \"$(sha256sum < {p} | cut -d' ' -f1)\" \"$(stat -c %a {p})\"; else echo missing; fi"
        );
    }
    Ok(script)
}

/// Compares each desired file with the host's copy.
pub async fn observe<H: Host>(
    host: &H,
    files: &[DesiredFile],
) -> Result<Vec<FileChange>, ExecError> {
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let script = observe_script(host.name(), files)?;
    let command = format!("sh -c {}", quoted(host.name(), &script)?);
    let output = host.run_checked(&command).await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    if lines.len() != files.len() {
        return Err(ExecError::UnexpectedOutput {
            host: host.name().to_string(),
            what: format!(
                "file check printed {} lines for {} files",
                lines.len(),
                files.len()
            ),
        });
    }
    Ok(files
        .iter()
        .zip(lines)
        .map(|(file, line)| {
            let status = match line.split_once(' ') {
                None => FileStatus::Missing,
                Some((sum, _)) if sum != hex_sha256(&file.contents) => FileStatus::Changed,
                Some((_, mode)) if u32::from_str_radix(mode.trim(), 8).ok() != Some(file.mode) => {
                    FileStatus::ModeChanged
                }
                Some(_) => FileStatus::UpToDate,
            };
            FileChange {
                path: file.path.display().to_string(),
                status,
            }
        })
        .collect())
}

/// Before kinit replaces `path`: keep the pre-kinit original once, and this run's backup.
fn before_write_script(state_root: &str, run_id: &str, path: &str) -> Option<String> {
    let p = shell_quote(path)?;
    let managed = shell_quote(&format!("{state_root}/{MANAGED_LIST}"))?;
    let original = shell_quote(&format!("{state_root}/originals{path}"))?;
    let backup = shell_quote(&format!("{state_root}/backup/{run_id}{path}"))?;
    Some(format!(
        "set -e; if [ -e {p} ]; then \
         if ! grep -qxF -- {p} {managed} 2>/dev/null; then mkdir -p -m 0700 \"$(dirname {original})\"; cp -p {p} {original}; fi; \
         mkdir -p -m 0700 \"$(dirname {backup})\"; cp -p {p} {backup}; fi"
    ))
}

/// After kinit wrote `path`: list it as managed (once).
fn after_write_script(state_root: &str, path: &str) -> Option<String> {
    let p = shell_quote(path)?;
    let root = shell_quote(state_root)?;
    let managed = shell_quote(&format!("{state_root}/{MANAGED_LIST}"))?;
    Some(format!(
        "mkdir -p -m 0700 {root} && {{ grep -qxF -- {p} {managed} 2>/dev/null || echo {p} >> {managed}; }}"
    ))
}

/// Writes `contents` to `path` on `host` the managed way: the pre-kinit original is kept under
/// `<state_root>/originals`, the replaced copy under `<state_root>/backup/<run_id>`, and the
/// path is recorded in `<state_root>/managed-files` so `kinit reset` can undo it.
pub async fn write_managed<H: Host>(
    host: &H,
    source: UploadSource<'_>,
    path: &str,
    mode: u32,
    state_root: &str,
    run_id: &str,
) -> Result<(), ExecError> {
    let unquotable = || ExecError::Unquotable {
        host: host.name().to_string(),
        what: format!("path {path}"),
    };
    let before = before_write_script(state_root, run_id, path).ok_or_else(unquotable)?;
    host.run_checked(&format!("sh -c {}", quoted(host.name(), &before)?))
        .await?;
    host.upload(source, path, &FileAttrs::mode(mode)).await?;
    let after = after_write_script(state_root, path).ok_or_else(unquotable)?;
    host.run_checked(&format!("sh -c {}", quoted(host.name(), &after)?))
        .await?;
    Ok(())
}

/// Writes every file whose status is not up to date (see [`write_managed`]); returns how many.
pub async fn apply<H: Host>(
    host: &H,
    files: &[DesiredFile],
    changes: &[FileChange],
    state_root: &str,
    run_id: &str,
) -> Result<usize, ExecError> {
    let mut written = 0;
    for (file, change) in files.iter().zip(changes) {
        if change.status == FileStatus::UpToDate {
            continue;
        }
        let path = file.path.display().to_string();
        write_managed(
            host,
            UploadSource::Bytes(&file.contents),
            &path,
            file.mode,
            state_root,
            run_id,
        )
        .await?;
        written += 1;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kinit_executor::LocalHost;
    use std::os::unix::fs::PermissionsExt;

    fn desired(dir: &std::path::Path, name: &str, contents: &str, mode: u32) -> DesiredFile {
        DesiredFile {
            path: dir.join(name),
            mode,
            contents: contents.as_bytes().to_vec(),
        }
    }

    #[tokio::test]
    async fn only_differences_are_written_and_replaced_files_are_backed_up() {
        let dir = tempfile::tempdir().unwrap();
        let host = LocalHost::new("local");
        let files = vec![
            desired(dir.path(), "a.conf", "new a\n", 0o600),
            desired(dir.path(), "sub/b.yaml", "b\n", 0o644),
            desired(dir.path(), "c.key", "c\n", 0o600),
            desired(dir.path(), "d.txt", "same\n", 0o644),
        ];
        std::fs::write(dir.path().join("a.conf"), "old a\n").unwrap();
        std::fs::write(dir.path().join("c.key"), "c\n").unwrap();
        std::fs::set_permissions(
            dir.path().join("c.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        std::fs::write(dir.path().join("d.txt"), "same\n").unwrap();
        std::fs::set_permissions(
            dir.path().join("d.txt"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();

        let changes = observe(&host, &files).await.unwrap();
        let statuses: Vec<FileStatus> = changes.iter().map(|c| c.status).collect();
        assert_eq!(
            statuses,
            [
                FileStatus::Changed,
                FileStatus::Missing,
                FileStatus::ModeChanged,
                FileStatus::UpToDate
            ]
        );

        let state = tempfile::tempdir().unwrap();
        let state_root = state.path().to_str().unwrap();
        let written = apply(&host, &files, &changes, state_root, "run1")
            .await
            .unwrap();
        assert_eq!(written, 3);
        for f in &files {
            assert_eq!(std::fs::read(&f.path).unwrap(), f.contents);
            let mode = std::fs::metadata(&f.path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, f.mode, "{}", f.path.display());
        }
        let rel = dir.path().strip_prefix("/").unwrap();
        let backup = state.path().join("backup/run1").join(rel).join("a.conf");
        assert_eq!(std::fs::read_to_string(&backup).unwrap(), "old a\n");
        let original = state.path().join("originals").join(rel).join("a.conf");
        assert_eq!(std::fs::read_to_string(&original).unwrap(), "old a\n");
        let managed = std::fs::read_to_string(state.path().join(MANAGED_LIST)).unwrap();
        assert_eq!(managed.lines().count(), 3, "{managed}");

        // A later change backs up kinit's own version but keeps the pre-kinit original.
        let mut newer = files.clone();
        newer[0].contents = b"newer a\n".to_vec();
        let changes = observe(&host, &newer).await.unwrap();
        apply(&host, &newer, &changes, state_root, "run2")
            .await
            .unwrap();
        let backup2 = state.path().join("backup/run2").join(rel).join("a.conf");
        assert_eq!(std::fs::read_to_string(&backup2).unwrap(), "new a\n");
        assert_eq!(std::fs::read_to_string(&original).unwrap(), "old a\n");
        let managed = std::fs::read_to_string(state.path().join(MANAGED_LIST)).unwrap();
        assert_eq!(managed.lines().count(), 3, "listed once: {managed}");
        std::fs::write(&newer[0].path, "new a\n").unwrap();

        // Converged: a second observation finds nothing to do.
        let again = observe(&host, &files).await.unwrap();
        assert!(
            again.iter().all(|c| c.status == FileStatus::UpToDate),
            "{again:?}"
        );
    }

    #[tokio::test]
    async fn awkward_paths_are_quoted_for_the_shell() {
        let dir = tempfile::tempdir().unwrap();
        let file = desired(dir.path(), "it's $HOME \"x\" `id`", "data\n", 0o644);
        std::fs::write(&file.path, "data\n").unwrap();
        std::fs::set_permissions(&file.path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let changes = observe(&LocalHost::new("local"), std::slice::from_ref(&file))
            .await
            .unwrap();
        assert_eq!(changes[0].status, FileStatus::UpToDate);
    }
}
