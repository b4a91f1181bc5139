//! The base image every lab host overlays: Debian minbase + systemd, sshd, containerd, runc.
//! Built once with debootstrap and cached under a name that carries a hash of the recipe, so a
//! changed recipe builds a new image. Built into a temporary directory and renamed when
//! complete: a half-built image is never used.

use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::error::LabError;
use crate::system::{find_tool, remove_tree, run_tool};
use crate::Progress;

/// Packages installed on top of debootstrap's minbase.
pub const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "openssh-server",
    "iproute2",
    "iptables",
    "nftables",
    "dbus",
    "procps",
    "containerd",
    "runc",
    "ca-certificates",
    "curl",
    // Lets the lab exercise the executor's `sudo -n` path with the non-root `kinit` user.
    "sudo",
];

/// Non-root user with passwordless sudo in every lab host (uid/gid 1000).
pub const LAB_SUDO_USER: &str = "kinit";

/// Finishes the image inside a chroot: services, users, sysctls, no baked-in identities.
const SETUP_SCRIPT: &str = r#"set -e
systemctl enable ssh containerd
# Hosts get their own keys and machine-id when a lab comes up.
rm -f /etc/ssh/ssh_host_*
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
mkdir -p /etc/ssh/sshd_config.d
cat > /etc/ssh/sshd_config.d/10-kinit-lab.conf <<'EOF'
HostKey /etc/ssh/ssh_host_ed25519_key
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
EOF
# What a prepared Kubernetes host has (the preflight checks these).
cat > /etc/sysctl.d/99-kinit-lab.conf <<'EOF'
net.ipv4.ip_forward = 1
net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
EOF
groupadd --gid 1000 kinit
useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash kinit
echo 'kinit ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/kinit
chmod 0440 /etc/sudoers.d/kinit
# A container has no consoles to log in on.
systemctl mask getty@tty1.service serial-getty@ttyS0.service >/dev/null 2>&1 || true
apt-get clean
rm -rf /var/lib/apt/lists/*
"#;

/// Marker written last into a finished image.
const COMPLETE_MARKER: &str = ".kinit-lab-base-complete";

/// What the base image is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseRecipe {
    /// Debian suite.
    pub suite: String,
    /// Debian mirror.
    pub mirror: String,
    /// Packages on top of minbase.
    pub packages: Vec<String>,
    /// Script run in a chroot after debootstrap.
    pub setup_script: String,
}

impl BaseRecipe {
    /// The standard recipe: bookworm from `mirror`.
    pub fn bookworm(mirror: &str) -> Self {
        BaseRecipe {
            suite: "bookworm".to_string(),
            mirror: mirror.to_string(),
            packages: PACKAGES.iter().map(|p| p.to_string()).collect(),
            setup_script: SETUP_SCRIPT.to_string(),
        }
    }

    /// First 12 hex digits of a SHA-256 over everything that shapes the image.
    pub fn hash(&self) -> String {
        let mut hasher = Sha256::new();
        for part in [
            &self.suite,
            &self.mirror,
            &self.packages.join(","),
            &self.setup_script,
        ] {
            hasher.update(part.as_bytes());
            hasher.update([0u8]);
        }
        hex::encode(hasher.finalize())[..12].to_string()
    }

    /// Where the finished image of this recipe lives under `root`.
    pub fn image_dir(&self, root: &Path) -> PathBuf {
        root.join(format!("base-{}-{}", self.suite, self.hash()))
    }
}

/// True when `dir` holds a finished image.
pub fn is_complete(dir: &Path) -> bool {
    dir.join(COMPLETE_MARKER).is_file()
}

/// Returns the cached image for `recipe`, building it first if needed.
pub async fn ensure_base_image(
    root: &Path,
    recipe: &BaseRecipe,
    progress: &dyn Progress,
) -> Result<PathBuf, LabError> {
    let image = recipe.image_dir(root);
    if is_complete(&image) {
        progress.lab(&format!("base image {} (cached)", image.display()));
        return Ok(image);
    }
    std::fs::create_dir_all(root)
        .map_err(|e| LabError::io(format!("cannot create {}", root.display()), e))?;
    remove_stale_builds(root, &image).await?;
    let file_name = image
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("base")
        .to_string();
    let building = root.join(format!("{file_name}.tmp-{}", std::process::id()));
    let log = root.join(format!("{file_name}.build.log"));
    let started = Instant::now();
    progress.lab(&format!(
        "building base image {} with debootstrap (first time only, about a minute)",
        image.display()
    ));
    let result = build(recipe, &building, &log).await;
    match result {
        Ok(()) => {
            std::fs::write(building.join(COMPLETE_MARKER), recipe.hash())
                .map_err(|e| LabError::io("cannot mark the base image complete", e))?;
            if image.exists() {
                // An incomplete image from an interrupted build of an older version.
                remove_tree(&image).await?;
            }
            std::fs::rename(&building, &image).map_err(|e| {
                LabError::io(
                    format!("cannot move {} to {}", building.display(), image.display()),
                    e,
                )
            })?;
            progress.lab(&format!(
                "base image built in {:.0} s",
                started.elapsed().as_secs_f64()
            ));
            Ok(image)
        }
        Err(err) => {
            let _ = remove_tree(&building).await;
            Err(err)
        }
    }
}

/// Removes half-built images (`base-*.tmp-*`) left by interrupted builds.
async fn remove_stale_builds(root: &Path, image: &Path) -> Result<(), LabError> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("base-") && name.contains(".tmp-") && entry.path() != image {
            remove_tree(&entry.path()).await?;
        }
    }
    Ok(())
}

async fn build(recipe: &BaseRecipe, target: &Path, log: &Path) -> Result<(), LabError> {
    let debootstrap = find_tool("debootstrap").ok_or_else(|| LabError::MissingTools {
        missing: "debootstrap (package debootstrap)".into(),
        command: crate::system::APT_INSTALL.into(),
    })?;
    let log_file = std::fs::File::create(log)
        .map_err(|e| LabError::io(format!("cannot create {}", log.display()), e))?;
    let log_err = log_file
        .try_clone()
        .map_err(|e| LabError::io("cannot open the build log", e))?;
    let status = tokio::process::Command::new(debootstrap)
        .arg("--variant=minbase")
        .arg(format!("--include={}", recipe.packages.join(",")))
        .arg(&recipe.suite)
        .arg(target)
        .arg(&recipe.mirror)
        .stdin(std::process::Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .status()
        .await
        .map_err(|e| LabError::io("cannot start debootstrap", e))?;
    if !status.success() {
        return Err(LabError::BaseImage {
            reason: format!("debootstrap {status}: {}", log_tail(log)),
            log: log.to_path_buf(),
        });
    }
    run_tool(
        "finishing the base image",
        "chroot",
        [
            target.as_os_str(),
            "/bin/sh".as_ref(),
            "-c".as_ref(),
            recipe.setup_script.as_ref(),
        ],
    )
    .await
    .map_err(|e| LabError::BaseImage {
        reason: e.to_string(),
        log: log.to_path_buf(),
    })?;
    Ok(())
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" / ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe_hash_changes_with_the_recipe() {
        let base = BaseRecipe::bookworm("http://deb.debian.org/debian");
        let same = BaseRecipe::bookworm("http://deb.debian.org/debian");
        assert_eq!(base.hash(), same.hash());
        assert_eq!(base.hash().len(), 12);
        let mut more = base.clone();
        more.packages.push("vim".into());
        assert_ne!(base.hash(), more.hash());
        let other_mirror = BaseRecipe::bookworm("http://mirror.example/debian");
        assert_ne!(base.hash(), other_mirror.hash());
        let dir = base.image_dir(Path::new("/var/lib/kinit-lab"));
        assert_eq!(
            dir,
            PathBuf::from(format!("/var/lib/kinit-lab/base-bookworm-{}", base.hash()))
        );
    }

    #[test]
    fn recipe_contains_what_hosts_need() {
        for package in [
            "systemd",
            "openssh-server",
            "containerd",
            "runc",
            "iproute2",
        ] {
            assert!(PACKAGES.contains(&package), "{package}");
        }
        assert!(SETUP_SCRIPT.contains("systemctl enable ssh containerd"));
        assert!(SETUP_SCRIPT.contains("rm -f /etc/ssh/ssh_host_*"));
    }

    #[tokio::test]
    async fn stale_builds_are_removed_but_finished_images_kept() {
        let root = tempfile::tempdir().unwrap();
        let recipe = BaseRecipe::bookworm("http://deb.debian.org/debian");
        let image = recipe.image_dir(root.path());
        std::fs::create_dir_all(&image).unwrap();
        std::fs::write(image.join(COMPLETE_MARKER), "x").unwrap();
        let stale = root.path().join("base-bookworm-0123.tmp-999");
        std::fs::create_dir_all(stale.join("etc")).unwrap();
        remove_stale_builds(root.path(), &image).await.unwrap();
        assert!(!stale.exists());
        assert!(is_complete(&image));
        let found = ensure_base_image(root.path(), &recipe, &()).await.unwrap();
        assert_eq!(found, image);
    }
}
