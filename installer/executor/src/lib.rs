//! The executor: how kinit acts on hosts.
//!
//! [`Host`] is the one abstraction phases use: run a command (with streamed output and exit
//! status), upload a file atomically with mode and owner, read a file, check a path. Two
//! implementations: [`SshHost`] (russh, host keys checked against known_hosts, one session per
//! host with a channel per command) and [`LocalHost`]. [`AnyHost`] holds either, so a list of
//! mixed hosts is a `Vec<AnyHost>`; [`run_on_all`] fans work out over them with a bound.
//! [`preflight`] checks that hosts are ready for a cluster, through the same trait.

mod command;
mod error;
mod fanout;
mod host;
mod local;
pub mod preflight;
pub mod ssh;

pub use command::{
    shell_join, shell_quote, wrap_command, CommandOutput, ExecRequest, ExitStatus, FileAttrs,
    Input, LineSink, OutputStream, UploadSource,
};
pub use error::{ExecError, HostKeyProblem};
pub use fanout::run_on_all;
pub use host::{check_success, shell_exists, shell_read_file, shell_upload, Host};
pub use local::LocalHost;
pub use ssh::known_hosts::HostKeyPolicy;
pub use ssh::{SshAuth, SshConfig, SshHost};

/// Either kind of host, for lists that mix them. Dispatch is a `match`, no boxing.
#[derive(Debug)]
pub enum AnyHost {
    /// A remote host over SSH (boxed: it holds the connection state).
    Ssh(Box<SshHost>),
    /// The local machine.
    Local(LocalHost),
}

impl From<SshHost> for AnyHost {
    fn from(host: SshHost) -> Self {
        AnyHost::Ssh(Box::new(host))
    }
}

impl From<LocalHost> for AnyHost {
    fn from(host: LocalHost) -> Self {
        AnyHost::Local(host)
    }
}

impl Host for AnyHost {
    fn name(&self) -> &str {
        match self {
            AnyHost::Ssh(host) => host.name(),
            AnyHost::Local(host) => host.name(),
        }
    }

    async fn exec(&self, request: ExecRequest<'_>) -> Result<CommandOutput, ExecError> {
        match self {
            AnyHost::Ssh(host) => host.exec(request).await,
            AnyHost::Local(host) => host.exec(request).await,
        }
    }

    async fn upload(
        &self,
        source: UploadSource<'_>,
        dest: &str,
        attrs: &FileAttrs,
    ) -> Result<(), ExecError> {
        match self {
            AnyHost::Ssh(host) => host.upload(source, dest, attrs).await,
            AnyHost::Local(host) => host.upload(source, dest, attrs).await,
        }
    }

    async fn read_file(&self, path: &str) -> Result<Vec<u8>, ExecError> {
        match self {
            AnyHost::Ssh(host) => host.read_file(path).await,
            AnyHost::Local(host) => host.read_file(path).await,
        }
    }

    async fn exists(&self, path: &str) -> Result<bool, ExecError> {
        match self {
            AnyHost::Ssh(host) => host.exists(path).await,
            AnyHost::Local(host) => host.exists(path).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn any_host_dispatches_to_the_local_host() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let path = path.to_str().unwrap();
        let hosts: Vec<AnyHost> = vec![LocalHost::new("a").into(), LocalHost::new("b").into()];
        let results = run_on_all(&hosts, 2, |host| async move {
            host.run_checked("echo $((1+1))")
                .await
                .map(|o| o.stdout_text().trim().to_string())
        })
        .await;
        let values: Vec<_> = results.into_iter().map(Result::unwrap).collect();
        assert_eq!(values, vec!["2", "2"]);
        hosts[0]
            .upload(UploadSource::Bytes(b"x"), path, &FileAttrs::mode(0o600))
            .await
            .unwrap();
        assert!(hosts[1].exists(path).await.unwrap());
        assert_eq!(hosts[1].read_file(path).await.unwrap(), b"x");
        assert_eq!(hosts[1].name(), "b");
    }
}
