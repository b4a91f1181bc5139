//! Watches on the embedded store: replay from the revision log, then live events.
//!
//! No gap, no duplicate: a watcher subscribes to the live feed *before* it reads the log, so
//! every write committed after the log snapshot is also in the feed; after the replay it drops
//! live events at or below the last revision it scanned. The writer publishes batches in
//! revision order, so the live part is ordered too.
//!
//! Slow watchers never block writers: the live feed is a bounded broadcast buffer. A watcher
//! that falls more than the buffer behind is told so by the channel; it then re-subscribes and
//! catches up from the log from its last delivered revision (the same subscribe-then-replay
//! step). Only if that history was compacted meanwhile does its stream end with
//! [`StoreError::Compacted`], which the API server turns into HTTP 410 so the client re-lists.

use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use redb::{Database, ReadableDatabase};
use tokio::sync::{broadcast, mpsc};
use tokio::time::{Instant, MissedTickBehavior};

use super::schema::{event_from_log, event_key, key_matches, OrBackend, LOG, META};
use super::schema::{META_COMPACTED, META_CURRENT};
use super::writer::{read_counter, CommittedBatch};
use crate::{StoreError, WatchEvent, WatchStream};

/// Log rows read per read transaction during a replay.
const REPLAY_CHUNK: usize = 1024;
/// Events buffered between a watcher task and its consumer.
const WATCH_CHANNEL: usize = 256;

/// Everything a watcher task needs; it holds no reference to the store handle, so dropping the
/// store stops the writer, closes the feed and ends the watch.
pub(crate) struct Watcher {
    pub db: Arc<Database>,
    pub path: PathBuf,
    pub prefix: String,
    /// Last revision this watcher has fully processed.
    pub position: i64,
    pub feed: broadcast::Receiver<Arc<CommittedBatch>>,
    /// Zero disables progress events.
    pub progress_interval: Duration,
}

impl Watcher {
    /// Starts the watcher task and returns the consumer's stream.
    pub(crate) fn spawn(self) -> WatchStream {
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL);
        tokio::spawn(self.run(tx));
        Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }))
    }

    async fn run(mut self, tx: mpsc::Sender<Result<WatchEvent, StoreError>>) {
        match self.run_until_error(&tx).await {
            Ok(()) => {}
            Err(err) => {
                let _ = tx.send(Err(err)).await;
            }
        }
    }

    /// Returns Ok when the consumer went away, Err when the stream must end with an error.
    async fn run_until_error(
        &mut self,
        tx: &mpsc::Sender<Result<WatchEvent, StoreError>>,
    ) -> Result<(), StoreError> {
        let mut progress = (!self.progress_interval.is_zero()).then(|| {
            let mut ticker = tokio::time::interval_at(
                Instant::now() + self.progress_interval,
                self.progress_interval,
            );
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            ticker
        });
        let mut sent_since_tick = false;
        loop {
            // The feed is already subscribed (at creation, or below after a lag): replay the log
            // up to its end, then follow the feed.
            if !self.replay(tx).await? {
                return Ok(());
            }
            loop {
                let tick = async {
                    match progress.as_mut() {
                        Some(ticker) => {
                            ticker.tick().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    _ = tx.closed() => return Ok(()),
                    received = self.feed.recv() => match received {
                        Ok(batch) => {
                            if batch.revision <= self.position {
                                continue;
                            }
                            for event in &batch.events {
                                if event.revision() <= self.position {
                                    continue;
                                }
                                if event_key(event).is_some_and(|k| key_matches(&self.prefix, k)) {
                                    if tx.send(Ok(event.clone())).await.is_err() {
                                        return Ok(());
                                    }
                                    sent_since_tick = true;
                                }
                            }
                            self.position = batch.revision;
                        }
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            tracing::debug!(prefix = %self.prefix, missed, position = self.position,
                                "watcher fell behind the live feed; catching up from the log");
                            self.feed = self.feed.resubscribe();
                            break;
                        }
                        Err(broadcast::error::RecvError::Closed) => {
                            return Err(StoreError::Backend(format!(
                                "embedded store {} was closed; re-open it and watch again from revision {}",
                                self.path.display(), self.position
                            )));
                        }
                    },
                    _ = tick => {
                        if !sent_since_tick
                            && tx.send(Ok(WatchEvent::Progress { revision: self.position })).await.is_err()
                        {
                            return Ok(());
                        }
                        sent_since_tick = false;
                    }
                }
            }
        }
    }

    /// Sends every logged change under the prefix after `position`, chunk by chunk, advancing
    /// `position` to the end of the log. Returns false if the consumer went away.
    async fn replay(
        &mut self,
        tx: &mpsc::Sender<Result<WatchEvent, StoreError>>,
    ) -> Result<bool, StoreError> {
        loop {
            let db = self.db.clone();
            let path = self.path.clone();
            let prefix = self.prefix.clone();
            let from = self.position;
            let chunk =
                tokio::task::spawn_blocking(move || read_log_chunk(&db, &path, &prefix, from))
                    .await
                    .map_err(|e| StoreError::Backend(format!("watch replay task failed: {e}")))??;
            for event in chunk.events {
                if tx.send(Ok(event)).await.is_err() {
                    return Ok(false);
                }
            }
            self.position = chunk.position;
            if chunk.at_end {
                return Ok(true);
            }
        }
    }
}

struct LogChunk {
    events: Vec<WatchEvent>,
    /// Last revision scanned.
    position: i64,
    /// Whether `position` is the current revision of the snapshot read.
    at_end: bool,
}

/// Reads up to [`REPLAY_CHUNK`] log rows after `from` in one snapshot.
fn read_log_chunk(
    db: &Database,
    path: &std::path::Path,
    prefix: &str,
    from: i64,
) -> Result<LogChunk, StoreError> {
    let txn = db.begin_read().or_backend(path, "starting a read")?;
    let meta = txn
        .open_table(META)
        .or_backend(path, "opening table meta")?;
    let current = read_counter(&meta, META_CURRENT, path)?;
    let compacted = read_counter(&meta, META_COMPACTED, path)?;
    if from + 1 < compacted {
        return Err(StoreError::Compacted {
            requested: from,
            compacted,
        });
    }
    let log = txn.open_table(LOG).or_backend(path, "opening table log")?;
    let mut events = Vec::new();
    let mut position = from;
    let mut scanned = 0;
    for row in log
        .range::<i64>((Bound::Excluded(from), Bound::Unbounded))
        .or_backend(path, "reading the revision log")?
    {
        let (rev, row) = row.or_backend(path, "reading the revision log")?;
        let rev = rev.value();
        let row = row.value();
        if key_matches(prefix, row.0) {
            events.push(event_from_log(path, rev, row)?);
        }
        position = rev;
        scanned += 1;
        if scanned == REPLAY_CHUNK {
            break;
        }
    }
    let at_end = scanned < REPLAY_CHUNK || position >= current;
    if at_end {
        position = position.max(current);
    }
    Ok(LogChunk {
        events,
        position,
        at_end,
    })
}
