//! The single writer thread of the embedded store.
//!
//! All writes go through one thread that owns the write side of the database. It takes every
//! request waiting in its queue (up to a bound), applies them in one redb transaction — each
//! write gets its own revision, a failed precondition fails only that write — commits once
//! (one fsync for the group), then publishes the changes to watchers and answers the callers.
//! One thread gives a total order of revisions and publishes them in that order, which is what
//! lets watchers rely on "every revision exactly once, increasing".

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable, Table};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::schema::{
    OrBackend, PrevRow, KV, LOG, META, META_COMPACTED, META_CURRENT, OP_DELETE, OP_PUT,
};
use crate::{KeyValue, StoreError, WatchEvent};

/// One write asked of the writer thread.
pub(crate) enum WriteOp {
    Create {
        key: String,
        value: Vec<u8>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: Option<i64>,
    },
    Delete {
        key: String,
        expected: Option<i64>,
    },
    /// Discard log entries below `revision`.
    Compact {
        revision: i64,
    },
}

/// What a successful write produced.
#[derive(Debug)]
pub(crate) enum WriteOutcome {
    Put(KeyValue),
    Deleted(KeyValue, i64),
    Compacted,
}

/// A write and where to send its result.
pub(crate) struct WriteRequest {
    pub op: WriteOp,
    pub reply: oneshot::Sender<Result<WriteOutcome, StoreError>>,
}

/// The changes of one committed transaction, published to watchers.
#[derive(Debug)]
pub(crate) struct CommittedBatch {
    /// Events in revision order.
    pub events: Vec<WatchEvent>,
    /// The current revision after the commit (the last event's revision).
    pub revision: i64,
}

/// Runs until every request sender is dropped; then returns, releasing its database handle.
pub(crate) fn run_writer(
    db: Arc<Database>,
    path: PathBuf,
    mut requests: mpsc::Receiver<WriteRequest>,
    events: broadcast::Sender<Arc<CommittedBatch>>,
    max_batch: usize,
) {
    let mut batch = Vec::with_capacity(max_batch);
    while let Some(first) = requests.blocking_recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match requests.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        commit_batch(&db, &path, &mut batch, &events);
    }
}

fn commit_batch(
    db: &Database,
    path: &Path,
    batch: &mut Vec<WriteRequest>,
    events: &broadcast::Sender<Arc<CommittedBatch>>,
) {
    let ops: Vec<&WriteOp> = batch.iter().map(|r| &r.op).collect();
    match apply_batch(db, path, &ops) {
        Ok((results, committed)) => {
            // Publish before answering, so a caller that sees its write acknowledged and then
            // opens a watch from an older revision finds the change either in the log or live.
            if let Some(committed) = committed {
                // No receivers is fine: nobody is watching.
                let _ = events.send(Arc::new(committed));
            }
            for (request, result) in batch.drain(..).zip(results) {
                // The caller may have given up waiting; its write is committed regardless.
                let _ = request.reply.send(result);
            }
        }
        Err(err) => {
            tracing::error!(error = %err, "embedded store transaction failed; {} writes rejected", batch.len());
            for request in batch.drain(..) {
                let _ = request
                    .reply
                    .send(Err(StoreError::Backend(err.to_string())));
            }
        }
    }
}

type BatchResult = (
    Vec<Result<WriteOutcome, StoreError>>,
    Option<CommittedBatch>,
);

/// Applies all ops in one transaction. A storage failure aborts the whole transaction (nothing
/// is written and every caller gets the error); a failed precondition only fails its own op.
fn apply_batch(db: &Database, path: &Path, ops: &[&WriteOp]) -> Result<BatchResult, StoreError> {
    let txn = db.begin_write().or_backend(path, "starting a write")?;
    let mut results = Vec::with_capacity(ops.len());
    let mut events = Vec::new();
    let mut changed_meta = false;
    let current;
    {
        let mut tables = Tables {
            kv: txn.open_table(KV).or_backend(path, "opening table kv")?,
            log: txn.open_table(LOG).or_backend(path, "opening table log")?,
            path,
            now_ms: unix_millis(),
        };
        let mut meta = txn
            .open_table(META)
            .or_backend(path, "opening table meta")?;
        let mut rev = read_counter(&meta, META_CURRENT, path)?;
        let mut compacted = read_counter(&meta, META_COMPACTED, path)?;
        for op in ops {
            let result = match op {
                WriteOp::Create { key, value } => tables.create(&mut rev, key, value),
                WriteOp::Update {
                    key,
                    value,
                    expected,
                } => tables.update(&mut rev, key, value, *expected),
                WriteOp::Delete { key, expected } => tables.delete(&mut rev, key, *expected),
                WriteOp::Compact { revision } => {
                    tables.compact(rev, &mut compacted, *revision, &mut changed_meta)
                }
            };
            match result {
                Err(err @ StoreError::Backend(_)) => return Err(err),
                Err(err) => results.push(Err(err)),
                Ok((outcome, event)) => {
                    events.extend(event);
                    results.push(Ok(outcome));
                }
            }
        }
        if !events.is_empty() {
            meta.insert(META_CURRENT, rev)
                .or_backend(path, "writing the current revision")?;
        }
        if changed_meta {
            meta.insert(META_COMPACTED, compacted)
                .or_backend(path, "writing the compacted revision")?;
        }
        current = rev;
    }
    if events.is_empty() && !changed_meta {
        txn.abort().or_backend(path, "aborting an empty write")?;
        return Ok((results, None));
    }
    txn.commit().or_backend(path, "committing writes")?;
    let committed = (!events.is_empty()).then_some(CommittedBatch {
        events,
        revision: current,
    });
    Ok((results, committed))
}

pub(crate) fn read_counter(
    meta: &impl ReadableTable<&'static str, i64>,
    name: &str,
    path: &Path,
) -> Result<i64, StoreError> {
    Ok(meta
        .get(name)
        .or_backend(path, "reading store metadata")?
        .map(|g| g.value())
        .unwrap_or(0))
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

type OpResult = Result<(WriteOutcome, Option<WatchEvent>), StoreError>;

struct Tables<'t, 'p> {
    kv: Table<'t, &'static str, (i64, i64, &'static [u8])>,
    log: Table<'t, i64, (&'static str, u8, &'static [u8], PrevRow<'static>, u64)>,
    path: &'p Path,
    now_ms: u64,
}

impl Tables<'_, '_> {
    fn current(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self
            .kv
            .get(key)
            .or_backend(self.path, "reading a key")?
            .map(|g| super::schema::kv_from_row(key, g.value())))
    }

    fn append_log(
        &mut self,
        rev: i64,
        key: &str,
        op: u8,
        value: &[u8],
        prev: Option<&KeyValue>,
    ) -> Result<(), StoreError> {
        let prev_row = prev.map(|p| (p.create_revision, p.mod_revision, p.value.as_slice()));
        self.log
            .insert(rev, (key, op, value, prev_row, self.now_ms))
            .or_backend(self.path, "appending to the revision log")?;
        Ok(())
    }

    fn create(&mut self, rev: &mut i64, key: &str, value: &[u8]) -> OpResult {
        if self.current(key)?.is_some() {
            return Err(StoreError::AlreadyExists {
                key: key.to_owned(),
            });
        }
        let new_rev = *rev + 1;
        self.kv
            .insert(key, (new_rev, new_rev, value))
            .or_backend(self.path, "writing a key")?;
        self.append_log(new_rev, key, OP_PUT, value, None)?;
        *rev = new_rev;
        let kv = KeyValue {
            key: key.to_owned(),
            value: value.to_vec(),
            create_revision: new_rev,
            mod_revision: new_rev,
        };
        let event = WatchEvent::Put {
            kv: kv.clone(),
            prev: None,
        };
        Ok((WriteOutcome::Put(kv), Some(event)))
    }

    fn checked_current(&self, key: &str, expected: Option<i64>) -> Result<KeyValue, StoreError> {
        let prev = self.current(key)?.ok_or_else(|| StoreError::NotFound {
            key: key.to_owned(),
        })?;
        match expected {
            Some(expected) if expected != prev.mod_revision => Err(StoreError::Conflict {
                key: key.to_owned(),
                expected,
                current: prev.mod_revision,
            }),
            _ => Ok(prev),
        }
    }

    fn update(
        &mut self,
        rev: &mut i64,
        key: &str,
        value: &[u8],
        expected: Option<i64>,
    ) -> OpResult {
        let prev = self.checked_current(key, expected)?;
        let new_rev = *rev + 1;
        self.kv
            .insert(key, (prev.create_revision, new_rev, value))
            .or_backend(self.path, "writing a key")?;
        self.append_log(new_rev, key, OP_PUT, value, Some(&prev))?;
        *rev = new_rev;
        let kv = KeyValue {
            key: key.to_owned(),
            value: value.to_vec(),
            create_revision: prev.create_revision,
            mod_revision: new_rev,
        };
        let event = WatchEvent::Put {
            kv: kv.clone(),
            prev: Some(prev),
        };
        Ok((WriteOutcome::Put(kv), Some(event)))
    }

    fn delete(&mut self, rev: &mut i64, key: &str, expected: Option<i64>) -> OpResult {
        let prev = self.checked_current(key, expected)?;
        let new_rev = *rev + 1;
        self.kv
            .remove(key)
            .or_backend(self.path, "deleting a key")?;
        self.append_log(new_rev, key, OP_DELETE, &[], Some(&prev))?;
        *rev = new_rev;
        let event = WatchEvent::Delete {
            prev: prev.clone(),
            revision: new_rev,
        };
        Ok((WriteOutcome::Deleted(prev, new_rev), Some(event)))
    }

    /// Removes log rows below `revision`; revisions >= `revision` stay readable.
    fn compact(
        &mut self,
        current: i64,
        compacted: &mut i64,
        revision: i64,
        changed: &mut bool,
    ) -> OpResult {
        if revision > current {
            return Err(StoreError::FutureRevision {
                requested: revision,
                current,
            });
        }
        if revision > *compacted {
            self.log
                .retain_in(..revision, |_, _| false)
                .or_backend(self.path, "compacting the revision log")?;
            *compacted = revision;
            *changed = true;
        }
        Ok((WriteOutcome::Compacted, None))
    }
}
