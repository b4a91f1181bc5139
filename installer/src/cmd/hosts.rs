//! Choosing the hosts a command acts on: an inventory (optionally `--only` some hosts;
//! `--only-hosts` for `apply` and `init`, whose `--only` picks phases), one
//! `--host` over SSH, or `--local`; plus the SSH settings every such command shares.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use kinit_executor::{AnyHost, HostKeyPolicy, LocalHost, SshAuth, SshConfig, SshHost};
use kinit_inventory::Inventory;

/// Host selection and SSH flags, flattened into commands that act on hosts.
#[derive(Debug, Args)]
pub struct HostArgs {
    /// Inventory file listing the hosts.
    #[arg(short = 'i', long, value_name = "FILE", required_unless_present_any = ["host", "local"])]
    pub inventory: Option<PathBuf>,

    /// Only these inventory hosts (by name; repeat or comma-separate).
    #[arg(
        long,
        value_name = "NAME",
        value_delimiter = ',',
        requires = "inventory"
    )]
    pub only: Vec<String>,

    /// One host by address, without an inventory.
    #[arg(long, value_name = "ADDRESS", conflicts_with = "inventory")]
    pub host: Option<String>,

    /// The machine kinit runs on, without SSH.
    #[arg(long, conflicts_with_all = ["inventory", "host"])]
    pub local: bool,

    /// SSH user for --host.
    #[arg(long, default_value = "root")]
    pub ssh_user: String,

    /// SSH port for --host.
    #[arg(long, default_value_t = 22)]
    pub ssh_port: u16,

    /// Private key for --host (an inventory names its own keys).
    #[arg(long, value_name = "FILE")]
    pub ssh_key: Option<PathBuf>,

    /// Name of an environment variable holding the SSH password (never pass a password itself).
    #[arg(long, value_name = "VAR")]
    pub ssh_password_env: Option<String>,

    /// known_hosts file for host-key checking [default: ~/.ssh/known_hosts].
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,

    /// Record the keys of hosts seen for the first time (a changed key is still refused).
    #[arg(long)]
    pub accept_new_host_keys: bool,

    /// Do not check host keys at all. Insecure: only for throwaway machines.
    #[arg(long, conflicts_with = "accept_new_host_keys")]
    pub insecure_ignore_host_keys: bool,

    /// How many hosts to work on at once.
    #[arg(long, default_value_t = 10)]
    pub concurrency: usize,

    /// Seconds to wait for a host to answer.
    #[arg(long, default_value_t = 15)]
    pub connect_timeout: u64,
}

/// A selected host: how to reach it and, when it came from an inventory, its entry.
pub struct Selected {
    /// The connection.
    pub host: AnyHost,
    /// The inventory entry (roles, labels …), if any.
    pub entry: Option<kinit_inventory::Host>,
}

/// SSH settings of one host, whatever they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostSpec {
    name: String,
    address: String,
    user: String,
    port: u16,
    key: Option<PathBuf>,
    sudo: Option<bool>,
    /// Environment variable holding this host's SSH password.
    password_env: Option<String>,
}

/// Resolves an inventory key path: `~/` is the admin's home, relative paths are relative to
/// the inventory file.
fn resolve_key_path(key: &Path, inventory_dir: &Path) -> PathBuf {
    let expanded = match key.strip_prefix("~") {
        Ok(rest) => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/root"))
            .join(rest),
        Err(_) => key.to_path_buf(),
    };
    if expanded.is_relative() {
        inventory_dir.join(expanded)
    } else {
        expanded
    }
}

fn spec_of(host: &kinit_inventory::Host, inventory_dir: &Path) -> HostSpec {
    HostSpec {
        name: host.name.clone(),
        address: host.address.clone(),
        user: host.ssh.user.clone(),
        port: host.ssh.port,
        key: host
            .ssh
            .key_path
            .as_deref()
            .map(|k| resolve_key_path(k, inventory_dir)),
        sudo: Some(host.ssh.sudo),
        password_env: host.ssh.password_env.clone(),
    }
}

impl HostArgs {
    /// The host-key policy the flags ask for.
    pub fn host_key_policy(&self) -> HostKeyPolicy {
        if self.insecure_ignore_host_keys {
            HostKeyPolicy::InsecureIgnore
        } else if self.accept_new_host_keys {
            HostKeyPolicy::AcceptNew
        } else {
            HostKeyPolicy::Strict
        }
    }

    fn ssh_host(&self, spec: &HostSpec) -> anyhow::Result<SshHost> {
        let mut config = SshConfig::new(spec.name.clone(), spec.address.clone(), spec.user.clone());
        config.port = spec.port;
        if let Some(sudo) = spec.sudo {
            config.sudo = sudo;
        }
        if let Some(key) = &spec.key {
            config.auth.push(SshAuth::KeyFile {
                path: key.clone(),
                passphrase: None,
            });
        }
        if let Some(var) = spec
            .password_env
            .as_ref()
            .or(self.ssh_password_env.as_ref())
        {
            let password = std::env::var(var).with_context(|| {
                format!("{}: SSH password variable {var} is not set", spec.name)
            })?;
            config.auth.push(SshAuth::Password(password));
        }
        if let Some(known_hosts) = &self.known_hosts {
            config.known_hosts = known_hosts.clone();
        }
        config.host_key_policy = self.host_key_policy();
        config.connect_timeout = Duration::from_secs(self.connect_timeout.max(1));
        Ok(SshHost::new(config))
    }

    /// Reads the inventory (validated), if one was given.
    pub fn inventory(&self) -> anyhow::Result<Option<Inventory>> {
        match &self.inventory {
            Some(path) => Ok(Some(Inventory::from_path(path)?)),
            None => Ok(None),
        }
    }

    /// The hosts the flags select, in inventory order.
    pub fn select(&self, inventory: Option<&Inventory>) -> anyhow::Result<Vec<Selected>> {
        self.select_as(inventory, "--only")
    }

    /// [`HostArgs::select`] for a command whose host filter is spelled `only_flag` (`apply`
    /// and `init` use `--only` for phases and `--only-hosts` for hosts).
    pub fn select_as(
        &self,
        inventory: Option<&Inventory>,
        only_flag: &str,
    ) -> anyhow::Result<Vec<Selected>> {
        if !self.only.is_empty() && inventory.is_none() {
            bail!("{only_flag} picks hosts from an inventory; give one with -i FILE");
        }
        if self.local {
            return Ok(vec![Selected {
                host: LocalHost::new("localhost").into(),
                entry: None,
            }]);
        }
        match (inventory, &self.host) {
            (Some(inventory), _) => {
                let path = self.inventory.as_deref().unwrap_or(Path::new("inventory"));
                let base = path.parent().unwrap_or(Path::new("."));
                for wanted in &self.only {
                    if inventory.host(wanted).is_none() {
                        let names: Vec<&str> = inventory
                            .spec
                            .hosts
                            .iter()
                            .map(|h| h.name.as_str())
                            .collect();
                        bail!(
                            "{only_flag} {wanted}: no such host in {} (hosts: {})",
                            path.display(),
                            names.join(", ")
                        );
                    }
                }
                inventory
                    .spec
                    .hosts
                    .iter()
                    .filter(|h| self.only.is_empty() || self.only.contains(&h.name))
                    .map(|h| {
                        Ok(Selected {
                            host: self.ssh_host(&spec_of(h, base))?.into(),
                            entry: Some(h.clone()),
                        })
                    })
                    .collect()
            }
            (None, Some(address)) => {
                let spec = HostSpec {
                    name: address.clone(),
                    address: address.clone(),
                    user: self.ssh_user.clone(),
                    port: self.ssh_port,
                    key: self.ssh_key.clone(),
                    sudo: None,
                    password_env: None,
                };
                Ok(vec![Selected {
                    host: self.ssh_host(&spec)?.into(),
                    entry: None,
                }])
            }
            (None, None) => bail!("give an inventory (-i FILE), --host ADDRESS or --local"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: HostArgs,
    }

    #[test]
    fn inventory_keys_resolve_relative_to_the_file() {
        let dir = Path::new("/srv/cluster");
        assert_eq!(
            resolve_key_path(Path::new("keys/id"), dir),
            PathBuf::from("/srv/cluster/keys/id")
        );
        assert_eq!(resolve_key_path(Path::new("/k"), dir), PathBuf::from("/k"));
        let home = resolve_key_path(Path::new("~/.ssh/id"), dir);
        assert!(
            home.ends_with(".ssh/id") && home.is_absolute(),
            "{}",
            home.display()
        );
    }

    #[test]
    fn policy_flags_and_selection_rules() {
        let cli = Cli::parse_from(["x", "--host", "10.0.0.1", "--accept-new-host-keys"]);
        assert_eq!(cli.args.host_key_policy(), HostKeyPolicy::AcceptNew);
        let cli = Cli::parse_from(["x", "--local"]);
        assert_eq!(cli.args.host_key_policy(), HostKeyPolicy::Strict);
        assert!(Cli::try_parse_from(["x"]).is_err());
        assert!(Cli::try_parse_from([
            "x",
            "--host",
            "h",
            "--accept-new-host-keys",
            "--insecure-ignore-host-keys"
        ])
        .is_err());
        let cli = Cli::parse_from(["x", "--only", "n1", "--host", "h"]);
        assert!(cli.args.select(None).is_err(), "--only needs an inventory");
    }

    #[test]
    fn only_names_unknown_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inv.yaml");
        std::fs::write(&path, kinit_inventory::Inventory::example().to_yaml()).unwrap();
        let cli = Cli::parse_from(["x", "-i", path.to_str().unwrap(), "--only", "node9"]);
        let inventory = cli.args.inventory().unwrap();
        let Err(err) = cli.args.select(inventory.as_ref()) else {
            panic!("node9 is not in the inventory");
        };
        let err = err.to_string();
        assert!(
            err.contains("node9") && err.contains("node1, node2, node3"),
            "{err}"
        );
        let cli = Cli::parse_from(["x", "-i", path.to_str().unwrap(), "--only", "node2"]);
        let selected = cli
            .args
            .select(cli.args.inventory().unwrap().as_ref())
            .unwrap();
        assert_eq!(selected.len(), 1);
        assert_eq!(selected[0].entry.as_ref().unwrap().name, "node2");
    }
}
