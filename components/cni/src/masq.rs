//! IP masquerade for pod traffic leaving the cluster, as one nftables table per network.
//!
//! The rules are per pod range, not per pod, so ADD only has to make sure the table exists
//! and DEL leaves it alone. The table is replaced atomically in one `nft -f` transaction.
//! The `nft` CLI is used because nftables' netlink protocol has no maintained Rust crate
//! (the `nftables` crate also drives the CLI, through JSON).

use std::io::Write;
use std::process::{Command, Stdio};

use ipnet::IpNet;

use crate::error::CniError;

/// The nftables table (family `inet`) holding the masquerade rules of `network`.
///
/// It starts with `kinit` so `kinit reset` removes it with kinit's other tables.
pub fn table_name(network: &str) -> String {
    let safe: String = network
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("kinit_cni_{safe}")
}

/// The ruleset that masquerades `pod_subnets` traffic to anything outside `no_masq`.
pub fn ruleset(table: &str, pod_subnets: &[IpNet], no_masq: &[IpNet]) -> String {
    let mut rules = Vec::new();
    for subnet in pod_subnets {
        let (fam, multicast) = match subnet {
            IpNet::V4(_) => ("ip", "224.0.0.0/4"),
            IpNet::V6(_) => ("ip6", "ff00::/8"),
        };
        let mut rule = format!("{fam} saddr {subnet}");
        for n in no_masq
            .iter()
            .filter(|n| n.addr().is_ipv4() == subnet.addr().is_ipv4())
        {
            rule.push_str(&format!(" {fam} daddr != {n}"));
        }
        rule.push_str(&format!(" {fam} daddr != {multicast} masquerade"));
        rules.push(rule);
    }
    let body: String = rules.iter().map(|r| format!("    {r}\n")).collect();
    format!(
        "table inet {table} {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n{body}  }}\n}}\n"
    )
}

/// Makes sure the network's masquerade table holds exactly `ruleset(...)`.
pub fn ensure(network: &str, pod_subnets: &[IpNet], no_masq: &[IpNet]) -> Result<(), CniError> {
    let table = table_name(network);
    let want = ruleset(&table, pod_subnets, no_masq);
    if let Ok(current) = nft(&["list", "table", "inet", &table], None) {
        if normalize(&current) == normalize(&want) {
            return Ok(());
        }
    }
    // Create-then-delete makes the delete valid whether or not the table exists; the three
    // statements form one transaction, so traffic never sees a missing rule set.
    let script = format!("table inet {table}\ndelete table inet {table}\n{want}");
    nft(&["-f", "-"], Some(&script)).map(drop)
}

/// Removes the network's masquerade table if present (used by tests and tooling).
pub fn remove(network: &str) -> Result<(), CniError> {
    let table = table_name(network);
    let script = format!("table inet {table}\ndelete table inet {table}\n");
    nft(&["-f", "-"], Some(&script)).map(drop)
}

/// Whether nftables is usable: the CLI runs and the kernel answers.
pub fn probe() -> Result<(), CniError> {
    nft(&["list", "tables"], None).map(drop)
}

/// The rule lines of an nft listing, whitespace-normalised, for comparison.
fn normalize(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect()
}

fn nft(args: &[&str], stdin: Option<&str>) -> Result<String, CniError> {
    let mut last_err = None;
    // containerd passes its own PATH on to plugins; it may lack the sbin directories.
    for bin in ["nft", "/usr/sbin/nft", "/sbin/nft"] {
        let child = Command::new(bin)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                last_err = Some(e);
                continue;
            }
            Err(e) => return Err(CniError::Nft(format!("cannot run {bin}: {e}"))),
        };
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())
                .map_err(|e| CniError::Nft(format!("cannot write to nft: {e}")))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| CniError::Nft(format!("cannot wait for nft: {e}")))?;
        if !out.status.success() {
            return Err(CniError::Nft(format!(
                "nft {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    Err(CniError::Nft(format!(
        "nft not found in PATH, /usr/sbin or /sbin: {}",
        last_err.map(|e| e.to_string()).unwrap_or_default()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_masquerades_only_traffic_leaving_the_cluster() {
        let r = ruleset(
            "kinit_cni_kinit",
            &[
                "10.244.7.0/24".parse().unwrap(),
                "fd10:0:0:7::/64".parse().unwrap(),
            ],
            &[
                "10.244.0.0/16".parse().unwrap(),
                "fd10::/56".parse().unwrap(),
            ],
        );
        assert!(r.starts_with("table inet kinit_cni_kinit {"), "{r}");
        assert!(r.contains("type nat hook postrouting priority srcnat; policy accept;"));
        assert!(r.contains(
            "ip saddr 10.244.7.0/24 ip daddr != 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade"
        ));
        assert!(r.contains(
            "ip6 saddr fd10:0:0:7::/64 ip6 daddr != fd10::/56 ip6 daddr != ff00::/8 masquerade"
        ));
    }

    #[test]
    fn table_names_are_safe_identifiers() {
        assert_eq!(table_name("kinit"), "kinit_cni_kinit");
        assert_eq!(table_name("my-net.v1"), "kinit_cni_my_net_v1");
    }

    #[test]
    fn normalization_ignores_indentation() {
        assert_eq!(
            normalize("table inet t {\n\tchain c {\n\t}\n}\n"),
            normalize("table inet t {\n  chain c {\n  }\n}")
        );
    }
}
