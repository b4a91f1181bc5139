use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use super::*;
use crate::conformance;
use crate::WatchEvent;

async fn fresh() -> (tempfile::TempDir, EmbeddedStore) {
    fresh_with(EmbeddedOptions::default()).await
}

async fn fresh_with(options: EmbeddedOptions) -> (tempfile::TempDir, EmbeddedStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open_with(dir.path().join("state/store.db"), options)
        .await
        .unwrap();
    (dir, store)
}

const NS: &str = "/registry/";

/// Creates `/k/0000`.. with 100 concurrent writers at a time (grouped commits keep it fast).
async fn create_many(s: &EmbeddedStore, count: usize) {
    for chunk in (0..count).collect::<Vec<_>>().chunks(100) {
        futures::future::join_all(chunk.iter().map(|i| {
            let s = s.clone();
            async move { s.create(&format!("/k/{i:04}"), vec![1]).await.unwrap() }
        }))
        .await;
    }
}

// --- the conformance suite, one test per check so they run in parallel ---

#[tokio::test]
async fn conformance_crud_round_trip() {
    let (_d, s) = fresh().await;
    conformance::crud_round_trip(&s, NS).await;
}

#[tokio::test]
async fn conformance_error_cases() {
    let (_d, s) = fresh().await;
    conformance::error_cases(&s, NS).await;
}

#[tokio::test]
async fn conformance_revisions_strictly_increase() {
    let (_d, s) = fresh().await;
    conformance::revisions_strictly_increase(&s, NS).await;
}

#[tokio::test]
async fn conformance_list_prefix_isolation() {
    let (_d, s) = fresh().await;
    conformance::list_prefix_isolation(&s, NS).await;
}

#[tokio::test]
async fn conformance_pagination() {
    let (_d, s) = fresh().await;
    conformance::pagination(&s, NS).await;
}

#[tokio::test]
async fn conformance_list_at_revision_then_watch() {
    let (_d, s) = fresh().await;
    conformance::list_at_revision_then_watch(&s, NS).await;
}

#[tokio::test]
async fn conformance_watch_replays_from_old_revision() {
    let (_d, s) = fresh().await;
    conformance::watch_replays_from_old_revision(&s, NS).await;
}

#[tokio::test]
async fn conformance_watch_from_now() {
    let (_d, s) = fresh().await;
    conformance::watch_from_now_sees_only_new_changes(&s, NS).await;
}

#[tokio::test]
async fn conformance_watch_delete_carries_prev() {
    let (_d, s) = fresh().await;
    conformance::watch_delete_carries_prev(&s, NS).await;
}

#[tokio::test]
async fn conformance_future_revision_is_rejected() {
    let (_d, s) = fresh().await;
    conformance::future_revision_is_rejected(&s, NS).await;
}

#[tokio::test]
async fn conformance_compaction() {
    let (_d, s) = fresh().await;
    conformance::compaction(&s, NS).await;
}

#[tokio::test]
async fn conformance_idle_watch_gets_progress() {
    let (_d, s) = fresh_with(EmbeddedOptions {
        progress_interval: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    conformance::idle_watch_gets_progress(&s, NS, Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_ordering_10k_writes() {
    let (_d, s) = fresh().await;
    conformance::ordering_under_concurrency(Arc::new(s), NS, 10_000, 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_run_all_in_one_store() {
    let (_d, s) = fresh_with(EmbeddedOptions {
        progress_interval: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    let options = conformance::SuiteOptions {
        namespace: "/suite/".into(),
        ordering_writes: 500,
        ordering_tasks: 4,
        progress_within: Some(Duration::from_secs(2)),
    };
    conformance::run_all(Arc::new(s), &options).await;
}

// --- embedded-specific behaviour ---

#[tokio::test]
async fn open_creates_parent_dirs_and_private_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/store.db");
    let store = EmbeddedStore::open(&path).await.unwrap();
    assert_eq!(store.path(), path);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let parent_mode = std::fs::metadata(dir.path().join("a/b"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(parent_mode & 0o077, 0, "new directories are private");
}

#[tokio::test]
async fn open_tightens_mode_of_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    drop(EmbeddedStore::open(&path).await.unwrap());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    drop(EmbeddedStore::open(&path).await.unwrap());
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[tokio::test]
async fn data_and_revisions_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = EmbeddedStore::open(&path).await.unwrap();
    store.create("/a", b"1".to_vec()).await.unwrap();
    let b = store.create("/b", b"2".to_vec()).await.unwrap();
    store.update("/a", b"3".to_vec(), None).await.unwrap();
    store.compact(2).await.unwrap();
    drop(store);

    let store = EmbeddedStore::open(&path).await.unwrap();
    assert_eq!(store.current_revision().await.unwrap(), 3);
    assert_eq!(store.compacted_revision().await.unwrap(), 2);
    assert_eq!(store.get("/b").await.unwrap(), Some(b));
    let next = store.create("/c", b"4".to_vec()).await.unwrap();
    assert_eq!(next.mod_revision, 4, "revisions continue after a restart");
    // History kept across the restart replays from the log.
    let mut watch = store.watch("/", 2).await.unwrap();
    let first = conformance::next_change(&mut watch, "replayed update")
        .await
        .unwrap();
    assert_eq!(first.revision(), 3);
}

#[tokio::test]
async fn second_open_of_same_file_is_refused_with_hint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let _first = EmbeddedStore::open(&path).await.unwrap();
    let err = EmbeddedStore::open(&path).await.unwrap_err().to_string();
    assert!(err.contains("store.db"), "{err}");
    assert!(err.contains("open"), "{err}");
}

#[tokio::test]
async fn newer_layout_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    drop(EmbeddedStore::open(&path).await.unwrap());
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert(META_SCHEMA, SCHEMA_VERSION + 1)
            .unwrap();
        txn.commit().unwrap();
    }
    let err = EmbeddedStore::open(&path).await.unwrap_err().to_string();
    assert!(err.contains("layout version 2"), "{err}");
}

#[tokio::test]
async fn unusable_path_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let err = EmbeddedStore::open(blocker.join("store.db"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("file/store.db"), "{err}");
}

#[tokio::test]
async fn list_at_revision_reconstructs_deleted_and_recreated_keys() {
    let (_d, s) = fresh().await;
    s.create("/p/a", b"a1".to_vec()).await.unwrap(); // 1
    s.create("/p/b", b"b1".to_vec()).await.unwrap(); // 2
    s.create("/q/x", b"x1".to_vec()).await.unwrap(); // 3
    s.update("/p/a", b"a2".to_vec(), None).await.unwrap(); // 4
    s.delete("/p/b", None).await.unwrap(); // 5
    s.create("/p/b", b"b2".to_vec()).await.unwrap(); // 6
    s.create("/p/c", b"c1".to_vec()).await.unwrap(); // 7
    let at = |rev| ListOptions {
        revision: rev,
        ..Default::default()
    };
    let values = |r: ListResult| -> Vec<(String, Vec<u8>)> {
        r.items.into_iter().map(|kv| (kv.key, kv.value)).collect()
    };
    assert_eq!(
        values(s.list("/p/", &at(3)).await.unwrap()),
        vec![
            ("/p/a".into(), b"a1".to_vec()),
            ("/p/b".into(), b"b1".to_vec())
        ]
    );
    assert_eq!(
        values(s.list("/p/", &at(5)).await.unwrap()),
        vec![("/p/a".into(), b"a2".to_vec())]
    );
    let at6 = s.list("/p/", &at(6)).await.unwrap();
    assert_eq!(
        at6.items[1].create_revision, 6,
        "re-created key has its new create revision"
    );
    let paged = s
        .list(
            "/p/",
            &ListOptions {
                limit: 1,
                start_after: Some("/p/a".into()),
                revision: 3,
            },
        )
        .await
        .unwrap();
    assert_eq!(values(paged.clone()), vec![("/p/b".into(), b"b1".to_vec())]);
    assert_eq!(paged.remaining, 0);
}

#[tokio::test]
async fn concurrent_writes_are_grouped_but_each_gets_a_revision() {
    let (_d, s) = fresh().await;
    let writes = (0..200).map(|i| {
        let s = s.clone();
        async move {
            s.create(&format!("/k/{i:03}"), vec![1])
                .await
                .unwrap()
                .mod_revision
        }
    });
    let mut revs = futures::future::join_all(writes).await;
    revs.sort_unstable();
    assert_eq!(revs, (1..=200).collect::<Vec<i64>>());
    assert_eq!(s.current_revision().await.unwrap(), 200);
}

#[tokio::test]
async fn failed_precondition_in_a_group_does_not_fail_the_others() {
    let (_d, s) = fresh().await;
    s.create("/dup", vec![0]).await.unwrap();
    let results = futures::future::join_all((0..50).map(|i| {
        let s = s.clone();
        async move {
            if i % 2 == 0 {
                s.create("/dup", vec![1]).await.map(|_| ())
            } else {
                s.create(&format!("/ok/{i}"), vec![1]).await.map(|_| ())
            }
        }
    }))
    .await;
    for (i, r) in results.iter().enumerate() {
        if i % 2 == 0 {
            assert!(
                matches!(r, Err(StoreError::AlreadyExists { .. })),
                "{i}: {r:?}"
            );
        } else {
            assert!(r.is_ok(), "{i}: {r:?}");
        }
    }
    assert_eq!(s.current_revision().await.unwrap(), 26);
}

#[tokio::test]
async fn lagging_watcher_catches_up_from_the_log_without_blocking_writers() {
    // A one-batch live buffer: a watcher that is not polled falls behind at once.
    let (_d, s) = fresh_with(EmbeddedOptions {
        watch_buffer: 1,
        ..Default::default()
    })
    .await;
    let mut watch = s.watch("/", 0).await.unwrap();
    // Writers finish although nobody reads the watch.
    create_many(&s, 300).await;
    for rev in 1..=300 {
        let event = conformance::next_change(&mut watch, "lagged event")
            .await
            .unwrap();
        assert_eq!(event.revision(), rev);
    }
}

#[tokio::test]
async fn lagging_watcher_behind_compaction_gets_compacted() {
    let (_d, s) = fresh_with(EmbeddedOptions {
        watch_buffer: 1,
        ..Default::default()
    })
    .await;
    let mut watch = s.watch("/", 0).await.unwrap();
    // Nobody reads the watch while 3000 writes land and history below 2500 is compacted: the
    // watcher can buffer only a few hundred events, then must replay from a log that now
    // starts at 2500.
    create_many(&s, 3000).await;
    s.compact(2500).await.unwrap();
    let mut delivered = 0;
    loop {
        match conformance::next_change(&mut watch, "events or the compaction error").await {
            Ok(event) => {
                delivered += 1;
                assert_eq!(event.revision(), delivered, "no gap before the error");
            }
            Err(StoreError::Compacted { compacted, .. }) => {
                assert_eq!(compacted, 2500);
                break;
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert!(delivered < 2499, "delivered {delivered} events");
}

#[tokio::test]
async fn watch_from_compacted_revision_fails_at_once() {
    let (_d, s) = fresh().await;
    for i in 0..10 {
        s.create(&format!("/k/{i}"), vec![1]).await.unwrap();
    }
    s.compact(6).await.unwrap();
    match s.watch("/", 4).await {
        Err(StoreError::Compacted {
            requested: 4,
            compacted: 6,
        }) => {}
        Err(other) => panic!("unexpected {other}"),
        Ok(_) => panic!("watch from a compacted revision must fail"),
    }
    // after = compacted - 1 still has every needed entry (6..).
    let mut w = s.watch("/", 5).await.unwrap();
    assert_eq!(
        conformance::next_change(&mut w, "rev 6")
            .await
            .unwrap()
            .revision(),
        6
    );
}

#[tokio::test]
async fn compaction_policy_keeps_recent_history() {
    let (_d, s) = fresh().await;
    for i in 0..50 {
        s.create(&format!("/k/{i}"), vec![1]).await.unwrap();
    }
    let young = CompactionPolicy {
        keep_revisions: 10,
        keep_for: Duration::from_secs(3600),
        interval: Duration::from_secs(60),
    };
    assert_eq!(
        s.compact_by_policy(&young).await.unwrap(),
        None,
        "nothing older than an hour"
    );
    let by_count = CompactionPolicy {
        keep_revisions: 10,
        keep_for: Duration::ZERO,
        interval: Duration::from_secs(60),
    };
    assert_eq!(s.compact_by_policy(&by_count).await.unwrap(), Some(41));
    assert_eq!(s.compacted_revision().await.unwrap(), 41);
    assert_eq!(s.compact_by_policy(&by_count).await.unwrap(), None);
    let listed = s
        .list(
            "/",
            &ListOptions {
                revision: 41,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 41);
}

#[tokio::test]
async fn spawned_compactor_runs_on_its_interval_and_stops_with_the_store() {
    let (_d, s) = fresh().await;
    for i in 0..20 {
        s.create(&format!("/k/{i}"), vec![1]).await.unwrap();
    }
    let handle = s.spawn_compactor(CompactionPolicy {
        keep_revisions: 5,
        keep_for: Duration::ZERO,
        interval: Duration::from_millis(50),
    });
    let mut compacted = 0;
    for _ in 0..250 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        compacted = s.compacted_revision().await.unwrap();
        if compacted != 0 {
            break;
        }
    }
    assert_eq!(compacted, 16);
    drop(s);
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .expect("compactor stops after the store is dropped")
        .unwrap();
}

#[tokio::test]
async fn dropping_the_store_ends_watches_with_an_error() {
    let (_d, s) = fresh().await;
    let mut watch = s.watch("/", 0).await.unwrap();
    drop(s);
    let item = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap();
    match item {
        Some(Err(StoreError::Backend(msg))) => assert!(msg.contains("closed"), "{msg}"),
        other => panic!("expected a closed error, got {other:?}"),
    }
}

#[tokio::test]
async fn progress_reports_the_latest_revision_seen_even_for_other_prefixes() {
    let (_d, s) = fresh_with(EmbeddedOptions {
        progress_interval: Duration::from_millis(50),
        ..Default::default()
    })
    .await;
    let mut watch = s.watch("/mine/", 0).await.unwrap();
    s.create("/other/a", vec![1]).await.unwrap();
    s.create("/other/b", vec![1]).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let item = tokio::time::timeout_at(deadline, watch.next())
            .await
            .unwrap();
        match item {
            Some(Ok(WatchEvent::Progress { revision: 2 })) => break,
            Some(Ok(WatchEvent::Progress { revision })) if revision < 2 => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn negative_revisions_are_rejected() {
    let (_d, s) = fresh().await;
    let err = s
        .list(
            "/",
            &ListOptions {
                revision: -1,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("revision -1 is invalid"), "{err}");
    assert!(s.watch("/", -3).await.is_err());
}

#[tokio::test]
async fn zero_sized_buffers_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let err = EmbeddedStore::open_with(
        dir.path().join("s.db"),
        EmbeddedOptions {
            watch_buffer: 0,
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("watch_buffer"), "{err}");
}
