//! Test fixtures shared by the unit tests: RSA keys, an in-memory object store and object
//! builders.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Pod, PodSpec, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rsa::pkcs1::{EncodeRsaPrivateKey, LineEnding};
use rsa::pkcs8::EncodePublicKey;
use rsa::RsaPrivateKey;

use crate::{AuthError, ObjectLookup};

/// Two RSA-2048 keys, generated once per test run (key generation is the slow part).
fn keys() -> &'static [(String, String); 2] {
    static KEYS: OnceLock<[(String, String); 2]> = OnceLock::new();
    KEYS.get_or_init(|| {
        let generate = || {
            let mut rng = rsa::rand_core::UnwrapErr(getrandom::SysRng);
            let key = RsaPrivateKey::new(&mut rng, 2048).expect("generate RSA key");
            let private = key
                .to_pkcs1_pem(LineEnding::LF)
                .expect("encode key")
                .to_string();
            let public = key
                .to_public_key()
                .to_public_key_pem(LineEnding::LF)
                .expect("encode public key");
            (private, public)
        };
        let other = std::thread::spawn(generate);
        let first = generate();
        [first, other.join().expect("key thread")]
    })
}

/// PKCS#1 PEM of test key `index` (0 or 1).
pub(crate) fn rsa_key_pem(index: usize) -> String {
    keys()[index].0.clone()
}

/// PKIX PEM of the public half of test key `index` (0 or 1).
pub(crate) fn rsa_public_pem(index: usize) -> String {
    keys()[index].1.clone()
}

/// Object metadata with a namespace, name and uid.
pub(crate) fn meta(namespace: &str, name: &str, uid: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(namespace.to_string()),
        name: Some(name.to_string()),
        uid: Some(uid.to_string()),
        ..ObjectMeta::default()
    }
}

/// A pod bound to `node` with the given spec (node name filled in).
pub(crate) fn pod_on(namespace: &str, name: &str, uid: &str, node: &str, spec: PodSpec) -> Pod {
    Pod {
        metadata: meta(namespace, name, uid),
        spec: Some(PodSpec {
            node_name: Some(node.to_string()),
            ..spec
        }),
        status: None,
    }
}

/// An in-memory [`ObjectLookup`].
#[derive(Default)]
pub(crate) struct MemoryObjects {
    secrets: Mutex<BTreeMap<(String, String), Secret>>,
    service_accounts: Mutex<BTreeMap<(String, String), ServiceAccount>>,
    pods: Mutex<BTreeMap<(String, String), Pod>>,
    pub(crate) fail: Mutex<bool>,
}

fn key_of(meta: &ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

impl MemoryObjects {
    pub(crate) fn put_secret(&self, secret: Secret) {
        self.secrets
            .lock()
            .unwrap()
            .insert(key_of(&secret.metadata), secret);
    }
    pub(crate) fn put_service_account(&self, sa: ServiceAccount) {
        self.service_accounts
            .lock()
            .unwrap()
            .insert(key_of(&sa.metadata), sa);
    }
    pub(crate) fn put_pod(&self, pod: Pod) {
        self.pods.lock().unwrap().insert(key_of(&pod.metadata), pod);
    }
    pub(crate) fn delete_service_account(&self, namespace: &str, name: &str) {
        self.service_accounts
            .lock()
            .unwrap()
            .remove(&(namespace.to_string(), name.to_string()));
    }
    pub(crate) fn delete_pod(&self, namespace: &str, name: &str) {
        self.pods
            .lock()
            .unwrap()
            .remove(&(namespace.to_string(), name.to_string()));
    }
    fn check(&self) -> Result<(), AuthError> {
        if *self.fail.lock().unwrap() {
            return Err(AuthError::Lookup("store unavailable".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectLookup for MemoryObjects {
    async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>, AuthError> {
        self.check()?;
        Ok(self
            .secrets
            .lock()
            .unwrap()
            .get(&(namespace.into(), name.into()))
            .cloned())
    }
    async fn service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ServiceAccount>, AuthError> {
        self.check()?;
        Ok(self
            .service_accounts
            .lock()
            .unwrap()
            .get(&(namespace.into(), name.into()))
            .cloned())
    }
    async fn pod(&self, namespace: &str, name: &str) -> Result<Option<Pod>, AuthError> {
        self.check()?;
        Ok(self
            .pods
            .lock()
            .unwrap()
            .get(&(namespace.into(), name.into()))
            .cloned())
    }
    async fn pods_on_node(&self, node: &str) -> Result<Vec<Pod>, AuthError> {
        self.check()?;
        Ok(self
            .pods
            .lock()
            .unwrap()
            .values()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
            .cloned()
            .collect())
    }
}
