//! Pod-sync tests over the in-memory runtime.

use super::*;
use crate::fake::FakeRuntime;
use async_trait::async_trait;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::ByteString;

const S: i64 = 1_000_000_000;

struct Objects;

#[async_trait]
impl ObjectSource for Objects {
    async fn config_map(&self, _ns: &str, name: &str) -> Result<Option<ConfigMap>, AgentError> {
        Ok((name == "cfg").then(|| ConfigMap {
            data: Some([("mode".to_string(), "fast".to_string())].into()),
            ..Default::default()
        }))
    }
    async fn secret(&self, _ns: &str, name: &str) -> Result<Option<Secret>, AgentError> {
        Ok((name == "sec").then(|| Secret {
            data: Some([("pw".to_string(), ByteString(b"s3cret".to_vec()))].into()),
            ..Default::default()
        }))
    }
    async fn token(
        &self,
        _pod: &Pod,
        _sa: &str,
        _aud: Option<&str>,
        exp: i64,
    ) -> Result<(String, i64), AgentError> {
        Ok(("tok".into(), exp))
    }
    fn cluster_ca(&self) -> Option<String> {
        None
    }
    async fn services(
        &self,
        ns: &str,
    ) -> Result<Vec<k8s_openapi::api::core::v1::Service>, AgentError> {
        Ok(if ns == "default" {
            vec![serde_json::from_value(serde_json::json!({
                "metadata": {"name": "kubernetes", "namespace": "default"},
                "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443, "protocol": "TCP"}]}
            }))
            .unwrap()]
        } else {
            Vec::new()
        })
    }
}

struct Harness {
    rt: FakeRuntime,
    settings: Settings,
    _dir: tempfile::TempDir,
    state: PodState,
    now: i64,
}

impl Harness {
    fn new() -> Harness {
        let rt = FakeRuntime::new();
        let dir = tempfile::tempdir().unwrap();
        let mut settings = crate::node::tests_support::settings();
        settings.config.root_dir = dir.path().join("root");
        settings.config.pod_logs_dir = dir.path().join("logs");
        Harness {
            rt,
            settings,
            _dir: dir,
            state: PodState::default(),
            now: 1000 * S,
        }
    }

    async fn sync(&mut self, pod: &Pod) -> PodStatus {
        self.rt.set_clock(self.now);
        let ctx = SyncContext {
            runtime: &self.rt,
            settings: &self.settings,
            sources: &Objects,
            now_ns: self.now,
        };
        sync_pod(&ctx, pod, &mut self.state).await.unwrap()
    }

    async fn kill(&mut self, pod: &Pod, grace: i64) -> PodStatus {
        let ctx = SyncContext {
            runtime: &self.rt,
            settings: &self.settings,
            sources: &Objects,
            now_ns: self.now,
        };
        kill_pod(&ctx, pod, &mut self.state, grace).await.unwrap()
    }
}

fn pod(spec: serde_json::Value) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p", "namespace": "default", "uid": "uid-1"},
        "spec": spec
    }))
    .unwrap()
}

fn cs<'a>(status: &'a PodStatus, name: &str) -> &'a ContainerStatus {
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .find(|c| c.name == name)
        .unwrap()
}

fn condition(status: &PodStatus, t: &str) -> String {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == t)
        .map(|c| c.status.clone())
        .unwrap()
}

#[test]
fn backoff_doubles_and_caps() {
    let b = Backoff::next(None, 0);
    assert_eq!(b.delay, BACKOFF_INITIAL);
    assert!(Backoff::in_backoff(Some(&b), 0, 9 * S));
    assert!(!Backoff::in_backoff(Some(&b), 0, 10 * S));
    assert!(!Backoff::in_backoff(None, 0, 0));
    let mut e = b;
    for _ in 0..10 {
        e = Backoff::next(Some(&e), 0);
    }
    assert_eq!(e.delay, BACKOFF_MAX);
    // After a long quiet period the back-off starts over.
    let reset = Backoff::next(Some(&e), 11 * 60 * S);
    assert_eq!(reset.delay, BACKOFF_INITIAL);
}

#[tokio::test]
async fn containers_get_service_links_and_the_managed_hosts_file() {
    let mut h = Harness::new();
    let p = pod(serde_json::json!({
        "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["legacy.db"]}],
        "containers": [
            {"name": "app", "image": "busybox:1", "env": [{"name": "API", "value": "https://$(KUBERNETES_SERVICE_HOST)"}]},
            {"name": "own-hosts", "image": "busybox:1", "volumeMounts": [{"name": "h", "mountPath": "/etc/hosts"}]}
        ],
        "volumes": [{"name": "h", "emptyDir": {}}]
    }));
    h.sync(&p).await;
    let configs = h.rt.container_configs();
    let app = configs
        .iter()
        .find(|c| c.metadata.as_ref().unwrap().name == "app")
        .unwrap();
    let env: BTreeMap<&str, &str> = app
        .envs
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.as_str()))
        .collect();
    assert_eq!(env["KUBERNETES_SERVICE_HOST"], "10.96.0.1");
    assert_eq!(env["KUBERNETES_SERVICE_PORT"], "443");
    assert_eq!(
        env["API"], "https://10.96.0.1",
        "service links expand in env values"
    );
    let hosts = app
        .mounts
        .iter()
        .find(|m| m.container_path == "/etc/hosts")
        .expect("the managed hosts file is mounted");
    let text = std::fs::read_to_string(&hosts.host_path).unwrap();
    assert!(text.contains("10.1.2.3\tlegacy.db"), "{text}");
    assert!(text.contains("\tp\n"), "the pod's own name: {text}");
    let own = configs
        .iter()
        .find(|c| c.metadata.as_ref().unwrap().name == "own-hosts")
        .unwrap();
    let mounted: Vec<&str> = own
        .mounts
        .iter()
        .filter(|m| m.container_path == "/etc/hosts")
        .map(|m| m.host_path.as_str())
        .collect();
    assert_eq!(
        mounted.len(),
        1,
        "only the container's own mount: {mounted:?}"
    );
    assert!(!mounted[0].ends_with("etc-hosts"), "{mounted:?}");
}

#[tokio::test]
async fn a_failing_sandbox_is_retried_with_back_off_not_in_a_loop() {
    let mut h = Harness::new();
    let p = pod(serde_json::json!({"containers": [{"name": "app", "image": "busybox:1"}]}));
    let attempts = |h: &Harness| {
        h.rt.calls()
            .iter()
            .filter(|c| c.starts_with("RunPodSandbox"))
            .count()
    };
    h.rt.fail_sandboxes(2);
    let status = h.sync(&p).await;
    assert_eq!(status.reason.as_deref(), Some("FailedCreatePodSandBox"));
    assert_eq!(attempts(&h), 1);
    // Woken again at once (the runtime's relist saw the sandbox come and go): no new attempt.
    h.now += S / 10;
    let status = h.sync(&p).await;
    assert_eq!(attempts(&h), 1);
    assert!(
        status.message.as_deref().unwrap().contains("back-off 1s"),
        "{:?}",
        status.message
    );
    // After the first second a second attempt, which fails too: now 2 s.
    h.now += S;
    h.sync(&p).await;
    assert_eq!(attempts(&h), 2);
    h.now += S + S / 2;
    h.sync(&p).await;
    assert_eq!(attempts(&h), 2, "still within the 2 s back-off");
    h.now += S;
    let status = h.sync(&p).await;
    assert_eq!(attempts(&h), 3);
    assert_eq!(status.reason, None);
    assert!(h.state.sandbox_failure.is_none());
}

#[tokio::test]
async fn init_containers_run_in_order_then_apps() {
    let mut h = Harness::new();
    let p = pod(serde_json::json!({
        "initContainers": [{"name": "i1", "image": "busybox:1"}, {"name": "i2", "image": "busybox:1"}],
        "containers": [{"name": "app", "image": "busybox:1"}]
    }));
    let s = h.sync(&p).await;
    assert_eq!(s.phase.as_deref(), Some("Pending"));
    assert_eq!(condition(&s, "Initialized"), "False");
    assert!(cs(&s, "i1").state.as_ref().unwrap().running.is_some());
    assert_eq!(
        cs(&s, "app")
            .state
            .as_ref()
            .unwrap()
            .waiting
            .as_ref()
            .unwrap()
            .reason
            .as_deref(),
        Some("PodInitializing")
    );
    h.rt.exit("i1", 0);
    h.sync(&p).await;
    h.rt.exit("i2", 0);
    let s = h.sync(&p).await;
    assert_eq!(s.phase.as_deref(), Some("Running"));
    assert_eq!(condition(&s, "Initialized"), "True");
    assert_eq!(condition(&s, "Ready"), "True");
    assert_eq!(condition(&s, "PodScheduled"), "True");
    let starts: Vec<String> =
        h.rt.calls()
            .into_iter()
            .filter(|c| c.starts_with("StartContainer"))
            .collect();
    assert_eq!(
        starts,
        vec![
            "StartContainer i1",
            "StartContainer i2",
            "StartContainer app"
        ]
    );
    assert_eq!(h.rt.sandbox_count(), 1);
    let app = cs(&s, "app");
    assert!(app
        .container_id
        .as_deref()
        .unwrap()
        .starts_with("containerd://"));
    assert_eq!(app.image_id, "sha256:app");
    assert!(s.start_time.is_some());
    assert_eq!(s.qos_class.as_deref(), Some("BestEffort"));
}

#[tokio::test]
async fn crash_loop_backs_off() {
    let mut h = Harness::new();
    let p = pod(serde_json::json!({"containers": [{"name": "app", "image": "busybox:1"}]}));
    h.sync(&p).await;
    h.rt.exit("app", 1);
    // First crash restarts at once.
    let s = h.sync(&p).await;
    assert_eq!(cs(&s, "app").restart_count, 1);
    assert!(cs(&s, "app").state.as_ref().unwrap().running.is_some());
    let last = cs(&s, "app")
        .last_state
        .as_ref()
        .unwrap()
        .terminated
        .clone()
        .unwrap();
    assert_eq!(last.exit_code, 1);
    h.rt.exit("app", 2);
    let s = h.sync(&p).await;
    let app = cs(&s, "app");
    let waiting = app.state.as_ref().unwrap().waiting.clone().unwrap();
    assert_eq!(waiting.reason.as_deref(), Some("CrashLoopBackOff"));
    assert!(waiting.message.unwrap().contains("back-off 10s"));
    assert_eq!(app.restart_count, 1);
    assert_eq!(s.phase.as_deref(), Some("Running"));
    h.now += 11 * S;
    let s = h.sync(&p).await;
    assert_eq!(cs(&s, "app").restart_count, 2);
    h.rt.exit("app", 2);
    h.now += 11 * S;
    let s = h.sync(&p).await;
    let waiting = cs(&s, "app")
        .state
        .as_ref()
        .unwrap()
        .waiting
        .clone()
        .unwrap();
    assert!(waiting.message.unwrap().contains("back-off 20s"), "doubled");
}

#[tokio::test]
async fn restart_policies_decide_the_phase() {
    let mut h = Harness::new();
    let p = pod(
        serde_json::json!({"restartPolicy": "OnFailure", "containers": [{"name": "job", "image": "busybox:1"}]}),
    );
    h.sync(&p).await;
    h.rt.exit("job", 0);
    let s = h.sync(&p).await;
    assert_eq!(s.phase.as_deref(), Some("Succeeded"));
    assert_eq!(condition(&s, "Ready"), "False");
    assert!(h.rt.calls().iter().any(|c| c.starts_with("StopPodSandbox")));
    // A finished pod is never started again.
    let before = h.rt.calls().len();
    let mut done = p.clone();
    done.status = Some(s);
    h.sync(&done).await;
    assert!(!h.rt.calls()[before..]
        .iter()
        .any(|c| c.starts_with("Start") || c.starts_with("Run")));

    let mut h = Harness::new();
    let p = pod(
        serde_json::json!({"restartPolicy": "Never", "containers": [{"name": "job", "image": "busybox:1"}]}),
    );
    h.sync(&p).await;
    h.rt.exit("job", 3);
    let s = h.sync(&p).await;
    assert_eq!(s.phase.as_deref(), Some("Failed"));
    let t = cs(&s, "job")
        .state
        .as_ref()
        .unwrap()
        .terminated
        .clone()
        .unwrap();
    assert_eq!(t.exit_code, 3);
    assert_eq!(t.reason.as_deref(), Some("Error"));

    let mut h = Harness::new();
    let p = pod(serde_json::json!({"restartPolicy": "Never",
        "initContainers": [{"name": "init", "image": "busybox:1"}],
        "containers": [{"name": "app", "image": "busybox:1"}]}));
    h.sync(&p).await;
    h.rt.exit("init", 1);
    let s = h.sync(&p).await;
    assert_eq!(s.phase.as_deref(), Some("Failed"));
}

#[tokio::test]
async fn liveness_failure_restarts_and_readiness_gates_ready() {
    let mut h = Harness::new();
    let p = pod(
        serde_json::json!({"containers": [{"name": "web", "image": "busybox:1",
        "livenessProbe": {"exec": {"command": ["alive"]}, "periodSeconds": 1, "failureThreshold": 1},
        "readinessProbe": {"exec": {"command": ["ready"]}, "periodSeconds": 1}}]}),
    );
    let s = h.sync(&p).await;
    assert_eq!(condition(&s, "Ready"), "False", "not probed yet");
    h.now += 2 * S;
    let s = h.sync(&p).await;
    assert_eq!(condition(&s, "Ready"), "True");
    assert!(cs(&s, "web").ready);
    h.rt.set_exec_result("alive", 1);
    h.now += 2 * S;
    h.sync(&p).await; // probe fails → StopContainer
    assert!(h
        .rt
        .calls()
        .iter()
        .any(|c| c.starts_with("StopContainer web 30")));
    h.rt.set_exec_result("alive", 0);
    h.now += 2 * S;
    let s = h.sync(&p).await;
    assert_eq!(
        cs(&s, "web").restart_count,
        1,
        "restarted after the liveness kill"
    );
    assert_eq!(condition(&s, "Ready"), "False", "readiness starts over");
}

#[tokio::test]
async fn dead_sandbox_is_recreated() {
    let mut h = Harness::new();
    let p = pod(serde_json::json!({"containers": [{"name": "app", "image": "busybox:1"}]}));
    h.sync(&p).await;
    h.rt.kill_sandboxes();
    let s = h.sync(&p).await;
    let attempts: Vec<u32> =
        h.rt.sandbox_configs()
            .iter()
            .map(|c| c.metadata.as_ref().unwrap().attempt)
            .collect();
    assert!(attempts.contains(&1), "{attempts:?}");
    assert!(cs(&s, "app").state.as_ref().unwrap().running.is_some());
    assert_eq!(cs(&s, "app").restart_count, 1);
}

#[tokio::test]
async fn env_images_and_volumes_reach_the_runtime() {
    let mut h = Harness::new();
    h.rt.remove_image("registry.example/app:2");
    let p = pod(serde_json::json!({
        "volumes": [{"name": "data", "emptyDir": {}}],
        "containers": [{"name": "app", "image": "registry.example/app:2",
        "command": ["run", "--mode=$(MODE)"],
        "env": [
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
            {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "pw"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
        ],
        "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}));
    let s = h.sync(&p).await;
    assert!(h
        .rt
        .calls()
        .contains(&"PullImage registry.example/app:2".to_string()));
    let cfg = h.rt.container_configs().pop().unwrap();
    let env: BTreeMap<String, String> = cfg
        .envs
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect();
    assert_eq!(env["MODE"], "fast");
    assert_eq!(env["PW"], "s3cret");
    assert_eq!(env["POD"], "p");
    assert!(env["IP"].starts_with("10.244.0."));
    assert_eq!(env["NODE"], "n1");
    assert_eq!(cfg.command, vec!["run", "--mode=fast"]);
    assert_eq!(cfg.mounts[0].container_path, "/data");
    assert!(cfg.mounts[0]
        .host_path
        .ends_with("volumes/kubernetes.io~empty-dir/data"));
    assert_eq!(cfg.log_path, "app/0.log");
    assert_eq!(s.phase.as_deref(), Some("Running"));

    // A missing key blocks the container with CreateContainerConfigError.
    let mut h = Harness::new();
    let p = pod(
        serde_json::json!({"containers": [{"name": "app", "image": "busybox:1",
        "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "nope"}}}]}]}),
    );
    let s = h.sync(&p).await;
    let w = cs(&s, "app")
        .state
        .as_ref()
        .unwrap()
        .waiting
        .clone()
        .unwrap();
    assert_eq!(w.reason.as_deref(), Some("CreateContainerConfigError"));
    assert_eq!(s.phase.as_deref(), Some("Pending"));

    // pullPolicy Never with an absent image.
    let mut h = Harness::new();
    h.rt.remove_image("absent:1");
    let p = pod(
        serde_json::json!({"containers": [{"name": "app", "image": "absent:1", "imagePullPolicy": "Never"}]}),
    );
    let s = h.sync(&p).await;
    let w = cs(&s, "app")
        .state
        .as_ref()
        .unwrap()
        .waiting
        .clone()
        .unwrap();
    assert_eq!(w.reason.as_deref(), Some("ErrImageNeverPull"));
}

#[tokio::test]
async fn graceful_kill_runs_pre_stop_then_stops() {
    let mut h = Harness::new();
    let p = pod(
        serde_json::json!({"terminationGracePeriodSeconds": 20, "containers": [{"name": "app", "image": "busybox:1",
        "lifecycle": {"preStop": {"exec": {"command": ["drain"]}}}}]}),
    );
    h.sync(&p).await;
    let s = h.kill(&p, 20).await;
    let calls = h.rt.calls();
    let pre = calls
        .iter()
        .position(|c| c.contains("ExecSync") && c.ends_with("drain"))
        .expect("preStop ran");
    let stop = calls
        .iter()
        .position(|c| c.starts_with("StopContainer app"))
        .expect("stopped");
    assert!(pre < stop);
    assert!(calls[stop].ends_with(" 20"));
    assert!(calls.iter().any(|c| c.starts_with("StopPodSandbox")));
    assert!(cs(&s, "app").state.as_ref().unwrap().terminated.is_some());
    remove_pod(&h.rt, &h.settings, "uid-1").await.unwrap();
    assert_eq!(h.rt.sandbox_count(), 0);
}
