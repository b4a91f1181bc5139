//! One watch per resource kind, shared by every controller that needs it.
//!
//! kube-rs' shared reflector streams (`store_shared`/`subscribe`) do not forward deletions, and
//! a ReplicaSet must notice a deleted pod at once, so this small fan-out sits on top of
//! `watcher` + `reflector::store::Writer`: it keeps the cache, classifies each change as
//! added/updated/deleted against the cache, and hands it to registered handlers (expectation
//! bookkeeping, owner lookups) which turn it into reconcile requests for their controller.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::{store::Writer, Lookup, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Resource;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// First seen (created, or present at the initial list).
    Added,
    /// Seen before and changed.
    Updated,
    /// Gone from the API.
    Deleted,
}

/// A registered reaction: gets the object after the change, the cached object before it, and
/// the kind of change.
pub type Handler<K> = Box<dyn Fn(&K, Option<&K>, Change) + Send + Sync>;

/// A watch + cache of one kind with change handlers.
pub struct Informer<K>
where
    K: Resource + Lookup + Clone + 'static,
    <K as Lookup>::DynamicType: Eq + Hash + Clone,
{
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
    handlers: Vec<Handler<K>>,
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()>
        + Lookup<DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    /// An informer over `api` (usually cluster-wide) with `config`.
    pub fn new(api: Api<K>, config: watcher::Config) -> Informer<K> {
        Informer {
            api,
            config,
            writer: Writer::default(),
            handlers: Vec::new(),
        }
    }

    /// The cache; empty until the first list completes (see `Store::wait_until_ready`).
    pub fn store(&self) -> Store<K> {
        self.writer.as_reader()
    }

    /// Registers a handler called for every change, after the cache is updated.
    pub fn on_change(&mut self, handler: impl Fn(&K, Option<&K>, Change) + Send + Sync + 'static) {
        self.handlers.push(Box::new(handler));
    }

    /// A stream of every added or updated object, for `Controller::for_stream`.
    pub fn objects(&mut self) -> UnboundedReceiverStream<Result<K, watcher::Error>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.on_change(move |obj, _, change| {
            if change != Change::Deleted {
                let _ = tx.send(Ok(obj.clone()));
            }
        });
        UnboundedReceiverStream::new(rx)
    }

    /// A stream of reconcile requests produced by `map` for every change, for
    /// `Controller::reconcile_on`.
    pub fn triggers<R>(
        &mut self,
        map: impl Fn(&K, Option<&K>, Change) -> Vec<ObjectRef<R>> + Send + Sync + 'static,
    ) -> UnboundedReceiverStream<ObjectRef<R>>
    where
        R: Lookup + Send + Sync + 'static,
        R::DynamicType: Send + Sync,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        self.on_change(move |obj, old, change| {
            for r in map(obj, old, change) {
                let _ = tx.send(r);
            }
        });
        UnboundedReceiverStream::new(rx)
    }

    /// Watches until the future is dropped, retrying with back-off on errors.
    pub async fn run(mut self) {
        let store = self.writer.as_reader();
        let mut events = watcher(self.api.clone(), self.config.clone())
            .default_backoff()
            .boxed();
        // Changes seen during a (re)list; the cache swaps in only at InitDone, so handlers run
        // then, when a reconcile can already read the objects.
        let mut pending: Vec<(K, Option<Arc<K>>, Change)> = Vec::new();
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(kind = %<K as Resource>::kind(&()), error = %e, "watch failed; retrying");
                    continue;
                }
            };
            match &event {
                Event::Apply(obj) => {
                    let old = store.get(&ObjectRef::from_obj(obj));
                    self.writer.apply_watcher_event(&event);
                    let change = if old.is_some() {
                        Change::Updated
                    } else {
                        Change::Added
                    };
                    self.dispatch(obj, old.as_deref(), change);
                }
                Event::Delete(obj) => {
                    let old = store.get(&ObjectRef::from_obj(obj));
                    self.writer.apply_watcher_event(&event);
                    self.dispatch(obj, old.as_deref(), Change::Deleted);
                }
                Event::Init => {
                    pending.clear();
                    self.writer.apply_watcher_event(&event);
                }
                Event::InitApply(obj) => {
                    let old = store.get(&ObjectRef::from_obj(obj));
                    let change = if old.is_some() {
                        Change::Updated
                    } else {
                        Change::Added
                    };
                    pending.push((obj.clone(), old, change));
                    self.writer.apply_watcher_event(&event);
                }
                Event::InitDone => {
                    // Objects cached before the relist and absent now were deleted meanwhile.
                    let listed: std::collections::HashSet<ObjectRef<K>> = pending
                        .iter()
                        .map(|(o, _, _)| ObjectRef::from_obj(o))
                        .collect();
                    let vanished: Vec<Arc<K>> = store
                        .state()
                        .into_iter()
                        .filter(|o| !listed.contains(&ObjectRef::from_obj(o.as_ref())))
                        .collect();
                    self.writer.apply_watcher_event(&event);
                    for gone in vanished {
                        self.dispatch(&gone, Some(&gone), Change::Deleted);
                    }
                    for (obj, old, change) in std::mem::take(&mut pending) {
                        self.dispatch(&obj, old.as_deref(), change);
                    }
                }
            }
        }
    }

    fn dispatch(&self, obj: &K, old: Option<&K>, change: Change) {
        for h in &self.handlers {
            h(obj, old, change);
        }
    }
}

/// `kube::runtime::watcher` under a name that does not clash with the module.
fn watcher<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl futures::Stream<Item = watcher::Result<Event<K>>>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    kube::runtime::watcher(api, config)
}
