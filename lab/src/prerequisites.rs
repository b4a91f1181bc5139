//! What `lab up` needs on this machine, and installing it: run as root on Debian or Ubuntu, the
//! lab installs the packages of its missing tools through apt (saying which and why); anywhere
//! else it refuses with the exact command to run.

use std::path::{Path, PathBuf};

use crate::error::LabError;
use crate::system::{self, Tool};
use crate::Progress;

/// Debian's hook that tells maintainer scripts whether they may start services; exit code 101
/// means "no" (invoke-rc.d and deb-systemd-invoke honour it).
pub const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// Where the running distribution describes itself.
pub const OS_RELEASE: &str = "/etc/os-release";

/// The apt-get runs that install the packages of some missing tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptInstall {
    /// Packages to install, each once, in the order of [`system::TOOLS`].
    pub packages: Vec<&'static str>,
}

impl AptInstall {
    /// The install for `missing` tools; `None` when nothing is missing.
    pub fn for_missing(missing: &[Tool]) -> Option<AptInstall> {
        let mut packages: Vec<&'static str> = Vec::new();
        for tool in missing {
            if !packages.contains(&tool.package) {
                packages.push(tool.package);
            }
        }
        (!packages.is_empty()).then_some(AptInstall { packages })
    }

    /// The command a person runs as root to install the packages.
    pub fn command_line(&self) -> String {
        format!("apt-get install -y {}", self.packages.join(" "))
    }

    /// The commands the lab runs (with `DEBIAN_FRONTEND=noninteractive`): refresh the package
    /// lists (a fresh machine may have none), then install.
    pub fn commands(&self) -> Vec<Vec<String>> {
        let install = ["apt-get", "install", "-y", "-q"]
            .into_iter()
            .chain(self.packages.iter().copied())
            .map(str::to_string)
            .collect();
        vec![
            vec!["apt-get".into(), "update".into(), "-q".into()],
            install,
        ]
    }

    /// What is said on stderr before installing: every package and what the lab needs it for.
    pub fn announcement(&self, missing: &[Tool]) -> String {
        let mut text = format!(
            "lab: installing {} with apt-get (DEBIAN_FRONTEND=noninteractive; {} keeps them \
             from starting services):",
            self.packages.join(", "),
            POLICY_RC_D
        );
        for package in &self.packages {
            let uses: Vec<String> = missing
                .iter()
                .filter(|tool| tool.package == *package)
                .map(|tool| format!("{}: {}", tool.binary, tool.purpose))
                .collect();
            text.push_str(&format!("\n  {package:<18} {}", uses.join("; ")));
        }
        text
    }
}

/// True when `os_release` (the text of `/etc/os-release`) names Debian, Ubuntu or a
/// distribution derived from them (`ID` or `ID_LIKE`).
pub fn is_apt_based(os_release: &str) -> bool {
    os_release.lines().any(|line| {
        let Some((key, value)) = line.split_once('=') else {
            return false;
        };
        matches!(key.trim(), "ID" | "ID_LIKE")
            && value
                .trim()
                .trim_matches(|c| c == '"' || c == '\'')
                .split_whitespace()
                .any(|id| id == "debian" || id == "ubuntu")
    })
}

/// What `lab up` does about its prerequisites on a machine.
#[derive(Debug)]
pub enum Plan {
    /// Running as root with every tool installed.
    Ready,
    /// Running as root on Debian/Ubuntu with tools missing: install these.
    Install(AptInstall),
    /// Cannot go on; the error says what to run.
    Refuse(LabError),
}

/// Facts about this machine that decide the [`Plan`].
#[derive(Debug, Clone, Default)]
pub struct Machine {
    /// Effective user is root.
    pub is_root: bool,
    /// Tools from [`system::TOOLS`] that are not installed.
    pub missing: Vec<Tool>,
    /// Text of `/etc/os-release`, if readable.
    pub os_release: Option<String>,
    /// `apt-get` is installed.
    pub has_apt_get: bool,
}

impl Machine {
    /// The facts of the machine this runs on.
    pub fn current() -> Machine {
        Machine {
            is_root: nix::unistd::geteuid().is_root(),
            missing: system::missing_tools(),
            os_release: std::fs::read_to_string(OS_RELEASE).ok(),
            has_apt_get: system::find_tool("apt-get").is_some(),
        }
    }

    /// What to do: go on, install through apt, or refuse with the command to run.
    pub fn plan(&self) -> Plan {
        let Some(install) = AptInstall::for_missing(&self.missing) else {
            return if self.is_root {
                Plan::Ready
            } else {
                Plan::Refuse(LabError::NotRoot)
            };
        };
        let missing = describe(&self.missing);
        let apt_based = self.has_apt_get && self.os_release.as_deref().is_some_and(is_apt_based);
        if !apt_based {
            Plan::Refuse(LabError::NoApt {
                missing,
                command: install.command_line(),
            })
        } else if !self.is_root {
            Plan::Refuse(LabError::MissingToolsNotRoot {
                missing,
                command: install.command_line(),
            })
        } else {
            Plan::Install(install)
        }
    }
}

fn describe(tools: &[Tool]) -> String {
    tools
        .iter()
        .map(|t| format!("{} (package {})", t.binary, t.package))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Makes sure this machine can run a lab: as root with every tool installed, installing
/// missing packages through apt on Debian/Ubuntu (announced through [`Progress::notice`]).
pub async fn ensure(progress: &dyn Progress) -> Result<(), LabError> {
    let machine = Machine::current();
    match machine.plan() {
        Plan::Ready => Ok(()),
        Plan::Refuse(err) => Err(err),
        Plan::Install(install) => {
            progress.notice(&install.announcement(&machine.missing));
            progress.lab(&format!("apt-get install {}", install.packages.join(" ")));
            run_apt(&install).await?;
            let still = system::missing_tools();
            if still.is_empty() {
                progress.lab(&format!("installed {}", install.packages.join(", ")));
                Ok(())
            } else {
                Err(LabError::MissingTools {
                    missing: describe(&still),
                    command: install.command_line(),
                })
            }
        }
    }
}

async fn run_apt(install: &AptInstall) -> Result<(), LabError> {
    let _guard = NoServiceStarts::install(Path::new(POLICY_RC_D))?;
    for command in install.commands() {
        let Some((program, args)) = command.split_first() else {
            continue;
        };
        let shown = command.join(" ");
        let output = tokio::process::Command::new(program)
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| LabError::Command {
                what: "installing the lab's prerequisites".into(),
                command: shown.clone(),
                detail: format!("cannot start it: {e}"),
            })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
            return Err(LabError::Command {
                what: "installing the lab's prerequisites".into(),
                command: shown,
                detail: format!(
                    "{}: {} (install them yourself with `{}`)",
                    output.status,
                    tail.into_iter().rev().collect::<Vec<_>>().join(" / "),
                    install.command_line()
                ),
            });
        }
    }
    Ok(())
}

/// While alive, a `policy-rc.d` that denies every service start, so installing packages does
/// not start their services on this machine. Leaves an existing `policy-rc.d` alone and
/// removes only the one it wrote.
#[derive(Debug)]
pub struct NoServiceStarts {
    created: Option<PathBuf>,
}

impl NoServiceStarts {
    /// Writes `path` (`exit 101`, mode 0755) unless something is there already.
    pub fn install(path: &Path) -> Result<NoServiceStarts, LabError> {
        if path.symlink_metadata().is_ok() {
            return Ok(NoServiceStarts { created: None });
        }
        system::write_atomic(path, b"#!/bin/sh\nexit 101\n", 0o755)?;
        Ok(NoServiceStarts {
            created: Some(path.to_path_buf()),
        })
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(path) = &self.created {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::{missing_tools_with, TOOLS};

    const DEBIAN_12: &str = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n";
    const UBUNTU: &str = "NAME=\"Ubuntu\"\nID=ubuntu\nID_LIKE=debian\n";
    const MINT: &str = "NAME=\"Linux Mint\"\nID=linuxmint\nID_LIKE=\"ubuntu debian\"\n";
    const FEDORA: &str = "NAME=\"Fedora Linux\"\nID=fedora\n";

    /// A fresh Debian 12 root: util-linux is essential, nothing else of the lab's is there.
    fn fresh_debian_missing() -> Vec<Tool> {
        missing_tools_with(|binary| binary == "nsenter")
    }

    #[test]
    fn missing_tools_are_detected_by_binary() {
        let missing = fresh_debian_missing();
        let binaries: Vec<&str> = missing.iter().map(|t| t.binary).collect();
        assert_eq!(
            binaries,
            vec!["debootstrap", "systemd-nspawn", "ip", "ssh", "nft"]
        );
        assert!(missing_tools_with(|_| true).is_empty());
        assert_eq!(missing_tools_with(|_| false).len(), TOOLS.len());
    }

    #[test]
    fn install_names_each_package_once_and_the_apt_commands() {
        let missing = fresh_debian_missing();
        let install = AptInstall::for_missing(&missing).unwrap();
        assert_eq!(
            install.packages,
            vec![
                "debootstrap",
                "systemd-container",
                "iproute2",
                "openssh-client",
                "nftables"
            ]
        );
        assert_eq!(
            install.command_line(),
            "apt-get install -y debootstrap systemd-container iproute2 openssh-client nftables"
        );
        assert_eq!(
            install.commands(),
            vec![
                vec!["apt-get", "update", "-q"],
                vec![
                    "apt-get",
                    "install",
                    "-y",
                    "-q",
                    "debootstrap",
                    "systemd-container",
                    "iproute2",
                    "openssh-client",
                    "nftables"
                ],
            ]
        );
        let twice = [TOOLS[0], TOOLS[0]];
        assert_eq!(
            AptInstall::for_missing(&twice).unwrap().packages,
            vec!["debootstrap"]
        );
        assert!(AptInstall::for_missing(&[]).is_none());
    }

    #[test]
    fn announcement_says_which_packages_and_why() {
        let missing = missing_tools_with(|binary| binary != "debootstrap" && binary != "nft");
        let text = AptInstall::for_missing(&missing)
            .unwrap()
            .announcement(&missing);
        assert!(
            text.contains("installing debootstrap, nftables with apt-get"),
            "{text}"
        );
        assert!(text.contains("DEBIAN_FRONTEND=noninteractive"), "{text}");
        assert!(text.contains(POLICY_RC_D), "{text}");
        assert!(
            text.contains("debootstrap: builds the Debian base image"),
            "{text}"
        );
        assert!(text.contains("nft: "), "{text}");
        assert!(!text.contains("systemd-container"), "{text}");
    }

    #[test]
    fn apt_based_systems_are_recognised_from_os_release() {
        assert!(is_apt_based(DEBIAN_12));
        assert!(is_apt_based(UBUNTU));
        assert!(is_apt_based(MINT));
        assert!(!is_apt_based(FEDORA));
        assert!(!is_apt_based(""));
        assert!(!is_apt_based("NAME=debian\n"));
    }

    #[test]
    fn root_on_debian_installs_what_is_missing() {
        let machine = Machine {
            is_root: true,
            missing: fresh_debian_missing(),
            os_release: Some(DEBIAN_12.into()),
            has_apt_get: true,
        };
        match machine.plan() {
            Plan::Install(install) => assert_eq!(install.packages.len(), 5),
            other => panic!("{other:?}"),
        }
        let ready = Machine {
            missing: vec![],
            ..machine
        };
        assert!(matches!(ready.plan(), Plan::Ready));
    }

    #[test]
    fn non_root_and_non_apt_machines_get_the_exact_command() {
        let missing = missing_tools_with(|binary| binary != "systemd-nspawn");
        let not_root = Machine {
            is_root: false,
            missing: missing.clone(),
            os_release: Some(DEBIAN_12.into()),
            has_apt_get: true,
        };
        let Plan::Refuse(err) = not_root.plan() else {
            panic!("a non-root user must not install");
        };
        let text = err.to_string();
        assert!(
            text.contains("apt-get install -y systemd-container"),
            "{text}"
        );
        assert!(text.contains("as root"), "{text}");

        let fedora = Machine {
            is_root: true,
            missing: missing.clone(),
            os_release: Some(FEDORA.into()),
            has_apt_get: false,
        };
        let Plan::Refuse(err) = fedora.plan() else {
            panic!("no apt, no install");
        };
        let text = err.to_string();
        assert!(
            text.contains("systemd-nspawn (package systemd-container)"),
            "{text}"
        );
        assert!(
            text.contains("apt-get install -y systemd-container"),
            "{text}"
        );

        let debian_without_apt = Machine {
            is_root: true,
            missing,
            os_release: Some(DEBIAN_12.into()),
            has_apt_get: false,
        };
        assert!(matches!(debian_without_apt.plan(), Plan::Refuse(_)));

        let nothing_missing = Machine {
            is_root: false,
            ..Machine::default()
        };
        assert!(matches!(
            nothing_missing.plan(),
            Plan::Refuse(LabError::NotRoot)
        ));
    }

    #[test]
    fn service_start_guard_writes_and_removes_only_its_own_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy-rc.d");
        {
            let _guard = NoServiceStarts::install(&path).unwrap();
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                "#!/bin/sh\nexit 101\n"
            );
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o755);
            let status = std::process::Command::new(&path).status().unwrap();
            assert_eq!(status.code(), Some(101));
        }
        assert!(!path.exists());

        std::fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
        drop(NoServiceStarts::install(&path).unwrap());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "#!/bin/sh\nexit 0\n"
        );
    }
}
