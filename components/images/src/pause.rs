//! `kinit pause`: the pod sandbox (infra) container process. It holds the pod's namespaces
//! open, reaps zombies (as PID 1 every orphan in the pod's PID namespace becomes its child) and
//! exits 0 on SIGTERM or SIGINT, like the Kubernetes pause container.

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use signal_hook::consts::{SIGCHLD, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Flags of `kinit pause` (none: the infra container takes no configuration).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PauseArgs {}

/// Why `kinit pause` could not run.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    /// Installing the signal handlers failed.
    #[error("kinit pause: cannot install handlers for SIGCHLD/SIGTERM/SIGINT: {0}")]
    Signals(#[source] std::io::Error),
}

/// Runs the infra-container loop: sleeps, reaps every exited child on SIGCHLD, and returns
/// `Ok(())` on SIGTERM or SIGINT (the caller then exits 0).
///
/// When not PID 1 it marks itself a child subreaper, so orphaned descendants are reaped by it
/// too (useful when it runs under another init, and what the tests rely on).
pub fn run_pause(_args: PauseArgs) -> Result<(), PauseError> {
    if std::process::id() != 1 {
        if let Err(err) = nix::sys::prctl::set_child_subreaper(true) {
            tracing::debug!(%err, "cannot become a child subreaper");
        }
    }
    let mut signals = Signals::new([SIGCHLD, SIGTERM, SIGINT]).map_err(PauseError::Signals)?;
    // Children that exited before the handler was installed.
    reap_children();
    for signal in signals.forever() {
        match signal {
            SIGCHLD => {
                reap_children();
            }
            SIGTERM | SIGINT => {
                reap_children();
                return Ok(());
            }
            _ => {}
        }
    }
    Ok(())
}

/// Reaps every child that has exited, without blocking. Returns how many were reaped.
pub fn reap_children() -> usize {
    let mut reaped = 0;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return reaped,
            Ok(_) => reaped += 1,
            Err(Errno::EINTR) => continue,
            // ECHILD: no children left; anything else cannot be acted upon either.
            Err(_) => return reaped,
        }
    }
}
