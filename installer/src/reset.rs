//! Undoing kinit on a host: stop the agent and every container it started, remove kinit's
//! images, mounts, network links (bridge, VXLAN device), routes and policy rules towards other
//! nodes' pods, nftables tables (service proxy, masquerade, hostPorts), put back the files kinit replaced (from
//! `originals/`) and delete the ones it created (from `managed-files`).
//!
//! The work is one shell script run on the host, so a reset needs nothing but `sh` and the
//! tools kinit itself used. Every action is printed as it runs; with `dry_run` the same script
//! only prints, so the plan and the run cannot drift apart.

use kinit_executor::{shell_quote, ExecError, Host};
use serde::Serialize;

use crate::phases::{AGENT_UNIT, PHASE_LOCK};
use crate::sync::{MANAGED_LIST, STATE_ROOT};

/// Directories kinit owns outright and removes whole (after unmounting anything below them).
const OWNED_DIRS: &[&str] = &[STATE_ROOT, "/var/log/pods"];

/// Directories whose kinit files are removed one by one; each is removed too if left empty.
/// containerd's own directories (`/etc/containerd`, `/etc/cni/net.d`, `/opt/cni/bin`) stay:
/// containerd recreates them on start and they may predate kinit.
const SHARED_DIRS: &[&str] = &["/etc/kubernetes"];

/// Prefix of every nftables table and network link kinit creates.
pub const NET_PREFIX: &str = "kinit";

/// The default bridge of kinit's CNI configuration.
pub const DEFAULT_BRIDGE: &str = "cni0";

/// What a reset did (or would do) on one host.
#[derive(Debug, Clone, Serialize)]
pub struct ResetReport {
    /// Host name.
    pub host: String,
    /// Each action, in order, as a command line.
    pub actions: Vec<String>,
    /// Whether the actions were only listed.
    pub dry_run: bool,
}

/// The reset script; `dry_run` makes every action print without running.
pub fn script(dry_run: bool) -> String {
    let owned: Vec<String> = OWNED_DIRS
        .iter()
        .map(|d| shell_quote(d).expect("constant"))
        .collect();
    let shared: Vec<String> = SHARED_DIRS
        .iter()
        .map(|d| shell_quote(d).expect("constant"))
        .collect();
    format!(
        r#"set -u
DRY={dry}
# Every change goes through `act`: it prints the command, and runs it unless this is a dry run.
act() {{ echo "$*"; if [ "$DRY" = 0 ]; then "$@" >/dev/null 2>&1 || echo "  (failed: $*)" >&2; fi; }}
restart_containerd=0
# Wait for a phase command a killed `kinit apply` left running (phases hold the same lock).
if [ "$DRY" = 0 ] && command -v flock >/dev/null 2>&1; then
  exec 9>>{phase_lock}
  flock -w 900 9 || echo "  (could not take {phase_lock}; continuing)" >&2
fi

if systemctl cat {agent} >/dev/null 2>&1; then
  act systemctl disable --now {agent}
  act systemctl reset-failed {agent}
fi

if command -v ctr >/dev/null 2>&1 && systemctl is-active --quiet containerd; then
  # SIGKILL each task, wait for them to exit, then delete them. (`tasks rm -f` was seen to
  # wait forever on pod sandboxes; every ctr call is bounded by `timeout`.)
  tasks=$(timeout 30 ctr -n k8s.io tasks ls -q 2>/dev/null)
  for t in $tasks; do act timeout 30 ctr -n k8s.io tasks kill -s SIGKILL "$t"; done
  if [ "$DRY" = 0 ]; then
    i=0
    while [ $i -lt 40 ] && timeout 10 ctr -n k8s.io tasks ls 2>/dev/null | grep -q ' RUNNING'; do sleep 0.25; i=$((i+1)); done
  fi
  for t in $tasks; do act timeout 30 ctr -n k8s.io tasks delete "$t"; done
  for c in $(timeout 30 ctr -n k8s.io containers ls -q 2>/dev/null); do act timeout 30 ctr -n k8s.io containers rm "$c"; done
  for i in $(timeout 30 ctr -n k8s.io images ls -q 2>/dev/null | grep '^kinit\.local/'); do act timeout 60 ctr -n k8s.io images rm "$i"; done
fi

for n in $(ip netns list 2>/dev/null | awk '{{print $1}}' | grep '^cni-'); do act ip netns delete "$n"; done
for m in $(findmnt -rn -o TARGET 2>/dev/null | grep -E '^({owned_re})(/|$)' | sort -r); do act umount -l "$m"; done
# The pod sandboxes' /dev/shm mounts (the CRI plugin removes them only with the sandbox).
for m in $(findmnt -rn -o TARGET 2>/dev/null | grep -E '^/run/containerd/io\.containerd\.grpc\.v1\.cri/sandboxes/[^/]+/shm$'); do act umount -l "$m"; done

bridge={bridge}
if [ -f /etc/cni/net.d/10-kinit.conflist ]; then
  b=$(sed -n 's/.*"bridge"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' /etc/cni/net.d/10-kinit.conflist | head -n1)
  [ -n "$b" ] && bridge=$b
fi
# Pod interfaces still on the bridge (a sandbox's namespace is torn down asynchronously by the
# kernel, its veth can outlive `ip netns delete` for a moment): removed with their peers.
for l in $(ls "/sys/class/net/$bridge/brif" 2>/dev/null); do act ip link delete "$l"; done
[ -e "/sys/class/net/$bridge" ] && act ip link delete "$bridge"
for l in $(ls /sys/class/net 2>/dev/null | grep '^{prefix}'); do act ip link delete "$l"; done
# Routes to other nodes' pod ranges (host-gw) carry kinit's route protocol; in VXLAN mode pod
# traffic to other nodes goes through a policy rule and table of its own.
if [ -n "$(ip route show proto {route_proto} 2>/dev/null)" ]; then act ip route flush proto {route_proto}; fi
if [ -n "$(ip -6 route show proto {route_proto} 2>/dev/null)" ]; then act ip -6 route flush proto {route_proto}; fi
for fam in -4 -6; do
  n=0
  while [ $n -lt 32 ] && ip $fam rule show pref {rule_pref} 2>/dev/null | grep -q "lookup {rule_table}"; do
    act ip $fam rule del pref {rule_pref} table {rule_table}
    n=$((n+1)); [ "$DRY" = 1 ] && break
  done
  if [ -n "$(ip $fam route show table {rule_table} 2>/dev/null)" ]; then act ip $fam route flush table {rule_table}; fi
done
if command -v nft >/dev/null 2>&1; then
  nft list tables 2>/dev/null | while read -r _ family name; do
    case "$name" in {prefix}*) act nft delete table "$family" "$name" ;; esac
  done
fi

managed={state}/{managed}
# etcd's data belongs to kinit only when kinit wrote the etcd static pod.
if grep -qxF /etc/kubernetes/manifests/etcd.yaml "$managed" 2>/dev/null && [ -d /var/lib/etcd ]; then
  act rm -rf /var/lib/etcd
fi
if [ -f "$managed" ]; then
  while IFS= read -r p; do
    [ -n "$p" ] || continue
    if [ -e "{state}/originals$p" ]; then
      act cp -p "{state}/originals$p" "$p"
    elif [ -e "$p" ] || [ -L "$p" ]; then
      act rm -f "$p"
    fi
    [ "$p" = /etc/containerd/config.toml ] && restart_containerd=1
  done < "$managed"
fi
for d in {owned}; do [ -e "$d" ] && act rm -rf "$d"; done
for d in {shared}; do [ -d "$d" ] && [ -z "$(find "$d" -mindepth 1 -not -type d -print -quit)" ] && act rm -rf "$d"; done
[ -e {phase_lock} ] && act rm -f {phase_lock}
if [ -e /etc/systemd/system/{agent} ] || [ "$DRY" = 0 ]; then act systemctl daemon-reload; fi
if [ "$restart_containerd" = 1 ] && systemctl is-active --quiet containerd; then act systemctl restart containerd; fi
exit 0
"#,
        dry = u8::from(dry_run),
        agent = AGENT_UNIT,
        phase_lock = PHASE_LOCK,
        owned_re = OWNED_DIRS.join("|").replace('.', "\\."),
        bridge = DEFAULT_BRIDGE,
        prefix = NET_PREFIX,
        route_proto = kinit_cni::network::ROUTE_PROTOCOL,
        rule_pref = kinit_cni::network::POLICY_RULE_PRIORITY,
        rule_table = kinit_cni::network::POLICY_ROUTE_TABLE,
        state = STATE_ROOT,
        managed = MANAGED_LIST,
        owned = owned.join(" "),
        shared = shared.join(" "),
    )
}

/// Resets `host` (or, with `dry_run`, lists what a reset would do).
pub async fn reset<H: Host>(host: &H, dry_run: bool) -> Result<ResetReport, ExecError> {
    let script = script(dry_run);
    let command = format!(
        "sh -c {}",
        shell_quote(&script).expect("the script holds no NUL byte")
    );
    let output = host.run_checked(&command).await?;
    Ok(ResetReport {
        host: host.name().to_string(),
        actions: String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
        dry_run,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_is_valid_sh_and_dry_run_only_prints() {
        for dry in [true, false] {
            let out = std::process::Command::new("sh")
                .args(["-n", "-c", &script(dry)])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(script(true).contains("DRY=1"));
        assert!(script(false).contains("DRY=0"));
    }

    #[test]
    fn network_state_routes_rules_links_and_tables_are_removed() {
        let text = script(true);
        assert!(
            std::path::Path::new(kinit_cni::network::DEFAULT_STATE_FILE).starts_with(STATE_ROOT),
            "the pod network's state file lives in the directory reset removes"
        );
        assert!(text.contains(&format!(
            "ip $fam rule del pref {} table {}",
            kinit_cni::network::POLICY_RULE_PRIORITY,
            kinit_cni::network::POLICY_ROUTE_TABLE
        )));
        assert!(text.contains(&format!(
            "ip route flush proto {}",
            kinit_cni::network::ROUTE_PROTOCOL
        )));
        // Links and tables go by prefix: every one kinit creates carries it.
        assert!(text.contains(&format!("case \"$name\" in {NET_PREFIX}*)")));
        for name in [
            kinit_cni::network::VXLAN_DEVICE,
            kinit_proxy::DEFAULT_TABLE,
            kinit_cni::hostport::TABLE,
            &kinit_cni::masq::table_name("kinit"),
        ] {
            assert!(name.starts_with(NET_PREFIX), "{name}");
        }
    }

    #[test]
    fn the_conflist_names_the_state_file_the_agent_writes() {
        let context = kinit_templates::ClusterRenderContext::default();
        let text = kinit_templates::render_template("10-kinit.conflist.j2", &context).unwrap();
        let conflist: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            conflist["plugins"][0]["networkStateFile"],
            kinit_cni::network::DEFAULT_STATE_FILE
        );
    }

    #[test]
    fn owned_directories_are_kinits_own() {
        for dir in OWNED_DIRS {
            assert!(dir.contains("kinit") || *dir == "/var/log/pods", "{dir}");
        }
    }
}
