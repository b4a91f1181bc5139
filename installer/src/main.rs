//! `kinit`: the admin CLI that provisions clusters over SSH, and the host-side program.

use clap::{Parser, Subcommand};

mod cmd;

/// Provision and run Kubernetes-model clusters over SSH.
#[derive(Debug, Parser)]
#[command(name = "kinit", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install or converge a whole cluster from its inventory, over SSH (idempotent).
    Apply(Box<cmd::apply::ApplyArgs>),
    /// Set up a one-host control plane over SSH (--host) or here (--local) and print the join
    /// command for workers.
    Init(Box<cmd::init::InitArgs>),
    /// Join this machine to a cluster as a worker (run as root on the new node).
    Join(Box<cmd::join::JoinArgs>),
    /// Manage the cluster PKI: generate, check expiration, renew.
    Certs(cmd::certs::CertsArgs),
    /// Print default settings or render everything `init` would write, for review.
    Config(cmd::config::ConfigArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion(cmd::completion::CompletionArgs),
    /// Check that hosts are ready for a cluster (ports, swap, kernel, containerd, clock, disk).
    Preflight(cmd::preflight::PreflightArgs),
    /// Real test hosts on this machine (systemd-nspawn): up, down, status.
    Lab(cmd::lab::LabArgs),
    /// Remove kinit from hosts: agent, containers, images, files, network settings, Node objects.
    Reset(cmd::reset::ResetArgs),
    /// Create, list and delete bootstrap tokens for joining nodes.
    Token(cmd::token::TokenArgs),
    /// Sign a client kubeconfig for a user with the cluster CA.
    Kubeconfig(cmd::kubeconfig::KubeconfigArgs),
    /// Run the node agent on this host (our kubelet: node registration, pods through CRI).
    Agent(Box<kinit_agent::AgentArgs>),
    /// Run the controller manager on this host (what the kube-controller-manager static pod runs).
    ControllerManager(Box<kinit_controllers::ControllerManagerArgs>),
    /// Run the scheduler on this host (what the kube-scheduler static pod runs).
    Scheduler(kinit_scheduler::SchedulerArgs),
    /// The CNI plugin (bridge + host-local IPAM): driven by CNI_* variables and stdin, as
    /// containerd runs it from /opt/cni/bin/kinit-cni.
    Cni,
    /// Build the OCI images kinit runs from (control plane, pause, demo app, admin box) out of
    /// this binary and the admin box's busybox.
    Images(kinit_images::ImagesArgs),
    /// The infra process of every pod sandbox (what the pause image runs).
    Pause(kinit_images::PauseArgs),
    /// A small HTTP demo app for tests and docs (what the demoapp image runs).
    Demoapp(kinit_images::DemoAppArgs),
    /// Run the API server on this host (what the kube-apiserver static pod runs).
    Apiserver(Box<kinit_apiserver::ApiServerArgs>),
    /// Run the cluster DNS server (what the `coredns` Deployment in kube-system runs).
    Dns(Box<kinit_dns::DnsArgs>),
}

/// `hostname`: the UTS name of this process's namespace (the pod name inside a pod).
fn print_hostname() -> std::process::ExitCode {
    match std::fs::read_to_string("/proc/sys/kernel/hostname") {
        Ok(name) => {
            println!("{}", name.trim_end());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hostname: cannot read /proc/sys/kernel/hostname: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn main() -> std::process::ExitCode {
    // containerd runs CNI plugins by their type name (`/opt/cni/bin/kinit-cni`, `loopback`),
    // both links to this binary: the protocol is environment variables and stdin, not flags.
    if let Some(argv0) = std::env::args_os().next() {
        if kinit_cni::invoked_as_plugin(&argv0) {
            return kinit_cni::main_with_env();
        }
        // kinit's images link /bin/hostname here, so `kubectl exec POD -- hostname` works.
        if std::path::Path::new(&argv0).file_name() == Some("hostname".as_ref()) {
            return print_hostname();
        }
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Apply(args) => cmd::apply::run(*args),
        Command::Init(args) => cmd::init::run(*args),
        Command::Join(args) => cmd::join::run(*args),
        Command::Certs(args) => cmd::certs::run(args),
        Command::Config(args) => cmd::config::run(args),
        Command::Completion(args) => cmd::completion::run::<Cli>(args),
        Command::Preflight(args) => cmd::preflight::run(args),
        Command::Lab(args) => cmd::lab::run(args),
        Command::Reset(args) => cmd::reset::run(args),
        Command::Token(args) => cmd::token::run(args),
        Command::Kubeconfig(args) => cmd::kubeconfig::run(args),
        Command::Agent(args) => cmd::component::run("agent", kinit_agent::run(*args)),
        Command::ControllerManager(args) => cmd::controller_manager::run(*args),
        Command::Scheduler(args) => cmd::component::run("scheduler", kinit_scheduler::run(args)),
        Command::Cni => Ok(kinit_cni::main_with_env()),
        Command::Images(args) => kinit_images::run_images(args)
            .map(|_| std::process::ExitCode::SUCCESS)
            .map_err(anyhow::Error::from),
        Command::Pause(args) => kinit_images::run_pause(args)
            .map(|()| std::process::ExitCode::SUCCESS)
            .map_err(anyhow::Error::from),
        Command::Demoapp(args) => cmd::component::run("demoapp", kinit_images::run_demoapp(args)),
        Command::Apiserver(args) => cmd::component::run("apiserver", kinit_apiserver::run(*args)),
        Command::Dns(args) => cmd::component::run("dns", kinit_dns::run(*args)),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
