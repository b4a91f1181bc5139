//! An in-process kinit API server for trying the agent by hand: prints the admin kubeconfig,
//! a node kubeconfig for `system:node:<name>` (first argument, default `n1`) and the cluster
//! CA path, then serves until interrupted.

#[tokio::main]
async fn main() {
    let node = std::env::args().nth(1).unwrap_or_else(|| "n1".into());
    let ts = kinit_apiserver::testing::TestServer::start().await;
    let node_conf = ts.kubeconfig_for(&format!("system:node:{node}"), &["system:nodes"]);
    println!("server {}", ts.server);
    println!("admin {}", ts.admin_kubeconfig().display());
    println!("node {}", node_conf.display());
    println!("ca {}", ts.dir.path().join("pki/ca.crt").display());
    println!("pki {}", ts.dir.path().join("pki").display());
    tokio::signal::ctrl_c().await.ok();
}
