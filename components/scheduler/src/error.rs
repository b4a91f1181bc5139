//! Errors of the scheduler.

/// What stopped the scheduler.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// Start-up or leadership failed (kubeconfig, /healthz, signals, leader election flags,
    /// lost Lease).
    #[error(transparent)]
    Component(#[from] kinit_component_base::ComponentError),
}
