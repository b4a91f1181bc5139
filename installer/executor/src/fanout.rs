//! Bounded parallel fan-out over hosts.

use std::future::Future;

use futures::stream::{self, StreamExt};

/// Runs `work` for every host, at most `concurrency` at a time, and returns the results in the
/// order of `hosts` (not in completion order). A `concurrency` of 0 is treated as 1.
///
/// Errors are values here: `work` usually returns a `Result`, and one host failing does not stop
/// the others; the caller decides what a failure on one host means for the run.
pub async fn run_on_all<'a, H, T, F, Fut>(hosts: &'a [H], concurrency: usize, work: F) -> Vec<T>
where
    F: Fn(&'a H) -> Fut,
    Fut: Future<Output = T>,
{
    stream::iter(hosts.iter().map(work))
        .buffered(concurrency.max(1))
        .collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn results_keep_host_order_and_concurrency_is_bounded() {
        let hosts: Vec<u64> = vec![50, 10, 40, 0, 30, 20];
        let running = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let results = run_on_all(&hosts, 2, |delay| {
            let running = &running;
            let peak = &peak;
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(*delay)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                *delay * 2
            }
        })
        .await;
        assert_eq!(results, vec![100, 20, 80, 0, 60, 40]);
        assert_eq!(peak.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn work_runs_in_parallel() {
        let hosts = vec![(); 4];
        let start = std::time::Instant::now();
        run_on_all(&hosts, 4, |_| {
            tokio::time::sleep(Duration::from_millis(200))
        })
        .await;
        assert!(start.elapsed() < Duration::from_millis(600));
    }

    #[tokio::test]
    async fn zero_concurrency_still_runs_everything() {
        let hosts = vec![1, 2, 3];
        let results = run_on_all(&hosts, 0, |h| async move { *h }).await;
        assert_eq!(results, vec![1, 2, 3]);
    }
}
