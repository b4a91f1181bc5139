//! `kinit controller-manager`: the workload controllers (kinit-controllers) and the cluster
//! controllers (kinit-cluster-controllers) under one leader election, as kube-controller-manager.

use std::process::ExitCode;

use anyhow::Context;
use kinit_cluster_controllers::{ClusterControllerOptions, ControllerName};
use kinit_controllers::{ClusterControllerFlags, ControllerManagerArgs, ExtraControllers};

/// Maps the cluster controllers' flags onto their options.
fn cluster_options(
    flags: &ClusterControllerFlags,
    controllers: &[String],
) -> anyhow::Result<ClusterControllerOptions> {
    let defaults = ClusterControllerOptions::default();
    Ok(ClusterControllerOptions {
        cluster_cidrs: flags.cluster_cidr.clone(),
        node_cidr_mask_size_ipv4: flags
            .node_cidr_mask_size_ipv4
            .or(flags.node_cidr_mask_size)
            .unwrap_or(defaults.node_cidr_mask_size_ipv4),
        node_cidr_mask_size_ipv6: flags
            .node_cidr_mask_size_ipv6
            .unwrap_or(defaults.node_cidr_mask_size_ipv6),
        allocate_node_cidrs: flags.allocate_node_cidrs,
        cluster_signing_cert_file: flags
            .cluster_signing_cert_file
            .clone()
            .unwrap_or(defaults.cluster_signing_cert_file),
        cluster_signing_key_file: flags
            .cluster_signing_key_file
            .clone()
            .unwrap_or(defaults.cluster_signing_key_file),
        cluster_signing_duration: flags.cluster_signing_duration,
        node_monitor_period: flags.node_monitor_period,
        node_monitor_grace_period: flags.node_monitor_grace_period,
        pod_eviction_timeout: flags.pod_eviction_timeout,
        pod_gc: kinit_cluster_controllers::podgc::PodGcConfig {
            terminated_threshold: flags.terminated_pod_gc_threshold,
            ..defaults.pod_gc
        },
        controllers: ControllerName::select(controllers, true)
            .context("--controllers names an unknown controller")?,
    })
}

/// Runs `kinit controller-manager` until SIGTERM/SIGINT.
pub fn run(args: ControllerManagerArgs) -> anyhow::Result<ExitCode> {
    let options = cluster_options(&args.cluster, &args.controllers)?;
    let cluster: ExtraControllers = Box::new(move |client| {
        Box::pin(async move {
            kinit_cluster_controllers::run(client, options)
                .await
                .map_err(Into::into)
        })
    });
    crate::cmd::component::run(
        "controller-manager",
        kinit_controllers::run_with(args, vec![("cluster".to_string(), cluster)]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ControllerManagerArgs,
    }

    #[test]
    fn cluster_flags_reach_the_cluster_controllers() {
        let cli = Cli::parse_from([
            "x",
            "--allocate-node-cidrs=true",
            "--cluster-cidr=10.244.0.0/16",
            "--node-cidr-mask-size=25",
            "--cluster-signing-cert-file=/p/ca.crt",
            "--controllers=*,-node-lifecycle",
            "--terminated-pod-gc-threshold=100",
        ]);
        let options = cluster_options(&cli.args.cluster, &cli.args.controllers).unwrap();
        assert!(options.allocate_node_cidrs);
        assert_eq!(options.cluster_cidrs, ["10.244.0.0/16".parse().unwrap()]);
        assert_eq!(options.node_cidr_mask_size_ipv4, 25);
        assert_eq!(
            options.cluster_signing_cert_file,
            std::path::Path::new("/p/ca.crt")
        );
        assert_eq!(options.pod_gc.terminated_threshold, 100);
        assert!(options
            .controllers
            .contains(&ControllerName::PodGarbageCollector));
        let lifecycle = ControllerName::select(&["node-lifecycle".to_string()], false).unwrap();
        assert!(options.controllers.is_disjoint(&lifecycle));
    }
}
