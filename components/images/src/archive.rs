//! Image config, manifest and index (oci-spec types), written as one tar that is both an OCI
//! image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) and a `docker save` archive
//! (`manifest.json` pointing at the same blobs), so `ctr images import`, `docker load` and
//! `podman load` all accept it.
//!
//! JSON documents are serialized canonically (object keys sorted, no whitespace): oci-spec keeps
//! labels and annotations in `HashMap`s, whose order would otherwise change between runs.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, Digest, HistoryBuilder,
    ImageConfigurationBuilder, ImageIndexBuilder, ImageManifestBuilder, MediaType, Os,
    PlatformBuilder, RootFsBuilder, SCHEMA_VERSION,
};
use serde::Serialize;

use crate::layer::{sha256_hex, Layer};
use crate::ImageError;

/// containerd's annotation for the full image name in an `index.json` entry.
pub const ANNOTATION_CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";
/// The OCI annotation for the reference (tag) of an `index.json` entry.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// What one image looks like to a runtime: its name and its config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageSpec {
    /// Full reference, `registry/repository:tag` (e.g. `kinit.local/pause:v0.1.0`).
    pub reference: String,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd` (arguments to the entrypoint).
    pub cmd: Vec<String>,
    /// `Env`, `NAME=value` entries.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: String,
    /// `User` (`uid:gid`), `None` for root.
    pub user: Option<String>,
    /// `ExposedPorts` such as `8080/tcp`.
    pub exposed_ports: Vec<String>,
    /// `Labels`.
    pub labels: BTreeMap<String, String>,
    /// `StopSignal`, `None` for the runtime default (SIGTERM).
    pub stop_signal: Option<String>,
}

impl ImageSpec {
    /// The tag part of the reference (after the last `:` that follows the last `/`).
    pub fn tag(&self) -> &str {
        let last = self.reference.rsplit('/').next().unwrap_or(&self.reference);
        last.rsplit_once(':')
            .map(|(_, tag)| tag)
            .unwrap_or("latest")
    }
}

/// Validates an image reference of the form `[registry/]repository:tag`.
pub fn validate_reference(reference: &str) -> Result<(), ImageError> {
    let invalid = |reason: &str| ImageError::InvalidReference {
        reference: reference.to_string(),
        reason: reason.to_string(),
    };
    let (name, tag) = match reference.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => return Err(invalid("it has no `:tag`")),
    };
    if tag.is_empty()
        || tag.len() > 128
        || tag.starts_with(['.', '-'])
        || !tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(invalid(
            "a tag is 1-128 of [A-Za-z0-9_.-] and does not start with `.` or `-`",
        ));
    }
    let mut components = name.split('/');
    let first = components.next().unwrap_or_default();
    let registry_like = first.contains(['.', ':']) || first == "localhost";
    let path: Vec<&str> = if registry_like {
        components.collect()
    } else {
        name.split('/').collect()
    };
    if path.is_empty()
        || path.iter().any(|c| {
            c.is_empty()
                || !c.chars().all(|ch| {
                    ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-')
                })
                || !c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
        })
    {
        return Err(invalid(
            "repository path components are lowercase letters, digits and . _ -",
        ));
    }
    Ok(())
}

/// One image written into an archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArchivedImage {
    /// The image reference.
    pub reference: String,
    /// Manifest digest (`sha256:…`): what `ctr images ls` shows as DIGEST.
    pub manifest_digest: String,
    /// Config digest (`sha256:…`): the image ID `crictl images` shows.
    pub config_digest: String,
}

/// Serializes `value` as compact JSON with all object keys sorted.
pub fn canonical_json<T: Serialize>(value: &T) -> Result<Vec<u8>, ImageError> {
    fn sort(value: serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => {
                let sorted: BTreeMap<String, serde_json::Value> =
                    map.into_iter().map(|(k, v)| (k, sort(v))).collect();
                serde_json::Value::Object(sorted.into_iter().collect())
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.into_iter().map(sort).collect())
            }
            other => other,
        }
    }
    let value = serde_json::to_value(value).map_err(ImageError::Json)?;
    serde_json::to_vec(&sort(value)).map_err(ImageError::Json)
}

fn sha256_digest(hex: &str) -> Result<Digest, ImageError> {
    Digest::from_str(&format!("sha256:{hex}")).map_err(ImageError::Spec)
}

/// RFC 3339 UTC timestamp for a Unix time.
pub fn rfc3339(epoch_seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(epoch_seconds)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// The JSON blobs of one image.
struct ImageBlobs {
    config: Vec<u8>,
    config_digest: String,
    manifest: Vec<u8>,
    manifest_digest: String,
}

fn image_blobs(
    spec: &ImageSpec,
    layer: &Layer,
    arch: &Arch,
    created: &str,
) -> Result<ImageBlobs, ImageError> {
    let mut config = ConfigBuilder::default()
        .env(spec.env.clone())
        .working_dir(spec.working_dir.clone())
        .labels(
            spec.labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<std::collections::HashMap<_, _>>(),
        );
    if !spec.entrypoint.is_empty() {
        config = config.entrypoint(spec.entrypoint.clone());
    }
    if !spec.cmd.is_empty() {
        config = config.cmd(spec.cmd.clone());
    }
    if let Some(user) = &spec.user {
        config = config.user(user.clone());
    }
    if !spec.exposed_ports.is_empty() {
        config = config.exposed_ports(spec.exposed_ports.clone());
    }
    if let Some(signal) = &spec.stop_signal {
        config = config.stop_signal(signal.clone());
    }
    let config = config.build().map_err(ImageError::Spec)?;
    let image_config = ImageConfigurationBuilder::default()
        .created(created.to_string())
        .architecture(arch.clone())
        .os(Os::Linux)
        .config(config)
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![format!("sha256:{}", layer.diff_id)])
                .build()
                .map_err(ImageError::Spec)?,
        )
        .history(vec![HistoryBuilder::default()
            .created(created.to_string())
            .created_by(format!("kinit images build ({})", spec.reference))
            .comment("kinit binary and the shared libraries it needs".to_string())
            .build()
            .map_err(ImageError::Spec)?])
        .build()
        .map_err(ImageError::Spec)?;
    let config = canonical_json(&image_config)?;
    let config_digest = sha256_hex(&config);

    let manifest = ImageManifestBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageManifest)
        .config(Descriptor::new(
            MediaType::ImageConfig,
            config.len() as u64,
            sha256_digest(&config_digest)?,
        ))
        .layers(vec![Descriptor::new(
            layer.media_type.clone(),
            layer.size,
            sha256_digest(&layer.digest)?,
        )])
        .build()
        .map_err(ImageError::Spec)?;
    let manifest = canonical_json(&manifest)?;
    let manifest_digest = sha256_hex(&manifest);
    Ok(ImageBlobs {
        config,
        config_digest,
        manifest,
        manifest_digest,
    })
}

/// `manifest.json` of a `docker save` archive.
#[derive(Serialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags")]
    repo_tags: Vec<String>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// Writes `images` (which all share `layer`) as one archive at `path`, atomically (temporary
/// file in the same directory, then rename). `mtime` is the tar mtime of every entry and
/// `created` the config's creation time (RFC 3339).
pub fn write_archive(
    path: &Path,
    images: &[ImageSpec],
    layer: &Layer,
    arch: &Arch,
    created: &str,
    mtime: u64,
) -> Result<Vec<ArchivedImage>, ImageError> {
    for image in images {
        validate_reference(&image.reference)?;
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let write_err = |what: String| {
        let path = path.to_path_buf();
        move |source: io::Error| ImageError::Write {
            what: format!("{} ({what})", path.display()),
            source,
        }
    };

    let mut blobs: BTreeMap<String, BlobSource> = BTreeMap::new();
    blobs.insert(
        layer.digest.clone(),
        BlobSource::File(layer.path().to_path_buf(), layer.size),
    );
    let mut index_entries = Vec::new();
    let mut docker_entries = Vec::new();
    let mut archived = Vec::new();
    for image in images {
        let built = image_blobs(image, layer, arch, created)?;
        let platform = PlatformBuilder::default()
            .architecture(arch.clone())
            .os(Os::Linux)
            .build()
            .map_err(ImageError::Spec)?;
        index_entries.push(
            DescriptorBuilder::default()
                .media_type(MediaType::ImageManifest)
                .digest(sha256_digest(&built.manifest_digest)?)
                .size(built.manifest.len() as u64)
                .platform(platform)
                .annotations(std::collections::HashMap::from([
                    (
                        ANNOTATION_CONTAINERD_IMAGE_NAME.to_string(),
                        image.reference.clone(),
                    ),
                    (ANNOTATION_REF_NAME.to_string(), image.tag().to_string()),
                ]))
                .build()
                .map_err(ImageError::Spec)?,
        );
        docker_entries.push(DockerManifestEntry {
            config: format!("blobs/sha256/{}", built.config_digest),
            repo_tags: vec![image.reference.clone()],
            layers: vec![format!("blobs/sha256/{}", layer.digest)],
        });
        archived.push(ArchivedImage {
            reference: image.reference.clone(),
            manifest_digest: format!("sha256:{}", built.manifest_digest),
            config_digest: format!("sha256:{}", built.config_digest),
        });
        blobs.insert(built.config_digest, BlobSource::Bytes(built.config));
        blobs.insert(built.manifest_digest, BlobSource::Bytes(built.manifest));
    }
    let index = ImageIndexBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageIndex)
        .manifests(index_entries)
        .build()
        .map_err(ImageError::Spec)?;
    let index = canonical_json(&index)?;
    let docker_manifest = canonical_json(&docker_entries)?;
    let oci_layout = br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec();

    let temp = tempfile::Builder::new()
        .prefix(".image-")
        .tempfile_in(dir)
        .map_err(write_err("creating temporary file".into()))?;
    let out = BufWriter::new(
        temp.reopen()
            .map_err(write_err("opening temporary file".into()))?,
    );
    let mut tar = tar::Builder::new(out);
    let mut append =
        |name: &str, kind: tar::EntryType, mode: u32, size: u64, data: &mut dyn io::Read| {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(kind);
            header.set_mode(mode);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(mtime);
            header.set_size(size);
            tar.append_data(&mut header, name, data)
                .map_err(write_err(format!("entry {name}")))
        };
    append(
        "blobs/",
        tar::EntryType::Directory,
        0o755,
        0,
        &mut io::empty(),
    )?;
    append(
        "blobs/sha256/",
        tar::EntryType::Directory,
        0o755,
        0,
        &mut io::empty(),
    )?;
    for (digest, source) in &blobs {
        let name = format!("blobs/sha256/{digest}");
        match source {
            BlobSource::Bytes(bytes) => append(
                &name,
                tar::EntryType::Regular,
                0o644,
                bytes.len() as u64,
                &mut bytes.as_slice(),
            )?,
            BlobSource::File(file, size) => {
                let reader = File::open(file).map_err(|source| ImageError::Read {
                    path: file.clone(),
                    source,
                })?;
                append(
                    &name,
                    tar::EntryType::Regular,
                    0o644,
                    *size,
                    &mut io::Read::take(reader, *size),
                )?
            }
        }
    }
    for (name, bytes) in [
        ("index.json", &index),
        ("manifest.json", &docker_manifest),
        ("oci-layout", &oci_layout),
    ] {
        append(
            name,
            tar::EntryType::Regular,
            0o644,
            bytes.len() as u64,
            &mut bytes.as_slice(),
        )?;
    }
    let mut out = tar
        .into_inner()
        .map_err(write_err("finishing tar".into()))?;
    out.flush().map_err(write_err("flushing".into()))?;
    out.get_ref()
        .sync_all()
        .map_err(write_err("syncing".into()))?;
    drop(out);
    temp.persist(path).map_err(|e| ImageError::Write {
        what: format!("{} (renaming temporary file into place)", path.display()),
        source: e.error,
    })?;
    Ok(archived)
}

enum BlobSource {
    Bytes(Vec<u8>),
    File(PathBuf, u64),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{Compression, RootFs};
    use std::io::Read;

    fn spec(reference: &str) -> ImageSpec {
        ImageSpec {
            reference: reference.into(),
            entrypoint: vec!["/usr/local/bin/tool".into(), "serve".into()],
            cmd: vec!["--port=1".into()],
            env: vec!["PATH=/usr/local/bin:/bin".into()],
            working_dir: "/".into(),
            user: Some("65534:65534".into()),
            exposed_ports: vec!["8080/tcp".into(), "9090/tcp".into()],
            labels: BTreeMap::from([
                ("b".to_string(), "2".to_string()),
                ("a".to_string(), "1".to_string()),
                ("c".to_string(), "3".to_string()),
            ]),
            stop_signal: Some("SIGTERM".into()),
        }
    }

    fn layer(dir: &Path) -> Layer {
        let mut rootfs = RootFs::new();
        rootfs
            .add_bytes("/usr/local/bin/tool", vec![7u8; 100], 0o755)
            .unwrap();
        rootfs.add_dir("/tmp", 0o1777).unwrap();
        rootfs.write_layer(dir, Compression::Gzip(6), 0).unwrap()
    }

    fn read_archive(path: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut archive = tar::Archive::new(File::open(path).unwrap());
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path().unwrap().display().to_string();
                let mut content = Vec::new();
                e.read_to_end(&mut content).unwrap();
                (name, content)
            })
            .collect()
    }

    #[test]
    fn archive_is_a_consistent_oci_layout_and_docker_archive() {
        let dir = tempfile::tempdir().unwrap();
        let layer = layer(dir.path());
        let path = dir.path().join("img.tar");
        let images = [spec("kinit.local/tool:v1"), spec("kinit.local/other:v2")];
        let archived = write_archive(&path, &images, &layer, &Arch::Amd64, &rfc3339(0), 0).unwrap();
        let files = read_archive(&path);

        // Every blob is named by its own sha256.
        let blobs: Vec<_> = files
            .iter()
            .filter(|(n, _)| n.starts_with("blobs/sha256/") && n.len() > 13)
            .collect();
        assert_eq!(blobs.len(), 5, "1 shared layer + 2 configs + 2 manifests");
        for (name, content) in &blobs {
            assert_eq!(name["blobs/sha256/".len()..], sha256_hex(content), "{name}");
        }
        let blob = |digest: &str| {
            files[&format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))].clone()
        };

        assert_eq!(files["oci-layout"], br#"{"imageLayoutVersion":"1.0.0"}"#);
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(
            index["mediaType"],
            "application/vnd.oci.image.index.v1+json"
        );
        let docker: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        for (i, image) in images.iter().enumerate() {
            let entry = &index["manifests"][i];
            assert_eq!(
                entry["annotations"][ANNOTATION_CONTAINERD_IMAGE_NAME],
                image.reference
            );
            assert_eq!(entry["annotations"][ANNOTATION_REF_NAME], image.tag());
            assert_eq!(entry["platform"]["architecture"], "amd64");
            assert_eq!(entry["platform"]["os"], "linux");
            assert_eq!(entry["digest"], archived[i].manifest_digest);
            let manifest_bytes = blob(entry["digest"].as_str().unwrap());
            assert_eq!(entry["size"], manifest_bytes.len());

            let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes).unwrap();
            assert_eq!(manifest["schemaVersion"], 2);
            assert_eq!(
                manifest["config"]["mediaType"],
                "application/vnd.oci.image.config.v1+json"
            );
            assert_eq!(manifest["config"]["digest"], archived[i].config_digest);
            let config_bytes = blob(manifest["config"]["digest"].as_str().unwrap());
            assert_eq!(manifest["config"]["size"], config_bytes.len());
            let layer_desc = &manifest["layers"][0];
            assert_eq!(
                layer_desc["mediaType"],
                "application/vnd.oci.image.layer.v1.tar+gzip"
            );
            assert_eq!(layer_desc["digest"], format!("sha256:{}", layer.digest));
            assert_eq!(layer_desc["size"], layer.size);

            let config: serde_json::Value = serde_json::from_slice(&config_bytes).unwrap();
            assert_eq!(config["architecture"], "amd64");
            assert_eq!(config["os"], "linux");
            assert_eq!(config["created"], "1970-01-01T00:00:00Z");
            assert_eq!(config["rootfs"]["type"], "layers");
            assert_eq!(
                config["rootfs"]["diff_ids"][0],
                format!("sha256:{}", layer.diff_id)
            );
            let c = &config["config"];
            assert_eq!(
                c["Entrypoint"],
                serde_json::json!(["/usr/local/bin/tool", "serve"])
            );
            assert_eq!(c["Cmd"], serde_json::json!(["--port=1"]));
            assert_eq!(c["Env"], serde_json::json!(["PATH=/usr/local/bin:/bin"]));
            assert_eq!(c["WorkingDir"], "/");
            assert_eq!(c["User"], "65534:65534");
            assert_eq!(
                c["ExposedPorts"],
                serde_json::json!({"8080/tcp": {}, "9090/tcp": {}})
            );
            assert_eq!(
                c["Labels"],
                serde_json::json!({"a": "1", "b": "2", "c": "3"})
            );

            assert_eq!(docker[i]["RepoTags"], serde_json::json!([image.reference]));
            assert_eq!(
                docker[i]["Config"],
                format!(
                    "blobs/sha256/{}",
                    archived[i].config_digest.trim_start_matches("sha256:")
                )
            );
            assert_eq!(
                docker[i]["Layers"],
                serde_json::json!([format!("blobs/sha256/{}", layer.digest)])
            );
        }
    }

    #[test]
    fn archives_are_byte_identical_across_runs() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str| {
            let layer = layer(dir.path());
            let path = dir.path().join(name);
            write_archive(
                &path,
                &[spec("kinit.local/tool:v1")],
                &layer,
                &Arch::ARM64,
                &rfc3339(0),
                0,
            )
            .unwrap();
            std::fs::read(path).unwrap()
        };
        assert_eq!(write("a.tar"), write("b.tar"));
    }

    #[test]
    fn canonical_json_sorts_nested_keys() {
        let value = serde_json::json!({"z": {"b": 1, "a": [ {"y": 1, "x": 2} ]}, "a": null});
        assert_eq!(
            String::from_utf8(canonical_json(&value).unwrap()).unwrap(),
            r#"{"a":null,"z":{"a":[{"x":2,"y":1}],"b":1}}"#
        );
    }

    #[test]
    fn references_are_validated() {
        for good in [
            "kinit.local/kinit:v0.1.0",
            "localhost:5000/a/b:latest",
            "pause:3.9",
            "registry.k8s.io/etcd:3.5.21-0",
        ] {
            validate_reference(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "kinit.local/kinit",
            "Kinit/x:v1",
            "x:",
            "x:-v1",
            "a//b:v1",
            "x:v 1",
        ] {
            assert!(validate_reference(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(spec("localhost:5000/a:v9").tag(), "v9");
    }

    #[test]
    fn rfc3339_formats_epoch_seconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
