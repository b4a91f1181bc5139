//! Controller references (`metadata.ownerReferences` with `controller: true`): finding an
//! object's controller and making the reference a controller puts on what it creates.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

/// The owner reference with `controller: true`, if any (`metav1.GetControllerOf`).
pub fn controller_ref(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// True when `meta` is controlled by the object with `uid`.
pub fn is_controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    controller_ref(meta).is_some_and(|r| r.uid == uid)
}

/// A controller owner reference to `owner`, with `controller` and `blockOwnerDeletion` true
/// (`metav1.NewControllerRef`). Name and uid are empty when the owner has none (an object not
/// read from the API server).
pub fn controller_reference_to<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::ReplicaSet;

    #[test]
    fn controller_reference_round_trip() {
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some("web-1".into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let r = controller_reference_to(&rs);
        assert_eq!(
            (
                r.api_version.as_str(),
                r.kind.as_str(),
                r.name.as_str(),
                r.uid.as_str()
            ),
            ("apps/v1", "ReplicaSet", "web-1", "u1")
        );
        assert_eq!(
            (r.controller, r.block_owner_deletion),
            (Some(true), Some(true))
        );
        let plain = OwnerReference {
            uid: "u0".into(),
            ..Default::default()
        };
        let meta = ObjectMeta {
            owner_references: Some(vec![plain, r.clone()]),
            ..Default::default()
        };
        assert_eq!(controller_ref(&meta), Some(&r));
        assert!(is_controlled_by(&meta, "u1"));
        assert!(
            !is_controlled_by(&meta, "u0"),
            "a non-controller owner does not control"
        );
        assert!(controller_ref(&ObjectMeta::default()).is_none());
    }
}
