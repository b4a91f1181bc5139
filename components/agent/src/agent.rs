//! Wiring: settings → runtime + API client → pod manager, static pods, node registration,
//! heartbeats, API pod watch, mirror pods, garbage collection and the HTTPS server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::apisource::{watch_pods, ApiStatusSink};
use crate::config::{AgentArgs, Settings};
use crate::manager::PodManager;
use crate::node::{self, HostInfo, RuntimeFacts};
use crate::runtime::{CriRuntime, Runtime};
use crate::sources::{ApiObjects, NoApi};
use crate::{server, static_pods, AgentError};

/// Runs the agent until SIGTERM or SIGINT. Pods keep running when the agent stops, like the
/// kubelet's.
pub async fn run(args: AgentArgs) -> Result<(), AgentError> {
    let settings = Settings::load(&args)?;
    if !args.kubeconfig.exists() {
        let hint = match &args.bootstrap_kubeconfig {
            Some(b) => format!(
                " (TLS bootstrap from {} is not implemented: the installer writes the kubeconfig)",
                b.display()
            ),
            None => String::new(),
        };
        return Err(AgentError::Kubeconfig {
            path: args.kubeconfig.display().to_string(),
            message: format!("the file does not exist{hint}"),
        });
    }
    // Before anything slow, so a SIGTERM during start-up stops the agent gracefully too.
    let signals = kinit_component_base::ShutdownSignals::install()?;
    let (client, ca_pem) = client_from_kubeconfig(&settings.kubeconfig).await?;
    let runtime: Arc<dyn Runtime> =
        Arc::new(CriRuntime::connect(&settings.config.container_runtime_endpoint).await?);
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", settings.config.port))
        .await
        .map_err(|e| {
            AgentError::Server(format!(
                "cannot listen on :{}: {e}; is another agent or kubelet running?",
                settings.config.port
            ))
        })?;
    let tls = server::serving_tls(&settings)?;
    let agent = Agent::start(settings, runtime, client, ca_pem, Some((listener, tls)));
    tracing::info!(node = %agent.manager.settings().node_name, "node agent started");
    signals.recv().await;
    tracing::info!("stopping the node agent; pods keep running");
    agent.stop();
    Ok(())
}

/// Builds a client from a kubeconfig and returns the cluster CA (PEM) it trusts.
pub async fn client_from_kubeconfig(
    path: &std::path::Path,
) -> Result<(kube::Client, Option<String>), AgentError> {
    let err = |m: String| AgentError::Kubeconfig {
        path: path.display().to_string(),
        message: m,
    };
    let config = kinit_component_base::kube_config(Some(path))
        .await
        .map_err(|e| match e {
            kinit_component_base::ComponentError::Kubeconfig { message, .. } => err(message),
            other => err(other.to_string()),
        })?;
    let ca_pem = config.root_cert.as_ref().map(|certs| {
        certs
            .iter()
            .map(|der| kinit_pki::der_to_pem(der))
            .collect::<String>()
    });
    let client = kube::Client::try_from(config).map_err(|e| err(e.to_string()))?;
    Ok((client, ca_pem))
}

/// A running agent.
pub struct Agent {
    /// The pods it runs.
    pub manager: PodManager,
    /// Set once the API's pods have been listed.
    pub api_synced: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Agent {
    /// Starts every loop of the agent. `server` is the listener and TLS material for :10250.
    pub fn start(
        settings: Settings,
        runtime: Arc<dyn Runtime>,
        client: kube::Client,
        ca_pem: Option<String>,
        server: Option<(tokio::net::TcpListener, server::ServingTls)>,
    ) -> Agent {
        let settings = Arc::new(settings);
        let manager = PodManager::new(
            runtime.clone(),
            settings.clone(),
            Arc::new(NoApi),
            Arc::new(ApiStatusSink::new(client.clone())),
        );
        let api_synced = Arc::new(AtomicBool::new(false));
        let static_changed = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();

        tasks.push(tokio::spawn(static_pods::watch_dir(
            settings.config.pod_manifest_path.clone(),
            settings.node_name.clone(),
            manager.clone(),
            Duration::from_secs(settings.config.static_pod_rescan_seconds.max(1)),
            static_changed.clone(),
        )));

        tasks.push(tokio::spawn(
            manager.clone().relist_loop(Duration::from_secs(1)),
        ));

        if let Some((listener, tls)) = server {
            let m = manager.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = server::serve(listener, tls, m).await {
                    tracing::error!("the agent server stopped: {e}");
                }
            }));
        }

        {
            let (m, synced) = (manager.clone(), api_synced.clone());
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(30));
                loop {
                    tick.tick().await;
                    // Static pods are known from the first scan, API pods only after the first
                    // list: collecting earlier would kill running pods after an agent restart.
                    if synced.load(Ordering::SeqCst) {
                        if let Err(e) = m.collect_garbage().await {
                            tracing::warn!("garbage collection failed: {e}");
                        }
                    }
                }
            }));
        }

        let (m, synced, changed) = (manager.clone(), api_synced.clone(), static_changed);
        let online = tokio::spawn(online_loops(
            settings, runtime, client, ca_pem, m, synced, changed,
        ));
        tasks.push(online);
        Agent {
            manager,
            api_synced,
            tasks,
        }
    }

    /// Stops every loop (pods keep running in the runtime).
    pub fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn runtime_facts(runtime: &dyn Runtime) -> RuntimeFacts {
    match (runtime.version().await, runtime.status().await) {
        (Ok(version), Ok((ready, message))) => RuntimeFacts {
            version,
            ready,
            message: if ready {
                String::new()
            } else {
                format!("container runtime not ready: {message}")
            },
        },
        (Err(e), _) | (_, Err(e)) => RuntimeFacts {
            version: String::new(),
            ready: false,
            message: format!("container runtime is down: {e}"),
        },
    }
}

/// Everything that needs the API: registration (retried until it works), then lease, node
/// status, the pod watch and mirror pods.
async fn online_loops(
    settings: Arc<Settings>,
    runtime: Arc<dyn Runtime>,
    client: kube::Client,
    ca_pem: Option<String>,
    manager: PodManager,
    synced: Arc<AtomicBool>,
    static_changed: Arc<tokio::sync::Notify>,
) {
    let mut delay = Duration::from_millis(500);
    let node_uid = loop {
        match node::register(&client, &settings).await {
            Ok(uid) => break uid,
            Err(e) => {
                tracing::warn!("registering the node failed (retrying in {delay:?}): {e}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(7));
            }
        }
    };
    // The proxy starts (and, without nft, keeps retrying) on its own; the service environment
    // reads its Service cache once there is one.
    let services = Arc::new(std::sync::OnceLock::new());
    manager.set_sources(Arc::new(
        ApiObjects::new(client.clone(), ca_pem).with_service_cache(services.clone()),
    ));
    let proxy = tokio::spawn(run_proxy(client.clone(), settings.clone(), services));
    let network = match crate::network::spawn(client.clone(), settings.clone()) {
        Ok(handle) => Some(handle),
        Err(e) => {
            tracing::error!(
                "the pod network cannot start its thread: {e}; pods reach only pods on this node"
            );
            None
        }
    };

    let heartbeat = {
        let (client, settings, runtime, node_uid) = (
            client.clone(),
            settings.clone(),
            runtime.clone(),
            node_uid.clone(),
        );
        tokio::spawn(async move {
            let mut last: Option<(k8s_openapi::api::core::v1::NodeStatus, Instant)> = None;
            let mut tick = tokio::time::interval(settings.heartbeat());
            loop {
                tick.tick().await;
                if let Err(e) = node::renew_lease(&client, &settings.node_name, &node_uid).await {
                    tracing::warn!("renewing the node lease failed: {e}");
                }
                let host = HostInfo::probe(&settings.config.root_dir);
                let facts = runtime_facts(runtime.as_ref()).await;
                let status = node::node_status(&settings, &host, &facts);
                let due = match &last {
                    None => true,
                    Some((old, at)) => {
                        node::status_changed(old, &status)
                            || at.elapsed() >= Duration::from_secs(60)
                    }
                };
                if due {
                    match node::update_status(&client, &settings.node_name, &status).await {
                        Ok(()) => last = Some((status, Instant::now())),
                        Err(e) => tracing::warn!("{e}"),
                    }
                }
            }
        })
    };

    let watch = {
        let (client, node, manager, synced) = (
            client.clone(),
            settings.node_name.clone(),
            manager.clone(),
            synced.clone(),
        );
        tokio::spawn(async move {
            loop {
                if let Err(e) = watch_pods(
                    client.clone(),
                    node.clone(),
                    manager.clone(),
                    synced.clone(),
                )
                .await
                {
                    tracing::warn!("{e}; restarting the pod watch");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };

    let mirrors = {
        let (client, node, manager) = (client.clone(), settings.node_name.clone(), manager.clone());
        tokio::spawn(async move {
            loop {
                if let Err(e) = static_pods::sync_mirrors(&client, &node, &node_uid, &manager).await
                {
                    tracing::warn!("mirror pods: {e}");
                }
                tokio::select! {
                    _ = static_changed.notified() => tokio::time::sleep(Duration::from_millis(300)).await,
                    _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                }
            }
        })
    };

    let guard = crate::AbortOnDrop(vec![heartbeat, watch, mirrors, proxy]);
    futures::future::pending::<()>().await;
    drop((guard, network));
}

/// Runs the service proxy while the agent runs, when the configuration asks for it
/// (`serviceProxy`, with the cluster's pod CIDR for its masquerade decisions). A proxy that
/// cannot start (say, `nft` is missing) is retried every 30 s; the node runs without Services
/// meanwhile rather than not at all. `services` receives the proxy's Service cache.
async fn run_proxy(
    client: kube::Client,
    settings: Arc<Settings>,
    services: Arc<
        std::sync::OnceLock<kube::runtime::reflector::Store<k8s_openapi::api::core::v1::Service>>,
    >,
) {
    if !settings.config.service_proxy {
        tracing::info!("the service proxy is off (serviceProxy: false)");
        return;
    }
    let config = kinit_proxy::ProxyConfig {
        node_name: settings.node_name.clone(),
        cluster_cidrs: settings.config.cluster_cidr.into_iter().collect(),
        ..kinit_proxy::ProxyConfig::default()
    };
    let handle = loop {
        match kinit_proxy::start(client.clone(), config.clone()).await {
            Ok(handle) => break handle,
            Err(e) => {
                tracing::error!(
                    "the service proxy cannot start, Services have no data plane on this node (retrying in 30 s): {e}; install nftables (apt-get install -y nftables)"
                );
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        }
    };
    let _ = services.set(handle.services());
    // Dropping the handle stops the proxy (this task is aborted when the agent stops).
    let _handle = handle;
    futures::future::pending::<()>().await;
}
