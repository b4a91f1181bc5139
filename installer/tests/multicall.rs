//! The kinit binary answers to other names: `hostname` (linked in kinit's images).

use std::process::Command;

#[test]
fn invoked_as_hostname_prints_the_uts_name() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("hostname");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kinit"), &link).unwrap();
    let out = Command::new(&link).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
}
