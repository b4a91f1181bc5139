//! Command-line flags, named like kube-scheduler's.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use kinit_component_base::LeaderElectionConfig;

use crate::error::SchedulerError;

/// Flags of `kinit scheduler`.
#[derive(Debug, Clone, clap::Args)]
pub struct SchedulerArgs {
    /// Kubeconfig with the scheduler's credentials (user `system:kube-scheduler`). Without it the
    /// in-cluster or default kubeconfig is used.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,

    /// Elect a leader through a Lease before scheduling, so only one replica schedules.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub leader_elect: bool,

    /// How long non-leaders wait after the last observed renewal before taking the Lease.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub leader_elect_lease_duration: Duration,

    /// How long the leader keeps retrying a renewal before it gives up leadership (and exits).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub leader_elect_renew_deadline: Duration,

    /// Time between acquire and renew attempts.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub leader_elect_retry_period: Duration,

    /// Namespace of the Lease.
    #[arg(long, default_value = "kube-system")]
    pub leader_elect_resource_namespace: String,

    /// Name of the Lease.
    #[arg(long, default_value = "kube-scheduler")]
    pub leader_elect_resource_name: String,

    /// Address the HTTPS /healthz endpoint listens on.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind_address: IpAddr,

    /// Port of the HTTPS /healthz (also /livez, /readyz) endpoint, served with a self-signed
    /// certificate like kube-scheduler's default; 0 disables it.
    #[arg(long, default_value_t = 10259)]
    pub secure_port: u16,
}

impl SchedulerArgs {
    /// Checks the leader election timings like client-go: lease duration > renew deadline >
    /// 1.2 × retry period, all positive.
    pub fn validate(&self) -> Result<(), SchedulerError> {
        if !self.leader_elect {
            return Ok(());
        }
        Ok(self.election_config(String::new()).validate()?)
    }

    /// The leader election settings of these flags, for `identity`.
    pub fn election_config(&self, identity: String) -> LeaderElectionConfig {
        LeaderElectionConfig {
            namespace: self.leader_elect_resource_namespace.clone(),
            name: self.leader_elect_resource_name.clone(),
            identity,
            lease_duration: self.leader_elect_lease_duration,
            renew_deadline: self.leader_elect_renew_deadline,
            retry_period: self.leader_elect_retry_period,
        }
    }
}

/// Go-syntax durations (`15s`, `1m30s`), the value parser of the duration flags.
pub use kinit_component_base::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SchedulerArgs,
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "15", "s", "10x", "1m-3s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn accepts_the_static_pod_flags() {
        // exactly what templates/files/kube-scheduler.yaml.j2 passes
        let cli = Cli::try_parse_from([
            "scheduler",
            "--kubeconfig=/etc/kubernetes/scheduler.conf",
            "--bind-address=127.0.0.1",
            "--secure-port=10259",
            "--leader-elect=true",
        ])
        .unwrap();
        assert_eq!(
            cli.args.kubeconfig.as_deref(),
            Some(std::path::Path::new("/etc/kubernetes/scheduler.conf"))
        );
        assert_eq!(cli.args.bind_address.to_string(), "127.0.0.1");
        assert_eq!(cli.args.secure_port, 10259);
        assert!(cli.args.leader_elect);
        cli.args.validate().unwrap();
    }

    #[test]
    fn defaults_match_kube_scheduler() {
        let cli = Cli::try_parse_from(["scheduler"]).unwrap();
        let a = cli.args;
        assert!(a.leader_elect);
        assert_eq!(a.leader_elect_lease_duration, Duration::from_secs(15));
        assert_eq!(a.leader_elect_renew_deadline, Duration::from_secs(10));
        assert_eq!(a.leader_elect_retry_period, Duration::from_secs(2));
        assert_eq!(a.leader_elect_resource_namespace, "kube-system");
        assert_eq!(a.leader_elect_resource_name, "kube-scheduler");
        assert_eq!(a.secure_port, 10259);
        let off = Cli::try_parse_from(["scheduler", "--leader-elect=false"]).unwrap();
        assert!(!off.args.leader_elect);
        let bare = Cli::try_parse_from(["scheduler", "--leader-elect"]).unwrap();
        assert!(bare.args.leader_elect);
    }

    #[test]
    fn rejects_inconsistent_timings() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["scheduler"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).unwrap().args.validate()
        };
        assert!(parse(&["--leader-elect-lease-duration=10s"]).is_err());
        assert!(parse(&["--leader-elect-retry-period=9s"]).is_err());
        assert!(parse(&["--leader-elect-retry-period=0"]).is_err());
        assert!(parse(&["--leader-elect=false", "--leader-elect-lease-duration=1s"]).is_ok());
    }
}
