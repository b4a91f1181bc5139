//! The add-ons phase: after the API answers, the objects of each enabled add-on
//! (`kinit-addons`) are created or brought up to date through the API, in order.
//!
//! The policy: an object is written only when its `kinit.io/addon-hash` annotation differs
//! from what kinit renders now, so a converged cluster sees no write and changes users make to
//! the add-on's objects (say, scaling `coredns`) stay — until a kinit build renders the object
//! differently (a new version or setting), which then brings it back to kinit's manifest with a
//! forced server-side apply (kubeadm does the same to CoreDNS on upgrade). The one object users
//! are meant to edit, the Corefile, is never overwritten once edited: it is replaced only while
//! its data is still what kinit wrote, otherwise left alone and reported as kept.

use kinit_addons::{data_hash, AddonObject, DnsSettings, HASH_ANNOTATION};
use kinit_inventory::Inventory;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde::Serialize;

/// Field manager of kinit's writes (server-side apply).
pub const FIELD_MANAGER: &str = "kinit";

/// What happened to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ObjectAction {
    /// It did not exist and was created.
    Created,
    /// It differed from kinit's manifest and was updated.
    Updated,
    /// It already matched.
    Unchanged,
    /// A user edited it; kinit kept the edit.
    KeptUserEdit,
}

/// One object's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectOutcome {
    /// `Kind namespace/name`.
    pub object: String,
    /// What was done.
    pub action: ObjectAction,
}

/// One add-on's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct AddonReport {
    /// Add-on name (`dns`).
    pub addon: String,
    /// Its objects, in the order they were applied.
    pub objects: Vec<ObjectOutcome>,
}

impl AddonReport {
    /// Whether anything was written.
    pub fn changed(&self) -> bool {
        self.objects
            .iter()
            .any(|o| matches!(o.action, ObjectAction::Created | ObjectAction::Updated))
    }
}

/// Errors of the add-ons phase.
#[derive(Debug, thiserror::Error)]
pub enum AddonsError {
    /// Rendering failed.
    #[error(transparent)]
    Render(#[from] kinit_addons::AddonError),
    /// An API call failed.
    #[error("add-on {addon}: cannot {verb} {object}: {source}")]
    Api {
        /// The add-on.
        addon: String,
        /// What was attempted.
        verb: &'static str,
        /// The object.
        object: String,
        /// The client error.
        #[source]
        source: Box<kube::Error>,
    },
}

/// The DNS add-on's settings for `inventory` (image and command as the host files use them;
/// `binary_sha256` is the kinit build installed).
pub fn dns_settings(
    inventory: &Inventory,
    images: &kinit_templates::ImageSettings,
    binary_sha256: &str,
) -> DnsSettings {
    let cluster = &inventory.spec.cluster;
    DnsSettings {
        cluster_domain: cluster.dns_domain.clone(),
        service_ip: inventory.cluster_dns_ip(),
        image: images.control_plane.clone(),
        command: images.control_plane_command.clone(),
        binary_sha256: binary_sha256.to_string(),
        upstreams: cluster
            .dns
            .upstreams
            .iter()
            .filter_map(|u| kinit_inventory::DnsConfig::parse_upstream(u))
            .map(|a| a.to_string())
            .collect(),
        replicas: 2,
    }
}

/// Every enabled add-on's objects, rendered.
pub fn rendered(
    inventory: &Inventory,
    images: &kinit_templates::ImageSettings,
    binary_sha256: &str,
) -> Result<Vec<(&'static str, Vec<AddonObject>)>, AddonsError> {
    let mut out = Vec::new();
    if inventory.spec.cluster.addons.dns {
        out.push((
            kinit_addons::Addon::Dns.name(),
            kinit_addons::dns(&dns_settings(inventory, images, binary_sha256))?,
        ));
    }
    Ok(out)
}

fn api_for(client: &kube::Client, object: &AddonObject) -> Api<DynamicObject> {
    let (group, version) = match object.api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", object.api_version.as_str()),
    };
    let resource =
        ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, object.kind.as_str()));
    match &object.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    }
}

/// What to do with `desired` given the live object (`None`: absent).
pub fn decide(desired: &AddonObject, live: Option<&serde_json::Value>) -> ObjectAction {
    let Some(live) = live else {
        return ObjectAction::Created;
    };
    let live_hash = live["metadata"]["annotations"][HASH_ANNOTATION].as_str();
    if live_hash == Some(desired.hash.as_str()) {
        return ObjectAction::Unchanged;
    }
    if desired.keep_user_edits && live_hash != Some(data_hash(live).as_str()) {
        return ObjectAction::KeptUserEdit;
    }
    ObjectAction::Updated
}

/// Creates or updates `objects` of `addon` in order. It stops at the first object that fails;
/// the report then holds what was done before it, and the error says which object failed.
pub async fn apply_objects(
    client: &kube::Client,
    addon: &str,
    objects: &[AddonObject],
) -> (AddonReport, Option<AddonsError>) {
    let mut report = AddonReport {
        addon: addon.to_string(),
        objects: Vec::new(),
    };
    for object in objects {
        match apply_object(client, addon, object).await {
            Ok(action) => report.objects.push(ObjectOutcome {
                object: object.describe(),
                action,
            }),
            Err(e) => return (report, Some(e)),
        }
    }
    (report, None)
}

async fn apply_object(
    client: &kube::Client,
    addon: &str,
    object: &AddonObject,
) -> Result<ObjectAction, AddonsError> {
    let api = api_for(client, object);
    let err = |verb: &'static str| {
        let described = object.describe();
        move |e: kube::Error| AddonsError::Api {
            addon: addon.to_string(),
            verb,
            object: described,
            source: Box::new(e),
        }
    };
    let live = api.get_opt(&object.name).await.map_err(err("read"))?;
    let live = live
        .map(|l| serde_json::to_value(l).unwrap_or_default())
        .filter(|v| !v.is_null());
    let action = decide(object, live.as_ref());
    match action {
        ObjectAction::Created => {
            let typed: DynamicObject =
                serde_json::from_value(object.object.clone()).map_err(|e| AddonsError::Api {
                    addon: addon.to_string(),
                    verb: "encode",
                    object: object.describe(),
                    source: Box::new(kube::Error::SerdeError(e)),
                })?;
            api.create(&PostParams::default(), &typed)
                .await
                .map_err(err("create"))?;
        }
        ObjectAction::Updated => {
            let params = PatchParams::apply(FIELD_MANAGER).force();
            api.patch(&object.name, &params, &Patch::Apply(&object.object))
                .await
                .map_err(err("update"))?;
        }
        ObjectAction::Unchanged | ObjectAction::KeptUserEdit => {}
    }
    Ok(action)
}

/// Deletes `objects` of an add-on, last first (the Deployment before the RBAC it runs with);
/// returns one line per object. Objects that are already gone count as removed; with
/// `dry_run` nothing is deleted and the lines say what would be.
pub async fn delete_objects(
    client: &kube::Client,
    objects: &[AddonObject],
    dry_run: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    for object in objects.iter().rev() {
        let described = object.describe();
        if dry_run {
            out.push(format!("would delete {described}"));
            continue;
        }
        let api = api_for(client, object);
        out.push(
            match api
                .delete(&object.name, &kube::api::DeleteParams::background())
                .await
            {
                Ok(_) => format!("deleted {described}"),
                Err(kube::Error::Api(s)) if s.code == 404 => format!("{described} was gone"),
                Err(e) => format!("kept {described}: {e}"),
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(keep: bool, hash: &str) -> AddonObject {
        AddonObject {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some("kube-system".into()),
            name: "coredns".into(),
            object: json!({}),
            hash: hash.into(),
            keep_user_edits: keep,
        }
    }

    #[test]
    fn decisions_follow_the_hash_and_user_edits() {
        let live_data = json!({"data": {"Corefile": "x"}});
        let written_by_kinit = data_hash(&live_data);
        let mut live = live_data.clone();
        live["metadata"] = json!({"annotations": {HASH_ANNOTATION: written_by_kinit}});

        assert_eq!(decide(&object(true, "new"), None), ObjectAction::Created);
        assert_eq!(
            decide(&object(true, &written_by_kinit), Some(&live)),
            ObjectAction::Unchanged
        );
        // Kinit's own older Corefile is replaced by the new render.
        assert_eq!(
            decide(&object(true, "new"), Some(&live)),
            ObjectAction::Updated
        );
        // A user's edit is kept.
        let mut edited = live.clone();
        edited["data"]["Corefile"] = json!("edited");
        assert_eq!(
            decide(&object(true, "new"), Some(&edited)),
            ObjectAction::KeptUserEdit
        );
        // Other objects follow kinit's manifest when it changed, edited or not.
        assert_eq!(
            decide(&object(false, "new"), Some(&edited)),
            ObjectAction::Updated
        );
    }
}
