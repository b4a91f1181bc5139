//! The `tracing` subscriber every component logs through.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Logs to stderr (journald and the container runtime pick it up), filtered by `RUST_LOG`
/// (default `info`), with colours only on a terminal. A second call keeps the first
/// subscriber.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
