//! Pod sync: drives one pod's sandbox and containers towards its spec through the [`Runtime`]
//! and computes its status. `sync_pod` is written to be re-run any number of times: every call
//! observes the runtime, takes the next step (create the sandbox, run the next init container,
//! start or restart app containers, restart on liveness failure), and reports the status.

use kinit_rules::qos::qos_class;
use std::collections::BTreeMap;
use std::time::Duration;

use k8s_cri::v1::{ContainerState, ContainerStatus as CriStatus, PodSandbox, PodSandboxState};
use k8s_openapi::api::core::v1::{
    Container, ContainerState as KState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::config::Settings;
use crate::env::PodFacts;
use crate::probes::{ContainerProbes, ProbeTarget};
use crate::runtime::{Runtime, RuntimeError};
use crate::sources::ObjectSource;
use crate::spec::{self, pod_key};
use crate::volumes::{self, HostVolume};
use crate::AgentError;

/// First restart back-off.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
/// Longest restart back-off.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// First wait after a failed pod sandbox (CNI or runtime error) before the next attempt.
pub const SANDBOX_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// Longest wait between sandbox attempts (the kubelet's pod worker waits 10 s after errors).
pub const SANDBOX_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How often content volumes (configMap, secret, token) are rewritten.
pub const VOLUME_REFRESH: Duration = Duration::from_secs(60);

/// Restart back-off of one container: 10 s doubling to 5 min, reset after 10 min of quiet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Current delay.
    pub delay: Duration,
    /// When it was last raised (ns since the epoch).
    pub updated_ns: i64,
}

impl Backoff {
    /// Whether a container that finished at `finished_ns` must still wait at `now_ns`.
    pub fn in_backoff(entry: Option<&Backoff>, finished_ns: i64, now_ns: i64) -> bool {
        entry.is_some_and(|b| now_ns - finished_ns < b.delay.as_nanos() as i64)
    }

    /// The entry after one more restart at `now_ns`.
    pub fn next(entry: Option<&Backoff>, now_ns: i64) -> Backoff {
        let delay = match entry {
            Some(b) if now_ns - b.updated_ns <= 2 * BACKOFF_MAX.as_nanos() as i64 => {
                (b.delay * 2).min(BACKOFF_MAX)
            }
            _ => BACKOFF_INITIAL,
        };
        Backoff {
            delay,
            updated_ns: now_ns,
        }
    }
}

/// What the agent remembers about one pod between syncs.
#[derive(Debug, Default)]
pub struct PodState {
    /// Restart back-off per container name.
    pub backoff: BTreeMap<String, Backoff>,
    /// Probe trackers per container id.
    pub probes: BTreeMap<String, ContainerProbes>,
    /// When the agent first acknowledged the pod.
    pub start_time: Option<Time>,
    /// Prepared volumes and when they were last refreshed.
    pub volumes: Option<(BTreeMap<String, HostVolume>, i64)>,
    /// Waiting reasons from the last sync (container name → reason, message).
    pub waiting: BTreeMap<String, (String, String)>,
    /// Images pulled for `imagePullPolicy: Always`, keyed by container name and attempt.
    pub pulled: BTreeMap<(String, u32), String>,
    /// The last failed sandbox attempt: when, the wait before the next one, and why.
    pub sandbox_failure: Option<SandboxFailure>,
}

/// A failed pod sandbox attempt; the next waits `delay` (doubling up to
/// [`SANDBOX_BACKOFF_MAX`]), so a sandbox that cannot be created (say, a CNI error) is not
/// retried in a tight loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxFailure {
    /// When it failed (ns since the epoch).
    pub at_ns: i64,
    /// Wait before the next attempt.
    pub delay: Duration,
    /// The error, as reported in the pod's status.
    pub message: String,
}

impl SandboxFailure {
    /// The failure after `previous`, at `now_ns`.
    pub fn next(previous: Option<&SandboxFailure>, now_ns: i64, message: String) -> Self {
        SandboxFailure {
            at_ns: now_ns,
            delay: previous
                .map(|p| (p.delay * 2).min(SANDBOX_BACKOFF_MAX))
                .unwrap_or(SANDBOX_BACKOFF_INITIAL),
            message,
        }
    }

    /// Whether a new attempt must still wait at `now_ns`.
    pub fn waiting(&self, now_ns: i64) -> bool {
        now_ns - self.at_ns < self.delay.as_nanos() as i64
    }
}

/// Everything a sync needs besides the pod.
pub struct SyncContext<'a> {
    /// The container runtime.
    pub runtime: &'a dyn Runtime,
    /// Agent settings.
    pub settings: &'a Settings,
    /// API objects (ConfigMaps, Secrets, tokens).
    pub sources: &'a dyn ObjectSource,
    /// Now, in ns since the epoch (tests pass fixed values).
    pub now_ns: i64,
}

/// Now in ns since the epoch.
pub fn now_ns() -> i64 {
    jiff::Timestamp::now().as_nanosecond() as i64
}

fn time_of(ns: i64) -> Option<Time> {
    (ns > 0)
        .then(|| jiff::Timestamp::from_nanosecond(ns as i128).ok())
        .flatten()
        .map(Time)
}

/// The runtime's view of one pod.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    /// Sandboxes of the pod, newest first.
    pub sandboxes: Vec<PodSandbox>,
    /// Container statuses of the pod, newest first.
    pub containers: Vec<CriStatus>,
}

impl Observed {
    /// Reads the pod's sandboxes and containers.
    pub async fn read(runtime: &dyn Runtime, uid: &str) -> Result<Observed, RuntimeError> {
        let mut sandboxes = runtime.list_pod_sandboxes(Some(uid)).await?;
        sandboxes.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        let mut containers = Vec::new();
        for c in runtime.list_containers(Some(uid)).await? {
            match runtime.container_status(&c.id).await {
                Ok(s) => containers.push(s),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        containers.sort_by_key(|c| {
            std::cmp::Reverse((
                c.metadata.as_ref().map(|m| m.attempt).unwrap_or(0),
                c.created_at,
            ))
        });
        Ok(Observed {
            sandboxes,
            containers,
        })
    }

    /// The newest ready sandbox.
    pub fn ready_sandbox(&self) -> Option<&PodSandbox> {
        self.sandboxes
            .iter()
            .find(|s| s.state == PodSandboxState::SandboxReady as i32)
    }

    /// Newest container named `name`, optionally only in sandbox `sandbox_id`.
    pub fn latest(&self, name: &str, sandbox_id: Option<&str>) -> Option<&CriStatus> {
        self.containers.iter().find(|c| {
            c.metadata.as_ref().map(|m| m.name.as_str()) == Some(name)
                && sandbox_id.is_none_or(|id| sandbox_of(c) == Some(id))
        })
    }

    /// The container instance before the newest one.
    pub fn previous(&self, name: &str) -> Option<&CriStatus> {
        self.containers
            .iter()
            .filter(|c| c.metadata.as_ref().map(|m| m.name.as_str()) == Some(name))
            .nth(1)
    }
}

// The sandbox id is kept in a label because CRI's ContainerStatus does not carry it.
const LABEL_SANDBOX: &str = "kinit.io/sandbox";

fn sandbox_of(c: &CriStatus) -> Option<&str> {
    c.annotations.get(LABEL_SANDBOX).map(|s| s.as_str())
}

fn attempt_of(c: &CriStatus) -> u32 {
    c.metadata.as_ref().map(|m| m.attempt).unwrap_or(0)
}

fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

fn should_restart(policy: &str, exit_code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// Grace period for stopping the pod's containers.
pub fn grace_period(pod: &Pod) -> i64 {
    pod.metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30)
        .max(0)
}

/// One sync of `pod`. Returns the status to report.
pub async fn sync_pod(
    ctx: &SyncContext<'_>,
    pod: &Pod,
    state: &mut PodState,
) -> Result<PodStatus, AgentError> {
    let (_, _, uid) = pod_key(pod);
    if state.start_time.is_none() {
        state.start_time = Some(time_of(ctx.now_ns).unwrap_or(Time(jiff::Timestamp::now())));
    }
    state.waiting.clear();
    let observed = Observed::read(ctx.runtime, &uid).await?;
    // A pod that already finished is never started again.
    let previous_phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let current = compute_status(ctx, pod, &observed, state);
    if matches!(previous_phase, Some("Succeeded" | "Failed"))
        || matches!(current.phase.as_deref(), Some("Succeeded" | "Failed"))
    {
        for s in &observed.sandboxes {
            if s.state == PodSandboxState::SandboxReady as i32 {
                ctx.runtime.stop_pod_sandbox(&s.id).await?;
            }
        }
        let observed = Observed::read(ctx.runtime, &uid).await?;
        let mut status = compute_status(ctx, pod, &observed, state);
        if let Some(p) = previous_phase.filter(|p| matches!(*p, "Succeeded" | "Failed")) {
            status.phase = Some(p.to_string());
        }
        return Ok(status);
    }

    // Volumes first: the sandbox must not start with missing content.
    let refresh = state
        .volumes
        .as_ref()
        .is_none_or(|(_, at)| ctx.now_ns - at >= VOLUME_REFRESH.as_nanos() as i64);
    if refresh {
        match volumes::prepare(
            &ctx.settings.config.root_dir,
            pod,
            &ctx.settings.node_name,
            ctx.sources,
        )
        .await
        {
            Ok(v) => state.volumes = Some((v, ctx.now_ns)),
            Err(e) if state.volumes.is_some() => {
                tracing::warn!(pod = %uid, "refreshing volumes failed: {e}");
            }
            Err(e) => {
                for c in all_containers(pod) {
                    state
                        .waiting
                        .insert(c.name.clone(), ("ContainerCreating".into(), e.to_string()));
                }
                let mut status = compute_status(ctx, pod, &observed, state);
                status.message = Some(e.to_string());
                return Ok(status);
            }
        }
    }

    let sandbox_id = match observed.ready_sandbox() {
        Some(s) => s.id.clone(),
        None => {
            // The old sandbox died (or never existed): its containers go with it.
            for c in &observed.containers {
                if c.state == ContainerState::ContainerRunning as i32 {
                    let _ = ctx.runtime.stop_container(&c.id, 0).await;
                }
            }
            for s in &observed.sandboxes {
                ctx.runtime.stop_pod_sandbox(&s.id).await?;
            }
            let attempt = observed
                .sandboxes
                .iter()
                .filter_map(|s| s.metadata.as_ref().map(|m| m.attempt + 1))
                .max()
                .unwrap_or(0);
            if let Some(failure) = state
                .sandbox_failure
                .as_ref()
                .filter(|f| f.waiting(ctx.now_ns))
            {
                let message = format!(
                    "back-off {}s creating the pod sandbox; last attempt: {}",
                    failure.delay.as_secs(),
                    failure.message
                );
                return Ok(sandbox_not_ready(ctx, pod, &observed, state, message));
            }
            let config = spec::sandbox_config(ctx.settings, pod, attempt);
            std::fs::create_dir_all(&config.log_directory).map_err(|e| {
                AgentError::Volume(format!(
                    "creating the pod log directory {}: {e}",
                    config.log_directory
                ))
            })?;
            match ctx.runtime.run_pod_sandbox(&config).await {
                Ok(id) => {
                    state.sandbox_failure = None;
                    id
                }
                Err(e) => {
                    // Reported like the kubelet: the pod stays Pending with the reason.
                    let message = format!("failed to create the pod sandbox: {e}");
                    state.sandbox_failure = Some(SandboxFailure::next(
                        state.sandbox_failure.as_ref(),
                        ctx.now_ns,
                        message.clone(),
                    ));
                    // Logged too: a static control-plane pod fails before any API can show it.
                    tracing::warn!(pod = %uid, name = ?pod.metadata.name, "{message}");
                    return Ok(sandbox_not_ready(ctx, pod, &observed, state, message));
                }
            }
        }
    };
    let sandbox_config = spec::sandbox_config(
        ctx.settings,
        pod,
        observed
            .sandboxes
            .iter()
            .find(|s| s.id == sandbox_id)
            .and_then(|s| s.metadata.as_ref().map(|m| m.attempt))
            .unwrap_or(0),
    );
    let facts = pod_facts(ctx, pod, &sandbox_id).await;
    let observed = Observed::read(ctx.runtime, &uid).await?;
    let policy = restart_policy(pod).to_string();
    let spec = pod.spec.clone().unwrap_or_default();

    // Init containers, one at a time, in order.
    let mut initialized = true;
    for c in spec.init_containers.iter().flatten() {
        let latest = observed.latest(&c.name, Some(&sandbox_id));
        match latest.map(|l| (ContainerState::try_from(l.state), l)) {
            Some((Ok(ContainerState::ContainerExited), l)) if l.exit_code == 0 => continue,
            Some((Ok(ContainerState::ContainerRunning), _)) => {
                initialized = false;
                break;
            }
            Some((Ok(ContainerState::ContainerExited), l)) => {
                initialized = false;
                if policy != "Never" {
                    restart_with_backoff(
                        ctx,
                        pod,
                        c,
                        &observed,
                        l,
                        &sandbox_id,
                        &sandbox_config,
                        &facts,
                        state,
                    )
                    .await?;
                }
                break;
            }
            Some((_, l)) => {
                // Created but never started (the agent stopped mid-way): start over.
                let _ = ctx.runtime.remove_container(&l.id).await;
                initialized = false;
                start_container(
                    ctx,
                    pod,
                    c,
                    next_attempt(&observed, &c.name),
                    &sandbox_id,
                    &sandbox_config,
                    &facts,
                    state,
                )
                .await;
                break;
            }
            None => {
                initialized = false;
                start_container(
                    ctx,
                    pod,
                    c,
                    next_attempt(&observed, &c.name),
                    &sandbox_id,
                    &sandbox_config,
                    &facts,
                    state,
                )
                .await;
                break;
            }
        }
    }

    if initialized {
        for c in &spec.containers {
            let latest = observed.latest(&c.name, Some(&sandbox_id));
            match latest.map(|l| (ContainerState::try_from(l.state), l)) {
                Some((Ok(ContainerState::ContainerRunning), l)) => {
                    let probes = state.probes.entry(l.id.clone()).or_default();
                    let target = ProbeTarget {
                        pod_ip: if facts.pod_ip.is_empty() {
                            "127.0.0.1".into()
                        } else {
                            facts.pod_ip.clone()
                        },
                    };
                    let failures = probes
                        .run_due(ctx.runtime, c, &l.id, l.started_at, ctx.now_ns, &target)
                        .await;
                    for (kind, message) in failures {
                        tracing::info!(pod = %uid, container = %c.name, "{kind:?} probe failed: {message}");
                    }
                    if let Some(kind) = probes.must_restart() {
                        tracing::info!(pod = %uid, container = %c.name, "{kind:?} probe failed too often; restarting the container");
                        stop_container(ctx, pod, c, &l.id, grace_period(pod), &facts).await;
                        state.probes.remove(&l.id);
                    }
                }
                Some((Ok(ContainerState::ContainerExited), l)) => {
                    if should_restart(&policy, l.exit_code) {
                        restart_with_backoff(
                            ctx,
                            pod,
                            c,
                            &observed,
                            l,
                            &sandbox_id,
                            &sandbox_config,
                            &facts,
                            state,
                        )
                        .await?;
                    }
                }
                Some((_, l)) => {
                    let _ = ctx.runtime.remove_container(&l.id).await;
                    start_container(
                        ctx,
                        pod,
                        c,
                        next_attempt(&observed, &c.name),
                        &sandbox_id,
                        &sandbox_config,
                        &facts,
                        state,
                    )
                    .await;
                }
                None => {
                    start_container(
                        ctx,
                        pod,
                        c,
                        next_attempt(&observed, &c.name),
                        &sandbox_id,
                        &sandbox_config,
                        &facts,
                        state,
                    )
                    .await;
                }
            }
        }
    }
    prune_old_containers(ctx.runtime, &observed).await;
    let observed = Observed::read(ctx.runtime, &uid).await?;
    state
        .probes
        .retain(|id, _| observed.containers.iter().any(|c| &c.id == id));
    Ok(compute_status(ctx, pod, &observed, state))
}

/// The status of a pod whose sandbox does not exist (yet): every container waits in
/// ContainerCreating with `message`, and the pod says FailedCreatePodSandBox, like the kubelet.
fn sandbox_not_ready(
    ctx: &SyncContext<'_>,
    pod: &Pod,
    observed: &Observed,
    state: &mut PodState,
    message: String,
) -> PodStatus {
    for c in all_containers(pod) {
        state.waiting.insert(
            c.name.clone(),
            ("ContainerCreating".into(), message.clone()),
        );
    }
    let mut status = compute_status(ctx, pod, observed, state);
    status.message = Some(message);
    status.reason = Some("FailedCreatePodSandBox".into());
    status
}

fn all_containers(pod: &Pod) -> Vec<&Container> {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.init_containers.as_ref())
        .into_iter()
        .flatten()
        .chain(spec.map(|s| s.containers.iter()).into_iter().flatten())
        .collect()
}

fn next_attempt(observed: &Observed, name: &str) -> u32 {
    observed
        .latest(name, None)
        .map(|l| attempt_of(l) + 1)
        .unwrap_or(0)
}

async fn pod_facts(ctx: &SyncContext<'_>, pod: &Pod, sandbox_id: &str) -> PodFacts {
    let host_ip = ctx
        .settings
        .node_ip
        .map(|ip| ip.to_string())
        .unwrap_or_default();
    let pod_ip = if spec::host_network(pod) {
        host_ip.clone()
    } else {
        ctx.runtime
            .pod_sandbox_status(sandbox_id)
            .await
            .ok()
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default()
    };
    PodFacts { pod_ip, host_ip }
}

#[allow(clippy::too_many_arguments)]
async fn restart_with_backoff(
    ctx: &SyncContext<'_>,
    pod: &Pod,
    c: &Container,
    observed: &Observed,
    exited: &CriStatus,
    sandbox_id: &str,
    sandbox_config: &k8s_cri::v1::PodSandboxConfig,
    facts: &PodFacts,
    state: &mut PodState,
) -> Result<(), AgentError> {
    let entry = state.backoff.get(&c.name);
    if Backoff::in_backoff(entry, exited.finished_at, ctx.now_ns) {
        let delay = entry.map(|b| b.delay).unwrap_or(BACKOFF_INITIAL);
        let (ns, name, uid) = pod_key(pod);
        state.waiting.insert(
            c.name.clone(),
            (
                "CrashLoopBackOff".into(),
                format!(
                    "back-off {}s restarting failed container={} pod={name}_{ns}({uid})",
                    delay.as_secs(),
                    c.name
                ),
            ),
        );
        return Ok(());
    }
    let next = Backoff::next(entry, ctx.now_ns);
    state.backoff.insert(c.name.clone(), next);
    start_container(
        ctx,
        pod,
        c,
        next_attempt(observed, &c.name),
        sandbox_id,
        sandbox_config,
        facts,
        state,
    )
    .await;
    Ok(())
}

/// Pulls (per imagePullPolicy), resolves env and mounts, creates and starts one container.
/// Failures become the container's waiting reason (ErrImagePull, CreateContainerConfigError,
/// CreateContainerError, RunContainerError) rather than failing the whole sync.
#[allow(clippy::too_many_arguments)]
async fn start_container(
    ctx: &SyncContext<'_>,
    pod: &Pod,
    c: &Container,
    attempt: u32,
    sandbox_id: &str,
    sandbox_config: &k8s_cri::v1::PodSandboxConfig,
    facts: &PodFacts,
    state: &mut PodState,
) {
    let image = c.image.clone().unwrap_or_default();
    let policy = c.image_pull_policy.clone().unwrap_or_else(|| {
        if image.ends_with(":latest") || !image.rsplit('/').next().unwrap_or("").contains(':') {
            "Always".into()
        } else {
            "IfNotPresent".into()
        }
    });
    let present = match ctx.runtime.image_id(&image).await {
        Ok(p) => p,
        Err(e) => {
            state
                .waiting
                .insert(c.name.clone(), ("ErrImagePull".into(), e.to_string()));
            return;
        }
    };
    let pull = match (policy.as_str(), &present) {
        ("Never", None) => {
            state.waiting.insert(
                c.name.clone(),
                (
                    "ErrImageNeverPull".into(),
                    format!("container image {image:?} is not present with pull policy of Never"),
                ),
            );
            return;
        }
        ("Never", Some(_)) => false,
        ("Always", _) => !state.pulled.contains_key(&(c.name.clone(), attempt)),
        (_, None) => true,
        (_, Some(_)) => false,
    };
    if pull {
        match ctx.runtime.pull_image(&image, sandbox_config).await {
            Ok(reference) => {
                state.pulled.insert((c.name.clone(), attempt), reference);
            }
            // An Always pull that fails still runs a present image, as in air-gapped clusters.
            Err(e) if present.is_some() => {
                tracing::warn!(image = %image, "pulling failed, using the present image: {e}");
            }
            Err(e) => {
                state
                    .waiting
                    .insert(c.name.clone(), ("ErrImagePull".into(), e.to_string()));
                return;
            }
        }
    }
    let env = match crate::env::resolve(pod, c, &ctx.settings.node_name, facts, ctx.sources).await {
        Ok(env) => env,
        Err(e) => {
            state.waiting.insert(
                c.name.clone(),
                ("CreateContainerConfigError".into(), e.to_string()),
            );
            return;
        }
    };
    let empty = BTreeMap::new();
    let vols = state.volumes.as_ref().map(|(v, _)| v).unwrap_or(&empty);
    let mut mounts = match spec::mounts(c, vols) {
        Ok(m) => m,
        Err(e) => {
            state.waiting.insert(
                c.name.clone(),
                ("CreateContainerConfigError".into(), e.to_string()),
            );
            return;
        }
    };
    if crate::etc_hosts::wanted(&mounts) {
        match crate::etc_hosts::write(
            &ctx.settings.config.root_dir,
            pod,
            &facts.pod_ip,
            &ctx.settings.config.cluster_domain,
        ) {
            Ok(path) => mounts.push(k8s_cri::v1::Mount {
                container_path: crate::etc_hosts::CONTAINER_PATH.into(),
                host_path: path.to_string_lossy().into_owned(),
                ..Default::default()
            }),
            Err(e) => {
                state.waiting.insert(
                    c.name.clone(),
                    ("CreateContainerConfigError".into(), e.to_string()),
                );
                return;
            }
        }
    }
    let mut config = spec::container_config(ctx.settings, pod, c, attempt, &env, mounts);
    config
        .annotations
        .insert(LABEL_SANDBOX.into(), sandbox_id.to_string());
    let id = match ctx
        .runtime
        .create_container(sandbox_id, &config, sandbox_config)
        .await
    {
        Ok(id) => id,
        Err(e) => {
            state.waiting.insert(
                c.name.clone(),
                ("CreateContainerError".into(), e.to_string()),
            );
            return;
        }
    };
    if let Err(e) = ctx.runtime.start_container(&id).await {
        state
            .waiting
            .insert(c.name.clone(), ("RunContainerError".into(), e.to_string()));
        return;
    }
    if let Some(post_start) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
        if let Some(exec) = &post_start.exec {
            let cmd = exec.command.clone().unwrap_or_default();
            if let Err(e) = ctx.runtime.exec_sync(&id, cmd, 30).await {
                tracing::warn!(container = %c.name, "postStart hook failed: {e}");
            }
        }
    }
}

/// Runs the preStop hook (exec or HTTP GET) within the grace period, then stops the container.
pub async fn stop_container(
    ctx: &SyncContext<'_>,
    pod: &Pod,
    c: &Container,
    id: &str,
    grace: i64,
    facts: &PodFacts,
) {
    let started = std::time::Instant::now();
    if let Some(pre_stop) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) {
        let budget = Duration::from_secs(grace.max(1) as u64);
        let hook = async {
            if let Some(exec) = &pre_stop.exec {
                let cmd = exec.command.clone().unwrap_or_default();
                let _ = ctx.runtime.exec_sync(id, cmd, grace.max(1)).await;
            } else if let Some(http) = &pre_stop.http_get {
                let probe = k8s_openapi::api::core::v1::Probe {
                    http_get: Some(http.clone()),
                    timeout_seconds: Some(grace.max(1) as i32),
                    ..Default::default()
                };
                let target = ProbeTarget {
                    pod_ip: if facts.pod_ip.is_empty() {
                        "127.0.0.1".into()
                    } else {
                        facts.pod_ip.clone()
                    },
                };
                let _ = crate::probes::run_probe(ctx.runtime, &probe, c, id, &target).await;
            } else if let Some(sleep) = &pre_stop.sleep {
                tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64)).await;
            }
        };
        if tokio::time::timeout(budget, hook).await.is_err() {
            tracing::warn!(pod = ?pod.metadata.name, container = %c.name, "preStop hook did not finish within the grace period");
        }
    }
    let remaining = (grace - started.elapsed().as_secs() as i64).max(0);
    if let Err(e) = ctx.runtime.stop_container(id, remaining).await {
        if !e.is_not_found() {
            tracing::warn!(container = %c.name, "stopping failed: {e}");
        }
    }
}

/// Keeps the newest two instances of each container (the current one and the previous one,
/// for `kubectl logs --previous`) and removes older exited ones.
async fn prune_old_containers(runtime: &dyn Runtime, observed: &Observed) {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for c in &observed.containers {
        let name = c
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let n = seen.entry(name).or_default();
        *n += 1;
        if *n > 2 && c.state == ContainerState::ContainerExited as i32 {
            let _ = runtime.remove_container(&c.id).await;
        }
    }
}

/// Stops every container (preStop hooks, grace period) and the sandbox of `pod`; returns the
/// final status.
pub async fn kill_pod(
    ctx: &SyncContext<'_>,
    pod: &Pod,
    state: &mut PodState,
    grace: i64,
) -> Result<PodStatus, AgentError> {
    let (_, _, uid) = pod_key(pod);
    let observed = Observed::read(ctx.runtime, &uid).await?;
    let facts = match observed.ready_sandbox() {
        Some(s) => pod_facts(ctx, pod, &s.id).await,
        None => PodFacts::default(),
    };
    let spec_containers = all_containers(pod);
    let stops = observed
        .containers
        .iter()
        .filter(|c| c.state == ContainerState::ContainerRunning as i32)
        .map(|c| {
            let name = c
                .metadata
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default();
            let container = spec_containers
                .iter()
                .find(|s| s.name == name)
                .map(|c| (*c).clone())
                .unwrap_or_else(|| Container {
                    name,
                    ..Default::default()
                });
            let facts = facts.clone();
            let id = c.id.clone();
            async move { stop_container(ctx, pod, &container, &id, grace, &facts).await }
        });
    futures::future::join_all(stops).await;
    for s in &observed.sandboxes {
        if s.state == PodSandboxState::SandboxReady as i32 {
            ctx.runtime.stop_pod_sandbox(&s.id).await?;
        }
    }
    state.waiting.clear();
    let observed = Observed::read(ctx.runtime, &uid).await?;
    let mut status = compute_status(ctx, pod, &observed, state);
    // Containers that never ran are reported terminated too, like the kubelet on deletion.
    for cs in status
        .container_statuses
        .iter_mut()
        .flatten()
        .chain(status.init_container_statuses.iter_mut().flatten())
    {
        if cs.state.as_ref().is_some_and(|s| s.terminated.is_none()) {
            cs.state = Some(KState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: 137,
                    reason: Some("ContainerStatusUnknown".into()),
                    message: Some(
                        "The container could not be located when the pod was terminated".into(),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            });
            cs.ready = false;
            cs.started = Some(false);
        }
    }
    Ok(status)
}

/// Removes all containers and sandboxes of a pod uid, and its volume directories.
pub async fn remove_pod(
    runtime: &dyn Runtime,
    settings: &Settings,
    uid: &str,
) -> Result<(), AgentError> {
    let ours = |labels: &std::collections::HashMap<String, String>| {
        labels.get(crate::runtime::LABEL_NODE) == Some(&settings.node_name)
    };
    for c in runtime.list_containers(Some(uid)).await? {
        if !ours(&c.labels) {
            continue;
        }
        if c.state == ContainerState::ContainerRunning as i32 {
            let _ = runtime.stop_container(&c.id, 0).await;
        }
        match runtime.remove_container(&c.id).await {
            Err(e) if !e.is_not_found() => return Err(e.into()),
            _ => {}
        }
    }
    for s in runtime.list_pod_sandboxes(Some(uid)).await? {
        if !ours(&s.labels) {
            continue;
        }
        runtime.stop_pod_sandbox(&s.id).await?;
        match runtime.remove_pod_sandbox(&s.id).await {
            Err(e) if !e.is_not_found() => return Err(e.into()),
            _ => {}
        }
    }
    volumes::cleanup(&settings.config.root_dir, uid);
    Ok(())
}

fn terminated_of(c: &CriStatus, runtime_name: &str) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: c.exit_code,
        reason: Some(if c.reason.is_empty() {
            if c.exit_code == 0 {
                "Completed"
            } else {
                "Error"
            }
            .into()
        } else {
            c.reason.clone()
        }),
        message: (!c.message.is_empty()).then(|| c.message.clone()),
        started_at: time_of(c.started_at),
        finished_at: time_of(c.finished_at),
        container_id: Some(format!("{runtime_name}://{}", c.id)),
        signal: None,
    }
}

fn container_status(
    ctx: &SyncContext<'_>,
    c: &Container,
    observed: &Observed,
    state: &PodState,
    runtime_name: &str,
) -> ContainerStatus {
    let latest = observed.latest(&c.name, None);
    let waiting = state.waiting.get(&c.name);
    let mut status = ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        image_id: String::new(),
        ready: false,
        restart_count: latest.map(|l| attempt_of(l) as i32).unwrap_or(0),
        started: Some(false),
        ..Default::default()
    };
    let Some(l) = latest else {
        let (reason, message) = waiting
            .cloned()
            .unwrap_or_else(|| ("ContainerCreating".into(), String::new()));
        status.state = Some(KState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason),
                message: (!message.is_empty()).then_some(message),
            }),
            ..Default::default()
        });
        return status;
    };
    status.container_id = Some(format!("{runtime_name}://{}", l.id));
    status.image_id = l.image_ref.clone();
    let previous = observed
        .previous(&c.name)
        .filter(|p| p.state == ContainerState::ContainerExited as i32);
    match ContainerState::try_from(l.state) {
        Ok(ContainerState::ContainerRunning) => {
            let probes = state.probes.get(&l.id).cloned().unwrap_or_default();
            status.state = Some(KState {
                running: Some(ContainerStateRunning {
                    started_at: time_of(l.started_at),
                }),
                ..Default::default()
            });
            status.started = Some(probes.started(c));
            status.ready = probes.ready(c);
            status.last_state = previous.map(|p| KState {
                terminated: Some(terminated_of(p, runtime_name)),
                ..Default::default()
            });
        }
        Ok(ContainerState::ContainerExited) => match waiting {
            Some((reason, message)) => {
                status.state = Some(KState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some(reason.clone()),
                        message: Some(message.clone()),
                    }),
                    ..Default::default()
                });
                status.last_state = Some(KState {
                    terminated: Some(terminated_of(l, runtime_name)),
                    ..Default::default()
                });
            }
            None => {
                status.state = Some(KState {
                    terminated: Some(terminated_of(l, runtime_name)),
                    ..Default::default()
                });
                status.last_state = previous.map(|p| KState {
                    terminated: Some(terminated_of(p, runtime_name)),
                    ..Default::default()
                });
            }
        },
        _ => {
            let (reason, message) = waiting
                .cloned()
                .unwrap_or_else(|| ("ContainerCreating".into(), String::new()));
            status.state = Some(KState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason),
                    message: (!message.is_empty()).then_some(message),
                }),
                ..Default::default()
            });
        }
    }
    let _ = ctx;
    status
}

fn cond(type_: &str, ok: bool, reason: Option<&str>, message: Option<String>) -> PodCondition {
    PodCondition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.map(String::from),
        message,
        last_transition_time: Some(Time(jiff::Timestamp::now())),
        last_probe_time: None,
        observed_generation: None,
    }
}

/// The pod status from the runtime's view (phase per the kubelet's rules).
pub fn compute_status(
    ctx: &SyncContext<'_>,
    pod: &Pod,
    observed: &Observed,
    state: &PodState,
) -> PodStatus {
    let spec = pod.spec.clone().unwrap_or_default();
    let runtime_name = observed
        .containers
        .first()
        .map(|_| "containerd")
        .unwrap_or("containerd");
    let init: Vec<ContainerStatus> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| container_status(ctx, c, observed, state, runtime_name))
        .collect();
    let apps: Vec<ContainerStatus> = spec
        .containers
        .iter()
        .map(|c| container_status(ctx, c, observed, state, runtime_name))
        .collect();
    let policy = restart_policy(pod);
    let terminated = |s: &ContainerStatus| s.state.as_ref().and_then(|s| s.terminated.clone());
    let init_failed = init
        .iter()
        .any(|s| terminated(s).is_some_and(|t| t.exit_code != 0));
    let init_done = init
        .iter()
        .all(|s| terminated(s).is_some_and(|t| t.exit_code == 0));
    let mut apps = apps;
    if !init_done {
        for s in &mut apps {
            if let Some(w) = s.state.as_mut().and_then(|st| st.waiting.as_mut()) {
                if w.reason.as_deref() == Some("ContainerCreating") {
                    w.reason = Some("PodInitializing".into());
                }
            }
        }
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in &apps {
        let st = s.state.clone().unwrap_or_default();
        if st.running.is_some() {
            running += 1;
        } else if let Some(t) = st.terminated {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if s
            .last_state
            .as_ref()
            .is_some_and(|l| l.terminated.is_some())
        {
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    let phase = if init_failed && policy == "Never" {
        "Failed"
    } else if !init_done || waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        if policy == "Always" {
            "Running"
        } else if stopped == succeeded {
            "Succeeded"
        } else if policy == "Never" {
            "Failed"
        } else {
            "Running"
        }
    } else {
        "Pending"
    };
    let terminal = matches!(phase, "Succeeded" | "Failed");
    let unready: Vec<String> = apps
        .iter()
        .filter(|s| !s.ready)
        .map(|s| s.name.clone())
        .collect();
    let containers_ready = unready.is_empty();
    let ready_reason = if terminal {
        Some("PodCompleted")
    } else if containers_ready {
        None
    } else {
        Some("ContainersNotReady")
    };
    let unready_msg = (!containers_ready)
        .then(|| format!("containers with unready status: [{}]", unready.join(" ")));
    let sandbox_ready = observed.ready_sandbox().is_some();
    let host_ip = ctx.settings.node_ip.map(|ip| ip.to_string());
    let pod_ips: Vec<String> = if spec.host_network.unwrap_or(false) {
        host_ip.clone().into_iter().collect()
    } else {
        Vec::new()
    };
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(vec![
            cond("PodReadyToStartContainers", sandbox_ready, None, None),
            cond(
                "Initialized",
                init_done,
                if init_done {
                    if terminal && !init.is_empty() {
                        Some("PodCompleted")
                    } else {
                        None
                    }
                } else {
                    Some("ContainersNotInitialized")
                },
                (!init_done).then(|| {
                    format!(
                        "containers with incomplete status: [{}]",
                        init.iter()
                            .filter(|s| terminated(s).is_none_or(|t| t.exit_code != 0))
                            .map(|s| s.name.clone())
                            .collect::<Vec<_>>()
                            .join(" ")
                    )
                }),
            ),
            cond(
                "Ready",
                containers_ready && !terminal,
                ready_reason,
                unready_msg.clone(),
            ),
            cond(
                "ContainersReady",
                containers_ready && !terminal,
                ready_reason,
                unready_msg,
            ),
            cond("PodScheduled", true, None, None),
        ]),
        host_ip: host_ip.clone(),
        host_ips: host_ip.map(|ip| vec![HostIP { ip }]),
        pod_ip: pod_ips.first().cloned(),
        pod_ips: (!pod_ips.is_empty())
            .then(|| pod_ips.into_iter().map(|ip| PodIP { ip }).collect()),
        start_time: state.start_time.clone(),
        init_container_statuses: (!init.is_empty()).then_some(init),
        container_statuses: Some(apps),
        qos_class: Some(
            qos_class(&pod.spec.clone().unwrap_or_default())
                .as_str()
                .into(),
        ),
        ..Default::default()
    }
}

/// Fills `podIP(s)` from the sandbox (non-hostNetwork pods).
pub async fn add_sandbox_ips(runtime: &dyn Runtime, uid: &str, status: &mut PodStatus) {
    if status.pod_ip.is_some() {
        return;
    }
    let Ok(sandboxes) = runtime.list_pod_sandboxes(Some(uid)).await else {
        return;
    };
    let Some(ready) = sandboxes
        .iter()
        .filter(|s| s.state == PodSandboxState::SandboxReady as i32)
        .max_by_key(|s| s.created_at)
    else {
        return;
    };
    let Ok(s) = runtime.pod_sandbox_status(&ready.id).await else {
        return;
    };
    let Some(net) = s.network.filter(|n| !n.ip.is_empty()) else {
        return;
    };
    let mut ips = vec![net.ip.clone()];
    ips.extend(net.additional_ips.into_iter().map(|i| i.ip));
    status.pod_ip = Some(net.ip);
    status.pod_ips = Some(ips.into_iter().map(|ip| PodIP { ip }).collect());
}

#[cfg(test)]
#[path = "pods_tests.rs"]
mod tests;
