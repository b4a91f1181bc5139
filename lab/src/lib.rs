//! The lab: real hosts on one Linux machine for tests and for people.
//!
//! `up` creates N hosts, each a systemd-nspawn container booting systemd from an overlay over a
//! cached Debian base image, on a private bridge (10.88.0.0/24) with its own address, hostname,
//! machine-id, SSH host key, sshd, containerd and runc. It writes an SSH key, a known_hosts file
//! with every host's key (generated before boot, so nothing is trusted on first use) and a kinit
//! inventory. A JSON state file lists every PID, mount and link it made; `down` removes exactly
//! those and is safe to run again. One lab runs at a time.
//!
//! Processes are only ever signalled by the PID (and start time) recorded when they were
//! started, never looked up by name.

pub mod base;
pub mod error;
pub mod inventory;
pub mod prerequisites;
pub mod state;
pub mod system;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kinit_executor::ssh::keys::{generate_ed25519, GeneratedKey};
use kinit_executor::{run_on_all, ExecError, Host, HostKeyPolicy, SshAuth, SshConfig, SshHost};

pub use base::{BaseRecipe, LAB_SUDO_USER};
pub use error::LabError;
pub use state::{HostState, LabPhase, LabState};

/// The lab's bridge address; hosts use it as their default gateway.
pub const GATEWAY: &str = "10.88.0.1";

/// Every lab host's `/etc/resolv.conf`: the bridge address is its only DNS server.
pub const RESOLV_CONF: &str = "nameserver 10.88.0.1\n";
/// Prefix length of the lab network.
pub const PREFIX_LEN: u8 = 24;
/// Last octet of the first host's address (10.88.0.11, .12, …).
pub const FIRST_HOST_OCTET: u8 = 11;
/// Most hosts one lab may have.
pub const MAX_NODES: usize = 32;

/// Settings of a lab.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// Lab name (state file, directory, inventory metadata).
    pub name: String,
    /// Number of hosts.
    pub nodes: usize,
    /// Bridge name.
    pub bridge: String,
    /// Base images and lab directories live here.
    pub root_dir: PathBuf,
    /// State files and the lock live here (a tmpfs: gone after a reboot, like the lab).
    pub run_dir: PathBuf,
    /// Where key, known_hosts and inventory go; default: the lab's directory.
    pub out_dir: Option<PathBuf>,
    /// Debian mirror for the base image.
    pub mirror: String,
    /// How long one host may take to boot.
    pub boot_timeout: Duration,
}

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig {
            name: "lab".to_string(),
            nodes: 3,
            bridge: "kinitlab0".to_string(),
            root_dir: PathBuf::from("/var/lib/kinit-lab"),
            run_dir: PathBuf::from("/run/kinit-lab"),
            out_dir: None,
            mirror: "http://deb.debian.org/debian".to_string(),
            boot_timeout: Duration::from_secs(120),
        }
    }
}

impl LabConfig {
    /// Checks names and sizes before anything is created.
    pub fn validate(&self) -> Result<(), LabError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 32
            && self.name.starts_with(|c: char| c.is_ascii_lowercase())
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !name_ok {
            return Err(LabError::InvalidConfig {
                field: "name",
                reason: format!(
                    "{:?}: use 1-32 lowercase letters, digits and '-', starting with a letter",
                    self.name
                ),
            });
        }
        if self.nodes == 0 || self.nodes > MAX_NODES {
            return Err(LabError::InvalidConfig {
                field: "nodes",
                reason: format!("{} is out of range 1..={MAX_NODES}", self.nodes),
            });
        }
        let bridge_ok = !self.bridge.is_empty()
            && self.bridge.len() <= 15
            && self
                .bridge
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !bridge_ok {
            return Err(LabError::InvalidConfig {
                field: "bridge",
                reason: format!(
                    "{:?}: a link name is 1-15 letters, digits, '-' or '_'",
                    self.bridge
                ),
            });
        }
        Ok(())
    }

    /// Name of host `index` (0-based): node1, node2, …
    pub fn host_name(index: usize) -> String {
        format!("node{}", index + 1)
    }

    /// Address of host `index` (0-based): 10.88.0.11, …
    pub fn host_address(index: usize) -> String {
        format!("10.88.0.{}", FIRST_HOST_OCTET as usize + index)
    }

    fn lab_dir(&self) -> PathBuf {
        self.root_dir.join(&self.name)
    }
}

/// Receives progress messages (the CLI shows them with progress bars; tests ignore them).
pub trait Progress: Send + Sync {
    /// A lab-wide step.
    fn lab(&self, _message: &str) {}
    /// A step on one host.
    fn host(&self, _host: &str, _message: &str) {}
    /// Something the user must see and keep (packages the lab installs on this machine):
    /// printed to stderr unless the receiver shows it another way.
    fn notice(&self, message: &str) {
        eprintln!("{message}");
    }
}

/// No progress output.
impl Progress for () {}

impl LabState {
    /// SSH settings for host `index` as `user` (`root` or [`LAB_SUDO_USER`]): the lab key,
    /// the lab known_hosts, strict host-key checking.
    pub fn ssh_config(&self, index: usize, user: &str) -> SshConfig {
        let host = &self.hosts[index];
        let mut config = SshConfig::new(host.name.clone(), host.address.clone(), user);
        config.auth = vec![SshAuth::KeyFile {
            path: self.ssh_key.clone(),
            passphrase: None,
        }];
        config.known_hosts = self.known_hosts.clone();
        config.host_key_policy = HostKeyPolicy::Strict;
        config
    }

    /// An SSH executor for every host, logged in as `user`.
    pub fn ssh_hosts(&self, user: &str) -> Vec<SshHost> {
        (0..self.hosts.len())
            .map(|i| SshHost::new(self.ssh_config(i, user)))
            .collect()
    }

    /// `ssh` command line a person can paste to log into host `index`.
    pub fn ssh_command(&self, index: usize) -> String {
        format!(
            "ssh -i {} -o UserKnownHostsFile={} root@{}",
            self.ssh_key.display(),
            self.known_hosts.display(),
            self.hosts[index].address
        )
    }
}

/// Holds the lab lock (an exclusive `flock` on `<run_dir>/.lock`) while alive.
struct RunLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl RunLock {
    fn acquire(run_dir: &Path) -> Result<RunLock, LabError> {
        std::fs::create_dir_all(run_dir)
            .map_err(|e| LabError::io(format!("cannot create {}", run_dir.display()), e))?;
        let path = run_dir.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| LabError::io(format!("cannot open {}", path.display()), e))?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|_| LabError::Busy { path })?;
        Ok(RunLock { _lock: lock })
    }
}

/// Brings up a lab. On failure everything created so far is removed again.
pub async fn up(config: &LabConfig, progress: &dyn Progress) -> Result<LabState, LabError> {
    config.validate()?;
    prerequisites::ensure(progress).await?;
    let _lock = RunLock::acquire(&config.run_dir)?;
    if let Some(existing) = LabState::list(&config.run_dir).into_iter().next() {
        return Err(LabError::AlreadyUp {
            state_file: LabState::file(&config.run_dir, &existing),
            name: existing,
        });
    }
    if Path::new("/sys/class/net").join(&config.bridge).exists() {
        return Err(LabError::BridgeInUse {
            bridge: config.bridge.clone(),
        });
    }
    if let Ok(swaps) = std::fs::read_to_string("/proc/swaps") {
        if swaps.lines().count() > 1 {
            progress.lab(
                "warning: swap is on on this machine; lab hosts share its kernel and will fail \
                 the swap preflight check (turn it off with `swapoff -a`)",
            );
        }
    }
    let lab_dir = config.lab_dir();
    if lab_dir.exists() {
        // No state file, so nothing runs from it: a leftover from before a reboot.
        progress.lab(&format!("removing leftover {}", lab_dir.display()));
        system::remove_tree(&lab_dir).await?;
    }
    let recipe = BaseRecipe::bookworm(&config.mirror);
    let base_image = base::ensure_base_image(&config.root_dir, &recipe, progress).await?;

    let out_dir = config.out_dir.clone().unwrap_or_else(|| lab_dir.clone());
    let hosts = (0..config.nodes)
        .map(|i| {
            let name = LabConfig::host_name(i);
            let dir = lab_dir.join(&name);
            HostState {
                address: LabConfig::host_address(i),
                root: dir.join("root"),
                dir,
                name,
                mounted: false,
                nspawn_pid: None,
                nspawn_start_ticks: None,
                leader_pid: None,
                leader_start_ticks: None,
                veth: None,
            }
        })
        .collect();
    let mut state = LabState {
        name: config.name.clone(),
        phase: LabPhase::Starting,
        bridge: config.bridge.clone(),
        bridge_created: false,
        gateway: format!("{GATEWAY}/{PREFIX_LEN}"),
        lab_dir,
        base_image,
        ssh_key: out_dir.join("id_ed25519"),
        known_hosts: out_dir.join("known_hosts"),
        inventory: out_dir.join("inventory.yaml"),
        out_dir,
        files: Vec::new(),
        out_dir_created: false,
        hosts,
    };
    state.save(&config.run_dir)?;

    match bring_up(config, &mut state, progress).await {
        Ok(()) => {
            state.phase = LabPhase::Up;
            state.save(&config.run_dir)?;
            Ok(state)
        }
        Err(cause) => {
            progress.lab("up failed; removing what it created");
            let leftovers = teardown(&state, progress).await;
            if leftovers.is_empty() {
                LabState::remove(&config.run_dir, &state.name)?;
            } else {
                state.save(&config.run_dir)?;
            }
            Err(LabError::UpFailed {
                cause: Box::new(cause),
                leftovers,
            })
        }
    }
}

async fn bring_up(
    config: &LabConfig,
    state: &mut LabState,
    progress: &dyn Progress,
) -> Result<(), LabError> {
    let run_dir = &config.run_dir;
    std::fs::create_dir_all(&state.lab_dir)
        .map_err(|e| LabError::io(format!("cannot create {}", state.lab_dir.display()), e))?;
    if !state.out_dir.exists() {
        std::fs::create_dir_all(&state.out_dir)
            .map_err(|e| LabError::io(format!("cannot create {}", state.out_dir.display()), e))?;
        state.out_dir_created = true;
        state.save(run_dir)?;
    }

    progress.lab(&format!("bridge {} {}", state.bridge, state.gateway));
    system::run_tool(
        "creating the lab bridge",
        "ip",
        ["link", "add", &state.bridge, "type", "bridge"],
    )
    .await?;
    state.bridge_created = true;
    state.save(run_dir)?;
    system::run_tool(
        "addressing the lab bridge",
        "ip",
        ["addr", "add", &state.gateway, "dev", &state.bridge],
    )
    .await?;
    system::run_tool(
        "starting the lab bridge",
        "ip",
        ["link", "set", &state.bridge, "up"],
    )
    .await?;

    // Keys: one client key for every host, one host key per host (known before boot).
    let client_key = generate_ed25519(&format!("kinit-lab-{}", state.name)).map_err(|reason| {
        LabError::io(
            "cannot generate the lab SSH key",
            std::io::Error::other(reason),
        )
    })?;
    let key_path = state.ssh_key.clone();
    record_file(
        state,
        run_dir,
        &key_path,
        client_key.private_openssh.as_bytes(),
        0o600,
    )?;
    let pub_path = PathBuf::from(format!("{}.pub", key_path.display()));
    record_file(
        state,
        run_dir,
        &pub_path,
        client_key.public_openssh.as_bytes(),
        0o644,
    )?;
    let mut host_keys = Vec::new();
    for host in &state.hosts {
        let key = generate_ed25519(&format!("root@{}", host.name)).map_err(|reason| {
            LabError::io("cannot generate a host key", std::io::Error::other(reason))
        })?;
        host_keys.push(key);
    }

    let etc_hosts = etc_hosts(&state.hosts);
    for (index, host_key) in host_keys.iter().enumerate() {
        let host = state.hosts[index].clone();
        progress.host(&host.name, "preparing root file system");
        for dir in [
            host.upper_dir(),
            host.work_dir(),
            host.root.clone(),
            host.containerd_dir(),
        ] {
            std::fs::create_dir_all(&dir)
                .map_err(|e| LabError::io(format!("cannot create {}", dir.display()), e))?;
        }
        mount_overlay(&state.base_image, &host)?;
        state.hosts[index].mounted = true;
        state.save(run_dir)?;
        populate_root(&host, &etc_hosts, host_key, &client_key)?;
    }

    for index in 0..state.hosts.len() {
        let host = state.hosts[index].clone();
        progress.host(&host.name, "booting");
        let (pid, ticks) = start_container(&host, &state.bridge)?;
        state.hosts[index].nspawn_pid = Some(pid);
        state.hosts[index].nspawn_start_ticks = Some(ticks);
        state.save(run_dir)?;
    }

    for index in 0..state.hosts.len() {
        let host = state.hosts[index].clone();
        let (leader, leader_ticks) = find_leader(&host).await?;
        state.hosts[index].leader_pid = Some(leader);
        state.hosts[index].leader_start_ticks = Some(leader_ticks);
        state.save(run_dir)?;
        progress.host(&host.name, &format!("network {}", host.address));
        let veth = configure_network(&host, leader).await?;
        state.hosts[index].veth = Some(veth);
        state.save(run_dir)?;
    }

    let known_hosts: String = state
        .hosts
        .iter()
        .zip(&host_keys)
        .map(|(host, key)| format!("{},{} {}\n", host.address, host.name, key.public_key_only))
        .collect();
    let known_hosts_path = state.known_hosts.clone();
    record_file(
        state,
        run_dir,
        &known_hosts_path,
        known_hosts.as_bytes(),
        0o644,
    )?;

    let deadline = config.boot_timeout;
    let frozen = state.clone();
    let results = run_on_all(&frozen.hosts, frozen.hosts.len(), |host| {
        let frozen = &frozen;
        async move {
            let index = frozen
                .hosts
                .iter()
                .position(|h| h.name == host.name)
                .unwrap_or(0);
            let result = wait_for_boot(frozen, index, deadline).await;
            match &result {
                Ok(status) => progress.host(&host.name, &format!("up ({status})")),
                Err(err) => progress.host(&host.name, &format!("failed: {err}")),
            }
            result
        }
    })
    .await;
    for result in results {
        result?;
    }

    let pairs: Vec<(String, String)> = state
        .hosts
        .iter()
        .map(|h| (h.name.clone(), h.address.clone()))
        .collect();
    let inventory = inventory::lab_inventory(&state.name, &pairs, &state.ssh_key);
    let yaml = inventory::render(&inventory);
    let inventory_path = state.inventory.clone();
    record_file(state, run_dir, &inventory_path, yaml.as_bytes(), 0o644)?;
    Ok(())
}

/// Writes a file into the output directory and records it in the state (for `down`).
fn record_file(
    state: &mut LabState,
    run_dir: &Path,
    path: &Path,
    contents: &[u8],
    mode: u32,
) -> Result<(), LabError> {
    if path.exists() && !path.is_file() {
        return Err(LabError::io(
            format!("cannot write {}", path.display()),
            std::io::Error::other(
                "something that is not a file is in the way; move it or choose another --out",
            ),
        ));
    }
    if !state.files.iter().any(|f| f == path) {
        state.files.push(path.to_path_buf());
        state.save(run_dir)?;
    }
    system::write_atomic(path, contents, mode)
}

fn etc_hosts(hosts: &[HostState]) -> String {
    let mut text = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    for host in hosts {
        text.push_str(&format!("{}\t{}\n", host.address, host.name));
    }
    text
}

fn mount_overlay(base: &Path, host: &HostState) -> Result<(), LabError> {
    use nix::mount::{mount, MsFlags};
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        base.display(),
        host.upper_dir().display(),
        host.work_dir().display()
    );
    mount(
        Some("overlay"),
        &host.root,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|e| LabError::Mount {
        action: "mount overlay on",
        target: host.root.clone(),
        reason: format!("{e} (options {options})"),
    })
}

/// Gives the host its identity: hostname, hosts file, machine-id, SSH host key, login keys.
fn populate_root(
    host: &HostState,
    etc_hosts: &str,
    host_key: &GeneratedKey,
    client_key: &GeneratedKey,
) -> Result<(), LabError> {
    let root = &host.root;
    let machine_id = hex::encode(rand::random::<[u8; 16]>());
    let files: [(&str, Vec<u8>, u32); 6] = [
        (
            "etc/hostname",
            format!("{}\n", host.name).into_bytes(),
            0o644,
        ),
        ("etc/hosts", etc_hosts.as_bytes().to_vec(), 0o644),
        // The base image carries the build machine's resolver; lab hosts must only ever send
        // traffic to the lab bridge, so their DNS server is the bridge address (tests that need
        // an upstream answer there).
        ("etc/resolv.conf", RESOLV_CONF.as_bytes().to_vec(), 0o644),
        (
            "etc/machine-id",
            format!("{machine_id}\n").into_bytes(),
            0o444,
        ),
        (
            "etc/ssh/ssh_host_ed25519_key",
            host_key.private_openssh.as_bytes().to_vec(),
            0o600,
        ),
        (
            "etc/ssh/ssh_host_ed25519_key.pub",
            host_key.public_openssh.as_bytes().to_vec(),
            0o644,
        ),
    ];
    for (path, contents, mode) in files {
        system::write_atomic(&root.join(path), &contents, mode)?;
    }
    let authorized = client_key.public_openssh.as_bytes();
    for (home, uid) in [("root", 0u32), ("home/kinit", 1000u32)] {
        let ssh_dir = root.join(home).join(".ssh");
        std::fs::create_dir_all(&ssh_dir)
            .map_err(|e| LabError::io(format!("cannot create {}", ssh_dir.display()), e))?;
        std::os::unix::fs::chown(&ssh_dir, Some(uid), Some(uid))
            .map_err(|e| LabError::io(format!("cannot chown {}", ssh_dir.display()), e))?;
        std::fs::set_permissions(
            &ssh_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .map_err(|e| LabError::io(format!("cannot chmod {}", ssh_dir.display()), e))?;
        let file = ssh_dir.join("authorized_keys");
        system::write_atomic(&file, authorized, 0o600)?;
        std::os::unix::fs::chown(&file, Some(uid), Some(uid))
            .map_err(|e| LabError::io(format!("cannot chown {}", file.display()), e))?;
    }
    Ok(())
}

/// Starts the host's systemd-nspawn in its own process group (so a Ctrl-C on `lab up` does not
/// reach it); returns its PID and start time.
fn start_container(host: &HostState, bridge: &str) -> Result<(i32, u64), LabError> {
    use std::os::unix::process::CommandExt;
    let nspawn = system::find_tool("systemd-nspawn").ok_or_else(|| LabError::MissingTools {
        missing: "systemd-nspawn (package systemd-container)".into(),
        command: system::APT_INSTALL.into(),
    })?;
    let log = std::fs::File::create(host.console_log())
        .map_err(|e| LabError::io(format!("cannot create {}", host.console_log().display()), e))?;
    let log_err = log
        .try_clone()
        .map_err(|e| LabError::io("cannot open the console log", e))?;
    let child = std::process::Command::new(nspawn)
        .arg(format!("--directory={}", host.root.display()))
        .arg("--boot")
        .arg(format!("--machine={}", host.name))
        .arg("--register=no")
        .arg("--keep-unit")
        .arg(format!("--network-bridge={bridge}"))
        .arg("--bind=/sys/fs/cgroup")
        .arg(format!(
            "--bind={}:/var/lib/containerd",
            host.containerd_dir().display()
        ))
        .arg("--capability=all")
        .arg("--system-call-filter=add_key keyctl request_key")
        .env("SYSTEMD_NSPAWN_API_VFS_WRITABLE", "1")
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0)
        .spawn()
        .map_err(|e| LabError::io(format!("cannot start systemd-nspawn for {}", host.name), e))?;
    let pid = child.id() as i32;
    // The std Child is dropped without waiting: the container outlives this process.
    drop(child);
    let ticks = system::process_start_ticks(pid).ok_or_else(|| LabError::Boot {
        host: host.name.clone(),
        reason: format!(
            "systemd-nspawn (pid {pid}) exited at once: {}",
            console_tail(host)
        ),
        console_log: host.console_log(),
    })?;
    Ok((pid, ticks))
}

fn console_tail(host: &HostState) -> String {
    let text = std::fs::read_to_string(host.console_log()).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .rev()
        .take(3)
        .collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" / ")
}

/// Finds the container's init: the child of our systemd-nspawn that lives in its own PID
/// namespace.
async fn find_leader(host: &HostState) -> Result<(i32, u64), LabError> {
    let (pid, ticks) = (
        host.nspawn_pid.unwrap_or_default(),
        host.nspawn_start_ticks.unwrap_or_default(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if !system::process_alive(pid, ticks) {
            return Err(LabError::Boot {
                host: host.name.clone(),
                reason: format!("systemd-nspawn exited: {}", console_tail(host)),
                console_log: host.console_log(),
            });
        }
        for child in system::children_of(pid) {
            if system::in_other_pid_namespace(child) {
                if let Some(child_ticks) = system::process_start_ticks(child) {
                    return Ok((child, child_ticks));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(LabError::Boot {
        host: host.name.clone(),
        reason: "the container's init did not appear within 30 s".into(),
        console_log: host.console_log(),
    })
}

/// Addresses `host0` inside the host (its own networkd does not in this mode) and returns the
/// name of the outer end of the veth pair.
async fn configure_network(host: &HostState, leader: i32) -> Result<String, LabError> {
    let net_dev = format!("/proc/{leader}/net/dev");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let devices = std::fs::read_to_string(&net_dev).unwrap_or_default();
        if devices
            .lines()
            .any(|l| l.trim_start().starts_with("host0:"))
        {
            break;
        }
        if Instant::now() > deadline {
            return Err(LabError::Boot {
                host: host.name.clone(),
                reason: "interface host0 did not appear in the container".into(),
                console_log: host.console_log(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let target = leader.to_string();
    let address = format!("{}/{PREFIX_LEN}", host.address);
    let nsenter = |args: &[&str]| {
        let mut all = vec!["-t", target.as_str(), "-n", "ip"];
        all.extend_from_slice(args);
        all.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let what = format!("configuring the network of {}", host.name);
    system::run_tool(&what, "nsenter", nsenter(&["link", "set", "lo", "up"])).await?;
    system::run_tool(
        &what,
        "nsenter",
        nsenter(&["addr", "add", &address, "dev", "host0"]),
    )
    .await?;
    system::run_tool(&what, "nsenter", nsenter(&["link", "set", "host0", "up"])).await?;
    system::run_tool(
        &what,
        "nsenter",
        nsenter(&["route", "replace", "default", "via", GATEWAY]),
    )
    .await?;
    // The image's sysctl.d file says the same, but systemd-sysctl.service inside a container
    // can fail to start (cgroup v1 migration errors under load) and the host then boots
    // "degraded" with the values it inherited from this machine. Network sysctls belong to the
    // host's network namespace, so they are set from here, deterministically.
    system::run_tool(
        &what,
        "nsenter",
        ["-t", target.as_str(), "-n", "sh", "-c", HOST_NET_SYSCTLS],
    )
    .await?;
    let link =
        system::run_tool(&what, "nsenter", nsenter(&["-o", "link", "show", "host0"])).await?;
    let peer_index = parse_peer_ifindex(&link).ok_or_else(|| LabError::Boot {
        host: host.name.clone(),
        reason: format!("cannot find the outer end of host0 in {link:?}"),
        console_log: host.console_log(),
    })?;
    outer_link_name(peer_index).ok_or_else(|| LabError::Boot {
        host: host.name.clone(),
        reason: format!("no link with index {peer_index} on this machine"),
        console_log: host.console_log(),
    })
}

/// Run inside a lab host's network namespace: what a prepared Kubernetes host has (the
/// preflight checks these). The bridge ones exist only while br_netfilter is loaded.
const HOST_NET_SYSCTLS: &str = "echo 1 > /proc/sys/net/ipv4/ip_forward && \
     for f in /proc/sys/net/bridge/bridge-nf-call-iptables \
              /proc/sys/net/bridge/bridge-nf-call-ip6tables; do \
       if [ -e \"$f\" ]; then echo 1 > \"$f\"; fi; \
     done";

/// `2: host0@if7: <…>` → 7.
fn parse_peer_ifindex(ip_link_line: &str) -> Option<u32> {
    let after = ip_link_line.split("@if").nth(1)?;
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn outer_link_name(ifindex: u32) -> Option<String> {
    std::fs::read_dir("/sys/class/net")
        .ok()?
        .flatten()
        .find(|entry| {
            std::fs::read_to_string(entry.path().join("ifindex"))
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                == Some(ifindex)
        })
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
}

/// Polls the host over SSH until systemd reports `running` or `degraded`.
async fn wait_for_boot(
    state: &LabState,
    index: usize,
    limit: Duration,
) -> Result<String, LabError> {
    let host_state = &state.hosts[index];
    let mut config = state.ssh_config(index, "root");
    config.connect_timeout = Duration::from_secs(5);
    config.command_timeout = Duration::from_secs(15);
    let ssh = SshHost::new(config);
    let deadline = Instant::now() + limit;
    loop {
        let (pid, ticks) = (
            host_state.nspawn_pid.unwrap_or_default(),
            host_state.nspawn_start_ticks.unwrap_or_default(),
        );
        if !system::process_alive(pid, ticks) {
            return Err(LabError::Boot {
                host: host_state.name.clone(),
                reason: format!("the container stopped: {}", console_tail(host_state)),
                console_log: host_state.console_log(),
            });
        }
        let last = match ssh.run("systemctl is-system-running").await {
            Ok(output) => {
                let status = output.stdout_text().trim().to_string();
                if status == "running" || status == "degraded" {
                    return Ok(status);
                }
                format!("systemd is {status:?}")
            }
            Err(
                err @ (ExecError::HostKeyChanged(_)
                | ExecError::HostKeyUnknown(_)
                | ExecError::HostKeyRevoked(_)
                | ExecError::Auth { .. }
                | ExecError::Key { .. }),
            ) => return Err(err.into()),
            Err(err) => err.to_string(),
        };
        if Instant::now() > deadline {
            return Err(LabError::Boot {
                host: host_state.name.clone(),
                reason: format!("not ready after {limit:?}: {last}"),
                console_log: host_state.console_log(),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Removes everything `state` records; returns what could not be removed (empty = all gone).
async fn teardown(state: &LabState, progress: &dyn Progress) -> Vec<String> {
    let mut problems = Vec::new();

    // 1. Stop containers, all at once, each by its own PID.
    let stops = run_on_all(&state.hosts, state.hosts.len().max(1), |host| async move {
        let mut errors = Vec::new();
        if let (Some(pid), Some(ticks)) = (host.nspawn_pid, host.nspawn_start_ticks) {
            progress.host(&host.name, "stopping");
            if let Err(e) = system::stop_process(pid, ticks, Duration::from_secs(30)).await {
                errors.push(format!("{}: systemd-nspawn: {e}", host.name));
            }
        }
        if let (Some(pid), Some(ticks)) = (host.leader_pid, host.leader_start_ticks) {
            // Normally gone with its systemd-nspawn; make sure.
            if let Err(e) = system::stop_process(pid, ticks, Duration::from_secs(5)).await {
                errors.push(format!("{}: container init: {e}", host.name));
            }
        }
        errors
    })
    .await;
    problems.extend(stops.into_iter().flatten());

    // 2. Unmount overlays (and anything else left mounted below the lab directory).
    for host in &state.hosts {
        if host.mounted || system::is_mounted(&host.root) {
            if let Err(e) = system::unmount(&host.root).await {
                problems.push(e.to_string());
            }
        }
    }

    // 3. Links.
    for host in &state.hosts {
        if let Some(veth) = &host.veth {
            if Path::new("/sys/class/net").join(veth).exists() {
                if let Err(e) =
                    system::run_tool("removing a host link", "ip", ["link", "del", veth]).await
                {
                    // It may have vanished with its namespace meanwhile.
                    if Path::new("/sys/class/net").join(veth).exists() {
                        problems.push(e.to_string());
                    }
                }
            }
        }
    }
    if state.bridge_created && Path::new("/sys/class/net").join(&state.bridge).exists() {
        progress.lab(&format!("removing bridge {}", state.bridge));
        if let Err(e) = system::run_tool(
            "removing the lab bridge",
            "ip",
            ["link", "del", &state.bridge],
        )
        .await
        {
            problems.push(e.to_string());
        }
    }

    // 4. Files and directories (the base image stays cached).
    if problems.is_empty() {
        for file in &state.files {
            match std::fs::remove_file(file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => problems.push(format!("cannot remove {}: {e}", file.display())),
            }
        }
        if let Err(e) = system::remove_tree(&state.lab_dir).await {
            problems.push(e.to_string());
        }
        if state.out_dir_created && state.out_dir.exists() {
            if let Err(e) = std::fs::remove_dir(&state.out_dir) {
                problems.push(format!(
                    "cannot remove {} (not empty?): {e}",
                    state.out_dir.display()
                ));
            }
        }
    } else {
        problems.push(format!(
            "kept {} because processes or mounts remain",
            state.lab_dir.display()
        ));
    }
    problems
}

/// Tears down lab `name`. Safe to run again: a lab that is not up is reported as such.
pub async fn down(run_dir: &Path, name: &str, progress: &dyn Progress) -> Result<(), LabError> {
    let _lock = RunLock::acquire(run_dir)?;
    let state = LabState::load(run_dir, name)?;
    let problems = teardown(&state, progress).await;
    if problems.is_empty() {
        LabState::remove(run_dir, name)?;
        Ok(())
    } else {
        Err(LabError::Teardown { problems })
    }
}

/// Tears down every lab that has a state file; returns their names.
pub async fn down_all(run_dir: &Path, progress: &dyn Progress) -> Result<Vec<String>, LabError> {
    let names = LabState::list(run_dir);
    let mut problems = Vec::new();
    for name in &names {
        match down(run_dir, name, progress).await {
            Ok(()) | Err(LabError::NotUp { .. }) => {}
            Err(LabError::Teardown { problems: p }) => problems.extend(p),
            Err(other) => problems.push(other.to_string()),
        }
    }
    if problems.is_empty() {
        Ok(names)
    } else {
        Err(LabError::Teardown { problems })
    }
}

/// A lab and whether each of its hosts is running.
#[derive(Debug, Clone)]
pub struct LabStatus {
    /// What `up` recorded.
    pub state: LabState,
    /// Per host (same order): is its container running?
    pub running: Vec<bool>,
}

/// Every lab with a state file and the liveness of its hosts.
pub fn status(run_dir: &Path) -> Result<Vec<LabStatus>, LabError> {
    LabState::list(run_dir)
        .into_iter()
        .map(|name| {
            let state = LabState::load(run_dir, &name)?;
            let running = state
                .hosts
                .iter()
                .map(|h| match (h.nspawn_pid, h.nspawn_start_ticks) {
                    (Some(pid), Some(ticks)) => system::process_alive(pid, ticks),
                    _ => false,
                })
                .collect();
            Ok(LabStatus { state, running })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation() {
        assert!(LabConfig::default().validate().is_ok());
        let bad_name = LabConfig {
            name: "Lab_1".into(),
            ..Default::default()
        };
        assert!(matches!(
            bad_name.validate(),
            Err(LabError::InvalidConfig { field: "name", .. })
        ));
        let too_many = LabConfig {
            nodes: MAX_NODES + 1,
            ..Default::default()
        };
        assert!(matches!(
            too_many.validate(),
            Err(LabError::InvalidConfig { field: "nodes", .. })
        ));
        let zero = LabConfig {
            nodes: 0,
            ..Default::default()
        };
        assert!(zero.validate().is_err());
        let long_bridge = LabConfig {
            bridge: "averyveryverylongbridge".into(),
            ..Default::default()
        };
        assert!(matches!(
            long_bridge.validate(),
            Err(LabError::InvalidConfig {
                field: "bridge",
                ..
            })
        ));
    }

    #[test]
    fn host_names_and_addresses() {
        assert_eq!(LabConfig::host_name(0), "node1");
        assert_eq!(LabConfig::host_address(0), "10.88.0.11");
        assert_eq!(LabConfig::host_address(MAX_NODES - 1), "10.88.0.42");
    }

    #[test]
    fn peer_ifindex_parsing() {
        assert_eq!(
            parse_peer_ifindex("2: host0@if7: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500"),
            Some(7)
        );
        assert_eq!(parse_peer_ifindex("2: host0: <BROADCAST>"), None);
    }

    #[test]
    fn etc_hosts_lists_every_lab_host() {
        let hosts: Vec<HostState> = (0..2)
            .map(|i| HostState {
                name: LabConfig::host_name(i),
                address: LabConfig::host_address(i),
                dir: PathBuf::new(),
                root: PathBuf::new(),
                mounted: false,
                nspawn_pid: None,
                nspawn_start_ticks: None,
                leader_pid: None,
                leader_start_ticks: None,
                veth: None,
            })
            .collect();
        let text = etc_hosts(&hosts);
        assert!(text.contains("10.88.0.11\tnode1\n"));
        assert!(text.contains("10.88.0.12\tnode2\n"));
        assert!(text.starts_with("127.0.0.1\tlocalhost\n"));
    }

    /// A fresh network namespace inherits `ip_forward` from this machine (often 0); the
    /// script must leave it at 1 whatever the host's own boot did.
    #[test]
    fn host_net_sysctls_enable_forwarding_in_a_fresh_namespace() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!(
                "skipped: creating a network namespace needs root (tests/run.sh runs as root)"
            );
            return;
        }
        let script = format!("{HOST_NET_SYSCTLS} && cat /proc/sys/net/ipv4/ip_forward");
        let out = std::process::Command::new("unshare")
            .args(["--net", "sh", "-c", &script])
            .output()
            .expect("run unshare");
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    }

    #[tokio::test]
    async fn down_of_a_lab_that_is_not_up_says_so() {
        let run = tempfile::tempdir().unwrap();
        let err = down(run.path(), "lab", &()).await.unwrap_err();
        assert!(matches!(err, LabError::NotUp { .. }));
        assert!(down_all(run.path(), &()).await.unwrap().is_empty());
    }

    #[test]
    fn second_lock_is_refused() {
        let run = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(run.path()).unwrap();
        assert!(matches!(
            RunLock::acquire(run.path()),
            Err(LabError::Busy { .. })
        ));
        drop(first);
        RunLock::acquire(run.path()).unwrap();
    }
}
