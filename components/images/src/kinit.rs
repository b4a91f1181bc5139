//! The images kinit builds from its own executable: the control plane, the pause (sandbox)
//! image and the demo app. All three share one layer (the binary, the libraries it needs and a
//! minimal `/etc`), so a node stores the binary once whatever the number of images.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::image::Arch;
use serde::Serialize;

use crate::archive::{rfc3339, validate_reference, write_archive, ImageSpec};
use crate::elf::{ElfDependencies, LibraryResolver};
use crate::layer::{Compression, Layer, RootFs};
use crate::ImageError;

/// Registry host part of every kinit image name. It resolves nowhere: the images are imported
/// into containerd, never pulled (static pods use `imagePullPolicy: IfNotPresent`).
pub const REGISTRY: &str = "kinit.local";
/// Where the kinit executable lives inside the images.
pub const BINARY_PATH: &str = "/usr/local/bin/kinit";
/// `PATH` inside the images (the static pods run `kinit …` by name).
pub const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// uid:gid of the unprivileged user (`nobody`) the pause and demo-app images run as.
pub const NOBODY: &str = "65534:65534";
/// Port the demo app listens on by default.
pub const DEMOAPP_PORT: u16 = 8080;

const PASSWD: &str = "root:x:0:0:root:/root:/sbin/nologin\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

/// One of the images built from the kinit executable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum KinitImage {
    /// `kinit.local/kinit:<tag>`: runs `kinit apiserver|scheduler|controller-manager` as static
    /// pods (the templates' `images.control_plane`).
    ControlPlane,
    /// `kinit.local/pause:<tag>`: the pod sandbox (infra) container, `kinit pause` (the
    /// templates' `images.pause`, containerd's `sandbox_image`).
    Pause,
    /// `kinit.local/demoapp:<tag>`: `kinit demoapp`, a small HTTP app for tests and docs.
    Demoapp,
    /// `kinit.local/admin-box:<tag>`: busybox's shell and tools for poking at a cluster from a
    /// pod; built from the busybox binary given (see [`crate::admin_box`]), not from kinit.
    AdminBox,
}

impl KinitImage {
    /// The images built from the kinit executable, in build order.
    pub const ALL: [KinitImage; 3] = [
        KinitImage::ControlPlane,
        KinitImage::Pause,
        KinitImage::Demoapp,
    ];

    /// Whether the image is made from the kinit executable (all but the admin box).
    pub fn from_kinit(self) -> bool {
        self != KinitImage::AdminBox
    }

    /// Short name used in file names and output (`control-plane`, `pause`, `demoapp`).
    pub fn name(self) -> &'static str {
        match self {
            KinitImage::ControlPlane => "control-plane",
            KinitImage::Pause => "pause",
            KinitImage::Demoapp => "demoapp",
            KinitImage::AdminBox => "admin-box",
        }
    }

    /// Repository under [`REGISTRY`].
    pub fn repository(self) -> &'static str {
        match self {
            KinitImage::ControlPlane => "kinit",
            KinitImage::Pause => "pause",
            KinitImage::Demoapp => "demoapp",
            KinitImage::AdminBox => "admin-box",
        }
    }

    /// The full reference for a tag, e.g. `kinit.local/pause:v0.1.0`.
    pub fn reference(self, tag: &str) -> String {
        format!("{REGISTRY}/{}:{tag}", self.repository())
    }

    /// The tag of this kinit build: `v` + the crate version, as the templates render it.
    pub fn default_tag() -> String {
        format!("v{}", env!("CARGO_PKG_VERSION"))
    }

    /// The image config for this image at `tag`. `extra_env` is appended to `Env` (e.g. an
    /// `LD_LIBRARY_PATH` the binary needs).
    pub fn spec(self, tag: &str, extra_env: &[String]) -> ImageSpec {
        let mut env = vec![PATH_ENV.to_string()];
        env.extend(extra_env.iter().cloned());
        let (entrypoint, cmd, user, ports, description): (Vec<&str>, Vec<&str>, _, Vec<String>, _) =
            match self {
                KinitImage::ControlPlane => (
                    vec![BINARY_PATH],
                    vec!["--help"],
                    None,
                    vec![],
                    "kinit control plane: kinit apiserver, controller-manager and scheduler",
                ),
                KinitImage::Pause => (
                    vec![BINARY_PATH, "pause"],
                    vec![],
                    Some(NOBODY.to_string()),
                    vec![],
                    "kinit pod sandbox (infra container): kinit pause",
                ),
                KinitImage::AdminBox => (
                    vec![],
                    vec!["sh"],
                    None,
                    vec![],
                    "kinit admin box: busybox's sh, wget, nslookup, nc, ping, ip, ps and more",
                ),
                KinitImage::Demoapp => {
                    env.push(format!("VERSION={tag}"));
                    (
                        vec![BINARY_PATH, "demoapp"],
                        vec![],
                        Some(NOBODY.to_string()),
                        vec![format!("{DEMOAPP_PORT}/tcp")],
                        "kinit demo app: a small HTTP server for tests and docs",
                    )
                }
            };
        let labels = BTreeMap::from([
            (
                "org.opencontainers.image.title".to_string(),
                self.reference(tag),
            ),
            (
                "org.opencontainers.image.description".to_string(),
                description.to_string(),
            ),
            (
                "org.opencontainers.image.version".to_string(),
                tag.to_string(),
            ),
            (
                "org.opencontainers.image.licenses".to_string(),
                env!("CARGO_PKG_LICENSE").to_string(),
            ),
        ]);
        ImageSpec {
            reference: self.reference(tag),
            entrypoint: entrypoint.into_iter().map(String::from).collect(),
            cmd: cmd.into_iter().map(String::from).collect(),
            env,
            working_dir: "/".into(),
            user,
            exposed_ports: ports,
            labels,
            stop_signal: None,
        }
    }
}

/// The root filesystem of every kinit image: the executable at [`BINARY_PATH`], its program
/// interpreter and libraries at the paths the host's loader found them, `/etc/passwd`,
/// `/etc/group`, `/tmp` and `/root`. Returns the dependencies too (they decide the architecture
/// and any `LD_LIBRARY_PATH`).
pub fn kinit_rootfs(
    binary: &Path,
    resolver: &LibraryResolver,
) -> Result<(RootFs, ElfDependencies), ImageError> {
    let deps = resolver.dependencies(binary)?;
    let mut rootfs = RootFs::new();
    rootfs.add_host_file(BINARY_PATH, binary, 0o755)?;
    rootfs.add_bytes("/etc/passwd", PASSWD, 0o644)?;
    rootfs.add_bytes("/etc/group", GROUP, 0o644)?;
    rootfs.add_dir("/tmp", 0o1777)?;
    rootfs.add_dir("/root", 0o700)?;
    // `kubectl exec POD -- hostname` works in every kinit image: the binary answers to that
    // name (see `kinit::main`), as busybox does for its applets.
    rootfs.add_dir("/bin", 0o755)?;
    rootfs.add_symlink("/bin/hostname", BINARY_PATH)?;
    add_libraries(&mut rootfs, &deps)?;
    Ok((rootfs, deps))
}

/// Adds `deps`' libraries and program interpreter at the paths the host's loader found them.
pub(crate) fn add_libraries(rootfs: &mut RootFs, deps: &ElfDependencies) -> Result<(), ImageError> {
    for library in &deps.libraries {
        rootfs.add_host_file(&path_str(&library.path)?, &library.path, 0o755)?;
    }
    if let Some(interpreter) = &deps.interpreter {
        let image_path = path_str(interpreter)?;
        // On Debian /lib64/ld-linux-x86-64.so.2 is the same file as the DT_NEEDED
        // ld-linux-x86-64.so.2 found in /lib/x86_64-linux-gnu: link instead of copying twice.
        let canonical = fs::canonicalize(interpreter).map_err(|source| ImageError::Read {
            path: interpreter.clone(),
            source,
        })?;
        let same_as_library = deps.libraries.iter().find(|l| {
            l.path != *interpreter && fs::canonicalize(&l.path).ok().as_ref() == Some(&canonical)
        });
        match same_as_library {
            Some(library) if rootfs.get(&image_path).is_none() => {
                rootfs.add_symlink(&image_path, &path_str(&library.path)?)?
            }
            _ if rootfs.get(&image_path).is_none() => {
                rootfs.add_host_file(&image_path, interpreter, 0o755)?
            }
            _ => {}
        }
    }
    Ok(())
}

fn path_str(path: &Path) -> Result<String, ImageError> {
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| ImageError::InvalidImagePath {
            path: path.display().to_string(),
        })
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The executable to package (normally `std::env::current_exe()`).
    pub binary: PathBuf,
    /// Directory the archives are written to (created if missing).
    pub out_dir: PathBuf,
    /// Tag of every image (default [`KinitImage::default_tag`]).
    pub tag: String,
    /// Which images (empty: those from kinit, plus the admin box when `busybox` is set).
    pub images: Vec<KinitImage>,
    /// The busybox binary the admin box is built from.
    pub busybox: Option<PathBuf>,
    /// Layer compression.
    pub compression: Compression,
    /// Unix time used for the config's `created` and every tar mtime (reproducible builds:
    /// `SOURCE_DATE_EPOCH`), default 0.
    pub source_date_epoch: i64,
}

impl BuildOptions {
    /// All images of `binary` into `out_dir`, default tag, gzip, epoch 0.
    pub fn new(binary: impl Into<PathBuf>, out_dir: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            out_dir: out_dir.into(),
            tag: KinitImage::default_tag(),
            images: Vec::new(),
            busybox: None,
            compression: Compression::default(),
            source_date_epoch: 0,
        }
    }
}

/// One image written to disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuiltImage {
    /// Which image.
    pub image: KinitImage,
    /// Full reference, e.g. `kinit.local/pause:v0.1.0`.
    pub reference: String,
    /// Manifest digest (`sha256:…`).
    pub manifest_digest: String,
    /// Config digest (`sha256:…`), the image ID.
    pub config_digest: String,
    /// Layer digest (`sha256:…`), shared by all images of one build.
    pub layer_digest: String,
    /// Size of the archive file in bytes.
    pub size: u64,
    /// Size of the unpacked layer in bytes (what the image takes on a node).
    pub unpacked_size: u64,
    /// The archive file, importable with `ctr -n k8s.io images import FILE`.
    pub path: PathBuf,
}

/// The result of [`build_images`].
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    /// The images, in the order asked.
    pub images: Vec<BuiltImage>,
    /// Shared libraries packaged with the binary (empty for a static binary).
    pub libraries: Vec<PathBuf>,
    /// Things the user should know about the images built (e.g. a static busybox).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Wall time of the whole build.
    #[serde(serialize_with = "serialize_secs")]
    pub elapsed: Duration,
}

fn serialize_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

/// The archive file name of an image, e.g. `kinit-pause-v0.1.0.tar`.
pub fn archive_file_name(image: KinitImage, tag: &str) -> String {
    format!("kinit-{}-{tag}.tar", image.name())
}

/// Builds the asked images from `options.binary`: one shared layer, then one archive per image
/// in `options.out_dir`. Same inputs give byte-identical archives.
pub fn build_images(options: &BuildOptions) -> Result<BuildReport, ImageError> {
    build_images_with(options, &LibraryResolver::from_host())
}

/// [`build_images`] with a given library resolver.
pub fn build_images_with(
    options: &BuildOptions,
    resolver: &LibraryResolver,
) -> Result<BuildReport, ImageError> {
    let started = Instant::now();
    let images: Vec<KinitImage> = if options.images.is_empty() {
        let mut all = KinitImage::ALL.to_vec();
        if options.busybox.is_some() {
            all.push(KinitImage::AdminBox);
        }
        all
    } else {
        let mut unique = options.images.clone();
        unique.dedup();
        unique
    };
    for image in &images {
        validate_reference(&image.reference(&options.tag))?;
    }
    fs::create_dir_all(&options.out_dir).map_err(|source| ImageError::Write {
        what: format!("output directory {}", options.out_dir.display()),
        source,
    })?;
    let mtime = u64::try_from(options.source_date_epoch).unwrap_or(0);
    let created = rfc3339(options.source_date_epoch);
    let mut built = Vec::new();
    let mut libraries = Vec::new();
    let mut notes = Vec::new();
    // One layer per source: every kinit image shares the binary's, the admin box has its own.
    for from_kinit in [true, false] {
        let wanted: Vec<KinitImage> = images
            .iter()
            .copied()
            .filter(|i| i.from_kinit() == from_kinit)
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let (source, (rootfs, deps)) = if from_kinit {
            (
                options.binary.clone(),
                kinit_rootfs(&options.binary, resolver)?,
            )
        } else {
            let busybox = options.busybox.clone().ok_or(ImageError::BusyboxMissing {
                path: PathBuf::from(crate::admin_box::DEFAULT_BUSYBOX),
            })?;
            let built = crate::admin_box::rootfs(&busybox, resolver)?;
            if built.1.is_static() {
                notes.push(format!(
                    "{} {}",
                    busybox.display(),
                    crate::admin_box::STATIC_NOTE
                ));
            }
            (busybox, built)
        };
        let arch: Arch = deps.kind.oci_arch().ok_or(ImageError::UnsupportedMachine {
            path: source,
            machine: deps.kind.machine,
        })?;
        let extra_env: Vec<String> = match deps.extra_library_dirs() {
            dirs if dirs.is_empty() => Vec::new(),
            dirs => vec![format!(
                "LD_LIBRARY_PATH={}",
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":")
            )],
        };
        let layer: Layer = rootfs.write_layer(&options.out_dir, options.compression, mtime)?;
        for image in wanted {
            let spec = image.spec(&options.tag, &extra_env);
            let path = options.out_dir.join(archive_file_name(image, &options.tag));
            let archived = write_archive(&path, &[spec], &layer, &arch, &created, mtime)?;
            let size = fs::metadata(&path)
                .map_err(|source| ImageError::Read {
                    path: path.clone(),
                    source,
                })?
                .len();
            let archived = archived.into_iter().next().expect("one image per archive");
            built.push(BuiltImage {
                image,
                reference: archived.reference,
                manifest_digest: archived.manifest_digest,
                config_digest: archived.config_digest,
                layer_digest: format!("sha256:{}", layer.digest),
                size,
                unpacked_size: layer.uncompressed_size,
                path,
            });
        }
        libraries.extend(deps.libraries.iter().map(|l| l.path.clone()));
    }
    built.sort_by_key(|b| images.iter().position(|i| *i == b.image));
    libraries.sort();
    libraries.dedup();
    Ok(BuildReport {
        images: built,
        libraries,
        notes,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A small dynamic executable from the host, so tests stay fast.
    fn small_binary() -> PathBuf {
        ["/bin/true", "/usr/bin/true"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .expect("/bin/true exists")
    }

    fn layer_paths(archive: &Path) -> Vec<(String, u32)> {
        let mut outer = tar::Archive::new(fs::File::open(archive).unwrap());
        let mut files = BTreeMap::new();
        for entry in outer.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().display().to_string();
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            files.insert(name, content);
        }
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let blob = |d: &str| &files[&format!("blobs/sha256/{}", d.trim_start_matches("sha256:"))];
        let manifest: serde_json::Value =
            serde_json::from_slice(blob(index["manifests"][0]["digest"].as_str().unwrap()))
                .unwrap();
        let layer = blob(manifest["layers"][0]["digest"].as_str().unwrap());
        let mut inner = tar::Archive::new(flate2::read::GzDecoder::new(layer.as_slice()));
        inner
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                )
            })
            .collect()
    }

    /// The busybox the CI installs (Debian's busybox or busybox-static, both at /bin/busybox).
    fn busybox() -> Option<PathBuf> {
        let path = PathBuf::from(crate::admin_box::DEFAULT_BUSYBOX);
        if path.is_file() {
            return Some(path);
        }
        assert!(
            std::env::var("KINIT_E2E").as_deref() != Ok("1"),
            "/bin/busybox is missing: apt-get install -y busybox-static"
        );
        eprintln!("SKIPPED admin-box build test: /bin/busybox is missing");
        None
    }

    #[test]
    fn admin_box_is_busybox_with_its_applets_linked() {
        let Some(busybox) = busybox() else { return };
        let out = tempfile::tempdir().unwrap();
        let mut options = BuildOptions::new(small_binary(), out.path());
        options.busybox = Some(busybox);
        options.images = vec![KinitImage::AdminBox, KinitImage::Pause];
        let report = build_images(&options).unwrap();
        assert_eq!(
            report.images.iter().map(|i| i.image).collect::<Vec<_>>(),
            [KinitImage::AdminBox, KinitImage::Pause]
        );
        let admin = &report.images[0];
        assert_eq!(
            admin.reference,
            format!("kinit.local/admin-box:{}", KinitImage::default_tag())
        );
        // Its own layer: nothing of the kinit binary.
        assert_ne!(admin.layer_digest, report.images[1].layer_digest);
        let paths: BTreeMap<String, u32> = layer_paths(&admin.path).into_iter().collect();
        for applet in [
            "bin/sh",
            "usr/bin/wget",
            "usr/bin/nslookup",
            "bin/ping",
            "sbin/ip",
            "bin/ps",
            "usr/bin/nc",
        ] {
            assert!(paths.contains_key(applet), "{applet} missing: {paths:?}");
        }
        assert_eq!(paths["bin/busybox"] & 0o777, 0o755);
        // A dynamic busybox brings its C library (its wget and nc resolve names through it).
        let deps = LibraryResolver::from_host()
            .dependencies(Path::new(crate::admin_box::DEFAULT_BUSYBOX))
            .unwrap();
        for library in &deps.libraries {
            let inside = library.path.display().to_string();
            assert!(
                paths.contains_key(inside.trim_start_matches('/')),
                "{inside} missing: {paths:?}"
            );
        }
        assert_eq!(
            report.notes.is_empty(),
            !deps.is_static(),
            "{:?}",
            report.notes
        );
        assert!(!paths.contains_key("usr/local/bin/kinit"));
        let spec = KinitImage::AdminBox.spec("v1", &[]);
        assert_eq!(spec.cmd, vec!["sh"]);
        assert!(spec.entrypoint.is_empty());
    }

    #[test]
    fn names_match_what_the_templates_render() {
        // templates/src/context.rs: control_plane = kinit.local/kinit:v<version>,
        // control_plane_command = "kinit", pause = kinit.local/pause:v<version>.
        let tag = KinitImage::default_tag();
        assert_eq!(tag, format!("v{}", env!("CARGO_PKG_VERSION")));
        assert_eq!(
            KinitImage::ControlPlane.reference(&tag),
            format!("kinit.local/kinit:v{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(
            KinitImage::Pause.reference(&tag),
            format!("kinit.local/pause:v{}", env!("CARGO_PKG_VERSION"))
        );
        // The static pods' command is `kinit` by name: it must resolve through PATH.
        let spec = KinitImage::ControlPlane.spec(&tag, &[]);
        assert_eq!(BINARY_PATH, "/usr/local/bin/kinit");
        assert!(spec.env[0].starts_with("PATH=") && spec.env[0].contains("/usr/local/bin"));
        assert_eq!(spec.entrypoint, vec![BINARY_PATH]);
        assert_eq!(
            KinitImage::Pause.spec(&tag, &[]).entrypoint,
            vec![BINARY_PATH, "pause"]
        );
        let demo = KinitImage::Demoapp.spec("v9", &[]);
        assert_eq!(demo.entrypoint, vec![BINARY_PATH, "demoapp"]);
        assert!(demo.env.contains(&"VERSION=v9".to_string()));
        assert_eq!(demo.exposed_ports, vec!["8080/tcp"]);
    }

    #[test]
    fn rootfs_holds_binary_libraries_interpreter_and_etc() {
        let binary = small_binary();
        let (rootfs, deps) = kinit_rootfs(&binary, &LibraryResolver::from_host()).unwrap();
        assert_eq!(
            rootfs.get(BINARY_PATH).unwrap().source,
            crate::layer::EntrySource::HostFile(binary.clone())
        );
        assert_eq!(rootfs.get("/tmp").unwrap().mode, 0o1777);
        assert!(rootfs.get("/etc/passwd").is_some() && rootfs.get("/etc/group").is_some());
        assert!(matches!(
            &rootfs.get("/bin/hostname").unwrap().source,
            crate::layer::EntrySource::Symlink(target) if target == BINARY_PATH
        ));
        for lib in &deps.libraries {
            assert!(rootfs.get(lib.path.to_str().unwrap()).is_some(), "{lib:?}");
        }
        let interp = deps.interpreter.as_ref().unwrap();
        assert!(rootfs.get(interp.to_str().unwrap()).is_some());
    }

    #[test]
    fn build_writes_one_reproducible_archive_per_image() {
        let out_a = tempfile::tempdir().unwrap();
        let out_b = tempfile::tempdir().unwrap();
        let mut options = BuildOptions::new(small_binary(), out_a.path());
        options.source_date_epoch = 1_700_000_000;
        let a = build_images(&options).unwrap();
        options.out_dir = out_b.path().to_path_buf();
        let b = build_images(&options).unwrap();

        assert_eq!(a.images.len(), 3);
        let layer = &a.images[0].layer_digest;
        for (x, y) in a.images.iter().zip(&b.images) {
            assert_eq!(x.manifest_digest, y.manifest_digest);
            assert_eq!(&x.layer_digest, layer, "all images share one layer");
            assert_eq!(fs::read(&x.path).unwrap(), fs::read(&y.path).unwrap());
            assert_eq!(x.size, fs::metadata(&x.path).unwrap().len());
            assert_eq!(
                x.path.file_name().unwrap().to_str().unwrap(),
                archive_file_name(x.image, &KinitImage::default_tag())
            );
        }
        // Distinct configs, hence distinct image IDs.
        let ids: std::collections::BTreeSet<_> =
            a.images.iter().map(|i| &i.config_digest).collect();
        assert_eq!(ids.len(), 3);
        // Only the archives are left behind (the layer temp file is gone).
        let mut names: Vec<_> = fs::read_dir(out_a.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                archive_file_name(KinitImage::ControlPlane, &KinitImage::default_tag()),
                archive_file_name(KinitImage::Demoapp, &KinitImage::default_tag()),
                archive_file_name(KinitImage::Pause, &KinitImage::default_tag()),
            ]
        );

        let paths = layer_paths(&a.images[1].path);
        assert!(
            paths.contains(&("usr/local/bin/kinit".to_string(), 0o755)),
            "{paths:?}"
        );
        assert!(paths.contains(&("etc/passwd".to_string(), 0o644)));
        assert!(paths.contains(&("tmp/".to_string(), 0o1777)));
    }

    /// A minimal static ELF64 executable (header + one PT_LOAD) for the host machine.
    fn static_elf(path: &Path) {
        let host = fs::read(std::env::current_exe().unwrap()).unwrap();
        let machine = [host[18], host[19]];
        let mut elf = Vec::new();
        elf.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
        elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        elf.extend_from_slice(&machine);
        elf.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
        elf.extend_from_slice(&0x400078u64.to_le_bytes()); // entry
        elf.extend_from_slice(&64u64.to_le_bytes()); // phoff
        elf.extend_from_slice(&0u64.to_le_bytes()); // shoff
        elf.extend_from_slice(&0u32.to_le_bytes()); // flags
        for v in [64u16, 56, 1, 64, 0, 0] {
            elf.extend_from_slice(&v.to_le_bytes()); // ehsize phentsize phnum shentsize shnum shstrndx
        }
        elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
        for v in [0u64, 0x400000, 0x400000, 0x80, 0x80, 0x1000] {
            elf.extend_from_slice(&v.to_le_bytes()); // offset vaddr paddr filesz memsz align
        }
        elf.resize(0x80, 0);
        fs::write(path, elf).unwrap();
    }

    #[test]
    fn static_binary_is_packaged_alone() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("kinit-static");
        static_elf(&binary);
        let (rootfs, deps) = kinit_rootfs(&binary, &LibraryResolver::from_host()).unwrap();
        assert!(deps.is_static(), "{deps:?}");
        let paths: Vec<_> = rootfs.entries().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            [
                "bin",
                "bin/hostname",
                "etc",
                "etc/group",
                "etc/passwd",
                "root",
                "tmp",
                "usr",
                "usr/local",
                "usr/local/bin",
                "usr/local/bin/kinit"
            ]
        );
        let report = build_images(&BuildOptions::new(&binary, dir.path().join("out"))).unwrap();
        assert!(report.libraries.is_empty());
        assert_eq!(report.images.len(), 3);
    }

    #[test]
    fn selected_images_and_bad_tags() {
        let out = tempfile::tempdir().unwrap();
        let mut options = BuildOptions::new(small_binary(), out.path());
        options.images = vec![KinitImage::Pause];
        options.compression = Compression::None;
        let report = build_images(&options).unwrap();
        assert_eq!(report.images.len(), 1);
        assert_eq!(
            report.images[0].reference,
            KinitImage::Pause.reference(&options.tag)
        );

        options.tag = "bad tag".into();
        let err = build_images(&options).unwrap_err();
        assert!(matches!(err, ImageError::InvalidReference { .. }), "{err}");
    }
}
