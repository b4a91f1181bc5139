//! Installation phases for one host: each observes the host first and runs only when the host
//! differs from the desired state, so a re-run on a converged host does nothing and a run that
//! was killed midway converges when repeated.

use std::path::{Path, PathBuf};

use kinit_executor::{shell_quote, ExecError, Host, UploadSource};
use kinit_images::kinit::archive_file_name;
use kinit_images::KinitImage;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::desired::DesiredFile;
use crate::sync::{self, FileChange, FileStatus, STATE_ROOT};

/// Where the kinit binary lives on hosts (the agent unit and static pods run it from here).
pub const BINARY_PATH: &str = "/usr/local/bin/kinit";
/// containerd's configuration file, rendered by kinit.
pub const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
/// The agent's systemd unit name.
pub const AGENT_UNIT: &str = "kinit-agent.service";

/// containerd's CNI plugin directory; kinit links its binary there under the plugin names.
pub const CNI_BIN_DIR: &str = "/opt/cni/bin";

/// Where hosts keep the image archives they built and the digest of the binary they came from.
pub const IMAGES_DIR: &str = "/var/lib/kinit/images";

/// Files whose change means the agent must restart.
const AGENT_INPUTS: &[&str] = &[
    "/etc/systemd/system/kinit-agent.service",
    "/var/lib/kinit/agent/config.yaml",
    "/etc/kubernetes/kubelet.conf",
];

/// A phase, in the order phases run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PhaseName {
    /// Put this kinit binary at [`BINARY_PATH`].
    Binary,
    /// Write configuration, certificates, kubeconfigs, manifests and units.
    Files,
    /// Link the CNI plugins containerd runs (`kinit-cni`, and `loopback` unless the host
    /// already has one) to the kinit binary.
    CniPlugins,
    /// (Re)start containerd with kinit's configuration.
    Containerd,
    /// Build kinit's images from the installed binary on the host and import them into
    /// containerd's `k8s.io` namespace (no registry involved).
    Images,
    /// (Re)start the node agent.
    Agent,
}

impl PhaseName {
    /// Short human title for progress bars and tables.
    pub fn title(self) -> &'static str {
        match self {
            PhaseName::Binary => "install kinit binary",
            PhaseName::Files => "write files",
            PhaseName::CniPlugins => "link CNI plugins",
            PhaseName::Containerd => "restart containerd",
            PhaseName::Images => "import images",
            PhaseName::Agent => "start node agent",
        }
    }
}

/// One planned phase and why it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedPhase {
    /// Which phase.
    pub phase: PhaseName,
    /// What the observation found, e.g. "3 files differ".
    pub reason: String,
}

/// What a host needs, from one observation.
#[derive(Debug, Clone, Serialize)]
pub struct HostPlan {
    /// Host name.
    pub host: String,
    /// Phases to run, in order; empty when the host is converged.
    pub phases: Vec<PlannedPhase>,
    /// Per-file comparison.
    pub files: Vec<FileChange>,
}

/// The local binary to install and its digest.
#[derive(Debug, Clone)]
pub struct Binary {
    /// Path on the admin box.
    pub path: PathBuf,
    /// Hex SHA-256 of its contents.
    pub sha256: String,
}

impl Binary {
    /// Reads and hashes `path`.
    pub fn load(path: &Path) -> std::io::Result<Binary> {
        let bytes = std::fs::read(path)?;
        Ok(Binary {
            path: path.to_path_buf(),
            sha256: hex::encode(Sha256::digest(&bytes)),
        })
    }
}

/// Everything one host should end up with.
#[derive(Debug, Clone)]
pub struct HostTarget {
    /// The binary to install.
    pub binary: Binary,
    /// The host's desired files.
    pub files: Vec<DesiredFile>,
    /// The admin-box image archive, built once on the admin box from its busybox (so the
    /// libraries in it match that busybox, whatever the hosts have); `None`: no admin box.
    pub admin_box: Option<Binary>,
}

/// The marker of the admin-box archive a host imported last (its SHA-256).
pub const ADMIN_BOX_MARKER: &str = "/var/lib/kinit/images/admin-box.sha256";

impl HostTarget {
    /// The images this host should have.
    pub fn images(&self) -> Vec<KinitImage> {
        let mut images = KinitImage::ALL.to_vec();
        if self.admin_box.is_some() {
            images.push(KinitImage::AdminBox);
        }
        images
    }
}

/// Errors of a phase, naming the host and the phase.
#[derive(Debug, thiserror::Error)]
pub enum PhaseError {
    /// A command or transfer failed.
    #[error("{phase}: {source}")]
    Exec {
        /// The phase's title.
        phase: &'static str,
        /// What failed.
        #[source]
        source: ExecError,
    },
    /// The host lacks something kinit does not install itself.
    #[error("{host}: {what}")]
    Prerequisite {
        /// Host name.
        host: String,
        /// What is missing and how to provide it.
        what: String,
    },
}

/// Lock file that serializes kinit's phase commands on a host. An `apply` killed on the admin
/// box leaves its current remote command running; the next run's commands wait for it
/// instead of racing it (two `ctr import`s of the same image fail).
pub const PHASE_LOCK: &str = "/run/kinit-phase.lock";

/// `command` run under [`PHASE_LOCK`] (flock(1) from util-linux, waiting up to 15 minutes).
fn locked(command: &str) -> String {
    format!("flock -w 900 {PHASE_LOCK} {command}")
}

fn exec(phase: PhaseName) -> impl FnOnce(ExecError) -> PhaseError {
    move |source| PhaseError::Exec {
        phase: phase.title(),
        source,
    }
}

async fn unit_active<H: Host>(host: &H, unit: &str) -> Result<bool, ExecError> {
    Ok(host
        .run(&format!("systemctl is-active --quiet {unit}"))
        .await?
        .success())
}

/// Observes `host` and decides which phases it needs.
pub async fn plan<H: Host>(host: &H, target: &HostTarget) -> Result<HostPlan, PhaseError> {
    let mut phases = Vec::new();

    let remote = host
        .run(&format!("sha256sum {BINARY_PATH} 2>/dev/null"))
        .await
        .map_err(exec(PhaseName::Binary))?;
    let remote_sum = String::from_utf8_lossy(&remote.stdout)
        .split_whitespace()
        .next()
        .map(str::to_string);
    match remote_sum {
        Some(sum) if sum == target.binary.sha256 => {}
        Some(_) => phases.push(PlannedPhase {
            phase: PhaseName::Binary,
            reason: "a different kinit binary is installed".into(),
        }),
        None => phases.push(PlannedPhase {
            phase: PhaseName::Binary,
            reason: "kinit is not installed".into(),
        }),
    }

    let files = sync::observe(host, &target.files)
        .await
        .map_err(exec(PhaseName::Files))?;
    let changed: Vec<&FileChange> = files
        .iter()
        .filter(|c| c.status != FileStatus::UpToDate)
        .collect();
    if !changed.is_empty() {
        phases.push(PlannedPhase {
            phase: PhaseName::Files,
            reason: format!("{} of {} files differ", changed.len(), files.len()),
        });
    }
    let touched = |path: &str| changed.iter().any(|c| c.path == path);

    let links = host
        .run(&format!(
            "[ \"$(readlink {CNI_BIN_DIR}/kinit-cni)\" = {BINARY_PATH} ] && [ -e {CNI_BIN_DIR}/loopback ]"
        ))
        .await
        .map_err(exec(PhaseName::CniPlugins))?;
    if !links.success() {
        phases.push(PlannedPhase {
            phase: PhaseName::CniPlugins,
            reason: "the CNI plugin links are missing".into(),
        });
    }

    let has_containerd = host
        .run("command -v containerd >/dev/null")
        .await
        .map_err(exec(PhaseName::Containerd))?
        .success();
    if !has_containerd {
        return Err(PhaseError::Prerequisite {
            host: host.name().to_string(),
            what: "containerd is not installed; install containerd and runc (Debian/Ubuntu: apt-get install -y containerd runc) and re-run".into(),
        });
    }
    let containerd_active = unit_active(host, "containerd")
        .await
        .map_err(exec(PhaseName::Containerd))?;
    if touched(CONTAINERD_CONFIG) || !containerd_active {
        phases.push(PlannedPhase {
            phase: PhaseName::Containerd,
            reason: if containerd_active {
                "its configuration changed".into()
            } else {
                "containerd is not running".into()
            },
        });
    }

    let marker = host
        .run(&format!(
            "echo \"binary $(cat {IMAGES_DIR}/binary.sha256 2>/dev/null)\"; echo \"admin-box $(cat {ADMIN_BOX_MARKER} 2>/dev/null)\""
        ))
        .await
        .map_err(exec(PhaseName::Images))?;
    let marker = String::from_utf8_lossy(&marker.stdout).into_owned();
    let (imported_from, admin_box_there) = parse_image_markers(&marker);
    let admin_box_stale = target
        .admin_box
        .as_ref()
        .is_some_and(|b| admin_box_there != b.sha256);
    let listed = host
        .run("ctr -n k8s.io images ls -q 2>/dev/null")
        .await
        .map_err(exec(PhaseName::Images))?;
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let tag = KinitImage::default_tag();
    let missing: Vec<String> = target
        .images()
        .iter()
        .map(|i| i.reference(&tag))
        .filter(|r| !listed.lines().any(|l| l.trim() == r))
        .collect();
    if imported_from != target.binary.sha256 || !missing.is_empty() || admin_box_stale {
        phases.push(PlannedPhase {
            phase: PhaseName::Images,
            reason: if !missing.is_empty() {
                format!("{} not in containerd", missing.join(", "))
            } else if imported_from != target.binary.sha256 {
                "the images were built from another kinit binary".into()
            } else {
                "the admin-box image changed".into()
            },
        });
    }

    let agent_active = unit_active(host, AGENT_UNIT)
        .await
        .map_err(exec(PhaseName::Agent))?;
    let binary_changes = phases.iter().any(|p| p.phase == PhaseName::Binary);
    if !agent_active || binary_changes || AGENT_INPUTS.iter().any(|p| touched(p)) {
        phases.push(PlannedPhase {
            phase: PhaseName::Agent,
            reason: if agent_active {
                "its binary or configuration changed".into()
            } else {
                "the agent is not running".into()
            },
        });
    }

    Ok(HostPlan {
        host: host.name().to_string(),
        phases,
        files,
    })
}

/// The digests in the Images phase's markers, from `binary <sha>` / `admin-box <sha>` lines
/// (empty when a marker is missing).
fn parse_image_markers(text: &str) -> (String, String) {
    let value = |label: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(label))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    (value("binary "), value("admin-box "))
}

/// Shell lines for the end of the Images phase: when the images were rebuilt from another
/// binary (`$previous` holds the digest they came from), the containers still running the
/// previous control-plane image are stopped, and the agent starts them again from the new one
/// (the tag stays, the image behind it changed). Sandboxes keep running: the pause process does
/// nothing a new build would change.
fn restart_upgraded_containers(new_digest: &str, control_plane_image: &str) -> String {
    format!(
        r#"if [ -n "$previous" ] && [ "$previous" != {new_digest} ]; then
  ctr -n k8s.io containers ls 2>/dev/null | awk -v image={control_plane_image} '$2 == image {{print $1}}' | while read -r id; do
    ctr -n k8s.io tasks kill --signal SIGTERM "$id" >/dev/null 2>&1 || true
  done
fi
"#
    )
}

/// Runs one planned phase.
pub async fn run_phase<H: Host>(
    host: &H,
    target: &HostTarget,
    plan: &HostPlan,
    phase: PhaseName,
    run_id: &str,
) -> Result<(), PhaseError> {
    let err = exec(phase);
    match phase {
        PhaseName::Binary => sync::write_managed(
            host,
            UploadSource::File(&target.binary.path),
            BINARY_PATH,
            0o755,
            STATE_ROOT,
            run_id,
        )
        .await
        .map_err(err),
        PhaseName::Files => sync::apply(host, &target.files, &plan.files, STATE_ROOT, run_id)
            .await
            .map(|_| ())
            .map_err(err),
        PhaseName::CniPlugins => {
            // Each link kinit makes is listed as managed, so `kinit reset` removes it; a
            // `loopback` plugin the host already had is left alone.
            let managed = format!("{STATE_ROOT}/{}", sync::MANAGED_LIST);
            let script = format!(
                "set -e\nmkdir -p {CNI_BIN_DIR} {STATE_ROOT}\n\
                 ln -sfn {BINARY_PATH} {CNI_BIN_DIR}/kinit-cni\n\
                 grep -qxF {CNI_BIN_DIR}/kinit-cni {managed} 2>/dev/null || echo {CNI_BIN_DIR}/kinit-cni >> {managed}\n\
                 if [ ! -e {CNI_BIN_DIR}/loopback ]; then ln -sfn {BINARY_PATH} {CNI_BIN_DIR}/loopback; \
                 grep -qxF {CNI_BIN_DIR}/loopback {managed} 2>/dev/null || echo {CNI_BIN_DIR}/loopback >> {managed}; fi\n"
            );
            let quoted = shell_quote(&script).expect("the script holds no NUL byte");
            host.run_checked(&locked(&format!("sh -c {quoted}")))
                .await
                .map(|_| ())
                .map_err(err)
        }
        PhaseName::Containerd => host
            .run_checked(&locked(
                "sh -c 'systemctl enable containerd >/dev/null 2>&1; systemctl restart containerd'",
            ))
            .await
            .map(|_| ())
            .map_err(err),
        PhaseName::Images => {
            let tag = KinitImage::default_tag();
            let names: Vec<&str> = KinitImage::ALL.iter().map(|i| i.name()).collect();
            let mut script = format!(
                "set -e\nmkdir -p -m 0700 {IMAGES_DIR}\nprevious=$(cat {IMAGES_DIR}/binary.sha256 2>/dev/null || true)\n{BINARY_PATH} images build --out {IMAGES_DIR} --compression none --image {} >/dev/null\n",
                names.join(",")
            );
            if let Some(archive) = &target.admin_box {
                let remote = format!(
                    "{IMAGES_DIR}/{}",
                    archive_file_name(KinitImage::AdminBox, &tag)
                );
                host.run_checked(&format!("mkdir -p -m 0700 {IMAGES_DIR}"))
                    .await
                    .map_err(exec(phase))?;
                host.upload(
                    UploadSource::File(&archive.path),
                    &remote,
                    &kinit_executor::FileAttrs::mode(0o600),
                )
                .await
                .map_err(exec(phase))?;
                script.push_str(&format!(
                    "ctr -n k8s.io images import --all-platforms {remote} >/dev/null\nrm -f {remote}\necho {} > {ADMIN_BOX_MARKER}\n",
                    archive.sha256
                ));
            }
            for image in KinitImage::ALL {
                script.push_str(&format!(
                    "ctr -n k8s.io images import --all-platforms {IMAGES_DIR}/{} >/dev/null\nrm -f {IMAGES_DIR}/{}\n",
                    archive_file_name(image, &tag),
                    archive_file_name(image, &tag)
                ));
            }
            script.push_str(&format!(
                "echo {} > {IMAGES_DIR}/binary.sha256\n",
                target.binary.sha256
            ));
            script.push_str(&restart_upgraded_containers(
                &target.binary.sha256,
                &KinitImage::ControlPlane.reference(&tag),
            ));
            let quoted = shell_quote(&script).expect("the script holds no NUL byte");
            host.run_checked(&locked(&format!("sh -c {quoted}")))
                .await
                .map(|_| ())
                .map_err(err)
        }
        PhaseName::Agent => host
            .run_checked(&locked(&format!(
                "sh -c 'systemctl daemon-reload && systemctl enable {AGENT_UNIT} >/dev/null 2>&1 && systemctl restart {AGENT_UNIT}'"
            )))
            .await
            .map(|_| ())
            .map_err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_markers_are_read_by_label() {
        let (binary, admin_box) = parse_image_markers("binary abc\nadmin-box def\n");
        assert_eq!((binary.as_str(), admin_box.as_str()), ("abc", "def"));
        // Missing markers read as empty, never as the other marker's value.
        let (binary, admin_box) = parse_image_markers("binary \nadmin-box def\n");
        assert_eq!((binary.as_str(), admin_box.as_str()), ("", "def"));
        let (binary, admin_box) = parse_image_markers("binary abc\nadmin-box \n");
        assert_eq!((binary.as_str(), admin_box.as_str()), ("abc", ""));
    }
}
