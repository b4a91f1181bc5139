//! What an ELF executable needs at run time: its program interpreter (`PT_INTERP`) and the
//! shared libraries it names in `DT_NEEDED`, resolved transitively the way the glibc dynamic
//! loader does (`DT_RPATH`/`DT_RUNPATH`, then `/etc/ld.so.conf`, then the system directories).
//!
//! The ELF files are parsed with goblin; only the library *search* is ours, because no
//! maintained crate resolves `DT_NEEDED` against a host's loader configuration.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use goblin::elf::header::{
    EI_CLASS, EI_DATA, ELFCLASS64, ELFDATA2LSB, EM_386, EM_AARCH64, EM_ARM, EM_LOONGARCH, EM_PPC64,
    EM_RISCV, EM_S390, EM_X86_64,
};
use goblin::elf::Elf;
use oci_spec::image::Arch;

use crate::ImageError;

/// The identity of an ELF file that decides whether two files can be loaded together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfKind {
    /// `e_machine` (e.g. 62 for x86-64).
    pub machine: u16,
    /// `true` for ELFCLASS64.
    pub is_64: bool,
    /// `true` for little-endian (ELFDATA2LSB).
    pub little_endian: bool,
}

impl ElfKind {
    /// The OCI/Go architecture name of this machine (`amd64`, `arm64`, …), or `None` when the
    /// machine has no OCI name kinit knows.
    pub fn oci_arch(&self) -> Option<Arch> {
        Some(match (self.machine, self.is_64, self.little_endian) {
            (EM_X86_64, true, true) => Arch::Amd64,
            (EM_AARCH64, true, true) => Arch::ARM64,
            (EM_ARM, false, true) => Arch::ARM,
            (EM_386, false, true) => Arch::i386,
            (EM_RISCV, true, true) => Arch::RISCV64,
            (EM_PPC64, true, true) => Arch::PowerPC64le,
            (EM_S390, true, false) => Arch::s390x,
            (EM_LOONGARCH, true, true) => Arch::LoongArch64,
            _ => return None,
        })
    }

    /// Debian's multiarch triplet for this machine, used for the default library directories.
    fn multiarch_triplet(&self) -> Option<&'static str> {
        Some(match (self.machine, self.is_64) {
            (EM_X86_64, true) => "x86_64-linux-gnu",
            (EM_AARCH64, true) => "aarch64-linux-gnu",
            (EM_ARM, false) => "arm-linux-gnueabihf",
            (EM_386, false) => "i386-linux-gnu",
            (EM_RISCV, true) => "riscv64-linux-gnu",
            (EM_PPC64, true) => "powerpc64le-linux-gnu",
            (EM_S390, true) => "s390x-linux-gnu",
            (EM_LOONGARCH, true) => "loongarch64-linux-gnu",
            _ => return None,
        })
    }

    /// Directories the dynamic loader searches without any configuration (no `ld.so.cache`), in
    /// order. A library found elsewhere needs `LD_LIBRARY_PATH` inside a scratch image.
    pub fn system_library_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        if let Some(triplet) = self.multiarch_triplet() {
            dirs.push(PathBuf::from(format!("/lib/{triplet}")));
            dirs.push(PathBuf::from(format!("/usr/lib/{triplet}")));
        }
        if self.is_64 {
            dirs.push(PathBuf::from("/lib64"));
            dirs.push(PathBuf::from("/usr/lib64"));
        }
        dirs.push(PathBuf::from("/lib"));
        dirs.push(PathBuf::from("/usr/lib"));
        dirs
    }
}

/// A shared library resolved on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedLibrary {
    /// The name as written in `DT_NEEDED` (e.g. `libc.so.6`).
    pub soname: String,
    /// Where it was found (directory as searched, not canonicalized), e.g.
    /// `/lib/x86_64-linux-gnu/libc.so.6`. The image places it at the same path.
    pub path: PathBuf,
}

/// The run-time dependencies of an executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfDependencies {
    /// Machine, class and byte order of the executable.
    pub kind: ElfKind,
    /// The program interpreter (`PT_INTERP`), `None` for a static executable.
    pub interpreter: Option<PathBuf>,
    /// Every shared library needed, transitively, in discovery order, without duplicates.
    pub libraries: Vec<ResolvedLibrary>,
}

impl ElfDependencies {
    /// `true` when the executable needs nothing but itself.
    pub fn is_static(&self) -> bool {
        self.interpreter.is_none() && self.libraries.is_empty()
    }

    /// Directories holding needed libraries that the loader does not search by default.
    pub fn extra_library_dirs(&self) -> Vec<PathBuf> {
        let system = self.kind.system_library_dirs();
        let mut extra = Vec::new();
        for library in &self.libraries {
            if let Some(dir) = library.path.parent() {
                if !system.iter().any(|s| s == dir) && !extra.iter().any(|e: &PathBuf| e == dir) {
                    extra.push(dir.to_path_buf());
                }
            }
        }
        extra
    }
}

/// Finds shared libraries the way the host's dynamic loader would.
#[derive(Debug, Clone)]
pub struct LibraryResolver {
    /// Directories from the loader configuration (`/etc/ld.so.conf` and its includes).
    configured_dirs: Vec<PathBuf>,
}

impl LibraryResolver {
    /// A resolver that reads the host's `/etc/ld.so.conf` (a missing file means no extra dirs).
    pub fn from_host() -> Self {
        Self::with_ld_so_conf(Path::new("/etc/ld.so.conf"))
    }

    /// A resolver that reads the given `ld.so.conf`.
    pub fn with_ld_so_conf(path: &Path) -> Self {
        let mut configured_dirs = Vec::new();
        read_ld_so_conf(path, &mut configured_dirs, 0);
        Self { configured_dirs }
    }

    /// A resolver that searches only the given directories (before the system defaults).
    pub fn with_dirs(dirs: Vec<PathBuf>) -> Self {
        Self {
            configured_dirs: dirs,
        }
    }

    /// Reads `binary` and resolves its interpreter and all its libraries, transitively.
    pub fn dependencies(&self, binary: &Path) -> Result<ElfDependencies, ImageError> {
        let bytes = read_file(binary)?;
        let elf = parse_elf(binary, &bytes)?;
        let kind = elf_kind(&elf);
        let interpreter = elf.interpreter.map(PathBuf::from);

        let mut libraries: Vec<ResolvedLibrary> = Vec::new();
        let mut seen: BTreeSet<String> = BTreeSet::new();
        // (soname, needed by, search dirs of the object that needs it)
        let mut queue: VecDeque<(String, PathBuf, Vec<PathBuf>)> = VecDeque::new();
        let root_dirs = object_search_dirs(binary, &elf);
        for name in &elf.libraries {
            queue.push_back((name.to_string(), binary.to_path_buf(), root_dirs.clone()));
        }
        drop(elf);
        drop(bytes);

        while let Some((soname, needed_by, object_dirs)) = queue.pop_front() {
            if !seen.insert(soname.clone()) {
                continue;
            }
            let path = self.find(&soname, &needed_by, &object_dirs, kind)?;
            let lib_bytes = read_file(&path)?;
            let lib = parse_elf(&path, &lib_bytes)?;
            let lib_dirs = object_search_dirs(&path, &lib);
            for name in &lib.libraries {
                if !seen.contains(*name) {
                    queue.push_back((name.to_string(), path.clone(), lib_dirs.clone()));
                }
            }
            libraries.push(ResolvedLibrary { soname, path });
        }

        Ok(ElfDependencies {
            kind,
            interpreter,
            libraries,
        })
    }

    fn find(
        &self,
        soname: &str,
        needed_by: &Path,
        object_dirs: &[PathBuf],
        kind: ElfKind,
    ) -> Result<PathBuf, ImageError> {
        if soname.contains('/') {
            // A DT_NEEDED with a slash is a path, used as is.
            let path = PathBuf::from(soname);
            return if is_compatible(&path, kind) {
                Ok(path)
            } else {
                Err(ImageError::LibraryNotFound {
                    soname: soname.to_string(),
                    needed_by: needed_by.to_path_buf(),
                    searched: soname.to_string(),
                })
            };
        }
        let dirs: Vec<PathBuf> = object_dirs
            .iter()
            .chain(&self.configured_dirs)
            .cloned()
            .chain(kind.system_library_dirs())
            .collect();
        for dir in &dirs {
            let candidate = dir.join(soname);
            if is_compatible(&candidate, kind) {
                return Ok(candidate);
            }
        }
        Err(ImageError::LibraryNotFound {
            soname: soname.to_string(),
            needed_by: needed_by.to_path_buf(),
            searched: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
        })
    }
}

/// Resolves the run-time dependencies of `binary` with the host's loader configuration.
pub fn discover_dependencies(binary: &Path) -> Result<ElfDependencies, ImageError> {
    LibraryResolver::from_host().dependencies(binary)
}

fn read_file(path: &Path) -> Result<Vec<u8>, ImageError> {
    fs::read(path).map_err(|source| ImageError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_elf<'a>(path: &Path, bytes: &'a [u8]) -> Result<Elf<'a>, ImageError> {
    Elf::parse(bytes).map_err(|source| ImageError::NotElf {
        path: path.to_path_buf(),
        reason: source.to_string(),
    })
}

fn elf_kind(elf: &Elf<'_>) -> ElfKind {
    ElfKind {
        machine: elf.header.e_machine,
        is_64: elf.is_64,
        little_endian: elf.little_endian,
    }
}

/// `DT_RPATH` (ignored when `DT_RUNPATH` exists, as ld.so does) then `DT_RUNPATH`, with
/// `$ORIGIN` expanded to the object's directory.
fn object_search_dirs(path: &Path, elf: &Elf<'_>) -> Vec<PathBuf> {
    let origin = path
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| ".".into());
    let entries = if elf.runpaths.is_empty() {
        &elf.rpaths
    } else {
        &elf.runpaths
    };
    entries
        .iter()
        .flat_map(|entry| entry.split(':'))
        .filter(|dir| !dir.is_empty())
        .map(|dir| {
            PathBuf::from(
                dir.replace("${ORIGIN}", &origin)
                    .replace("$ORIGIN", &origin),
            )
        })
        .collect()
}

/// Whether `path` is a regular ELF file of the same machine, class and byte order.
fn is_compatible(path: &Path, kind: ElfKind) -> bool {
    let Ok(mut file) = fs::File::open(path) else {
        return false;
    };
    if !file.metadata().map(|m| m.is_file()).unwrap_or(false) {
        return false;
    }
    let mut header = [0u8; 64];
    if file.read_exact(&mut header[..20]).is_err() {
        return false;
    }
    if &header[..4] != b"\x7fELF" {
        return false;
    }
    let is_64 = header[EI_CLASS] == ELFCLASS64;
    let little_endian = header[EI_DATA] == ELFDATA2LSB;
    let machine_bytes = [header[18], header[19]];
    let machine = if little_endian {
        u16::from_le_bytes(machine_bytes)
    } else {
        u16::from_be_bytes(machine_bytes)
    };
    kind == ElfKind {
        machine,
        is_64,
        little_endian,
    }
}

/// Reads an `ld.so.conf` file: one directory per line, `include GLOB` lines, `#` comments.
fn read_ld_so_conf(path: &Path, dirs: &mut Vec<PathBuf>, depth: usize) {
    if depth > 8 {
        return; // include loop
    }
    let Ok(text) = fs::read_to_string(path) else {
        return;
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() || line.starts_with("hwcap ") {
            continue;
        }
        if let Some(pattern) = line.strip_prefix("include") {
            let pattern = pattern.trim();
            let pattern = if Path::new(pattern).is_absolute() {
                PathBuf::from(pattern)
            } else {
                path.parent().unwrap_or(Path::new("/")).join(pattern)
            };
            for included in expand_file_glob(&pattern) {
                read_ld_so_conf(&included, dirs, depth + 1);
            }
            continue;
        }
        for dir in line.split([':', ',', ' ', '\t']).filter(|d| !d.is_empty()) {
            let dir = PathBuf::from(dir);
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
    }
}

/// Expands a `*` in the file-name part of a path (what ld.so.conf includes use), sorted.
/// Hand-written: this one pattern shape does not warrant a glob crate.
fn expand_file_glob(pattern: &Path) -> Vec<PathBuf> {
    let Some(name) = pattern.file_name().and_then(|n| n.to_str()) else {
        return Vec::new();
    };
    let Some((prefix, suffix)) = name.split_once('*') else {
        return vec![pattern.to_path_buf()];
    };
    let dir = pattern.parent().unwrap_or(Path::new("/"));
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut matches: BTreeMap<String, PathBuf> = BTreeMap::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if file_name.len() >= prefix.len() + suffix.len()
            && file_name.starts_with(prefix)
            && file_name.ends_with(suffix)
        {
            matches.insert(file_name, entry.path());
        }
    }
    matches.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_kind() -> ElfKind {
        let exe = std::env::current_exe().unwrap();
        let bytes = fs::read(&exe).unwrap();
        elf_kind(&Elf::parse(&bytes).unwrap())
    }

    #[test]
    fn test_binary_needs_libc_and_the_interpreter() {
        let exe = std::env::current_exe().unwrap();
        let deps = discover_dependencies(&exe).unwrap();
        let interpreter = deps.interpreter.as_ref().expect("test binary is dynamic");
        assert!(interpreter.is_absolute(), "{interpreter:?}");
        assert!(interpreter.exists(), "{interpreter:?} missing on host");
        let libc = deps
            .libraries
            .iter()
            .find(|l| l.soname == "libc.so.6")
            .expect("libc.so.6 among the needed libraries");
        assert!(libc.path.is_absolute() && libc.path.ends_with("libc.so.6"));
        assert!(is_compatible(&libc.path, deps.kind));
        // No duplicates, and every path is a compatible ELF.
        let names: BTreeSet<_> = deps.libraries.iter().map(|l| &l.soname).collect();
        assert_eq!(names.len(), deps.libraries.len());
        assert!(deps
            .libraries
            .iter()
            .all(|l| is_compatible(&l.path, deps.kind)));
        assert!(!deps.is_static());
        assert_eq!(deps.kind, host_kind());
        assert!(deps.kind.oci_arch().is_some());
    }

    #[test]
    fn host_libraries_need_no_ld_library_path() {
        let exe = std::env::current_exe().unwrap();
        let deps = discover_dependencies(&exe).unwrap();
        assert_eq!(deps.extra_library_dirs(), Vec::<PathBuf>::new());
    }

    #[test]
    fn non_elf_file_is_rejected_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("script.sh");
        fs::write(&path, "#!/bin/sh\necho hi\n").unwrap();
        let err = discover_dependencies(&path).unwrap_err();
        assert!(matches!(err, ImageError::NotElf { .. }), "{err}");
        assert!(err.to_string().contains("script.sh"), "{err}");
    }

    #[test]
    fn missing_library_names_the_library_and_search_path() {
        let resolver = LibraryResolver::with_dirs(vec![]);
        let err = resolver
            .find(
                "libdoes-not-exist.so.9",
                Path::new("/bin/x"),
                &[PathBuf::from("/nonexistent-rpath")],
                host_kind(),
            )
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("libdoes-not-exist.so.9"), "{text}");
        assert!(text.contains("/nonexistent-rpath"), "{text}");
    }

    #[test]
    fn incompatible_candidate_is_skipped() {
        // A file with the right name but not an ELF must not be picked.
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("libc.so.6"), b"not an elf").unwrap();
        let resolver = LibraryResolver::with_dirs(vec![dir.path().to_path_buf()]);
        let found = resolver
            .find("libc.so.6", Path::new("/x"), &[], host_kind())
            .unwrap();
        assert_ne!(found.parent(), Some(dir.path()));
    }

    #[test]
    fn ld_so_conf_follows_includes_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir(d.join("conf.d")).unwrap();
        fs::write(d.join("conf.d/b.conf"), "/opt/b\n# comment\n").unwrap();
        fs::write(d.join("conf.d/a.conf"), "/opt/a:/opt/a2\n").unwrap();
        fs::write(d.join("conf.d/ignored.txt"), "/opt/ignored\n").unwrap();
        fs::write(
            d.join("ld.so.conf"),
            format!("/opt/first\ninclude {}/conf.d/*.conf\n", d.display()),
        )
        .unwrap();
        let resolver = LibraryResolver::with_ld_so_conf(&d.join("ld.so.conf"));
        assert_eq!(
            resolver.configured_dirs,
            ["/opt/first", "/opt/a", "/opt/a2", "/opt/b"]
                .map(PathBuf::from)
                .to_vec()
        );
    }

    #[test]
    fn origin_is_expanded_in_runpath() {
        let exe = std::env::current_exe().unwrap();
        let bytes = fs::read(&exe).unwrap();
        let mut elf = Elf::parse(&bytes).unwrap();
        elf.runpaths = vec!["$ORIGIN/../lib:/opt/x"];
        elf.rpaths = vec!["/ignored-because-runpath"];
        let dirs = object_search_dirs(Path::new("/app/bin/tool"), &elf);
        assert_eq!(
            dirs,
            vec![PathBuf::from("/app/bin/../lib"), "/opt/x".into()]
        );
    }
}
