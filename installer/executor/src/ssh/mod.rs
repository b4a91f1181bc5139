//! `SshHost`: a remote host reached over SSH (russh), one session per host, one channel per command.

pub mod keys;
pub mod known_hosts;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::agent::client::AgentClient;
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::ChannelMsg;
use tokio::io::AsyncReadExt;

use crate::command::{
    display_command, wrap_command, CommandOutput, ExecRequest, ExitStatus, Input, OutputCollector,
    OutputStream,
};
use crate::error::ExecError;
use crate::host::Host;
use known_hosts::{HostKeyCheck, HostKeyPolicy};

/// Default limit for TCP connect + handshake + authentication.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Default limit for one command.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(600);
/// Default number of commands run at once over one connection. OpenSSH's sshd allows 10
/// sessions per connection (`MaxSessions`); more channels are refused, so stay below it.
pub const DEFAULT_MAX_CHANNELS: usize = 8;

/// One way to prove who we are to the SSH server.
#[derive(Clone)]
pub enum SshAuth {
    /// An OpenSSH (or PuTTY) private key file, optionally encrypted.
    KeyFile {
        /// Path to the private key.
        path: PathBuf,
        /// Passphrase for an encrypted key.
        passphrase: Option<String>,
    },
    /// Every identity the running ssh-agent (`SSH_AUTH_SOCK`) offers.
    Agent,
    /// A password (take it from an environment variable or a prompt, never from a file).
    Password(String),
}

impl fmt::Debug for SshAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SshAuth::KeyFile { path, passphrase } => f
                .debug_struct("KeyFile")
                .field("path", path)
                .field("passphrase", &passphrase.as_ref().map(|_| "<redacted>"))
                .finish(),
            SshAuth::Agent => f.write_str("Agent"),
            SshAuth::Password(_) => f.write_str("Password(<redacted>)"),
        }
    }
}

impl SshAuth {
    fn describe(&self) -> String {
        match self {
            SshAuth::KeyFile { path, .. } => format!("key {}", path.display()),
            SshAuth::Agent => "ssh-agent".to_string(),
            SshAuth::Password(_) => "password".to_string(),
        }
    }
}

/// How to reach and log into one host.
#[derive(Debug, Clone)]
pub struct SshConfig {
    /// Name used in messages (inventory name).
    pub name: String,
    /// Address or DNS name to dial; also the name host keys are recorded under.
    pub address: String,
    /// SSH port.
    pub port: u16,
    /// Login user.
    pub user: String,
    /// Methods tried in order; empty means ssh-agent (when running) then `~/.ssh/id_ed25519`,
    /// `id_ecdsa`, `id_rsa` (those that exist).
    pub auth: Vec<SshAuth>,
    /// known_hosts file used for verification (and recording, with [`HostKeyPolicy::AcceptNew`]).
    pub known_hosts: PathBuf,
    /// Host-key policy.
    pub host_key_policy: HostKeyPolicy,
    /// Limit for connect + handshake + authentication.
    pub connect_timeout: Duration,
    /// Default limit for one command.
    pub command_timeout: Duration,
    /// Run commands through `sudo -n` when the login user is not root.
    pub sudo: bool,
    /// Commands run at once over the connection; further commands wait for a free channel.
    pub max_channels: usize,
}

impl SshConfig {
    /// Defaults: port 22, default auth, `~/.ssh/known_hosts`, strict host keys, sudo for non-root.
    pub fn new(
        name: impl Into<String>,
        address: impl Into<String>,
        user: impl Into<String>,
    ) -> Self {
        let user = user.into();
        SshConfig {
            name: name.into(),
            address: address.into(),
            port: 22,
            sudo: user != "root",
            user,
            auth: Vec::new(),
            known_hosts: home_dir().join(".ssh").join("known_hosts"),
            host_key_policy: HostKeyPolicy::Strict,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            max_channels: DEFAULT_MAX_CHANNELS,
        }
    }

    fn elevate(&self) -> bool {
        self.sudo && self.user != "root"
    }

    fn auth_methods(&self) -> Vec<SshAuth> {
        if !self.auth.is_empty() {
            return self.auth.clone();
        }
        let mut methods = Vec::new();
        if std::env::var_os("SSH_AUTH_SOCK").is_some() {
            methods.push(SshAuth::Agent);
        }
        for name in ["id_ed25519", "id_ecdsa", "id_rsa"] {
            let path = home_dir().join(".ssh").join(name);
            if path.exists() {
                methods.push(SshAuth::KeyFile {
                    path,
                    passphrase: None,
                });
            }
        }
        methods
    }
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// russh callback object: verifies the server key and remembers why it refused one.
struct ClientHandler {
    check: HostKeyCheck,
    refusal: Arc<std::sync::Mutex<Option<ExecError>>>,
}

impl client::Handler for ClientHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            // Certificates are checked by the key they certify, like any other host key.
            PublicKeyOrCertificate::Certificate(cert) => {
                russh::keys::PublicKey::new(cert.public_key().clone(), "")
            }
        };
        let check = self.check.clone();
        // known_hosts I/O is blocking file access; keep it off the async worker.
        let verdict = tokio::task::spawn_blocking(move || check.verify(&key))
            .await
            .map_err(|_| russh::Error::Inconsistent)?;
        match verdict {
            Ok(()) => Ok(true),
            Err(err) => {
                *self.refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some(err);
                Ok(false)
            }
        }
    }
}

/// A host reached over SSH. The session is opened on first use and reused by every command
/// (each command gets its own channel, so commands on one host may run concurrently).
pub struct SshHost {
    config: SshConfig,
    session: tokio::sync::Mutex<Option<Arc<Handle<ClientHandler>>>>,
    channels: tokio::sync::Semaphore,
}

impl fmt::Debug for SshHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshHost")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SshHost {
    /// A host that connects lazily with `config`.
    pub fn new(config: SshConfig) -> Self {
        SshHost {
            channels: tokio::sync::Semaphore::new(config.max_channels.max(1)),
            config,
            session: tokio::sync::Mutex::new(None),
        }
    }

    /// The connection settings.
    pub fn config(&self) -> &SshConfig {
        &self.config
    }

    /// Opens the session now (verifying the host key and logging in), if not open yet.
    pub async fn connect(&self) -> Result<(), ExecError> {
        self.session().await.map(|_| ())
    }

    /// Closes the session; the next command opens a new one.
    pub async fn disconnect(&self) {
        if let Some(handle) = self.session.lock().await.take() {
            let _ = handle
                .disconnect(russh::Disconnect::ByApplication, "", "en")
                .await;
        }
    }

    async fn session(&self) -> Result<Arc<Handle<ClientHandler>>, ExecError> {
        let mut slot = self.session.lock().await;
        if let Some(handle) = slot.as_ref() {
            if !handle.is_closed() {
                return Ok(handle.clone());
            }
        }
        let address = format!("{}:{}", self.config.address, self.config.port);
        let limit = self.config.connect_timeout;
        let handle = tokio::time::timeout(limit, self.open_session(&address))
            .await
            .map_err(|_| ExecError::ConnectTimeout {
                host: self.config.name.clone(),
                address: address.clone(),
                after: limit,
            })??;
        let handle = Arc::new(handle);
        *slot = Some(handle.clone());
        Ok(handle)
    }

    async fn open_session(&self, address: &str) -> Result<Handle<ClientHandler>, ExecError> {
        let refusal = Arc::new(std::sync::Mutex::new(None));
        let handler = ClientHandler {
            check: HostKeyCheck {
                host: self.config.name.clone(),
                address: self.config.address.clone(),
                port: self.config.port,
                known_hosts: self.config.known_hosts.clone(),
                policy: self.config.host_key_policy,
            },
            refusal: refusal.clone(),
        };
        let russh_config = Arc::new(client::Config {
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_max: 4,
            nodelay: true,
            ..Default::default()
        });
        let connected = client::connect(
            russh_config,
            (self.config.address.as_str(), self.config.port),
            handler,
        )
        .await;
        let mut handle = match connected {
            Ok(handle) => handle,
            Err(err) => {
                if let Some(refused) = refusal.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    return Err(refused);
                }
                return Err(ExecError::Connect {
                    host: self.config.name.clone(),
                    address: address.to_string(),
                    reason: err.to_string(),
                });
            }
        };
        self.authenticate(&mut handle).await?;
        Ok(handle)
    }

    async fn authenticate(&self, handle: &mut Handle<ClientHandler>) -> Result<(), ExecError> {
        let user = self.config.user.clone();
        let methods = self.config.auth_methods();
        let mut tried = Vec::new();
        let session_error = |err: russh::Error| ExecError::Connect {
            host: self.config.name.clone(),
            address: self.config.address.clone(),
            reason: format!("SSH session failed during authentication: {err}"),
        };
        for method in &methods {
            match method {
                SshAuth::KeyFile { path, passphrase } => {
                    let key =
                        russh::keys::load_secret_key(path, passphrase.as_deref()).map_err(|e| {
                            ExecError::Key {
                                host: self.config.name.clone(),
                                path: path.clone(),
                                reason: match e {
                                    russh::keys::Error::KeyIsEncrypted => {
                                        "it is encrypted; give its passphrase".to_string()
                                    }
                                    other => other.to_string(),
                                },
                            }
                        })?;
                    let hash = if key.algorithm().is_rsa() {
                        handle
                            .best_supported_rsa_hash()
                            .await
                            .map_err(session_error)?
                            .flatten()
                    } else {
                        None
                    };
                    let result = handle
                        .authenticate_publickey(
                            user.clone(),
                            PrivateKeyWithHashAlg::new(Arc::new(key), hash),
                        )
                        .await
                        .map_err(session_error)?;
                    if result.success() {
                        return Ok(());
                    }
                    tried.push(format!("{} (refused)", method.describe()));
                }
                SshAuth::Agent => {
                    let mut agent = match AgentClient::connect_env().await {
                        Ok(agent) => agent,
                        Err(e) => {
                            tried.push(format!("ssh-agent (unavailable: {e})"));
                            continue;
                        }
                    };
                    let identities = match agent.request_identities().await {
                        Ok(ids) => ids,
                        Err(e) => {
                            tried.push(format!("ssh-agent (cannot list keys: {e})"));
                            continue;
                        }
                    };
                    if identities.is_empty() {
                        tried.push("ssh-agent (holds no keys)".to_string());
                        continue;
                    }
                    for identity in identities {
                        let public = identity.public_key().into_owned();
                        let hash = if public.algorithm().is_rsa() {
                            handle
                                .best_supported_rsa_hash()
                                .await
                                .map_err(session_error)?
                                .flatten()
                        } else {
                            None
                        };
                        match handle
                            .authenticate_publickey_with(user.clone(), public, hash, &mut agent)
                            .await
                        {
                            Ok(result) if result.success() => return Ok(()),
                            Ok(_) => {}
                            Err(e) => tracing::debug!(error = %e, "agent key failed"),
                        }
                    }
                    tried.push("ssh-agent (all keys refused)".to_string());
                }
                SshAuth::Password(password) => {
                    let result = handle
                        .authenticate_password(user.clone(), password.clone())
                        .await
                        .map_err(session_error)?;
                    if result.success() {
                        return Ok(());
                    }
                    tried.push("password (refused)".to_string());
                }
            }
        }
        Err(ExecError::Auth {
            host: self.config.name.clone(),
            user,
            tried: if tried.is_empty() {
                "nothing: no key file, no agent, no password".to_string()
            } else {
                tried.join(", ")
            },
            hint: format!(
                "Put the public key into ~{}/.ssh/authorized_keys on the host, or set ssh.keyPath \
                 in the inventory, or load the key into ssh-agent",
                self.config.user
            ),
        })
    }

    async fn exec_on_channel(
        &self,
        handle: &Handle<ClientHandler>,
        wire_command: &str,
        request_command: &str,
        stdin: Option<Input<'_>>,
        collector: &mut OutputCollector<'_>,
        limit: Duration,
    ) -> Result<Option<ExitStatus>, ExecError> {
        let host = &self.config.name;
        let session_error = |reason: String| ExecError::Session {
            host: host.clone(),
            command: display_command(request_command),
            reason,
        };
        let channel = open_channel(handle)
            .await
            .map_err(|e| session_error(format!("cannot open a channel: {e}")))?;
        channel
            .exec(true, wire_command)
            .await
            .map_err(|e| session_error(format!("cannot start the command: {e}")))?;
        let (mut reader, writer) = channel.split();
        let writer = &writer;

        let feed = async {
            match stdin {
                Some(Input::Bytes(bytes)) => {
                    writer
                        .data(bytes)
                        .await
                        .map_err(|e| session_error(format!("cannot send input: {e}")))?;
                }
                Some(Input::File(path)) => {
                    let mut file =
                        tokio::fs::File::open(path)
                            .await
                            .map_err(|e| ExecError::Io {
                                host: host.clone(),
                                context: format!("cannot open {}", path.display()),
                                source: e,
                            })?;
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = file.read(&mut buf).await.map_err(|e| ExecError::Io {
                            host: host.clone(),
                            context: format!("cannot read {}", path.display()),
                            source: e,
                        })?;
                        if n == 0 {
                            break;
                        }
                        writer
                            .data(&buf[..n])
                            .await
                            .map_err(|e| session_error(format!("cannot send input: {e}")))?;
                    }
                }
                None => {}
            }
            writer
                .eof()
                .await
                .map_err(|e| session_error(format!("cannot close input: {e}")))?;
            Ok::<_, ExecError>(())
        };

        let collect = async {
            let mut status = ExitStatus::Unknown;
            while let Some(message) = reader.wait().await {
                match message {
                    ChannelMsg::Data { data } => collector.push(OutputStream::Stdout, &data),
                    ChannelMsg::ExtendedData { data, ext: 1 } => {
                        collector.push(OutputStream::Stderr, &data)
                    }
                    ChannelMsg::ExitStatus { exit_status } => {
                        status = ExitStatus::Code(exit_status as i32)
                    }
                    ChannelMsg::ExitSignal { signal_name, .. } => {
                        status = ExitStatus::Signal(format!("{signal_name:?}"))
                    }
                    ChannelMsg::Failure => {
                        return Err(session_error("the server refused to run it".to_string()))
                    }
                    _ => {}
                }
            }
            Ok(status)
        };

        // Input and output flow at the same time, so a command that writes while it reads
        // cannot dead-lock on flow-control windows.
        let outcome = tokio::time::timeout(limit, async { tokio::try_join!(feed, collect) }).await;
        match outcome {
            Ok(Ok(((), status))) => {
                let _ = writer.close().await;
                Ok(Some(status))
            }
            Ok(Err(err)) => {
                let _ = writer.close().await;
                Err(err)
            }
            Err(_) => {
                // Best effort: ask the server to kill the command (RFC 4254 "signal" request),
                // then close the channel. Servers may ignore the request (without a PTY the
                // command is not hung up on), so a timed-out command can keep running remotely
                // until it ends by itself; the caller gets the timeout error either way.
                let _ = writer.signal(russh::Sig::KILL).await;
                let _ = writer.close().await;
                Ok(None)
            }
        }
    }
}

/// Opens a session channel, retrying briefly when the server refuses for lack of free sessions:
/// sshd frees a closed channel's session slot a moment after the close, so a new channel opened
/// right after another finished can be refused although the client stays under `MaxSessions`.
async fn open_channel(
    handle: &Handle<ClientHandler>,
) -> Result<russh::Channel<client::Msg>, russh::Error> {
    let mut delay = Duration::from_millis(10);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match handle.channel_open_session().await {
            Err(russh::Error::ChannelOpenFailure(
                russh::ChannelOpenFailure::ConnectFailed
                | russh::ChannelOpenFailure::ResourceShortage,
            )) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

impl Host for SshHost {
    fn name(&self) -> &str {
        &self.config.name
    }

    async fn exec(&self, request: ExecRequest<'_>) -> Result<CommandOutput, ExecError> {
        let ExecRequest {
            command,
            stdin,
            timeout,
            on_line,
        } = request;
        let wire =
            wrap_command(command, self.config.elevate()).ok_or_else(|| ExecError::Unquotable {
                host: self.config.name.clone(),
                what: "the command".into(),
            })?;
        let handle = self.session().await?;
        // The semaphore is never closed, so acquiring only waits.
        let _slot = self
            .channels
            .acquire()
            .await
            .map_err(|_| ExecError::Session {
                host: self.config.name.clone(),
                command: display_command(command),
                reason: "the connection is shutting down".into(),
            })?;
        let limit = timeout.unwrap_or(self.config.command_timeout);
        let mut collector = OutputCollector::new(on_line);
        let status = self
            .exec_on_channel(&handle, &wire, command, stdin, &mut collector, limit)
            .await?;
        match status {
            Some(status) => Ok(collector.finish(status)),
            None => Err(ExecError::Timeout {
                host: self.config.name.clone(),
                command: display_command(command),
                after: limit,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_use_sudo_only_for_non_root() {
        let root = SshConfig::new("n1", "10.0.0.1", "root");
        assert!(!root.elevate());
        assert_eq!(root.port, 22);
        assert_eq!(root.host_key_policy, HostKeyPolicy::Strict);
        let admin = SshConfig::new("n1", "10.0.0.1", "admin");
        assert!(admin.elevate());
        let mut no_sudo = admin.clone();
        no_sudo.sudo = false;
        assert!(!no_sudo.elevate());
    }

    #[test]
    fn secrets_are_not_printed() {
        let debug = format!(
            "{:?} {:?}",
            SshAuth::Password("hunter2".into()),
            SshAuth::KeyFile {
                path: "/k".into(),
                passphrase: Some("pp".into())
            }
        );
        assert!(!debug.contains("hunter2"));
        assert!(!debug.contains("\"pp\""));
    }

    #[test]
    fn explicit_auth_methods_are_kept_in_order() {
        let mut config = SshConfig::new("n", "a", "root");
        config.auth = vec![SshAuth::Password("x".into()), SshAuth::Agent];
        let described: Vec<_> = config
            .auth_methods()
            .iter()
            .map(SshAuth::describe)
            .collect();
        assert_eq!(described, vec!["password", "ssh-agent"]);
    }

    #[tokio::test]
    async fn connection_refused_names_host_and_address() {
        // A loopback port nobody listens on: bind, learn the port, close.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let mut config = SshConfig::new("nowhere", "127.0.0.1", "root");
        config.port = port;
        config.connect_timeout = Duration::from_secs(5);
        let host = SshHost::new(config);
        let err = host.run("true").await.unwrap_err();
        assert!(matches!(err, ExecError::Connect { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.starts_with("nowhere: cannot connect to 127.0.0.1:"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn silent_server_hits_the_connect_timeout() {
        // Accepts TCP but never speaks SSH.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (_socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        let mut config = SshConfig::new("mute", "127.0.0.1", "root");
        config.port = port;
        config.connect_timeout = Duration::from_millis(300);
        let err = SshHost::new(config).run("true").await.unwrap_err();
        assert!(matches!(err, ExecError::ConnectTimeout { .. }), "{err}");
        server.abort();
    }
}
