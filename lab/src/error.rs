//! Errors of the lab. Each says what failed, where, and what to do.

use std::path::PathBuf;

/// Why a lab operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The lab creates links, mounts and containers.
    #[error(
        "the lab needs root (it creates network links, mounts and containers); run it as root"
    )]
    NotRoot,

    /// Outer-machine tools are missing.
    #[error("missing tools on this machine: {missing}. Install them with:\n    {command}")]
    MissingTools { missing: String, command: String },

    /// Outer-machine tools are missing and this is not root, so the lab cannot install them.
    #[error(
        "missing tools on this machine: {missing}. The lab needs root (it creates network \
         links, mounts and containers): run `kinit lab up` as root and it installs them \
         through apt, or install them first as root with:\n    {command}"
    )]
    MissingToolsNotRoot { missing: String, command: String },

    /// Outer-machine tools are missing and this machine has no apt to install them with.
    #[error(
        "missing tools on this machine: {missing}. This is not Debian or Ubuntu with apt-get, \
         so the lab cannot install them itself; install the packages that provide them \
         (on Debian/Ubuntu: `{command}`)"
    )]
    NoApt { missing: String, command: String },

    /// A setting is out of range.
    #[error("invalid lab setting {field}: {reason}")]
    InvalidConfig { field: &'static str, reason: String },

    /// A lab is already running (one at a time).
    #[error(
        "lab {name:?} is already up (state in {state_file}); only one lab runs at a time. \
         Use it, or remove it with `kinit lab down --name {name}`"
    )]
    AlreadyUp { name: String, state_file: PathBuf },

    /// The bridge name is taken by something the lab did not create.
    #[error(
        "network link {bridge} already exists but no lab owns it; remove it (`ip link del {bridge}`) \
         if it is a leftover, or choose another name with --bridge"
    )]
    BridgeInUse { bridge: String },

    /// Another lab command holds the lock.
    #[error("another `kinit lab` command is running (lock {path}); wait for it to finish")]
    Busy { path: PathBuf },

    /// The base image could not be built.
    #[error("building the base image failed: {reason} (full log: {log})")]
    BaseImage { reason: String, log: PathBuf },

    /// An outer-machine command failed.
    #[error("{what}: `{command}` failed: {detail}")]
    Command {
        what: String,
        command: String,
        detail: String,
    },

    /// A file-system operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// A mount or unmount failed.
    #[error("{action} {target}: {reason}")]
    Mount {
        action: &'static str,
        target: PathBuf,
        reason: String,
    },

    /// A host did not come up.
    #[error("host {host} did not come up: {reason} (console log: {console_log})")]
    Boot {
        host: String,
        reason: String,
        console_log: PathBuf,
    },

    /// The state file is unreadable.
    #[error("lab state file {path}: {reason}")]
    State { path: PathBuf, reason: String },

    /// No lab of that name is up.
    #[error("no lab named {name:?} is up (no state file {state_file})")]
    NotUp { name: String, state_file: PathBuf },

    /// Some resources could not be removed.
    #[error("tearing the lab down left things behind:\n  {}", .problems.join("\n  "))]
    Teardown { problems: Vec<String> },

    /// `up` failed; what it had made was removed (or the listed leftovers were not).
    #[error("{cause}{}", cleanup_note(.leftovers))]
    UpFailed {
        cause: Box<LabError>,
        leftovers: Vec<String>,
    },

    /// Talking to a lab host failed.
    #[error(transparent)]
    Exec(#[from] kinit_executor::ExecError),
}

fn cleanup_note(leftovers: &[String]) -> String {
    if leftovers.is_empty() {
        "\n(everything the failed `up` created was removed)".to_string()
    } else {
        format!(
            "\ncleaning up after the failure also failed; left behind:\n  {}\nrun `kinit lab down` again",
            leftovers.join("\n  ")
        )
    }
}

impl LabError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        LabError::Io {
            context: context.into(),
            source,
        }
    }
}
