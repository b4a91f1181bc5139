//! Phase selection, the phase list, and each host phase's observation against a scripted host.

use std::sync::Mutex;

use kinit_executor::{CommandOutput, ExecError, ExecRequest, ExitStatus, Host};
use sha2::{Digest, Sha256};

use super::*;
use crate::converge::{converge_selected, ConvergeOptions};

/// A host that answers commands from a script: the first rule whose pattern the command
/// contains gives the exit code and standard output; every command is recorded.
struct ScriptedHost {
    rules: Vec<(&'static str, i32, String)>,
    ran: Mutex<Vec<String>>,
}

impl ScriptedHost {
    fn ran(&self) -> Vec<String> {
        self.ran.lock().expect("not poisoned").clone()
    }
}

impl Host for ScriptedHost {
    fn name(&self) -> &str {
        "node1"
    }

    async fn exec(&self, request: ExecRequest<'_>) -> Result<CommandOutput, ExecError> {
        self.ran
            .lock()
            .expect("not poisoned")
            .push(request.command.to_string());
        let (code, stdout) = self
            .rules
            .iter()
            .find(|(pattern, _, _)| request.command.contains(pattern))
            .map(|(_, c, out)| (*c, out.clone()))
            .unwrap_or((0, String::new()));
        Ok(CommandOutput {
            status: ExitStatus::Code(code),
            stdout: stdout.into_bytes(),
            stderr: Vec::new(),
        })
    }
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn target() -> HostTarget {
    HostTarget {
        binary: Binary {
            path: "/nonexistent/kinit".into(),
            sha256: "b1".into(),
        },
        files: vec![
            DesiredFile {
                path: CONTAINERD_CONFIG.into(),
                mode: 0o644,
                contents: b"config".to_vec(),
            },
            DesiredFile {
                path: "/etc/kubernetes/kubelet.conf".into(),
                mode: 0o600,
                contents: b"kubeconfig".to_vec(),
            },
        ],
        admin_box: None,
    }
}

/// The answers of a converged host for [`target`].
fn converged() -> Vec<(&'static str, i32, String)> {
    let tag = KinitImage::default_tag();
    let images: Vec<String> = KinitImage::ALL.iter().map(|i| i.reference(&tag)).collect();
    vec![
        (
            "sha256sum /usr/local/bin/kinit",
            0,
            "b1  /usr/local/bin/kinit\n".into(),
        ),
        (
            "set -u\n",
            0,
            format!("{} 644\n{} 600\n", sha(b"config"), sha(b"kubeconfig")),
        ),
        ("readlink", 0, String::new()),
        ("command -v containerd", 0, String::new()),
        ("is-active --quiet containerd", 0, String::new()),
        (
            "binary.sha256 2>/dev/null)",
            0,
            "binary b1\nadmin-box \n".into(),
        ),
        ("images ls -q", 0, images.join("\n") + "\n"),
        ("is-active --quiet kinit-agent", 0, String::new()),
    ]
}

fn host_with(overrides: &[(&'static str, i32, &str)]) -> ScriptedHost {
    let mut rules: Vec<(&'static str, i32, String)> = overrides
        .iter()
        .map(|(p, c, o)| (*p, *c, o.to_string()))
        .collect();
    rules.extend(converged());
    ScriptedHost {
        rules,
        ran: Mutex::new(Vec::new()),
    }
}

async fn observe_one(phase: &dyn HostPhase<ScriptedHost>, host: &ScriptedHost) -> Option<String> {
    let target = target();
    let mut ctx = HostContext::new(&target, "t");
    // The phases before it observe first, as in a plan.
    for earlier in host_phases::<ScriptedHost>() {
        if earlier.name() == phase.name() {
            break;
        }
        if let Some(reason) = earlier.observe(host, &mut ctx).await.unwrap() {
            ctx.planned.push(PlannedPhase {
                phase: earlier.name(),
                reason,
            });
        }
    }
    phase.observe(host, &mut ctx).await.unwrap()
}

fn phase(name: PhaseName) -> &'static dyn HostPhase<ScriptedHost> {
    host_phases::<ScriptedHost>()
        .into_iter()
        .find(|p| p.name() == name)
        .unwrap()
}

#[test]
fn phase_names_are_unique_kebab_case_ids_in_run_order() {
    let all: Vec<&str> = names().iter().map(|n| n.as_str()).collect();
    assert_eq!(
        all,
        [
            "binary",
            "files",
            "cni-plugins",
            "containerd",
            "images",
            "agent",
            "wait-for-api",
            "cluster-info",
            "addons",
            "wait-for-nodes"
        ]
    );
    assert_eq!(PhaseName::Files.title(), "write files");
    assert_eq!(PhaseName::WaitForApi.title(), "waiting for the API server");
    assert_eq!(
        serde_json::to_value(PhaseName::CniPlugins).unwrap(),
        "cni-plugins"
    );
}

#[test]
fn selection_only_skip_and_their_errors() {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let all = PhaseSelection::new(&[], &[]).unwrap();
    assert!(all.is_all());
    assert!(names().into_iter().all(|n| all.includes(n)));

    let only = PhaseSelection::new(&strings(&["files", "agent"]), &[]).unwrap();
    let included: Vec<PhaseName> = names().into_iter().filter(|n| only.includes(*n)).collect();
    assert_eq!(included, [PhaseName::Files, PhaseName::Agent]);

    let skip = PhaseSelection::new(&[], &strings(&["images"])).unwrap();
    assert!(!skip.includes(PhaseName::Images));
    assert_eq!(names().into_iter().filter(|n| skip.includes(*n)).count(), 9);

    let both = PhaseSelection::new(&strings(&["files", "agent"]), &strings(&["agent"])).unwrap();
    assert!(both.includes(PhaseName::Files) && !both.includes(PhaseName::Agent));

    let err = PhaseSelection::new(&strings(&["files", "node2"]), &[]).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("--only node2: no such phase"), "{text}");
    assert!(
        text.contains("binary, files, cni-plugins, containerd, images, agent, wait-for-api"),
        "{text}"
    );
    let err = PhaseSelection::new(&[], &strings(&["image"])).unwrap_err();
    assert!(err.to_string().starts_with("--skip-phases image:"), "{err}");
    let err = PhaseSelection::new(&strings(&["files"]), &strings(&["files"])).unwrap_err();
    assert!(matches!(err, SelectionError::Empty { .. }), "{err}");
}

#[tokio::test]
async fn a_converged_host_needs_no_phase() {
    let host = host_with(&[]);
    let plan = plan(&host, &target()).await.unwrap();
    assert!(plan.phases.is_empty(), "{plan:?}");
    assert!(plan.skipped.is_empty());
    assert_eq!(plan.files.len(), 2);
}

#[tokio::test]
async fn binary_observation() {
    let p = phase(PhaseName::Binary);
    assert_eq!(observe_one(p, &host_with(&[])).await, None);
    assert_eq!(
        observe_one(
            p,
            &host_with(&[("sha256sum /usr/local/bin/kinit", 0, "b2  x\n")])
        )
        .await
        .as_deref(),
        Some("a different kinit binary is installed")
    );
    assert_eq!(
        observe_one(p, &host_with(&[("sha256sum /usr/local/bin/kinit", 1, "")]))
            .await
            .as_deref(),
        Some("kinit is not installed")
    );
}

#[tokio::test]
async fn files_observation_counts_and_records_the_differences() {
    let host = host_with(&[(
        "set -u\n",
        0,
        &format!("missing\n{} 644\n", sha(b"kubeconfig")),
    )]);
    let target = target();
    let mut ctx = HostContext::new(&target, "t");
    let reason = FilesPhaseUnderTest::observe(&host, &mut ctx).await;
    assert_eq!(reason.as_deref(), Some("2 of 2 files differ"));
    assert!(ctx.file_changed(CONTAINERD_CONFIG));
    // Same bytes, other mode: changed too.
    assert!(ctx.file_changed("/etc/kubernetes/kubelet.conf"));
    assert!(!ctx.file_changed("/etc/other"));
}

/// The files phase observed on its own.
struct FilesPhaseUnderTest;

impl FilesPhaseUnderTest {
    async fn observe(host: &ScriptedHost, ctx: &mut HostContext<'_>) -> Option<String> {
        HostPhase::<ScriptedHost>::observe(&files::FilesPhase, host, ctx)
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn cni_plugins_observation() {
    let p = phase(PhaseName::CniPlugins);
    assert_eq!(observe_one(p, &host_with(&[])).await, None);
    assert_eq!(
        observe_one(p, &host_with(&[("readlink", 1, "")]))
            .await
            .as_deref(),
        Some("the CNI plugin links are missing")
    );
}

#[tokio::test]
async fn containerd_observation_and_its_prerequisite() {
    let p = phase(PhaseName::Containerd);
    assert_eq!(observe_one(p, &host_with(&[])).await, None);
    assert_eq!(
        observe_one(p, &host_with(&[("is-active --quiet containerd", 3, "")]))
            .await
            .as_deref(),
        Some("containerd is not running")
    );
    let config_changed = format!("{} 644\n{} 600\n", sha(b"old"), sha(b"kubeconfig"));
    assert_eq!(
        observe_one(p, &host_with(&[("set -u\n", 0, &config_changed)]))
            .await
            .as_deref(),
        Some("its configuration changed")
    );
    let host = host_with(&[("command -v containerd", 1, "")]);
    let target = target();
    let mut ctx = HostContext::new(&target, "t");
    let err = p.observe(&host, &mut ctx).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("apt-get install -y containerd runc"),
        "{err}"
    );
}

#[tokio::test]
async fn images_observation() {
    let p = phase(PhaseName::Images);
    assert_eq!(observe_one(p, &host_with(&[])).await, None);
    let reason = observe_one(p, &host_with(&[("images ls -q", 0, "")]))
        .await
        .unwrap();
    assert!(reason.ends_with("not in containerd"), "{reason}");
    assert_eq!(
        observe_one(
            p,
            &host_with(&[("binary.sha256 2>/dev/null)", 0, "binary b0\nadmin-box \n")])
        )
        .await
        .as_deref(),
        Some("the images were built from another kinit binary")
    );
}

#[tokio::test]
async fn agent_observation_follows_its_inputs_and_the_binary() {
    let p = phase(PhaseName::Agent);
    assert_eq!(observe_one(p, &host_with(&[])).await, None);
    assert_eq!(
        observe_one(p, &host_with(&[("is-active --quiet kinit-agent", 3, "")]))
            .await
            .as_deref(),
        Some("the agent is not running")
    );
    assert_eq!(
        observe_one(
            p,
            &host_with(&[("sha256sum /usr/local/bin/kinit", 0, "b0  x\n")])
        )
        .await
        .as_deref(),
        Some("its binary or configuration changed")
    );
    let kubeconfig_changed = format!("{} 644\n{} 600\n", sha(b"config"), sha(b"new"));
    assert_eq!(
        observe_one(p, &host_with(&[("set -u\n", 0, &kubeconfig_changed)]))
            .await
            .as_deref(),
        Some("its binary or configuration changed")
    );
}

/// A fresh host: every host phase has work.
fn fresh() -> ScriptedHost {
    host_with(&[
        ("sha256sum /usr/local/bin/kinit", 1, ""),
        ("set -u\n", 0, "missing\nmissing\n"),
        ("readlink", 1, ""),
        ("is-active --quiet containerd", 3, ""),
        ("images ls -q", 0, ""),
        ("is-active --quiet kinit-agent", 3, ""),
    ])
}

#[tokio::test]
async fn only_and_skip_decide_what_runs_and_the_rest_is_reported_skipped() {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let only = PhaseSelection::new(&strings(&["files", "agent"]), &[]).unwrap();
    let plan = plan_selected(&fresh(), &target(), &only).await.unwrap();
    let run: Vec<PhaseName> = plan.phases.iter().map(|p| p.phase).collect();
    let skipped: Vec<PhaseName> = plan.skipped.iter().map(|p| p.phase).collect();
    assert_eq!(run, [PhaseName::Files, PhaseName::Agent]);
    assert_eq!(
        skipped,
        [
            PhaseName::Binary,
            PhaseName::CniPlugins,
            PhaseName::Containerd,
            PhaseName::Images
        ]
    );

    let skip = PhaseSelection::new(&[], &strings(&["images"])).unwrap();
    let plan = plan_selected(&fresh(), &target(), &skip).await.unwrap();
    assert!(plan.phases.iter().all(|p| p.phase != PhaseName::Images));
    assert_eq!(plan.phases.len(), 5);
    assert_eq!(plan.skipped.len(), 1);
    assert_eq!(plan.skipped[0].phase, PhaseName::Images);
}

#[tokio::test]
async fn a_selected_run_executes_only_the_selected_phases() {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // Files would need uploads; agent and cni-plugins run plain commands.
    let only = PhaseSelection::new(&strings(&["cni-plugins", "agent"]), &[]).unwrap();
    let hosts = vec![(fresh(), target())];
    let options = ConvergeOptions {
        concurrency: 1,
        dry_run: false,
        progress: false,
    };
    let outcome = converge_selected(&hosts, options, &only, "t")
        .await
        .remove(0);
    assert!(outcome.ok(), "{:?}", outcome.error);
    assert_eq!(outcome.ran, [PhaseName::CniPlugins, PhaseName::Agent]);
    let ran = hosts[0].0.ran();
    assert!(ran.iter().any(|c| c.contains("ln -sfn")), "{ran:?}");
    assert!(ran
        .iter()
        .any(|c| c.contains("systemctl restart kinit-agent")));
    assert!(!ran.iter().any(|c| c.contains("images build")), "{ran:?}");
    assert!(!ran
        .iter()
        .any(|c| c.contains("systemctl restart containerd")));

    // A dry run observes and runs nothing.
    let dry = ConvergeOptions {
        dry_run: true,
        ..options
    };
    let hosts = vec![(fresh(), target())];
    let outcome = converge_selected(&hosts, dry, &only, "t").await.remove(0);
    assert!(outcome.ran.is_empty());
    assert_eq!(outcome.plan.unwrap().phases.len(), 2);
    assert!(!hosts[0].0.ran().iter().any(|c| c.contains("restart")));
}

#[test]
fn cluster_phases_are_planned_from_the_facts_and_the_selection() {
    let nodes = vec!["node1".to_string(), "node2".to_string()];
    let facts = ClusterFacts {
        addons: &[],
        nodes: &nodes,
    };
    let planned: Vec<PhaseName> = plan_cluster(&facts, &PhaseSelection::all())
        .iter()
        .map(|p| p.phase)
        .collect();
    // No add-on enabled: nothing for the add-ons phase.
    assert_eq!(
        planned,
        [
            PhaseName::WaitForApi,
            PhaseName::ClusterInfo,
            PhaseName::WaitForNodes
        ]
    );
    let only = PhaseSelection::new(&["files".to_string()], &[]).unwrap();
    assert!(plan_cluster(&facts, &only).is_empty());
    let reasons = plan_cluster(&facts, &PhaseSelection::all());
    assert_eq!(reasons[2].reason, "2 node(s) must be Ready");
}
