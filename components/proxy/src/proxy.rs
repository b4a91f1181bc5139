//! The running proxy: Service and EndpointSlice watchers feed the [`Engine`]; changes are
//! batched (debounced) into one transaction; the table is checked for tampering (by
//! content, see [`crate::table::TableModel::differences`]) periodically and rewritten as a
//! whole in one transaction at start-up, periodically and after a tamper or a failed
//! transaction, keeping session-affinity state. Nothing is written before both watchers have
//! listed everything. Dropping the [`ProxyHandle`] stops it all; the table stays.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::stream::BoxStream;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::ProxyConfig;
use crate::engine::{Engine, SyncKind, SyncReport};
use crate::error::ProxyError;

/// Counters and last outcome of the running proxy.
#[derive(Clone, Debug, Default)]
pub struct ProxyStatus {
    /// Whether the table has been programmed from complete caches.
    pub synced: bool,
    /// Full resyncs done.
    pub full_syncs: u64,
    /// Incremental transactions done.
    pub incremental_syncs: u64,
    /// Times the tamper check found the table changed behind the proxy's back.
    pub tamper_repairs: u64,
    /// When the last successful transaction committed.
    pub last_sync: Option<SystemTime>,
    /// The last error (cleared by the next successful sync).
    pub last_error: Option<String>,
}

/// A running proxy. Dropping the handle stops it, like [`ProxyHandle::stop`].
pub struct ProxyHandle {
    task: JoinHandle<()>,
    services: Store<Service>,
    status: Arc<Mutex<ProxyStatus>>,
    synced: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
}

impl ProxyHandle {
    /// The proxy's Service cache (a reflector store), e.g. for service environment
    /// variables. It holds every Service, proxied or not.
    pub fn services(&self) -> Store<Service> {
        self.services.clone()
    }

    /// Whether the table has been programmed from complete Service and EndpointSlice lists.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Counters and the last error.
    pub fn status(&self) -> ProxyStatus {
        self.status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Stops watching and syncing (the same as dropping the handle). The table stays in
    /// place (traffic keeps flowing while the agent restarts); [`crate::delete_table`]
    /// removes it. An nft transaction already running completes; nothing is written after
    /// it.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for ProxyHandle {
    /// Stops the proxy's task, so that a proxy started again (an agent restarting in
    /// process) is the only one writing the table.
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }
}

/// Starts the proxy with `client` (the node's credentials: it lists and watches Services
/// and EndpointSlices cluster-wide). Fails fast when the configuration is invalid or `nft`
/// cannot be run; everything later is retried and reported through [`ProxyHandle::status`]
/// and the log.
pub async fn start(client: kube::Client, config: ProxyConfig) -> Result<ProxyHandle, ProxyError> {
    let engine = Engine::new(&config)?;
    let nft = config.nft.clone();
    tokio::task::spawn_blocking(move || nft.probe())
        .await
        .map_err(|e| ProxyError::Task(e.to_string()))??;

    let (reader, writer) = reflector::store::<Service>();
    let services = watcher::watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
    .boxed();
    let slices = watcher::watcher(
        Api::<EndpointSlice>::all(client),
        watcher::Config::default(),
    )
    .default_backoff()
    .boxed();
    let status = Arc::new(Mutex::new(ProxyStatus::default()));
    let synced = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(
        Loop {
            engine: Arc::new(Mutex::new(engine)),
            config,
            status: status.clone(),
            synced: synced.clone(),
        }
        .run(services, slices, stop_rx),
    );
    Ok(ProxyHandle {
        task,
        services: reader,
        status,
        synced,
        stop: stop_tx,
    })
}

type Watch<K> = BoxStream<'static, Result<Event<K>, watcher::Error>>;

/// Collects a watcher's events; a re-list is buffered and replaces the cache at its end.
struct Feed<K> {
    relist: Option<Vec<K>>,
    listed: bool,
}

impl<K> Feed<K> {
    fn new() -> Feed<K> {
        Feed {
            relist: None,
            listed: false,
        }
    }
}

enum Change<K> {
    Upsert(K),
    Delete(K),
    Replace(Vec<K>),
    None,
}

impl<K> Feed<K> {
    fn take(&mut self, event: Event<K>) -> Change<K> {
        match event {
            Event::Apply(k) => Change::Upsert(k),
            Event::Delete(k) => Change::Delete(k),
            Event::Init => {
                self.relist = Some(Vec::new());
                Change::None
            }
            Event::InitApply(k) => {
                self.relist.get_or_insert_with(Vec::new).push(k);
                Change::None
            }
            Event::InitDone => {
                self.listed = true;
                Change::Replace(self.relist.take().unwrap_or_default())
            }
        }
    }
}

struct Loop {
    engine: Arc<Mutex<Engine>>,
    config: ProxyConfig,
    status: Arc<Mutex<ProxyStatus>>,
    synced: Arc<AtomicBool>,
}

/// Engine state the loop schedules by.
struct Snapshot {
    pending: usize,
    needs_full: bool,
    programmed: bool,
    stale_deadline: Option<Instant>,
}

/// When pending changes are applied: after `debounce` without new events, but no later than
/// `max_delay` after the first pending event, so a burst becomes one transaction.
fn flush_at(
    first_pending: Instant,
    last_event: Instant,
    debounce: Duration,
    max_delay: Duration,
) -> Instant {
    (last_event + debounce).min(first_pending + max_delay)
}

const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// A tamper check may use at most 1/20 of the time between checks.
const CHECK_COST_FACTOR: u32 = 20;

impl Loop {
    fn with_engine<T>(&self, f: impl FnOnce(&mut Engine) -> T) -> T {
        let mut guard = self.engine.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }

    fn snapshot(&self) -> Snapshot {
        self.with_engine(|e| Snapshot {
            pending: e.pending(),
            needs_full: e.needs_full_resync(),
            programmed: e.is_programmed(),
            stale_deadline: e.next_stale_deadline(),
        })
    }

    /// Runs `f` on the engine on a blocking thread (nft and netlink calls block).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Engine) -> T + Send + 'static,
    ) -> Result<T, ProxyError> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = engine.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| ProxyError::Task(e.to_string()))
    }

    fn record(&self, result: &Result<SyncReport, ProxyError>) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(r) => {
                match r.kind {
                    SyncKind::Full => s.full_syncs += 1,
                    SyncKind::Incremental => s.incremental_syncs += 1,
                    SyncKind::Unchanged => {}
                }
                if r.kind != SyncKind::Unchanged {
                    s.last_sync = Some(SystemTime::now());
                }
                s.synced = true;
                s.last_error = None;
                self.synced.store(true, Ordering::Release);
            }
            Err(e) => s.last_error = Some(e.to_string()),
        }
    }

    async fn sync(&self) -> Result<SyncReport, ProxyError> {
        let result = self.blocking(|e| e.sync()).await.and_then(|r| r);
        match &result {
            Ok(r) if r.kind == SyncKind::Full => tracing::info!(
                table = %self.config.table, services = r.services, lines = r.script_lines,
                took_ms = r.duration.as_millis() as u64, recreated = r.table_recreated,
                "service proxy table written in full"),
            Ok(r) if r.kind == SyncKind::Incremental => tracing::debug!(
                services = r.services,
                lines = r.script_lines,
                took_ms = r.duration.as_millis() as u64,
                conntrack_deleted = r.conntrack_deleted,
                "service proxy table updated"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "service proxy sync failed; retrying with a full resync")
            }
        }
        self.record(&result);
        result
    }

    async fn run(
        self,
        mut services: Watch<Service>,
        mut slices: Watch<EndpointSlice>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut service_feed = Feed::<Service>::new();
        let mut slice_feed = Feed::<EndpointSlice>::new();
        let mut first_pending: Option<Instant> = None;
        let mut last_event = Instant::now();
        let mut retry_at: Option<Instant> = None;
        let mut retry_delay = RETRY_MIN;
        let mut check_interval = self.config.tamper_check_period;
        let mut next_check = Instant::now() + check_interval;
        let mut next_full = Instant::now() + self.config.full_resync_period;

        loop {
            let now = Instant::now();
            let listed = service_feed.listed && slice_feed.listed;
            let snap = self.snapshot();
            let mut wake = now + Duration::from_secs(3600);
            if listed {
                if snap.needs_full || snap.pending > 0 {
                    let mut at = if !snap.programmed || snap.needs_full {
                        now
                    } else {
                        let first = first_pending.unwrap_or(now);
                        (last_event + self.config.sync_debounce)
                            .min(first + self.config.sync_max_delay)
                    };
                    if let Some(r) = retry_at {
                        at = at.max(r);
                    }
                    wake = wake.min(at);
                }
                if snap.programmed {
                    wake = wake.min(next_check).min(next_full);
                    if let Some(d) = snap.stale_deadline {
                        wake = wake.min(d);
                    }
                }
            }

            tokio::select! {
                biased;
                _ = stop.changed() => break,
                event = services.next() => match event {
                    Some(Ok(event)) => {
                        let change = service_feed.take(event);
                        self.with_engine(|e| match change {
                            Change::Upsert(s) => e.upsert_service(s),
                            Change::Delete(s) => e.remove_service(&s.namespace().unwrap_or_default(), &s.name_any()),
                            Change::Replace(all) => e.replace_services(all),
                            Change::None => {}
                        });
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "watching Services failed; retrying"),
                    None => {
                        tracing::error!("the Service watch ended; the service proxy stops");
                        break;
                    }
                },
                event = slices.next() => match event {
                    Some(Ok(event)) => {
                        let change = slice_feed.take(event);
                        self.with_engine(|e| match change {
                            Change::Upsert(s) => e.upsert_slice(s),
                            Change::Delete(s) => e.remove_slice(&s.namespace().unwrap_or_default(), &s.name_any()),
                            Change::Replace(all) => e.replace_slices(all),
                            Change::None => {}
                        });
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "watching EndpointSlices failed; retrying"),
                    None => {
                        tracing::error!("the EndpointSlice watch ended; the service proxy stops");
                        break;
                    }
                },
                _ = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    let snap = self.snapshot();
                    if snap.programmed && now >= next_full {
                        next_full = now + self.config.full_resync_period;
                        self.with_engine(|e| e.request_full_resync());
                    }
                    if snap.programmed && now >= next_check && !snap.needs_full {
                        let started = Instant::now();
                        match self.blocking(|e| e.check_table()).await.and_then(|r| r) {
                            Ok(None) => {}
                            Ok(Some(why)) => {
                                tracing::warn!(table = %self.config.table, %why, "service proxy table was changed behind our back; rewriting it");
                                let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
                                s.tamper_repairs += 1;
                            }
                            Err(e) => tracing::warn!(error = %e, "service proxy tamper check failed"),
                        }
                        let cost = started.elapsed() * CHECK_COST_FACTOR;
                        check_interval = self.config.tamper_check_period.max(cost);
                        next_check = Instant::now() + check_interval;
                    }
                    let snap = self.snapshot();
                    let retry_ok = retry_at.is_none_or(|r| now >= r);
                    let due = snap.needs_full
                        || (snap.pending > 0
                            && now
                                >= flush_at(
                                    first_pending.unwrap_or(now),
                                    last_event,
                                    self.config.sync_debounce,
                                    self.config.sync_max_delay,
                                ));
                    if listed && retry_ok && due {
                        match self.sync().await {
                            Ok(_) => {
                                retry_at = None;
                                retry_delay = RETRY_MIN;
                                first_pending = None;
                            }
                            Err(_) => {
                                retry_at = Some(Instant::now() + retry_delay);
                                retry_delay = (retry_delay * 2).min(RETRY_MAX);
                            }
                        }
                    }
                    if let Some(d) = self.snapshot().stale_deadline {
                        if Instant::now() >= d {
                            match self.blocking(|e| e.delete_stale_chains()).await.and_then(|r| r) {
                                Ok(n) => tracing::debug!(chains = n, "deleted stale service proxy chains"),
                                Err(e) => tracing::warn!(error = %e, "deleting stale chains failed; the next sync rewrites the table"),
                            }
                        }
                    }
                    continue;
                }
            }
            // An event was handled.
            if self.snapshot().pending > 0 {
                last_event = Instant::now();
                first_pending.get_or_insert(last_event);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_are_debounced_up_to_the_maximum_delay() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // A lone event waits the debounce time.
        assert_eq!(flush_at(t0, t0, ms(10), ms(200)), t0 + ms(10));
        // Events keep coming: each pushes the transaction back...
        assert_eq!(flush_at(t0, t0 + ms(50), ms(10), ms(200)), t0 + ms(60));
        // ...but never past the maximum delay after the first one.
        assert_eq!(flush_at(t0, t0 + ms(195), ms(10), ms(200)), t0 + ms(200));
    }

    #[test]
    fn relist_is_buffered_until_done() {
        let mut feed = Feed::<u32>::new();
        assert!(matches!(feed.take(Event::Init), Change::None));
        assert!(matches!(feed.take(Event::InitApply(1)), Change::None));
        assert!(matches!(feed.take(Event::InitApply(2)), Change::None));
        assert!(!feed.listed);
        match feed.take(Event::InitDone) {
            Change::Replace(all) => assert_eq!(all, vec![1, 2]),
            _ => panic!("InitDone must replace the cache"),
        }
        assert!(feed.listed);
        assert!(matches!(feed.take(Event::Apply(3)), Change::Upsert(3)));
        assert!(matches!(feed.take(Event::Delete(3)), Change::Delete(3)));
        // A later re-list starts from an empty buffer.
        feed.take(Event::Init);
        match feed.take(Event::InitDone) {
            Change::Replace(all) => assert!(all.is_empty()),
            _ => panic!("InitDone must replace the cache"),
        }
    }
}
