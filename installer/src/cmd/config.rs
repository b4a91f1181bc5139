//! `kinit config print init-defaults|render|import-kubeasz`: look at what kinit would do.

use std::fs;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use comfy_table::{presets::NOTHING, Table};
use kinit_inventory::Inventory;
use serde::Serialize;

use kinit::desired::ClusterState;
use kinit::output::{emit, OutputFormat};

/// Arguments of `kinit config`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

/// `kinit config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print default settings.
    Print(PrintArgs),
    /// Write every file `apply` would put on each host into a directory, for review.
    Render(RenderArgs),
    /// Convert a kubeasz `hosts` file (ansible INI) into a kinit inventory.
    ImportKubeasz(ImportArgs),
}

/// Arguments of `kinit config print`.
#[derive(Debug, Args)]
pub struct PrintArgs {
    #[command(subcommand)]
    pub what: PrintWhat,
}

/// What `kinit config print` prints.
#[derive(Debug, Subcommand)]
pub enum PrintWhat {
    /// An example inventory with every default spelled out (1 control plane, 2 workers).
    InitDefaults,
}

/// Arguments of `kinit config render`.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The cluster inventory.
    #[arg(short = 'i', long, value_name = "FILE")]
    pub inventory: PathBuf,
    /// Output directory: `DIR/cluster/` gets the cluster PKI (kept and reused on re-runs, like
    /// the admin box's cluster state), `DIR/<host>/` each host's files at their absolute paths.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Output format of the summary.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Arguments of `kinit config import-kubeasz`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The kubeasz hosts file (e.g. /etc/kubeasz/clusters/NAME/hosts).
    pub file: PathBuf,
    /// Write the inventory here instead of stdout (refuses to overwrite unless --force).
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Replace --out if it exists (the old file is kept as FILE.bak).
    #[arg(long)]
    pub force: bool,
}

/// Runs `kinit config`.
pub fn run(args: ConfigArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ConfigCommand::Print(PrintArgs {
            what: PrintWhat::InitDefaults,
        }) => {
            print!("{}", Inventory::example().to_yaml());
            Ok(ExitCode::SUCCESS)
        }
        ConfigCommand::Render(args) => {
            let inventory = Inventory::from_path(&args.inventory)?;
            let summary = render_cluster(&inventory, &args.dir)?;
            emit(&summary, args.output, summary_table)?;
            Ok(ExitCode::SUCCESS)
        }
        ConfigCommand::ImportKubeasz(args) => import_kubeasz(args),
    }
}

/// One file written by `config render`.
#[derive(Debug, Serialize)]
pub struct RenderedHostFile {
    /// Host the file is for (`cluster` for the cluster state).
    pub host: String,
    /// Absolute path on the host.
    pub path: String,
    /// Octal mode.
    pub mode: String,
}

/// What `config render` wrote.
#[derive(Debug, Serialize)]
pub struct RenderSummary {
    /// Output directory.
    pub dir: PathBuf,
    /// Every file, by host.
    pub files: Vec<RenderedHostFile>,
}

fn summary_table(summary: &RenderSummary) -> String {
    let mut table = Table::new();
    table
        .load_preset(NOTHING)
        .set_header(["HOST", "PATH", "MODE"]);
    for f in &summary.files {
        table.add_row([f.host.as_str(), f.path.as_str(), f.mode.as_str()]);
    }
    format!(
        "{table}\n\n{} files under {}",
        summary.files.len(),
        summary.dir.display()
    )
}

/// Renders the whole cluster into `dir`: the cluster state (PKI, agent kubeconfigs) once under
/// `dir/cluster/`, then each host's files under `dir/<host>/<absolute path>`.
pub fn render_cluster(inventory: &Inventory, dir: &Path) -> anyhow::Result<RenderSummary> {
    let (state, report) = ClusterState::prepare(inventory, &dir.join("cluster"), None)?;
    let mut files: Vec<RenderedHostFile> = report
        .files
        .iter()
        .filter_map(|f| f.path.strip_prefix(dir).ok())
        .map(|rel| RenderedHostFile {
            host: "cluster".into(),
            path: rel.display().to_string(),
            mode: mode_of(&dir.join(rel)),
        })
        .collect();
    for host in &inventory.spec.hosts {
        let root = dir.join(&host.name);
        for file in state.host_files(inventory, host)? {
            let dest = under(&root, &file.path)?;
            write_file(&dest, &file.contents, file.mode)?;
            files.push(RenderedHostFile {
                host: host.name.clone(),
                path: file.path.display().to_string(),
                mode: format!("{:04o}", file.mode),
            });
        }
    }
    Ok(RenderSummary {
        dir: dir.to_path_buf(),
        files,
    })
}

/// `root` joined with an absolute host path, refusing anything that would escape `root`.
fn under(root: &Path, host_path: &Path) -> anyhow::Result<PathBuf> {
    let mut out = root.to_path_buf();
    for component in host_path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => out.push(part),
            Component::ParentDir | Component::Prefix(_) => {
                bail!(
                    "refusing to write {}: path leaves the output directory",
                    host_path.display()
                )
            }
        }
    }
    Ok(out)
}

fn mode_of(path: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .map(|m| format!("{:04o}", m.permissions().mode() & 0o7777))
        .unwrap_or_default()
}

/// Writes `contents` atomically (temp file in the same directory, then rename) with `mode`.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let parent = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(parent)
        .with_context(|| format!("cannot create a temporary file in {}", parent.display()))?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    tmp.write_all(contents)
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

fn import_kubeasz(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let text = fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let import = kinit_inventory::kubeasz::import(&text, &args.file.display().to_string())?;
    for warning in &import.warnings {
        eprintln!("warning: {warning}");
    }
    let yaml = import.inventory.to_yaml();
    match args.out {
        None => print!("{yaml}"),
        Some(out) => {
            if out.exists() {
                if !args.force {
                    bail!(
                        "{} exists; pass --force to replace it (a backup is kept as .bak)",
                        out.display()
                    );
                }
                let backup = PathBuf::from(format!("{}.bak", out.display()));
                fs::copy(&out, &backup).with_context(|| {
                    format!("cannot back up {} to {}", out.display(), backup.display())
                })?;
            }
            write_file(&out, yaml.as_bytes(), 0o644)?;
            eprintln!("wrote {}", out.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_cannot_escape_the_output_dir() {
        let root = Path::new("/out/node1");
        assert_eq!(
            under(root, Path::new("/etc/kubernetes/pki/ca.crt")).unwrap(),
            Path::new("/out/node1/etc/kubernetes/pki/ca.crt")
        );
        assert!(under(root, Path::new("/etc/../../x")).is_err());
    }

    #[test]
    fn render_writes_pki_and_files_per_role_and_is_rerunnable() {
        let inv = Inventory::from_path(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../inventory/examples/three-node.yaml"),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let first = render_cluster(&inv, dir.path()).unwrap();
        let cp = &inv.control_planes()[0].name;
        let worker = &inv.workers()[0].name;
        let cp_root = dir.path().join(cp);
        let worker_root = dir.path().join(worker);
        assert!(cp_root
            .join("etc/kubernetes/manifests/kube-apiserver.yaml")
            .is_file());
        assert!(cp_root.join("etc/kubernetes/pki/sa.key").is_file());
        assert!(cp_root.join("etc/kubernetes/admin.conf").is_file());
        assert!(!worker_root
            .join("etc/kubernetes/manifests/kube-apiserver.yaml")
            .exists());
        assert!(!worker_root.join("etc/kubernetes/pki/ca.key").exists());
        assert!(worker_root.join("etc/kubernetes/pki/ca.crt").is_file());
        let kubelet = fs::read_to_string(worker_root.join("etc/kubernetes/kubelet.conf")).unwrap();
        assert!(kubelet.contains("client-certificate-data"));
        assert_eq!(mode_of(&cp_root.join("etc/kubernetes/pki/ca.key")), "0600");

        // A second run reuses the CA instead of minting a new one.
        let ca_before = fs::read(dir.path().join("cluster/pki/ca.crt")).unwrap();
        let second = render_cluster(&inv, dir.path()).unwrap();
        assert_eq!(
            fs::read(dir.path().join("cluster/pki/ca.crt")).unwrap(),
            ca_before
        );
        assert_eq!(first.files.len(), second.files.len());
    }
}
