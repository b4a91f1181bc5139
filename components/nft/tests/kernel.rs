//! The runner against the real `nft` and kernel, inside a private network namespace (the
//! machine's own ruleset is never touched): what real nft prints for a missing table and for
//! a bad script line is what the runner recognises.
//!
//! Needs root, iproute2 and nftables. Without them the test prints a SKIPPED line, unless
//! `KINIT_E2E=1`, where it fails.

use std::process::{Command, Stdio};

use kinit_nft::{objects, NftCommand, NftError};

fn quiet(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn missing_prerequisite() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("it creates a network namespace and must run as root".into());
    }
    if !quiet(&["ip", "-V"]) {
        return Some("`ip` (iproute2) is not installed".into());
    }
    if !NftCommand::default().available() {
        return Some("`nft` (nftables) is not installed".into());
    }
    None
}

/// A private network namespace, deleted on drop (also when the test panics).
struct Netns(String);

impl Netns {
    fn new(name: String) -> Netns {
        quiet(&["ip", "netns", "del", &name]);
        assert!(
            quiet(&["ip", "netns", "add", &name]),
            "cannot create netns {name}"
        );
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        quiet(&["ip", "netns", "del", &self.0]);
    }
}

#[test]
fn real_nft_missing_tables_and_bad_lines_are_recognised() {
    let test = "real_nft_missing_tables_and_bad_lines_are_recognised";
    if let Some(why) = missing_prerequisite() {
        if std::env::var("KINIT_E2E").as_deref() == Ok("1") {
            panic!("{test}: {why} (KINIT_E2E=1 requires it)");
        }
        eprintln!("SKIPPED {test}: {why}");
        return;
    }
    let ns = Netns::new(format!("knft-{}-1", std::process::id()));
    let nft = NftCommand::in_netns(&ns.0);
    nft.probe().unwrap();

    // Absent: listing says so instead of failing.
    assert_eq!(nft.list_table("inet", "knft").unwrap(), None);
    assert!(!nft.table_exists("inet", "knft").unwrap());
    let e = nft
        .run(&["list", "chain", "inet", "knft", "c"])
        .unwrap_err();
    assert!(e.is_missing(), "{e}");

    // A script is one transaction.
    nft.apply("add table inet knft\nadd chain inet knft c\nadd rule inet knft c counter accept\n")
        .unwrap();
    assert!(nft.table_exists("inet", "knft").unwrap());
    let listing = nft
        .list_table("inet", "knft")
        .unwrap()
        .expect("table exists");
    assert_eq!(objects(&listing, "rule").count(), 1);

    // A bad line: nothing of the script is applied, and the error points at the line.
    let bad = "add chain inet knft d\nadd rule inet knft d tcp dport 80 accept\nadd rule inet knft d frobnicate\n";
    match nft.apply(bad) {
        Err(NftError::Failed {
            stderr,
            offending_line,
            ..
        }) => {
            assert!(stderr.contains("Error"), "{stderr}");
            assert_eq!(
                offending_line.as_deref(),
                Some("line 3: add rule inet knft d frobnicate"),
                "{stderr}"
            );
        }
        other => panic!("a bad script must be refused, got {other:?}"),
    }
    let e = nft
        .run(&["list", "chain", "inet", "knft", "d"])
        .unwrap_err();
    assert!(e.is_missing(), "the refused transaction left chain d: {e}");

    nft.apply("delete table inet knft\n").unwrap();
    assert_eq!(nft.list_table("inet", "knft").unwrap(), None);
}
