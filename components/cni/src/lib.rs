//! kinit's CNI plugin (`kinit cni`, or the `kinit` binary invoked as `/opt/cni/bin/kinit-cni`).
//!
//! It implements the CNI protocol (spec 0.3.0 to 1.1.0): the runtime sets `CNI_COMMAND`
//! (ADD, DEL, CHECK, VERSION, STATUS, GC) and the other `CNI_*` variables, streams the network
//! configuration on stdin and reads the result, or an error object, from stdout.
//!
//! Plugin types handled (the configuration's `type`):
//! - `kinit-cni`: a host bridge (default `cni0`) carrying the node pod range's gateway address,
//!   one veth pair per container, host-local style IPAM persisted under `ipam.dataDir`, hairpin
//!   mode, nftables masquerade of traffic leaving the cluster, and hostPort mappings (the
//!   `portMappings` capability, [`hostport`]); the pods' MTU follows the node network's
//!   state file ([`network::NetworkState`]);
//! - `loopback`: brings `lo` up (containerd runs this type before any conflist).
//!
//! Networking goes through netlink (rtnetlink); the container side is reached with a netlink
//! socket opened inside its network namespace (see [`netlink::connect_in`]).
//!
//! The library also holds the node side of the pod network that the node agent drives:
//! [`network::NodeNetwork`] keeps the routes to other nodes' pod ranges (host-gw or VXLAN).

pub mod bridge;
pub mod config;
pub mod env;
pub mod error;
pub mod hostport;
pub mod ipam;
pub mod loopback;
pub mod masq;
pub mod netlink;
pub mod network;
mod sysctl;
pub mod types;

use std::io::{Read, Write};
use std::process::ExitCode;

use crate::config::{version_lt, NetConf, VersionOnly, CURRENT_VERSION, SUPPORTED_VERSIONS};
use crate::env::{CniEnv, Command};
use crate::error::CniError;
use crate::types::CniResult;

pub use crate::error::{ErrorCode, ErrorObject};

/// Plugin type of the bridge plugin in kinit's conflist.
pub const BRIDGE_TYPE: &str = "kinit-cni";
/// Plugin type containerd uses for the container's loopback interface.
pub const LOOPBACK_TYPE: &str = "loopback";

/// File names under which containerd executes this plugin from `/opt/cni/bin`: the conflist's
/// `type` (`kinit-cni`) and the `loopback` type containerd always runs first. The installer
/// links both to the `kinit` binary.
pub const PLUGIN_EXECUTABLES: &[&str] = &[BRIDGE_TYPE, LOOPBACK_TYPE];

/// Whether the process was started as a CNI plugin, judged by the file name of `argv0`
/// (containerd passes the full path, e.g. `/opt/cni/bin/kinit-cni`).
pub fn invoked_as_plugin(argv0: &std::ffi::OsStr) -> bool {
    std::path::Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| PLUGIN_EXECUTABLES.contains(&n))
}

/// What one invocation prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Text for stdout: a result, version info, an error object, or nothing.
    pub stdout: String,
    /// `true` for exit status 0.
    pub success: bool,
}

/// The plugin's process entry point: reads the `CNI_*` environment and stdin, writes the
/// result or error object to stdout and returns the exit status.
pub fn main_with_env() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let outcome = match read {
        Ok(_) => execute(CniEnv::from_process(), &stdin),
        Err(e) => failure(
            &stdin,
            &CniError::io("cannot read the network configuration from", "stdin", e),
        ),
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(outcome.stdout.as_bytes());
    let _ = out.flush();
    if outcome.success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs one command with an already parsed environment and the raw stdin.
pub fn execute(env: Result<CniEnv, CniError>, stdin: &[u8]) -> Outcome {
    let result = env.and_then(|env| run(&env, stdin));
    match result {
        Ok(stdout) => Outcome {
            stdout,
            success: true,
        },
        Err(e) => failure(stdin, &e),
    }
}

fn failure(stdin: &[u8], e: &CniError) -> Outcome {
    // Answer in the configuration's version when it is one we speak.
    let version = serde_json::from_slice::<VersionOnly>(stdin)
        .ok()
        .and_then(|v| v.cni_version)
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| CURRENT_VERSION.to_string());
    let object = e.to_object(&version);
    Outcome {
        stdout: serde_json::to_string(&object).expect("error object serializes") + "\n",
        success: false,
    }
}

/// Runs the command; `Ok` holds what to print on stdout (possibly empty).
pub fn run(env: &CniEnv, stdin: &[u8]) -> Result<String, CniError> {
    if env.command == Command::Version {
        let info = serde_json::json!({
            "cniVersion": CURRENT_VERSION,
            "supportedVersions": SUPPORTED_VERSIONS,
        });
        return Ok(info.to_string() + "\n");
    }
    let conf = NetConf::parse(stdin)?;
    let kind = match conf.plugin_type.as_str() {
        BRIDGE_TYPE | "kinit" => Kind::Bridge,
        LOOPBACK_TYPE => Kind::Loopback,
        other => {
            return Err(CniError::Config(format!(
                "plugin type {other:?} is not handled by kinit-cni (it handles {BRIDGE_TYPE:?} and {LOOPBACK_TYPE:?})"
            )))
        }
    };
    match env.command {
        Command::Status => {
            if kind == Kind::Bridge {
                bridge::status(&conf)?;
            }
            return Ok(String::new());
        }
        Command::Gc => {
            if kind == Kind::Bridge {
                bridge::gc(&conf)?;
            }
            return Ok(String::new());
        }
        Command::Check if version_lt(&conf.cni_version, "0.4.0") => {
            return Err(CniError::IncompatibleVersion(
                format!("{} (CHECK needs 0.4.0 or later)", conf.cni_version),
                SUPPORTED_VERSIONS.join(", "),
            ));
        }
        _ => {}
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| CniError::sys("start the async runtime", e))?;
    runtime.block_on(async {
        match (env.command, kind) {
            (Command::Add, Kind::Bridge) => {
                let ours = bridge::add(env, &conf).await?;
                Ok(print_result(chain(&conf, ours)?, &conf))
            }
            (Command::Add, Kind::Loopback) => {
                let ours = loopback::add(env, &conf).await?;
                Ok(print_result(chain(&conf, ours)?, &conf))
            }
            (Command::Del, Kind::Bridge) => bridge::del(env, &conf).await.map(|()| String::new()),
            // Nothing to release: lo dies with the namespace.
            (Command::Del, Kind::Loopback) => Ok(String::new()),
            (Command::Check, Kind::Bridge) => {
                bridge::check(env, &conf).await.map(|()| String::new())
            }
            (Command::Check, Kind::Loopback) => loopback::check(env).await.map(|()| String::new()),
            (Command::Version | Command::Status | Command::Gc, _) => {
                unreachable!("answered before the runtime starts")
            }
        }
    })
}

/// The `nft` runner for this process: `nft` from `PATH`, `/usr/sbin` or `/sbin` (runtimes
/// pass plugins a thin `PATH`), acting in the calling thread's network namespace.
pub(crate) fn nft() -> kinit_nft::NftCommand {
    kinit_nft::NftCommand::default()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bridge,
    Loopback,
}

/// When another plugin ran before us (chained ADD), our interfaces and addresses are appended
/// to its result, with our interface indexes shifted accordingly.
fn chain(conf: &NetConf, mut ours: CniResult) -> Result<CniResult, CniError> {
    let Some(prev) = &conf.prev_result else {
        return Ok(ours);
    };
    let mut prev: CniResult = serde_json::from_value(prev.clone())
        .map_err(|e| CniError::Config(format!("prevResult is not a CNI result: {e}")))?;
    let offset = prev.interfaces.len();
    for ip in &mut ours.ips {
        ip.interface = ip.interface.map(|i| i + offset);
    }
    prev.interfaces.append(&mut ours.interfaces);
    prev.ips.append(&mut ours.ips);
    prev.routes.append(&mut ours.routes);
    if prev.dns == Default::default() {
        prev.dns = ours.dns;
    }
    Ok(prev)
}

fn print_result(result: CniResult, conf: &NetConf) -> String {
    let result = result.for_version(&conf.cni_version);
    serde_json::to_string(&result).expect("result serializes") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run_with(pairs: &[(&str, &str)], stdin: &str) -> Outcome {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        execute(
            CniEnv::from_lookup(|k| map.get(k).cloned()),
            stdin.as_bytes(),
        )
    }

    #[test]
    fn recognises_plugin_invocations_by_file_name() {
        assert!(invoked_as_plugin("/opt/cni/bin/kinit-cni".as_ref()));
        assert!(invoked_as_plugin("/opt/cni/bin/loopback".as_ref()));
        assert!(invoked_as_plugin("kinit-cni".as_ref()));
        assert!(!invoked_as_plugin("/usr/local/bin/kinit".as_ref()));
        assert!(!invoked_as_plugin("/opt/cni/bin/bridge".as_ref()));
    }

    #[test]
    fn version_reports_supported_versions() {
        let o = run_with(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.0.0"}"#);
        assert!(o.success);
        let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        let versions: Vec<&str> = v["supportedVersions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(versions.contains(&"1.0.0") && versions.contains(&"0.4.0"));
        // VERSION works with no stdin at all.
        assert!(run_with(&[("CNI_COMMAND", "VERSION")], "").success);
    }

    #[test]
    fn errors_are_spec_objects_on_stdout() {
        let o = run_with(&[], "{}");
        assert!(!o.success);
        let e: ErrorObject = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(e.code, 4);
        assert_eq!(e.cni_version, "1.1.0");
        assert!(e.details.contains("CNI_COMMAND"), "{e:?}");

        let env = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/nonexistent/netns"),
        ];
        let o = run_with(&env, r#"{"cniVersion":"0.4.0","name":"n","type":"bridge"}"#);
        let e: ErrorObject = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!((e.code, e.cni_version.as_str()), (7, "0.4.0"));
        assert!(e.details.contains("\"bridge\""), "{e:?}");

        let o = run_with(
            &env,
            r#"{"cniVersion":"0.1.0","name":"n","type":"kinit-cni"}"#,
        );
        let e: ErrorObject = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!((e.code, e.cni_version.as_str()), (1, "1.1.0"));

        let o = run_with(&env, "garbage");
        assert_eq!(
            serde_json::from_str::<ErrorObject>(&o.stdout).unwrap().code,
            6
        );
    }

    #[test]
    fn add_into_a_missing_netns_is_code_3_and_allocates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let conf = serde_json::json!({
            "cniVersion": "1.0.0", "name": "unit", "type": "kinit-cni",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.250.9.0/24"}]],
                     "dataDir": dir.path()}
        });
        let env = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/nonexistent/netns"),
        ];
        let o = run_with(&env, &conf.to_string());
        let e: ErrorObject = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(e.code, 3, "{e:?}");
        assert!(!dir.path().join("unit").join("10.250.9.2").exists());
    }

    #[test]
    fn gc_and_status_work_on_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let conf = |extra: serde_json::Value| {
            let mut c = serde_json::json!({
                "cniVersion": "1.1.0", "name": "unit", "type": "kinit-cni",
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.250.9.0/30"}]],
                         "dataDir": dir.path()}
            });
            c.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            c.to_string()
        };
        let store = ipam::Store::new(dir.path().join("unit"));
        let sets = NetConf::parse(conf(serde_json::json!({})).as_bytes())
            .unwrap()
            .ipam()
            .unwrap()
            .range_sets()
            .unwrap();
        assert!(run_with(&[("CNI_COMMAND", "STATUS")], &conf(serde_json::json!({}))).success);
        // A /30 has one pod address (.2); once taken STATUS reports code 50.
        store
            .lock()
            .unwrap()
            .allocate(0, &sets[0], "old", "eth0")
            .unwrap();
        let o = run_with(&[("CNI_COMMAND", "STATUS")], &conf(serde_json::json!({})));
        assert_eq!(
            serde_json::from_str::<ErrorObject>(&o.stdout).unwrap().code,
            50
        );
        // GC with no valid attachments frees it.
        let gc = conf(
            serde_json::json!({"cni.dev/valid-attachments": [{"containerID": "other", "ifname": "eth0"}]}),
        );
        let o = run_with(&[("CNI_COMMAND", "GC")], &gc);
        assert!(o.success, "{o:?}");
        assert_eq!(o.stdout, "");
        assert!(store.lock().unwrap().allocations().unwrap().is_empty());
    }

    #[test]
    fn check_needs_0_4_0() {
        let env = [
            ("CNI_COMMAND", "CHECK"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/x"),
        ];
        let o = run_with(
            &env,
            r#"{"cniVersion":"0.3.1","name":"n","type":"kinit-cni"}"#,
        );
        assert_eq!(
            serde_json::from_str::<ErrorObject>(&o.stdout).unwrap().code,
            1
        );
    }

    #[test]
    fn chained_results_are_merged() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"kinit-cni",
                "prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"x"}],
                "ips":[{"address":"192.0.2.1/24","interface":0}],"dns":{"nameservers":["1.1.1.1"]}}}"#,
        )
        .unwrap();
        let ours = CniResult {
            cni_version: "1.0.0".into(),
            interfaces: vec![types::Interface {
                name: "eth0".into(),
                mac: None,
                sandbox: Some("/ns".into()),
            }],
            ips: vec![types::IpConfig {
                version: None,
                address: "10.250.0.2/24".parse().unwrap(),
                gateway: None,
                interface: Some(0),
            }],
            routes: vec![],
            dns: Default::default(),
        };
        let merged = chain(&conf, ours).unwrap();
        assert_eq!(merged.interfaces.len(), 2);
        assert_eq!(merged.ips[1].interface, Some(1));
        assert_eq!(merged.dns.nameservers, ["1.1.1.1"]);
    }
}
