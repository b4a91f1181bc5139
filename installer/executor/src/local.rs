//! `LocalHost`: the machine kinit runs on (for `kinit init` run directly on a host, like kubeadm).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::command::{
    display_command, ExecRequest, ExitStatus, FileAttrs, Input, OutputCollector, OutputStream,
    UploadSource,
};
use crate::error::ExecError;
use crate::host::{shell_exists, shell_read_file, shell_upload, temp_name, Host};

/// Default limit for one local command.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(600);

/// The local machine. Commands run through `sh -c` (with `sudo -n` when `sudo` is set and the
/// current user is not root); files are written directly with the same atomic temp + rename
/// semantics as remote uploads.
#[derive(Debug, Clone)]
pub struct LocalHost {
    name: String,
    sudo: bool,
    command_timeout: Duration,
}

impl LocalHost {
    /// The local machine, shown as `name` in messages.
    pub fn new(name: impl Into<String>) -> Self {
        LocalHost {
            name: name.into(),
            sudo: false,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
        }
    }

    /// Elevates commands and file operations with `sudo -n` when not running as root.
    pub fn with_sudo(mut self, sudo: bool) -> Self {
        self.sudo = sudo;
        self
    }

    /// Sets the default per-command timeout.
    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    fn elevate(&self) -> bool {
        self.sudo && !nix::unistd::geteuid().is_root()
    }

    fn io_error(&self, context: impl Into<String>, source: std::io::Error) -> ExecError {
        ExecError::Io {
            host: self.name.clone(),
            context: context.into(),
            source,
        }
    }

    async fn exec_inner(
        &self,
        request: ExecRequest<'_>,
    ) -> Result<CommandOutputOrTimeout, ExecError> {
        let ExecRequest {
            command,
            stdin,
            timeout,
            on_line,
        } = request;
        let mut cmd = if self.elevate() {
            let mut cmd = tokio::process::Command::new("sudo");
            cmd.args(["-n", "sh", "-c", command]);
            cmd
        } else {
            let mut cmd = tokio::process::Command::new("sh");
            cmd.args(["-c", command]);
            cmd
        };
        // Own process group, so a timeout can stop everything the command started.
        cmd.process_group(0)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| {
            self.io_error(format!("cannot start `{}`", display_command(command)), e)
        })?;
        let pid = child.id();
        let mut child_stdin = child.stdin.take();
        let mut child_stdout = child.stdout.take().expect("stdout is piped");
        let mut child_stderr = child.stderr.take().expect("stderr is piped");

        let feed = async {
            if let (Some(input), Some(mut pipe)) = (stdin, child_stdin.take()) {
                let result = match input {
                    Input::Bytes(bytes) => pipe.write_all(bytes).await,
                    Input::File(path) => match tokio::fs::File::open(path).await {
                        Ok(mut file) => tokio::io::copy(&mut file, &mut pipe).await.map(|_| ()),
                        Err(e) => {
                            return Err(self.io_error(format!("cannot open {}", path.display()), e))
                        }
                    },
                };
                // A command that exits without reading all input closes the pipe: not our error.
                match result {
                    Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                        return Err(self.io_error("cannot write the command's input", e))
                    }
                    _ => {}
                }
                drop(pipe);
            }
            Ok(())
        };

        let mut collector = OutputCollector::new(on_line);
        let collect = async {
            let mut out_buf = vec![0u8; 16 * 1024];
            let mut err_buf = vec![0u8; 16 * 1024];
            let (mut out_open, mut err_open) = (true, true);
            while out_open || err_open {
                tokio::select! {
                    read = child_stdout.read(&mut out_buf), if out_open => match read {
                        Ok(0) => out_open = false,
                        Ok(n) => collector.push(OutputStream::Stdout, &out_buf[..n]),
                        Err(e) => return Err(self.io_error("cannot read stdout", e)),
                    },
                    read = child_stderr.read(&mut err_buf), if err_open => match read {
                        Ok(0) => err_open = false,
                        Ok(n) => collector.push(OutputStream::Stderr, &err_buf[..n]),
                        Err(e) => return Err(self.io_error("cannot read stderr", e)),
                    },
                }
            }
            child
                .wait()
                .await
                .map_err(|e| self.io_error("cannot wait for the command", e))
        };

        let limit = timeout.unwrap_or(self.command_timeout);
        let result = tokio::time::timeout(limit, async { tokio::try_join!(feed, collect) }).await;
        match result {
            Ok(Ok(((), status))) => {
                let status = match (
                    status.code(),
                    std::os::unix::process::ExitStatusExt::signal(&status),
                ) {
                    (Some(code), _) => ExitStatus::Code(code),
                    (None, Some(signal)) => ExitStatus::Signal(signal.to_string()),
                    (None, None) => ExitStatus::Unknown,
                };
                Ok(CommandOutputOrTimeout::Done(collector.finish(status)))
            }
            Ok(Err(err)) => Err(err),
            Err(_) => {
                if let Some(pid) = pid {
                    // Our own child's process group (created above), not a name lookup.
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                Ok(CommandOutputOrTimeout::TimedOut(limit))
            }
        }
    }

    /// Direct atomic write: temp file in the same directory, fsync, mode, owner, rename.
    fn write_file_direct(
        &self,
        data: &[u8],
        dest: &Path,
        attrs: &FileAttrs,
    ) -> Result<(), ExecError> {
        let upload_error = |reason: String| ExecError::Upload {
            host: self.name.clone(),
            path: dest.display().to_string(),
            reason,
        };
        let dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = dest
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| upload_error("the destination must be a file path".into()))?;
        std::fs::create_dir_all(dir)
            .map_err(|e| upload_error(format!("cannot create {}: {e}", dir.display())))?;
        let uid = match &attrs.owner {
            Some(owner) => Some(resolve_user(owner).map_err(&upload_error)?),
            None => None,
        };
        let gid = match &attrs.group {
            Some(group) => Some(resolve_group(group).map_err(&upload_error)?),
            None => None,
        };
        let tmp_path = dir.join(temp_name(name));
        let result = (|| -> std::io::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode_0600()
                .open(&tmp_path)?;
            file.write_all(data)?;
            file.sync_all()?;
            std::fs::set_permissions(
                &tmp_path,
                std::fs::Permissions::from_mode(attrs.mode & 0o7777),
            )?;
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::chown(&tmp_path, uid, gid)?;
                // chown clears setuid/setgid bits: apply the mode again.
                std::fs::set_permissions(
                    &tmp_path,
                    std::fs::Permissions::from_mode(attrs.mode & 0o7777),
                )?;
            }
            std::fs::rename(&tmp_path, dest)
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp_path);
            return Err(upload_error(e.to_string()));
        }
        Ok(())
    }
}

/// Sets mode 0600 at creation so the bytes are never readable by others, whatever the umask.
trait OpenOptionsPrivate {
    fn mode_0600(&mut self) -> &mut Self;
}

impl OpenOptionsPrivate for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

fn resolve_user(owner: &str) -> Result<u32, String> {
    if let Ok(uid) = owner.parse::<u32>() {
        return Ok(uid);
    }
    match nix::unistd::User::from_name(owner) {
        Ok(Some(user)) => Ok(user.uid.as_raw()),
        Ok(None) => Err(format!("no user named {owner:?} on this machine")),
        Err(e) => Err(format!("cannot look up user {owner:?}: {e}")),
    }
}

fn resolve_group(group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(found)) => Ok(found.gid.as_raw()),
        Ok(None) => Err(format!("no group named {group:?} on this machine")),
        Err(e) => Err(format!("cannot look up group {group:?}: {e}")),
    }
}

enum CommandOutputOrTimeout {
    Done(crate::CommandOutput),
    TimedOut(Duration),
}

impl Host for LocalHost {
    fn name(&self) -> &str {
        &self.name
    }

    async fn exec(&self, request: ExecRequest<'_>) -> Result<crate::CommandOutput, ExecError> {
        let command = request.command;
        if command.contains('\0') {
            return Err(ExecError::Unquotable {
                host: self.name.clone(),
                what: "the command".into(),
            });
        }
        match self.exec_inner(request).await? {
            CommandOutputOrTimeout::Done(output) => Ok(output),
            CommandOutputOrTimeout::TimedOut(after) => Err(ExecError::Timeout {
                host: self.name.clone(),
                command: display_command(command),
                after,
            }),
        }
    }

    async fn upload(
        &self,
        source: UploadSource<'_>,
        dest: &str,
        attrs: &FileAttrs,
    ) -> Result<(), ExecError> {
        if self.elevate() {
            return shell_upload(self, source, dest, attrs).await;
        }
        let data = match source {
            UploadSource::Bytes(bytes) => bytes.to_vec(),
            UploadSource::File(path) => {
                tokio::fs::read(path).await.map_err(|e| ExecError::Upload {
                    host: self.name.clone(),
                    path: dest.to_string(),
                    reason: format!("cannot read local source {}: {e}", path.display()),
                })?
            }
        };
        let this = self.clone();
        let dest_path = Path::new(dest).to_path_buf();
        let attrs = attrs.clone();
        tokio::task::spawn_blocking(move || this.write_file_direct(&data, &dest_path, &attrs))
            .await
            .map_err(|e| ExecError::Upload {
                host: self.name.clone(),
                path: dest.to_string(),
                reason: format!("writer task failed: {e}"),
            })?
    }

    async fn read_file(&self, path: &str) -> Result<Vec<u8>, ExecError> {
        if self.elevate() {
            return shell_read_file(self, path).await;
        }
        tokio::fs::read(path).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ExecError::NotFound {
                    host: self.name.clone(),
                    path: path.to_string(),
                }
            } else {
                self.io_error(format!("cannot read {path}"), e)
            }
        })
    }

    async fn exists(&self, path: &str) -> Result<bool, ExecError> {
        if self.elevate() {
            return shell_exists(self, path).await;
        }
        match tokio::fs::symlink_metadata(path).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.io_error(format!("cannot check {path}"), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::sync::{Arc, Mutex};

    fn local() -> LocalHost {
        LocalHost::new("local")
    }

    #[tokio::test]
    async fn run_captures_stdout_stderr_and_status() {
        let out = local().run("echo out; echo err >&2; exit 3").await.unwrap();
        assert_eq!(out.stdout_text(), "out\n");
        assert_eq!(out.stderr_text(), "err\n");
        assert_eq!(out.status, ExitStatus::Code(3));
    }

    #[tokio::test]
    async fn run_checked_fails_naming_host_and_command() {
        let err = local()
            .run_checked("echo bad >&2; exit 7")
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("local: `echo bad >&2; exit 7` failed with exit code 7"),
            "{text}"
        );
        assert!(text.ends_with("bad"));
    }

    #[tokio::test]
    async fn stdin_bytes_reach_the_command() {
        let out = local()
            .exec(ExecRequest::new("tr a-z A-Z").stdin(Input::Bytes(b"hello")))
            .await
            .unwrap();
        assert_eq!(out.stdout_text(), "HELLO");
    }

    #[tokio::test]
    async fn streaming_delivers_lines_in_order() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let mut sink = move |stream: OutputStream, line: &str| {
            seen2.lock().unwrap().push((stream, line.to_string()))
        };
        local()
            .run_streaming("printf 'a\\nb\\n'; echo c >&2", &mut sink)
            .await
            .unwrap();
        let seen = seen.lock().unwrap();
        assert!(seen.contains(&(OutputStream::Stdout, "a".into())));
        assert!(seen.contains(&(OutputStream::Stdout, "b".into())));
        assert!(seen.contains(&(OutputStream::Stderr, "c".into())));
    }

    #[tokio::test]
    async fn timeout_stops_the_command_and_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("marker");
        let command = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let start = std::time::Instant::now();
        let err = local()
            .exec(ExecRequest::new(&command).timeout(Duration::from_millis(300)))
            .await
            .unwrap_err();
        assert!(matches!(err, ExecError::Timeout { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(
            !marker.exists(),
            "the background child survived the timeout"
        );
    }

    #[tokio::test]
    async fn upload_writes_atomically_with_mode_and_owner() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("sub/dir/file.conf");
        let dest = dest.to_str().unwrap();
        let me = nix::unistd::getuid().as_raw().to_string();
        let my_group = nix::unistd::getgid().as_raw().to_string();
        let attrs = FileAttrs::mode(0o640).owned_by(me.clone(), my_group);
        let host = local();
        host.upload(UploadSource::Bytes(b"v1"), dest, &attrs)
            .await
            .unwrap();
        host.upload(UploadSource::Bytes(b"v2"), dest, &attrs)
            .await
            .unwrap();
        let meta = std::fs::metadata(dest).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o640);
        assert_eq!(meta.uid().to_string(), me);
        assert_eq!(host.read_file(dest).await.unwrap(), b"v2");
        // No temp files are left next to the target.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub/dir"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["file.conf"]);
    }

    #[tokio::test]
    async fn upload_from_a_local_file() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::write(&src, b"from file").unwrap();
        let dest = dir.path().join("dest");
        local()
            .upload(
                UploadSource::File(&src),
                dest.to_str().unwrap(),
                &FileAttrs::mode(0o600),
            )
            .await
            .unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"from file");
    }

    #[tokio::test]
    async fn upload_with_unknown_owner_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        std::fs::write(&dest, b"old").unwrap();
        let attrs = FileAttrs::mode(0o600).owned_by("no-such-user-kinit", "root");
        let err = local()
            .upload(UploadSource::Bytes(b"new"), dest.to_str().unwrap(), &attrs)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no user named"), "{err}");
        assert_eq!(std::fs::read(&dest).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn shell_upload_has_the_same_semantics() {
        // The script path used over SSH and with sudo, exercised through the local shell.
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a b/c.txt");
        let dest = dest.to_str().unwrap();
        let host = local();
        shell_upload(
            &host,
            UploadSource::Bytes(b"through sh"),
            dest,
            &FileAttrs::mode(0o604),
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read(dest).unwrap(), b"through sh");
        assert_eq!(std::fs::metadata(dest).unwrap().mode() & 0o777, 0o604);
        assert_eq!(shell_read_file(&host, dest).await.unwrap(), b"through sh");
        assert!(shell_exists(&host, dest).await.unwrap());
        let missing = format!("{dest}.missing");
        assert!(!shell_exists(&host, &missing).await.unwrap());
        assert!(matches!(
            shell_read_file(&host, &missing).await,
            Err(ExecError::NotFound { .. })
        ));
        let names: Vec<_> = std::fs::read_dir(dir.path().join("a b"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["c.txt"]);
    }

    #[tokio::test]
    async fn shell_upload_failure_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        std::fs::write(&dest, b"old").unwrap();
        let attrs = FileAttrs::mode(0o600).owned_by("no-such-user-kinit", "root");
        let err = shell_upload(
            &local(),
            UploadSource::Bytes(b"new"),
            dest.to_str().unwrap(),
            &attrs,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ExecError::Upload { .. }), "{err}");
        assert_eq!(std::fs::read(&dest).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn read_and_exists() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x");
        std::fs::write(&file, b"data").unwrap();
        let host = local();
        assert!(host.exists(file.to_str().unwrap()).await.unwrap());
        assert!(!host
            .exists(dir.path().join("y").to_str().unwrap())
            .await
            .unwrap());
        assert_eq!(
            host.read_file(file.to_str().unwrap()).await.unwrap(),
            b"data"
        );
        let err = host
            .read_file(dir.path().join("y").to_str().unwrap())
            .await
            .unwrap_err();
        assert!(matches!(err, ExecError::NotFound { .. }));
    }
}
