//! The container runtime behind a small trait: CRI v1 over containerd's unix socket
//! ([`CriRuntime`]) in production, an in-memory fake in unit tests.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    AttachRequest, Container, ContainerConfig, ContainerFilter, ContainerStatus,
    ContainerStatusRequest, CreateContainerRequest, ExecRequest, ExecSyncRequest, ExecSyncResponse,
    ImageSpec, ImageStatusRequest, ListContainersRequest, ListPodSandboxRequest, PodSandbox,
    PodSandboxConfig, PodSandboxFilter, PodSandboxStatus, PodSandboxStatusRequest,
    PortForwardRequest, PullImageRequest, RemoveContainerRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StatusRequest, StopContainerRequest,
    StopPodSandboxRequest, VersionRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

/// Label with the pod uid on every sandbox and container the agent creates.
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
/// Label with the pod name.
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
/// Label with the pod namespace.
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// Label with the container name.
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// Label naming the node whose agent created the sandbox (garbage collection only touches
/// these).
pub const LABEL_NODE: &str = "kinit.io/node";

/// A failed runtime call.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The runtime socket could not be reached.
    #[error("cannot reach the container runtime at {endpoint}: {message}; is containerd running?")]
    Unavailable {
        /// The endpoint.
        endpoint: String,
        /// What went wrong.
        message: String,
    },
    /// A CRI call failed.
    #[error("CRI {op} failed: {message}")]
    Call {
        /// The CRI method.
        op: &'static str,
        /// gRPC status code.
        code: tonic::Code,
        /// The runtime's message.
        message: String,
    },
}

impl RuntimeError {
    /// Whether the object the call referred to does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            RuntimeError::Call {
                code: tonic::Code::NotFound,
                ..
            }
        ) || matches!(self, RuntimeError::Call { message, .. } if message.contains("not found"))
    }
}

/// The CRI operations the agent uses. Types are the CRI v1 protobuf types.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// `containerd://1.6.20`-style name and version.
    async fn version(&self) -> Result<String, RuntimeError>;
    /// Whether the runtime reports itself ready (RuntimeReady and NetworkReady), with a reason.
    async fn status(&self) -> Result<(bool, String), RuntimeError>;
    /// Creates and starts a sandbox; returns its id.
    async fn run_pod_sandbox(&self, config: &PodSandboxConfig) -> Result<String, RuntimeError>;
    /// Stops a sandbox and its containers.
    async fn stop_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError>;
    /// Removes a stopped sandbox.
    async fn remove_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError>;
    /// Sandbox status (IPs, state).
    async fn pod_sandbox_status(&self, id: &str) -> Result<PodSandboxStatus, RuntimeError>;
    /// Sandboxes, optionally only those of one pod uid.
    async fn list_pod_sandboxes(
        &self,
        pod_uid: Option<&str>,
    ) -> Result<Vec<PodSandbox>, RuntimeError>;
    /// Creates a container in a sandbox; returns its id.
    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
        sandbox_config: &PodSandboxConfig,
    ) -> Result<String, RuntimeError>;
    /// Starts a created container.
    async fn start_container(&self, id: &str) -> Result<(), RuntimeError>;
    /// Stops a container: SIGTERM, then SIGKILL after `timeout_seconds`.
    async fn stop_container(&self, id: &str, timeout_seconds: i64) -> Result<(), RuntimeError>;
    /// Removes a container.
    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError>;
    /// Containers, optionally only those of one pod uid.
    async fn list_containers(&self, pod_uid: Option<&str>) -> Result<Vec<Container>, RuntimeError>;
    /// Full container status (exit code, times, log path).
    async fn container_status(&self, id: &str) -> Result<ContainerStatus, RuntimeError>;
    /// Runs a command in a container and waits for it.
    async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout_seconds: i64,
    ) -> Result<ExecSyncResponse, RuntimeError>;
    /// Prepares a streaming exec; returns the runtime's streaming URL.
    async fn exec(&self, request: ExecRequest) -> Result<String, RuntimeError>;
    /// Prepares a streaming attach to a running container's main process; returns the
    /// runtime's streaming URL.
    async fn attach(&self, request: AttachRequest) -> Result<String, RuntimeError>;
    /// Prepares a streaming port-forward into a sandbox's network namespace; returns the
    /// runtime's streaming URL. `ports` may be empty: SPDY clients name ports per stream.
    async fn port_forward(&self, sandbox_id: &str, ports: Vec<i32>)
        -> Result<String, RuntimeError>;
    /// The image's id when it is present on the node.
    async fn image_id(&self, image: &str) -> Result<Option<String>, RuntimeError>;
    /// Pulls an image; returns its reference.
    async fn pull_image(
        &self,
        image: &str,
        sandbox_config: &PodSandboxConfig,
    ) -> Result<String, RuntimeError>;
}

/// CRI v1 client over a unix socket (containerd's `io.containerd.grpc.v1.cri` plugin).
#[derive(Clone)]
pub struct CriRuntime {
    endpoint: String,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

fn call(op: &'static str) -> impl Fn(tonic::Status) -> RuntimeError {
    move |s| RuntimeError::Call {
        op,
        code: s.code(),
        message: s.message().to_string(),
    }
}

impl CriRuntime {
    /// Connects to `unix:///path` (or a bare path). The connection is lazy: calls fail with
    /// [`RuntimeError::Unavailable`]-style errors until the socket exists.
    pub async fn connect(endpoint: &str) -> Result<CriRuntime, RuntimeError> {
        let path: PathBuf = endpoint.strip_prefix("unix://").unwrap_or(endpoint).into();
        if endpoint.contains("://") && !endpoint.starts_with("unix://") {
            return Err(RuntimeError::Unavailable {
                endpoint: endpoint.into(),
                message: "only unix:// endpoints are supported".into(),
            });
        }
        // The URI is a placeholder: the connector below always dials the socket.
        let channel = Endpoint::try_from("http://[::]:50051")
            .map_err(|e| RuntimeError::Unavailable {
                endpoint: endpoint.into(),
                message: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }));
        // Exec/log payloads and large list responses exceed tonic's 4 MiB default.
        let limit = 64 << 20;
        Ok(CriRuntime {
            endpoint: endpoint.into(),
            runtime: RuntimeServiceClient::new(channel.clone()).max_decoding_message_size(limit),
            images: ImageServiceClient::new(channel).max_decoding_message_size(limit),
        })
    }

    /// The endpoint this client dials.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

#[async_trait]
impl Runtime for CriRuntime {
    async fn version(&self) -> Result<String, RuntimeError> {
        let v = self
            .runtime
            .clone()
            .version(VersionRequest {
                version: "v1".into(),
            })
            .await
            .map_err(|s| match s.code() {
                tonic::Code::Unavailable | tonic::Code::Unknown => RuntimeError::Unavailable {
                    endpoint: self.endpoint.clone(),
                    message: s.message().to_string(),
                },
                _ => call("Version")(s),
            })?
            .into_inner();
        Ok(format!("{}://{}", v.runtime_name, v.runtime_version))
    }

    async fn status(&self) -> Result<(bool, String), RuntimeError> {
        let s = self
            .runtime
            .clone()
            .status(StatusRequest { verbose: false })
            .await
            .map_err(call("Status"))?
            .into_inner();
        let conditions = s.status.map(|s| s.conditions).unwrap_or_default();
        let failing: Vec<String> = conditions
            .iter()
            .filter(|c| !c.status)
            .map(|c| format!("{} is false: {} {}", c.r#type, c.reason, c.message))
            .collect();
        Ok((failing.is_empty(), failing.join("; ")))
    }

    async fn run_pod_sandbox(&self, config: &PodSandboxConfig) -> Result<String, RuntimeError> {
        Ok(self
            .runtime
            .clone()
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .map_err(call("RunPodSandbox"))?
            .into_inner()
            .pod_sandbox_id)
    }

    async fn stop_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        self.runtime
            .clone()
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .map_err(call("StopPodSandbox"))?;
        Ok(())
    }

    async fn remove_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        self.runtime
            .clone()
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .map_err(call("RemovePodSandbox"))?;
        Ok(())
    }

    async fn pod_sandbox_status(&self, id: &str) -> Result<PodSandboxStatus, RuntimeError> {
        self.runtime
            .clone()
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: false,
            })
            .await
            .map_err(call("PodSandboxStatus"))?
            .into_inner()
            .status
            .ok_or(RuntimeError::Call {
                op: "PodSandboxStatus",
                code: tonic::Code::Internal,
                message: format!("no status returned for sandbox {id}"),
            })
    }

    async fn list_pod_sandboxes(
        &self,
        pod_uid: Option<&str>,
    ) -> Result<Vec<PodSandbox>, RuntimeError> {
        let filter = pod_uid.map(|uid| PodSandboxFilter {
            label_selector: [(LABEL_POD_UID.to_string(), uid.to_string())].into(),
            ..Default::default()
        });
        Ok(self
            .runtime
            .clone()
            .list_pod_sandbox(ListPodSandboxRequest { filter })
            .await
            .map_err(call("ListPodSandbox"))?
            .into_inner()
            .items)
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
        sandbox_config: &PodSandboxConfig,
    ) -> Result<String, RuntimeError> {
        Ok(self
            .runtime
            .clone()
            .create_container(CreateContainerRequest {
                pod_sandbox_id: sandbox_id.into(),
                config: Some(config.clone()),
                sandbox_config: Some(sandbox_config.clone()),
            })
            .await
            .map_err(call("CreateContainer"))?
            .into_inner()
            .container_id)
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.runtime
            .clone()
            .start_container(StartContainerRequest {
                container_id: id.into(),
            })
            .await
            .map_err(call("StartContainer"))?;
        Ok(())
    }

    async fn stop_container(&self, id: &str, timeout_seconds: i64) -> Result<(), RuntimeError> {
        let mut request = tonic::Request::new(StopContainerRequest {
            container_id: id.into(),
            timeout: timeout_seconds,
        });
        request.set_timeout(Duration::from_secs(timeout_seconds.max(0) as u64 + 30));
        self.runtime
            .clone()
            .stop_container(request)
            .await
            .map_err(call("StopContainer"))?;
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.runtime
            .clone()
            .remove_container(RemoveContainerRequest {
                container_id: id.into(),
            })
            .await
            .map_err(call("RemoveContainer"))?;
        Ok(())
    }

    async fn list_containers(&self, pod_uid: Option<&str>) -> Result<Vec<Container>, RuntimeError> {
        let filter = pod_uid.map(|uid| ContainerFilter {
            label_selector: [(LABEL_POD_UID.to_string(), uid.to_string())].into(),
            ..Default::default()
        });
        Ok(self
            .runtime
            .clone()
            .list_containers(ListContainersRequest { filter })
            .await
            .map_err(call("ListContainers"))?
            .into_inner()
            .containers)
    }

    async fn container_status(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        self.runtime
            .clone()
            .container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .map_err(call("ContainerStatus"))?
            .into_inner()
            .status
            .ok_or(RuntimeError::Call {
                op: "ContainerStatus",
                code: tonic::Code::Internal,
                message: format!("no status returned for container {id}"),
            })
    }

    async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout_seconds: i64,
    ) -> Result<ExecSyncResponse, RuntimeError> {
        let mut request = tonic::Request::new(ExecSyncRequest {
            container_id: id.into(),
            cmd,
            timeout: timeout_seconds,
        });
        request.set_timeout(Duration::from_secs(timeout_seconds.max(1) as u64 + 5));
        Ok(self
            .runtime
            .clone()
            .exec_sync(request)
            .await
            .map_err(call("ExecSync"))?
            .into_inner())
    }

    async fn exec(&self, request: ExecRequest) -> Result<String, RuntimeError> {
        Ok(self
            .runtime
            .clone()
            .exec(request)
            .await
            .map_err(call("Exec"))?
            .into_inner()
            .url)
    }

    async fn attach(&self, request: AttachRequest) -> Result<String, RuntimeError> {
        Ok(self
            .runtime
            .clone()
            .attach(request)
            .await
            .map_err(call("Attach"))?
            .into_inner()
            .url)
    }

    async fn port_forward(
        &self,
        sandbox_id: &str,
        ports: Vec<i32>,
    ) -> Result<String, RuntimeError> {
        Ok(self
            .runtime
            .clone()
            .port_forward(PortForwardRequest {
                pod_sandbox_id: sandbox_id.into(),
                port: ports,
            })
            .await
            .map_err(call("PortForward"))?
            .into_inner()
            .url)
    }

    async fn image_id(&self, image: &str) -> Result<Option<String>, RuntimeError> {
        Ok(self
            .images
            .clone()
            .image_status(ImageStatusRequest {
                image: Some(ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .map_err(call("ImageStatus"))?
            .into_inner()
            .image
            .map(|i| i.id))
    }

    async fn pull_image(
        &self,
        image: &str,
        sandbox_config: &PodSandboxConfig,
    ) -> Result<String, RuntimeError> {
        Ok(self
            .images
            .clone()
            .pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                auth: None,
                sandbox_config: Some(sandbox_config.clone()),
            })
            .await
            .map_err(call("PullImage"))?
            .into_inner()
            .image_ref)
    }
}
