//! Liveness, readiness and startup probes: exec (CRI ExecSync), HTTP GET and TCP socket, with
//! initialDelaySeconds, periodSeconds, timeoutSeconds, failureThreshold and successThreshold.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::runtime::Runtime;

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProbeKind {
    /// Restart the container when it fails.
    Liveness,
    /// Gate the Ready condition.
    Readiness,
    /// Hold off the other probes until it succeeds; restart when it fails.
    Startup,
}

#[derive(Debug, Clone, Default)]
struct Tracker {
    successes: i32,
    failures: i32,
    result: Option<bool>,
    last_run_ns: Option<i64>,
}

/// Probe results of one container instance (keyed by container id, so a restart starts over).
#[derive(Debug, Clone, Default)]
pub struct ContainerProbes {
    trackers: BTreeMap<ProbeKind, Tracker>,
}

impl ContainerProbes {
    /// Whether the startup probe passed (or there is none).
    pub fn started(&self, container: &Container) -> bool {
        container.startup_probe.is_none()
            || self
                .trackers
                .get(&ProbeKind::Startup)
                .and_then(|t| t.result)
                .unwrap_or(false)
    }

    /// Whether the container counts as ready (readiness passed, or no readiness probe).
    pub fn ready(&self, container: &Container) -> bool {
        if !self.started(container) {
            return false;
        }
        container.readiness_probe.is_none()
            || self
                .trackers
                .get(&ProbeKind::Readiness)
                .and_then(|t| t.result)
                .unwrap_or(false)
    }

    /// Whether liveness or startup crossed its failure threshold (the container must restart).
    pub fn must_restart(&self) -> Option<ProbeKind> {
        [ProbeKind::Startup, ProbeKind::Liveness]
            .into_iter()
            .find(|k| self.trackers.get(k).and_then(|t| t.result) == Some(false))
    }
}

/// Where network probes connect.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    /// The pod IP (host IP for hostNetwork pods).
    pub pod_ip: String,
}

/// Outcome of one probe attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    /// Passed.
    Success,
    /// Failed, with why.
    Failure(String),
}

fn resolve_port(port: &IntOrString, container: &Container) -> Option<u16> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).ok(),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .or_else(|| name.parse().ok()),
    }
}

/// Runs one probe once.
pub async fn run_probe(
    runtime: &dyn Runtime,
    probe: &Probe,
    container: &Container,
    container_id: &str,
    target: &ProbeTarget,
) -> ProbeResult {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(exec) = &probe.exec {
        let cmd = exec.command.clone().unwrap_or_default();
        return match runtime
            .exec_sync(container_id, cmd, timeout.as_secs() as i64)
            .await
        {
            Ok(r) if r.exit_code == 0 => ProbeResult::Success,
            Ok(r) => ProbeResult::Failure(format!(
                "command exited with {}: {}",
                r.exit_code,
                String::from_utf8_lossy(&r.stdout).trim()
            )),
            Err(e) => ProbeResult::Failure(e.to_string()),
        };
    }
    if let Some(http) = &probe.http_get {
        let Some(port) = resolve_port(&http.port, container) else {
            return ProbeResult::Failure(format!("unknown port {:?}", http.port));
        };
        let host = http
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| target.pod_ip.clone());
        let scheme = http.scheme.as_deref().unwrap_or("HTTP").to_lowercase();
        let path = http.path.clone().unwrap_or_else(|| "/".into());
        let host_part = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let url = format!("{scheme}://{host_part}:{port}{path}");
        // Like the kubelet, HTTPS probes do not verify the container's certificate.
        let client = match reqwest::Client::builder()
            .timeout(timeout)
            .danger_accept_invalid_certs(true)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::limited(10))
            .build()
        {
            Ok(c) => c,
            Err(e) => return ProbeResult::Failure(e.to_string()),
        };
        let mut req = client.get(&url).header("User-Agent", "kube-probe/1.33");
        for h in http.http_headers.iter().flatten() {
            req = req.header(&h.name, &h.value);
        }
        return match req.send().await {
            Ok(r) if (200..400).contains(&r.status().as_u16()) => ProbeResult::Success,
            Ok(r) => ProbeResult::Failure(format!(
                "HTTP probe failed with statuscode: {}",
                r.status().as_u16()
            )),
            Err(e) => ProbeResult::Failure(format!("Get {url:?}: {e}")),
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let Some(port) = resolve_port(&tcp.port, container) else {
            return ProbeResult::Failure(format!("unknown port {:?}", tcp.port));
        };
        let host = tcp
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| target.pod_ip.clone());
        return match tokio::time::timeout(
            timeout,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        {
            Ok(Ok(_)) => ProbeResult::Success,
            Ok(Err(e)) => ProbeResult::Failure(format!("dial tcp {host}:{port}: {e}")),
            Err(_) => ProbeResult::Failure(format!("dial tcp {host}:{port}: timeout")),
        };
    }
    // gRPC probes are not implemented; treating them as passing keeps such pods running.
    ProbeResult::Success
}

impl ContainerProbes {
    /// Runs the probes of `container` that are due at `now_ns` (container started at
    /// `started_ns`). Returns the failures (kind, message) seen in this round.
    pub async fn run_due(
        &mut self,
        runtime: &dyn Runtime,
        container: &Container,
        container_id: &str,
        started_ns: i64,
        now_ns: i64,
        target: &ProbeTarget,
    ) -> Vec<(ProbeKind, String)> {
        let mut failures = Vec::new();
        let started = self.started(container);
        let probes = [
            (
                ProbeKind::Startup,
                container.startup_probe.as_ref(),
                !started,
            ),
            (
                ProbeKind::Liveness,
                container.liveness_probe.as_ref(),
                started,
            ),
            (
                ProbeKind::Readiness,
                container.readiness_probe.as_ref(),
                started,
            ),
        ];
        for (kind, probe, active) in probes {
            let (Some(probe), true) = (probe, active) else {
                continue;
            };
            let tracker = self.trackers.entry(kind).or_default();
            let delay = probe.initial_delay_seconds.unwrap_or(0) as i64 * 1_000_000_000;
            let period = probe.period_seconds.unwrap_or(10).max(1) as i64 * 1_000_000_000;
            if now_ns < started_ns + delay {
                continue;
            }
            if tracker
                .last_run_ns
                .is_some_and(|last| now_ns < last + period)
            {
                continue;
            }
            tracker.last_run_ns = Some(now_ns);
            let result = run_probe(runtime, probe, container, container_id, target).await;
            let tracker = self.trackers.entry(kind).or_default();
            let success_threshold = probe.success_threshold.unwrap_or(1).max(1);
            let failure_threshold = probe.failure_threshold.unwrap_or(3).max(1);
            match result {
                ProbeResult::Success => {
                    tracker.failures = 0;
                    tracker.successes += 1;
                    if tracker.successes >= success_threshold
                        || (kind != ProbeKind::Readiness && tracker.result != Some(true))
                    {
                        tracker.result = Some(true);
                    }
                }
                ProbeResult::Failure(message) => {
                    tracker.successes = 0;
                    tracker.failures += 1;
                    if tracker.failures >= failure_threshold {
                        tracker.result = Some(false);
                    }
                    failures.push((kind, message));
                }
            }
        }
        failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeRuntime;

    fn container(probes: serde_json::Value) -> Container {
        let mut c = serde_json::json!({"name": "c", "image": "i", "ports": [{"name": "http", "containerPort": 1}]});
        c.as_object_mut()
            .unwrap()
            .extend(probes.as_object().unwrap().clone());
        serde_json::from_value(c).unwrap()
    }

    const S: i64 = 1_000_000_000;

    #[tokio::test]
    async fn thresholds_and_delays() {
        let rt = FakeRuntime::new();
        let c = container(serde_json::json!({
            "livenessProbe": {"exec": {"command": ["check"]}, "initialDelaySeconds": 5, "periodSeconds": 2, "failureThreshold": 2},
            "readinessProbe": {"exec": {"command": ["ready"]}, "periodSeconds": 1, "successThreshold": 2, "failureThreshold": 1}
        }));
        let target = ProbeTarget {
            pod_ip: "127.0.0.1".into(),
        };
        let mut p = ContainerProbes::default();
        assert!(!p.ready(&c));
        p.run_due(&rt, &c, "id", 0, S, &target).await;
        assert!(!p.ready(&c), "successThreshold 2 not yet met");
        p.run_due(&rt, &c, "id", 0, 2 * S, &target).await;
        assert!(p.ready(&c));
        rt.set_exec_result("check", 1);
        rt.set_exec_result("ready", 1);
        // Liveness starts after the initial delay.
        let f = p.run_due(&rt, &c, "id", 0, 3 * S, &target).await;
        assert_eq!(f.len(), 1);
        assert!(!p.ready(&c));
        assert_eq!(p.must_restart(), None);
        let f = p.run_due(&rt, &c, "id", 0, 5 * S, &target).await;
        assert_eq!(f[0].0, ProbeKind::Liveness);
        assert_eq!(p.must_restart(), None, "one failure is under the threshold");
        p.run_due(&rt, &c, "id", 0, 6 * S, &target).await; // period not elapsed for liveness
        assert_eq!(p.must_restart(), None);
        p.run_due(&rt, &c, "id", 0, 7 * S, &target).await;
        assert_eq!(p.must_restart(), Some(ProbeKind::Liveness));
    }

    #[tokio::test]
    async fn startup_gates_others() {
        let rt = FakeRuntime::new();
        rt.set_exec_result("boot", 1);
        let c = container(serde_json::json!({
            "startupProbe": {"exec": {"command": ["boot"]}, "periodSeconds": 1, "failureThreshold": 30},
            "readinessProbe": {"exec": {"command": ["ready"]}, "periodSeconds": 1}
        }));
        let target = ProbeTarget {
            pod_ip: "127.0.0.1".into(),
        };
        let mut p = ContainerProbes::default();
        p.run_due(&rt, &c, "id", 0, S, &target).await;
        assert!(!p.started(&c));
        assert!(!rt.calls().iter().any(|c| c.contains("ready")));
        rt.set_exec_result("boot", 0);
        p.run_due(&rt, &c, "id", 0, 2 * S, &target).await;
        assert!(p.started(&c));
        p.run_due(&rt, &c, "id", 0, 3 * S, &target).await;
        assert!(p.ready(&c));
    }

    #[tokio::test]
    async fn network_probes() {
        let rt = FakeRuntime::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let status = if req.starts_with("GET /ok") {
                    "200 OK"
                } else {
                    "500 Oops"
                };
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            }
        });
        let target = ProbeTarget {
            pod_ip: "127.0.0.1".into(),
        };
        let c = container(serde_json::json!({}));
        let probe = |v: serde_json::Value| -> Probe { serde_json::from_value(v).unwrap() };
        let ok = probe(serde_json::json!({"httpGet": {"path": "/ok", "port": port}}));
        assert_eq!(
            run_probe(&rt, &ok, &c, "id", &target).await,
            ProbeResult::Success
        );
        let bad = probe(serde_json::json!({"httpGet": {"path": "/bad", "port": port}}));
        assert!(
            matches!(run_probe(&rt, &bad, &c, "id", &target).await, ProbeResult::Failure(m) if m.contains("500"))
        );
        let tcp = probe(serde_json::json!({"tcpSocket": {"port": port}}));
        assert_eq!(
            run_probe(&rt, &tcp, &c, "id", &target).await,
            ProbeResult::Success
        );
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        let tcp = probe(serde_json::json!({"tcpSocket": {"port": closed_port}}));
        assert!(matches!(
            run_probe(&rt, &tcp, &c, "id", &target).await,
            ProbeResult::Failure(_)
        ));
    }
}
