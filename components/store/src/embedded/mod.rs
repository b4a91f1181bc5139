//! The embedded store: the default backend for one control plane, kept in a single redb file.
//!
//! Data model (see `schema`): a `kv` table with the latest value of every key, a `log` table
//! with one row per revision (the history behind watches and list-at-revision) and a `meta`
//! table with the current and compacted revisions. Every write is applied by one writer thread
//! inside a redb transaction that bumps the revision, updates `kv` and appends to `log`;
//! concurrent writes are grouped into one commit (one fsync) but still get one revision each.
//!
//! Revisions: the first write is revision 1; each successful create/update/delete adds exactly
//! one. `compact(c)` discards log rows below `c`: afterwards `list` at a revision `>= c` and
//! `watch` with `after_revision >= c - 1` still work, older ones fail with
//! [`StoreError::Compacted`] (the same rule etcd applies). [`EmbeddedStore::spawn_compactor`]
//! compacts automatically by a [`CompactionPolicy`].
//!
//! Blocking database calls run on tokio's blocking pool; the writer has its own thread.

mod schema;
mod watch;
mod writer;

use std::collections::{BTreeMap, HashSet};
use std::fs::{DirBuilder, OpenOptions};
use std::ops::Bound;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable};
use tokio::sync::{broadcast, mpsc, oneshot};

use self::schema::{
    kv_from_row, prev_from_log, storage_error, OrBackend, KV, LOG, META, META_COMPACTED,
    META_CURRENT, META_SCHEMA, SCHEMA_VERSION,
};
use self::watch::Watcher;
use self::writer::{read_counter, CommittedBatch, WriteOp, WriteOutcome, WriteRequest};
use crate::{KeyValue, ListOptions, ListResult, Store, StoreError, WatchStream};

/// Tuning of an [`EmbeddedStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// How often an idle watch gets a [`crate::WatchEvent::Progress`] (bookmark); zero disables.
    pub progress_interval: Duration,
    /// Committed transactions buffered for live watchers. A watcher further behind catches up
    /// from the log instead (see the `watch` module docs); writers never wait for watchers.
    pub watch_buffer: usize,
    /// Most writes grouped into one commit.
    pub max_batch: usize,
    /// Bytes of memory redb may use to cache pages.
    pub cache_size: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            progress_interval: Duration::from_secs(5),
            watch_buffer: 1024,
            max_batch: 256,
            cache_size: 256 * 1024 * 1024,
        }
    }
}

/// When automatic compaction discards history.
///
/// A revision is discarded only when it is both more than `keep_revisions` behind the current
/// revision *and* older than `keep_for`: a burst of writes does not cut off watchers that are a
/// few seconds behind, and a quiet cluster keeps at least `keep_revisions` of history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// Revisions always kept behind the current one (at least 1).
    pub keep_revisions: i64,
    /// History younger than this is always kept.
    pub keep_for: Duration,
    /// How often the compactor checks.
    pub interval: Duration,
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        Self {
            keep_revisions: 10_000,
            keep_for: Duration::from_secs(5 * 60),
            interval: Duration::from_secs(60),
        }
    }
}

/// The single-file store. Cheap to clone; all clones share one database and writer.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Dropped first (field order) so the writer sees the queue close, then joined in `Drop`.
    requests: Option<mpsc::Sender<WriteRequest>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    db: Arc<Database>,
    path: PathBuf,
    feed: broadcast::Sender<Arc<CommittedBatch>>,
    options: EmbeddedOptions,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.requests.take();
        let handle = self.writer.get_mut().ok().and_then(|h| h.take());
        if let Some(handle) = handle {
            // Waits for the writes already queued to commit, so a re-open sees them.
            let _ = handle.join();
        }
    }
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store file at `path` with default options. Missing parent
    /// directories are created (mode 0700); the file is created with mode 0600.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, EmbeddedOptions::default()).await
    }

    /// Opens (or creates) the store file at `path` with `options`.
    pub async fn open_with(
        path: impl AsRef<Path>,
        options: EmbeddedOptions,
    ) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        if options.watch_buffer == 0 || options.max_batch == 0 {
            return Err(StoreError::Backend(format!(
                "embedded store {}: watch_buffer and max_batch must be at least 1",
                path.display()
            )));
        }
        let cache_size = options.cache_size;
        let (db, path) = tokio::task::spawn_blocking(move || {
            open_database(&path, cache_size).map(|db| (db, path))
        })
        .await
        .map_err(|e| StoreError::Backend(format!("opening the embedded store failed: {e}")))??;
        let db = Arc::new(db);
        let (requests, queue) = mpsc::channel(options.max_batch * 4);
        let (feed, _) = broadcast::channel(options.watch_buffer);
        let writer = {
            let (db, path, feed, max_batch) =
                (db.clone(), path.clone(), feed.clone(), options.max_batch);
            std::thread::Builder::new()
                .name("kinit-store-writer".into())
                .spawn(move || writer::run_writer(db, path, queue, feed, max_batch))
                .map_err(|e| {
                    StoreError::Backend(format!("starting the store writer thread failed: {e}"))
                })?
        };
        Ok(Self {
            inner: Arc::new(Inner {
                requests: Some(requests),
                writer: Mutex::new(Some(writer)),
                db,
                path,
                feed,
                options,
            }),
        })
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Revisions below this one were compacted away (0 if never compacted).
    pub async fn compacted_revision(&self) -> Result<i64, StoreError> {
        self.read(|txn, path| {
            let meta = txn
                .open_table(META)
                .or_backend(path, "opening table meta")?;
            read_counter(&meta, META_COMPACTED, path)
        })
        .await
    }

    /// Compacts once by `policy`; returns the new compacted revision, or None when nothing was
    /// old enough.
    pub async fn compact_by_policy(
        &self,
        policy: &CompactionPolicy,
    ) -> Result<Option<i64>, StoreError> {
        let keep = policy.keep_revisions.max(1);
        let cutoff_ms = SystemTime::now()
            .checked_sub(policy.keep_for)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64);
        let (current, compacted, first_young) = self
            .read(move |txn, path| {
                let meta = txn
                    .open_table(META)
                    .or_backend(path, "opening table meta")?;
                let current = read_counter(&meta, META_CURRENT, path)?;
                let compacted = read_counter(&meta, META_COMPACTED, path)?;
                let log = txn.open_table(LOG).or_backend(path, "opening table log")?;
                // Rows are in time order: the first young row bounds what may go.
                let mut first_young = current + 1;
                for row in log.iter().or_backend(path, "reading the revision log")? {
                    let (rev, row) = row.or_backend(path, "reading the revision log")?;
                    if row.value().4 >= cutoff_ms {
                        first_young = rev.value();
                        break;
                    }
                }
                Ok((current, compacted, first_young))
            })
            .await?;
        let target = (current - keep + 1).min(first_young);
        // Compacting at 1 discards nothing: revision 1 is the first one.
        if target <= compacted.max(1) {
            return Ok(None);
        }
        self.compact(target).await?;
        Ok(Some(target))
    }

    /// Runs [`Self::compact_by_policy`] every `policy.interval` until the store is dropped.
    /// Errors are logged and retried at the next interval.
    pub fn spawn_compactor(&self, policy: CompactionPolicy) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(policy.interval.max(Duration::from_millis(1)));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let store = EmbeddedStore { inner };
                match store.compact_by_policy(&policy).await {
                    Ok(Some(rev)) => tracing::debug!(revision = rev, "compacted store history"),
                    Ok(None) => {}
                    Err(err) => tracing::warn!(error = %err, "automatic store compaction failed"),
                }
            }
        })
    }

    async fn write(&self, op: WriteOp) -> Result<WriteOutcome, StoreError> {
        let closed = || {
            StoreError::Backend(format!(
                "embedded store {}: the writer has stopped (see earlier errors); restart the process",
                self.inner.path.display()
            ))
        };
        let requests = self.inner.requests.as_ref().ok_or_else(closed)?;
        let (reply, answer) = oneshot::channel();
        requests
            .send(WriteRequest { op, reply })
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Runs `f` in a read transaction on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction, &Path) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.inner.db.clone();
        let path = self.inner.path.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().or_backend(&path, "starting a read")?;
            f(&txn, &path)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("store read task failed: {e}")))?
    }
}

/// Creates the parent directory and the file with private permissions, then opens it with redb
/// and makes sure the tables exist.
fn open_database(path: &Path, cache_size: usize) -> Result<Database, StoreError> {
    let io_error = |doing: &str, e: std::io::Error| {
        StoreError::Backend(format!(
            "embedded store {}: {doing} failed: {e}; check the path and permissions",
            path.display()
        ))
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| io_error("creating the parent directory", e))?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| io_error("creating the file", e))?;
    // An existing file may have been created with wider permissions (e.g. restored by hand).
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io_error("setting mode 0600", e))?;
    drop(file);
    let db = redb::Builder::new()
        .set_cache_size(cache_size)
        .create(path)
        .map_err(|e| storage_error(path, "opening the database", e))?;
    let txn = db.begin_write().or_backend(path, "initialising")?;
    {
        txn.open_table(KV).or_backend(path, "creating table kv")?;
        txn.open_table(LOG).or_backend(path, "creating table log")?;
        let mut meta = txn
            .open_table(META)
            .or_backend(path, "creating table meta")?;
        let schema = meta
            .get(META_SCHEMA)
            .or_backend(path, "reading the schema version")?
            .map(|g| g.value());
        match schema {
            None => {
                meta.insert(META_SCHEMA, SCHEMA_VERSION)
                    .or_backend(path, "writing the schema version")?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(other) => {
                return Err(StoreError::Backend(format!(
                    "embedded store {}: layout version {other} is not supported (this kinit \
                     reads version {SCHEMA_VERSION}); use the kinit release that wrote it",
                    path.display()
                )))
            }
        }
    }
    txn.commit().or_backend(path, "initialising")?;
    Ok(db)
}

/// Pages `items` (already in key order and after `start_after`) by `limit`.
fn paginate(
    items: impl Iterator<Item = Result<KeyValue, StoreError>>,
    limit: usize,
) -> Result<(Vec<KeyValue>, usize), StoreError> {
    let mut page = Vec::new();
    let mut remaining = 0;
    for item in items {
        let item = item?;
        if limit == 0 || page.len() < limit {
            page.push(item);
        } else {
            remaining += 1;
        }
    }
    Ok((page, remaining))
}

/// The first key a list may return: the prefix itself, or just after `start_after`.
fn list_start<'a>(prefix: &'a str, start_after: Option<&'a str>) -> Bound<&'a str> {
    match start_after {
        Some(after) if after >= prefix => Bound::Excluded(after),
        _ => Bound::Included(prefix),
    }
}

fn list_in_snapshot(
    txn: &ReadTransaction,
    path: &Path,
    prefix: &str,
    options: &ListOptions,
) -> Result<ListResult, StoreError> {
    let meta = txn
        .open_table(META)
        .or_backend(path, "opening table meta")?;
    let current = read_counter(&meta, META_CURRENT, path)?;
    let compacted = read_counter(&meta, META_COMPACTED, path)?;
    let at = options.revision;
    if at < 0 {
        return Err(StoreError::Backend(format!(
            "list of {prefix}: revision {at} is invalid; use 0 for the latest"
        )));
    }
    if at > current {
        return Err(StoreError::FutureRevision {
            requested: at,
            current,
        });
    }
    if at != 0 && at < compacted {
        return Err(StoreError::Compacted {
            requested: at,
            compacted,
        });
    }
    let kv = txn.open_table(KV).or_backend(path, "opening table kv")?;
    let start = list_start(prefix, options.start_after.as_deref());
    let (items, remaining) = if at == 0 || at == current {
        let rows = kv
            .range::<&str>((start, Bound::Unbounded))
            .or_backend(path, "listing keys")?;
        let items = rows
            .map(|row| row.or_backend(path, "listing keys"))
            .take_while(|row| {
                row.as_ref()
                    .map_or(true, |(k, _)| schema::key_matches(prefix, k.value()))
            })
            .map(|row| row.map(|(k, v)| kv_from_row(k.value(), v.value())));
        paginate(items, options.limit)?
    } else {
        // State at `at`: keys untouched since then are as in `kv`; for every key written after
        // `at`, its first later log row records the value it had at `at` (or that it was absent).
        let mut state = BTreeMap::new();
        for row in kv
            .range::<&str>(prefix..)
            .or_backend(path, "listing keys")?
        {
            let (k, v) = row.or_backend(path, "listing keys")?;
            let key = k.value();
            if !schema::key_matches(prefix, key) {
                break;
            }
            if v.value().1 <= at {
                state.insert(key.to_owned(), kv_from_row(key, v.value()));
            }
        }
        let log = txn.open_table(LOG).or_backend(path, "opening table log")?;
        let mut seen = HashSet::new();
        for row in log
            .range::<i64>((Bound::Excluded(at), Bound::Unbounded))
            .or_backend(path, "reading the revision log")?
        {
            let (_, row) = row.or_backend(path, "reading the revision log")?;
            let (key, _, _, prev, _) = row.value();
            if schema::key_matches(prefix, key) && seen.insert(key.to_owned()) {
                if let Some(prev) = prev_from_log(key, prev) {
                    state.insert(key.to_owned(), prev);
                }
            }
        }
        let items = state
            .range::<str, _>((start, Bound::Unbounded))
            .map(|(_, kv)| Ok(kv.clone()));
        paginate(items, options.limit)?
    };
    Ok(ListResult {
        items,
        revision: if at == 0 { current } else { at },
        remaining,
    })
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_owned();
        self.read(move |txn, path| {
            let kv = txn.open_table(KV).or_backend(path, "opening table kv")?;
            let row = kv.get(key.as_str()).or_backend(path, "reading a key")?;
            Ok(row.map(|g| kv_from_row(&key, g.value())))
        })
        .await
    }

    async fn list(&self, prefix: &str, options: &ListOptions) -> Result<ListResult, StoreError> {
        let prefix = prefix.to_owned();
        let options = options.clone();
        self.read(move |txn, path| list_in_snapshot(txn, path, &prefix, &options))
            .await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError> {
        match self
            .write(WriteOp::Create {
                key: key.to_owned(),
                value,
            })
            .await?
        {
            WriteOutcome::Put(kv) => Ok(kv),
            other => Err(unexpected(other)),
        }
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_revision: Option<i64>,
    ) -> Result<KeyValue, StoreError> {
        match self
            .write(WriteOp::Update {
                key: key.to_owned(),
                value,
                expected: expected_revision,
            })
            .await?
        {
            WriteOutcome::Put(kv) => Ok(kv),
            other => Err(unexpected(other)),
        }
    }

    async fn delete(
        &self,
        key: &str,
        expected_revision: Option<i64>,
    ) -> Result<(KeyValue, i64), StoreError> {
        match self
            .write(WriteOp::Delete {
                key: key.to_owned(),
                expected: expected_revision,
            })
            .await?
        {
            WriteOutcome::Deleted(prev, rev) => Ok((prev, rev)),
            other => Err(unexpected(other)),
        }
    }

    async fn watch(&self, prefix: &str, after_revision: i64) -> Result<WatchStream, StoreError> {
        if after_revision < 0 {
            return Err(StoreError::Backend(format!(
                "watch of {prefix}: revision {after_revision} is invalid; use 0 for \"from now\""
            )));
        }
        // Subscribe before reading the position, so nothing committed in between is missed.
        let feed = self.inner.feed.subscribe();
        let (current, compacted) = self
            .read(|txn, path| {
                let meta = txn
                    .open_table(META)
                    .or_backend(path, "opening table meta")?;
                Ok((
                    read_counter(&meta, META_CURRENT, path)?,
                    read_counter(&meta, META_COMPACTED, path)?,
                ))
            })
            .await?;
        if after_revision != 0 && after_revision + 1 < compacted {
            return Err(StoreError::Compacted {
                requested: after_revision,
                compacted,
            });
        }
        let position = if after_revision == 0 {
            current
        } else {
            after_revision
        };
        Ok(Watcher {
            db: self.inner.db.clone(),
            path: self.inner.path.clone(),
            prefix: prefix.to_owned(),
            position,
            feed,
            progress_interval: self.inner.options.progress_interval,
        }
        .spawn())
    }

    async fn current_revision(&self) -> Result<i64, StoreError> {
        self.read(|txn, path| {
            let meta = txn
                .open_table(META)
                .or_backend(path, "opening table meta")?;
            read_counter(&meta, META_CURRENT, path)
        })
        .await
    }

    async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        match self.write(WriteOp::Compact { revision }).await? {
            WriteOutcome::Compacted => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(outcome: WriteOutcome) -> StoreError {
    StoreError::Backend(format!(
        "store writer returned an unexpected result: {outcome:?}"
    ))
}

#[cfg(test)]
mod tests;
