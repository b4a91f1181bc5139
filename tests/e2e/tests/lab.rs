//! End-to-end: three real lab hosts driven through the SSH executor, host-key checking,
//! preflight, and a teardown that leaves nothing behind.
//!
//! One test function with sections shares one lab (bringing a lab up is the slow part); the
//! sections print what they check. A second function checks that a failed `up` cleans up.

use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kinit_e2e::{e2e_enabled, kinit_bin, leftovers, test_config, wait_until, LabGuard, SwapGuard};
use kinit_executor::preflight::{
    check_all, CheckStatus, HostRoles, PreflightOptions, PreflightTarget,
};
use kinit_executor::ssh::keys::generate_ed25519;
use kinit_executor::{
    run_on_all, ExecError, ExecRequest, FileAttrs, Host, HostKeyPolicy, OutputStream, SshHost,
    UploadSource,
};
use kinit_lab::{LabError, LabState, LAB_SUDO_USER};

/// Serialises the tests of this file: one lab at a time.
static LAB_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn section(title: &str) {
    println!("--- {title}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hosts_over_ssh_then_preflight_then_clean_teardown() {
    if !e2e_enabled("three_hosts_over_ssh_then_preflight_then_clean_teardown") {
        return;
    }
    let _serial = LAB_LOCK.lock().await;
    let config = test_config("e2e", 3);

    section("lab up (3 hosts)");
    let started = Instant::now();
    let state = kinit_lab::up(&config, &()).await.expect("lab up");
    let mut guard = LabGuard::new(&config.run_dir, &config.name);
    println!("up took {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(state.hosts.len(), 3);
    assert!(state.inventory.is_file());
    let key_mode = std::fs::metadata(&state.ssh_key)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600, "the lab's private key must be 0600");

    section("a second lab is refused while one is up");
    let second = kinit_lab::up(&test_config("e2e-second", 1), &()).await;
    match second {
        Err(LabError::AlreadyUp { name, .. }) => assert_eq!(name, "e2e"),
        other => panic!("expected AlreadyUp, got {other:?}"),
    }

    commands_and_uploads_in_parallel(&state).await;
    sudo_user_path(&state).await;
    connection_reuse_timeouts_and_errors(&state).await;
    preflight_passes_then_fails_for_port_and_swap(&state).await;
    changed_host_key_is_refused_and_accept_new_records(&state).await;

    section("lab down leaves nothing behind");
    kinit_lab::down(&config.run_dir, &config.name, &())
        .await
        .expect("lab down");
    guard.disarm();
    let left = leftovers(&state, &config.run_dir);
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(state.base_image.is_dir(), "the cached base image is kept");
    // Safe to run again.
    assert!(matches!(
        kinit_lab::down(&config.run_dir, &config.name, &()).await,
        Err(LabError::NotUp { .. })
    ));
}

async fn commands_and_uploads_in_parallel(state: &LabState) {
    section("commands and uploads on all hosts in parallel over SSH");
    let hosts = state.ssh_hosts("root");
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let local_dir = tempfile::tempdir().unwrap();
    let local_file = local_dir.path().join("from-file.txt");
    std::fs::write(&local_file, b"streamed from a local file\n").unwrap();

    let started = Instant::now();
    let results = run_on_all(&hosts, hosts.len(), |host| {
        let payload = &payload;
        let local_file = &local_file;
        async move {
            let hostname = host
                .run_checked("hostname")
                .await?
                .stdout_text()
                .trim()
                .to_string();
            host.upload(
                UploadSource::Bytes(payload),
                "/opt/kinit-e2e/payload.bin",
                &FileAttrs::mode(0o640).owned_by("root", "kinit"),
            )
            .await?;
            host.upload(
                UploadSource::File(local_file),
                "/opt/kinit-e2e/sub dir/from-file.txt",
                &FileAttrs::mode(0o600),
            )
            .await?;
            let stat = host
                .run_checked("stat -c '%a %U %G %s' /opt/kinit-e2e/payload.bin")
                .await?
                .stdout_text()
                .trim()
                .to_string();
            let back = host
                .read_file("/opt/kinit-e2e/sub dir/from-file.txt")
                .await?;
            let listing = host
                .run_checked("ls -A /opt/kinit-e2e '/opt/kinit-e2e/sub dir'")
                .await?
                .stdout_text()
                .into_owned();
            let sum = host
                .run_checked("sha256sum < /opt/kinit-e2e/payload.bin | cut -d' ' -f1")
                .await?
                .stdout_text()
                .trim()
                .to_string();
            let exists = host.exists("/opt/kinit-e2e/payload.bin").await?;
            let missing = host.exists("/opt/kinit-e2e/nothing").await?;
            Ok::<_, ExecError>((hostname, stat, back, listing, sum, exists, missing))
        }
    })
    .await;
    println!(
        "3 hosts x 8 operations in {:.2} s",
        started.elapsed().as_secs_f64()
    );

    let expected_sum = {
        let out = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(&payload)?;
                child.wait_with_output()
            })
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    for (index, result) in results.into_iter().enumerate() {
        let (hostname, stat, back, listing, sum, exists, missing) =
            result.unwrap_or_else(|e| panic!("host {index}: {e}"));
        // Results come back in host order.
        assert_eq!(hostname, state.hosts[index].name);
        assert_eq!(stat, "640 root kinit 200000");
        assert_eq!(back, b"streamed from a local file\n");
        assert_eq!(sum, expected_sum);
        assert!(exists && !missing);
        assert!(
            !listing.contains("kinit-tmp"),
            "temp files left next to uploads: {listing}"
        );
    }

    section("streamed output arrives line by line");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let seen = lines.clone();
    let mut sink = move |stream: OutputStream, line: &str| {
        seen.lock().unwrap().push((stream, line.to_string()))
    };
    let output = hosts[0]
        .run_streaming(
            "for i in 1 2 3; do echo line$i; done; echo oops >&2",
            &mut sink,
        )
        .await
        .unwrap();
    assert_eq!(output.stdout_text(), "line1\nline2\nline3\n");
    let lines = lines.lock().unwrap();
    assert_eq!(
        lines
            .iter()
            .filter(|(s, _)| *s == OutputStream::Stdout)
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>(),
        vec!["line1", "line2", "line3"]
    );
    assert!(lines.contains(&(OutputStream::Stderr, "oops".to_string())));
}

async fn sudo_user_path(state: &LabState) {
    section("non-root user: commands and uploads through sudo -n");
    let host = SshHost::new(state.ssh_config(1, LAB_SUDO_USER));
    let uid = host.run_checked("id -u").await.unwrap();
    assert_eq!(uid.stdout_text().trim(), "0", "commands run elevated");
    host.upload(
        UploadSource::Bytes(b"written via sudo\n"),
        "/etc/kinit-e2e/sudo.conf",
        &FileAttrs::mode(0o600).owned_by(LAB_SUDO_USER, LAB_SUDO_USER),
    )
    .await
    .unwrap();
    let stat = host
        .run_checked("stat -c '%a %U %G' /etc/kinit-e2e/sudo.conf")
        .await
        .unwrap();
    assert_eq!(stat.stdout_text().trim(), "600 kinit kinit");
    assert_eq!(
        host.read_file("/etc/kinit-e2e/sudo.conf").await.unwrap(),
        b"written via sudo\n"
    );
    // Without sudo the same user cannot write there, and the error names host and path.
    let mut plain = state.ssh_config(1, LAB_SUDO_USER);
    plain.sudo = false;
    let plain = SshHost::new(plain);
    let err = plain
        .upload(
            UploadSource::Bytes(b"x"),
            "/etc/kinit-e2e/denied.conf",
            &FileAttrs::mode(0o644),
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("node2: upload to /etc/kinit-e2e/denied.conf failed"),
        "{text}"
    );
    assert!(text.contains("Permission denied"), "{text}");
}

async fn connection_reuse_timeouts_and_errors(state: &LabState) {
    section("one SSH session per host, many channels");
    let host = SshHost::new(state.ssh_config(2, "root"));
    let ids: Vec<u32> = (0..20).collect();
    let outputs = run_on_all(&ids, 20, |i| {
        let host = &host;
        async move { host.run_checked(&format!("echo {i}")).await }
    })
    .await;
    for (i, out) in outputs.into_iter().enumerate() {
        assert_eq!(out.unwrap().stdout_text().trim(), i.to_string());
    }
    let sessions = host
        .run_checked("ss -Htn state established '( sport = :22 )' | wc -l")
        .await
        .unwrap();
    assert_eq!(
        sessions.stdout_text().trim(),
        "1",
        "all commands should share one SSH connection"
    );

    section("command timeout and failure messages");
    let err = host
        .exec(ExecRequest::new("sleep 30").timeout(Duration::from_millis(500)))
        .await
        .unwrap_err();
    assert!(matches!(err, ExecError::Timeout { .. }), "{err}");
    assert!(err
        .to_string()
        .starts_with("node3: `sleep 30` did not finish"));
    let err = host
        .run_checked("echo 'no such unit' >&2; exit 5")
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("node3: `echo 'no such unit' >&2; exit 5` failed with exit code 5"));
    assert!(text.ends_with("no such unit"));
    // The session still works after a timeout.
    assert_eq!(
        host.run_checked("echo alive").await.unwrap().stdout_text(),
        "alive\n"
    );
}

fn preflight_targets(state: &LabState) -> Vec<PreflightTarget<SshHost>> {
    state
        .ssh_hosts("root")
        .into_iter()
        .enumerate()
        .map(|(i, host)| PreflightTarget {
            host,
            roles: HostRoles {
                control_plane: i == 0,
                etcd: i == 0,
                worker: i != 0,
            },
        })
        .collect()
}

async fn preflight_passes_then_fails_for_port_and_swap(state: &LabState) {
    section("preflight passes on fresh lab hosts");
    let targets = preflight_targets(state);
    let options = PreflightOptions::default();
    let reports = check_all(&targets, 3, &options).await;
    for report in &reports {
        assert!(!report.has_failures(), "{report:#?}");
        assert_eq!(report.get("containerd").unwrap().status, CheckStatus::Pass);
    }
    if let Some(bin) = kinit_bin() {
        let out = std::process::Command::new(&bin)
            .args(["preflight", "-i"])
            .arg(&state.inventory)
            .arg("--known-hosts")
            .arg(&state.known_hosts)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kinit preflight failed on fresh hosts:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    } else {
        println!("KINIT_BIN not set: checked the preflight library only, not the CLI");
    }

    section("preflight fails naming the port when something listens on 10250");
    let node2 = &targets[1].host;
    node2
        .run_checked("systemd-run --unit=kinit-e2e-port systemd-socket-activate -l 10250 /bin/cat")
        .await
        .unwrap();
    let listening = async {
        for _ in 0..50 {
            let out = node2
                .run_checked("ss -Htln 'sport = :10250'")
                .await
                .unwrap();
            if !out.stdout_text().trim().is_empty() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    assert!(listening.await, "the test listener did not start");
    let report = kinit_executor::preflight::check_host(node2, &targets[1].roles, &options).await;
    let ports = report.get("ports").unwrap();
    assert_eq!(ports.status, CheckStatus::Fail);
    assert!(
        ports.message.contains("port 10250 (kubelet API) is in use"),
        "{}",
        ports.message
    );
    if let Some(bin) = kinit_bin() {
        let out = std::process::Command::new(&bin)
            .args(["preflight", "--only", "node2", "-i"])
            .arg(&state.inventory)
            .arg("--known-hosts")
            .arg(&state.known_hosts)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "kinit preflight must exit non-zero");
        assert!(stdout.contains("port 10250"), "{stdout}");
    }
    node2
        .run_checked("systemctl stop kinit-e2e-port.service")
        .await
        .unwrap();

    section("preflight fails naming swap when swap is on");
    let swap_file = state.lab_dir.join("e2e.swap");
    let swap = SwapGuard::enable(&swap_file).expect("enable a swap file");
    let node3 = &targets[2].host;
    let report = kinit_executor::preflight::check_host(node3, &targets[2].roles, &options).await;
    let verdict = report.get("swap").unwrap();
    assert_eq!(verdict.status, CheckStatus::Fail);
    assert!(
        verdict.message.contains("swap is on"),
        "{}",
        verdict.message
    );
    assert!(verdict.message.contains("e2e.swap"), "{}", verdict.message);
    drop(swap);
    let report = kinit_executor::preflight::check_host(node3, &targets[2].roles, &options).await;
    assert_eq!(report.get("swap").unwrap().status, CheckStatus::Pass);
}

async fn changed_host_key_is_refused_and_accept_new_records(state: &LabState) {
    let dir = tempfile::tempdir().unwrap();

    section("a known_hosts entry with another key is refused, naming file and line");
    let impostor = generate_ed25519("impostor").unwrap();
    let wrong = dir.path().join("wrong_known_hosts");
    std::fs::write(
        &wrong,
        format!(
            "# test file\n{} {}\n",
            state.hosts[0].address, impostor.public_key_only
        ),
    )
    .unwrap();
    let mut config = state.ssh_config(0, "root");
    config.known_hosts = wrong.clone();
    let err = SshHost::new(config.clone()).run("true").await.unwrap_err();
    match &err {
        ExecError::HostKeyChanged(problem) => {
            assert_eq!(problem.host, "node1");
            assert_eq!(problem.line, 2);
            assert_eq!(problem.known_hosts, wrong);
        }
        other => panic!("expected HostKeyChanged, got {other}"),
    }
    let text = err.to_string();
    assert!(text.contains("HOST KEY CHANGED"), "{text}");
    assert!(text.contains(&format!("{}:2", wrong.display())), "{text}");
    // AcceptNew does not overrule a changed key.
    config.host_key_policy = HostKeyPolicy::AcceptNew;
    let err = SshHost::new(config).run("true").await.unwrap_err();
    assert!(matches!(err, ExecError::HostKeyChanged(_)), "{err}");

    section("a host whose key really changed is refused with the lab's known_hosts");
    let root = SshHost::new(state.ssh_config(0, "root"));
    root.run_checked(
        "rm -f /etc/ssh/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key.pub && \
         ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key && \
         systemctl restart ssh",
    )
    .await
    .unwrap();
    let new_pub = String::from_utf8(
        root.read_file("/etc/ssh/ssh_host_ed25519_key.pub")
            .await
            .unwrap(),
    )
    .unwrap();
    root.disconnect().await;
    let fresh = SshHost::new(state.ssh_config(0, "root"));
    let refused = async {
        // sshd restarts within a moment; retry while it is not listening yet.
        for _ in 0..50 {
            match fresh.run("true").await {
                Err(ExecError::Connect { .. }) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                other => return other,
            }
        }
        fresh.run("true").await
    };
    let err = refused.await.unwrap_err();
    match &err {
        ExecError::HostKeyChanged(problem) => {
            assert_eq!(problem.line, 1, "node1 is the first known_hosts line");
            assert_eq!(problem.known_hosts, state.known_hosts);
        }
        other => panic!("expected HostKeyChanged, got {other}"),
    }

    section("strict refuses an unknown host; accept-new records it, then strict accepts it");
    let empty = dir.path().join("first_contact_known_hosts");
    let mut config = state.ssh_config(0, "root");
    config.known_hosts = empty.clone();
    let err = SshHost::new(config.clone()).run("true").await.unwrap_err();
    assert!(matches!(err, ExecError::HostKeyUnknown(_)), "{err}");
    assert!(err.to_string().contains("--accept-new-host-keys"));
    config.host_key_policy = HostKeyPolicy::AcceptNew;
    SshHost::new(config.clone())
        .run_checked("true")
        .await
        .unwrap();
    let recorded = std::fs::read_to_string(&empty).unwrap();
    let new_key_fields: Vec<&str> = new_pub.split_whitespace().take(2).collect();
    assert_eq!(
        recorded.trim(),
        format!("{} {}", state.hosts[0].address, new_key_fields.join(" "))
    );
    config.host_key_policy = HostKeyPolicy::Strict;
    SshHost::new(config).run_checked("true").await.unwrap();

    section("insecure opt-out connects whatever the key");
    let mut config = state.ssh_config(0, "root");
    config.known_hosts = wrong;
    config.host_key_policy = HostKeyPolicy::InsecureIgnore;
    SshHost::new(config).run_checked("true").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_up_removes_what_it_created() {
    if !e2e_enabled("failed_up_removes_what_it_created") {
        return;
    }
    let _serial = LAB_LOCK.lock().await;
    // A directory where `up` must write its known_hosts file makes it fail after the hosts
    // are running: the worst moment to fail.
    let out = tempfile::tempdir().unwrap();
    std::fs::create_dir(out.path().join("known_hosts")).unwrap();
    let mut config = test_config("e2e-fail", 2);
    config.out_dir = Some(out.path().to_path_buf());
    let guard = LabGuard::new(&config.run_dir, &config.name);
    let err = kinit_lab::up(&config, &()).await.unwrap_err();
    match &err {
        LabError::UpFailed { leftovers, .. } => assert!(leftovers.is_empty(), "{err}"),
        other => panic!("expected UpFailed, got {other}"),
    }
    assert!(err.to_string().contains("known_hosts"), "{err}");
    assert!(!LabState::file(&config.run_dir, &config.name).exists());
    assert!(!config.root_dir.join("e2e-fail").exists());
    assert!(!std::path::Path::new("/sys/class/net")
        .join(&config.bridge)
        .exists());
    assert!(
        wait_until(Duration::from_secs(1), || {
            kinit_lab::system::mounts_under(&config.root_dir.join("e2e-fail")).is_empty()
        })
        .await
    );
    // Files it wrote into a directory it did not create are gone; the directory stays.
    let remaining: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(remaining, vec!["known_hosts".to_string()]);
    drop(guard);
}
