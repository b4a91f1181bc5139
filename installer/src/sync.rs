//! Bringing a host's files to their desired state: observe (one remote command for all files),
//! then upload only what differs, backing up every file it replaces.

use std::fmt::Write as _;

use kinit_executor::{shell_quote, ExecError, FileAttrs, Host, UploadSource};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::desired::DesiredFile;

/// Where replaced files are kept on the host: `<BACKUP_ROOT>/<run id>/<original path>`.
pub const BACKUP_ROOT: &str = "/var/lib/kinit/backup";

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

/// Uploads every file whose status is not up to date. Files that exist are first copied to
/// `<BACKUP_ROOT>/<run_id>/…` (with their mode), so nothing kinit replaces is lost.
pub async fn apply<H: Host>(
    host: &H,
    files: &[DesiredFile],
    changes: &[FileChange],
    run_id: &str,
) -> Result<usize, ExecError> {
    let mut written = 0;
    for (file, change) in files.iter().zip(changes) {
        if change.status == FileStatus::UpToDate {
            continue;
        }
        let path = file.path.display().to_string();
        if change.status != FileStatus::Missing {
            let backup = format!("{BACKUP_ROOT}/{run_id}{path}");
            let (src, dst) = (quoted(host.name(), &path)?, quoted(host.name(), &backup)?);
            host.run_checked(&format!(
                "mkdir -p -m 0700 \"$(dirname {dst})\" && cp -p {src} {dst}"
            ))
            .await?;
        }
        host.upload(
            UploadSource::Bytes(&file.contents),
            &path,
            &FileAttrs::mode(file.mode),
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

        let run_id = format!("test-{}", std::process::id());
        let written = apply(&host, &files, &changes, &run_id).await.unwrap();
        assert_eq!(written, 3);
        for f in &files {
            assert_eq!(std::fs::read(&f.path).unwrap(), f.contents);
            let mode = std::fs::metadata(&f.path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, f.mode, "{}", f.path.display());
        }
        let backup_dir = std::path::PathBuf::from(format!("{BACKUP_ROOT}/{run_id}"));
        let backup = backup_dir
            .join(dir.path().strip_prefix("/").unwrap())
            .join("a.conf");
        assert_eq!(std::fs::read_to_string(&backup).unwrap(), "old a\n");
        std::fs::remove_dir_all(&backup_dir).unwrap();

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
