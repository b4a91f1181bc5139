//! SIGTERM and SIGINT as the request to shut down gracefully.

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

use crate::error::ComponentError;

/// Installed SIGTERM/SIGINT handlers. Install early: a signal that arrives before installation
/// kills the process.
pub struct ShutdownSignals {
    term: Signal,
    int: Signal,
}

impl ShutdownSignals {
    /// Installs the handlers (needs a running tokio runtime).
    pub fn install() -> Result<ShutdownSignals, ComponentError> {
        Ok(ShutdownSignals {
            term: signal(SignalKind::terminate()).map_err(ComponentError::Signals)?,
            int: signal(SignalKind::interrupt()).map_err(ComponentError::Signals)?,
        })
    }

    /// Waits for the first SIGTERM or SIGINT, logs it, and returns its name.
    pub async fn recv(mut self) -> &'static str {
        let name = tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        };
        tracing::info!("{name} received; stopping");
        name
    }
}

/// A stop signal that turns true on the first SIGTERM or SIGINT.
pub fn stop_on_signals() -> Result<watch::Receiver<bool>, ComponentError> {
    let signals = ShutdownSignals::install()?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        signals.recv().await;
        let _ = tx.send(true);
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sigterm_turns_the_stop_signal_on() {
        let mut stop = stop_on_signals().unwrap();
        assert!(!*stop.borrow());
        // SAFETY: raise(3) signals this process only; the handler installed above catches it.
        assert_eq!(unsafe { libc::raise(libc::SIGTERM) }, 0);
        tokio::time::timeout(std::time::Duration::from_secs(5), stop.wait_for(|s| *s))
            .await
            .expect("stop turns true after SIGTERM")
            .unwrap();
    }
}
