//! Reaching the cluster's API from the admin box: a kube-rs client from a kubeconfig file.

use std::future::Future;
use std::path::Path;

use anyhow::Context;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// A client for the current context of the kubeconfig at `path`.
pub async fn from_kubeconfig(path: &Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = Kubeconfig::read_from(path).with_context(|| {
        format!(
            "cannot read kubeconfig {}; pass --kubeconfig with the cluster's admin.conf",
            path.display()
        )
    })?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("kubeconfig {} is not usable", path.display()))?;
    kube::Client::try_from(config)
        .with_context(|| format!("cannot build an API client from {}", path.display()))
}

/// Runs `future` on a runtime for the commands that talk to the API.
pub fn block_on<T>(future: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(future)
}
