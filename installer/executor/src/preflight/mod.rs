//! Preflight: is a host ready to become a cluster node?
//!
//! Every check runs through the [`Host`] trait (so it works over SSH and locally), parses plain
//! command output with small pure functions (unit-tested with sample outputs below), and returns
//! Pass / Warn / Fail with a message and, when something is wrong, the fix.

mod parse;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use parse::{
    evaluate_arch, evaluate_bridge_netfilter, evaluate_cgroups, evaluate_clock_skew,
    evaluate_containerd, evaluate_disk, evaluate_ip_forward, evaluate_nftables, evaluate_os,
    evaluate_overlay, evaluate_ports, evaluate_swap, parse_cgroup_probe, parse_df_available_kib,
    parse_epoch, parse_listeners, parse_os_release, parse_sysctl_probe, CgroupInfo, Listener,
    OsRelease,
};

use crate::fanout::run_on_all;
use crate::host::Host;

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Ready.
    Pass,
    /// Works, but deserves attention.
    Warn,
    /// Must be fixed before installing.
    Fail,
}

impl std::fmt::Display for CheckStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CheckStatus::Pass => "PASS",
            CheckStatus::Warn => "WARN",
            CheckStatus::Fail => "FAIL",
        })
    }
}

/// The result of one check on one host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckResult {
    /// Short check name, e.g. `swap`, `ports`.
    pub check: String,
    /// Pass, warn or fail.
    pub status: CheckStatus,
    /// What was found.
    pub message: String,
    /// How to fix it, when it is not a pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl CheckResult {
    /// A passing check.
    pub fn pass(check: &str, message: impl Into<String>) -> Self {
        CheckResult {
            check: check.to_string(),
            status: CheckStatus::Pass,
            message: message.into(),
            fix: None,
        }
    }

    /// A warning with its fix.
    pub fn warn(check: &str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        CheckResult {
            check: check.to_string(),
            status: CheckStatus::Warn,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }

    /// A failure with its fix.
    pub fn fail(check: &str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        CheckResult {
            check: check.to_string(),
            status: CheckStatus::Fail,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }
}

/// The roles a host will have; they decide which ports must be free.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostRoles {
    /// Runs apiserver, controller-manager and scheduler.
    pub control_plane: bool,
    /// Runs an etcd member.
    pub etcd: bool,
    /// Runs workloads.
    pub worker: bool,
}

/// Ports a host with `roles` needs free, with what uses them.
pub fn required_ports(roles: &HostRoles) -> Vec<(u16, &'static str)> {
    let mut ports = Vec::new();
    if roles.control_plane {
        ports.push((6443, "kube-apiserver"));
        ports.push((10257, "kube-controller-manager"));
        ports.push((10259, "kube-scheduler"));
    }
    if roles.etcd {
        ports.push((2379, "etcd client"));
        ports.push((2380, "etcd peer"));
    }
    // Every node runs the agent (kubelet API).
    ports.push((10250, "kubelet API"));
    ports
}

/// Thresholds of the checks.
#[derive(Debug, Clone)]
pub struct PreflightOptions {
    /// Free space needed under /var.
    pub min_var_free_bytes: u64,
    /// Clock difference to the admin machine that gives a warning.
    pub skew_warn: Duration,
    /// Clock difference to the admin machine that fails.
    pub skew_fail: Duration,
}

impl Default for PreflightOptions {
    fn default() -> Self {
        PreflightOptions {
            min_var_free_bytes: 2 * 1024 * 1024 * 1024,
            skew_warn: Duration::from_secs(2),
            skew_fail: Duration::from_secs(30),
        }
    }
}

/// All check results of one host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HostReport {
    /// Host name.
    pub host: String,
    /// Results in check order.
    pub checks: Vec<CheckResult>,
}

impl HostReport {
    /// True when any check failed.
    pub fn has_failures(&self) -> bool {
        self.checks.iter().any(|c| c.status == CheckStatus::Fail)
    }

    /// The worst status of all checks.
    pub fn worst(&self) -> CheckStatus {
        self.checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(CheckStatus::Pass)
    }

    /// The result of the check named `check`, if it ran.
    pub fn get(&self, check: &str) -> Option<&CheckResult> {
        self.checks.iter().find(|c| c.check == check)
    }
}

/// A host and its roles, for [`check_all`].
#[derive(Debug)]
pub struct PreflightTarget<H> {
    /// The host.
    pub host: H,
    /// Its roles.
    pub roles: HostRoles,
}

/// Checks every target, `concurrency` at a time; reports come back in target order.
pub async fn check_all<H: Host>(
    targets: &[PreflightTarget<H>],
    concurrency: usize,
    options: &PreflightOptions,
) -> Vec<HostReport> {
    run_on_all(targets, concurrency, |target| {
        check_host(&target.host, &target.roles, options)
    })
    .await
}

const SYSCTL_PROBE: &str = "for f in /proc/sys/net/bridge/bridge-nf-call-iptables \
     /proc/sys/net/bridge/bridge-nf-call-ip6tables /proc/sys/net/ipv4/ip_forward; do \
     if [ -r \"$f\" ]; then echo \"$f=$(cat \"$f\")\"; else echo \"$f=missing\"; fi; done";

/// Whether `nft` exists (PATH or the sbin directories) and can list the kernel's tables.
pub const NFT_PROBE: &str =
    "n=$(command -v nft || ls /usr/sbin/nft /sbin/nft 2>/dev/null | head -n1); \
     if [ -z \"$n\" ]; then echo missing; \
     elif out=$(\"$n\" list tables 2>&1); then echo ok; \
     else echo \"error $(echo \"$out\" | head -n1)\"; fi";

const CGROUP_PROBE: &str = "cat /proc/self/mounts; \
     while read -r dev mnt fstype rest; do \
     if [ \"$fstype\" = cgroup2 ]; then echo \"--- $mnt\"; cat \"$mnt/cgroup.controllers\" 2>/dev/null; fi; \
     done < /proc/self/mounts";

const PORT_PROBE: &str = "ss -Htlnp 2>/dev/null || ss -Htln 2>/dev/null || \
     { echo '#proc-net-tcp'; cat /proc/net/tcp /proc/net/tcp6 2>/dev/null; }";

const CONTAINERD_PROBE: &str = "if command -v containerd >/dev/null 2>&1; then \
     echo \"installed $(containerd --version 2>/dev/null)\"; \
     elif command -v apt-cache >/dev/null 2>&1; then \
     echo \"apt $(apt-cache policy containerd 2>/dev/null | sed -n 's/^ *Candidate: *//p')\"; \
     elif command -v dnf >/dev/null 2>&1; then \
     if dnf -q list --available containerd >/dev/null 2>&1; then echo 'dnf available'; else echo 'dnf none'; fi; \
     else echo none; fi; \
     if command -v runc >/dev/null 2>&1; then echo 'runc yes'; else echo 'runc no'; fi";

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Runs every check on one host. A host that cannot be reached gets one failed `reachable`
/// check and nothing else.
pub async fn check_host<H: Host>(
    host: &H,
    roles: &HostRoles,
    options: &PreflightOptions,
) -> HostReport {
    let mut checks = Vec::new();
    let report = |checks| HostReport {
        host: host.name().to_string(),
        checks,
    };

    // Reachability and architecture in one round trip.
    let uname = match host.run("uname -m; uname -r").await {
        Ok(output) => output,
        Err(err) => {
            let fix = if err.is_connection_error() {
                "make the host reachable over SSH with the right user, key and known_hosts (see the message)"
            } else {
                "check that the login user can run commands (and `sudo -n` for non-root users)"
            };
            checks.push(CheckResult::fail("reachable", err.to_string(), fix));
            return report(checks);
        }
    };
    if !uname.success() {
        checks.push(CheckResult::fail(
            "reachable",
            format!(
                "connected, but running commands failed ({}): {}",
                uname.status,
                uname.stderr_tail(3)
            ),
            "for non-root users allow passwordless sudo (sudo -n) for the kinit user",
        ));
        return report(checks);
    }
    checks.push(CheckResult::pass("reachable", "connected, commands run"));
    let text = uname.stdout_text();
    let mut lines = text.lines();
    let machine = lines.next().unwrap_or("").trim().to_string();
    let kernel = lines.next().unwrap_or("").trim().to_string();
    checks.push(evaluate_arch(&machine, &kernel));

    checks.push(match host.run("cat /etc/os-release").await {
        Ok(out) if out.success() => evaluate_os(&parse_os_release(&out.stdout_text())),
        Ok(_) => CheckResult::warn(
            "os",
            "/etc/os-release is missing; cannot tell the distribution",
            "use Debian 11+, Ubuntu 20.04+ or another systemd distribution with /etc/os-release",
        ),
        Err(err) => probe_error("os", err),
    });

    match host.run(SYSCTL_PROBE).await {
        Ok(out) => {
            let values = parse_sysctl_probe(&out.stdout_text());
            checks.push(evaluate_bridge_netfilter(&values));
            checks.push(evaluate_ip_forward(&values));
        }
        Err(err) => checks.push(probe_error("kernel-sysctls", err)),
    }

    checks.push(match host.run("cat /proc/filesystems").await {
        Ok(out) => evaluate_overlay(&out.stdout_text()),
        Err(err) => probe_error("overlayfs", err),
    });

    checks.push(match host.run(NFT_PROBE).await {
        Ok(out) => evaluate_nftables(&out.stdout_text()),
        Err(err) => probe_error("nftables", err),
    });

    checks.push(match host.run(CGROUP_PROBE).await {
        Ok(out) => evaluate_cgroups(&parse_cgroup_probe(&out.stdout_text())),
        Err(err) => probe_error("cgroups", err),
    });

    checks.push(match host.run("cat /proc/swaps").await {
        Ok(out) => evaluate_swap(&out.stdout_text()),
        Err(err) => probe_error("swap", err),
    });

    checks.push(match host.run(PORT_PROBE).await {
        Ok(out) => evaluate_ports(&parse_listeners(&out.stdout_text()), &required_ports(roles)),
        Err(err) => probe_error("ports", err),
    });

    let before = unix_now();
    checks.push(match host.run("date +%s.%N").await {
        Ok(out) => {
            let after = unix_now();
            // The host read its clock somewhere between our two readings: compare to the middle.
            let admin = (before + after) / 2.0;
            match parse_epoch(&out.stdout_text()) {
                Some(remote) => evaluate_clock_skew(remote - admin, after - before, options),
                None => CheckResult::warn(
                    "time",
                    format!(
                        "cannot read the host clock from {:?}",
                        out.stdout_text().trim()
                    ),
                    "make sure `date +%s` works on the host",
                ),
            }
        }
        Err(err) => probe_error("time", err),
    });

    checks.push(match host.run(CONTAINERD_PROBE).await {
        Ok(out) => evaluate_containerd(&out.stdout_text()),
        Err(err) => probe_error("containerd", err),
    });

    checks.push(match host.run("df -Pk /var").await {
        Ok(out) if out.success() => match parse_df_available_kib(&out.stdout_text()) {
            Some(kib) => evaluate_disk(kib * 1024, options.min_var_free_bytes),
            None => CheckResult::warn(
                "disk",
                "cannot parse `df -Pk /var` output",
                "check free space under /var by hand (2 GiB or more)",
            ),
        },
        Ok(out) => CheckResult::warn(
            "disk",
            format!("`df -Pk /var` failed: {}", out.stderr_tail(2)),
            "check free space under /var by hand (2 GiB or more)",
        ),
        Err(err) => probe_error("disk", err),
    });

    report(checks)
}

fn probe_error(check: &str, err: crate::ExecError) -> CheckResult {
    CheckResult::fail(
        check,
        format!("could not run the check: {err}"),
        "make sure the host stays reachable and the login user can run commands",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalHost;

    #[test]
    fn ports_follow_roles() {
        let worker = required_ports(&HostRoles {
            worker: true,
            ..Default::default()
        });
        assert_eq!(worker, vec![(10250, "kubelet API")]);
        let cp_etcd: Vec<u16> = required_ports(&HostRoles {
            control_plane: true,
            etcd: true,
            worker: false,
        })
        .into_iter()
        .map(|(p, _)| p)
        .collect();
        assert_eq!(cp_etcd, vec![6443, 10257, 10259, 2379, 2380, 10250]);
    }

    #[test]
    fn report_summaries() {
        let report = HostReport {
            host: "n".into(),
            checks: vec![
                CheckResult::pass("a", "ok"),
                CheckResult::warn("b", "meh", "fix b"),
            ],
        };
        assert!(!report.has_failures());
        assert_eq!(report.worst(), CheckStatus::Warn);
        assert_eq!(report.get("b").unwrap().fix.as_deref(), Some("fix b"));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["checks"][0]["status"], "pass");
        assert!(json["checks"][0].get("fix").is_none());
    }

    #[tokio::test]
    async fn local_host_runs_every_check() {
        let report = check_host(
            &LocalHost::new("local"),
            &HostRoles {
                worker: true,
                ..Default::default()
            },
            &PreflightOptions::default(),
        )
        .await;
        let names: Vec<&str> = report.checks.iter().map(|c| c.check.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "reachable",
                "arch",
                "os",
                "bridge-netfilter",
                "ip-forward",
                "overlayfs",
                "nftables",
                "cgroups",
                "swap",
                "ports",
                "time",
                "containerd",
                "disk"
            ]
        );
        // Same machine, same clock.
        assert_eq!(report.get("time").unwrap().status, CheckStatus::Pass);
        assert_eq!(report.get("reachable").unwrap().status, CheckStatus::Pass);
    }

    #[tokio::test]
    async fn unreachable_host_reports_one_failure() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let mut config = crate::SshConfig::new("gone", "127.0.0.1", "root");
        config.port = port;
        let report = check_host(
            &crate::SshHost::new(config),
            &HostRoles::default(),
            &PreflightOptions::default(),
        )
        .await;
        assert_eq!(report.checks.len(), 1);
        assert_eq!(report.checks[0].check, "reachable");
        assert_eq!(report.checks[0].status, CheckStatus::Fail);
        assert!(report.checks[0].message.contains("cannot connect"));
    }
}
