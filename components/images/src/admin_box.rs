//! `kinit.local/admin-box:<tag>`: a shell image for poking at a cluster from inside (the role of
//! the seeds' `ikubernetes/admin-box`), built from Debian's busybox on the admin box: `sh`,
//! `wget`, `nslookup`, `nc`, `ping`, `ip`, `ps`, … as links to one binary, with the C library
//! it needs. The dynamic build is the one to use: glibc's static resolver cannot look names up,
//! so with `busybox-static` only `nslookup` resolves Service names. No registry involved, like
//! the other kinit images:
//!
//! ```text
//! kubectl run client --image=kinit.local/admin-box:v0.1.0 -it --rm --restart=Never -- sh
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::elf::{ElfDependencies, LibraryResolver};
use crate::layer::RootFs;
use crate::ImageError;

/// Where Debian's `busybox` (and `busybox-static`) package puts the binary.
pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";

/// What to do when busybox is missing.
pub const INSTALL_HINT: &str =
    "install Debian's busybox (apt-get install -y busybox) or pass --busybox PATH";

/// Said when the busybox given is static: glibc's static resolver cannot load the name service
/// modules, so in such a build only `nslookup` (which speaks DNS itself) resolves names.
pub const STATIC_NOTE: &str = "is statically linked: in the admin box only nslookup will resolve names (wget, nc and ping cannot); Debian's dynamic busybox package (apt-get install -y busybox) can";

/// Where the busybox binary lives inside the image.
pub const IMAGE_BUSYBOX: &str = "/bin/busybox";

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

/// The applets `busybox` offers, as image paths (`/bin/sh`, `/usr/bin/wget`, …), from its
/// own `--list-full`.
pub fn applets(busybox: &Path) -> Result<Vec<String>, ImageError> {
    let output = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|source| ImageError::Read {
            path: busybox.to_path_buf(),
            source,
        })?;
    if !output.status.success() {
        return Err(ImageError::NotBusybox {
            path: busybox.to_path_buf(),
            reason: format!(
                "`{} --list-full` failed: {}",
                busybox.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    let list: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| format!("/{}", l.trim_start_matches('/')))
        .collect();
    if !list.iter().any(|a| a == "/bin/sh") {
        return Err(ImageError::NotBusybox {
            path: busybox.to_path_buf(),
            reason: "its applet list has no /bin/sh".into(),
        });
    }
    Ok(list)
}

/// Checks that `busybox` exists, saying what to install when it does not.
pub fn require(busybox: &Path) -> Result<PathBuf, ImageError> {
    if busybox.is_file() {
        Ok(busybox.to_path_buf())
    } else {
        Err(ImageError::BusyboxMissing {
            path: busybox.to_path_buf(),
        })
    }
}

/// The admin box's root filesystem: busybox at [`IMAGE_BUSYBOX`] with a link per applet, the
/// libraries it needs when it is not static, `/etc/passwd`, `/etc/group`, `/tmp`, `/root`.
pub fn rootfs(
    busybox: &Path,
    resolver: &LibraryResolver,
) -> Result<(RootFs, ElfDependencies), ImageError> {
    let busybox = require(busybox)?;
    let deps = resolver.dependencies(&busybox)?;
    let mut rootfs = RootFs::new();
    rootfs.add_host_file(IMAGE_BUSYBOX, &busybox, 0o755)?;
    for applet in applets(&busybox)? {
        if applet != IMAGE_BUSYBOX && rootfs.get(&applet).is_none() {
            rootfs.add_symlink(&applet, IMAGE_BUSYBOX)?;
        }
    }
    rootfs.add_bytes("/etc/passwd", PASSWD, 0o644)?;
    rootfs.add_bytes("/etc/group", GROUP, 0o644)?;
    rootfs.add_dir("/tmp", 0o1777)?;
    rootfs.add_dir("/root", 0o700)?;
    crate::kinit::add_libraries(&mut rootfs, &deps)?;
    Ok((rootfs, deps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_busybox_says_what_to_install() {
        let err = require(Path::new("/nonexistent/busybox")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/nonexistent/busybox"), "{text}");
        assert!(text.contains("apt-get install -y busybox"), "{text}");
    }

    #[test]
    fn a_binary_that_is_not_busybox_is_refused() {
        let err = applets(Path::new("/bin/true")).unwrap_err();
        assert!(err.to_string().contains("/bin/sh"), "{err}");
    }
}
