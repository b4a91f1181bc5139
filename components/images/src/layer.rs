//! A root filesystem description and its reproducible layer tarball.
//!
//! Entries are written in path order with uid/gid 0, fixed modes and one fixed mtime, so the
//! same inputs always give the same bytes (and so the same digests).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use oci_spec::image::MediaType;
use sha2::{Digest as _, Sha256};
use tempfile::NamedTempFile;

use crate::ImageError;

/// What one path in the root filesystem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntrySource {
    /// A directory.
    Directory,
    /// A regular file whose content is read from a host file at build time.
    HostFile(PathBuf),
    /// A regular file with the given content.
    Bytes(Vec<u8>),
    /// A symbolic link to the given target.
    Symlink(String),
}

/// One path in the root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootFsEntry {
    /// Permission bits (e.g. `0o755`); ignored for symlinks.
    pub mode: u32,
    /// Where the content comes from.
    pub source: EntrySource,
}

/// An image root filesystem: absolute paths inside the image mapped to their content.
/// Missing parent directories are added (mode 0755) automatically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RootFs {
    entries: BTreeMap<String, RootFsEntry>,
}

/// How a layer is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Uncompressed tar (`application/vnd.oci.image.layer.v1.tar`).
    None,
    /// gzip at the given level 0–9 (`application/vnd.oci.image.layer.v1.tar+gzip`).
    Gzip(u32),
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Gzip(6)
    }
}

impl Compression {
    /// The OCI media type of a layer compressed this way.
    pub fn media_type(&self) -> MediaType {
        match self {
            Compression::None => MediaType::ImageLayer,
            Compression::Gzip(_) => MediaType::ImageLayerGzip,
        }
    }
}

/// A written layer blob, kept in a temporary file until dropped.
#[derive(Debug)]
pub struct Layer {
    file: NamedTempFile,
    /// sha256 hex of the blob as stored (compressed).
    pub digest: String,
    /// sha256 hex of the uncompressed tar (the config's `rootfs.diff_ids` entry).
    pub diff_id: String,
    /// Size of the blob in bytes.
    pub size: u64,
    /// Size of the uncompressed tar in bytes.
    pub uncompressed_size: u64,
    /// Media type of the blob.
    pub media_type: MediaType,
}

impl Layer {
    /// The temporary file holding the blob.
    pub fn path(&self) -> &Path {
        self.file.path()
    }
}

fn normalize(path: &str) -> Result<String, ImageError> {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty()
        || trimmed
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(ImageError::InvalidImagePath {
            path: path.to_string(),
        });
    }
    Ok(trimmed.to_string())
}

impl RootFs {
    /// An empty root filesystem.
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(&mut self, path: &str, entry: RootFsEntry) -> Result<(), ImageError> {
        let path = normalize(path)?;
        let mut parent = String::new();
        for part in path.split('/').collect::<Vec<_>>().split_last().unwrap().1 {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            match self.entries.get(&parent) {
                None => {
                    self.entries.insert(
                        parent.clone(),
                        RootFsEntry {
                            mode: 0o755,
                            source: EntrySource::Directory,
                        },
                    );
                }
                Some(RootFsEntry {
                    source: EntrySource::Directory,
                    ..
                }) => {}
                Some(_) => {
                    return Err(ImageError::InvalidImagePath {
                        path: format!("/{path} (/{parent} is not a directory)"),
                    })
                }
            }
        }
        self.entries.insert(path, entry);
        Ok(())
    }

    /// Adds a directory (replacing the mode of one added implicitly).
    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<(), ImageError> {
        self.insert(
            path,
            RootFsEntry {
                mode,
                source: EntrySource::Directory,
            },
        )
    }

    /// Adds a regular file copied from the host at build time (symlinks on the host are
    /// followed).
    pub fn add_host_file(
        &mut self,
        path: &str,
        host: impl Into<PathBuf>,
        mode: u32,
    ) -> Result<(), ImageError> {
        self.insert(
            path,
            RootFsEntry {
                mode,
                source: EntrySource::HostFile(host.into()),
            },
        )
    }

    /// Adds a regular file with the given content.
    pub fn add_bytes(
        &mut self,
        path: &str,
        content: impl Into<Vec<u8>>,
        mode: u32,
    ) -> Result<(), ImageError> {
        self.insert(
            path,
            RootFsEntry {
                mode,
                source: EntrySource::Bytes(content.into()),
            },
        )
    }

    /// Adds a symbolic link.
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), ImageError> {
        self.insert(
            path,
            RootFsEntry {
                mode: 0o777,
                source: EntrySource::Symlink(target.to_string()),
            },
        )
    }

    /// The entries in the order they are written (path order, parents first), with paths
    /// relative to `/`.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &RootFsEntry)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The entry at an absolute path, if any.
    pub fn get(&self, path: &str) -> Option<&RootFsEntry> {
        self.entries.get(path.trim_matches('/'))
    }

    /// Writes the layer tar (compressed as asked) into a temporary file in `dir`, computing its
    /// digest and diff ID on the way. `mtime` is the modification time of every entry.
    pub fn write_layer(
        &self,
        dir: &Path,
        compression: Compression,
        mtime: u64,
    ) -> Result<Layer, ImageError> {
        let io_err = |what: &str, source: io::Error| ImageError::Write {
            what: format!("layer in {}: {what}", dir.display()),
            source,
        };
        let file = tempfile::Builder::new()
            .prefix(".layer-")
            .tempfile_in(dir)
            .map_err(|e| io_err("creating temporary file", e))?;
        let blob = HashingWriter::new(BufWriter::new(
            file.reopen()
                .map_err(|e| io_err("opening temporary file", e))?,
        ));
        let (blob, diff_id, uncompressed_size) = match compression {
            Compression::None => {
                let tar = self.write_tar(HashingWriter::new(blob), mtime)?;
                let (blob, diff_id, size) = tar.finish();
                (blob, diff_id, size)
            }
            Compression::Gzip(level) => {
                // flate2's encoder writes a header with mtime 0 and no file name: reproducible.
                let gz = GzEncoder::new(blob, flate2::Compression::new(level.min(9)));
                let tar = self.write_tar(HashingWriter::new(gz), mtime)?;
                let (gz, diff_id, size) = tar.finish();
                let blob = gz.finish().map_err(|e| io_err("finishing gzip", e))?;
                (blob, diff_id, size)
            }
        };
        let (mut out, digest, size) = blob.finish();
        out.flush().map_err(|e| io_err("flushing", e))?;
        out.get_ref().sync_all().map_err(|e| io_err("syncing", e))?;
        Ok(Layer {
            file,
            digest,
            diff_id,
            size,
            uncompressed_size,
            media_type: compression.media_type(),
        })
    }

    fn write_tar<W: Write>(&self, out: W, mtime: u64) -> Result<W, ImageError> {
        let mut builder = tar::Builder::new(out);
        for (path, entry) in &self.entries {
            let mut header = tar::Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(mtime);
            header.set_mode(entry.mode & 0o7777);
            let tar_err = |source: io::Error| ImageError::Write {
                what: format!("layer entry /{path}"),
                source,
            };
            match &entry.source {
                EntrySource::Directory => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    builder
                        .append_data(&mut header, format!("{path}/"), io::empty())
                        .map_err(tar_err)?;
                }
                EntrySource::Bytes(content) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(content.len() as u64);
                    builder
                        .append_data(&mut header, path, content.as_slice())
                        .map_err(tar_err)?;
                }
                EntrySource::HostFile(host) => {
                    let file = File::open(host).map_err(|source| ImageError::Read {
                        path: host.clone(),
                        source,
                    })?;
                    let len = file
                        .metadata()
                        .map_err(|source| ImageError::Read {
                            path: host.clone(),
                            source,
                        })?
                        .len();
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(len);
                    // `take` guards against a file growing while it is read.
                    builder
                        .append_data(&mut header, path, io::Read::take(file, len))
                        .map_err(tar_err)?;
                }
                EntrySource::Symlink(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    header.set_mode(0o777);
                    builder
                        .append_link(&mut header, path, target)
                        .map_err(tar_err)?;
                }
            }
        }
        builder.into_inner().map_err(|source| ImageError::Write {
            what: "layer tar trailer".into(),
            source,
        })
    }
}

/// A writer that hashes (sha256) and counts everything written through it.
#[derive(Debug)]
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// The inner writer, the sha256 hex of what was written, and its length.
    pub(crate) fn finish(self) -> (W, String, u64) {
        (
            self.inner,
            hex::encode(self.hasher.finalize()),
            self.written,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// sha256 hex of a byte slice.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample() -> RootFs {
        let mut rootfs = RootFs::new();
        rootfs
            .add_bytes(
                "/etc/passwd",
                "root:x:0:0:root:/root:/sbin/nologin\n",
                0o644,
            )
            .unwrap();
        rootfs.add_dir("/tmp", 0o1777).unwrap();
        rootfs
            .add_bytes("/usr/local/bin/tool", vec![1u8; 3000], 0o755)
            .unwrap();
        rootfs
            .add_symlink("/bin/tool", "/usr/local/bin/tool")
            .unwrap();
        rootfs
    }

    /// (path, type, mode, uid, gid, mtime, content)
    type TarEntry = (String, tar::EntryType, u32, u64, u64, u64, Vec<u8>);

    fn read_entries(path: &Path, gzip: bool) -> Vec<TarEntry> {
        let file = File::open(path).unwrap();
        let reader: Box<dyn Read> = if gzip {
            Box::new(flate2::read::GzDecoder::new(file))
        } else {
            Box::new(file)
        };
        let mut archive = tar::Archive::new(reader);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let h = e.header().clone();
                let mut content = Vec::new();
                e.read_to_end(&mut content).unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    h.entry_type(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                    h.mtime().unwrap(),
                    content,
                )
            })
            .collect()
    }

    #[test]
    fn parents_are_implicit_and_entries_sorted() {
        let rootfs = sample();
        let paths: Vec<_> = rootfs.entries().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            [
                "bin",
                "bin/tool",
                "etc",
                "etc/passwd",
                "tmp",
                "usr",
                "usr/local",
                "usr/local/bin",
                "usr/local/bin/tool"
            ]
        );
        assert_eq!(rootfs.get("/tmp").unwrap().mode, 0o1777);
    }

    #[test]
    fn invalid_paths_are_rejected() {
        let mut rootfs = sample();
        for bad in ["/", "", "/a/../b", "/a//b", "./x"] {
            assert!(
                matches!(
                    rootfs.add_dir(bad, 0o755),
                    Err(ImageError::InvalidImagePath { .. })
                ),
                "{bad:?} accepted"
            );
        }
        // A file cannot become a parent directory.
        let err = rootfs.add_bytes("/etc/passwd/x", "", 0o644).unwrap_err();
        assert!(err.to_string().contains("/etc/passwd"), "{err}");
    }

    #[test]
    fn layer_tar_has_root_owner_fixed_mtime_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let layer = sample()
            .write_layer(dir.path(), Compression::Gzip(6), 1_700_000_000)
            .unwrap();
        let entries = read_entries(layer.path(), true);
        let names: Vec<_> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names[0], "bin/");
        assert!(names.contains(&"usr/local/bin/tool"));
        for (path, kind, mode, uid, gid, mtime, content) in &entries {
            assert_eq!((*uid, *gid), (0, 0), "{path}");
            assert_eq!(*mtime, 1_700_000_000, "{path}");
            match path.as_str() {
                "tmp/" => assert_eq!((*kind, *mode), (tar::EntryType::Directory, 0o1777)),
                "etc/passwd" => {
                    assert_eq!((*kind, *mode), (tar::EntryType::Regular, 0o644));
                    assert!(content.starts_with(b"root:x:0:0"));
                }
                "usr/local/bin/tool" => {
                    assert_eq!((*kind, *mode), (tar::EntryType::Regular, 0o755));
                    assert_eq!(content, &vec![1u8; 3000]);
                }
                "bin/tool" => assert_eq!(*kind, tar::EntryType::Symlink),
                _ => assert_eq!(*kind, tar::EntryType::Directory, "{path}"),
            }
        }
    }

    #[test]
    fn digests_match_blob_and_uncompressed_tar() {
        let dir = tempfile::tempdir().unwrap();
        for compression in [Compression::None, Compression::Gzip(1)] {
            let layer = sample().write_layer(dir.path(), compression, 0).unwrap();
            let blob = std::fs::read(layer.path()).unwrap();
            assert_eq!(layer.digest, sha256_hex(&blob));
            assert_eq!(layer.size, blob.len() as u64);
            let mut tar = Vec::new();
            match compression {
                Compression::None => tar = blob.clone(),
                Compression::Gzip(_) => {
                    flate2::read::GzDecoder::new(blob.as_slice())
                        .read_to_end(&mut tar)
                        .unwrap();
                }
            }
            assert_eq!(layer.diff_id, sha256_hex(&tar));
            assert_eq!(layer.uncompressed_size, tar.len() as u64);
            assert_eq!(layer.media_type, compression.media_type());
        }
    }

    #[test]
    fn same_rootfs_gives_identical_layers() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("host-file");
        std::fs::write(&host, b"binary content").unwrap();
        let build = || {
            let mut rootfs = sample();
            rootfs.add_host_file("/usr/bin/x", &host, 0o755).unwrap();
            rootfs
                .write_layer(dir.path(), Compression::Gzip(6), 0)
                .unwrap()
        };
        let (a, b) = (build(), build());
        assert_eq!(a.digest, b.digest);
        assert_eq!(
            std::fs::read(a.path()).unwrap(),
            std::fs::read(b.path()).unwrap()
        );
    }

    #[test]
    fn missing_host_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let mut rootfs = RootFs::new();
        rootfs
            .add_host_file("/x", dir.path().join("absent"), 0o755)
            .unwrap();
        let err = rootfs
            .write_layer(dir.path(), Compression::None, 0)
            .unwrap_err();
        assert!(err.to_string().contains("absent"), "{err}");
    }
}
