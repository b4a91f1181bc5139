//! hostPort: the CNI `portMappings` capability (the reference `portmap` plugin's semantics),
//! in one nftables table, [`TABLE`].
//!
//! The runtime passes `runtimeConfig.portMappings` (`hostPort`, `containerPort`, `protocol`,
//! `hostIP`) on ADD because the conflist declares `"capabilities": {"portMappings": true}`.
//! Layout of the table (family `inet`):
//! - `prerouting` (nat, dstnat) and `output` (nat, -100) jump to `hostports`, so connections
//!   from other hosts, from pods and from the node itself are forwarded;
//! - `hostports` jumps to one `<container>-dnat` chain per container: `dnat` of new
//!   connections to any local address (`fib daddr type local`) or to the mapping's `hostIP`;
//! - `postrouting` (nat, srcnat) jumps to `masquerading`, which jumps to one
//!   `<container>-snat` chain per container: masquerade of hairpin connections (the pod
//!   reaching its own hostPort, which would otherwise see its own address as the source) and
//!   of connections to `127.0.0.1:<hostPort>`;
//! - `guard` (filter, raw) drops packets that arrive from outside with a `127.0.0.0/8`
//!   destination. Forwarding `127.0.0.1:<hostPort>` needs `route_localnet` on the pod bridge
//!   (the kernel otherwise refuses loopback sources on it); the guard keeps pods from using
//!   that to reach the node's loopback services.
//!
//! A container's chains are named after a digest of (network, container ID, interface), so
//! DEL and GC find exactly that container's rules without any other record. `::1` is never
//! forwarded (IPv6 has no `route_localnet`). Every change is one `nft -f` transaction, made
//! under a file lock because the dispatch chains are rebuilt from the table's current chains.

use std::collections::{BTreeSet, HashSet};
use std::fs::OpenOptions;
use std::net::IpAddr;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use kinit_nft::normalize;

use crate::error::CniError;
use crate::nft;

/// The nftables table (family `inet`) holding every hostPort mapping of the node.
pub const TABLE: &str = "kinit-hostports";

/// File name of the lock serialising changes to [`TABLE`] (in the IPAM data directory).
pub const LOCK_FILE: &str = "hostports.lock";

const CHAIN_PREFIX: &str = "hp-";
const DNAT_SUFFIX: &str = "-dnat";
const SNAT_SUFFIX: &str = "-snat";

/// Transport protocol of a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// TCP (the default).
    #[default]
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    fn keyword(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.to_ascii_lowercase().as_str() {
            "" | "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "sctp" => Ok(Protocol::Sctp),
            other => Err(serde::de::Error::custom(format!(
                "protocol {other:?} is not tcp, udp or sctp"
            ))),
        }
    }
}

/// One entry of `runtimeConfig.portMappings`. The CNI conventions spell the keys `hostPort`,
/// `containerPort`, `protocol`, `hostIP`; containerd (go-cni) sends Go's field names
/// (`HostPort`, `ContainerPort`, `Protocol`, `HostIP`), which Go plugins accept because Go's
/// JSON decoding ignores case. Both spellings are read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// Port on the node.
    #[serde(alias = "HostPort")]
    pub host_port: u16,
    /// Port inside the pod.
    #[serde(alias = "ContainerPort")]
    pub container_port: u16,
    /// `tcp` (default), `udp` or `sctp`.
    #[serde(default, alias = "Protocol")]
    pub protocol: Protocol,
    /// Only this node address forwards; empty, `0.0.0.0` or `::` mean every local address
    /// (of that family).
    #[serde(default, rename = "hostIP", alias = "HostIP", alias = "hostIp")]
    pub host_ip: Option<String>,
}

/// Which destination a mapping listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listen {
    /// Any local address of both families.
    Any,
    /// Any local address of one family (`0.0.0.0` or `::`).
    AnyOf { v4: bool },
    /// One address.
    Address(IpAddr),
}

impl PortMapping {
    fn listen(&self) -> Result<Listen, CniError> {
        let text = self.host_ip.as_deref().unwrap_or("").trim();
        if text.is_empty() {
            return Ok(Listen::Any);
        }
        let ip: IpAddr = text.parse().map_err(|_| {
            CniError::Config(format!(
                "portMappings: hostIP {text:?} of hostPort {} is not an IP address",
                self.host_port
            ))
        })?;
        if ip.is_unspecified() {
            return Ok(Listen::AnyOf { v4: ip.is_ipv4() });
        }
        if ip == IpAddr::V6(std::net::Ipv6Addr::LOCALHOST) {
            return Err(CniError::Unsupported(format!(
                "portMappings: hostIP ::1 of hostPort {}: IPv6 loopback cannot be forwarded to a pod; use 127.0.0.1 or leave hostIP empty",
                self.host_port
            )));
        }
        Ok(Listen::Address(ip))
    }

    fn validate(&self) -> Result<(), CniError> {
        if self.host_port == 0 || self.container_port == 0 {
            return Err(CniError::Config(format!(
                "portMappings: hostPort {} / containerPort {}: ports must be 1-65535",
                self.host_port, self.container_port
            )));
        }
        Ok(())
    }
}

/// The port mappings of `runtimeConfig`, empty when there are none.
pub fn port_mappings(
    runtime_config: Option<&serde_json::Value>,
) -> Result<Vec<PortMapping>, CniError> {
    let Some(list) = runtime_config.and_then(|rc| rc.get("portMappings")) else {
        return Ok(Vec::new());
    };
    if list.is_null() {
        return Ok(Vec::new());
    }
    let mappings: Vec<PortMapping> = serde_json::from_value(list.clone())
        .map_err(|e| CniError::Config(format!("runtimeConfig.portMappings: {e}")))?;
    for m in &mappings {
        m.validate()?;
    }
    Ok(mappings)
}

/// The rules of one container: its `-dnat` and `-snat` chains, in `nft list` form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerRules {
    /// DNAT rules (chain `<base>-dnat`, reached from prerouting and output).
    pub dnat: Vec<String>,
    /// Masquerade rules (chain `<base>-snat`, reached from postrouting).
    pub snat: Vec<String>,
    /// Whether a mapping forwards `127.0.0.1` (the bridge then needs `route_localnet`).
    pub localhost: bool,
}

/// Renders the container's rules for `mappings` to the pod addresses `pod_ips`; a mapping
/// whose `hostIP` has a family the pod has no address of is an error.
pub fn container_rules(
    mappings: &[PortMapping],
    pod_ips: &[IpAddr],
) -> Result<ContainerRules, CniError> {
    let mut out = ContainerRules::default();
    let push = |list: &mut Vec<String>, rule: String| {
        if !list.contains(&rule) {
            list.push(rule);
        }
    };
    for m in mappings {
        m.validate()?;
        let listen = m.listen()?;
        let proto = m.protocol.keyword();
        let (hp, cp) = (m.host_port, m.container_port);
        let mut matched = false;
        for pod in pod_ips {
            let v4 = pod.is_ipv4();
            let (fam, to) = if v4 {
                ("ip", format!("{pod}:{cp}"))
            } else {
                ("ip6", format!("[{pod}]:{cp}"))
            };
            let (dnat, localhost) = match listen {
                Listen::Address(a) if a.is_ipv4() != v4 => continue,
                Listen::AnyOf { v4: want } if want != v4 => continue,
                Listen::Address(a) => (
                    format!("{fam} daddr {a} {proto} dport {hp} dnat {fam} to {to}"),
                    a.is_loopback(),
                ),
                Listen::Any | Listen::AnyOf { .. } if v4 => (
                    format!(
                        "meta nfproto ipv4 fib daddr type local {proto} dport {hp} dnat ip to {to}"
                    ),
                    true,
                ),
                Listen::Any | Listen::AnyOf { .. } => (
                    format!(
                        "ip6 daddr != ::1 fib daddr type local {proto} dport {hp} dnat ip6 to {to}"
                    ),
                    false,
                ),
            };
            matched = true;
            push(&mut out.dnat, dnat);
            push(
                &mut out.snat,
                format!("{fam} saddr {pod} {fam} daddr {pod} {proto} dport {cp} masquerade"),
            );
            if localhost {
                out.localhost = true;
                push(
                    &mut out.snat,
                    format!("ip saddr 127.0.0.0/8 ip daddr {pod} {proto} dport {cp} masquerade"),
                );
            }
        }
        if !matched {
            return Err(CniError::Config(format!(
                "portMappings: hostPort {hp} listens on {:?} but the pod has no address of that family (it has {pod_ips:?})",
                m.host_ip.as_deref().unwrap_or("")
            )));
        }
    }
    Ok(out)
}

/// The identity of one attachment, which names its chains.
#[derive(Debug, Clone, Copy)]
pub struct Attachment<'a> {
    /// Network name (the conflist's `name`).
    pub network: &'a str,
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
}

fn digest_hex(parts: &[&str]) -> String {
    hex::encode(Sha256::digest(parts.join("\0").as_bytes()))
}

/// Prefix of every container chain of `network`.
fn network_prefix(network: &str) -> String {
    format!(
        "{CHAIN_PREFIX}{}-",
        &digest_hex(&["kinit hostports", network])[..8]
    )
}

impl Attachment<'_> {
    /// Base name of the attachment's chains (`<base>-dnat`, `<base>-snat`).
    pub fn chain_base(&self) -> String {
        format!(
            "{}{}",
            network_prefix(self.network),
            &digest_hex(&[self.network, self.container_id, self.ifname])[..16]
        )
    }

    fn comment(&self) -> String {
        let safe = |s: &str| -> String {
            s.chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':'))
                .collect()
        };
        format!(
            "network {} container {} ifname {}",
            safe(self.network),
            safe(self.container_id),
            safe(self.ifname)
        )
    }
}

/// The container chain as `nft list chain` prints it.
fn chain_listing(name: &str, comment: &str, rules: &[String]) -> String {
    let body: String = rules.iter().map(|r| format!("    {r}\n")).collect();
    format!("table inet {TABLE} {{\n  chain {name} {{\n    comment \"{comment}\"\n{body}  }}\n}}\n")
}

/// Statements that create the table and its fixed chains (idempotently) and reset the fixed
/// chains' rules.
fn skeleton() -> String {
    let t = TABLE;
    format!(
        "add table inet {t}\n\
         add chain inet {t} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}\n\
         add chain inet {t} output {{ type nat hook output priority -100; policy accept; }}\n\
         add chain inet {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         add chain inet {t} guard {{ type filter hook prerouting priority raw; policy accept; }}\n\
         add chain inet {t} hostports\n\
         add chain inet {t} masquerading\n\
         flush chain inet {t} prerouting\n\
         add rule inet {t} prerouting jump hostports\n\
         flush chain inet {t} output\n\
         add rule inet {t} output jump hostports\n\
         flush chain inet {t} postrouting\n\
         add rule inet {t} postrouting jump masquerading\n\
         flush chain inet {t} guard\n\
         add rule inet {t} guard iifname != \"lo\" ip daddr 127.0.0.0/8 drop\n"
    )
}

/// One transaction: write the `set` container's chains, drop the `remove` ones, and point
/// the dispatch chains at exactly `bases`.
fn script(
    set: Option<(&str, &str, &ContainerRules)>,
    remove: &BTreeSet<String>,
    bases: &BTreeSet<String>,
) -> String {
    let t = TABLE;
    let mut s = skeleton();
    if let Some((base, comment, rules)) = set {
        for (suffix, list) in [(DNAT_SUFFIX, &rules.dnat), (SNAT_SUFFIX, &rules.snat)] {
            s.push_str(&format!(
                "add chain inet {t} {base}{suffix} {{ comment \"{comment}\"; }}\nflush chain inet {t} {base}{suffix}\n"
            ));
            for rule in list {
                s.push_str(&format!("add rule inet {t} {base}{suffix} {rule}\n"));
            }
        }
    }
    s.push_str(&format!("flush chain inet {t} hostports\n"));
    for base in bases {
        s.push_str(&format!(
            "add rule inet {t} hostports jump {base}{DNAT_SUFFIX}\n"
        ));
    }
    s.push_str(&format!("flush chain inet {t} masquerading\n"));
    for base in bases {
        s.push_str(&format!(
            "add rule inet {t} masquerading jump {base}{SNAT_SUFFIX}\n"
        ));
    }
    for base in remove {
        for suffix in [DNAT_SUFFIX, SNAT_SUFFIX] {
            // `add` first makes the flush and delete valid for a half-present pair.
            s.push_str(&format!(
                "add chain inet {t} {base}{suffix}\nflush chain inet {t} {base}{suffix}\ndelete chain inet {t} {base}{suffix}\n"
            ));
        }
    }
    s
}

/// Base names of the container chains in a table listing.
fn container_bases(listing: &serde_json::Value) -> BTreeSet<String> {
    kinit_nft::objects(listing, "chain")
        .filter_map(|c| c["name"].as_str())
        .filter(|n| n.starts_with(CHAIN_PREFIX))
        .filter_map(|n| {
            n.strip_suffix(DNAT_SUFFIX)
                .or_else(|| n.strip_suffix(SNAT_SUFFIX))
        })
        .map(str::to_string)
        .collect()
}

fn current_bases() -> Result<Option<BTreeSet<String>>, CniError> {
    let listing = nft()
        .list_table("inet", TABLE)
        .map_err(|e| CniError::nft(format!("list table inet {TABLE}"), e))?;
    Ok(listing.map(|l| container_bases(&l)))
}

fn lock(dir: &Path) -> Result<Flock<std::fs::File>, CniError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| CniError::io("cannot create the directory of the hostPort lock", dir, e))?;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| CniError::io("cannot open the hostPort lock file", &path, e))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| {
        CniError::io("cannot lock the hostPort lock file", &path, errno.into())
    })
}

/// Installs (or replaces) the attachment's mappings; with no mappings, removes any it had.
/// Returns the rules written.
pub fn add(
    at: Attachment<'_>,
    mappings: &[PortMapping],
    pod_ips: &[IpAddr],
    lock_dir: &Path,
) -> Result<ContainerRules, CniError> {
    if mappings.is_empty() {
        del(at, lock_dir)?;
        return Ok(ContainerRules::default());
    }
    let rules = container_rules(mappings, pod_ips)?;
    let _lock = lock(lock_dir)?;
    let base = at.chain_base();
    let mut bases = current_bases()?.unwrap_or_default();
    bases.insert(base.clone());
    nft()
        .apply(&script(
            Some((&base, &at.comment(), &rules)),
            &BTreeSet::new(),
            &bases,
        ))
        .map_err(|e| {
            CniError::nft(
                format!("install the hostPort chains {base}-dnat/-snat in table inet {TABLE}"),
                e,
            )
        })?;
    Ok(rules)
}

/// Removes the attachment's mappings; nothing to remove is fine.
pub fn del(at: Attachment<'_>, lock_dir: &Path) -> Result<(), CniError> {
    remove_where(lock_dir, |base| base == at.chain_base()).map(drop)
}

/// GC: removes the chains of `network`'s attachments that are not in `valid`
/// (`(container ID, ifname)` pairs). Returns the removed chain base names.
pub fn gc(
    network: &str,
    valid: &HashSet<(String, String)>,
    lock_dir: &Path,
) -> Result<Vec<String>, CniError> {
    let keep: HashSet<String> = valid
        .iter()
        .map(|(id, ifname)| {
            Attachment {
                network,
                container_id: id,
                ifname,
            }
            .chain_base()
        })
        .collect();
    let prefix = network_prefix(network);
    remove_where(lock_dir, |base| {
        base.starts_with(&prefix) && !keep.contains(base)
    })
}

fn remove_where(lock_dir: &Path, doomed: impl Fn(&str) -> bool) -> Result<Vec<String>, CniError> {
    // Without a table there is nothing to remove, and no lock file needs creating.
    if current_bases()?.is_none() {
        return Ok(Vec::new());
    }
    let _lock = lock(lock_dir)?;
    let Some(mut bases) = current_bases()? else {
        return Ok(Vec::new());
    };
    let remove: BTreeSet<String> = bases.iter().filter(|b| doomed(b)).cloned().collect();
    if remove.is_empty() {
        return Ok(Vec::new());
    }
    bases.retain(|b| !remove.contains(b));
    nft().apply(&script(None, &remove, &bases)).map_err(|e| {
        CniError::nft(
            format!("remove hostPort chains {remove:?} from table inet {TABLE}"),
            e,
        )
    })?;
    Ok(remove.into_iter().collect())
}

/// CHECK: the attachment's chains hold exactly the rules for `mappings` and the dispatch
/// chains reach them; with no mappings, the attachment must have no chains.
pub fn check(
    at: Attachment<'_>,
    mappings: &[PortMapping],
    pod_ips: &[IpAddr],
) -> Result<(), CniError> {
    let base = at.chain_base();
    if mappings.is_empty() {
        if current_bases()?.is_some_and(|b| b.contains(&base)) {
            return Err(CniError::Check(format!(
                "hostPort chains {base}-dnat/-snat exist in table inet {TABLE} but the container has no port mappings"
            )));
        }
        return Ok(());
    }
    let rules = container_rules(mappings, pod_ips)?;
    let comment = at.comment();
    let nft = nft();
    for (suffix, list, dispatch) in [
        (DNAT_SUFFIX, &rules.dnat, "hostports"),
        (SNAT_SUFFIX, &rules.snat, "masquerading"),
    ] {
        let name = format!("{base}{suffix}");
        let have = match nft.run(&["list", "chain", "inet", TABLE, &name]) {
            Ok(text) => text,
            Err(e) if e.is_missing() => {
                return Err(CniError::Check(format!(
                    "hostPort chain {name} is missing from table inet {TABLE}"
                )))
            }
            Err(e) => {
                return Err(CniError::nft(
                    format!("list chain {name} of table inet {TABLE}"),
                    e,
                ))
            }
        };
        if normalize(&have) != normalize(&chain_listing(&name, &comment, list)) {
            return Err(CniError::Check(format!(
                "hostPort chain {name} differs from the container's port mappings: it holds\n{have}"
            )));
        }
        let jumps = nft
            .run(&["list", "chain", "inet", TABLE, dispatch])
            .map_err(|e| {
                CniError::nft(format!("list chain {dispatch} of table inet {TABLE}"), e)
            })?;
        let jump = format!("jump {name}");
        if !normalize(&jumps).iter().any(|l| l == &jump) {
            return Err(CniError::Check(format!(
                "chain {dispatch} of table inet {TABLE} does not jump to {name}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(json: serde_json::Value) -> Vec<PortMapping> {
        port_mappings(Some(&serde_json::json!({ "portMappings": json }))).unwrap()
    }

    #[test]
    fn parses_runtime_config() {
        let m = pm(serde_json::json!([
            {"hostPort": 8080, "containerPort": 80, "protocol": "TCP", "hostIP": ""},
            {"hostPort": 5353, "containerPort": 53, "protocol": "udp"},
            {"hostPort": 9999, "containerPort": 9, "protocol": "sctp", "hostIP": "10.0.0.5"},
            {"hostPort": 1, "containerPort": 2}
        ]));
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].protocol, Protocol::Tcp);
        assert_eq!(m[1].protocol, Protocol::Udp);
        assert_eq!(m[2].protocol, Protocol::Sctp);
        assert_eq!(m[2].host_ip.as_deref(), Some("10.0.0.5"));
        assert_eq!(m[3].protocol, Protocol::Tcp);
        // What containerd 1.6 (go-cni) sends: Go's field names.
        let from_containerd = pm(serde_json::json!([
            {"HostPort": 18080, "ContainerPort": 8080, "Protocol": "tcp", "HostIP": ""},
            {"HostPort": 5353, "ContainerPort": 53, "Protocol": "udp", "HostIP": "10.0.0.5"}
        ]));
        assert_eq!(from_containerd[0].host_port, 18080);
        assert_eq!(from_containerd[0].container_port, 8080);
        assert_eq!(from_containerd[1].protocol, Protocol::Udp);
        assert_eq!(from_containerd[1].host_ip.as_deref(), Some("10.0.0.5"));
        assert!(port_mappings(None).unwrap().is_empty());
        assert!(port_mappings(Some(&serde_json::json!({})))
            .unwrap()
            .is_empty());
        let bad = |v: serde_json::Value| {
            port_mappings(Some(&serde_json::json!({ "portMappings": v }))).unwrap_err()
        };
        assert!(
            bad(serde_json::json!([{"hostPort": 0, "containerPort": 80}]))
                .to_string()
                .contains("1-65535")
        );
        assert!(
            bad(serde_json::json!([{"hostPort": 1, "containerPort": 80, "protocol": "icmp"}]))
                .to_string()
                .contains("icmp")
        );
        assert!(
            bad(serde_json::json!([{"hostPort": 70000, "containerPort": 80}]))
                .to_string()
                .contains("portMappings")
        );
    }

    #[test]
    fn renders_dnat_from_local_addresses_and_hairpin_masquerade() {
        let ips: Vec<IpAddr> = vec!["10.244.1.2".parse().unwrap(), "fd10::2".parse().unwrap()];
        let r = container_rules(
            &pm(serde_json::json!([{"hostPort": 8080, "containerPort": 80}])),
            &ips,
        )
        .unwrap();
        assert_eq!(
            r.dnat,
            [
                "meta nfproto ipv4 fib daddr type local tcp dport 8080 dnat ip to 10.244.1.2:80",
                "ip6 daddr != ::1 fib daddr type local tcp dport 8080 dnat ip6 to [fd10::2]:80",
            ]
        );
        assert_eq!(
            r.snat,
            [
                "ip saddr 10.244.1.2 ip daddr 10.244.1.2 tcp dport 80 masquerade",
                "ip saddr 127.0.0.0/8 ip daddr 10.244.1.2 tcp dport 80 masquerade",
                "ip6 saddr fd10::2 ip6 daddr fd10::2 tcp dport 80 masquerade",
            ]
        );
        assert!(r.localhost);
    }

    #[test]
    fn renders_host_ip_and_protocols() {
        let ips: Vec<IpAddr> = vec!["10.244.1.2".parse().unwrap(), "fd10::2".parse().unwrap()];
        let r = container_rules(
            &pm(serde_json::json!([
                {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "10.0.0.5"},
                {"hostPort": 9, "containerPort": 9, "protocol": "sctp", "hostIP": "::"},
            ])),
            &ips,
        )
        .unwrap();
        assert_eq!(
            r.dnat,
            [
                "ip daddr 10.0.0.5 udp dport 5353 dnat ip to 10.244.1.2:53",
                "ip6 daddr != ::1 fib daddr type local sctp dport 9 dnat ip6 to [fd10::2]:9",
            ]
        );
        assert!(!r.localhost, "no mapping forwards 127.0.0.1");
        assert!(r.snat.iter().all(|s| !s.contains("127.0.0.0/8")));
        // 127.0.0.1 as hostIP: DNAT of loopback only, plus the loopback masquerade.
        let r = container_rules(
            &pm(serde_json::json!([{"hostPort": 81, "containerPort": 80, "hostIP": "127.0.0.1"}])),
            &ips[..1],
        )
        .unwrap();
        assert_eq!(
            r.dnat,
            ["ip daddr 127.0.0.1 tcp dport 81 dnat ip to 10.244.1.2:80"]
        );
        assert!(r.localhost);
        // A family the pod lacks, and ::1, are refused.
        let e = container_rules(
            &pm(serde_json::json!([{"hostPort": 81, "containerPort": 80, "hostIP": "fd00::5"}])),
            &ips[..1],
        )
        .unwrap_err();
        assert!(e.to_string().contains("no address of that family"), "{e}");
        let e = container_rules(
            &pm(serde_json::json!([{"hostPort": 81, "containerPort": 80, "hostIP": "::1"}])),
            &ips,
        )
        .unwrap_err();
        assert!(e.to_string().contains("::1"), "{e}");
        let e = container_rules(
            &pm(serde_json::json!([{"hostPort": 81, "containerPort": 80, "hostIP": "nope"}])),
            &ips,
        )
        .unwrap_err();
        assert!(e.to_string().contains("not an IP address"), "{e}");
    }

    #[test]
    fn chain_names_are_stable_per_attachment_and_grouped_per_network() {
        let a = Attachment {
            network: "kinit",
            container_id: "abc",
            ifname: "eth0",
        };
        let b = Attachment {
            container_id: "abd",
            ..a
        };
        let other = Attachment {
            network: "other",
            ..a
        };
        assert_eq!(a.chain_base(), a.chain_base());
        assert_ne!(a.chain_base(), b.chain_base());
        assert!(a.chain_base().starts_with(&network_prefix("kinit")));
        assert!(b.chain_base().starts_with(&network_prefix("kinit")));
        assert!(!other.chain_base().starts_with(&network_prefix("kinit")));
        assert!(a.chain_base().starts_with("hp-"));
        let c = Attachment {
            container_id: "x\"; flush ruleset",
            ..a
        };
        assert!(!c.comment().contains('"') && !c.comment().contains(';'));
    }

    #[test]
    fn script_rebuilds_dispatch_and_deletes_whole_pairs() {
        let rules = ContainerRules {
            dnat: vec!["tcp dport 1 dnat ip to 10.0.0.2:1".into()],
            snat: vec!["ip saddr 10.0.0.2 ip daddr 10.0.0.2 tcp dport 1 masquerade".into()],
            localhost: false,
        };
        let bases: BTreeSet<String> = ["hp-a", "hp-b"].iter().map(|s| s.to_string()).collect();
        let remove: BTreeSet<String> = ["hp-c".to_string()].into();
        let s = script(Some(("hp-b", "c", &rules)), &remove, &bases);
        assert!(s.contains("flush chain inet kinit-hostports hostports\nadd rule inet kinit-hostports hostports jump hp-a-dnat\nadd rule inet kinit-hostports hostports jump hp-b-dnat\n"), "{s}");
        assert!(s.contains("add rule inet kinit-hostports masquerading jump hp-b-snat\n"));
        assert!(s.contains(
            "add rule inet kinit-hostports hp-b-dnat tcp dport 1 dnat ip to 10.0.0.2:1\n"
        ));
        // The deletes come after the dispatch no longer jumps there.
        let flush = s
            .find("flush chain inet kinit-hostports masquerading")
            .unwrap();
        let delete = s
            .find("delete chain inet kinit-hostports hp-c-dnat")
            .unwrap();
        assert!(flush < delete);
        assert!(s.contains("delete chain inet kinit-hostports hp-c-snat"));
        assert!(!s.contains("jump hp-c"));
    }

    #[test]
    fn container_bases_come_from_chain_names() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"nftables":[{"chain":{"name":"prerouting"}},{"chain":{"name":"hostports"}},
                {"chain":{"name":"hp-1-2-dnat"}},{"chain":{"name":"hp-1-2-snat"}},{"chain":{"name":"hp-1-3-snat"}}]}"#,
        )
        .unwrap();
        let b: Vec<String> = container_bases(&v).into_iter().collect();
        assert_eq!(b, ["hp-1-2", "hp-1-3"]);
    }
}
