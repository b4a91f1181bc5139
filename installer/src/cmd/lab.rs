//! `kinit lab up|down|status`: real test hosts (systemd-nspawn) on this machine.
//!
//! A CLI verb rather than a script: the lab is Rust code shared with the end-to-end tests, so
//! people and tests bring hosts up the same way, and the one binary is all a developer needs.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use kinit_lab::{LabConfig, LabState, Progress};
use serde::Serialize;

use kinit::output::{emit, OutputFormat};

/// Arguments of `kinit lab`.
#[derive(Debug, Args)]
pub struct LabArgs {
    #[command(subcommand)]
    pub command: LabCommand,
}

/// Lab subcommands.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Create N hosts on a private bridge and write an inventory for them.
    Up(UpArgs),
    /// Stop and remove a lab (keeps the cached base image). Safe to run again.
    Down(DownArgs),
    /// Show the lab and whether its hosts run.
    Status(StatusArgs),
}

/// Arguments of `kinit lab up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Number of hosts (node1 = 10.88.0.11 is the control plane, the rest are workers).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Lab name.
    #[arg(long, default_value = "lab")]
    pub name: String,
    /// Directory for the SSH key, known_hosts and inventory [default: /var/lib/kinit-lab/NAME].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Bridge name.
    #[arg(long, default_value = "kinitlab0")]
    pub bridge: String,
    /// Debian mirror for the base image.
    #[arg(
        long,
        env = "KINIT_LAB_MIRROR",
        default_value = "http://deb.debian.org/debian"
    )]
    pub mirror: String,
    /// Seconds one host may take to boot.
    #[arg(long, default_value_t = 120)]
    pub boot_timeout: u64,
}

/// Arguments of `kinit lab down`.
#[derive(Debug, Args)]
pub struct DownArgs {
    /// Lab name.
    #[arg(long, default_value = "lab", conflicts_with = "all")]
    pub name: String,
    /// Remove every lab that is up.
    #[arg(long)]
    pub all: bool,
}

/// Arguments of `kinit lab status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Progress bars on a terminal, plain lines otherwise (logs, CI).
struct CliProgress {
    bars: Option<(MultiProgress, Mutex<HashMap<String, ProgressBar>>)>,
}

impl CliProgress {
    fn new() -> Self {
        let bars = std::io::stderr()
            .is_terminal()
            .then(|| (MultiProgress::new(), Mutex::new(HashMap::new())));
        CliProgress { bars }
    }

    fn bar(&self, key: &str) -> Option<ProgressBar> {
        let (multi, bars) = self.bars.as_ref()?;
        let mut bars = bars.lock().unwrap_or_else(|e| e.into_inner());
        let bar = bars.entry(key.to_string()).or_insert_with(|| {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix:>6} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix(key.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Some(bar.clone())
    }

    fn finish(&self) {
        if let Some((_, bars)) = &self.bars {
            for bar in bars.lock().unwrap_or_else(|e| e.into_inner()).values() {
                bar.finish();
            }
        }
    }
}

impl Progress for CliProgress {
    fn lab(&self, message: &str) {
        match self.bar("lab") {
            Some(bar) => bar.set_message(message.to_string()),
            None => eprintln!("lab: {message}"),
        }
    }

    fn host(&self, host: &str, message: &str) {
        match self.bar(host) {
            Some(bar) => bar.set_message(message.to_string()),
            None => eprintln!("{host}: {message}"),
        }
    }

    fn notice(&self, message: &str) {
        // Above the progress bars, so it stays on screen.
        match &self.bars {
            Some((multi, _)) if multi.println(message).is_ok() => {}
            _ => eprintln!("{message}"),
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs a lab subcommand.
pub fn run(args: LabArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        LabCommand::Up(up) => run_up(up),
        LabCommand::Down(down) => run_down(down),
        LabCommand::Status(status) => run_status(status),
    }
}

fn run_up(args: UpArgs) -> anyhow::Result<ExitCode> {
    let config = LabConfig {
        name: args.name,
        nodes: args.nodes,
        bridge: args.bridge,
        out_dir: args.out,
        mirror: args.mirror,
        boot_timeout: Duration::from_secs(args.boot_timeout),
        ..LabConfig::default()
    };
    let progress = CliProgress::new();
    let started = Instant::now();
    let result = runtime()?.block_on(kinit_lab::up(&config, &progress));
    progress.finish();
    let state = result?;
    println!("{}", up_summary(&state, started.elapsed()));
    Ok(ExitCode::SUCCESS)
}

fn up_summary(state: &LabState, elapsed: Duration) -> String {
    let mut text = format!(
        "lab {:?} is up: {} host(s) in {:.1} s\n",
        state.name,
        state.hosts.len(),
        elapsed.as_secs_f64()
    );
    for (i, host) in state.hosts.iter().enumerate() {
        let role = if i == 0 { "control-plane" } else { "worker" };
        text.push_str(&format!("  {:<8} {:<12} {role}\n", host.name, host.address));
    }
    text.push_str(&format!("inventory:  {}\n", state.inventory.display()));
    text.push_str(&format!("ssh:        {}\n", state.ssh_command(0)));
    text.push_str(&format!(
        "preflight:  kinit preflight -i {} --known-hosts {}\n",
        state.inventory.display(),
        state.known_hosts.display()
    ));
    text.push_str(&format!("tear down:  kinit lab down --name {}", state.name));
    text
}

fn run_down(args: DownArgs) -> anyhow::Result<ExitCode> {
    let run_dir = LabConfig::default().run_dir;
    let progress = CliProgress::new();
    let runtime = runtime()?;
    if args.all {
        let result = runtime.block_on(kinit_lab::down_all(&run_dir, &progress));
        progress.finish();
        let names = result?;
        if names.is_empty() {
            println!("no lab is up");
        } else {
            println!("removed lab(s): {}", names.join(", "));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let result = runtime.block_on(kinit_lab::down(&run_dir, &args.name, &progress));
    progress.finish();
    match result {
        Ok(()) => println!("lab {:?} removed", args.name),
        Err(kinit_lab::LabError::NotUp { name, .. }) => println!("lab {name:?} is not up"),
        Err(other) => return Err(other.into()),
    }
    Ok(ExitCode::SUCCESS)
}

/// One row of `kinit lab status`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct HostStatusRow {
    lab: String,
    phase: kinit_lab::LabPhase,
    host: String,
    address: String,
    running: bool,
    inventory: PathBuf,
}

fn run_status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let labs = kinit_lab::status(&LabConfig::default().run_dir)?;
    let rows: Vec<HostStatusRow> = labs
        .iter()
        .flat_map(|lab| {
            lab.state
                .hosts
                .iter()
                .zip(&lab.running)
                .map(|(host, running)| HostStatusRow {
                    lab: lab.state.name.clone(),
                    phase: lab.state.phase,
                    host: host.name.clone(),
                    address: host.address.clone(),
                    running: *running,
                    inventory: lab.state.inventory.clone(),
                })
        })
        .collect();
    emit(&rows, args.output, |rows| {
        if rows.is_empty() {
            return "no lab is up".to_string();
        }
        let mut table = comfy_table::Table::new();
        table
            .load_preset(comfy_table::presets::UTF8_FULL_CONDENSED)
            .set_header(vec![
                "Lab",
                "Phase",
                "Host",
                "Address",
                "Running",
                "Inventory",
            ]);
        for row in rows {
            table.add_row(vec![
                row.lab.clone(),
                format!("{:?}", row.phase).to_lowercase(),
                row.host.clone(),
                row.address.clone(),
                if row.running { "yes" } else { "no" }.to_string(),
                row.inventory.display().to_string(),
            ]);
        }
        table.to_string()
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use kinit_lab::{HostState, LabPhase};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: LabArgs,
    }

    #[test]
    fn up_defaults_and_flags() {
        let cli = Cli::parse_from(["lab", "up", "--nodes", "5", "--out", "/tmp/x"]);
        match cli.args.command {
            LabCommand::Up(up) => {
                assert_eq!(up.nodes, 5);
                assert_eq!(up.name, "lab");
                assert_eq!(up.bridge, "kinitlab0");
                assert_eq!(up.out, Some(PathBuf::from("/tmp/x")));
            }
            other => panic!("parsed {other:?}"),
        }
        assert!(Cli::try_parse_from(["lab", "down", "--all", "--name", "x"]).is_err());
    }

    #[test]
    fn summary_tells_how_to_use_the_lab() {
        let state = LabState {
            name: "lab".into(),
            phase: LabPhase::Up,
            bridge: "kinitlab0".into(),
            bridge_created: true,
            gateway: "10.88.0.1/24".into(),
            lab_dir: "/l".into(),
            base_image: "/b".into(),
            out_dir: "/l".into(),
            files: vec![],
            out_dir_created: false,
            ssh_key: "/l/id_ed25519".into(),
            known_hosts: "/l/known_hosts".into(),
            inventory: "/l/inventory.yaml".into(),
            hosts: vec![HostState {
                name: "node1".into(),
                address: "10.88.0.11".into(),
                dir: "/l/node1".into(),
                root: "/l/node1/root".into(),
                mounted: true,
                nspawn_pid: None,
                nspawn_start_ticks: None,
                leader_pid: None,
                leader_start_ticks: None,
                veth: None,
            }],
        };
        let text = up_summary(&state, Duration::from_millis(8400));
        assert!(text.contains("1 host(s) in 8.4 s"));
        assert!(text.contains("inventory:  /l/inventory.yaml"));
        assert!(text
            .contains("ssh -i /l/id_ed25519 -o UserKnownHostsFile=/l/known_hosts root@10.88.0.11"));
        assert!(text.contains("kinit preflight -i /l/inventory.yaml --known-hosts /l/known_hosts"));
    }
}
