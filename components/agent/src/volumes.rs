//! Pod volumes on the host: emptyDir, hostPath, configMap, secret, downwardAPI and projected
//! (service-account token, configMap, secret, downwardAPI), written with the kubelet's atomic
//! `..data` symlink swap so readers never see a half-updated set of files.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, Volume,
};

use crate::env::field_value;
use crate::sources::ObjectSource;
use crate::AgentError;

/// A volume ready to be mounted: its host path and whether it must be read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostVolume {
    /// Path on the host.
    pub path: PathBuf,
    /// Content volumes (configMap, secret, projected, downwardAPI) are always read-only.
    pub read_only: bool,
}

/// Directory of a pod's state: `<root>/pods/<uid>`.
pub fn pod_dir(root: &Path, uid: &str) -> PathBuf {
    root.join("pods").join(uid)
}

type Files = BTreeMap<String, (Vec<u8>, u32)>;

/// Prepares every volume of `pod` under `root` and returns them by name. Token volumes get a
/// fresh token each time; callers decide how often to call (the worker refreshes every minute).
pub async fn prepare(
    root: &Path,
    pod: &Pod,
    node_name: &str,
    sources: &dyn ObjectSource,
) -> Result<BTreeMap<String, HostVolume>, AgentError> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let base = pod_dir(root, uid).join("volumes");
    let mut out = BTreeMap::new();
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    for v in &volumes {
        let io = |e: std::io::Error, path: &Path| {
            AgentError::Volume(format!(
                "volume {:?} of pod {ns}/{}: {}: {e}",
                v.name,
                pod.metadata.name.as_deref().unwrap_or_default(),
                path.display()
            ))
        };
        let host = if let Some(hp) = &v.host_path {
            let path = PathBuf::from(&hp.path);
            match hp.type_.as_deref().unwrap_or("") {
                "DirectoryOrCreate" => {
                    std::fs::create_dir_all(&path).map_err(|e| io(e, &path))?;
                }
                "FileOrCreate" => {
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent).map_err(|e| io(e, parent))?;
                    }
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .map_err(|e| io(e, &path))?;
                }
                "Directory" if !path.is_dir() => {
                    return Err(AgentError::Volume(format!(
                        "hostPath volume {:?}: {} is not a directory",
                        v.name, hp.path
                    )))
                }
                "File" if !path.is_file() => {
                    return Err(AgentError::Volume(format!(
                        "hostPath volume {:?}: {} is not a file",
                        v.name, hp.path
                    )))
                }
                "Socket" | "CharDevice" | "BlockDevice" if !path.exists() => {
                    return Err(AgentError::Volume(format!(
                        "hostPath volume {:?}: {} does not exist",
                        v.name, hp.path
                    )))
                }
                _ => {}
            }
            HostVolume {
                path,
                read_only: false,
            }
        } else if v.empty_dir.is_some() {
            let path = base.join("kubernetes.io~empty-dir").join(&v.name);
            std::fs::create_dir_all(&path).map_err(|e| io(e, &path))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))
                .map_err(|e| io(e, &path))?;
            HostVolume {
                path,
                read_only: false,
            }
        } else if let Some(files) = content_files(
            v,
            pod,
            node_name,
            sources,
            &base.join("kubernetes.io~projected").join(&v.name),
        )
        .await?
        {
            let kind = if v.config_map.is_some() {
                "kubernetes.io~configmap"
            } else if v.secret.is_some() {
                "kubernetes.io~secret"
            } else if v.downward_api.is_some() {
                "kubernetes.io~downward-api"
            } else {
                "kubernetes.io~projected"
            };
            let path = base.join(kind).join(&v.name);
            write_atomic(&path, &files).map_err(|e| io(e, &path))?;
            HostVolume {
                path,
                read_only: true,
            }
        } else {
            return Err(AgentError::Volume(format!(
                "volume {:?} of pod {ns}/{}: this volume type is not supported by kinit agent \
                 (supported: emptyDir, hostPath, configMap, secret, downwardAPI, projected)",
                v.name,
                pod.metadata.name.as_deref().unwrap_or_default()
            )));
        };
        out.insert(v.name.clone(), host);
    }
    Ok(out)
}

fn select(
    data: BTreeMap<String, Vec<u8>>,
    items: &Option<Vec<KeyToPath>>,
    mode: u32,
    what: &str,
    optional: bool,
) -> Result<Files, AgentError> {
    let mut files = Files::new();
    match items {
        None => {
            for (k, v) in data {
                files.insert(k, (v, mode));
            }
        }
        Some(items) => {
            for item in items {
                match data.get(&item.key) {
                    Some(v) => {
                        files.insert(
                            item.path.clone(),
                            (v.clone(), item.mode.map(|m| m as u32).unwrap_or(mode)),
                        );
                    }
                    None if optional => {}
                    None => {
                        return Err(AgentError::Volume(format!(
                            "{what} has no key {:?}",
                            item.key
                        )))
                    }
                }
            }
        }
    }
    Ok(files)
}

fn config_map_data(cm: ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = cm
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.unwrap_or_default() {
        data.insert(k, v.0);
    }
    data
}

fn secret_data(s: Secret) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = s
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    for (k, v) in s.string_data.unwrap_or_default() {
        data.insert(k, v.into_bytes());
    }
    data
}

fn downward_files(
    items: &[DownwardAPIVolumeFile],
    pod: &Pod,
    node_name: &str,
    mode: u32,
) -> Result<Files, AgentError> {
    let mut files = Files::new();
    for item in items {
        let value = if let Some(f) = &item.field_ref {
            field_value(pod, node_name, &f.field_path).ok_or_else(|| {
                AgentError::Volume(format!(
                    "downwardAPI field {:?} is not supported",
                    f.field_path
                ))
            })?
        } else if let Some(r) = &item.resource_field_ref {
            crate::env::resource_value(pod, r, None).ok_or_else(|| {
                AgentError::Volume(format!(
                    "downwardAPI resource {:?} is not supported",
                    r.resource
                ))
            })?
        } else {
            continue;
        };
        files.insert(
            item.path.clone(),
            (
                value.into_bytes(),
                item.mode.map(|m| m as u32).unwrap_or(mode),
            ),
        );
    }
    Ok(files)
}

/// The token already written at `path` when it is younger than 80% of its lifetime (the
/// kubelet's refresh point), so tokens are not requested on every volume refresh.
fn fresh_token(path: &Path, lifetime_seconds: i64) -> Option<Vec<u8>> {
    let age = std::fs::metadata(path)
        .ok()?
        .modified()
        .ok()?
        .elapsed()
        .ok()?;
    let refresh_after = Duration::from_secs((lifetime_seconds.max(600) as u64) * 8 / 10);
    (age < refresh_after)
        .then(|| std::fs::read(path).ok())
        .flatten()
}

async fn content_files(
    v: &Volume,
    pod: &Pod,
    node_name: &str,
    sources: &dyn ObjectSource,
    projected_dir: &Path,
) -> Result<Option<Files>, AgentError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    if let Some(cm) = &v.config_map {
        let mode = cm.default_mode.unwrap_or(0o644) as u32;
        let optional = cm.optional.unwrap_or(false);
        let what = format!("configmap {ns}/{}", cm.name);
        return match sources.config_map(ns, &cm.name).await? {
            Some(obj) => select(config_map_data(obj), &cm.items, mode, &what, optional).map(Some),
            None if optional => Ok(Some(Files::new())),
            None => Err(AgentError::Volume(format!("{what} not found"))),
        };
    }
    if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let mode = s.default_mode.unwrap_or(0o644) as u32;
        let optional = s.optional.unwrap_or(false);
        let what = format!("secret {ns}/{name}");
        return match sources.secret(ns, &name).await? {
            Some(obj) => select(secret_data(obj), &s.items, mode, &what, optional).map(Some),
            None if optional => Ok(Some(Files::new())),
            None => Err(AgentError::Volume(format!("{what} not found"))),
        };
    }
    if let Some(d) = &v.downward_api {
        let mode = d.default_mode.unwrap_or(0o644) as u32;
        return downward_files(d.items.as_deref().unwrap_or_default(), pod, node_name, mode)
            .map(Some);
    }
    let Some(p) = &v.projected else {
        return Ok(None);
    };
    let mode = p.default_mode.unwrap_or(0o644) as u32;
    let mut files = Files::new();
    for source in p.sources.iter().flatten() {
        if let Some(t) = &source.service_account_token {
            let sa = pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".into());
            let lifetime = t.expiration_seconds.unwrap_or(3607);
            let token = match fresh_token(&projected_dir.join(&t.path), lifetime) {
                Some(token) => token,
                None => sources
                    .token(
                        pod,
                        &sa,
                        t.audience.as_deref().filter(|a| !a.is_empty()),
                        lifetime,
                    )
                    .await?
                    .0
                    .into_bytes(),
            };
            files.insert(t.path.clone(), (token, mode));
        }
        if let Some(cm) = &source.config_map {
            let optional = cm.optional.unwrap_or(false);
            let what = format!("configmap {ns}/{}", cm.name);
            match sources.config_map(ns, &cm.name).await? {
                Some(obj) => files.extend(select(
                    config_map_data(obj),
                    &cm.items,
                    mode,
                    &what,
                    optional,
                )?),
                // The root CA ConfigMap is published by a controller; until it exists the
                // agent's own cluster CA (the same certificate) stands in.
                None if cm.name == "kube-root-ca.crt" && sources.cluster_ca().is_some() => {
                    let ca = sources.cluster_ca().unwrap_or_default();
                    let data = BTreeMap::from([("ca.crt".to_string(), ca.into_bytes())]);
                    files.extend(select(data, &cm.items, mode, &what, optional)?);
                }
                None if optional => {}
                None => return Err(AgentError::Volume(format!("{what} not found"))),
            }
        }
        if let Some(s) = &source.secret {
            let optional = s.optional.unwrap_or(false);
            let what = format!("secret {ns}/{}", s.name);
            match sources.secret(ns, &s.name).await? {
                Some(obj) => {
                    files.extend(select(secret_data(obj), &s.items, mode, &what, optional)?)
                }
                None if optional => {}
                None => return Err(AgentError::Volume(format!("{what} not found"))),
            }
        }
        if let Some(d) = &source.downward_api {
            files.extend(downward_files(
                d.items.as_deref().unwrap_or_default(),
                pod,
                node_name,
                mode,
            )?);
        }
    }
    Ok(Some(files))
}

/// Writes `files` into `dir` like the kubelet's atomic writer: a fresh timestamped directory,
/// a `..data` symlink swapped to it by rename, and one visible symlink per top-level entry.
/// Returns whether anything changed.
pub fn write_atomic(dir: &Path, files: &Files) -> std::io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    let data_link = dir.join("..data");
    if let Ok(current) = std::fs::read_link(&data_link) {
        let current_dir = dir.join(&current);
        if same_contents(&current_dir, files) {
            return Ok(false);
        }
    }
    let ts = format!(
        "..{}",
        jiff::Timestamp::now().strftime("%Y_%m_%d_%H_%M_%S.%f")
    );
    let new_dir = dir.join(&ts);
    std::fs::create_dir_all(&new_dir)?;
    for (path, (content, mode)) in files {
        let rel = Path::new(path);
        if rel.is_absolute() || rel.components().any(|c| c.as_os_str() == "..") {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("volume file path {path:?} must be relative without '..'"),
            ));
        }
        let target = new_dir.join(rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, content)?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(*mode & 0o7777))?;
    }
    std::fs::set_permissions(&new_dir, std::fs::Permissions::from_mode(0o755))?;
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&ts, &tmp_link)?;
    let old = std::fs::read_link(&data_link).ok();
    std::fs::rename(&tmp_link, &data_link)?;
    let top: std::collections::BTreeSet<String> = files
        .keys()
        .filter_map(|p| p.split('/').next().map(String::from))
        .collect();
    for name in &top {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(name), &link)?;
        }
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with("..") && !top.contains(&name) {
            std::fs::remove_file(entry.path())?;
        }
    }
    if let Some(old) = old {
        if old != Path::new(&ts) {
            let _ = std::fs::remove_dir_all(dir.join(old));
        }
    }
    Ok(true)
}

fn same_contents(dir: &Path, files: &Files) -> bool {
    let mut count = 0;
    fn walk(dir: &Path, n: &mut usize) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                walk(&e.path(), n);
            } else {
                *n += 1;
            }
        }
    }
    walk(dir, &mut count);
    count == files.len()
        && files.iter().all(|(p, (content, mode))| {
            let path = dir.join(p);
            std::fs::read(&path).ok().as_ref() == Some(content)
                && std::fs::metadata(&path)
                    .map(|m| m.permissions().mode() & 0o7777 == *mode & 0o7777)
                    .unwrap_or(false)
        })
}

/// Removes a pod's volume directories (not hostPath targets).
pub fn cleanup(root: &Path, uid: &str) {
    let dir = pod_dir(root, uid);
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), "could not remove the pod directory: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use k8s_openapi::ByteString;

    #[derive(Default)]
    struct Objects {
        tokens: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl ObjectSource for Objects {
        async fn config_map(&self, _ns: &str, name: &str) -> Result<Option<ConfigMap>, AgentError> {
            Ok((name == "cfg").then(|| ConfigMap {
                data: Some(BTreeMap::from([
                    ("a.txt".to_string(), "alpha".to_string()),
                    ("b.txt".to_string(), "beta".to_string()),
                ])),
                ..Default::default()
            }))
        }
        async fn secret(&self, _ns: &str, name: &str) -> Result<Option<Secret>, AgentError> {
            Ok((name == "sec").then(|| Secret {
                data: Some(BTreeMap::from([(
                    "password".to_string(),
                    ByteString(b"hunter2".to_vec()),
                )])),
                ..Default::default()
            }))
        }
        async fn token(
            &self,
            pod: &Pod,
            sa: &str,
            audience: Option<&str>,
            exp: i64,
        ) -> Result<(String, i64), AgentError> {
            self.tokens
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok((
                format!(
                    "token-{sa}-{}-{}",
                    audience.unwrap_or("api"),
                    pod.metadata.name.as_deref().unwrap()
                ),
                exp,
            ))
        }
        fn cluster_ca(&self) -> Option<String> {
            Some("CA".into())
        }
    }

    fn pod(volumes: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns1", "uid": "u1"},
            "spec": {"containers": [{"name": "c", "image": "i"}], "volumes": volumes}
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn content_volumes_are_written_atomically() {
        let root = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        let p = pod(serde_json::json!([
            {"name": "scratch", "emptyDir": {}},
            {"name": "host", "hostPath": {"path": host.path().join("x").to_str().unwrap(), "type": "DirectoryOrCreate"}},
            {"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "a.txt", "path": "dir/a", "mode": 0o600}]}},
            {"name": "sec", "secret": {"secretName": "sec", "defaultMode": 0o400}},
            {"name": "kube-api-access", "projected": {"sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}
            ]}}
        ]));
        let objects = Objects::default();
        let vols = prepare(root.path(), &p, "n1", &objects).await.unwrap();
        assert_eq!(vols.len(), 5);
        assert!(vols["scratch"].path.is_dir());
        assert!(host.path().join("x").is_dir());
        let cfg = &vols["cfg"].path;
        assert_eq!(std::fs::read_to_string(cfg.join("dir/a")).unwrap(), "alpha");
        assert!(std::fs::symlink_metadata(cfg.join("dir"))
            .unwrap()
            .is_symlink());
        let mode = std::fs::metadata(cfg.join("dir/a"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let sec = &vols["sec"].path;
        assert_eq!(std::fs::read(sec.join("password")).unwrap(), b"hunter2");
        assert!(vols["sec"].read_only);
        let sa = &vols["kube-api-access"].path;
        assert_eq!(
            std::fs::read_to_string(sa.join("token")).unwrap(),
            "token-default-api-p"
        );
        assert_eq!(std::fs::read_to_string(sa.join("ca.crt")).unwrap(), "CA");
        assert_eq!(
            std::fs::read_to_string(sa.join("namespace")).unwrap(),
            "ns1"
        );
    }

    #[test]
    fn atomic_writer_swaps_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("v");
        let mut files = Files::new();
        files.insert("a".into(), (b"1".to_vec(), 0o644));
        files.insert("b".into(), (b"2".to_vec(), 0o644));
        assert!(write_atomic(&d, &files).unwrap());
        let first = std::fs::read_link(d.join("..data")).unwrap();
        assert!(
            !write_atomic(&d, &files).unwrap(),
            "unchanged content is not rewritten"
        );
        files.remove("b");
        files.insert("a".into(), (b"3".to_vec(), 0o644));
        assert!(write_atomic(&d, &files).unwrap());
        assert_ne!(std::fs::read_link(d.join("..data")).unwrap(), first);
        assert!(!d.join(&first).exists(), "old generation removed");
        assert_eq!(std::fs::read_to_string(d.join("a")).unwrap(), "3");
        assert!(std::fs::symlink_metadata(d.join("b")).is_err());
        let mut bad = Files::new();
        bad.insert("../escape".into(), (vec![], 0o644));
        assert!(write_atomic(&d, &bad).is_err());
    }

    #[tokio::test]
    async fn missing_references_are_explained() {
        let root = tempfile::tempdir().unwrap();
        let p = pod(serde_json::json!([{"name": "cfg", "configMap": {"name": "nope"}}]));
        let e = prepare(root.path(), &p, "n1", &Objects::default())
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("configmap ns1/nope not found"),
            "{e}"
        );
        let p = pod(
            serde_json::json!([{"name": "cfg", "configMap": {"name": "nope", "optional": true}}]),
        );
        assert!(prepare(root.path(), &p, "n1", &Objects::default())
            .await
            .is_ok());
    }
}
