//! Outer-machine plumbing: tools, commands, processes by PID, mounts, safe removal.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

use crate::error::LabError;

/// A tool the lab runs on the outer machine and the Debian package that provides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    /// Executable name.
    pub binary: &'static str,
    /// Debian package.
    pub package: &'static str,
    /// What the lab needs it for (said when the package is installed).
    pub purpose: &'static str,
}

/// Everything `lab up` runs on the outer machine.
pub const TOOLS: &[Tool] = &[
    Tool {
        binary: "debootstrap",
        package: "debootstrap",
        purpose: "builds the Debian base image the hosts boot from",
    },
    Tool {
        binary: "systemd-nspawn",
        package: "systemd-container",
        purpose: "runs each host as a container booting systemd",
    },
    Tool {
        binary: "ip",
        package: "iproute2",
        purpose: "creates the lab bridge and the hosts' links",
    },
    Tool {
        binary: "nsenter",
        package: "util-linux",
        purpose: "addresses each host's interface inside its network namespace",
    },
    Tool {
        binary: "ssh",
        package: "openssh-client",
        purpose: "logs into the hosts (the `ssh` line `lab up` prints)",
    },
    Tool {
        binary: "nft",
        package: "nftables",
        purpose: "shows a host's nftables rules from this machine \
                  (`nsenter -t PID -n nft list ruleset`)",
    },
];

/// The apt command that installs the lab's outer-machine tools.
pub const APT_INSTALL: &str =
    "apt-get install -y debootstrap systemd-container iproute2 openssh-client nftables";

/// Search path for tools: `$PATH` plus the sbin directories root's tools live in.
fn search_path() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    format!("{path}:/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin")
}

/// Absolute path of `binary`, if installed.
pub fn find_tool(binary: &str) -> Option<PathBuf> {
    which::which_in(binary, Some(search_path()), "/").ok()
}

/// Tools from [`TOOLS`] that are not installed.
pub fn missing_tools() -> Vec<Tool> {
    missing_tools_with(|binary| find_tool(binary).is_some())
}

/// Tools from [`TOOLS`] for which `installed(binary)` is false.
pub fn missing_tools_with(installed: impl Fn(&str) -> bool) -> Vec<Tool> {
    TOOLS
        .iter()
        .copied()
        .filter(|tool| !installed(tool.binary))
        .collect()
}

/// Runs a tool to completion; fails with its stderr when it exits non-zero.
pub async fn run_tool<I, S>(what: &str, binary: &str, args: I) -> Result<String, LabError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let shown = format!(
        "{binary} {}",
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let path = find_tool(binary).ok_or_else(|| LabError::MissingTools {
        missing: binary.to_string(),
        command: APT_INSTALL.to_string(),
    })?;
    let output = tokio::process::Command::new(path)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| LabError::Command {
            what: what.to_string(),
            command: shown.clone(),
            detail: format!("cannot start it: {e}"),
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        Err(LabError::Command {
            what: what.to_string(),
            command: shown,
            detail: format!(
                "{}: {}",
                output.status,
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            ),
        })
    }
}

/// Field 22 of `/proc/<pid>/stat` (start time in clock ticks): with the PID it identifies one
/// process for its whole life, so a recycled PID is never mistaken for ours.
pub fn process_start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|s| s.start_ticks)
}

/// The fields of `/proc/<pid>/stat` the lab uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    /// One-letter state (`Z` is a zombie).
    pub state: char,
    /// Parent PID.
    pub ppid: i32,
    /// Start time in clock ticks after boot.
    pub start_ticks: u64,
}

/// Parses `/proc/<pid>/stat`; the command name may contain spaces and parentheses, so fields
/// are counted after its last `)`.
pub fn parse_stat(stat: &str) -> Option<ProcStat> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// True while the process `pid` that started at `start_ticks` runs (zombies count as gone).
pub fn process_alive(pid: i32, start_ticks: u64) -> bool {
    // Reap it if it is our own exited child (a test process that ran `up` itself).
    let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
    match std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .as_deref()
        .and_then(parse_stat)
    {
        Some(stat) => stat.start_ticks == start_ticks && stat.state != 'Z',
        None => false,
    }
}

/// Stops one process we started: SIGTERM, wait up to `grace`, then SIGKILL and wait again.
/// Identified by PID and start time; does nothing if that process is already gone.
pub async fn stop_process(pid: i32, start_ticks: u64, grace: Duration) -> Result<(), String> {
    if !process_alive(pid, start_ticks) {
        return Ok(());
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    if wait_gone(pid, start_ticks, grace).await {
        return Ok(());
    }
    if process_alive(pid, start_ticks) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    if wait_gone(pid, start_ticks, Duration::from_secs(10)).await {
        Ok(())
    } else {
        Err(format!("process {pid} survived SIGKILL"))
    }
}

async fn wait_gone(pid: i32, start_ticks: u64, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if !process_alive(pid, start_ticks) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    !process_alive(pid, start_ticks)
}

/// Direct children of `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    // Each thread lists the children it forked, so read the list of every thread.
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        let lists: Vec<String> = tasks
            .flatten()
            .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
            .collect();
        if !lists.is_empty() {
            return lists
                .iter()
                .flat_map(|text| text.split_whitespace())
                .filter_map(|p| p.parse().ok())
                .collect();
        }
    }
    // Kernels without /proc/<pid>/task/<tid>/children: scan parents.
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            if let Some(stat) = std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .as_deref()
                .and_then(parse_stat)
            {
                if stat.ppid == pid {
                    found.push(child);
                }
            }
        }
    }
    found
}

/// True when `pid` lives in another PID namespace than this process (a container's init).
pub fn in_other_pid_namespace(pid: i32) -> bool {
    match (
        std::fs::read_link(format!("/proc/{pid}/ns/pid")),
        std::fs::read_link("/proc/self/ns/pid"),
    ) {
        (Ok(theirs), Ok(ours)) => theirs != ours,
        _ => false,
    }
}

/// Mount points at or below `dir`, deepest first, from `/proc/self/mountinfo`.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = parse_mountinfo_points(&text)
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Mount points (field 5) of mountinfo text, with octal escapes (`\040` for space) decoded.
pub fn parse_mountinfo_points(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| line.split_whitespace().nth(4))
        .map(|raw| PathBuf::from(unescape_mount_path(raw)))
        .collect()
}

fn unescape_mount_path(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).ok();
            if let Some(value) = digits.and_then(|d| u8::from_str_radix(d, 8).ok()) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// True when `path` is a mount point.
pub fn is_mounted(path: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_mountinfo_points(&text).iter().any(|p| p == path)
}

/// Unmounts `target`, retrying while busy; a lazy detach is the last resort.
pub async fn unmount(target: &Path) -> Result<(), LabError> {
    use nix::mount::{umount2, MntFlags};
    for _ in 0..20 {
        if !is_mounted(target) {
            return Ok(());
        }
        match umount2(target, MntFlags::empty()) {
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
            Err(Errno::EBUSY) => tokio::time::sleep(Duration::from_millis(250)).await,
            Err(e) => {
                return Err(LabError::Mount {
                    action: "unmount",
                    target: target.to_path_buf(),
                    reason: e.to_string(),
                })
            }
        }
    }
    if is_mounted(target) {
        umount2(target, MntFlags::MNT_DETACH).map_err(|e| LabError::Mount {
            action: "detach",
            target: target.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

/// Removes a directory tree after unmounting anything mounted inside it. Refuses to delete
/// while a mount remains, so a stray bind of `/proc` or `/sys` can never be deleted through.
pub async fn remove_tree(dir: &Path) -> Result<(), LabError> {
    if !dir.exists() {
        return Ok(());
    }
    for mount in mounts_under(dir) {
        unmount(&mount).await?;
    }
    if let Some(still) = mounts_under(dir).first() {
        return Err(LabError::Mount {
            action: "refusing to delete a tree with a mount in it:",
            target: still.clone(),
            reason: format!("unmount it, then remove {}", dir.display()),
        });
    }
    std::fs::remove_dir_all(dir)
        .map_err(|e| LabError::io(format!("cannot remove {}", dir.display()), e))
}

/// Writes `contents` to `path` atomically (temp file in the same directory + rename) with `mode`.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), LabError> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let context = || format!("cannot write {}", path.display());
    let mut tmp = tempfile::Builder::new()
        .prefix(".kinit-lab-tmp-")
        .tempfile_in(dir)
        .map_err(|e| LabError::io(context(), e))?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode))
        .map_err(|e| LabError::io(context(), e))?;
    tmp.write_all(contents)
        .map_err(|e| LabError::io(context(), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| LabError::io(context(), e))?;
    tmp.persist(path)
        .map_err(|e| LabError::io(context(), e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let stat = "4242 (systemd (nspawn) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let parsed = parse_stat(stat).unwrap();
        assert_eq!(parsed.state, 'S');
        assert_eq!(parsed.ppid, 1);
        assert_eq!(parsed.start_ticks, 987_654);
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn own_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = std::process::id() as i32;
        let ticks = process_start_ticks(me).unwrap();
        assert!(process_alive(me, ticks));
        assert!(!process_alive(me, ticks + 1));
    }

    #[tokio::test]
    async fn stop_process_terminates_a_child_by_pid() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let ticks = process_start_ticks(pid).unwrap();
        assert!(children_of(std::process::id() as i32).contains(&pid));
        stop_process(pid, ticks, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(!process_alive(pid, ticks));
        // A second stop is a no-op.
        stop_process(pid, ticks, Duration::from_secs(1))
            .await
            .unwrap();
        // Already reaped by stop_process; this only honours the Child contract.
        let _ = child.wait();
    }

    #[test]
    fn mountinfo_points_are_unescaped() {
        let text = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 35 0:5 / /proc rw - proc proc rw\n";
        assert_eq!(
            parse_mountinfo_points(text),
            vec![PathBuf::from("/mnt/with space"), PathBuf::from("/proc")]
        );
    }

    #[test]
    fn mounts_under_finds_proc_but_not_outside() {
        assert_eq!(
            mounts_under(Path::new("/proc")).last(),
            Some(&PathBuf::from("/proc"))
        );
        let dir = tempfile::tempdir().unwrap();
        assert!(mounts_under(dir.path()).is_empty());
    }

    #[test]
    fn write_atomic_sets_mode_and_replaces() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn remove_tree_deletes_plain_trees() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("a/b");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join("f"), b"x").unwrap();
        remove_tree(&dir.path().join("a")).await.unwrap();
        assert!(!dir.path().join("a").exists());
        remove_tree(&dir.path().join("a")).await.unwrap();
    }

    #[test]
    fn every_tool_maps_to_a_package_in_the_apt_command_or_base_system() {
        for tool in TOOLS {
            assert!(
                APT_INSTALL.contains(tool.package) || tool.package == "util-linux",
                "{tool:?}"
            );
        }
    }
}
