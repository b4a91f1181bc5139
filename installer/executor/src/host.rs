//! The `Host` trait and the shell scripts behind its file operations.

use std::future::Future;

use rand::distr::{Alphanumeric, SampleString};

use crate::command::{
    display_command, shell_quote, split_dest, CommandOutput, ExecRequest, FileAttrs, LineSink,
    UploadSource,
};
use crate::error::ExecError;

/// Exit code the read script uses for "no such file" (EX_NOINPUT from sysexits.h).
const READ_MISSING_CODE: i32 = 66;

/// A machine kinit acts on, over SSH or locally. Phases are written against this trait only.
///
/// The methods return `Send` futures so work on many hosts can run on a multi-threaded runtime.
/// The trait uses native `async fn` in traits and is therefore not object-safe; a heterogeneous
/// list of hosts is a `Vec<AnyHost>` (see [`crate::AnyHost`]), which keeps static dispatch and
/// needs no boxing of futures.
pub trait Host: Send + Sync {
    /// The name used in messages and errors (inventory name, else address).
    fn name(&self) -> &str;

    /// Runs one command and returns its output whatever its exit status.
    fn exec(
        &self,
        request: ExecRequest<'_>,
    ) -> impl Future<Output = Result<CommandOutput, ExecError>> + Send;

    /// Writes a file atomically: temp file next to `dest`, then mode and owner, then rename.
    ///
    /// The parent directory is created when missing. A failed upload leaves `dest` untouched.
    fn upload(
        &self,
        source: UploadSource<'_>,
        dest: &str,
        attrs: &FileAttrs,
    ) -> impl Future<Output = Result<(), ExecError>> + Send {
        async move { shell_upload(self, source, dest, attrs).await }
    }

    /// Reads a whole file.
    fn read_file(&self, path: &str) -> impl Future<Output = Result<Vec<u8>, ExecError>> + Send {
        async move { shell_read_file(self, path).await }
    }

    /// Tells whether a path exists (any file type).
    fn exists(&self, path: &str) -> impl Future<Output = Result<bool, ExecError>> + Send {
        async move { shell_exists(self, path).await }
    }

    /// Runs `command`; a non-zero exit is returned as output, not as an error.
    fn run(&self, command: &str) -> impl Future<Output = Result<CommandOutput, ExecError>> + Send {
        async move { self.exec(ExecRequest::new(command)).await }
    }

    /// Runs `command` and fails with [`ExecError::CommandFailed`] unless it exits with 0.
    fn run_checked(
        &self,
        command: &str,
    ) -> impl Future<Output = Result<CommandOutput, ExecError>> + Send {
        async move {
            let output = self.exec(ExecRequest::new(command)).await?;
            check_success(self.name(), command, output)
        }
    }

    /// Runs `command`, handing each output line to `on_line` as it arrives; fails unless it exits 0.
    fn run_streaming<'a>(
        &'a self,
        command: &'a str,
        on_line: LineSink<'a>,
    ) -> impl Future<Output = Result<CommandOutput, ExecError>> + Send + 'a {
        async move {
            let output = self
                .exec(ExecRequest::new(command).on_line(on_line))
                .await?;
            check_success(self.name(), command, output)
        }
    }
}

/// Turns a non-zero exit into [`ExecError::CommandFailed`] naming host, command and stderr.
pub fn check_success(
    host: &str,
    command: &str,
    output: CommandOutput,
) -> Result<CommandOutput, ExecError> {
    if output.success() {
        Ok(output)
    } else {
        Err(ExecError::CommandFailed {
            host: host.to_string(),
            command: display_command(command),
            status: output.status.clone(),
            stderr_tail: output.stderr_tail(5),
        })
    }
}

fn quote(host: &str, what: &str, word: &str) -> Result<String, ExecError> {
    shell_quote(word).ok_or_else(|| ExecError::Unquotable {
        host: host.to_string(),
        what: what.to_string(),
    })
}

/// The name of the temporary file an upload writes before renaming it over `name`.
pub(crate) fn temp_name(name: &str) -> String {
    let suffix = Alphanumeric.sample_string(&mut rand::rng(), 10);
    format!(".{name}.kinit-tmp-{suffix}")
}

/// The `sh` script that performs an atomic upload of standard input to `dest`.
pub(crate) fn upload_script(
    host: &str,
    dest: &str,
    attrs: &FileAttrs,
) -> Result<String, ExecError> {
    let (dir, name) = split_dest(dest).ok_or_else(|| ExecError::Upload {
        host: host.to_string(),
        path: dest.to_string(),
        reason: "the destination must be a file path, not a directory".to_string(),
    })?;
    let tmp = format!("{}/{}", dir.trim_end_matches('/'), temp_name(&name));
    let q_dir = quote(host, "upload directory", &dir)?;
    let q_tmp = quote(host, "upload temp path", &tmp)?;
    let q_dest = quote(host, "upload path", dest)?;
    let mut script = format!(
        "set -e\n\
         mkdir -p -- {q_dir}\n\
         tmp={q_tmp}\n\
         trap 'rm -f -- \"$tmp\"' EXIT\n\
         umask 077\n\
         cat > \"$tmp\"\n\
         chmod {mode:o} -- \"$tmp\"\n",
        mode = attrs.mode & 0o7777,
    );
    if let Some(spec) = attrs.chown_spec() {
        let q_spec = quote(host, "file owner", &spec)?;
        script.push_str(&format!("chown {q_spec} -- \"$tmp\"\n"));
    }
    script.push_str(&format!("mv -f -- \"$tmp\" {q_dest}\ntrap - EXIT\n"));
    Ok(script)
}

/// Upload through the host's shell: stream the bytes into `cat`, then chmod/chown/mv.
///
/// An exec channel is used rather than SFTP because it goes through the same `sudo` wrapper as
/// every command (SFTP would write as the login user, who often cannot write system paths).
pub async fn shell_upload<H: Host + ?Sized>(
    host: &H,
    source: UploadSource<'_>,
    dest: &str,
    attrs: &FileAttrs,
) -> Result<(), ExecError> {
    let script = upload_script(host.name(), dest, attrs)?;
    let output = host
        .exec(ExecRequest::new(&script).stdin(source.into()))
        .await
        .map_err(|err| match err {
            ExecError::Io {
                host,
                context,
                source,
            } => ExecError::Upload {
                host,
                path: dest.to_string(),
                reason: format!("{context}: {source}"),
            },
            other => other,
        })?;
    if output.success() {
        Ok(())
    } else {
        Err(ExecError::Upload {
            host: host.name().to_string(),
            path: dest.to_string(),
            reason: format!("{}: {}", output.status, output.stderr_tail(5)),
        })
    }
}

/// Reads a file through the host's shell (`cat`), mapping a missing file to [`ExecError::NotFound`].
pub async fn shell_read_file<H: Host + ?Sized>(host: &H, path: &str) -> Result<Vec<u8>, ExecError> {
    let q_path = quote(host.name(), "path", path)?;
    let script =
        format!("if [ -e {q_path} ]; then exec cat -- {q_path}; else exit {READ_MISSING_CODE}; fi");
    let output = host.exec(ExecRequest::new(&script)).await?;
    match output.status.code() {
        Some(0) => Ok(output.stdout),
        Some(READ_MISSING_CODE) => Err(ExecError::NotFound {
            host: host.name().to_string(),
            path: path.to_string(),
        }),
        _ => Err(ExecError::CommandFailed {
            host: host.name().to_string(),
            command: format!("cat -- {q_path}"),
            status: output.status.clone(),
            stderr_tail: output.stderr_tail(5),
        }),
    }
}

/// Tests for a path through the host's shell. The answer comes on stdout so a failing `sudo`
/// (exit 1) is never mistaken for "does not exist".
pub async fn shell_exists<H: Host + ?Sized>(host: &H, path: &str) -> Result<bool, ExecError> {
    let q_path = quote(host.name(), "path", path)?;
    let script = format!("if [ -e {q_path} ] || [ -L {q_path} ]; then echo yes; else echo no; fi");
    let output = check_success(
        host.name(),
        &script,
        host.exec(ExecRequest::new(&script)).await?,
    )?;
    match output.stdout_text().trim() {
        "yes" => Ok(true),
        "no" => Ok(false),
        other => Err(ExecError::CommandFailed {
            host: host.name().to_string(),
            command: display_command(&script),
            status: output.status.clone(),
            stderr_tail: format!("unexpected output {other:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_name_is_hidden_next_to_the_target() {
        let name = temp_name("admin.conf");
        assert!(name.starts_with(".admin.conf.kinit-tmp-"));
        assert_eq!(name.len(), ".admin.conf.kinit-tmp-".len() + 10);
        assert_ne!(temp_name("a"), temp_name("a"));
    }

    #[test]
    fn upload_script_writes_temp_then_renames() {
        let attrs = FileAttrs::mode(0o600).owned_by("root", "root");
        let script = upload_script("h", "/etc/kubernetes/pki/ca key.pem", &attrs).unwrap();
        assert!(script.contains("mkdir -p -- /etc/kubernetes/pki\n"));
        assert!(script.contains("tmp='/etc/kubernetes/pki/.ca key.pem.kinit-tmp-"));
        assert!(script.contains("chmod 600 -- \"$tmp\""));
        assert!(script.contains("chown root:root -- \"$tmp\""));
        assert!(script.contains("mv -f -- \"$tmp\" '/etc/kubernetes/pki/ca key.pem'"));
        let cat = script.find("cat >").unwrap();
        let mv = script.find("mv -f").unwrap();
        assert!(cat < mv);
    }

    #[test]
    fn upload_script_without_owner_has_no_chown() {
        let script = upload_script("h", "/tmp/x", &FileAttrs::mode(0o644)).unwrap();
        assert!(!script.contains("chown"));
        assert!(script.contains("chmod 644"));
    }

    #[test]
    fn upload_script_rejects_directory_targets() {
        let err = upload_script("node1", "/", &FileAttrs::mode(0o644)).unwrap_err();
        assert!(err.to_string().starts_with("node1: upload to / failed"));
    }

    #[test]
    fn check_success_names_host_and_command() {
        let output = CommandOutput {
            status: crate::ExitStatus::Code(3),
            stdout: vec![],
            stderr: b"boom\n".to_vec(),
        };
        let err = check_success("node9", "false", output).unwrap_err();
        assert_eq!(
            err.to_string(),
            "node9: `false` failed with exit code 3:\nboom"
        );
    }
}
