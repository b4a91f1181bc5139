//! End-to-end: the installer's phases on a real lab host over SSH — the kinit binary, every
//! desired file, containerd with kinit's configuration and kinit's own images imported into
//! containerd — and a second observation that finds those phases converged.

use std::os::unix::fs::PermissionsExt;
use std::time::Instant;

use kinit::converge::{converge, run_id, ConvergeOptions};
use kinit::desired::ClusterState;
use kinit::phases::{Binary, HostTarget, PhaseName};
use kinit::reset::reset;
use kinit_e2e::{e2e_enabled, kinit_bin, stripped, test_config, LabGuard};
use kinit_executor::{Host, SshHost};
use kinit_inventory::Inventory;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn phases_install_files_containerd_and_images_then_converge() {
    if !e2e_enabled("phases_install_files_containerd_and_images_then_converge") {
        return;
    }
    let binary = Binary::load(&kinit_bin().expect("KINIT_BIN names the kinit binary under test"))
        .expect("read the kinit binary");
    let config = test_config("converge", 1);
    let state = kinit_lab::up(&config, &()).await.expect("lab up");
    let _guard = LabGuard::new(&config.run_dir, &config.name);

    let inventory = Inventory::from_path(&state.inventory).expect("the lab inventory validates");
    let cluster_dir = tempfile::tempdir().unwrap();
    let (cluster, _) = ClusterState::prepare(&inventory, cluster_dir.path(), None).unwrap();
    let node = &inventory.spec.hosts[0];
    let files = cluster.host_files(&inventory, node).unwrap();
    let target = HostTarget {
        binary,
        files: files.clone(),
        admin_box: None,
    };
    let hosts = vec![(SshHost::new(state.ssh_config(0, "root")), target)];
    let options = ConvergeOptions {
        concurrency: 4,
        dry_run: false,
        progress: false,
    };

    println!("--- dry run plans every phase and changes nothing");
    let planned = converge(
        &hosts,
        ConvergeOptions {
            dry_run: true,
            ..options
        },
        "dry",
    )
    .await;
    let plan = planned[0].plan.as_ref().expect("observed");
    let names: Vec<PhaseName> = plan.phases.iter().map(|p| p.phase).collect();
    for phase in [
        PhaseName::Binary,
        PhaseName::Files,
        PhaseName::CniPlugins,
        PhaseName::Containerd,
        PhaseName::Images,
    ] {
        assert!(names.contains(&phase), "{phase:?} in {names:?}");
    }
    assert!(planned[0].ran.is_empty());
    let host = &hosts[0].0;
    assert!(!host.exists("/usr/local/bin/kinit").await.unwrap());
    let containerd_config_before = host.read_file("/etc/containerd/config.toml").await.unwrap();

    println!("--- first run");
    let started = Instant::now();
    let first = converge(&hosts, options, &run_id()).await;
    println!("first run took {:.1} s", started.elapsed().as_secs_f64());
    assert!(first[0].ok(), "{:?}", first[0].error);

    let version = host
        .run_checked("/usr/local/bin/kinit --version")
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("kinit "));
    for file in &files {
        let path = file.path.display().to_string();
        let remote = host.read_file(&path).await.unwrap();
        assert_eq!(remote, file.contents, "{path}");
    }
    let mode = host
        .run_checked("stat -c %a /etc/kubernetes/pki/ca.crt /etc/kubernetes/kubelet.conf")
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&mode.stdout), "644\n600\n");
    assert!(host
        .run("systemctl is-active --quiet containerd")
        .await
        .unwrap()
        .success());
    // containerd finds the CNI plugin by its type name; the link runs kinit's plugin.
    let version = host
        .run_checked("CNI_COMMAND=VERSION /opt/cni/bin/kinit-cni </dev/null")
        .await
        .unwrap();
    let version: serde_json::Value = serde_json::from_slice(&version.stdout).unwrap();
    assert!(version["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v == "1.0.0"));
    assert!(host.exists("/opt/cni/bin/loopback").await.unwrap());
    let images = host
        .run_checked("ctr -n k8s.io images ls -q")
        .await
        .unwrap();
    let images = String::from_utf8_lossy(&images.stdout);
    for image in kinit_images::KinitImage::ALL {
        let reference = image.reference(&kinit_images::KinitImage::default_tag());
        assert!(
            images.lines().any(|l| l == reference),
            "{reference} in {images}"
        );
    }

    println!("--- second observation: binary, files, containerd and images are converged");
    let started = Instant::now();
    let second = converge(
        &hosts,
        ConvergeOptions {
            dry_run: true,
            ..options
        },
        "dry",
    )
    .await;
    println!("observing took {:.2} s", started.elapsed().as_secs_f64());
    let plan = second[0].plan.as_ref().expect("observed");
    let again: Vec<PhaseName> = plan.phases.iter().map(|p| p.phase).collect();
    for phase in [
        PhaseName::Binary,
        PhaseName::Files,
        PhaseName::CniPlugins,
        PhaseName::Containerd,
        PhaseName::Images,
    ] {
        assert!(!again.contains(&phase), "{phase:?} planned again: {plan:?}");
    }

    println!("--- a file changed on the host is restored and the old copy is kept");
    host.run_checked("echo tampered > /etc/kubernetes/pki/ca.crt")
        .await
        .unwrap();
    let third = converge(&hosts, options, "restore-test").await;
    assert!(third[0].ok(), "{:?}", third[0].error);
    assert!(third[0].ran.contains(&PhaseName::Files));
    let restored = host.read_file("/etc/kubernetes/pki/ca.crt").await.unwrap();
    assert_ne!(restored, b"tampered\n");
    let backup = host
        .read_file("/var/lib/kinit/backup/restore-test/etc/kubernetes/pki/ca.crt")
        .await
        .unwrap();
    assert_eq!(backup, b"tampered\n");
    let key_mode = std::fs::metadata(&state.ssh_key)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);

    println!("--- kinit reset --dry-run lists the work and changes nothing");
    let kinit = kinit_bin().unwrap();
    let inventory_arg = state.inventory.to_str().unwrap().to_string();
    let known_hosts_arg = state.known_hosts.to_str().unwrap().to_string();
    let reset_cli = |extra: &[&str]| {
        let mut args = vec![
            "reset",
            "-i",
            &inventory_arg,
            "--known-hosts",
            &known_hosts_arg,
            "-o",
            "json",
        ];
        args.extend_from_slice(extra);
        std::process::Command::new(&kinit)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = reset_cli(&["--dry-run"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let actions: Vec<String> = listed[0]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed[0]["dry_run"], true);
    for expected in [
        "rm -f /usr/local/bin/kinit",
        "rm -f /etc/kubernetes/pki/ca.key",
        "rm -rf /var/lib/kinit",
        "cp -p /var/lib/kinit/originals/etc/containerd/config.toml /etc/containerd/config.toml",
    ] {
        assert!(
            actions.iter().any(|a| a == expected),
            "{expected} in {actions:?}"
        );
    }
    assert!(actions
        .iter()
        .any(|a| a.starts_with("timeout 60 ctr -n k8s.io images rm kinit.local/")));
    assert!(host.exists("/usr/local/bin/kinit").await.unwrap());

    println!("--- without --yes and without a terminal, reset refuses and changes nothing");
    let out = reset_cli(&[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    assert!(host.exists("/usr/local/bin/kinit").await.unwrap());

    println!("--- kinit reset --yes leaves nothing of kinit and restores what it replaced");
    let out = reset_cli(&["--yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("{} actions", done[0]["actions"].as_array().unwrap().len());
    for path in [
        "/usr/local/bin/kinit",
        "/etc/kubernetes",
        "/var/lib/kinit",
        "/etc/cni/net.d/10-kinit.conflist",
        "/etc/systemd/system/kinit-agent.service",
        "/opt/cni/bin/kinit-cni",
        "/opt/cni/bin/loopback",
    ] {
        assert!(!host.exists(path).await.unwrap(), "{path} is left");
    }
    let config_now = host.read_file("/etc/containerd/config.toml").await.unwrap();
    assert_eq!(
        config_now, containerd_config_before,
        "containerd's own config is back"
    );
    assert!(host
        .run("systemctl is-active --quiet containerd")
        .await
        .unwrap()
        .success());
    let images = host
        .run_checked("ctr -n k8s.io images ls -q")
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&images.stdout).contains("kinit.local/"));
    let again = reset(host, true).await.unwrap();
    assert!(
        again.actions.iter().all(|a| a == "systemctl daemon-reload"),
        "a reset host has nothing left to reset: {:?}",
        again.actions
    );

    println!("--- kinit init --host: a one-host control plane over SSH and a join command");
    let address = state.hosts[0].address.clone();
    let key = state.ssh_key.to_str().unwrap().to_string();
    let init_state = tempfile::tempdir().unwrap();
    let init_state_arg = init_state.path().to_str().unwrap().to_string();
    // `kinit init --host` on the lab host (plus `extra` flags); the report as JSON.
    let init_cli = |extra: &[&str]| -> serde_json::Value {
        let out = std::process::Command::new(&kinit)
            .arg("init")
            .args(extra)
            .args([
                "--host",
                &address,
                "--ssh-key",
                &key,
                "--known-hosts",
                &known_hosts_arg,
                "--node-name",
                &node.name,
                "--state-dir",
                &init_state_arg,
                "-o",
                "json",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let started = Instant::now();
    let report = init_cli(&[]);
    println!("init --host took {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(report["hosts"][0]["node"], "ready", "{report:#}");
    let join = report["join_command"].as_str().unwrap();
    assert!(
        join.starts_with(&format!("kinit join {address}:6443 --token ")),
        "{join}"
    );
    // Run again: nothing changes and the same join command comes back.
    let rerun = init_cli(&[]);
    assert_eq!(rerun["changed"], false, "{rerun:#}");
    assert_eq!(rerun["join_command"], report["join_command"]);

    println!("--- a re-run with another kinit build moves the control plane onto it");
    // Another build: the same program with other bytes (so another digest and image).
    let next = stripped(&kinit, init_state.path());
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&next)
            .unwrap();
        f.write_all(b"\0another kinit build").unwrap();
    }
    let next_digest = Binary::load(&next).unwrap().sha256;
    let started = Instant::now();
    let upgraded = init_cli(&["--binary", next.to_str().unwrap()]);
    let phases = upgraded["hosts"][0]["phases"].to_string();
    assert!(
        phases.contains("install kinit binary") && phases.contains("import images"),
        "{upgraded:#}"
    );
    assert_eq!(upgraded["hosts"][0]["node"], "ready", "{upgraded:#}");
    // Every control-plane process runs the new build (read from /proc/PID/exe).
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = host
            .run_checked(
                "for p in $(pgrep -f '^kinit (apiserver|controller-manager|scheduler) '); do sha256sum /proc/$p/exe; done",
            )
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let digests: Vec<&str> = text.split_whitespace().step_by(2).collect();
        if digests.len() == 3 && digests.iter().all(|d| *d == next_digest) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "control plane not on the new build {next_digest}:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    println!(
        "init --host with a new build: control plane on it after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let admin = init_state.path().join("admin.conf");
    let out = std::process::Command::new(&kinit)
        .args([
            "reset",
            "--host",
            &address,
            "--ssh-key",
            &key,
            "--known-hosts",
            &known_hosts_arg,
            "--node-name",
            &node.name,
            "--kubeconfig",
            admin.to_str().unwrap(),
            "--yes",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("deleted Node {}", node.name)),
        "{text}"
    );

    println!("--- kinit init --local, run on the host itself");
    host.upload(
        kinit_executor::UploadSource::File(&kinit),
        "/root/kinit",
        &kinit_executor::FileAttrs::mode(0o755),
    )
    .await
    .unwrap();
    let local = host
        .run_checked(&format!(
            "/root/kinit init --local --node-ip {address} --node-name {} --schedule-workloads -o json",
            node.name
        ))
        .await
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&local.stdout).unwrap();
    assert_eq!(report["hosts"][0]["node"], "ready", "{report:#}");
    assert!(report["join_command"].as_str().is_some());
    host.run_checked(&format!(
        "/root/kinit reset --local --yes --node-name {} --kubeconfig /root/.kinit/clusters/kinit/admin.conf && rm -rf /root/kinit /root/.kinit",
        node.name
    ))
    .await
    .unwrap();
    let again = reset(host, true).await.unwrap();
    assert!(
        again.actions.iter().all(|a| a == "systemctl daemon-reload"),
        "nothing left after init --local and reset: {:?}",
        again.actions
    );
}
