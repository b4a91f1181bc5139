//! The behaviour every [`Store`] backend must show, as a reusable test suite.
//!
//! Each check takes a store and a namespace (a key prefix such as `/conformance/run1/`) and
//! panics with a message saying what broke. Checks only touch keys under their namespace and
//! never assume the store is empty or that revisions start at 1, so they can share one etcd.
//! [`run_all`] runs every check in a safe order (compaction last).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{KeyValue, ListOptions, Store, StoreError, WatchEvent, WatchStream};

/// How long a check waits for an expected watch event.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// Settings for [`run_all`].
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// Key prefix every check works under; must end with `/`.
    pub namespace: String,
    /// Successful writes in the concurrent ordering check.
    pub ordering_writes: usize,
    /// Concurrent writer tasks in the ordering check.
    pub ordering_tasks: usize,
    /// If set, the store is configured to send progress events at least this often.
    pub progress_within: Option<Duration>,
}

impl Default for SuiteOptions {
    fn default() -> Self {
        Self {
            namespace: "/conformance/".into(),
            ordering_writes: 10_000,
            ordering_tasks: 8,
            progress_within: None,
        }
    }
}

/// Runs every check against `store`, compaction last (it affects the whole store).
pub async fn run_all(store: Arc<dyn Store>, options: &SuiteOptions) {
    let ns = options.namespace.as_str();
    let s = store.as_ref();
    crud_round_trip(s, &format!("{ns}crud/")).await;
    error_cases(s, &format!("{ns}errors/")).await;
    revisions_strictly_increase(s, &format!("{ns}revisions/")).await;
    list_prefix_isolation(s, &format!("{ns}isolation/")).await;
    pagination(s, &format!("{ns}pages/")).await;
    list_at_revision_then_watch(s, &format!("{ns}listwatch/")).await;
    watch_replays_from_old_revision(s, &format!("{ns}replay/")).await;
    watch_from_now_sees_only_new_changes(s, &format!("{ns}now/")).await;
    watch_delete_carries_prev(s, &format!("{ns}deletes/")).await;
    future_revision_is_rejected(s, &format!("{ns}future/")).await;
    if let Some(within) = options.progress_within {
        idle_watch_gets_progress(s, &format!("{ns}progress/"), within).await;
    }
    ordering_under_concurrency(
        store.clone(),
        &format!("{ns}ordering/"),
        options.ordering_writes,
        options.ordering_tasks,
    )
    .await;
    compaction(s, &format!("{ns}compaction/")).await;
}

fn key(ns: &str, name: &str) -> String {
    format!("{ns}{name}")
}

/// Next non-progress item, failing the check after [`EVENT_TIMEOUT`].
pub async fn next_change(stream: &mut WatchStream, what: &str) -> Result<WatchEvent, StoreError> {
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    loop {
        let item = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap_or_else(|| panic!("watch ended while waiting for {what}"));
        match item {
            Ok(WatchEvent::Progress { .. }) => continue,
            other => return other,
        }
    }
}

async fn expect_changes(stream: &mut WatchStream, count: usize, what: &str) -> Vec<WatchEvent> {
    let mut events = Vec::with_capacity(count);
    for i in 0..count {
        let event = next_change(stream, &format!("{what} (event {} of {count})", i + 1))
            .await
            .unwrap_or_else(|e| panic!("{what}: watch failed: {e}"));
        events.push(event);
    }
    events
}

/// Asserts no change arrives for a short while.
async fn expect_quiet(stream: &mut WatchStream, what: &str) {
    let quiet = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            match stream.next().await {
                Some(Ok(WatchEvent::Progress { .. })) => continue,
                other => return other,
            }
        }
    })
    .await;
    if let Ok(item) = quiet {
        panic!("{what}: expected no further change, got {item:?}");
    }
}

/// create, get, update (with and without precondition), delete.
pub async fn crud_round_trip(store: &dyn Store, ns: &str) {
    let k = key(ns, "a");
    let before = store.current_revision().await.expect("current_revision");
    let created = store.create(&k, b"one".to_vec()).await.expect("create");
    assert_eq!(created.key, k);
    assert_eq!(created.value, b"one");
    assert!(
        created.mod_revision > before,
        "create must bump the revision"
    );
    assert_eq!(created.create_revision, created.mod_revision);
    assert_eq!(store.get(&k).await.expect("get"), Some(created.clone()));

    let updated = store
        .update(&k, b"two".to_vec(), None)
        .await
        .expect("update");
    assert_eq!(updated.create_revision, created.create_revision);
    assert!(updated.mod_revision > created.mod_revision);
    assert_eq!(updated.value, b"two");

    let guarded = store
        .update(&k, b"three".to_vec(), Some(updated.mod_revision))
        .await
        .expect("update with the current revision as precondition");
    assert!(guarded.mod_revision > updated.mod_revision);
    assert_eq!(store.get(&k).await.expect("get").as_ref(), Some(&guarded));

    let (prev, deleted_at) = store
        .delete(&k, Some(guarded.mod_revision))
        .await
        .expect("delete");
    assert_eq!(prev, guarded, "delete returns the last value");
    assert!(deleted_at > guarded.mod_revision);
    assert_eq!(store.get(&k).await.expect("get after delete"), None);
    assert_eq!(
        store.current_revision().await.expect("current_revision"),
        deleted_at
    );

    let again = store
        .create(&k, b"four".to_vec())
        .await
        .expect("re-create after delete");
    assert_eq!(
        again.create_revision, again.mod_revision,
        "a re-created key starts a new life"
    );
    assert!(again.create_revision > deleted_at);
}

/// AlreadyExists, NotFound, Conflict on a stale revision; failed writes change nothing.
pub async fn error_cases(store: &dyn Store, ns: &str) {
    let k = key(ns, "x");
    let missing = key(ns, "missing");
    let v1 = store.create(&k, b"1".to_vec()).await.expect("create");
    match store.create(&k, b"again".to_vec()).await {
        Err(StoreError::AlreadyExists { key }) => assert_eq!(key, k),
        other => panic!("create of an existing key: expected AlreadyExists, got {other:?}"),
    }
    match store.update(&missing, b"v".to_vec(), None).await {
        Err(StoreError::NotFound { key }) => assert_eq!(key, missing),
        other => panic!("update of a missing key: expected NotFound, got {other:?}"),
    }
    match store.update(&missing, b"v".to_vec(), Some(5)).await {
        Err(StoreError::NotFound { .. }) => {}
        other => panic!("guarded update of a missing key: expected NotFound, got {other:?}"),
    }
    match store.delete(&missing, None).await {
        Err(StoreError::NotFound { key }) => assert_eq!(key, missing),
        other => panic!("delete of a missing key: expected NotFound, got {other:?}"),
    }
    assert_eq!(store.get(&missing).await.expect("get missing"), None);

    let v2 = store.update(&k, b"2".to_vec(), None).await.expect("update");
    let rev_before = store.current_revision().await.expect("current_revision");
    match store
        .update(&k, b"stale".to_vec(), Some(v1.mod_revision))
        .await
    {
        Err(StoreError::Conflict {
            key,
            expected,
            current,
        }) => {
            assert_eq!(key, k);
            assert_eq!(expected, v1.mod_revision);
            assert_eq!(current, v2.mod_revision);
        }
        other => panic!("update with a stale revision: expected Conflict, got {other:?}"),
    }
    match store.delete(&k, Some(v1.mod_revision)).await {
        Err(StoreError::Conflict { current, .. }) => assert_eq!(current, v2.mod_revision),
        other => panic!("delete with a stale revision: expected Conflict, got {other:?}"),
    }
    assert_eq!(
        store.current_revision().await.expect("current_revision"),
        rev_before,
        "failed writes must not bump the revision"
    );
    assert_eq!(
        store.get(&k).await.expect("get").map(|kv| kv.value),
        Some(b"2".to_vec())
    );
}

/// Every write gets a revision above all earlier ones; current_revision tracks the last one.
pub async fn revisions_strictly_increase(store: &dyn Store, ns: &str) {
    let mut last = store.current_revision().await.expect("current_revision");
    for i in 0..20 {
        let k = key(ns, &format!("k{}", i % 5));
        let rev = if i < 5 {
            store
                .create(&k, vec![i])
                .await
                .expect("create")
                .mod_revision
        } else if i % 7 == 0 {
            let (_, rev) = store.delete(&k, None).await.expect("delete");
            store.create(&k, vec![i]).await.expect("re-create");
            assert!(store.current_revision().await.unwrap() > rev);
            rev
        } else {
            store
                .update(&k, vec![i], None)
                .await
                .expect("update")
                .mod_revision
        };
        assert!(
            rev > last,
            "revision {rev} is not above the previous {last}"
        );
        last = store.current_revision().await.expect("current_revision");
        assert!(last >= rev);
    }
}

/// A list or watch of `/pods/` never returns `/podsecurity/` (prefixes match by bytes with `/`).
pub async fn list_prefix_isolation(store: &dyn Store, ns: &str) {
    let pods = key(ns, "registry/pods/");
    let podsec = key(ns, "registry/podsecurity/");
    store
        .create(&format!("{pods}default/a"), b"a".to_vec())
        .await
        .unwrap();
    store
        .create(&format!("{podsec}default/b"), b"b".to_vec())
        .await
        .unwrap();
    store
        .create(&key(ns, "registry/pods"), b"bare".to_vec())
        .await
        .unwrap();
    store
        .create(&format!("{pods}kube-system/c"), b"c".to_vec())
        .await
        .unwrap();

    let listed = store
        .list(&pods, &ListOptions::default())
        .await
        .expect("list");
    let keys: Vec<_> = listed.items.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(
        keys,
        vec![format!("{pods}default/a"), format!("{pods}kube-system/c")]
    );
    assert_eq!(listed.remaining, 0);

    let mut watch = store.watch(&pods, 0).await.expect("watch");
    store
        .create(&format!("{podsec}default/z"), b"z".to_vec())
        .await
        .unwrap();
    let inside = store
        .create(&format!("{pods}default/z"), b"z".to_vec())
        .await
        .unwrap();
    match next_change(&mut watch, "the pod created after the podsecurity object").await {
        Ok(WatchEvent::Put { kv, prev: None }) => assert_eq!(kv, inside),
        other => panic!("watch of {pods}: expected only the pod, got {other:?}"),
    }
}

/// limit + start_after + remaining, consistent across pages at the first page's revision.
pub async fn pagination(store: &dyn Store, ns: &str) {
    let prefix = key(ns, "items/");
    for i in 0..25 {
        store
            .create(&format!("{prefix}{i:03}"), format!("v{i}").into_bytes())
            .await
            .unwrap();
    }
    let all = store
        .list(&prefix, &ListOptions::default())
        .await
        .expect("list all");
    assert_eq!(all.items.len(), 25);
    assert_eq!(all.remaining, 0);
    assert!(
        all.items.windows(2).all(|w| w[0].key < w[1].key),
        "keys in order"
    );

    let first = store
        .list(
            &prefix,
            &ListOptions {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .expect("page 1");
    assert_eq!(first.items.len(), 10);
    assert_eq!(first.remaining, 15);
    assert_eq!(first.items[0].key, format!("{prefix}000"));

    // Changes between pages must not show up in later pages read at the first page's revision.
    store.delete(&format!("{prefix}015"), None).await.unwrap();
    store
        .create(&format!("{prefix}012a"), b"new".to_vec())
        .await
        .unwrap();
    store
        .update(&format!("{prefix}020"), b"changed".to_vec(), None)
        .await
        .unwrap();

    let mut collected = first.items.clone();
    let mut last = first;
    let mut pages = 1;
    while last.remaining > 0 {
        let page = store
            .list(
                &prefix,
                &ListOptions {
                    limit: 10,
                    start_after: collected.last().map(|kv| kv.key.clone()),
                    revision: last.revision,
                },
            )
            .await
            .expect("next page");
        assert_eq!(
            page.revision, last.revision,
            "pages keep the first revision"
        );
        assert_eq!(page.remaining, last.remaining - page.items.len());
        collected.extend(page.items.iter().cloned());
        last = page;
        pages += 1;
    }
    assert_eq!(pages, 3);
    assert_eq!(
        collected, all.items,
        "pages at one revision equal one full list"
    );

    let latest = store.list(&prefix, &ListOptions::default()).await.unwrap();
    assert_eq!(latest.items.len(), 25);
    assert!(latest
        .items
        .iter()
        .any(|kv| kv.key == format!("{prefix}012a")));
    assert!(!latest
        .items
        .iter()
        .any(|kv| kv.key == format!("{prefix}015")));
}

/// A list at R, then a watch from R, sees exactly the changes after R.
pub async fn list_at_revision_then_watch(store: &dyn Store, ns: &str) {
    let a = key(ns, "a");
    let b = key(ns, "b");
    let c = key(ns, "c");
    let a1 = store.create(&a, b"a1".to_vec()).await.unwrap();
    let b1 = store.create(&b, b"b1".to_vec()).await.unwrap();
    let snapshot = store.list(ns, &ListOptions::default()).await.unwrap();
    let r = snapshot.revision;
    assert_eq!(snapshot.items, vec![a1.clone(), b1.clone()]);

    let a2 = store.update(&a, b"a2".to_vec(), None).await.unwrap();
    let (b_prev, b_deleted) = store.delete(&b, None).await.unwrap();
    let c1 = store.create(&c, b"c1".to_vec()).await.unwrap();
    store.delete(&a, None).await.unwrap();
    let a3 = store.create(&a, b"a3".to_vec()).await.unwrap();

    let at_r = store
        .list(
            ns,
            &ListOptions {
                revision: r,
                ..Default::default()
            },
        )
        .await
        .expect("list at an older revision");
    assert_eq!(at_r.items, snapshot.items, "list at R shows the state at R");
    assert_eq!(at_r.revision, r);

    let mut watch = store.watch(ns, r).await.expect("watch from R");
    let events = expect_changes(&mut watch, 5, "changes after R").await;
    assert_eq!(
        events[0],
        WatchEvent::Put {
            kv: a2.clone(),
            prev: Some(a1.clone())
        }
    );
    assert_eq!(
        events[1],
        WatchEvent::Delete {
            prev: b_prev,
            revision: b_deleted
        }
    );
    assert_eq!(events[2], WatchEvent::Put { kv: c1, prev: None });
    assert!(matches!(&events[3], WatchEvent::Delete { prev, .. } if *prev == a2));
    assert_eq!(events[4], WatchEvent::Put { kv: a3, prev: None });
    expect_quiet(&mut watch, "watch from R after the last change").await;
}

/// A watch from an old revision replays history, then continues live with no duplicate.
pub async fn watch_replays_from_old_revision(store: &dyn Store, ns: &str) {
    // A write first, so the start revision is not 0 (which means "from now").
    let start = store
        .create(&key(ns, "before"), b"b".to_vec())
        .await
        .unwrap()
        .mod_revision;
    let mut written = Vec::new();
    for i in 0..30 {
        written.push(
            store
                .create(&key(ns, &format!("k{i:02}")), vec![i])
                .await
                .unwrap(),
        );
    }
    let mut watch = store
        .watch(ns, start)
        .await
        .expect("watch from an old revision");
    let live = store.create(&key(ns, "live"), b"l".to_vec()).await.unwrap();
    let events = expect_changes(&mut watch, 31, "replayed then live events").await;
    for (event, kv) in events.iter().zip(written.iter().chain([&live])) {
        assert_eq!(
            event,
            &WatchEvent::Put {
                kv: kv.clone(),
                prev: None
            }
        );
    }
    expect_quiet(&mut watch, "replay watch after the live event").await;

    // Starting in the middle skips what came before.
    let mut mid = store.watch(ns, written[19].mod_revision).await.unwrap();
    let first = next_change(&mut mid, "the 21st create").await.unwrap();
    assert_eq!(first.revision(), written[20].mod_revision);
}

/// A watch from 0 starts after the current revision.
pub async fn watch_from_now_sees_only_new_changes(store: &dyn Store, ns: &str) {
    store.create(&key(ns, "old"), b"o".to_vec()).await.unwrap();
    let mut watch = store.watch(ns, 0).await.expect("watch from now");
    let new = store.create(&key(ns, "new"), b"n".to_vec()).await.unwrap();
    match next_change(&mut watch, "the create after the watch started").await {
        Ok(WatchEvent::Put { kv, .. }) => assert_eq!(kv, new),
        other => panic!("watch from now: expected the new key, got {other:?}"),
    }
}

/// Delete events carry the last value and the deletion revision.
pub async fn watch_delete_carries_prev(store: &dyn Store, ns: &str) {
    let k = key(ns, "gone");
    store.create(&k, b"v1".to_vec()).await.unwrap();
    let last = store.update(&k, b"v2".to_vec(), None).await.unwrap();
    let mut watch = store.watch(ns, 0).await.unwrap();
    let (prev, rev) = store.delete(&k, None).await.unwrap();
    assert_eq!(prev, last);
    match next_change(&mut watch, "the delete").await {
        Ok(WatchEvent::Delete {
            prev: seen,
            revision,
        }) => {
            assert_eq!(seen, last, "delete event carries the last value");
            assert_eq!(revision, rev);
        }
        other => panic!("expected a delete event, got {other:?}"),
    }
}

/// Listing at a revision that does not exist yet fails with FutureRevision.
pub async fn future_revision_is_rejected(store: &dyn Store, ns: &str) {
    store.create(&key(ns, "k"), b"v".to_vec()).await.unwrap();
    let current = store.current_revision().await.unwrap();
    match store
        .list(
            ns,
            &ListOptions {
                revision: current + 1000,
                ..Default::default()
            },
        )
        .await
    {
        Err(StoreError::FutureRevision { requested, .. }) => assert_eq!(requested, current + 1000),
        other => panic!("list at a future revision: expected FutureRevision, got {other:?}"),
    }
}

/// An idle watch gets a progress event at or after the current revision.
pub async fn idle_watch_gets_progress(store: &dyn Store, ns: &str, within: Duration) {
    store.create(&key(ns, "k"), b"v".to_vec()).await.unwrap();
    let current = store.current_revision().await.unwrap();
    let mut watch = store.watch(ns, 0).await.unwrap();
    let item = tokio::time::timeout(within, watch.next())
        .await
        .unwrap_or_else(|_| panic!("no progress event within {within:?}"));
    match item {
        Some(Ok(WatchEvent::Progress { revision })) => {
            assert!(
                revision >= current,
                "progress {revision} is behind {current}"
            )
        }
        other => panic!("expected a progress event, got {other:?}"),
    }
}

/// Compaction: older revisions fail with Compacted, newer ones keep working.
pub async fn compaction(store: &dyn Store, ns: &str) {
    let k = key(ns, "k");
    let first = store.create(&k, b"0".to_vec()).await.unwrap();
    for i in 1..5u8 {
        store.update(&k, vec![i], None).await.unwrap();
    }
    let compact_at = store.current_revision().await.unwrap();
    let after_compaction = store.update(&k, b"5".to_vec(), None).await.unwrap();
    store.compact(compact_at).await.expect("compact");
    store
        .compact(compact_at)
        .await
        .expect("compacting the same revision again is a no-op");

    let old = ListOptions {
        revision: first.mod_revision,
        ..Default::default()
    };
    match store.list(ns, &old).await {
        Err(StoreError::Compacted {
            requested,
            compacted,
        }) => {
            assert_eq!(requested, first.mod_revision);
            assert!(
                compacted >= compact_at,
                "compacted {compacted} < {compact_at}"
            );
        }
        other => panic!("list below the compacted revision: expected Compacted, got {other:?}"),
    }
    expect_watch_compacted(store, ns, first.mod_revision).await;

    let at = store
        .list(
            ns,
            &ListOptions {
                revision: compact_at,
                ..Default::default()
            },
        )
        .await
        .expect("list at the compacted revision still works");
    assert_eq!(at.items.len(), 1);
    assert_eq!(at.items[0].value, vec![4]);

    let mut watch = store
        .watch(ns, compact_at)
        .await
        .expect("watch from the compacted revision still works");
    match next_change(&mut watch, "the update after the compacted revision").await {
        Ok(WatchEvent::Put { kv, .. }) => assert_eq!(kv, after_compaction),
        other => panic!("expected the update after compaction, got {other:?}"),
    }
    match store
        .compact(store.current_revision().await.unwrap() + 100)
        .await
    {
        Err(StoreError::FutureRevision { .. }) => {}
        other => panic!("compact in the future: expected FutureRevision, got {other:?}"),
    }
}

/// A watch from a compacted revision fails, either at once or as its first item.
pub async fn expect_watch_compacted(store: &dyn Store, ns: &str, after: i64) {
    match store.watch(ns, after).await {
        Err(StoreError::Compacted { .. }) => {}
        Err(other) => {
            panic!("watch from compacted revision {after}: expected Compacted, got {other}")
        }
        Ok(mut stream) => match next_change(&mut stream, "the compaction error").await {
            Err(StoreError::Compacted { .. }) => {}
            other => {
                panic!("watch from compacted revision {after}: expected Compacted, got {other:?}")
            }
        },
    }
}

/// `writes` successful writes (create/update/delete over ~100 keys) from `tasks` concurrent
/// tasks while one watcher started at a listed revision R receives every change exactly once,
/// in strictly increasing revision order, with consistent `prev` values; replaying the events
/// over the list at R gives the final list.
pub async fn ordering_under_concurrency(
    store: Arc<dyn Store>,
    ns: &str,
    writes: usize,
    tasks: usize,
) {
    const KEYS: usize = 100;
    for i in (0..KEYS).step_by(2) {
        store
            .create(&key(ns, &format!("k{i:03}")), b"seed".to_vec())
            .await
            .unwrap();
    }
    let start = store.list(ns, &ListOptions::default()).await.unwrap();
    let mut watch = store.watch(ns, start.revision).await.unwrap();

    let done = Arc::new(AtomicUsize::new(0));
    let revisions = Arc::new(Mutex::new(Vec::with_capacity(writes + tasks)));
    let mut writers = Vec::new();
    for task in 0..tasks {
        let (store, ns, done, revisions) = (
            store.clone(),
            ns.to_owned(),
            done.clone(),
            revisions.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(task as u64);
            while done.load(Ordering::Relaxed) < writes {
                let k = key(&ns, &format!("k{:03}", rng.random_range(0..KEYS)));
                let value = format!("t{task}-{}", rng.random::<u32>()).into_bytes();
                let result = match store.get(&k).await.expect("get") {
                    None => store.create(&k, value).await.map(|kv| kv.mod_revision),
                    Some(cur) if rng.random_bool(0.3) => store
                        .delete(&k, Some(cur.mod_revision))
                        .await
                        .map(|(_, rev)| rev),
                    Some(cur) => store
                        .update(&k, value, Some(cur.mod_revision))
                        .await
                        .map(|kv| kv.mod_revision),
                };
                match result {
                    Ok(rev) => {
                        revisions.lock().unwrap().push(rev);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(
                        StoreError::AlreadyExists { .. }
                        | StoreError::NotFound { .. }
                        | StoreError::Conflict { .. },
                    ) => {}
                    Err(other) => panic!("writer {task}: {other}"),
                }
            }
        }));
    }
    let mut writers = futures::future::join_all(writers);

    let mut events: Vec<WatchEvent> = Vec::with_capacity(writes + tasks);
    let mut final_revision: Option<i64> = None;
    let mut seen_upto = start.revision;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while final_revision.is_none_or(|f| seen_upto < f) {
        tokio::select! {
            item = watch.next() => match item {
                Some(Ok(WatchEvent::Progress { revision })) => seen_upto = seen_upto.max(revision),
                Some(Ok(event)) => {
                    assert!(
                        event.revision() > seen_upto,
                        "event at {} after {seen_upto}: out of order or duplicate",
                        event.revision()
                    );
                    seen_upto = event.revision();
                    events.push(event);
                }
                Some(Err(e)) => panic!("ordering watch failed after {} events: {e}", events.len()),
                None => panic!("ordering watch ended after {} events", events.len()),
            },
            results = &mut writers, if final_revision.is_none() => {
                for r in results {
                    r.expect("writer task panicked");
                }
                final_revision = Some(store.current_revision().await.unwrap());
            }
            _ = tokio::time::sleep_until(deadline) => panic!(
                "ordering check: only {} events after 120 s (seen up to {seen_upto}, final {final_revision:?})",
                events.len()
            ),
        }
    }
    let final_revision = final_revision.unwrap();

    let mut expected: Vec<i64> = revisions.lock().unwrap().clone();
    expected.sort_unstable();
    let seen: Vec<i64> = events.iter().map(WatchEvent::revision).collect();
    assert!(expected.len() >= writes);
    assert_eq!(
        seen.len(),
        expected.len(),
        "watch saw {} events for {} successful writes",
        seen.len(),
        expected.len()
    );
    assert_eq!(
        seen, expected,
        "watch events are exactly the successful writes, in order"
    );
    assert_eq!(seen.last().copied(), Some(final_revision));
    assert_eq!(
        seen.iter().collect::<BTreeSet<_>>().len(),
        seen.len(),
        "no duplicates"
    );

    let mut state: BTreeMap<String, KeyValue> = start
        .items
        .into_iter()
        .map(|kv| (kv.key.clone(), kv))
        .collect();
    for event in events {
        match event {
            WatchEvent::Put { kv, prev } => {
                assert_eq!(
                    prev.as_ref(),
                    state.get(&kv.key),
                    "prev of the put at {}",
                    kv.mod_revision
                );
                state.insert(kv.key.clone(), kv);
            }
            WatchEvent::Delete { prev, revision } => {
                let removed = state.remove(&prev.key);
                assert_eq!(
                    removed.as_ref(),
                    Some(&prev),
                    "prev of the delete at {revision}"
                );
            }
            WatchEvent::Progress { .. } => unreachable!("progress events were filtered"),
        }
    }
    let listed = store.list(ns, &ListOptions::default()).await.unwrap();
    assert_eq!(listed.revision, final_revision);
    let rebuilt: Vec<KeyValue> = state.into_values().collect();
    assert_eq!(
        rebuilt, listed.items,
        "state rebuilt from events equals the list"
    );
}
