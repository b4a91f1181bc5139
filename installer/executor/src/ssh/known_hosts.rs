//! Host-key verification against OpenSSH `known_hosts` files.
//!
//! Entries are parsed with `ssh-key`'s known_hosts parser. Matching is done here because
//! russh's helper reports wrong line numbers after comment lines, aborts on one bad entry and
//! ignores wildcards, negations and markers; a changed-key error must point at the right line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use base64::Engine;
use hmac::{KeyInit, Mac};
use russh::keys::ssh_key::known_hosts::{Entry, HostPatterns, Marker};
use russh::keys::{HashAlg, PublicKey};

use crate::error::{ExecError, HostKeyProblem};

/// What to do with a server key that known_hosts does not vouch for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyPolicy {
    /// Only connect to hosts whose key is recorded (the default).
    #[default]
    Strict,
    /// Record the key of a host seen for the first time; still refuse a changed key.
    AcceptNew,
    /// Accept any key without checking. Insecure: for throwaway test machines only.
    InsecureIgnore,
}

/// What known_hosts says about a (host, key) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KnownHostVerdict {
    /// A recorded key for this host equals the offered key.
    Match { line: usize },
    /// The host has no recorded key.
    Unknown,
    /// The host has recorded keys, none equal to the offered one; `line` is the first of them.
    Changed { line: usize },
    /// The offered key is marked `@revoked`.
    Revoked { line: usize },
}

/// A known_hosts line that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// 1-based line number.
    pub line: usize,
}

/// The name a host is recorded under: `host` for port 22, else `[host]:port` (OpenSSH rules).
pub fn lookup_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// Checks `key` for `host:port` against the text of a known_hosts file.
///
/// Unparseable lines are skipped (OpenSSH does the same) and returned so callers can warn.
pub fn check_known_hosts(
    text: &str,
    host: &str,
    port: u16,
    key: &PublicKey,
) -> (KnownHostVerdict, Vec<BadLine>) {
    let lookup = lookup_name(host, port);
    let mut bad = Vec::new();
    let mut first_recorded: Option<usize> = None;
    let mut matched: Option<usize> = None;
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        // The parser splits on single spaces; OpenSSH accepts any run of blanks.
        let normalized = trimmed.split_whitespace().collect::<Vec<_>>().join(" ");
        let entry = match Entry::from_str(&normalized) {
            Ok(entry) => entry,
            Err(_) => {
                bad.push(BadLine { line: line_no });
                continue;
            }
        };
        if !host_matches(entry.host_patterns(), &lookup) {
            continue;
        }
        let same_key = entry.public_key().key_data() == key.key_data();
        match entry.marker() {
            Some(Marker::Revoked) => {
                if same_key {
                    return (KnownHostVerdict::Revoked { line: line_no }, bad);
                }
            }
            // Host certificates are not used by kinit; CA lines say nothing about plain keys.
            Some(Marker::CertAuthority) => {}
            None => {
                if same_key {
                    matched.get_or_insert(line_no);
                } else {
                    first_recorded.get_or_insert(line_no);
                }
            }
        }
    }
    let verdict = match (matched, first_recorded) {
        (Some(line), _) => KnownHostVerdict::Match { line },
        (None, Some(line)) => KnownHostVerdict::Changed { line },
        (None, None) => KnownHostVerdict::Unknown,
    };
    (verdict, bad)
}

/// True when `lookup` (`host` or `[host]:port`) matches an entry's host field.
fn host_matches(patterns: &HostPatterns, lookup: &str) -> bool {
    match patterns {
        HostPatterns::HashedName { salt, hash } => {
            let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(salt) else {
                return false;
            };
            mac.update(lookup.as_bytes());
            mac.verify_slice(hash).is_ok()
        }
        HostPatterns::Patterns(list) => {
            let mut positive = false;
            for pattern in list {
                if let Some(negated) = pattern.strip_prefix('!') {
                    if pattern_matches(negated, lookup) {
                        return false;
                    }
                } else if pattern_matches(pattern, lookup) {
                    positive = true;
                }
            }
            positive
        }
    }
}

/// OpenSSH host patterns: `*` and `?` wildcards, case-insensitive.
fn pattern_matches(pattern: &str, lookup: &str) -> bool {
    wildmatch::WildMatch::new(&pattern.to_ascii_lowercase()).matches(&lookup.to_ascii_lowercase())
}

/// Serialises appends to known_hosts files made by this process (parallel first contacts).
static KNOWN_HOSTS_WRITE: Mutex<()> = Mutex::new(());

/// Adds `host:port key` to a known_hosts file, atomically (copy + append + rename).
///
/// The entry is hashed like OpenSSH's `HashKnownHosts yes` when `hash` is set.
pub fn record_known_host(
    path: &Path,
    host: &str,
    port: u16,
    key: &PublicKey,
    hash: bool,
) -> std::io::Result<()> {
    let _guard = KNOWN_HOSTS_WRITE.lock().unwrap_or_else(|e| e.into_inner());
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    // Another task may have recorded it while we waited for the lock.
    if let (KnownHostVerdict::Match { .. }, _) = check_known_hosts(&existing, host, port, key) {
        return Ok(());
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode_0700()
            .create(dir)?;
    }
    let mut key = key.clone();
    key.set_comment("");
    let key_text = key
        .to_openssh()
        .map_err(|e| std::io::Error::other(format!("cannot encode the host key: {e}")))?;
    let name = lookup_name(host, port);
    let host_field = if hash { hash_host_name(&name) } else { name };
    let mut contents = existing;
    if !contents.is_empty() && !contents.ends_with('\n') {
        contents.push('\n');
    }
    contents.push_str(&format!("{host_field} {}\n", key_text.trim()));
    let mut tmp = tempfile::Builder::new()
        .prefix(".known_hosts.kinit-tmp-")
        .tempfile_in(dir)?;
    tmp.write_all(contents.as_bytes())?;
    tmp.as_file().sync_all()?;
    let mode = std::fs::metadata(path)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap_or(0o644);
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(mode),
    )?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

trait DirBuilderPrivate {
    fn mode_0700(&mut self) -> &mut Self;
}

impl DirBuilderPrivate for std::fs::DirBuilder {
    fn mode_0700(&mut self) -> &mut Self {
        std::os::unix::fs::DirBuilderExt::mode(self, 0o700)
    }
}

/// `|1|salt|hash` form of a host name (HMAC-SHA1 keyed by a random salt, as OpenSSH does).
pub fn hash_host_name(name: &str) -> String {
    let salt: [u8; 20] = rand::random();
    let mut mac =
        hmac::Hmac::<sha1::Sha1>::new_from_slice(&salt).expect("HMAC takes keys of any length");
    mac.update(name.as_bytes());
    let hash = mac.finalize().into_bytes();
    let b64 = base64::engine::general_purpose::STANDARD;
    format!("|1|{}|{}", b64.encode(salt), b64.encode(hash))
}

/// Where and how a connection verifies the server's key.
#[derive(Debug, Clone)]
pub struct HostKeyCheck {
    /// Host name for messages.
    pub host: String,
    /// Address the key is recorded under (what was dialled).
    pub address: String,
    /// SSH port.
    pub port: u16,
    /// The known_hosts file.
    pub known_hosts: PathBuf,
    /// What to do with unknown keys.
    pub policy: HostKeyPolicy,
}

impl HostKeyCheck {
    /// Accepts or refuses `key` according to the policy and the known_hosts file.
    pub fn verify(&self, key: &PublicKey) -> Result<(), ExecError> {
        if self.policy == HostKeyPolicy::InsecureIgnore {
            tracing::warn!(host = %self.host, "host key checking is disabled");
            return Ok(());
        }
        let text = match std::fs::read_to_string(&self.known_hosts) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(ExecError::KnownHosts {
                    host: self.host.clone(),
                    path: self.known_hosts.clone(),
                    reason: format!("cannot read it: {e}"),
                })
            }
        };
        let (verdict, bad) = check_known_hosts(&text, &self.address, self.port, key);
        for line in bad {
            tracing::warn!(
                file = %self.known_hosts.display(),
                line = line.line,
                "ignoring a known_hosts line that does not parse"
            );
        }
        let lookup = lookup_name(&self.address, self.port);
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let algorithm = key.algorithm().to_string();
        let problem = |line: usize| {
            Box::new(HostKeyProblem {
                host: self.host.clone(),
                lookup: lookup.clone(),
                algorithm: algorithm.clone(),
                fingerprint: fingerprint.clone(),
                known_hosts: self.known_hosts.clone(),
                line,
            })
        };
        match verdict {
            KnownHostVerdict::Match { .. } => Ok(()),
            KnownHostVerdict::Changed { line } => Err(ExecError::HostKeyChanged(problem(line))),
            KnownHostVerdict::Revoked { line } => Err(ExecError::HostKeyRevoked(problem(line))),
            KnownHostVerdict::Unknown => match self.policy {
                HostKeyPolicy::AcceptNew => {
                    record_known_host(&self.known_hosts, &self.address, self.port, key, false)
                        .map_err(|e| ExecError::KnownHosts {
                            host: self.host.clone(),
                            path: self.known_hosts.clone(),
                            reason: format!("cannot record the new host key: {e}"),
                        })?;
                    tracing::info!(host = %self.host, %fingerprint, "recorded new host key");
                    Ok(())
                }
                _ => Err(ExecError::HostKeyUnknown(problem(0))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::ssh_key::private::Ed25519Keypair;
    use russh::keys::PrivateKey;

    fn key(seed: u8) -> PublicKey {
        PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]))
            .public_key()
            .clone()
    }

    fn line(host_field: &str, key: &PublicKey) -> String {
        format!("{host_field} {}\n", key.to_openssh().unwrap())
    }

    #[test]
    fn plain_entry_matches_and_comment_lines_count() {
        let k = key(1);
        let text = format!(
            "# a comment\n\n{}{}",
            line("other.example", &key(2)),
            line("node1,10.0.0.1", &k)
        );
        assert_eq!(
            check_known_hosts(&text, "10.0.0.1", 22, &k).0,
            KnownHostVerdict::Match { line: 4 }
        );
        assert_eq!(
            check_known_hosts(&text, "node1", 22, &k).0,
            KnownHostVerdict::Match { line: 4 }
        );
        assert_eq!(
            check_known_hosts(&text, "node2", 22, &k).0,
            KnownHostVerdict::Unknown
        );
    }

    #[test]
    fn changed_key_reports_the_recorded_line() {
        let text = format!("# header\n{}", line("10.0.0.1", &key(1)));
        assert_eq!(
            check_known_hosts(&text, "10.0.0.1", 22, &key(9)).0,
            KnownHostVerdict::Changed { line: 2 }
        );
    }

    #[test]
    fn bracketed_port_form() {
        let k = key(3);
        let text = line("[10.0.0.5]:2222", &k);
        assert_eq!(
            check_known_hosts(&text, "10.0.0.5", 2222, &k).0,
            KnownHostVerdict::Match { line: 1 }
        );
        // Port 22 looks up the bare name, which this entry does not list.
        assert_eq!(
            check_known_hosts(&text, "10.0.0.5", 22, &k).0,
            KnownHostVerdict::Unknown
        );
        assert_eq!(
            check_known_hosts(&text, "10.0.0.5", 2200, &k).0,
            KnownHostVerdict::Unknown
        );
    }

    #[test]
    fn hashed_entries_match_the_salted_name() {
        let k = key(4);
        let text = format!(
            "{}{}",
            line(&hash_host_name("10.0.0.7"), &k),
            line(&hash_host_name("[10.0.0.8]:2200"), &k)
        );
        assert_eq!(
            check_known_hosts(&text, "10.0.0.7", 22, &k).0,
            KnownHostVerdict::Match { line: 1 }
        );
        assert_eq!(
            check_known_hosts(&text, "10.0.0.8", 2200, &k).0,
            KnownHostVerdict::Match { line: 2 }
        );
        assert_eq!(
            check_known_hosts(&text, "10.0.0.9", 22, &k).0,
            KnownHostVerdict::Unknown
        );
        assert_eq!(
            check_known_hosts(&text, "10.0.0.7", 22, &key(5)).0,
            KnownHostVerdict::Changed { line: 1 }
        );
    }

    #[test]
    fn hashed_entry_written_by_openssh_matches() {
        // `|1|` entry for "localhost" from an OpenSSH known_hosts file (salt, HMAC-SHA1 of name).
        let k = key(6);
        let salt = [7u8; 20];
        let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(&salt).unwrap();
        mac.update(b"localhost");
        let hash = mac.finalize().into_bytes();
        let b64 = base64::engine::general_purpose::STANDARD;
        let field = format!("|1|{}|{}", b64.encode(salt), b64.encode(hash));
        let text = line(&field, &k);
        assert_eq!(
            check_known_hosts(&text, "localhost", 22, &k).0,
            KnownHostVerdict::Match { line: 1 }
        );
    }

    #[test]
    fn wildcards_and_negation() {
        let k = key(7);
        let text = format!("10.88.0.*,!10.88.0.13\t  {}\n", k.to_openssh().unwrap());
        assert!(matches!(
            check_known_hosts(&text, "10.88.0.12", 22, &k).0,
            KnownHostVerdict::Match { .. }
        ));
        assert_eq!(
            check_known_hosts(&text, "10.88.0.13", 22, &k).0,
            KnownHostVerdict::Unknown
        );
    }

    #[test]
    fn revoked_key_is_reported() {
        let k = key(8);
        let text = format!("{}@revoked * {}\n", line("h", &k), k.to_openssh().unwrap());
        assert_eq!(
            check_known_hosts(&text, "h", 22, &k).0,
            KnownHostVerdict::Revoked { line: 2 }
        );
    }

    #[test]
    fn bad_lines_are_skipped_and_reported() {
        let k = key(9);
        let text = format!("garbage line here\n{}", line("h", &k));
        let (verdict, bad) = check_known_hosts(&text, "h", 22, &k);
        assert_eq!(verdict, KnownHostVerdict::Match { line: 2 });
        assert_eq!(bad, vec![BadLine { line: 1 }]);
    }

    #[test]
    fn policies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ssh/known_hosts");
        let check = |policy| HostKeyCheck {
            host: "node1".into(),
            address: "10.88.0.11".into(),
            port: 22,
            known_hosts: path.clone(),
            policy,
        };
        let k = key(10);
        // Strict refuses an unknown host and writes nothing.
        let err = check(HostKeyPolicy::Strict).verify(&k).unwrap_err();
        assert!(matches!(err, ExecError::HostKeyUnknown(_)), "{err}");
        assert!(!path.exists());
        // AcceptNew records it; Strict then accepts it.
        check(HostKeyPolicy::AcceptNew).verify(&k).unwrap();
        check(HostKeyPolicy::Strict).verify(&k).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(text.starts_with("10.88.0.11 ssh-ed25519 "));
        // Recording twice does not duplicate.
        record_known_host(&path, "10.88.0.11", 22, &k, false).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
        // A changed key is refused even with AcceptNew, naming file and line.
        let err = check(HostKeyPolicy::AcceptNew)
            .verify(&key(11))
            .unwrap_err();
        match &err {
            ExecError::HostKeyChanged(problem) => {
                assert_eq!(problem.line, 1);
                assert_eq!(problem.known_hosts, path);
            }
            other => panic!("unexpected {other}"),
        }
        // InsecureIgnore accepts anything.
        check(HostKeyPolicy::InsecureIgnore)
            .verify(&key(12))
            .unwrap();
    }

    #[test]
    fn recorded_hashed_entry_is_found_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        std::fs::write(&path, "# keep me\n").unwrap();
        let k = key(13);
        record_known_host(&path, "10.0.0.3", 2022, &k, true).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# keep me\n|1|"));
        assert_eq!(
            check_known_hosts(&text, "10.0.0.3", 2022, &k).0,
            KnownHostVerdict::Match { line: 2 }
        );
    }
}
