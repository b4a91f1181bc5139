//! `kinit images …`: build the kinit images from this (or a given) executable.

use std::path::PathBuf;

use comfy_table::{presets::NOTHING, Table};

use crate::kinit::{build_images, BuildOptions, BuildReport, KinitImage};
use crate::layer::Compression;
use crate::ImageError;

/// `kinit images`: OCI images built from the kinit executable, imported into containerd
/// without any registry.
#[derive(Debug, Clone, clap::Args)]
pub struct ImagesArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ImagesCommand,
}

/// Subcommands of `kinit images`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ImagesCommand {
    /// Write one image archive per image (control-plane, pause, demoapp, admin-box) into a
    /// directory. Import one on a node with `ctr -n k8s.io images import FILE`.
    Build(BuildArgs),
}

/// Layer compression choices on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressionArg {
    /// gzip (smaller archives, the usual choice).
    Gzip,
    /// Uncompressed tar layers (faster to build and import, larger files).
    None,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// A table for people.
    Table,
    /// JSON for scripts.
    Json,
}

/// Flags of `kinit images build`.
#[derive(Debug, Clone, clap::Args)]
pub struct BuildArgs {
    /// Directory to write the archives to (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub out: PathBuf,
    /// Executable to package instead of the running kinit.
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// Image tag (must match the `images.*` settings the templates render).
    #[arg(long, default_value_t = KinitImage::default_tag())]
    pub tag: String,
    /// Images to build (comma separated); all by default (the admin box only when busybox is
    /// there).
    #[arg(long = "image", value_enum, value_delimiter = ',')]
    pub images: Vec<KinitImage>,
    /// The busybox binary the admin-box image is made of (Debian's busybox).
    #[arg(long, value_name = "PATH", default_value = crate::admin_box::DEFAULT_BUSYBOX)]
    pub busybox: PathBuf,
    /// Layer compression.
    #[arg(long, value_enum, default_value = "gzip")]
    pub compression: CompressionArg,
    /// gzip level, 0 (store) to 9 (smallest).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(0..=9))]
    pub compression_level: u32,
    /// Unix time stamped on the configs and layer entries (reproducible builds).
    #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 0)]
    pub source_date_epoch: i64,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: OutputFormat,
}

/// Runs `kinit images …`, prints the result (table or JSON) on stdout and returns it.
pub fn run_images(args: ImagesArgs) -> Result<BuildReport, ImageError> {
    match args.command {
        ImagesCommand::Build(build) => {
            let binary = match build.binary {
                Some(path) => path,
                None => std::env::current_exe().map_err(|source| ImageError::Read {
                    path: PathBuf::from("/proc/self/exe"),
                    source,
                })?,
            };
            // The admin box is built when busybox is there; its absence is an error only when
            // it was asked for by name or a path was given.
            let asked = build.images.contains(&KinitImage::AdminBox)
                || build.busybox.as_os_str() != crate::admin_box::DEFAULT_BUSYBOX;
            let busybox = if build.busybox.is_file() {
                Some(build.busybox.clone())
            } else if asked {
                return Err(ImageError::BusyboxMissing {
                    path: build.busybox.clone(),
                });
            } else {
                if build.images.is_empty() {
                    eprintln!(
                        "note: the admin-box image is skipped: busybox not found at {}; {}",
                        build.busybox.display(),
                        crate::admin_box::INSTALL_HINT
                    );
                }
                None
            };
            let options = BuildOptions {
                binary,
                busybox,
                out_dir: build.out,
                tag: build.tag,
                images: build.images,
                compression: match build.compression {
                    CompressionArg::Gzip => Compression::Gzip(build.compression_level),
                    CompressionArg::None => Compression::None,
                },
                source_date_epoch: build.source_date_epoch,
            };
            let report = build_images(&options)?;
            println!("{}", render(&report, build.output)?);
            Ok(report)
        }
    }
}

/// Renders a build report as a table or JSON.
pub fn render(report: &BuildReport, format: OutputFormat) -> Result<String, ImageError> {
    match format {
        OutputFormat::Json => serde_json::to_string_pretty(report).map_err(ImageError::Json),
        OutputFormat::Table => {
            let mut table = Table::new();
            table.load_preset(NOTHING);
            table.set_header(["IMAGE", "DIGEST", "SIZE", "PATH"]);
            for image in &report.images {
                table.add_row([
                    image.reference.clone(),
                    image.manifest_digest.clone(),
                    human_size(image.size),
                    image.path.display().to_string(),
                ]);
            }
            let notes: String = report
                .notes
                .iter()
                .map(|n| format!("\nnote: {n}"))
                .collect();
            Ok(format!(
                "{table}\nbuilt {} image(s) in {:.1}s; shared layer {} ({} unpacked, {} libraries){notes}",
                report.images.len(),
                report.elapsed.as_secs_f64(),
                report
                    .images
                    .first()
                    .map(|i| i.layer_digest.as_str())
                    .unwrap_or("-"),
                report
                    .images
                    .first()
                    .map(|i| human_size(i.unpacked_size))
                    .unwrap_or_default(),
                report.libraries.len()
            ))
        }
    }
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        images: ImagesArgs,
    }

    #[test]
    fn build_flags_parse() {
        let cli = Cli::try_parse_from([
            "images",
            "build",
            "--out",
            "/tmp/x",
            "--image",
            "pause,demoapp",
            "-o",
            "json",
            "--compression",
            "none",
        ])
        .unwrap();
        let ImagesCommand::Build(build) = cli.images.command;
        assert_eq!(build.out, PathBuf::from("/tmp/x"));
        assert_eq!(build.images, vec![KinitImage::Pause, KinitImage::Demoapp]);
        assert_eq!(build.output, OutputFormat::Json);
        assert_eq!(build.compression, CompressionArg::None);
        assert_eq!(build.tag, KinitImage::default_tag());
        assert!(Cli::try_parse_from(["images", "build", "--compression-level", "10"]).is_err());
    }

    #[test]
    fn run_images_builds_and_reports_json() {
        let out = tempfile::tempdir().unwrap();
        let report = run_images(ImagesArgs {
            command: ImagesCommand::Build(BuildArgs {
                out: out.path().to_path_buf(),
                binary: Some("/bin/true".into()),
                tag: "v0.0.1-test".into(),
                images: vec![KinitImage::Demoapp],
                busybox: crate::admin_box::DEFAULT_BUSYBOX.into(),
                compression: CompressionArg::Gzip,
                compression_level: 1,
                source_date_epoch: 0,
                output: OutputFormat::Json,
            }),
        })
        .unwrap();
        assert_eq!(report.images.len(), 1);
        let json: serde_json::Value =
            serde_json::from_str(&render(&report, OutputFormat::Json).unwrap()).unwrap();
        let image = &json["images"][0];
        assert_eq!(image["image"], "demoapp");
        assert_eq!(image["reference"], "kinit.local/demoapp:v0.0.1-test");
        assert!(image["manifest_digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"));
        assert_eq!(
            image["size"],
            std::fs::metadata(&report.images[0].path).unwrap().len()
        );
        let table = render(&report, OutputFormat::Table).unwrap();
        assert!(table.contains("kinit.local/demoapp:v0.0.1-test"), "{table}");
        assert!(table.contains("built 1 image(s)"), "{table}");
    }

    #[test]
    fn an_asked_for_admin_box_without_busybox_says_what_to_install() {
        let out = tempfile::tempdir().unwrap();
        let err = run_images(ImagesArgs {
            command: ImagesCommand::Build(BuildArgs {
                out: out.path().to_path_buf(),
                binary: Some("/bin/true".into()),
                tag: "v0.0.1-test".into(),
                images: vec![KinitImage::AdminBox],
                busybox: "/nonexistent/busybox".into(),
                compression: CompressionArg::None,
                compression_level: 1,
                source_date_epoch: 0,
                output: OutputFormat::Json,
            }),
        })
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("busybox not found at /nonexistent/busybox"),
            "{text}"
        );
        assert!(text.contains("apt-get install -y busybox"), "{text}");
    }

    #[test]
    fn sizes_are_human_readable() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(30 * 1024 * 1024), "30.0 MiB");
    }
}
