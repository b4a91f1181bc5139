//! The etcd v3 backend, for replicated control planes.
//!
//! Revisions are etcd's own, one to one. Writes with preconditions are single etcd
//! transactions: create = `create_revision(key) == 0 → put`, guarded update/delete =
//! `mod_revision(key) == expected → put/delete`, unguarded ones = `create_revision(key) > 0`.
//! The failure branch reads the key so the error can say NotFound or Conflict with the current
//! revision. Watches ask etcd for previous values and, every `progress_interval`, for a
//! progress notification (a bookmark). All keys are stored under [`EtcdConfig::prefix`].
//!
//! etcd before 3.4.25 / 3.5.8 may send a progress notification ahead of events still queued
//! for the watch; on those versions a progress event reports the last revision this watch
//! delivered instead of etcd's, so a bookmark never skips an event. Should an event ever arrive
//! at or below a revision already reported, the stream ends with [`StoreError::Compacted`] so
//! the client re-lists rather than resuming past it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, CompactionOptions, Compare, CompareOp, ConnectOptions, DeleteOptions,
    EventType, GetOptions, Identity, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use crate::{KeyValue, ListOptions, ListResult, Store, StoreError, WatchEvent, WatchStream};

/// How to reach etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `https://10.0.0.11:2379`. All must use the same scheme.
    pub endpoints: Vec<String>,
    /// CA that signed the etcd server certificates (kinit's etcd CA); required for `https`.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (the `apiserver-etcd-client` cert); needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// Private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Prepended to every key (like kube-apiserver's `--etcd-prefix`); empty for none.
    pub prefix: String,
    /// How often idle watches ask etcd for a progress notification; zero disables.
    pub progress_interval: Duration,
    /// How long to wait for the first successful request when connecting.
    pub connect_timeout: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["https://127.0.0.1:2379".into()],
            ca_file: None,
            cert_file: None,
            key_file: None,
            prefix: String::new(),
            progress_interval: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl EtcdConfig {
    /// Checks the settings and loads the TLS files; errors name the field or file at fault.
    fn connect_options(&self) -> Result<ConnectOptions, StoreError> {
        let invalid = |msg: String| StoreError::Backend(format!("etcd config: {msg}"));
        if self.endpoints.is_empty() {
            return Err(invalid(
                "endpoints is empty; give at least one client URL".into(),
            ));
        }
        let mut https = 0;
        for endpoint in &self.endpoints {
            if endpoint.starts_with("https://") {
                https += 1;
            } else if !endpoint.starts_with("http://") {
                return Err(invalid(format!(
                    "endpoint {endpoint:?} must start with https:// or http://"
                )));
            }
        }
        if https != 0 && https != self.endpoints.len() {
            return Err(invalid(
                "endpoints mix https:// and http://; use one scheme".into(),
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(invalid(
                "cert_file and key_file go together; set both or neither".into(),
            ));
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(10))
            .with_keep_alive_while_idle(true);
        if https == 0 {
            if self.ca_file.is_some() || self.cert_file.is_some() {
                return Err(invalid(format!(
                    "TLS files are set but endpoint {} is plain http; use https://",
                    self.endpoints[0]
                )));
            }
            return Ok(options);
        }
        let ca_file = self.ca_file.as_ref().ok_or_else(|| {
            invalid(
                "https endpoints need ca_file (the etcd CA, e.g. /etc/kubernetes/pki/etcd/ca.crt)"
                    .into(),
            )
        })?;
        let mut tls =
            TlsOptions::new().ca_certificate(Certificate::from_pem(read_pem(ca_file, "ca_file")?));
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            tls = tls.identity(Identity::from_pem(
                read_pem(cert, "cert_file")?,
                read_pem(key, "key_file")?,
            ));
        }
        Ok(options.with_tls(tls))
    }
}

fn read_pem(path: &Path, field: &str) -> Result<Vec<u8>, StoreError> {
    let bytes = std::fs::read(path).map_err(|e| {
        StoreError::Backend(format!(
            "etcd config: reading {field} {} failed: {e}",
            path.display()
        ))
    })?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(StoreError::Backend(format!(
            "etcd config: {field} {} is not PEM (no -----BEGIN line)",
            path.display()
        )));
    }
    Ok(bytes)
}

/// A [`Store`] on an etcd v3 cluster.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: String,
    endpoints: String,
    progress_interval: Duration,
    /// Whether etcd orders progress notifications after pending events (see
    /// [`progress_is_ordered`]); if not, progress never reports past the last event seen.
    ordered_progress: bool,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// etcd's error text for reads below the compacted revision.
const COMPACTED_MSG: &str = "required revision has been compacted";
/// etcd's error text for reads above the current revision.
const FUTURE_MSG: &str = "required revision is a future revision";

impl EtcdStore {
    /// Connects and checks that etcd answers within `connect_timeout`.
    pub async fn connect(config: EtcdConfig) -> Result<Self, StoreError> {
        let options = config.connect_options()?;
        let endpoints = config.endpoints.join(",");
        let unreachable = |e: String| {
            StoreError::Backend(format!(
                "etcd at {endpoints} is unreachable: {e}; check that etcd runs, the endpoints \
                 and the CA/client certificate"
            ))
        };
        let client = tokio::time::timeout(
            config.connect_timeout,
            Client::connect(&config.endpoints, Some(options)),
        )
        .await
        .map_err(|_| unreachable(format!("no connection after {:?}", config.connect_timeout)))?
        .map_err(|e| unreachable(e.to_string()))?;
        let status = tokio::time::timeout(config.connect_timeout, client.clone().status())
            .await
            .map_err(|_| unreachable(format!("no answer after {:?}", config.connect_timeout)))?
            .map_err(|e| unreachable(e.to_string()))?;
        let ordered_progress = progress_is_ordered(status.version());
        if !ordered_progress {
            tracing::warn!(
                version = status.version(),
                "etcd may send watch progress before pending events (fixed in 3.4.25/3.5.8); \
                 watch bookmarks will not advance past the last event"
            );
        }
        let store = Self {
            client,
            prefix: config.prefix,
            endpoints: endpoints.clone(),
            progress_interval: config.progress_interval,
            ordered_progress,
        };
        tokio::time::timeout(config.connect_timeout, store.current_revision())
            .await
            .map_err(|_| unreachable(format!("no answer after {:?}", config.connect_timeout)))?
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(store)
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Some key to address requests that only need the response header (etcd rejects "").
    fn probe_key(&self) -> String {
        format!("{}/", self.prefix)
    }

    fn convert(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
        let key = kv.key_str().map_err(|e| {
            StoreError::Backend(format!("etcd at {}: key is not UTF-8: {e}", self.endpoints))
        })?;
        let key = key.strip_prefix(self.prefix.as_str()).ok_or_else(|| {
            StoreError::Backend(format!(
                "etcd at {}: key {key:?} is outside prefix {:?}",
                self.endpoints, self.prefix
            ))
        })?;
        Ok(KeyValue {
            key: key.to_owned(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
        })
    }

    fn backend(&self, doing: &str, key: &str, err: impl std::fmt::Display) -> StoreError {
        StoreError::Backend(format!("etcd at {}: {doing} {key}: {err}", self.endpoints))
    }

    /// Maps etcd's compacted/future-revision errors to their [`StoreError`]s.
    async fn read_error(
        &self,
        doing: &str,
        key: &str,
        requested: i64,
        err: etcd_client::Error,
    ) -> StoreError {
        let text = err.to_string();
        if text.contains(COMPACTED_MSG) {
            let compacted = self.compacted_revision().await.unwrap_or(requested + 1);
            return StoreError::Compacted {
                requested,
                compacted,
            };
        }
        if text.contains(FUTURE_MSG) {
            let current = self.current_revision().await.unwrap_or(0);
            return StoreError::FutureRevision { requested, current };
        }
        self.backend(doing, key, err)
    }

    /// etcd does not report its compacted revision directly; a watch from revision 1 is
    /// cancelled with it. Only used on the error path.
    async fn compacted_revision(&self) -> Result<i64, StoreError> {
        let key = self.probe_key();
        let mut watch = self
            .client
            .watch_client()
            .watch(
                key.clone(),
                Some(WatchOptions::new().with_start_revision(1)),
            )
            .await
            .map_err(|e| self.backend("watching", &key, e))?;
        let found = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(Some(resp)) = watch.message().await {
                if resp.compact_revision() > 0 {
                    return Some(resp.compact_revision());
                }
                if resp.canceled() {
                    return None;
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        found.ok_or_else(|| self.backend("finding the compacted revision", &key, "no answer"))
    }

    /// Reads `key` in the failure branch of a transaction to say why it failed.
    fn precondition_error(
        &self,
        key: &str,
        expected: Option<i64>,
        responses: Vec<TxnOpResponse>,
    ) -> Result<StoreError, StoreError> {
        let current = match responses.into_iter().next() {
            Some(TxnOpResponse::Get(get)) => get.kvs().first().map(|kv| kv.mod_revision()),
            other => {
                return Err(self.backend(
                    "reading",
                    key,
                    format!("unexpected txn response {other:?}"),
                ))
            }
        };
        Ok(match (current, expected) {
            (None, _) => StoreError::NotFound {
                key: key.to_owned(),
            },
            (Some(current), Some(expected)) => StoreError::Conflict {
                key: key.to_owned(),
                expected,
                current,
            },
            (Some(current), None) => StoreError::Backend(format!(
                "etcd at {}: unguarded write of {key} failed although it exists at revision {current}",
                self.endpoints
            )),
        })
    }

    fn guard(full: &str, expected: Option<i64>) -> Compare {
        match expected {
            Some(rev) => Compare::mod_revision(full, CompareOp::Equal, rev),
            None => Compare::create_revision(full, CompareOp::Greater, 0),
        }
    }
}

/// Whether an etcd of `version` sends a progress notification only after the events it covers.
/// Older releases (etcd issue 15220, fixed in 3.4.25 and 3.5.8) could report a revision whose
/// event was still queued, which would make a bookmark skip that event.
fn progress_is_ordered(version: &str) -> bool {
    let mut parts = version
        .split(['.', '-', '+'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let (major, minor, patch) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    match (major, minor) {
        (3, 4) => patch >= 25,
        (3, 5) => patch >= 8,
        (3, m) => m > 5,
        (m, _) => m > 3,
    }
}

/// The smallest key after every key starting with `prefix` (etcd's range end for a prefix).
fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Empty or all-0xff prefix: every key.
    vec![0]
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let full = self.full_key(key);
        let resp = self
            .client
            .kv_client()
            .get(full.as_str(), None)
            .await
            .map_err(|e| self.backend("reading", key, e))?;
        resp.kvs().first().map(|kv| self.convert(kv)).transpose()
    }

    async fn list(&self, prefix: &str, options: &ListOptions) -> Result<ListResult, StoreError> {
        if options.revision < 0 {
            return Err(StoreError::Backend(format!(
                "list of {prefix}: revision {} is invalid; use 0 for the latest",
                options.revision
            )));
        }
        let full_prefix = self.full_key(prefix);
        let end = prefix_range_end(full_prefix.as_bytes());
        let start = match options.start_after.as_deref() {
            Some(after) if after >= prefix => {
                let mut start = self.full_key(after).into_bytes();
                start.push(0);
                start
            }
            // etcd rejects an empty key; "\0" is the first possible one.
            _ if full_prefix.is_empty() => vec![0],
            _ => full_prefix.into_bytes(),
        };
        let mut get = GetOptions::new().with_range(end);
        if options.limit > 0 {
            get = get.with_limit(options.limit as i64);
        }
        if options.revision > 0 {
            get = get.with_revision(options.revision);
        }
        let resp = match self.client.kv_client().get(start, Some(get)).await {
            Ok(resp) => resp,
            Err(e) => {
                return Err(self
                    .read_error("listing", prefix, options.revision, e)
                    .await)
            }
        };
        let items = resp
            .kvs()
            .iter()
            .map(|kv| self.convert(kv))
            .collect::<Result<Vec<_>, _>>()?;
        let revision = if options.revision > 0 {
            options.revision
        } else {
            resp.header().map_or(0, |h| h.revision())
        };
        let remaining = (resp.count() as usize).saturating_sub(items.len());
        Ok(ListResult {
            items,
            revision,
            remaining,
        })
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError> {
        let full = self.full_key(key);
        let txn = Txn::new()
            .when([Compare::create_revision(full.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(full.as_str(), value.clone(), None)]);
        let resp = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(|e| self.backend("creating", key, e))?;
        if !resp.succeeded() {
            return Err(StoreError::AlreadyExists {
                key: key.to_owned(),
            });
        }
        let revision = resp.header().map_or(0, |h| h.revision());
        Ok(KeyValue {
            key: key.to_owned(),
            value,
            create_revision: revision,
            mod_revision: revision,
        })
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_revision: Option<i64>,
    ) -> Result<KeyValue, StoreError> {
        let full = self.full_key(key);
        let txn = Txn::new()
            .when([Self::guard(&full, expected_revision)])
            .and_then([TxnOp::put(
                full.as_str(),
                value.clone(),
                Some(PutOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(full.as_str(), None)]);
        let resp = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(|e| self.backend("updating", key, e))?;
        if !resp.succeeded() {
            return Err(self.precondition_error(key, expected_revision, resp.op_responses())?);
        }
        let revision = resp.header().map_or(0, |h| h.revision());
        let create_revision = match resp.op_responses().into_iter().next() {
            Some(TxnOpResponse::Put(put)) => put.prev_key().map(|p| p.create_revision()),
            _ => None,
        }
        .ok_or_else(|| self.backend("updating", key, "etcd returned no previous value"))?;
        Ok(KeyValue {
            key: key.to_owned(),
            value,
            create_revision,
            mod_revision: revision,
        })
    }

    async fn delete(
        &self,
        key: &str,
        expected_revision: Option<i64>,
    ) -> Result<(KeyValue, i64), StoreError> {
        let full = self.full_key(key);
        let txn = Txn::new()
            .when([Self::guard(&full, expected_revision)])
            .and_then([TxnOp::delete(
                full.as_str(),
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(full.as_str(), None)]);
        let resp = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(|e| self.backend("deleting", key, e))?;
        if !resp.succeeded() {
            return Err(self.precondition_error(key, expected_revision, resp.op_responses())?);
        }
        let revision = resp.header().map_or(0, |h| h.revision());
        let prev = match resp.op_responses().into_iter().next() {
            Some(TxnOpResponse::Delete(del)) => del.prev_kvs().first().map(|kv| self.convert(kv)),
            _ => None,
        }
        .ok_or_else(|| self.backend("deleting", key, "etcd returned no previous value"))??;
        Ok((prev, revision))
    }

    async fn watch(&self, prefix: &str, after_revision: i64) -> Result<WatchStream, StoreError> {
        if after_revision < 0 {
            return Err(StoreError::Backend(format!(
                "watch of {prefix}: revision {after_revision} is invalid; use 0 for \"from now\""
            )));
        }
        let full_prefix = self.full_key(prefix);
        // "From now" becomes an explicit revision, so the watch knows its exact position.
        let from_now = after_revision == 0;
        let after_revision = if from_now {
            self.current_revision().await?
        } else {
            after_revision
        };
        if !from_now {
            // Report compaction from watch() itself, as the embedded store does: revision
            // after+1 must still be readable (a future revision is fine to watch).
            let probe = GetOptions::new()
                .with_prefix()
                .with_count_only()
                .with_revision(after_revision + 1);
            if let Err(e) = self
                .client
                .kv_client()
                .get(full_prefix.as_str(), Some(probe))
                .await
            {
                match self.read_error("watching", prefix, after_revision, e).await {
                    StoreError::FutureRevision { .. } => {}
                    other => return Err(other),
                }
            }
        }
        let options = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_progress_notify()
            .with_start_revision(after_revision + 1);
        let stream = self
            .client
            .watch_client()
            .watch(full_prefix.as_str(), Some(options))
            .await
            .map_err(|e| self.backend("watching", prefix, e))?;
        let (requests, mut responses) = stream.split();
        // Wait until etcd has registered the watch, so "from now" means now.
        match responses.message().await {
            Ok(Some(resp)) if resp.created() && !resp.canceled() => {}
            Ok(Some(resp)) if resp.compact_revision() > 0 => {
                return Err(StoreError::Compacted {
                    requested: after_revision,
                    compacted: resp.compact_revision(),
                })
            }
            Ok(Some(resp)) => {
                return Err(self.backend(
                    "watching",
                    prefix,
                    format!("watch not created: {}", resp.cancel_reason()),
                ))
            }
            Ok(None) => return Err(self.backend("watching", prefix, "stream closed")),
            Err(e) => return Err(self.backend("watching", prefix, e)),
        }
        let (tx, rx) = mpsc::channel(256);
        let task = EtcdWatch {
            store: self.clone(),
            prefix: prefix.to_owned(),
            position: after_revision,
            requests,
            responses,
            tx,
        };
        tokio::spawn(task.run());
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })))
    }

    async fn current_revision(&self) -> Result<i64, StoreError> {
        let key = self.probe_key();
        let resp = self
            .client
            .kv_client()
            .get(key.as_str(), Some(GetOptions::new().with_count_only()))
            .await
            .map_err(|e| self.backend("reading the revision at", &key, e))?;
        resp.header()
            .map(|h| h.revision())
            .ok_or_else(|| self.backend("reading the revision at", &key, "response has no header"))
    }

    async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        let result = self
            .client
            .kv_client()
            .compact(revision, Some(CompactionOptions::new().with_physical()))
            .await;
        match result {
            Ok(_) => Ok(()),
            // Compacting an already compacted revision is a no-op, as in the embedded store.
            Err(e) if e.to_string().contains(COMPACTED_MSG) => Ok(()),
            Err(e) => Err(self
                .read_error("compacting at", "revision", revision, e)
                .await),
        }
    }
}

/// Forwards one etcd watch to a consumer channel and asks for progress notifications.
struct EtcdWatch {
    store: EtcdStore,
    prefix: String,
    /// Every change up to this revision has been delivered.
    position: i64,
    requests: etcd_client::WatchRequestSender,
    responses: etcd_client::WatchResponseStream,
    tx: mpsc::Sender<Result<WatchEvent, StoreError>>,
}

impl EtcdWatch {
    async fn run(mut self) {
        if let Err(err) = self.forward().await {
            let _ = self.tx.send(Err(err)).await;
        }
        // Dropping the request sender and response stream cancels the watch in etcd.
    }

    /// Ok when the consumer went away; Err when the stream must end with that error.
    async fn forward(&mut self) -> Result<(), StoreError> {
        let interval = self.store.progress_interval;
        let mut ticker = (!interval.is_zero()).then(|| {
            let mut t = tokio::time::interval_at(Instant::now() + interval, interval);
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
            t
        });
        loop {
            let tick = async {
                match ticker.as_mut() {
                    Some(t) => {
                        t.tick().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = self.tx.closed() => return Ok(()),
                _ = tick => {
                    self.requests.request_progress().await.map_err(|e| {
                        self.store.backend("requesting watch progress for", &self.prefix, e)
                    })?;
                }
                message = self.responses.message() => {
                    let resp = match message {
                        Ok(Some(resp)) => resp,
                        Ok(None) => return Err(self.store.backend("watching", &self.prefix, "etcd closed the watch stream")),
                        Err(e) => return Err(self.store.backend("watching", &self.prefix, e)),
                    };
                    if resp.compact_revision() > 0 {
                        return Err(StoreError::Compacted {
                            requested: self.position,
                            compacted: resp.compact_revision(),
                        });
                    }
                    if resp.canceled() {
                        return Err(self.store.backend(
                            "watching",
                            &self.prefix,
                            format!("etcd cancelled the watch: {}", resp.cancel_reason()),
                        ));
                    }
                    if resp.events().is_empty() {
                        let reported = resp.header().map_or(0, |h| h.revision());
                        if self.store.ordered_progress && reported > self.position {
                            self.position = reported;
                        }
                        let progress = WatchEvent::Progress { revision: self.position };
                        if self.tx.send(Ok(progress)).await.is_err() {
                            return Ok(());
                        }
                        continue;
                    }
                    for event in resp.events() {
                        let converted = self.convert_event(event)?;
                        if converted.revision() <= self.position {
                            // A bookmark already promised this revision was delivered; the
                            // consumer's resume point is unreliable, so make it re-list.
                            return Err(StoreError::Compacted {
                                requested: self.position,
                                compacted: converted.revision(),
                            });
                        }
                        self.position = converted.revision();
                        if self.tx.send(Ok(converted)).await.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    fn convert_event(&self, event: &etcd_client::Event) -> Result<WatchEvent, StoreError> {
        let kv = event.kv().ok_or_else(|| {
            self.store
                .backend("watching", &self.prefix, "event without a key")
        })?;
        let prev = event.prev_kv().map(|p| self.store.convert(p)).transpose()?;
        match event.event_type() {
            EventType::Put => Ok(WatchEvent::Put {
                kv: self.store.convert(kv)?,
                prev,
            }),
            EventType::Delete => {
                let revision = kv.mod_revision();
                // etcd omits the previous value if it was compacted meanwhile; keep the key.
                let prev = match prev {
                    Some(prev) => prev,
                    None => KeyValue {
                        value: Vec::new(),
                        create_revision: 0,
                        mod_revision: 0,
                        ..self.store.convert(kv)?
                    },
                };
                Ok(WatchEvent::Delete { prev, revision })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_trusted_only_on_fixed_etcd_releases() {
        assert!(!progress_is_ordered("3.4.23"));
        assert!(progress_is_ordered("3.4.25"));
        assert!(!progress_is_ordered("3.5.7"));
        assert!(progress_is_ordered("3.5.8"));
        assert!(progress_is_ordered("3.6.0"));
        assert!(progress_is_ordered("4.0.0"));
        assert!(!progress_is_ordered("3.3.27"));
        assert!(!progress_is_ordered("garbage"));
    }

    #[test]
    fn prefix_range_end_increments_the_last_byte() {
        assert_eq!(
            prefix_range_end(b"/registry/pods/"),
            b"/registry/pods0".to_vec()
        );
        assert_eq!(prefix_range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_range_end(b""), vec![0]);
    }

    fn config(endpoints: &[&str]) -> EtcdConfig {
        EtcdConfig {
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn config_rejects_bad_endpoints_and_half_identities() {
        let err = |c: EtcdConfig| {
            c.connect_options()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(err(config(&[])).contains("endpoints is empty"));
        assert!(err(config(&["10.0.0.1:2379"])).contains("must start with https:// or http://"));
        assert!(err(config(&["https://a:2379", "http://b:2379"])).contains("mix"));
        assert!(err(config(&["https://a:2379"])).contains("ca_file"));
        let mut half = config(&["https://a:2379"]);
        half.cert_file = Some("/c.crt".into());
        assert!(err(half).contains("cert_file and key_file"));
        let mut plain_with_tls = config(&["http://a:2379"]);
        plain_with_tls.ca_file = Some("/ca.crt".into());
        assert!(err(plain_with_tls).contains("plain http"));
        assert!(config(&["http://127.0.0.1:2379"]).connect_options().is_ok());
    }

    #[test]
    fn config_names_missing_and_non_pem_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(&["https://a:2379"]);
        c.ca_file = Some(dir.path().join("missing-ca.crt"));
        let e = c.connect_options().err().unwrap().to_string();
        assert!(e.contains("ca_file") && e.contains("missing-ca.crt"), "{e}");
        let junk = dir.path().join("ca.crt");
        std::fs::write(&junk, b"not a certificate").unwrap();
        c.ca_file = Some(junk);
        let e = c.connect_options().err().unwrap().to_string();
        assert!(e.contains("is not PEM"), "{e}");
    }

    #[tokio::test]
    async fn connect_to_nothing_fails_with_a_hint() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let err = EtcdStore::connect(EtcdConfig {
            endpoints: vec![format!("http://127.0.0.1:{port}")],
            connect_timeout: Duration::from_millis(500),
            ..Default::default()
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("unreachable") && err.contains(&port.to_string()),
            "{err}"
        );
    }
}
