//! What `kinit apply` does through the API once the hosts converged: wait until the API server
//! answers `/readyz`, publish the `kube-public/cluster-info` ConfigMap that joining nodes
//! discover the cluster from (kubeadm's layout, signed for every signing bootstrap token), and
//! wait until the nodes report Ready.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kinit_auth::{BOOTSTRAP_TOKEN_NAMESPACE, BOOTSTRAP_TOKEN_SECRET_TYPE};
use kube::api::{ListParams, PostParams};
use kube::Api;
use serde::Serialize;

/// Namespace and name of the discovery ConfigMap.
pub const CLUSTER_INFO_NAMESPACE: &str = "kube-public";
/// See [`CLUSTER_INFO_NAMESPACE`].
pub const CLUSTER_INFO_NAME: &str = "cluster-info";
/// Data key of the kubeconfig in `cluster-info`.
pub const CLUSTER_INFO_KUBECONFIG_KEY: &str = "kubeconfig";
/// Prefix of the data keys holding detached JWS signatures, one per token ID.
pub const JWS_KEY_PREFIX: &str = "jws-kubeconfig-";

/// Errors while bootstrapping through the API.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The API server did not become ready in time.
    #[error("the API server at {server} was not ready after {waited:?} (last answer: {last}); check the control-plane host: `journalctl -u kinit-agent` and `crictl ps -a`")]
    ApiNotReady {
        /// The server URL.
        server: String,
        /// How long we waited.
        waited: Duration,
        /// The last error or body seen.
        last: String,
    },
    /// An API call failed.
    #[error("{what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: kube::Error,
    },
}

fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> BootstrapError {
    let what = what.into();
    move |source| BootstrapError::Api { what, source }
}

/// Polls `/readyz` until it answers `ok`, for at most `timeout`.
pub async fn wait_for_api(
    client: &kube::Client,
    server: &str,
    timeout: Duration,
) -> Result<Duration, BootstrapError> {
    let started = Instant::now();
    loop {
        let request = http::Request::get("/readyz")
            .body(Vec::new())
            .expect("a static request is valid");
        let last: String = match client.request_text(request).await {
            Ok(body) if body.trim() == "ok" => return Ok(started.elapsed()),
            Ok(body) => body.trim().chars().take(200).collect(),
            Err(e) => e.to_string(),
        };
        if started.elapsed() >= timeout {
            return Err(BootstrapError::ApiNotReady {
                server: server.to_string(),
                waited: timeout,
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The kubeconfig published in `cluster-info`: the server and the CA, no credentials.
pub fn cluster_info_kubeconfig(server: &str, ca_pem: &[u8]) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    // Same shape as kubeadm's: one unnamed cluster, nothing else.
    format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {ca}\n    server: {server}\n  name: \"\"\ncontexts: null\ncurrent-context: \"\"\nkind: Config\npreferences: {{}}\nusers: null\n"
    )
}

/// A detached JWS (RFC 7515, compact form without payload: `header..signature`) over
/// `payload`, HS256 keyed by the bootstrap token secret, as the bootstrap signer writes it.
///
/// Assembled by hand on ring's HMAC: JWT crates serialize JSON claims, while this signs raw
/// kubeconfig bytes and drops the payload, which none of them expose.
pub fn detached_jws(payload: &[u8], token_id: &str, token_secret: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(format!(r#"{{"alg":"HS256","kid":"{token_id}"}}"#));
    let body = b64.encode(payload);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token_secret.as_bytes());
    let signature = b64.encode(ring::hmac::sign(
        &key,
        format!("{header}.{body}").as_bytes(),
    ));
    format!("{header}..{signature}")
}

/// Checks a detached JWS made by [`detached_jws`] against `payload` and the token.
pub fn verify_detached_jws(jws: &str, payload: &[u8], token_id: &str, token_secret: &str) -> bool {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let Some((header, signature)) = jws.split_once("..") else {
        return false;
    };
    let Ok(signature) = b64.decode(signature) else {
        return false;
    };
    let Ok(header_json) = b64.decode(header) else {
        return false;
    };
    let Ok(fields) = serde_json::from_slice::<serde_json::Value>(&header_json) else {
        return false;
    };
    if fields["alg"] != "HS256" || fields["kid"] != token_id {
        return false;
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token_secret.as_bytes());
    let signed = format!("{header}.{}", b64.encode(payload));
    ring::hmac::verify(&key, signed.as_bytes(), &signature).is_ok()
}

/// A field of a bootstrap-token Secret, from `data` (as the API returns it) or `stringData`.
pub fn secret_field(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        .or_else(|| secret.string_data.as_ref()?.get(key).cloned())
}

/// Whether a bootstrap token is still valid at `at`: it has no expiration or a later one (an
/// unreadable expiration counts as expired).
pub fn token_valid_at(secret: &Secret, at: time::OffsetDateTime) -> bool {
    secret_field(secret, "expiration").is_none_or(|e| {
        time::OffsetDateTime::parse(&e, &time::format_description::well_known::Rfc3339)
            .is_ok_and(|expires| expires > at)
    })
}

/// Every bootstrap-token Secret (`kube-system`, type `bootstrap.kubernetes.io/token`).
pub async fn bootstrap_token_secrets(client: &kube::Client) -> Result<Vec<Secret>, BootstrapError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), BOOTSTRAP_TOKEN_NAMESPACE);
    Ok(secrets
        .list(&ListParams::default().fields(&format!("type={BOOTSTRAP_TOKEN_SECRET_TYPE}")))
        .await
        .map_err(api("cannot list bootstrap tokens in kube-system"))?
        .items)
}

/// Signing bootstrap tokens `(id, secret)` in kube-system that have not expired.
async fn signing_tokens(client: &kube::Client) -> Result<Vec<(String, String)>, BootstrapError> {
    let now = time::OffsetDateTime::now_utc();
    Ok(bootstrap_token_secrets(client)
        .await?
        .iter()
        .filter(|s| secret_field(s, "usage-bootstrap-signing").as_deref() == Some("true"))
        .filter(|s| token_valid_at(s, now))
        .filter_map(|s| {
            Some((
                secret_field(s, "token-id")?,
                secret_field(s, "token-secret")?,
            ))
        })
        .collect())
}

/// Creates or updates `kube-public/cluster-info` so it holds `kubeconfig` signed by every
/// valid signing token. Returns whether anything changed.
pub async fn publish_cluster_info(
    client: &kube::Client,
    kubeconfig: &str,
) -> Result<bool, BootstrapError> {
    let mut data = BTreeMap::from([(
        CLUSTER_INFO_KUBECONFIG_KEY.to_string(),
        kubeconfig.to_string(),
    )]);
    for (id, secret) in signing_tokens(client).await? {
        data.insert(
            format!("{JWS_KEY_PREFIX}{id}"),
            detached_jws(kubeconfig.as_bytes(), &id, &secret),
        );
    }
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), CLUSTER_INFO_NAMESPACE);
    let what = format!("cannot write ConfigMap {CLUSTER_INFO_NAMESPACE}/{CLUSTER_INFO_NAME}");
    match maps
        .get_opt(CLUSTER_INFO_NAME)
        .await
        .map_err(api(what.clone()))?
    {
        Some(existing) if existing.data.as_ref() == Some(&data) => Ok(false),
        Some(mut existing) => {
            existing.data = Some(data);
            maps.replace(CLUSTER_INFO_NAME, &PostParams::default(), &existing)
                .await
                .map_err(api(what))?;
            Ok(true)
        }
        None => {
            let map = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(CLUSTER_INFO_NAME.into()),
                    namespace: Some(CLUSTER_INFO_NAMESPACE.into()),
                    ..ObjectMeta::default()
                },
                data: Some(data),
                ..ConfigMap::default()
            };
            maps.create(&PostParams::default(), &map)
                .await
                .map_err(api(what))?;
            Ok(true)
        }
    }
}

/// Re-signs the existing `cluster-info` for the current signing tokens (after `kinit token
/// create` or `delete`), as kubeadm's bootstrap signer does. Returns whether it changed;
/// `Ok(false)` too when there is no cluster-info yet (`apply` publishes it).
pub async fn resign_cluster_info(client: &kube::Client) -> Result<bool, BootstrapError> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), CLUSTER_INFO_NAMESPACE);
    let existing = maps.get_opt(CLUSTER_INFO_NAME).await.map_err(api(format!(
        "cannot read ConfigMap {CLUSTER_INFO_NAMESPACE}/{CLUSTER_INFO_NAME}"
    )))?;
    let Some(kubeconfig) = existing
        .and_then(|m| m.data)
        .and_then(|mut d| d.remove(CLUSTER_INFO_KUBECONFIG_KEY))
    else {
        return Ok(false);
    };
    publish_cluster_info(client, &kubeconfig).await
}

/// Name of the Role (and RoleBinding) that lets joining nodes read the cluster settings.
pub const CLUSTER_CONFIG_READER: &str = "kinit:nodes-kinit-config";

/// Creates `object` in `api`, or replaces it when it differs in what `same` compares.
async fn ensure<K>(
    objects: &Api<K>,
    name: &str,
    mut object: K,
    same: impl Fn(&K, &K) -> bool,
) -> Result<bool, BootstrapError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + Serialize + std::fmt::Debug,
    K::DynamicType: Default,
{
    let what = format!("cannot write {} {name}", K::kind(&Default::default()));
    match objects.get_opt(name).await.map_err(api(what.clone()))? {
        Some(existing) if same(&existing, &object) => Ok(false),
        Some(existing) => {
            object.meta_mut().resource_version = existing.meta().resource_version.clone();
            objects
                .replace(name, &PostParams::default(), &object)
                .await
                .map_err(api(what))?;
            Ok(true)
        }
        None => {
            objects
                .create(&PostParams::default(), &object)
                .await
                .map_err(api(what))?;
            Ok(true)
        }
    }
}

/// Publishes the cluster settings joining workers render their files from
/// (`kube-system/kinit-config`) and lets bootstrap tokens and nodes read them, like kubeadm's
/// `kubeadm-config`. Returns whether anything changed.
pub async fn publish_cluster_config(
    client: &kube::Client,
    cluster: &kinit_inventory::ClusterConfig,
) -> Result<bool, BootstrapError> {
    use crate::join::{CLUSTER_CONFIG_KEY, CLUSTER_CONFIG_NAME};
    use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
    let yaml = serde_yaml::to_string(cluster).expect("cluster settings serialize");
    let meta = |name: &str| ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some("kube-system".into()),
        ..ObjectMeta::default()
    };
    let config = ConfigMap {
        metadata: meta(CLUSTER_CONFIG_NAME),
        data: Some(BTreeMap::from([(CLUSTER_CONFIG_KEY.to_string(), yaml)])),
        ..ConfigMap::default()
    };
    let role = Role {
        metadata: meta(CLUSTER_CONFIG_READER),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".into()]),
            resource_names: Some(vec![CLUSTER_CONFIG_NAME.into()]),
            verbs: vec!["get".into()],
            ..PolicyRule::default()
        }]),
    };
    let group = |name: &str| Subject {
        kind: "Group".into(),
        api_group: Some("rbac.authorization.k8s.io".into()),
        name: name.into(),
        namespace: None,
    };
    let binding = RoleBinding {
        metadata: meta(CLUSTER_CONFIG_READER),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: CLUSTER_CONFIG_READER.into(),
        },
        subjects: Some(vec![
            group(kinit_auth::GROUP_BOOTSTRAPPERS),
            group("system:nodes"),
        ]),
    };
    let mut changed = ensure(
        &Api::namespaced(client.clone(), "kube-system"),
        CLUSTER_CONFIG_NAME,
        config,
        |a: &ConfigMap, b| a.data == b.data,
    )
    .await?;
    changed |= ensure(
        &Api::namespaced(client.clone(), "kube-system"),
        CLUSTER_CONFIG_READER,
        role,
        |a: &Role, b| a.rules == b.rules,
    )
    .await?;
    changed |= ensure(
        &Api::namespaced(client.clone(), "kube-system"),
        CLUSTER_CONFIG_READER,
        binding,
        |a: &RoleBinding, b| a.subjects == b.subjects && a.role_ref == b.role_ref,
    )
    .await?;
    Ok(changed)
}

/// A node's state as `kinit apply` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeState {
    /// Registered and Ready.
    Ready,
    /// Registered, not Ready; the condition's message.
    NotReady(String),
    /// No Node object with that name.
    Missing,
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeState::Ready => f.write_str("Ready"),
            NodeState::NotReady(m) if m.is_empty() => f.write_str("NotReady"),
            NodeState::NotReady(m) => write!(f, "NotReady ({m})"),
            NodeState::Missing => f.write_str("not registered"),
        }
    }
}

/// A Node's state from its Ready condition.
pub fn node_state(node: &Node) -> NodeState {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    match ready {
        Some(c) if c.status == "True" => NodeState::Ready,
        Some(c) => NodeState::NotReady(c.message.clone().unwrap_or_default()),
        None => NodeState::NotReady(String::new()),
    }
}

/// The pod range (first of `spec.podCIDRs`) of every Node that has one, by name.
pub async fn node_pod_cidrs(
    client: &kube::Client,
) -> Result<BTreeMap<String, ipnet::IpNet>, BootstrapError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let list = nodes
        .list(&ListParams::default())
        .await
        .map_err(api("cannot list Nodes"))?;
    Ok(list
        .items
        .iter()
        .filter_map(|n| {
            let cidr = n.spec.as_ref()?.pod_cidr.as_deref()?.parse().ok()?;
            Some((n.metadata.name.clone()?, cidr))
        })
        .collect())
}

/// Waits until every node in `names` is Ready, for at most `timeout`; returns each node's
/// last seen state.
pub async fn wait_for_nodes(
    client: &kube::Client,
    names: &[String],
    timeout: Duration,
) -> Result<BTreeMap<String, NodeState>, BootstrapError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let started = Instant::now();
    loop {
        let list = nodes
            .list(&ListParams::default())
            .await
            .map_err(api("cannot list Nodes"))?;
        let states: BTreeMap<String, NodeState> = names
            .iter()
            .map(|name| {
                let state = list
                    .items
                    .iter()
                    .find(|n| n.metadata.name.as_deref() == Some(name))
                    .map(node_state)
                    .unwrap_or(NodeState::Missing);
                (name.clone(), state)
            })
            .collect();
        if states.values().all(|s| *s == NodeState::Ready) || started.elapsed() >= timeout {
            return Ok(states);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_info_kubeconfig_parses_and_has_no_credentials() {
        let text = cluster_info_kubeconfig("https://10.0.0.1:6443", b"-----BEGIN CERT");
        let value: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(
            value["clusters"][0]["cluster"]["server"],
            "https://10.0.0.1:6443"
        );
        assert!(value["users"].is_null());
        assert!(!text.contains("token"));
    }

    #[test]
    fn detached_jws_has_no_payload_and_verifies_only_with_the_right_secret() {
        let payload = b"apiVersion: v1\nkind: Config\n";
        let jws = detached_jws(payload, "abcdef", "0123456789abcdef");
        let parts: Vec<&str> = jws.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert!(parts[1].is_empty(), "payload is detached: {jws}");
        use base64::Engine;
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[0])
            .unwrap();
        let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
        assert_eq!(header["alg"], "HS256");
        assert_eq!(header["kid"], "abcdef");
        assert!(verify_detached_jws(
            &jws,
            payload,
            "abcdef",
            "0123456789abcdef"
        ));
        assert!(!verify_detached_jws(
            &jws,
            payload,
            "abcdef",
            "0123456789abcdeX"
        ));
        assert!(!verify_detached_jws(
            &jws,
            b"apiVersion: v1\nkind: Other\n",
            "abcdef",
            "0123456789abcdef"
        ));
    }

    #[test]
    fn node_state_reads_the_ready_condition() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1"},
            "status": {"conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": "False", "message": "network not ready"}
            ]}
        }))
        .unwrap();
        assert_eq!(
            node_state(&node),
            NodeState::NotReady("network not ready".into())
        );
        assert_eq!(
            node_state(&node).to_string(),
            "NotReady (network not ready)"
        );
    }
}
