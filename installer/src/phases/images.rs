//! `images`: build kinit's images from the installed binary on the host and import them into
//! containerd's `k8s.io` namespace (no registry involved), plus the admin-box image built on
//! the admin box.

use async_trait::async_trait;
use kinit_executor::{shell_quote, FileAttrs, Host, UploadSource};
use kinit_images::kinit::archive_file_name;
use kinit_images::KinitImage;

use super::{exec_error, locked, HostContext, HostPhase, PhaseError, PhaseName, BINARY_PATH};

/// Where hosts keep the image archives they built and the digest of the binary they came from.
pub const IMAGES_DIR: &str = "/var/lib/kinit/images";

/// The marker of the admin-box archive a host imported last (its SHA-256).
pub const ADMIN_BOX_MARKER: &str = "/var/lib/kinit/images/admin-box.sha256";

impl PhaseName {
    /// The [`ImagesPhase`].
    #[allow(non_upper_case_globals)] // named like the phase, as callers spelled it before
    pub const Images: PhaseName = PhaseName::new("images");
}

/// Builds and imports the images when one is missing or they came from another binary.
pub struct ImagesPhase;

const TITLE: &str = "import images";

#[async_trait]
impl<H: Host> HostPhase<H> for ImagesPhase {
    fn name(&self) -> PhaseName {
        PhaseName::Images
    }

    fn title(&self) -> &'static str {
        TITLE
    }

    async fn observe(
        &self,
        host: &H,
        ctx: &mut HostContext<'_>,
    ) -> Result<Option<String>, PhaseError> {
        let target = ctx.target;
        let marker = host
            .run(&format!(
                "echo \"binary $(cat {IMAGES_DIR}/binary.sha256 2>/dev/null)\"; echo \"admin-box $(cat {ADMIN_BOX_MARKER} 2>/dev/null)\""
            ))
            .await
            .map_err(exec_error(TITLE))?;
        let marker = String::from_utf8_lossy(&marker.stdout).into_owned();
        let (imported_from, admin_box_there) = parse_image_markers(&marker);
        let listed = host
            .run("ctr -n k8s.io images ls -q 2>/dev/null")
            .await
            .map_err(exec_error(TITLE))?;
        let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
        let tag = KinitImage::default_tag();
        let missing: Vec<String> = target
            .images()
            .iter()
            .map(|i| i.reference(&tag))
            .filter(|r| !listed.lines().any(|l| l.trim() == r))
            .collect();
        Ok(decide(
            &missing,
            &imported_from,
            &admin_box_there,
            &target.binary.sha256,
            target.admin_box.as_ref().map(|b| b.sha256.as_str()),
        ))
    }

    async fn run(&self, host: &H, ctx: &HostContext<'_>) -> Result<(), PhaseError> {
        let target = ctx.target;
        let err = exec_error(TITLE);
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
                .map_err(exec_error(TITLE))?;
            host.upload(
                UploadSource::File(&archive.path),
                &remote,
                &FileAttrs::mode(0o600),
            )
            .await
            .map_err(exec_error(TITLE))?;
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
}

/// Why the images must be (re)imported, from what the host has: `missing` image references,
/// the binary digest the images were built from and the admin-box digest imported last.
fn decide(
    missing: &[String],
    imported_from: &str,
    admin_box_there: &str,
    binary_sha256: &str,
    admin_box_sha256: Option<&str>,
) -> Option<String> {
    if !missing.is_empty() {
        Some(format!("{} not in containerd", missing.join(", ")))
    } else if imported_from != binary_sha256 {
        Some("the images were built from another kinit binary".into())
    } else if admin_box_sha256.is_some_and(|want| admin_box_there != want) {
        Some("the admin-box image changed".into())
    } else {
        None
    }
}

/// The digests in the images phase's markers, from `binary <sha>` / `admin-box <sha>` lines
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

/// Shell lines for the end of the images phase: when the images were rebuilt from another
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

    #[test]
    fn images_are_imported_when_missing_stale_or_the_admin_box_changed() {
        let missing = vec!["kinit.local/pause:x".to_string()];
        assert_eq!(
            decide(&missing, "b", "a", "b", None).as_deref(),
            Some("kinit.local/pause:x not in containerd")
        );
        assert_eq!(
            decide(&[], "old", "", "new", None).as_deref(),
            Some("the images were built from another kinit binary")
        );
        assert_eq!(
            decide(&[], "b", "a1", "b", Some("a2")).as_deref(),
            Some("the admin-box image changed")
        );
        assert_eq!(decide(&[], "b", "a", "b", Some("a")), None);
        // Without an admin box, whatever marker the host has does not matter.
        assert_eq!(decide(&[], "b", "stale", "b", None), None);
    }
}
