//! `kinit controller-manager`: kinit-controllers' workload and cluster controllers under one
//! leader election, as kube-controller-manager.

use std::process::ExitCode;

use kinit_controllers::ControllerManagerArgs;

/// Runs `kinit controller-manager` until SIGTERM/SIGINT.
pub fn run(args: ControllerManagerArgs) -> anyhow::Result<ExitCode> {
    crate::cmd::component::run("controller-manager", kinit_controllers::run(args))
}
