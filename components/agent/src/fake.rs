//! An in-memory [`Runtime`] for tests of the pod-sync logic: sandboxes and containers change
//! state like containerd's, and tests make processes exit or probes fail on demand.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;
use k8s_cri::v1::{
    AttachRequest, Container, ContainerConfig, ContainerState, ContainerStatus, ExecRequest,
    ExecSyncResponse, ImageSpec, PodIp, PodSandbox, PodSandboxConfig, PodSandboxNetworkStatus,
    PodSandboxState, PodSandboxStatus,
};

use crate::runtime::{Runtime, RuntimeError, LABEL_POD_UID};

#[derive(Debug, Clone)]
struct FakeSandbox {
    config: PodSandboxConfig,
    ready: bool,
    created_at: i64,
    ip: String,
}

#[derive(Debug, Clone)]
struct FakeContainer {
    sandbox_id: String,
    config: ContainerConfig,
    state: ContainerState,
    created_at: i64,
    started_at: i64,
    finished_at: i64,
    exit_code: i32,
}

#[derive(Default)]
struct Inner {
    next: u64,
    clock: i64,
    sandboxes: BTreeMap<String, FakeSandbox>,
    containers: BTreeMap<String, FakeContainer>,
    images: HashSet<String>,
    calls: Vec<String>,
    exec_results: BTreeMap<String, i32>,
    failing_sandboxes: usize,
}

/// The fake runtime. Every image is present unless [`FakeRuntime::remove_image`] said otherwise.
#[derive(Default)]
pub struct FakeRuntime {
    inner: Mutex<Inner>,
    missing_images: Mutex<HashSet<String>>,
}

fn not_found(op: &'static str, id: &str) -> RuntimeError {
    RuntimeError::Call {
        op,
        code: tonic::Code::NotFound,
        message: format!("{id} not found"),
    }
}

impl FakeRuntime {
    /// An empty runtime.
    pub fn new() -> FakeRuntime {
        FakeRuntime::default()
    }

    fn tick(inner: &mut Inner) -> i64 {
        inner.clock += 1_000_000;
        inner.clock
    }

    /// Sets the runtime's clock (ns since the epoch) so container times match a test's "now".
    pub fn set_clock(&self, ns: i64) {
        let mut inner = self.inner.lock().unwrap();
        inner.clock = inner.clock.max(ns);
    }

    /// Makes the next `n` RunPodSandbox calls fail (as a CNI error would).
    pub fn fail_sandboxes(&self, n: usize) {
        self.inner.lock().unwrap().failing_sandboxes = n;
    }

    /// The CRI calls made so far, e.g. `"StartContainer web"`.
    pub fn calls(&self) -> Vec<String> {
        self.inner.lock().unwrap().calls.clone()
    }

    /// Makes the newest running container named `name` exit with `code`.
    pub fn exit(&self, name: &str, code: i32) {
        let mut inner = self.inner.lock().unwrap();
        let now = Self::tick(&mut inner);
        if let Some(c) = inner
            .containers
            .values_mut()
            .filter(|c| {
                c.config.metadata.as_ref().map(|m| m.name.as_str()) == Some(name)
                    && c.state == ContainerState::ContainerRunning
            })
            .max_by_key(|c| c.created_at)
        {
            c.state = ContainerState::ContainerExited;
            c.exit_code = code;
            c.finished_at = now;
        }
    }

    /// Makes a sandbox die (as when its pause process is killed).
    pub fn kill_sandboxes(&self) {
        for s in self.inner.lock().unwrap().sandboxes.values_mut() {
            s.ready = false;
        }
    }

    /// Sets the exit code `ExecSync` returns for commands whose first word is `cmd0`.
    pub fn set_exec_result(&self, cmd0: &str, code: i32) {
        self.inner
            .lock()
            .unwrap()
            .exec_results
            .insert(cmd0.into(), code);
    }

    /// Marks an image as absent so the agent must pull it.
    pub fn remove_image(&self, image: &str) {
        self.missing_images.lock().unwrap().insert(image.into());
    }

    /// Number of sandboxes that exist (any state).
    pub fn sandbox_count(&self) -> usize {
        self.inner.lock().unwrap().sandboxes.len()
    }

    /// Configs of all containers ever created that still exist, oldest first.
    pub fn container_configs(&self) -> Vec<ContainerConfig> {
        let inner = self.inner.lock().unwrap();
        let mut v: Vec<_> = inner.containers.values().collect();
        v.sort_by_key(|c| c.created_at);
        v.into_iter().map(|c| c.config.clone()).collect()
    }

    /// Configs of all existing sandboxes.
    pub fn sandbox_configs(&self) -> Vec<PodSandboxConfig> {
        let inner = self.inner.lock().unwrap();
        inner.sandboxes.values().map(|s| s.config.clone()).collect()
    }

    fn record(inner: &mut Inner, call: String) {
        inner.calls.push(call);
    }
}

fn name_of(c: &ContainerConfig) -> String {
    c.metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default()
}

#[async_trait]
impl Runtime for FakeRuntime {
    async fn version(&self) -> Result<String, RuntimeError> {
        Ok("fake://1.0".into())
    }

    async fn status(&self) -> Result<(bool, String), RuntimeError> {
        Ok((true, String::new()))
    }

    async fn run_pod_sandbox(&self, config: &PodSandboxConfig) -> Result<String, RuntimeError> {
        let mut inner = self.inner.lock().unwrap();
        if inner.failing_sandboxes > 0 {
            inner.failing_sandboxes -= 1;
            Self::record(&mut inner, "RunPodSandbox failed".to_string());
            return Err(RuntimeError::Call {
                op: "RunPodSandbox",
                code: tonic::Code::Unknown,
                message: "failed to setup network for sandbox: plugin failed".into(),
            });
        }
        inner.next += 1;
        let id = format!("sb{}", inner.next);
        let now = Self::tick(&mut inner);
        let ip = format!("10.244.0.{}", inner.next);
        let name = config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        Self::record(&mut inner, format!("RunPodSandbox {name}"));
        inner.sandboxes.insert(
            id.clone(),
            FakeSandbox {
                config: config.clone(),
                ready: true,
                created_at: now,
                ip,
            },
        );
        Ok(id)
    }

    async fn stop_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let mut inner = self.inner.lock().unwrap();
        let now = Self::tick(&mut inner);
        Self::record(&mut inner, format!("StopPodSandbox {id}"));
        let Some(s) = inner.sandboxes.get_mut(id) else {
            return Ok(());
        };
        s.ready = false;
        for c in inner.containers.values_mut() {
            if c.sandbox_id == id && c.state == ContainerState::ContainerRunning {
                c.state = ContainerState::ContainerExited;
                c.exit_code = 137;
                c.finished_at = now;
            }
        }
        Ok(())
    }

    async fn remove_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let mut inner = self.inner.lock().unwrap();
        Self::record(&mut inner, format!("RemovePodSandbox {id}"));
        inner.sandboxes.remove(id);
        inner.containers.retain(|_, c| c.sandbox_id != id);
        Ok(())
    }

    async fn pod_sandbox_status(&self, id: &str) -> Result<PodSandboxStatus, RuntimeError> {
        let inner = self.inner.lock().unwrap();
        let s = inner
            .sandboxes
            .get(id)
            .ok_or_else(|| not_found("PodSandboxStatus", id))?;
        Ok(PodSandboxStatus {
            id: id.into(),
            metadata: s.config.metadata.clone(),
            state: if s.ready {
                PodSandboxState::SandboxReady
            } else {
                PodSandboxState::SandboxNotready
            } as i32,
            created_at: s.created_at,
            network: Some(PodSandboxNetworkStatus {
                ip: s.ip.clone(),
                additional_ips: vec![PodIp {
                    ip: "fd00::1".into(),
                }],
            }),
            labels: s.config.labels.clone(),
            annotations: s.config.annotations.clone(),
            ..Default::default()
        })
    }

    async fn list_pod_sandboxes(
        &self,
        pod_uid: Option<&str>,
    ) -> Result<Vec<PodSandbox>, RuntimeError> {
        let inner = self.inner.lock().unwrap();
        Ok(inner
            .sandboxes
            .iter()
            .filter(|(_, s)| {
                pod_uid.is_none_or(|u| {
                    s.config.labels.get(LABEL_POD_UID).map(|x| x.as_str()) == Some(u)
                })
            })
            .map(|(id, s)| PodSandbox {
                id: id.clone(),
                metadata: s.config.metadata.clone(),
                state: if s.ready {
                    PodSandboxState::SandboxReady
                } else {
                    PodSandboxState::SandboxNotready
                } as i32,
                created_at: s.created_at,
                labels: s.config.labels.clone(),
                annotations: s.config.annotations.clone(),
                runtime_handler: String::new(),
            })
            .collect())
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
        _sandbox_config: &PodSandboxConfig,
    ) -> Result<String, RuntimeError> {
        let mut inner = self.inner.lock().unwrap();
        if !inner.sandboxes.contains_key(sandbox_id) {
            return Err(not_found("CreateContainer", sandbox_id));
        }
        inner.next += 1;
        let id = format!("c{}", inner.next);
        let now = Self::tick(&mut inner);
        Self::record(&mut inner, format!("CreateContainer {}", name_of(config)));
        inner.containers.insert(
            id.clone(),
            FakeContainer {
                sandbox_id: sandbox_id.into(),
                config: config.clone(),
                state: ContainerState::ContainerCreated,
                created_at: now,
                started_at: 0,
                finished_at: 0,
                exit_code: 0,
            },
        );
        Ok(id)
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        let mut inner = self.inner.lock().unwrap();
        let now = Self::tick(&mut inner);
        let c = inner
            .containers
            .get_mut(id)
            .ok_or_else(|| not_found("StartContainer", id))?;
        c.state = ContainerState::ContainerRunning;
        c.started_at = now;
        let name = name_of(&c.config);
        Self::record(&mut inner, format!("StartContainer {name}"));
        Ok(())
    }

    async fn stop_container(&self, id: &str, timeout_seconds: i64) -> Result<(), RuntimeError> {
        let mut inner = self.inner.lock().unwrap();
        let now = Self::tick(&mut inner);
        let c = inner
            .containers
            .get_mut(id)
            .ok_or_else(|| not_found("StopContainer", id))?;
        if c.state == ContainerState::ContainerRunning {
            c.state = ContainerState::ContainerExited;
            c.exit_code = 143;
            c.finished_at = now;
        }
        let name = name_of(&c.config);
        Self::record(
            &mut inner,
            format!("StopContainer {name} {timeout_seconds}"),
        );
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        let mut inner = self.inner.lock().unwrap();
        Self::record(&mut inner, format!("RemoveContainer {id}"));
        inner.containers.remove(id);
        Ok(())
    }

    async fn list_containers(&self, pod_uid: Option<&str>) -> Result<Vec<Container>, RuntimeError> {
        let inner = self.inner.lock().unwrap();
        Ok(inner
            .containers
            .iter()
            .filter(|(_, c)| {
                pod_uid.is_none_or(|u| {
                    c.config.labels.get(LABEL_POD_UID).map(|x| x.as_str()) == Some(u)
                })
            })
            .map(|(id, c)| Container {
                id: id.clone(),
                pod_sandbox_id: c.sandbox_id.clone(),
                metadata: c.config.metadata.clone(),
                image: c.config.image.clone(),
                image_ref: format!("sha256:{}", name_of(&c.config)),
                state: c.state as i32,
                created_at: c.created_at,
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
                image_id: String::new(),
            })
            .collect())
    }

    async fn container_status(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        let inner = self.inner.lock().unwrap();
        let c = inner
            .containers
            .get(id)
            .ok_or_else(|| not_found("ContainerStatus", id))?;
        Ok(ContainerStatus {
            id: id.into(),
            metadata: c.config.metadata.clone(),
            state: c.state as i32,
            created_at: c.created_at,
            started_at: c.started_at,
            finished_at: c.finished_at,
            exit_code: c.exit_code,
            image: c.config.image.clone().or(Some(ImageSpec::default())),
            image_ref: format!("sha256:{}", name_of(&c.config)),
            reason: if c.state == ContainerState::ContainerExited {
                if c.exit_code == 0 {
                    "Completed"
                } else {
                    "Error"
                }
                .into()
            } else {
                String::new()
            },
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
            log_path: inner
                .sandboxes
                .get(&c.sandbox_id)
                .map(|s| format!("{}/{}", s.config.log_directory, c.config.log_path))
                .unwrap_or_default(),
            ..Default::default()
        })
    }

    async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        _timeout_seconds: i64,
    ) -> Result<ExecSyncResponse, RuntimeError> {
        let mut inner = self.inner.lock().unwrap();
        Self::record(&mut inner, format!("ExecSync {id} {}", cmd.join(" ")));
        let code = cmd
            .first()
            .and_then(|c| inner.exec_results.get(c).copied())
            .unwrap_or(0);
        Ok(ExecSyncResponse {
            stdout: Vec::new(),
            stderr: Vec::new(),
            exit_code: code,
        })
    }

    async fn exec(&self, request: ExecRequest) -> Result<String, RuntimeError> {
        Ok(format!("http://127.0.0.1:1/exec/{}", request.container_id))
    }

    async fn attach(&self, request: AttachRequest) -> Result<String, RuntimeError> {
        let mut inner = self.inner.lock().unwrap();
        Self::record(&mut inner, format!("Attach {}", request.container_id));
        Ok(format!(
            "http://127.0.0.1:1/attach/{}",
            request.container_id
        ))
    }

    async fn port_forward(
        &self,
        sandbox_id: &str,
        _ports: Vec<i32>,
    ) -> Result<String, RuntimeError> {
        let mut inner = self.inner.lock().unwrap();
        if !inner.sandboxes.contains_key(sandbox_id) {
            return Err(not_found("PortForward", sandbox_id));
        }
        Self::record(&mut inner, format!("PortForward {sandbox_id}"));
        Ok(format!("http://127.0.0.1:1/portforward/{sandbox_id}"))
    }

    async fn image_id(&self, image: &str) -> Result<Option<String>, RuntimeError> {
        let inner = self.inner.lock().unwrap();
        if self.missing_images.lock().unwrap().contains(image) && !inner.images.contains(image) {
            return Ok(None);
        }
        Ok(Some(format!("sha256:{image}")))
    }

    async fn pull_image(
        &self,
        image: &str,
        _sandbox_config: &PodSandboxConfig,
    ) -> Result<String, RuntimeError> {
        let mut inner = self.inner.lock().unwrap();
        Self::record(&mut inner, format!("PullImage {image}"));
        inner.images.insert(image.into());
        Ok(format!("sha256:{image}"))
    }
}
