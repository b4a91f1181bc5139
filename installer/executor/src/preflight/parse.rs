//! Pure parsers of probe output and the verdicts drawn from them.

use std::collections::{BTreeMap, BTreeSet};

use super::{CheckResult, PreflightOptions};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// The fields of `/etc/os-release` preflight uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OsRelease {
    /// `ID`, e.g. `debian`.
    pub id: String,
    /// `ID_LIKE`, split.
    pub id_like: Vec<String>,
    /// `VERSION_ID`, e.g. `12`.
    pub version_id: String,
    /// `PRETTY_NAME`.
    pub pretty_name: String,
}

/// Parses `/etc/os-release` (shell-style `KEY=value` lines; values unquoted with shlex).
pub fn parse_os_release(text: &str) -> OsRelease {
    let mut release = OsRelease::default();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some((key, raw)) = line.split_once('=') else {
            continue;
        };
        let value = shlex::split(raw)
            .map(|words| words.join(" "))
            .unwrap_or_else(|| raw.trim_matches('"').to_string());
        match key {
            "ID" => release.id = value.to_ascii_lowercase(),
            "ID_LIKE" => {
                release.id_like = value
                    .split_whitespace()
                    .map(|s| s.to_ascii_lowercase())
                    .collect()
            }
            "VERSION_ID" => release.version_id = value,
            "PRETTY_NAME" => release.pretty_name = value,
            _ => {}
        }
    }
    release
}

/// Debian and Ubuntu (and their derivatives) are what kinit installs packages on.
pub fn evaluate_os(release: &OsRelease) -> CheckResult {
    let name = if release.pretty_name.is_empty() {
        format!("{} {}", release.id, release.version_id)
    } else {
        release.pretty_name.clone()
    };
    let major: Option<u32> = release
        .version_id
        .split('.')
        .next()
        .and_then(|v| v.parse().ok());
    let debian_like = release.id == "debian" || release.id_like.iter().any(|l| l == "debian");
    match (release.id.as_str(), major) {
        ("debian", Some(v)) if v < 11 => CheckResult::warn(
            "os",
            format!("{name} is older than Debian 11"),
            "upgrade to Debian 11 or newer",
        ),
        ("ubuntu", Some(v)) if v < 20 => CheckResult::warn(
            "os",
            format!("{name} is older than Ubuntu 20.04"),
            "upgrade to Ubuntu 20.04 or newer",
        ),
        _ if debian_like => CheckResult::pass("os", name),
        ("", _) => CheckResult::warn(
            "os",
            "/etc/os-release names no distribution",
            "use Debian 11+ or Ubuntu 20.04+",
        ),
        _ => CheckResult::warn(
            "os",
            format!("{name}: kinit installs packages with apt and is tested on Debian/Ubuntu"),
            "install containerd and runc yourself, or use Debian 11+ / Ubuntu 20.04+",
        ),
    }
}

/// kinit ships binaries for x86_64 and aarch64.
pub fn evaluate_arch(machine: &str, kernel: &str) -> CheckResult {
    let label = match machine {
        "x86_64" => Some("amd64"),
        "aarch64" | "arm64" => Some("arm64"),
        _ => None,
    };
    match label {
        Some(label) => CheckResult::pass("arch", format!("{machine} ({label}), kernel {kernel}")),
        None => CheckResult::fail(
            "arch",
            format!("unsupported architecture {machine:?}"),
            "use an x86_64 (amd64) or aarch64 (arm64) host",
        ),
    }
}

/// Parses `path=value` lines of the sysctl probe (`value` is `missing` for absent files).
pub fn parse_sysctl_probe(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

const BRIDGE_NF_IPTABLES: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";
const BRIDGE_NF_IP6TABLES: &str = "/proc/sys/net/bridge/bridge-nf-call-ip6tables";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Bridged pod traffic must pass through iptables/nftables (br_netfilter, sysctls at 1).
pub fn evaluate_bridge_netfilter(values: &BTreeMap<String, String>) -> CheckResult {
    let persist = "printf 'net.bridge.bridge-nf-call-iptables = 1\\nnet.bridge.bridge-nf-call-ip6tables = 1\\n' \
                   > /etc/sysctl.d/99-kubernetes.conf && sysctl --system";
    match values.get(BRIDGE_NF_IPTABLES).map(String::as_str) {
        None | Some("missing") => CheckResult::fail(
            "bridge-netfilter",
            "br_netfilter is not loaded (no /proc/sys/net/bridge/bridge-nf-call-iptables)",
            format!(
                "modprobe br_netfilter && echo br_netfilter > /etc/modules-load.d/kubernetes.conf; then {persist}"
            ),
        ),
        Some("1") => match values.get(BRIDGE_NF_IP6TABLES).map(String::as_str) {
            Some("1") | None | Some("missing") => CheckResult::pass(
                "bridge-netfilter",
                "net.bridge.bridge-nf-call-iptables = 1",
            ),
            Some(other) => CheckResult::warn(
                "bridge-netfilter",
                format!("net.bridge.bridge-nf-call-ip6tables = {other} (IPv6 pod traffic bypasses the firewall)"),
                persist,
            ),
        },
        Some(other) => CheckResult::fail(
            "bridge-netfilter",
            format!("net.bridge.bridge-nf-call-iptables = {other}, must be 1"),
            persist,
        ),
    }
}

/// Nodes route pod traffic: IPv4 forwarding must be on.
pub fn evaluate_ip_forward(values: &BTreeMap<String, String>) -> CheckResult {
    match values.get(IP_FORWARD).map(String::as_str) {
        Some("1") => CheckResult::pass("ip-forward", "net.ipv4.ip_forward = 1"),
        other => CheckResult::fail(
            "ip-forward",
            format!(
                "net.ipv4.ip_forward = {}, must be 1",
                other.unwrap_or("missing")
            ),
            "echo 'net.ipv4.ip_forward = 1' > /etc/sysctl.d/99-kubernetes-forward.conf && sysctl --system",
        ),
    }
}

/// containerd's snapshotter needs overlayfs.
pub fn evaluate_overlay(proc_filesystems: &str) -> CheckResult {
    let present = proc_filesystems
        .lines()
        .any(|line| line.split_whitespace().last() == Some("overlay"));
    if present {
        CheckResult::pass("overlayfs", "overlay is in /proc/filesystems")
    } else {
        CheckResult::fail(
            "overlayfs",
            "the kernel offers no overlay filesystem",
            "modprobe overlay && echo overlay > /etc/modules-load.d/containerd.conf",
        )
    }
}

/// The `nft` tool and the kernel's nftables: the CNI plugin masquerades and maps hostPorts
/// with it and the node agent's service proxy programs Services with it. `probe` is the output
/// of [`NFT_PROBE`](super::NFT_PROBE): `missing`, or `ok`/`error <message>` from listing tables.
pub fn evaluate_nftables(probe: &str) -> CheckResult {
    let probe = probe.trim();
    if probe == "ok" {
        CheckResult::pass("nftables", "nft runs and the kernel answers")
    } else if probe.starts_with("missing") {
        CheckResult::fail(
            "nftables",
            "the nft tool is not installed (pod masquerading, hostPorts and Services need it)",
            "apt-get install -y nftables (or dnf install -y nftables)",
        )
    } else {
        CheckResult::fail(
            "nftables",
            format!(
                "nft cannot talk to the kernel: {}",
                probe.trim_start_matches("error").trim()
            ),
            "use a kernel with nf_tables (CONFIG_NF_TABLES, modprobe nf_tables) and run kinit as root",
        )
    }
}

/// Mounted cgroup controllers, v1 and v2.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupInfo {
    /// Controllers of mounted cgroup v1 hierarchies.
    pub v1_controllers: BTreeSet<String>,
    /// Each cgroup2 mount point with the controllers its root offers.
    pub v2_mounts: Vec<(String, BTreeSet<String>)>,
}

/// Parses the cgroup probe: `/proc/self/mounts`, then `--- <cgroup2 mount>` followed by that
/// mount's `cgroup.controllers`.
pub fn parse_cgroup_probe(text: &str) -> CgroupInfo {
    let mut info = CgroupInfo::default();
    let mut current_v2: Option<usize> = None;
    for line in text.lines() {
        if let Some(mount) = line.strip_prefix("--- ") {
            info.v2_mounts
                .push((mount.trim().to_string(), BTreeSet::new()));
            current_v2 = Some(info.v2_mounts.len() - 1);
            continue;
        }
        if let Some(index) = current_v2 {
            info.v2_mounts[index]
                .1
                .extend(line.split_whitespace().map(str::to_string));
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() >= 4 && fields[2] == "cgroup" {
            info.v1_controllers.extend(
                fields[3]
                    .split(',')
                    .filter(|o| {
                        !matches!(*o, "rw" | "ro" | "nosuid" | "nodev" | "noexec" | "relatime")
                    })
                    .map(str::to_string),
            );
        }
    }
    info
}

/// The agent needs the cpu and memory controllers (v2, or v1 hierarchies).
pub fn evaluate_cgroups(info: &CgroupInfo) -> CheckResult {
    let needed = ["cpu", "memory"];
    if let Some((mount, _)) = info
        .v2_mounts
        .iter()
        .find(|(_, ctrl)| needed.iter().all(|n| ctrl.contains(*n)))
    {
        return CheckResult::pass(
            "cgroups",
            format!("cgroup v2 at {mount} with cpu and memory"),
        );
    }
    if needed.iter().all(|n| info.v1_controllers.contains(*n)) {
        return CheckResult::pass(
            "cgroups",
            "cgroup v1 with cpu and memory controllers mounted",
        );
    }
    let mut found: BTreeSet<&str> = info.v1_controllers.iter().map(String::as_str).collect();
    for (_, ctrl) in &info.v2_mounts {
        found.extend(ctrl.iter().map(String::as_str));
    }
    let missing: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|n| !found.contains(n))
        .collect();
    CheckResult::fail(
        "cgroups",
        format!("cgroup controller(s) {} not available", missing.join(", ")),
        "boot with the unified hierarchy (systemd.unified_cgroup_hierarchy=1) or mount the cpu \
         and memory v1 controllers; for memory add cgroup_enable=memory to the kernel command line",
    )
}

/// Swap must be off (entries in /proc/swaps below the header mean it is on).
pub fn evaluate_swap(proc_swaps: &str) -> CheckResult {
    let active: Vec<String> = proc_swaps
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() >= 3).then(|| {
                let size_gib = fields[2].parse::<f64>().unwrap_or(0.0) * 1024.0 / GIB;
                format!("{} ({}, {:.1} GiB)", fields[0], fields[1], size_gib)
            })
        })
        .collect();
    if active.is_empty() {
        CheckResult::pass("swap", "swap is off")
    } else {
        CheckResult::fail(
            "swap",
            format!("swap is on: {}", active.join(", ")),
            "swapoff -a, and remove or comment out the swap lines in /etc/fstab (and disable \
             swap units: systemctl mask swap.target)",
        )
    }
}

/// One listening TCP socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Local address as shown (`0.0.0.0`, `[::]`, `127.0.0.1`, …).
    pub address: String,
    /// Local port.
    pub port: u16,
    /// Owning process, when `ss -p` could tell.
    pub process: Option<String>,
}

/// Parses `ss -Htln[p]` output, or `/proc/net/tcp{,6}` after a `#proc-net-tcp` marker line.
pub fn parse_listeners(text: &str) -> Vec<Listener> {
    let mut lines = text.lines().peekable();
    if lines.peek().map(|l| l.trim()) == Some("#proc-net-tcp") {
        lines.next();
        return lines.filter_map(parse_proc_net_tcp_line).collect();
    }
    lines.filter_map(parse_ss_line).collect()
}

fn parse_ss_line(line: &str) -> Option<Listener> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    // State Recv-Q Send-Q Local Peer [Process]; some ss versions omit State with -l.
    let local_index = if fields.first().map(|f| f.parse::<u64>().is_ok()) == Some(true) {
        2
    } else {
        3
    };
    let local = fields.get(local_index)?;
    let (address, port) = local.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let process = (fields.len() > local_index + 2).then(|| fields[local_index + 2..].join(" "));
    Some(Listener {
        address: address.to_string(),
        port,
        process,
    })
}

fn parse_proc_net_tcp_line(line: &str) -> Option<Listener> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    // sl local_address rem_address st ...; 0A is TCP_LISTEN. Header lines fail the parse below.
    if fields.len() < 4 || fields[3] != "0A" {
        return None;
    }
    let (addr_hex, port_hex) = fields[1].split_once(':')?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    let address = if addr_hex.len() == 8 {
        let raw = u32::from_str_radix(addr_hex, 16).ok()?;
        // The kernel prints the address in host byte order (little-endian here).
        std::net::Ipv4Addr::from(raw.swap_bytes()).to_string()
    } else {
        format!("[{addr_hex}]")
    };
    Some(Listener {
        address,
        port,
        process: None,
    })
}

/// Every required port must be free on every address.
pub fn evaluate_ports(listeners: &[Listener], required: &[(u16, &str)]) -> CheckResult {
    let mut taken = Vec::new();
    for (port, purpose) in required {
        let users: Vec<String> = listeners
            .iter()
            .filter(|l| l.port == *port)
            .map(|l| match &l.process {
                Some(p) => format!("{}:{} {}", l.address, l.port, p),
                None => format!("{}:{}", l.address, l.port),
            })
            .collect();
        if !users.is_empty() {
            taken.push((*port, *purpose, users));
        }
    }
    let list: Vec<String> = required.iter().map(|(p, _)| p.to_string()).collect();
    if taken.is_empty() {
        return CheckResult::pass("ports", format!("free: {}", list.join(", ")));
    }
    let message = taken
        .iter()
        .map(|(port, purpose, users)| {
            format!("port {port} ({purpose}) is in use by {}", users.join("; "))
        })
        .collect::<Vec<_>>()
        .join("; ");
    let first = taken[0].0;
    CheckResult::fail(
        "ports",
        message,
        format!(
            "stop or move whatever listens there (see `ss -tlnp 'sport = :{first}'`); a previous \
             cluster install is removed with `kinit reset`"
        ),
    )
}

/// Parses `date +%s.%N` (also `1700000000.N` from dates without nanoseconds).
pub fn parse_epoch(text: &str) -> Option<f64> {
    let text = text.trim();
    if let Ok(value) = text.parse::<f64>() {
        return Some(value);
    }
    text.split('.')
        .next()?
        .parse::<u64>()
        .ok()
        .map(|s| s as f64)
}

/// Certificates and tokens have validity windows: host clocks must agree with the admin box.
pub fn evaluate_clock_skew(
    skew_secs: f64,
    round_trip_secs: f64,
    options: &PreflightOptions,
) -> CheckResult {
    let magnitude = skew_secs.abs();
    let message = format!(
        "clock differs from this machine by {skew_secs:+.3} s (round trip {round_trip_secs:.3} s)"
    );
    let fix = "enable time synchronisation on every host (timedatectl set-ntp true, or install \
               chrony/systemd-timesyncd pointing at the same NTP servers)";
    if magnitude > options.skew_fail.as_secs_f64() {
        CheckResult::fail("time", message, fix)
    } else if magnitude > options.skew_warn.as_secs_f64() {
        CheckResult::warn("time", message, fix)
    } else {
        CheckResult::pass("time", message)
    }
}

/// containerd (with runc) present, or installable from the host's package manager.
pub fn evaluate_containerd(probe: &str) -> CheckResult {
    let mut runc = None;
    let mut state = None;
    for line in probe.lines() {
        match line.trim() {
            "runc yes" => runc = Some(true),
            "runc no" => runc = Some(false),
            other if !other.is_empty() && state.is_none() => state = Some(other.to_string()),
            _ => {}
        }
    }
    let state = state.unwrap_or_default();
    let manual = "install containerd (1.6 or newer) and runc from your distribution or an offline \
                  kinit bundle (kinit bundle import)";
    if let Some(version) = state.strip_prefix("installed") {
        let version = version.trim();
        let version = version
            .split_whitespace()
            .find(|w| {
                w.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_digit() || c == 'v')
            })
            .unwrap_or(version);
        return match runc {
            Some(false) => CheckResult::warn(
                "containerd",
                format!("containerd {version} is installed, but runc is not"),
                "apt-get install -y runc (or install runc from your distribution)",
            ),
            _ => CheckResult::pass("containerd", format!("containerd {version} installed")),
        };
    }
    if let Some(candidate) = state.strip_prefix("apt") {
        let candidate = candidate.trim();
        if candidate.is_empty() || candidate == "(none)" {
            return CheckResult::fail(
                "containerd",
                "containerd is not installed and apt offers no containerd package",
                format!("run apt-get update, enable the main repository, or {manual}"),
            );
        }
        return CheckResult::warn(
            "containerd",
            format!("containerd is not installed; apt can install {candidate}"),
            "kinit installs it during setup, or run: apt-get install -y containerd runc",
        );
    }
    match state.as_str() {
        "dnf available" => CheckResult::warn(
            "containerd",
            "containerd is not installed; dnf offers it",
            "dnf install -y containerd runc",
        ),
        "dnf none" => CheckResult::fail(
            "containerd",
            "containerd is not installed and dnf offers no containerd package",
            manual,
        ),
        _ => CheckResult::fail(
            "containerd",
            "containerd is not installed and no known package manager was found",
            manual,
        ),
    }
}

/// Parses `df -Pk PATH`: the "Available" column (KiB) of the first data line.
pub fn parse_df_available_kib(text: &str) -> Option<u64> {
    let line = text.lines().nth(1)?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// /var holds images, pods and the datastore.
pub fn evaluate_disk(available_bytes: u64, required_bytes: u64) -> CheckResult {
    let have = available_bytes as f64 / GIB;
    let need = required_bytes as f64 / GIB;
    if available_bytes >= required_bytes {
        CheckResult::pass("disk", format!("{have:.1} GiB free under /var"))
    } else {
        CheckResult::fail(
            "disk",
            format!("only {have:.1} GiB free under /var, need {need:.1} GiB"),
            "free space under /var (old images: crictl rmi --prune; logs: journalctl --vacuum-size) \
             or give /var a bigger volume",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preflight::CheckStatus;
    use std::time::Duration;

    const DEBIAN_12: &str = r#"PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
"#;

    const ROCKY_9: &str = "NAME=\"Rocky Linux\"\nVERSION_ID=\"9.3\"\nID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\nPRETTY_NAME=\"Rocky Linux 9.3 (Blue Onyx)\"\n";

    #[test]
    fn os_release_parsing_and_verdicts() {
        let debian = parse_os_release(DEBIAN_12);
        assert_eq!(debian.id, "debian");
        assert_eq!(debian.version_id, "12");
        assert_eq!(debian.pretty_name, "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(evaluate_os(&debian).status, CheckStatus::Pass);

        let rocky = parse_os_release(ROCKY_9);
        assert_eq!(rocky.id_like, vec!["rhel", "centos", "fedora"]);
        assert_eq!(evaluate_os(&rocky).status, CheckStatus::Warn);

        let mint = parse_os_release("ID=linuxmint\nID_LIKE=\"ubuntu debian\"\nVERSION_ID=21\n");
        assert_eq!(evaluate_os(&mint).status, CheckStatus::Pass);

        let old = parse_os_release("ID=debian\nVERSION_ID=\"10\"\n");
        assert_eq!(evaluate_os(&old).status, CheckStatus::Warn);
        assert_eq!(evaluate_os(&OsRelease::default()).status, CheckStatus::Warn);
    }

    #[test]
    fn arch_verdicts() {
        assert_eq!(evaluate_arch("x86_64", "6.1.0").status, CheckStatus::Pass);
        assert_eq!(evaluate_arch("aarch64", "6.1.0").status, CheckStatus::Pass);
        let bad = evaluate_arch("armv7l", "5.10");
        assert_eq!(bad.status, CheckStatus::Fail);
        assert!(bad.message.contains("armv7l"));
    }

    #[test]
    fn sysctl_verdicts() {
        let good = parse_sysctl_probe(
            "/proc/sys/net/bridge/bridge-nf-call-iptables=1\n\
             /proc/sys/net/bridge/bridge-nf-call-ip6tables=1\n\
             /proc/sys/net/ipv4/ip_forward=1\n",
        );
        assert_eq!(evaluate_bridge_netfilter(&good).status, CheckStatus::Pass);
        assert_eq!(evaluate_ip_forward(&good).status, CheckStatus::Pass);

        let unloaded = parse_sysctl_probe(
            "/proc/sys/net/bridge/bridge-nf-call-iptables=missing\n\
             /proc/sys/net/bridge/bridge-nf-call-ip6tables=missing\n\
             /proc/sys/net/ipv4/ip_forward=0\n",
        );
        let bridge = evaluate_bridge_netfilter(&unloaded);
        assert_eq!(bridge.status, CheckStatus::Fail);
        assert!(bridge.fix.unwrap().contains("modprobe br_netfilter"));
        let forward = evaluate_ip_forward(&unloaded);
        assert_eq!(forward.status, CheckStatus::Fail);
        assert!(forward.message.contains("= 0"));

        let off = parse_sysctl_probe("/proc/sys/net/bridge/bridge-nf-call-iptables=0\n");
        let verdict = evaluate_bridge_netfilter(&off);
        assert_eq!(verdict.status, CheckStatus::Fail);
        assert!(verdict.fix.unwrap().contains("sysctl"));

        let v6_off = parse_sysctl_probe(
            "/proc/sys/net/bridge/bridge-nf-call-iptables=1\n\
             /proc/sys/net/bridge/bridge-nf-call-ip6tables=0\n",
        );
        assert_eq!(evaluate_bridge_netfilter(&v6_off).status, CheckStatus::Warn);
    }

    #[test]
    fn overlay_detection() {
        let with = "nodev\tsysfs\nnodev\ttmpfs\n\text4\nnodev\toverlay\n";
        assert_eq!(evaluate_overlay(with).status, CheckStatus::Pass);
        let without = "nodev\tsysfs\n\text4\nnodev\toverlayish\n";
        assert_eq!(evaluate_overlay(without).status, CheckStatus::Fail);
    }

    #[test]
    fn nftables_must_be_installed_and_answer() {
        assert_eq!(evaluate_nftables("ok\n").status, CheckStatus::Pass);
        let missing = evaluate_nftables("missing");
        assert_eq!(missing.status, CheckStatus::Fail);
        assert!(missing.fix.as_deref().unwrap().contains("nftables"));
        let broken = evaluate_nftables("error Operation not permitted");
        assert_eq!(broken.status, CheckStatus::Fail);
        assert!(
            broken.message.contains("Operation not permitted"),
            "{broken:?}"
        );
    }

    const HYBRID_MOUNTS: &str = "\
/dev/vda / ext4 rw,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime 0 0
--- /sys/fs/cgroup/unified
";

    const V2_MOUNTS: &str = "\
cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0
--- /sys/fs/cgroup
cpuset cpu io memory hugetlb pids rdma misc
";

    #[test]
    fn cgroup_parsing_and_verdicts() {
        let hybrid = parse_cgroup_probe(HYBRID_MOUNTS);
        assert!(hybrid.v1_controllers.contains("cpu"));
        assert!(hybrid.v1_controllers.contains("memory"));
        assert!(!hybrid.v1_controllers.contains("nosuid"));
        assert_eq!(hybrid.v2_mounts.len(), 1);
        assert!(hybrid.v2_mounts[0].1.is_empty());
        let verdict = evaluate_cgroups(&hybrid);
        assert_eq!(verdict.status, CheckStatus::Pass);
        assert!(verdict.message.contains("v1"));

        let v2 = parse_cgroup_probe(V2_MOUNTS);
        let verdict = evaluate_cgroups(&v2);
        assert_eq!(verdict.status, CheckStatus::Pass);
        assert!(verdict.message.contains("v2 at /sys/fs/cgroup"));

        let no_memory = parse_cgroup_probe(
            "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n--- /sys/fs/cgroup\ncpuset cpu io pids\n",
        );
        let verdict = evaluate_cgroups(&no_memory);
        assert_eq!(verdict.status, CheckStatus::Fail);
        assert!(verdict.message.contains("memory"));
        assert!(!verdict.message.contains("cpu,"));
    }

    #[test]
    fn swap_verdicts() {
        let off = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";
        assert_eq!(evaluate_swap(off).status, CheckStatus::Pass);
        let on =
            format!("{off}/swapfile                               file\t\t2097148\t\t0\t\t-2\n");
        let verdict = evaluate_swap(&on);
        assert_eq!(verdict.status, CheckStatus::Fail);
        assert!(verdict.message.contains("/swapfile (file, 2.0 GiB)"));
        assert!(verdict.fix.unwrap().contains("swapoff -a"));
    }

    const SS_OUTPUT: &str = "\
LISTEN 0      4096         0.0.0.0:22        0.0.0.0:*    users:((\"sshd\",pid=101,fd=3))
LISTEN 0      4096       127.0.0.1:10248     0.0.0.0:*
LISTEN 0      128                *:10250           *:*    users:((\"systemd-socket-\",pid=300,fd=3))
LISTEN 0      4096            [::]:22           [::]:*    users:((\"sshd\",pid=101,fd=4))
";

    const PROC_NET_TCP: &str = "#proc-net-tcp
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:2818 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1
   2: 0B00580A:0016 0C00580A:C350 01 00000000:00000000 00:00000000 00000000     0        0 3 1
  sl  local_address                         remote_address                        st tx_queue
   0: 00000000000000000000000000000000:180A 00000000000000000000000000000000:0000 0A 00000000:00000000
";

    #[test]
    fn listener_parsing_ss_and_proc() {
        let ss = parse_listeners(SS_OUTPUT);
        assert_eq!(ss.len(), 4);
        assert_eq!(ss[0].address, "0.0.0.0");
        assert_eq!(ss[0].port, 22);
        assert_eq!(
            ss[0].process.as_deref(),
            Some("users:((\"sshd\",pid=101,fd=3))")
        );
        assert_eq!(ss[1].process, None);
        assert_eq!(ss[2].address, "*");
        assert_eq!(ss[3].address, "[::]");

        let proc = parse_listeners(PROC_NET_TCP);
        let ports: Vec<(String, u16)> = proc.iter().map(|l| (l.address.clone(), l.port)).collect();
        assert_eq!(
            ports,
            vec![
                ("0.0.0.0".to_string(), 22),
                ("127.0.0.1".to_string(), 10264),
                ("[00000000000000000000000000000000]".to_string(), 6154)
            ]
        );
    }

    #[test]
    fn port_verdict_names_the_port_and_its_user() {
        let listeners = parse_listeners(SS_OUTPUT);
        let free = evaluate_ports(&listeners, &[(6443, "kube-apiserver")]);
        assert_eq!(free.status, CheckStatus::Pass);
        assert_eq!(free.message, "free: 6443");
        let taken = evaluate_ports(
            &listeners,
            &[(6443, "kube-apiserver"), (10250, "kubelet API")],
        );
        assert_eq!(taken.status, CheckStatus::Fail);
        assert!(taken
            .message
            .starts_with("port 10250 (kubelet API) is in use by *:10250"));
        assert!(taken.message.contains("systemd-socket-"));
        assert!(taken.fix.unwrap().contains("sport = :10250"));
    }

    #[test]
    fn epoch_and_skew() {
        assert_eq!(
            parse_epoch("1700000000.250000000\n"),
            Some(1_700_000_000.25)
        );
        assert_eq!(parse_epoch("1700000000.N\n"), Some(1_700_000_000.0));
        assert_eq!(parse_epoch("garbage"), None);
        let options = PreflightOptions {
            min_var_free_bytes: 0,
            skew_warn: Duration::from_secs(2),
            skew_fail: Duration::from_secs(30),
        };
        assert_eq!(
            evaluate_clock_skew(0.3, 0.01, &options).status,
            CheckStatus::Pass
        );
        assert_eq!(
            evaluate_clock_skew(-5.0, 0.01, &options).status,
            CheckStatus::Warn
        );
        let fail = evaluate_clock_skew(45.0, 0.01, &options);
        assert_eq!(fail.status, CheckStatus::Fail);
        assert!(fail.message.contains("+45.000 s"));
    }

    #[test]
    fn containerd_verdicts() {
        let installed = evaluate_containerd(
            "installed containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+b1\nrunc yes\n",
        );
        assert_eq!(installed.status, CheckStatus::Pass);
        assert_eq!(installed.message, "containerd 1.6.20~ds1 installed");
        let no_runc = evaluate_containerd(
            "installed containerd github.com/containerd/containerd 1.7.0\nrunc no\n",
        );
        assert_eq!(no_runc.status, CheckStatus::Warn);
        let installable = evaluate_containerd("apt 1.6.20~ds1-1+b1\nrunc no\n");
        assert_eq!(installable.status, CheckStatus::Warn);
        assert!(installable.message.contains("1.6.20~ds1-1+b1"));
        assert_eq!(
            evaluate_containerd("apt (none)\nrunc no\n").status,
            CheckStatus::Fail
        );
        assert_eq!(
            evaluate_containerd("apt \nrunc no\n").status,
            CheckStatus::Fail
        );
        assert_eq!(
            evaluate_containerd("dnf available\nrunc no\n").status,
            CheckStatus::Warn
        );
        assert_eq!(
            evaluate_containerd("none\nrunc no\n").status,
            CheckStatus::Fail
        );
    }

    #[test]
    fn df_and_disk() {
        let df = "Filesystem     1024-blocks     Used Available Capacity Mounted on\n\
                  /dev/vda         264212084 12785000  82500888      14% /\n";
        assert_eq!(parse_df_available_kib(df), Some(82_500_888));
        assert_eq!(parse_df_available_kib("Filesystem\n"), None);
        let gib = 1024 * 1024 * 1024;
        assert_eq!(evaluate_disk(5 * gib, 2 * gib).status, CheckStatus::Pass);
        let low = evaluate_disk(gib, 2 * gib);
        assert_eq!(low.status, CheckStatus::Fail);
        assert!(low.message.contains("1.0 GiB free"));
    }
}
