//! Converging many hosts at once: observe each host with every host phase
//! ([`crate::phases::host_phases`]), run the selected phases that have work, with bounded
//! parallelism and one progress bar per host. A host's failure is reported with its name and
//! phase and does not stop the other hosts.

use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kinit_executor::{run_on_all, Host};
use serde::Serialize;

use crate::phases::{
    plan_selected, run_phase, HostPlan, HostTarget, PhaseError, PhaseName, PhaseSelection,
};

/// The outcome on one host.
#[derive(Debug, Serialize)]
pub struct HostOutcome {
    /// Host name.
    pub host: String,
    /// The plan the observation produced (absent when observing failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<HostPlan>,
    /// Phases that ran to completion.
    pub ran: Vec<PhaseName>,
    /// The error that stopped this host, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Wall time on this host.
    #[serde(with = "duration_secs")]
    pub elapsed: Duration,
}

impl HostOutcome {
    /// Whether the host converged (or, on a dry run, was observed) without error.
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

mod duration_secs {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64((d.as_secs_f64() * 100.0).round() / 100.0)
    }
}

/// How to run.
#[derive(Debug, Clone, Copy)]
pub struct ConvergeOptions {
    /// Hosts worked on at the same time.
    pub concurrency: usize,
    /// Only observe and plan.
    pub dry_run: bool,
    /// Draw progress bars (off for JSON output or when stderr is not a terminal).
    pub progress: bool,
}

fn bar(multi: &MultiProgress, host: &str, enabled: bool) -> ProgressBar {
    if !enabled {
        return ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    }
    let bar = multi.add(ProgressBar::new_spinner());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix:<12} [{pos}/{len}] {wide_msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_prefix(host.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

async fn converge_one<H: Host>(
    host: &H,
    target: &HostTarget,
    options: ConvergeOptions,
    selection: &PhaseSelection,
    run_id: &str,
    progress: ProgressBar,
) -> HostOutcome {
    let started = Instant::now();
    let mut outcome = HostOutcome {
        host: host.name().to_string(),
        plan: None,
        ran: Vec::new(),
        error: None,
        elapsed: Duration::ZERO,
    };
    progress.set_message("observing");
    let result: Result<(), PhaseError> = async {
        let host_plan = plan_selected(host, target, selection).await?;
        progress.set_length(host_plan.phases.len() as u64);
        outcome.plan = Some(host_plan.clone());
        if options.dry_run {
            return Ok(());
        }
        for planned in &host_plan.phases {
            progress.set_message(planned.phase.title());
            run_phase(host, target, &host_plan, planned.phase, run_id).await?;
            outcome.ran.push(planned.phase);
            progress.inc(1);
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        outcome.error = Some(e.to_string());
        progress.abandon_with_message(format!("failed: {e}"));
    } else {
        let done = match (&outcome.plan, options.dry_run) {
            (Some(p), true) => format!("plan: {} phase(s)", p.phases.len()),
            (Some(p), false) if p.phases.is_empty() => "up to date".to_string(),
            _ => "done".to_string(),
        };
        progress.finish_with_message(done);
    }
    outcome.elapsed = started.elapsed();
    outcome
}

/// Observes and (unless dry-run) converges every `(host, target)` pair with every phase.
pub async fn converge<H: Host>(
    hosts: &[(H, HostTarget)],
    options: ConvergeOptions,
    run_id: &str,
) -> Vec<HostOutcome> {
    converge_selected(hosts, options, &PhaseSelection::all(), run_id).await
}

/// Observes and (unless dry-run) converges every `(host, target)` pair, running only the
/// phases `selection` includes (the others are observed and reported as skipped).
pub async fn converge_selected<H: Host>(
    hosts: &[(H, HostTarget)],
    options: ConvergeOptions,
    selection: &PhaseSelection,
    run_id: &str,
) -> Vec<HostOutcome> {
    let multi = MultiProgress::new();
    run_on_all(hosts, options.concurrency, |(host, target)| {
        let progress = bar(&multi, host.name(), options.progress);
        converge_one(host, target, options, selection, run_id, progress)
    })
    .await
}

/// A run id for backup directories: UTC time, sortable.
pub fn run_id() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}
