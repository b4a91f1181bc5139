//! API clients from a kubeconfig, or from the environment.

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;

use crate::error::ComponentError;

/// The client configuration from `kubeconfig`, or without it from the environment (in-cluster
/// service account, then `$KUBECONFIG` / `~/.kube/config`), like client-go's
/// `BuildConfigFromFlags`.
pub async fn kube_config(kubeconfig: Option<&Path>) -> Result<kube::Config, ComponentError> {
    match kubeconfig {
        Some(path) => {
            let err = |message: String| ComponentError::Kubeconfig {
                path: path.to_path_buf(),
                message,
            };
            let file = Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|e| err(e.to_string()))
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| ComponentError::Kubeconfig {
                path: Default::default(),
                message: e.to_string(),
            }),
    }
}

/// A client from `kubeconfig` (see [`kube_config`]).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, ComponentError> {
    let config = kube_config(kubeconfig).await?;
    Client::try_from(config).map_err(ComponentError::Client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_kubeconfig_names_the_file() {
        let Err(err) = client(Some(Path::new("/nonexistent/kinit-test.conf"))).await else {
            panic!("a missing kubeconfig must fail");
        };
        assert!(
            matches!(&err, ComponentError::Kubeconfig { path, .. } if path == Path::new("/nonexistent/kinit-test.conf"))
        );
        assert!(
            err.to_string().contains("/nonexistent/kinit-test.conf"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_kubeconfig_file_gives_a_client_for_its_server() {
        let dir = std::env::temp_dir().join(format!("kcb-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: abc\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n",
        )
        .unwrap();
        let config = kube_config(Some(&path)).await.unwrap();
        assert_eq!(config.cluster_url.to_string(), "https://127.0.0.1:6443/");
        client(Some(&path)).await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
