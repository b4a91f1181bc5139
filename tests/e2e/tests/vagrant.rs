//! The Vagrantfile: it validates, and the inventory it writes has the lab's format.
//!
//! These need `vagrant` (and the Ruby it ships with) from the machine's packages
//! (`apt-get install -y vagrant`); without them each test prints that it was skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

use kinit_inventory::Inventory;

fn vagrantfile() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../vagrant/Vagrantfile")
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A copy of the Vagrantfile in a temporary directory, so generated keys stay out of the tree.
fn scratch_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(vagrantfile(), dir.path().join("Vagrantfile")).unwrap();
    dir
}

#[test]
fn vagrantfile_validates() {
    if !have("vagrant") {
        println!(
            "SKIPPED vagrantfile_validates: vagrant is not installed (apt-get install -y vagrant)"
        );
        return;
    }
    let dir = scratch_copy();
    for nodes in ["1", "3"] {
        let out = Command::new("vagrant")
            .arg("validate")
            .current_dir(dir.path())
            .env("KINIT_NODES", nodes)
            .env("VAGRANT_DOTFILE_PATH", dir.path().join(".vagrant"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "vagrant validate with {nodes} node(s) failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let bad = Command::new("vagrant")
        .arg("validate")
        .current_dir(dir.path())
        .env("KINIT_NODES", "0")
        .env("VAGRANT_DOTFILE_PATH", dir.path().join(".vagrant"))
        .output()
        .unwrap();
    assert!(!bad.status.success(), "KINIT_NODES=0 must be rejected");
}

#[test]
fn vagrant_inventory_has_the_lab_format() {
    if !have("ruby") {
        kinit_e2e::skip_notice(
            "SKIPPED vagrant_inventory_has_the_lab_format: ruby is not installed (it comes with \
             vagrant)",
        );
        return;
    }
    let dir = scratch_copy();
    // Load the Vagrantfile's helpers with Vagrant itself stubbed out, and print what the
    // after-up trigger writes.
    let script = "module Vagrant; def self.configure(*); end; end\n\
                  load 'Vagrantfile'\n\
                  print inventory_yaml\n\
                  STDOUT.write \"\\0\"\n\
                  print known_hosts_text\n";
    let out = Command::new("ruby")
        .args(["-e", script])
        .current_dir(dir.path())
        .env("KINIT_NODES", "2")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (yaml, known_hosts) = text.split_once('\0').unwrap();

    // The Vagrant inventory is one every kinit command accepts, with the lab's topology.
    let vagrant = Inventory::from_str(yaml, "vagrant/inventory.yaml")
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let lab_hosts = vec![
        ("node1".to_string(), "10.88.0.11".to_string()),
        ("node2".to_string(), "10.88.0.12".to_string()),
    ];
    let lab = kinit_lab::inventory::lab_inventory("lab", &lab_hosts, Path::new("/k"));
    assert_eq!(vagrant.spec.hosts.len(), lab.spec.hosts.len());
    for (v, l) in vagrant.spec.hosts.iter().zip(&lab.spec.hosts) {
        assert_eq!((&v.name, &v.roles), (&l.name, &l.roles));
        assert_eq!(v.ssh.user, l.ssh.user);
    }
    assert_eq!(vagrant.spec.hosts[1].address, "192.168.56.12");
    assert_eq!(vagrant.api_endpoint().host, "192.168.56.11");
    let vagrant: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
    let key_path = vagrant["spec"]["hosts"][0]["ssh"]["keyPath"]
        .as_str()
        .unwrap();
    assert!(
        Path::new(key_path).is_file(),
        "the shared key exists: {key_path}"
    );

    // known_hosts lists each host's pre-generated key under its address and name.
    let lines: Vec<&str> = known_hosts.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(
        lines[0].starts_with("192.168.56.11,node1 ssh-ed25519 "),
        "{}",
        lines[0]
    );
    let pub_key = std::fs::read_to_string(dir.path().join(".kinit/host-keys/node1.pub")).unwrap();
    assert!(pub_key.contains(lines[0].split_whitespace().nth(2).unwrap()));
}
