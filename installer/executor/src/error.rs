//! The one error type of the executor. Every variant names the host; command errors name the command.

use std::path::PathBuf;
use std::time::Duration;

use crate::command::ExitStatus;

/// What host-key verification found wrong (boxed in [`ExecError`] to keep results small).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKeyProblem {
    /// Host name.
    pub host: String,
    /// Name looked up in known_hosts (`host` or `[host]:port`).
    pub lookup: String,
    /// Key algorithm the server offered.
    pub algorithm: String,
    /// SHA-256 fingerprint of the offered key.
    pub fingerprint: String,
    /// The known_hosts file.
    pub known_hosts: PathBuf,
    /// Line of the recorded (changed or revoked) entry; 0 when the host is unknown.
    pub line: usize,
}

/// Why talking to a host failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// TCP connect or SSH handshake failed.
    #[error(
        "{host}: cannot connect to {address}: {reason}. Check that the host is up, that sshd \
         listens on that port and that no firewall blocks it"
    )]
    Connect {
        host: String,
        address: String,
        reason: String,
    },

    /// Every authentication method was refused.
    #[error("{host}: SSH authentication as `{user}` failed (tried: {tried}). {hint}")]
    Auth {
        host: String,
        user: String,
        tried: String,
        hint: String,
    },

    /// A private key file could not be read or decrypted.
    #[error("{host}: cannot use SSH key {path}: {reason}")]
    Key {
        host: String,
        path: PathBuf,
        reason: String,
    },

    /// Strict host-key checking found no entry for this host.
    #[error(
        "{}: host key of {} is not in {} (server offers {} {}). Check the fingerprint on the \
         host (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`), then rerun with \
         --accept-new-host-keys to record it",
        .0.host, .0.lookup, .0.known_hosts.display(), .0.algorithm, .0.fingerprint
    )]
    HostKeyUnknown(Box<HostKeyProblem>),

    /// The server's key differs from the recorded one.
    #[error(
        "{}: HOST KEY CHANGED for {}: the server offers {} {}, but {}:{} records a different \
         key. Someone may be intercepting the connection, or the host was reinstalled. If the \
         change is expected, remove the old entry (`ssh-keygen -R {} -f {}`) and connect again \
         with --accept-new-host-keys",
        .0.host, .0.lookup, .0.algorithm, .0.fingerprint, .0.known_hosts.display(), .0.line,
        .0.lookup, .0.known_hosts.display()
    )]
    HostKeyChanged(Box<HostKeyProblem>),

    /// The server's key is marked `@revoked`.
    #[error(
        "{}: the host key {} of {} is marked @revoked in {}:{}; refusing to connect. Give the \
         host a new key and record it",
        .0.host, .0.fingerprint, .0.lookup, .0.known_hosts.display(), .0.line
    )]
    HostKeyRevoked(Box<HostKeyProblem>),

    /// The known_hosts file could not be read, parsed or updated.
    #[error("{host}: known_hosts file {path}: {reason}")]
    KnownHosts {
        host: String,
        path: PathBuf,
        reason: String,
    },

    /// A command ran and exited unsuccessfully.
    #[error("{host}: `{command}` failed with {status}{}", stderr_suffix(.stderr_tail))]
    CommandFailed {
        host: String,
        command: String,
        status: ExitStatus,
        stderr_tail: String,
    },

    /// A command did not finish in time.
    #[error(
        "{host}: `{command}` did not finish within {after:?}; raise the timeout if it needs longer"
    )]
    Timeout {
        host: String,
        command: String,
        after: Duration,
    },

    /// Connecting took longer than the connect timeout.
    #[error(
        "{host}: connecting to {address} timed out after {after:?}; is the host up and reachable?"
    )]
    ConnectTimeout {
        host: String,
        address: String,
        after: Duration,
    },

    /// Writing a file on the host failed.
    #[error("{host}: upload to {path} failed: {reason}")]
    Upload {
        host: String,
        path: String,
        reason: String,
    },

    /// A file to read does not exist.
    #[error("{host}: {path} does not exist")]
    NotFound { host: String, path: String },

    /// The SSH session broke while running a command.
    #[error("{host}: SSH session error while running `{command}`: {reason}")]
    Session {
        host: String,
        command: String,
        reason: String,
    },

    /// A local I/O operation failed.
    #[error("{host}: {context}: {source}")]
    Io {
        host: String,
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// The command or path cannot be passed to a shell (it contains a NUL byte).
    #[error("{host}: cannot pass {what} to the shell: it contains a NUL byte")]
    Unquotable { host: String, what: String },

    /// A command succeeded but printed something kinit cannot interpret.
    #[error(
        "{host}: {what}; check that the host has the standard coreutils (sh, sha256sum, stat)"
    )]
    UnexpectedOutput { host: String, what: String },
}

fn stderr_suffix(tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!(":\n{tail}")
    }
}

impl ExecError {
    /// True for errors raised before any command ran: the host could not be reached or trusted.
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            ExecError::Connect { .. }
                | ExecError::ConnectTimeout { .. }
                | ExecError::Auth { .. }
                | ExecError::Key { .. }
                | ExecError::HostKeyUnknown(_)
                | ExecError::HostKeyChanged(_)
                | ExecError::HostKeyRevoked(_)
                | ExecError::KnownHosts { .. }
        )
    }

    /// The host this error is about.
    pub fn host(&self) -> &str {
        match self {
            ExecError::Connect { host, .. }
            | ExecError::Auth { host, .. }
            | ExecError::Key { host, .. }
            | ExecError::KnownHosts { host, .. }
            | ExecError::CommandFailed { host, .. }
            | ExecError::Timeout { host, .. }
            | ExecError::ConnectTimeout { host, .. }
            | ExecError::Upload { host, .. }
            | ExecError::NotFound { host, .. }
            | ExecError::Session { host, .. }
            | ExecError::Io { host, .. }
            | ExecError::Unquotable { host, .. }
            | ExecError::UnexpectedOutput { host, .. } => host,
            ExecError::HostKeyUnknown(problem)
            | ExecError::HostKeyChanged(problem)
            | ExecError::HostKeyRevoked(problem) => &problem.host,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_failed_names_host_command_status_and_stderr() {
        let err = ExecError::CommandFailed {
            host: "node1".into(),
            command: "systemctl start x".into(),
            status: ExitStatus::Code(5),
            stderr_tail: "Unit x.service not found.".into(),
        };
        let text = err.to_string();
        assert!(text.starts_with("node1: `systemctl start x` failed with exit code 5"));
        assert!(text.ends_with("Unit x.service not found."));
        assert_eq!(err.host(), "node1");
        assert!(!err.is_connection_error());
    }

    #[test]
    fn host_key_changed_says_what_to_do() {
        let err = ExecError::HostKeyChanged(Box::new(HostKeyProblem {
            host: "node2".into(),
            lookup: "10.88.0.12".into(),
            algorithm: "ssh-ed25519".into(),
            fingerprint: "SHA256:abc".into(),
            known_hosts: "/tmp/kh".into(),
            line: 3,
        }));
        let text = err.to_string();
        assert!(text.contains("/tmp/kh:3"));
        assert!(text.contains("SHA256:abc"));
        assert!(text.contains("ssh-keygen -R 10.88.0.12 -f /tmp/kh"));
        assert!(err.is_connection_error());
        assert_eq!(err.host(), "node2");
    }

    #[test]
    fn errors_stay_small() {
        // Results carry this error; keep it cheap to move.
        assert!(std::mem::size_of::<ExecError>() <= 128);
    }
}
