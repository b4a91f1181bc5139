//! Throughput of the embedded store: `cargo bench -p kinit-store`.
//!
//! A plain timing harness rather than criterion: each figure is one workload over a growing
//! database (creates cannot repeat a key), which criterion's repeat-the-closure model does not
//! fit, and the operator-facing numbers wanted are plain ops/s.

use std::time::{Duration, Instant};

use futures::StreamExt;
use kinit_store::{EmbeddedStore, ListOptions, Store, WatchEvent};

const VALUE: &[u8] = &[b'x'; 1024];

async fn fresh(dir: &tempfile::TempDir, name: &str) -> EmbeddedStore {
    EmbeddedStore::open(dir.path().join(name)).await.unwrap()
}

/// `writers` tasks each create `per_writer` keys; returns creates/s.
async fn creates(store: &EmbeddedStore, prefix: &str, writers: usize, per_writer: usize) -> f64 {
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            let prefix = prefix.to_owned();
            tokio::spawn(async move {
                for i in 0..per_writer {
                    store
                        .create(&format!("{prefix}{w:02}-{i:06}"), VALUE.to_vec())
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (writers * per_writer) as f64 / started.elapsed().as_secs_f64()
}

/// Mean time of a full list of `prefix`.
async fn list_time(store: &EmbeddedStore, prefix: &str, expect: usize, rounds: u32) -> Duration {
    let started = Instant::now();
    for _ in 0..rounds {
        let listed = store.list(prefix, &ListOptions::default()).await.unwrap();
        assert_eq!(listed.items.len(), expect);
    }
    started.elapsed() / rounds
}

/// Opens `watchers` watches after `after`, lets `produce` run, and returns the time until every
/// watcher has received `events` changes.
async fn deliver(
    store: &EmbeddedStore,
    prefix: &str,
    after: i64,
    watchers: usize,
    events: usize,
    produce: impl std::future::Future<Output = ()>,
) -> Duration {
    let mut streams = Vec::new();
    for _ in 0..watchers {
        streams.push(store.watch(prefix, after).await.unwrap());
    }
    let started = Instant::now();
    let consumers: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                let mut seen = 0;
                while seen < events {
                    match stream.next().await {
                        Some(Ok(WatchEvent::Progress { .. })) => {}
                        Some(Ok(_)) => seen += 1,
                        other => panic!("watch ended early: {other:?}"),
                    }
                }
            })
        })
        .collect();
    produce.await;
    for c in consumers {
        c.await.unwrap();
    }
    started.elapsed()
}

async fn updates(store: &EmbeddedStore, prefix: &str, writers: usize, per_writer: usize) {
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            let key = format!("{prefix}{w:02}");
            tokio::spawn(async move {
                store.create(&key, VALUE.to_vec()).await.unwrap();
                for _ in 1..per_writer {
                    store.update(&key, VALUE.to_vec(), None).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported by this harness.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    println!("embedded store benchmark (1 KiB values, fsync on every commit)");
    println!("{:<44} {:>14}", "workload", "result");

    let store = fresh(&dir, "creates.db").await;
    let single = creates(&store, "/single/", 1, 2_000).await;
    println!("{:<44} {:>10.0} /s", "creates, 1 writer", single);
    let four = creates(&store, "/four/", 4, 2_000).await;
    println!("{:<44} {:>10.0} /s", "creates, 4 concurrent writers", four);
    let many = creates(&store, "/many/", 32, 500).await;
    println!("{:<44} {:>10.0} /s", "creates, 32 concurrent writers", many);
    drop(store);

    let store = fresh(&dir, "list.db").await;
    creates(&store, "/list1k/", 10, 100).await;
    creates(&store, "/list10k/", 50, 200).await;
    let t1k = list_time(&store, "/list1k/", 1_000, 50).await;
    println!(
        "{:<44} {:>10.2} ms ({:.0} keys/s)",
        "list of 1,000 keys",
        t1k.as_secs_f64() * 1e3,
        1_000.0 / t1k.as_secs_f64()
    );
    let t10k = list_time(&store, "/list10k/", 10_000, 10).await;
    println!(
        "{:<44} {:>10.2} ms ({:.0} keys/s)",
        "list of 10,000 keys",
        t10k.as_secs_f64() * 1e3,
        10_000.0 / t10k.as_secs_f64()
    );
    drop(store);

    const EVENTS: usize = 8_000;
    for watchers in [1, 10] {
        let store = fresh(&dir, &format!("watch-live-{watchers}.db")).await;
        let elapsed = deliver(
            &store,
            "/w/",
            0,
            watchers,
            EVENTS,
            updates(&store, "/w/", 16, EVENTS / 16),
        )
        .await;
        println!(
            "{:<44} {:>10.0} /s per watcher, {:.0} /s total",
            format!("watch, live while writing, {watchers} watcher(s)"),
            EVENTS as f64 / elapsed.as_secs_f64(),
            (EVENTS * watchers) as f64 / elapsed.as_secs_f64()
        );

        let start = 1;
        let elapsed = deliver(&store, "/w/", start, watchers, EVENTS - 1, async {}).await;
        println!(
            "{:<44} {:>10.0} /s per watcher, {:.0} /s total",
            format!("watch, replay from the log, {watchers} watcher(s)"),
            (EVENTS - 1) as f64 / elapsed.as_secs_f64(),
            ((EVENTS - 1) * watchers) as f64 / elapsed.as_secs_f64()
        );
    }
}
