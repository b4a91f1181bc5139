//! The `CNI_*` environment variables a runtime sets when it executes a plugin.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::error::CniError;

/// The operation requested through `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach the container to the network.
    Add,
    /// Detach the container and release its resources.
    Del,
    /// Verify the container's networking matches the previous ADD result.
    Check,
    /// Report the spec versions this plugin supports.
    Version,
    /// (1.1) Report whether the plugin can serve ADD.
    Status,
    /// (1.1) Release resources of attachments the runtime no longer knows.
    Gc,
}

impl Command {
    fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }
}

/// The parsed invocation environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (required for ADD, DEL, CHECK).
    pub container_id: String,
    /// `CNI_NETNS`: path of the container's network namespace; may be empty on DEL.
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`: name of the interface inside the container.
    pub ifname: String,
    /// `CNI_ARGS` as key/value pairs (e.g. `K8S_POD_NAMESPACE`, `K8S_POD_NAME`).
    pub args: BTreeMap<String, String>,
    /// `CNI_PATH`: directories searched for plugins (unused: IPAM is built in).
    pub path: Vec<PathBuf>,
}

impl CniEnv {
    /// Reads the environment of this process.
    pub fn from_process() -> Result<CniEnv, CniError> {
        CniEnv::from_lookup(|k| std::env::var(k).ok())
    }

    /// Parses the variables given by `lookup` (a map in tests, the process env in production).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<CniEnv, CniError> {
        let command = lookup("CNI_COMMAND").ok_or(CniError::Env {
            name: "CNI_COMMAND",
            problem: "is not set (expected ADD, DEL, CHECK, VERSION, STATUS or GC)".into(),
        })?;
        let command = Command::parse(&command).ok_or_else(|| CniError::Env {
            name: "CNI_COMMAND",
            problem: format!(
                "has unknown value {command:?} (expected ADD, DEL, CHECK, VERSION, STATUS or GC)"
            ),
        })?;
        let needs_container = matches!(command, Command::Add | Command::Del | Command::Check);
        let required = |name: &'static str| -> Result<String, CniError> {
            match lookup(name) {
                Some(v) if !v.is_empty() => Ok(v),
                _ if needs_container => Err(CniError::Env {
                    name,
                    problem: "is required for ADD, DEL and CHECK but is not set".into(),
                }),
                _ => Ok(String::new()),
            }
        };
        let container_id = required("CNI_CONTAINERID")?;
        let ifname = required("CNI_IFNAME")?;
        if needs_container {
            validate_ifname(&ifname)?;
        }
        let netns = lookup("CNI_NETNS")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        if netns.is_none() && matches!(command, Command::Add | Command::Check) {
            return Err(CniError::Env {
                name: "CNI_NETNS",
                problem: "is required for ADD and CHECK but is not set".into(),
            });
        }
        let args = parse_args(&lookup("CNI_ARGS").unwrap_or_default())?;
        let path = lookup("CNI_PATH")
            .unwrap_or_default()
            .split(':')
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect();
        Ok(CniEnv {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
        })
    }
}

/// Linux interface names: 1-15 bytes, no '/', ':' or whitespace, not "." or "..".
fn validate_ifname(name: &str) -> Result<(), CniError> {
    let bad = name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if bad {
        return Err(CniError::Env {
            name: "CNI_IFNAME",
            problem: format!(
                "has invalid interface name {name:?} (1-15 characters, no '/', ':' or spaces)"
            ),
        });
    }
    Ok(())
}

/// `CNI_ARGS` is `KEY=VALUE` pairs separated by `;`.
fn parse_args(raw: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut out = BTreeMap::new();
    for pair in raw.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| CniError::Env {
            name: "CNI_ARGS",
            problem: format!("has {pair:?} which is not KEY=VALUE"),
        })?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CniEnv::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn parses_a_kubernetes_add() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/var/run/netns/cni-1"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
            ),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ])
        .unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.netns.as_deref(), Some("/var/run/netns/cni-1".as_ref()));
        assert_eq!(e.args["K8S_POD_NAME"], "web-0");
        assert_eq!(e.args["K8S_POD_NAMESPACE"], "default");
        assert_eq!(e.path.len(), 2);
    }

    #[test]
    fn del_tolerates_missing_netns_but_add_does_not() {
        let base = [
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", ""),
        ];
        let del = env(&[base[0], base[1], base[2], ("CNI_COMMAND", "DEL")]).unwrap();
        assert_eq!(del.netns, None);
        let add = env(&[base[0], base[1], base[2], ("CNI_COMMAND", "ADD")]).unwrap_err();
        assert!(add.to_string().contains("CNI_NETNS"), "{add}");
        assert_eq!(add.code() as u32, 4);
    }

    #[test]
    fn version_needs_only_the_command() {
        let e = env(&[("CNI_COMMAND", "VERSION")]).unwrap();
        assert_eq!(e.command, Command::Version);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(env(&[]).is_err());
        assert!(env(&[("CNI_COMMAND", "FROB")]).is_err());
        let long = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/x"),
            ("CNI_IFNAME", "averyveryverylongname"),
        ])
        .unwrap_err();
        assert!(long.to_string().contains("CNI_IFNAME"));
        let args = env(&[("CNI_COMMAND", "VERSION"), ("CNI_ARGS", "novalue")]).unwrap_err();
        assert!(args.to_string().contains("CNI_ARGS"));
    }
}
