//! The host-side programs in the one binary (`kinit apiserver`, …): logging set-up and a
//! runtime around each component's own `run`.

use std::future::Future;
use std::process::ExitCode;

use anyhow::Context;

/// Sets up logging to stderr (journald picks it up) filtered by `RUST_LOG`, default `info`,
/// then runs `component` on a multi-threaded runtime until it returns.
pub fn run<F, E>(name: &str, component: F) -> anyhow::Result<ExitCode>
where
    F: Future<Output = Result<(), E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    kinit_component_base::init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(format!("kinit-{name}"))
        .build()
        .with_context(|| format!("{name}: cannot start the async runtime"))?;
    runtime
        .block_on(component)
        .with_context(|| format!("kinit {name} stopped"))?;
    Ok(ExitCode::SUCCESS)
}
