//! Static pods: manifests in the pod manifest directory run without the API server (the API
//! server itself is one), found by a file watch (notify) plus a periodic rescan. Once the API
//! is reachable each gets a mirror pod (annotation `kubernetes.io/config.mirror`, owned by the
//! Node) that shows its status; a changed manifest gets a new uid, so the pod restarts.

use kinit_rules::errors::{is_conflict, is_not_found};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use notify::Watcher;
use sha2::{Digest, Sha256};

use crate::manager::{PodManager, PodSource};
use crate::AgentError;

/// Annotation marking mirror pods; its value is the static pod's hash.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// Annotation with the static pod's content hash.
pub const HASH_ANNOTATION: &str = "kubernetes.io/config.hash";
/// Annotation with the pod's source (`file`).
pub const SOURCE_ANNOTATION: &str = "kubernetes.io/config.source";

/// Whether `pod` is a mirror pod.
pub fn is_mirror(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION))
}

/// Parses one manifest into the static pod the agent runs.
pub fn parse_manifest(text: &str, node_name: &str) -> Result<Pod, String> {
    let mut pod: Pod = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    let name = pod
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or("metadata.name is missing")?;
    if pod.spec.as_ref().is_none_or(|s| s.containers.is_empty()) {
        return Err("spec.containers is empty".into());
    }
    let mut hasher = Sha256::new();
    hasher.update(node_name.as_bytes());
    hasher.update([0]);
    hasher.update(text.as_bytes());
    let hash = hex::encode(&hasher.finalize()[..16]);
    pod.metadata.name = Some(format!("{name}-{node_name}"));
    pod.metadata.namespace = Some(
        pod.metadata
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into()),
    );
    pod.metadata.uid = Some(hash.clone());
    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(HASH_ANNOTATION.into(), hash);
    annotations.insert(SOURCE_ANNOTATION.into(), "file".into());
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.node_name = Some(node_name.to_string());
    pod.status = None;
    Ok(pod)
}

/// Reads every manifest (`*.yaml`, `*.yml`, `*.json`, not hidden) in `dir`. Unreadable or
/// invalid files are logged and skipped.
pub fn load_dir(dir: &Path, node_name: &str) -> Vec<Pod> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or(".");
            !name.starts_with('.')
                && [".yaml", ".yml", ".json"].iter().any(|s| name.ends_with(s))
                && p.is_file()
        })
        .collect();
    files.sort();
    let mut pods: Vec<Pod> = Vec::new();
    for f in files {
        match std::fs::read_to_string(&f)
            .map_err(|e| e.to_string())
            .and_then(|t| parse_manifest(&t, node_name))
        {
            Ok(p) => {
                if pods.iter().any(|q| {
                    q.metadata.name == p.metadata.name
                        && q.metadata.namespace == p.metadata.namespace
                }) {
                    tracing::warn!(file = %f.display(), "skipping a static pod whose name is already used by another manifest");
                } else {
                    pods.push(p);
                }
            }
            Err(e) => {
                tracing::warn!(file = %f.display(), "skipping an invalid static pod manifest: {e}")
            }
        }
    }
    pods
}

/// Watches `dir` (notify, plus a rescan every `rescan`) and keeps the manager's static pods in
/// line with it. `on_change` is signalled after every change (mirror pods follow).
pub async fn watch_dir(
    dir: PathBuf,
    node_name: String,
    manager: PodManager,
    rescan: Duration,
    on_change: std::sync::Arc<tokio::sync::Notify>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher: Option<notify::RecommendedWatcher> = None;
    let mut last: Option<Vec<String>> = None;
    loop {
        if watcher.is_none() && dir.is_dir() {
            let tx = tx.clone();
            match notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
                let _ = tx.send(());
            }) {
                Ok(mut w) => match w.watch(&dir, notify::RecursiveMode::NonRecursive) {
                    Ok(()) => watcher = Some(w),
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), "cannot watch the manifest directory: {e}")
                    }
                },
                Err(e) => tracing::warn!("cannot create a file watcher: {e}"),
            }
        }
        let pods = load_dir(&dir, &node_name);
        let uids: Vec<String> = pods
            .iter()
            .map(|p| p.metadata.uid.clone().unwrap_or_default())
            .collect();
        if last.as_ref() != Some(&uids) {
            tracing::info!(count = pods.len(), dir = %dir.display(), "static pods changed");
            manager.set_all(PodSource::Static, pods);
            last = Some(uids);
            on_change.notify_one();
        }
        tokio::select! {
            _ = rx.recv() => {
                // Editors write in several steps: let the burst settle.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while rx.try_recv().is_ok() {}
            }
            _ = tokio::time::sleep(rescan) => {}
        }
    }
}

/// The mirror pod of a static pod.
pub fn mirror_of(pod: &Pod, node_name: &str, node_uid: &str) -> Pod {
    let hash = pod.metadata.uid.clone().unwrap_or_default();
    let mut annotations = pod.metadata.annotations.clone().unwrap_or_default();
    annotations.insert(MIRROR_ANNOTATION.into(), hash);
    Pod {
        metadata: ObjectMeta {
            name: pod.metadata.name.clone(),
            namespace: pod.metadata.namespace.clone(),
            labels: pod.metadata.labels.clone(),
            annotations: Some(annotations),
            owner_references: (!node_uid.is_empty()).then(|| {
                vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: node_name.to_string(),
                    uid: node_uid.to_string(),
                    controller: Some(true),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        },
        spec: pod.spec.clone(),
        status: None,
    }
}

/// Creates, replaces and deletes mirror pods so that each static pod has exactly one current
/// mirror. Returns how many were created.
pub async fn sync_mirrors(
    client: &kube::Client,
    node_name: &str,
    node_uid: &str,
    manager: &PodManager,
) -> Result<usize, AgentError> {
    let statics: Vec<Pod> = manager
        .pods()
        .into_iter()
        .filter(|(_, s)| *s == PodSource::Static)
        .map(|(p, _)| p)
        .collect();
    let all: Api<Pod> = Api::all(client.clone());
    let existing = all
        .list(&ListParams::default().fields(&format!("spec.nodeName={node_name}")))
        .await
        .map_err(|e| AgentError::api("listing the node's pods for mirror pods", e))?;
    let mut by_key: HashMap<(String, String), Pod> = HashMap::new();
    for p in existing.items {
        let key = crate::spec::pod_key(&p);
        by_key.insert((key.0, key.1), p);
    }
    let mut created = 0;
    let mut wanted = std::collections::HashSet::new();
    for s in &statics {
        let (ns, name, uid) = crate::spec::pod_key(s);
        wanted.insert((ns.clone(), name.clone()));
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        if let Some(current) = by_key.get(&(ns.clone(), name.clone())) {
            if !is_mirror(current) {
                tracing::warn!(pod = %format!("{ns}/{name}"), "a regular pod has the static pod's name; not creating its mirror");
                continue;
            }
            let hash = current
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(MIRROR_ANNOTATION))
                .cloned()
                .unwrap_or_default();
            if hash == uid && current.metadata.deletion_timestamp.is_none() {
                continue;
            }
            delete_now(&api, &name).await?;
        }
        let mirror = mirror_of(s, node_name, node_uid);
        match api.create(&PostParams::default(), &mirror).await {
            Ok(_) => {
                created += 1;
                tracing::info!(pod = %format!("{ns}/{name}"), "created the mirror pod");
                if let Some(status) = manager.status(&uid) {
                    let patch = serde_json::json!({ "status": status });
                    if let Err(e) = api
                        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                    {
                        tracing::warn!(pod = %name, "reporting the mirror pod's status failed: {e}");
                    }
                }
            }
            Err(e) if is_conflict(&e) => {}
            Err(e) => {
                return Err(AgentError::api(
                    &format!("creating mirror pod {ns}/{name}"),
                    e,
                ))
            }
        }
    }
    for ((ns, name), p) in &by_key {
        if is_mirror(p) && !wanted.contains(&(ns.clone(), name.clone())) {
            let api: Api<Pod> = Api::namespaced(client.clone(), ns);
            delete_now(&api, name).await?;
            tracing::info!(pod = %format!("{ns}/{name}"), "deleted a mirror pod without static pod");
        }
    }
    Ok(created)
}

async fn delete_now(api: &Api<Pod>, name: &str) -> Result<(), AgentError> {
    match api
        .delete(
            name,
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(AgentError::api(&format!("deleting mirror pod {name}"), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: kube-apiserver\n  namespace: kube-system\nspec:\n  hostNetwork: true\n  containers:\n  - name: kube-apiserver\n    image: kinit.local/kinit:v1\n";

    #[test]
    fn manifests_become_static_pods() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kube-apiserver.yaml"), MANIFEST).unwrap();
        std::fs::write(dir.path().join(".hidden.yaml"), MANIFEST).unwrap();
        std::fs::write(dir.path().join("broken.yaml"), "kind: [").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        let pods = load_dir(dir.path(), "cp1");
        assert_eq!(pods.len(), 1);
        let p = &pods[0];
        assert_eq!(p.metadata.name.as_deref(), Some("kube-apiserver-cp1"));
        assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some("cp1"));
        let uid = p.metadata.uid.clone().unwrap();
        assert_eq!(uid.len(), 32);
        let changed = MANIFEST.replace("kinit:v1", "kinit:v2");
        let p2 = parse_manifest(&changed, "cp1").unwrap();
        assert_ne!(
            p2.metadata.uid.unwrap(),
            uid,
            "a changed manifest is a new pod"
        );
        assert_ne!(
            parse_manifest(MANIFEST, "cp2")
                .unwrap()
                .metadata
                .uid
                .unwrap(),
            uid
        );
        let m = mirror_of(p, "cp1", "node-uid");
        assert!(is_mirror(&m));
        assert_eq!(m.metadata.owner_references.unwrap()[0].kind, "Node");
        assert!(m.metadata.uid.is_none());
    }
}
