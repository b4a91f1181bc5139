//! One watch per resource kind for the whole controller manager, shared by every controller
//! that needs it ([`Informers`], client-go's shared informer factory).
//!
//! kube-rs' shared reflector streams (`store_shared`/`subscribe`) do not forward deletions, and
//! a ReplicaSet must notice a deleted pod at once, so this small fan-out sits on top of
//! `watcher` + `reflector::store::Writer`: it keeps the cache, classifies each change as
//! added/updated/deleted against the cache, and hands it to registered handlers (expectation
//! bookkeeping, owner lookups) which turn it into reconcile requests for their controller.

use std::any::{Any, TypeId};
use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use kube::api::{Api, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{store::Writer, Lookup, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource};
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

/// A raw reaction to every watch event, before the cache applies it.
pub type EventHook<K> = Box<dyn Fn(&Event<K>) + Send + Sync>;

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
    event_hooks: Vec<EventHook<K>>,
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
            event_hooks: Vec::new(),
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

    /// Registers a hook called with every watch event as it arrives, before the cache applies
    /// it (the garbage collector builds its own graph from these).
    pub fn on_event(&mut self, hook: impl Fn(&Event<K>) + Send + Sync + 'static) {
        self.event_hooks.push(Box::new(hook));
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
            for hook in &self.event_hooks {
                hook(&event);
            }
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

/// Reconcile requests for the owners of kind `O` named in an object's ownerReferences, like
/// kube-rs' `Controller::owns`, for [`Informer::triggers`].
pub fn owners<O, K>(obj: &K) -> Vec<ObjectRef<O>>
where
    O: Resource<DynamicType = ()> + Lookup<DynamicType = ()>,
    K: Resource,
{
    let meta = obj.meta();
    meta.owner_references
        .iter()
        .flatten()
        .filter_map(|owner| ObjectRef::from_owner_ref(meta.namespace.as_deref(), owner, ()))
        .collect()
}

/// The metadata of a watch event, as the garbage collector's graph takes it.
pub type MetadataEvent = Event<PartialObjectMeta<DynamicObject>>;

/// Receives the metadata events of every shared informer: the resource key
/// (`<apiVersion>/<plural>`, e.g. `apps/v1/replicasets`) and the event.
pub type MetadataHook = Arc<dyn Fn(&str, MetadataEvent) + Send + Sync>;

/// The resource keys a [`MetadataHook`] is fed, known once [`Informers::run`] was called.
pub type FedResources = Arc<OnceLock<BTreeSet<String>>>;

/// `<apiVersion>/<plural>` of a typed kind, the key the garbage collector files objects under.
pub fn resource_key<K: Resource<DynamicType = ()>>() -> String {
    format!("{}/{}", K::api_version(&()), K::plural(&()))
}

fn metadata_of<K: Resource>(obj: &K) -> PartialObjectMeta<DynamicObject> {
    PartialObjectMeta {
        types: None,
        metadata: obj.meta().clone(),
        _phantom: PhantomData,
    }
}

/// An informer of any kind, for [`Informers`].
trait SharedInformer: Send {
    fn as_any(&mut self) -> &mut dyn Any;
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
    fn resource_key(&self) -> String;
    fn feed_metadata(&mut self, hook: MetadataHook);
    /// (resolves when the cache holds the first list, runs the watch)
    fn start(self: Box<Self>) -> (BoxFuture<'static, ()>, BoxFuture<'static, ()>);
}

impl<K> SharedInformer for Informer<K>
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
    fn as_any(&mut self) -> &mut dyn Any {
        self
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }

    fn resource_key(&self) -> String {
        resource_key::<K>()
    }

    fn feed_metadata(&mut self, hook: MetadataHook) {
        let key = resource_key::<K>();
        self.on_event(move |event| {
            let meta = match event {
                Event::Apply(o) => Event::Apply(metadata_of(o)),
                Event::Delete(o) => Event::Delete(metadata_of(o)),
                Event::Init => Event::Init,
                Event::InitApply(o) => Event::InitApply(metadata_of(o)),
                Event::InitDone => Event::InitDone,
            };
            hook(&key, meta);
        });
    }

    fn start(self: Box<Self>) -> (BoxFuture<'static, ()>, BoxFuture<'static, ()>) {
        let store = self.store();
        let synced = async move {
            // Err only when the writer is gone, i.e. the informer stopped; the manager ends then.
            let _ = store.wait_until_ready().await;
        };
        (synced.boxed(), (*self).run().boxed())
    }
}

/// The shared informers of one controller manager: at most one cluster-wide watch per kind,
/// created on first request. Controllers take what they need while they are set up; then
/// [`Informers::run`] starts every watch.
pub struct Informers {
    client: Client,
    informers: HashMap<TypeId, Box<dyn SharedInformer>>,
    metadata_hooks: Vec<(MetadataHook, FedResources)>,
}

/// The running side of [`Informers`].
pub struct RunningInformers {
    /// Resolves once every cache holds its first full list (client-go's `WaitForCacheSync`).
    pub synced: BoxFuture<'static, ()>,
    /// Runs every watch; ends only if all of them end (never when there are none).
    pub watches: BoxFuture<'static, ()>,
}

impl Informers {
    /// No informers yet; `client` is the one they will watch with.
    pub fn new(client: Client) -> Informers {
        Informers {
            client,
            informers: HashMap::new(),
            metadata_hooks: Vec::new(),
        }
    }

    /// The API client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The informer of kind `K` (all namespaces), created on first use.
    pub fn get<K>(&mut self) -> &mut Informer<K>
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
        let client = self.client.clone();
        self.informers
            .entry(TypeId::of::<K>())
            .or_insert_with(|| {
                Box::new(Informer::<K>::new(
                    Api::all(client),
                    watcher::Config::default(),
                ))
            })
            .as_any()
            .downcast_mut::<Informer<K>>()
            .expect("informers are keyed by their type")
    }

    /// Takes the informer of kind `K` out (creating it), so a controller can hold several
    /// informers at once while it registers its handlers; give it back with [`Informers::put`].
    pub fn take<K>(&mut self) -> Informer<K>
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
        self.get::<K>();
        let informer = self
            .informers
            .remove(&TypeId::of::<K>())
            .expect("get inserted it");
        let any: Box<dyn Any> = informer.into_any();
        *any.downcast::<Informer<K>>()
            .expect("informers are keyed by their type")
    }

    /// Puts an informer taken with [`Informers::take`] back.
    pub fn put<K>(&mut self, informer: Informer<K>)
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
        self.informers.insert(TypeId::of::<K>(), Box::new(informer));
    }

    /// Feeds `hook` the metadata events of every informer that [`Informers::run`] starts; the
    /// returned set, filled then, says which resources it gets, so the caller watches only
    /// the others itself.
    pub fn feed_metadata(&mut self, hook: MetadataHook) -> FedResources {
        let fed = FedResources::default();
        self.metadata_hooks.push((hook, fed.clone()));
        fed
    }

    /// How many informers there are (one watch each once running).
    pub fn len(&self) -> usize {
        self.informers.len()
    }

    /// True when no controller asked for an informer.
    pub fn is_empty(&self) -> bool {
        self.informers.is_empty()
    }

    /// Starts every informer.
    pub fn run(self) -> RunningInformers {
        let mut informers: Vec<Box<dyn SharedInformer>> = self.informers.into_values().collect();
        let keys: BTreeSet<String> = informers.iter().map(|i| i.resource_key()).collect();
        for (hook, fed) in &self.metadata_hooks {
            for informer in informers.iter_mut() {
                informer.feed_metadata(hook.clone());
            }
            let _ = fed.set(keys.clone());
        }
        let (synced, watches): (Vec<_>, Vec<_>) = informers.into_iter().map(|i| i.start()).unzip();
        let watches = if watches.is_empty() {
            // Nothing to watch is not a watch that ended.
            futures::future::pending().boxed()
        } else {
            futures::future::join_all(watches).map(|_| ()).boxed()
        };
        RunningInformers {
            synced: futures::future::join_all(synced).map(|_| ()).boxed(),
            watches,
        }
    }
}
