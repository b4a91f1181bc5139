//! On-disk layout of the embedded store and conversions between rows and public types.
//!
//! Three redb tables:
//! - `kv`: key -> (create_revision, mod_revision, value) — the latest value of every live key.
//! - `log`: revision -> (key, op, value, prev, unix_millis) — one row per write, the history that
//!   drives watches and list-at-revision. `prev` is the key's (create_revision, mod_revision,
//!   value) before the write, so events carry their previous value even after the row that
//!   wrote it was compacted away.
//! - `meta`: name -> i64 — current revision, compacted revision and the schema version.

use std::path::Path;

use redb::TableDefinition;

use crate::{KeyValue, StoreError, WatchEvent};

/// Latest value of every live key: (create_revision, mod_revision, value).
pub(crate) const KV: TableDefinition<&str, (i64, i64, &[u8])> = TableDefinition::new("kv");

/// A key's state before a write: (create_revision, mod_revision, value).
pub(crate) type PrevRow<'a> = Option<(i64, i64, &'a [u8])>;

/// Revision log: revision -> (key, op, value, prev, unix_millis).
pub(crate) const LOG: TableDefinition<i64, (&str, u8, &[u8], PrevRow<'static>, u64)> =
    TableDefinition::new("log");

/// Store-wide counters.
pub(crate) const META: TableDefinition<&str, i64> = TableDefinition::new("meta");

/// `meta` row: the revision of the latest write (0 for an empty store).
pub(crate) const META_CURRENT: &str = "current_revision";
/// `meta` row: revisions below this one were discarded from the log.
pub(crate) const META_COMPACTED: &str = "compacted_revision";
/// `meta` row: layout version, so a newer layout is refused instead of misread.
pub(crate) const META_SCHEMA: &str = "schema_version";
/// The layout this code reads and writes.
pub(crate) const SCHEMA_VERSION: i64 = 1;

/// `log` op: the key was created or updated.
pub(crate) const OP_PUT: u8 = 1;
/// `log` op: the key was deleted.
pub(crate) const OP_DELETE: u8 = 2;

/// Turns a redb failure into a [`StoreError::Backend`] naming the file and a next step.
pub(crate) fn storage_error(path: &Path, doing: &str, err: impl Into<redb::Error>) -> StoreError {
    let err: redb::Error = err.into();
    let hint = match err {
        redb::Error::DatabaseAlreadyOpen => {
            "another process (or store handle) has this file open; stop it first"
        }
        redb::Error::Corrupted(_) => "restore the file from a backup (kinit backup/restore)",
        redb::Error::Io(_) => "check free disk space and permissions",
        _ => "check the file and the logs",
    };
    StoreError::Backend(format!(
        "embedded store {}: {doing} failed: {err}; {hint}",
        path.display()
    ))
}

/// `.or_backend(path, "what")?` for redb results.
pub(crate) trait OrBackend<T> {
    fn or_backend(self, path: &Path, doing: &str) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> OrBackend<T> for Result<T, E> {
    fn or_backend(self, path: &Path, doing: &str) -> Result<T, StoreError> {
        self.map_err(|e| storage_error(path, doing, e))
    }
}

/// Builds the public [`KeyValue`] from a `kv` row.
pub(crate) fn kv_from_row(key: &str, row: (i64, i64, &[u8])) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: row.2.to_vec(),
        create_revision: row.0,
        mod_revision: row.1,
    }
}

/// Builds the watch event for the `log` row written at `revision`.
pub(crate) fn event_from_log(
    path: &Path,
    revision: i64,
    row: (&str, u8, &[u8], PrevRow<'_>, u64),
) -> Result<WatchEvent, StoreError> {
    let (key, op, value, prev, _) = row;
    let prev = prev.map(|p| kv_from_row(key, p));
    match op {
        OP_PUT => Ok(WatchEvent::Put {
            kv: KeyValue {
                key: key.to_owned(),
                value: value.to_vec(),
                create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
                mod_revision: revision,
            },
            prev,
        }),
        OP_DELETE => match prev {
            Some(prev) => Ok(WatchEvent::Delete { prev, revision }),
            None => Err(corrupt_log(
                path,
                revision,
                "delete without a previous value",
            )),
        },
        other => Err(corrupt_log(path, revision, &format!("unknown op {other}"))),
    }
}

/// The state of a key just before the `log` row at `revision` was written.
pub(crate) fn prev_from_log(key: &str, prev: PrevRow<'_>) -> Option<KeyValue> {
    prev.map(|p| kv_from_row(key, p))
}

fn corrupt_log(path: &Path, revision: i64, what: &str) -> StoreError {
    StoreError::Backend(format!(
        "embedded store {}: log entry at revision {revision} is invalid ({what}); \
         restore the file from a backup",
        path.display()
    ))
}

/// Whether a watch or list under `prefix` covers `key` (byte-wise prefix match).
pub(crate) fn key_matches(prefix: &str, key: &str) -> bool {
    key.as_bytes().starts_with(prefix.as_bytes())
}

/// The key a change event is about.
pub(crate) fn event_key(event: &WatchEvent) -> Option<&str> {
    match event {
        WatchEvent::Put { kv, .. } => Some(&kv.key),
        WatchEvent::Delete { prev, .. } => Some(&prev.key),
        WatchEvent::Progress { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_event_keeps_create_revision_of_prev() {
        let path = Path::new("/x");
        let ev = event_from_log(path, 9, ("/a", OP_PUT, b"new", Some((3, 5, b"old")), 0)).unwrap();
        assert_eq!(
            ev,
            WatchEvent::Put {
                kv: KeyValue {
                    key: "/a".into(),
                    value: b"new".to_vec(),
                    create_revision: 3,
                    mod_revision: 9
                },
                prev: Some(KeyValue {
                    key: "/a".into(),
                    value: b"old".to_vec(),
                    create_revision: 3,
                    mod_revision: 5
                }),
            }
        );
        let created = event_from_log(path, 4, ("/b", OP_PUT, b"v", None, 0)).unwrap();
        match created {
            WatchEvent::Put { kv, prev: None } => assert_eq!(kv.create_revision, 4),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn malformed_log_rows_are_reported_with_revision() {
        let path = Path::new("/var/lib/kinit/store.db");
        let err = event_from_log(path, 7, ("/a", OP_DELETE, b"", None, 0)).unwrap_err();
        assert!(err.to_string().contains("revision 7"), "{err}");
        let err = event_from_log(path, 8, ("/a", 42, b"", None, 0)).unwrap_err();
        assert!(err.to_string().contains("unknown op 42"), "{err}");
        assert!(err.to_string().contains("/var/lib/kinit/store.db"), "{err}");
    }

    #[test]
    fn prefix_match_is_bytewise() {
        assert!(key_matches("/registry/pods/", "/registry/pods/a"));
        assert!(!key_matches("/registry/pods/", "/registry/podsecurity/a"));
        assert!(key_matches("", "/anything"));
    }
}
