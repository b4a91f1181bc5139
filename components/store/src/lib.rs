//! Storage for API objects: a revisioned key/value store with prefix watches.
//!
//! The API server stores each object as opaque bytes under a key such as
//! `/registry/pods/default/web-0`. Every write bumps one cluster-wide revision (like etcd's
//! revision), which becomes the object's `resourceVersion`; watches replay the revision log from
//! a given revision, so a client that lists at revision R and watches from R sees every later
//! change exactly once. Compaction discards history below a revision: after `compact(c)`, a list
//! at a revision `>= c` and a watch with `after_revision >= c - 1` still work (as in etcd), older
//! ones fail with [`StoreError::Compacted`] (HTTP 410 at the API). Compacting is idempotent.
//!
//! Two backends implement [`Store`]: the embedded single-file store (the default for one control
//! plane) and etcd (replicated control planes). Both pass the same conformance suite.

use async_trait::async_trait;
use futures::stream::BoxStream;

#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod conformance;
pub mod embedded;
#[cfg(feature = "etcd")]
pub mod etcd;

pub use embedded::{CompactionPolicy, EmbeddedOptions, EmbeddedStore};
#[cfg(feature = "etcd")]
pub use etcd::{EtcdConfig, EtcdStore};

/// A stored value with its revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// Full key, e.g. `/registry/pods/default/web-0`.
    pub key: String,
    /// The object's serialized bytes.
    pub value: Vec<u8>,
    /// Revision of the write that created this key (since its last deletion).
    pub create_revision: i64,
    /// Revision of the last write to this key; the object's `resourceVersion`.
    pub mod_revision: i64,
}

/// Options for [`Store::list`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Return at most this many items (0 = no limit).
    pub limit: usize,
    /// Start after this key (exclusive), for pagination; keys are returned in byte order.
    pub start_after: Option<String>,
    /// Read as of this revision (0 = latest). Fails with [`StoreError::Compacted`] if compacted.
    pub revision: i64,
}

/// Result of [`Store::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListResult {
    /// Items in key order.
    pub items: Vec<KeyValue>,
    /// Revision the list was read at; watching from it continues without gaps.
    pub revision: i64,
    /// Number of matching keys after the returned page (0 when this page is the last).
    pub remaining: usize,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was created (`prev` is None) or updated.
    Put {
        kv: KeyValue,
        prev: Option<KeyValue>,
    },
    /// A key was deleted at `revision`; `prev` is its last value.
    Delete { prev: KeyValue, revision: i64 },
    /// No change up to `revision`; lets idle watchers advance their resume point (bookmarks).
    Progress { revision: i64 },
}

impl WatchEvent {
    /// The revision this event happened at.
    pub fn revision(&self) -> i64 {
        match self {
            WatchEvent::Put { kv, .. } => kv.mod_revision,
            WatchEvent::Delete { revision, .. } => *revision,
            WatchEvent::Progress { revision } => *revision,
        }
    }
}

/// A stream of changes under a prefix, in revision order.
pub type WatchStream = BoxStream<'static, Result<WatchEvent, StoreError>>;

/// Errors every backend reports the same way, so the API server maps them to HTTP statuses.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Create of a key that exists (HTTP 409 AlreadyExists).
    #[error("key {key} already exists")]
    AlreadyExists { key: String },
    /// Read/update/delete of a key that does not exist (HTTP 404).
    #[error("key {key} not found")]
    NotFound { key: String },
    /// Optimistic-concurrency check failed (HTTP 409 Conflict).
    #[error("key {key} was modified: expected revision {expected}, current {current}")]
    Conflict {
        key: String,
        expected: i64,
        current: i64,
    },
    /// The requested revision was compacted away (HTTP 410 Expired).
    #[error("revision {requested} has been compacted (oldest available: {compacted})")]
    Compacted { requested: i64, compacted: i64 },
    /// The requested revision is in the future.
    #[error("revision {requested} is newer than the current revision {current}")]
    FutureRevision { requested: i64, current: i64 },
    /// The backend failed (I/O, corruption, etcd unreachable); the message says what and where.
    #[error("storage backend error: {0}")]
    Backend(String),
}

/// A revisioned key/value store with prefix watches.
///
/// Keys are UTF-8 paths; a prefix matches by bytes (callers end prefixes with `/`).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one key at the latest revision.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Lists keys starting with `prefix`, in key order.
    async fn list(&self, prefix: &str, options: &ListOptions) -> Result<ListResult, StoreError>;

    /// Creates `key`; fails with [`StoreError::AlreadyExists`]. Returns the new revision.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError>;

    /// Replaces `key`. With `expected_revision`, fails with [`StoreError::Conflict`] unless the
    /// key's `mod_revision` equals it. Fails with [`StoreError::NotFound`] if absent.
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_revision: Option<i64>,
    ) -> Result<KeyValue, StoreError>;

    /// Deletes `key` (with the same precondition as `update`); returns the deleted value and the
    /// revision of the deletion.
    async fn delete(
        &self,
        key: &str,
        expected_revision: Option<i64>,
    ) -> Result<(KeyValue, i64), StoreError>;

    /// Watches keys under `prefix`, delivering every change with revision > `after_revision`
    /// (0 = only changes after now). Fails with [`StoreError::Compacted`] when history before
    /// `after_revision` is gone.
    ///
    /// Events arrive in strictly increasing revision order, each exactly once, interleaved with
    /// occasional [`WatchEvent::Progress`]. The stream may also end with an error item:
    /// [`StoreError::Compacted`] when the watcher fell behind history that was compacted
    /// meanwhile (answer HTTP 410 so the client re-lists), [`StoreError::Backend`] when the
    /// backend went away (the client may re-watch from its last revision).
    async fn watch(&self, prefix: &str, after_revision: i64) -> Result<WatchStream, StoreError>;

    /// The latest revision.
    async fn current_revision(&self) -> Result<i64, StoreError>;

    /// Discards history below `revision` (current values are kept).
    async fn compact(&self, revision: i64) -> Result<(), StoreError>;
}
