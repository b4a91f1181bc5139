//! OCI images that kinit builds from its own executable, and the two programs they run besides
//! the control plane.
//!
//! - [`build_images`] writes `kinit.local/kinit:<tag>` (control plane), `kinit.local/pause:<tag>`
//!   (pod sandbox), `kinit.local/demoapp:<tag>` and, from a busybox binary,
//!   `kinit.local/admin-box:<tag>` ([`admin_box`]) as archives that are both OCI image layouts
//!   and `docker save` archives; `ctr -n k8s.io images import FILE` loads them, no registry
//!   needed. The root filesystem is the binary, the shared libraries it needs (read from its
//!   ELF `PT_INTERP`/`DT_NEEDED`, see [`elf`]) and a minimal `/etc`.
//! - [`run_pause`] is `kinit pause`, the infra container; [`run_demoapp`] is `kinit demoapp`.
//! - [`run_images`] is `kinit images build`.

pub mod admin_box;
pub mod archive;
pub mod cli;
pub mod demoapp;
pub mod elf;
pub mod kinit;
pub mod layer;
pub mod pause;

use std::path::PathBuf;

pub use archive::{write_archive, ArchivedImage, ImageSpec};
pub use cli::{run_images, ImagesArgs};
pub use demoapp::{run_demoapp, DemoAppArgs, DemoAppError};
pub use elf::{discover_dependencies, ElfDependencies, LibraryResolver};
pub use kinit::{build_images, BuildOptions, BuildReport, BuiltImage, KinitImage};
pub use layer::{Compression, Layer, RootFs};
pub use pause::{run_pause, PauseArgs, PauseError};

/// Why an image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Writing an output failed.
    #[error("cannot write {what}: {source} (check the output directory exists, is writable and has space)")]
    Write {
        /// What was being written.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The binary (or a library) is not a parsable ELF file.
    #[error("{path} is not an ELF executable ({reason}); pass a Linux kinit binary with --binary")]
    NotElf {
        /// The file.
        path: PathBuf,
        /// Parser message.
        reason: String,
    },
    /// A needed shared library is not on this host.
    #[error("{soname} (needed by {needed_by}) not found in {searched}; install it, or build a static kinit (e.g. --target x86_64-unknown-linux-musl)")]
    LibraryNotFound {
        /// The `DT_NEEDED` name.
        soname: String,
        /// The object that needs it.
        needed_by: PathBuf,
        /// Directories searched, `:`-separated.
        searched: String,
    },
    /// The ELF machine has no OCI architecture name kinit knows.
    #[error(
        "{path} is built for ELF machine {machine}, which has no OCI architecture kinit knows"
    )]
    UnsupportedMachine {
        /// The binary.
        path: PathBuf,
        /// `e_machine`.
        machine: u16,
    },
    /// An image path is not a clean absolute path.
    #[error(
        "invalid path in image: {path:?} (use a clean absolute path without `.`, `..` or `//`)"
    )]
    InvalidImagePath {
        /// The path.
        path: String,
    },
    /// An image reference is malformed.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference.
        reference: String,
        /// What is wrong.
        reason: String,
    },
    /// The admin box needs a busybox binary that is not there.
    #[error(
        "busybox not found at {path} (the admin-box image is built from it); {}",
        admin_box::INSTALL_HINT
    )]
    BusyboxMissing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The binary given as busybox does not behave like one.
    #[error(
        "{path} is not a usable busybox: {reason}; {}",
        admin_box::INSTALL_HINT
    )]
    NotBusybox {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// JSON serialization failed.
    #[error("cannot serialize image JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// An OCI document could not be built.
    #[error("cannot build OCI document: {0}")]
    Spec(#[source] oci_spec::OciSpecError),
}
