//! `kinit join` on a new worker, kubeadm-style: discovery with a bootstrap token and the CA's
//! public-key pin, TLS bootstrap of the node's client and serving certificates through CSRs the
//! controller manager approves and signs, then the same host phases `apply` runs, on this
//! machine ([`join_this_machine`] is the whole workflow; `kinit join` parses and prints).
//!
//! Discovery never sends the token to an unverified server: the first TLS handshake only
//! collects the server's chain (the API server sends its issuing CA), the CA is accepted when
//! its SubjectPublicKeyInfo hash equals a `--discovery-token-ca-cert-hash` and it signed the
//! server certificate; every request after that verifies the server against that CA.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kinit_inventory::{ClusterConfig, Inventory, InventorySpec, Metadata, Role};
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::bootstrap::{
    verify_detached_jws, CLUSTER_INFO_KUBECONFIG_KEY, CLUSTER_INFO_NAME, CLUSTER_INFO_NAMESPACE,
    JWS_KEY_PREFIX,
};
use anyhow::{bail, Context};
use kinit_executor::LocalHost;

use crate::bootstrap::NodeState;
use crate::cluster::{self, ClusterDerived};
use crate::converge::{converge_selected, run_id, ConvergeOptions};
use crate::desired::{rendered_files, DesiredFile, AGENT_SERVING_CERT, AGENT_SERVING_KEY};
use crate::phases::HostTarget;

/// ConfigMap (in kube-system) with the cluster settings joining nodes render their files from.
pub const CLUSTER_CONFIG_NAME: &str = "kinit-config";
/// Its data key: the inventory's `spec.cluster` as YAML.
pub const CLUSTER_CONFIG_KEY: &str = "cluster.yaml";

const SIGNER_KUBELET_CLIENT: &str = "kubernetes.io/kube-apiserver-client-kubelet";
const SIGNER_KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";

/// A step of the join that failed, and why.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {reason}")]
pub struct JoinError {
    /// What was being done.
    pub step: &'static str,
    /// Why it failed, with what to do where possible.
    pub reason: String,
}

fn fail(step: &'static str) -> impl Fn(String) -> JoinError {
    move |reason| JoinError { step, reason }
}

/// Records the chain the server presents; checks only the handshake signature. The chain is
/// judged afterwards against the pin, and no credential is sent on this connection.
#[derive(Debug)]
struct RecordChain {
    chain: Mutex<Vec<CertificateDer<'static>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for RecordChain {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = self.chain.lock().expect("not poisoned");
        chain.push(end_entity.clone().into_owned());
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Normalizes a pin to `sha256:<lowercase hex>`.
fn normalize_pin(pin: &str) -> String {
    let hex = pin.trim().strip_prefix("sha256:").unwrap_or(pin.trim());
    format!("sha256:{}", hex.to_ascii_lowercase())
}

/// The CA in `chain` (after the leaf) whose key hash is one of `pins` and that signed the
/// leaf, as PEM.
pub fn pinned_ca(chain: &[CertificateDer<'_>], pins: &[String]) -> Result<String, String> {
    let pins: Vec<String> = pins.iter().map(|p| normalize_pin(p)).collect();
    let Some((leaf, rest)) = chain.split_first() else {
        return Err("the server presented no certificate".into());
    };
    let (_, leaf) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("the server certificate does not parse: {e}"))?;
    let mut seen = Vec::new();
    for ca in rest {
        let pem = kinit_pki::der_to_pem(ca);
        let Ok(hash) = kinit_pki::ca_cert_hash(pem.as_bytes()) else {
            continue;
        };
        if !pins.contains(&hash) {
            seen.push(hash);
            continue;
        }
        let (_, parsed) = x509_parser::parse_x509_certificate(ca)
            .map_err(|e| format!("the pinned CA does not parse: {e}"))?;
        if leaf.verify_signature(Some(parsed.public_key())).is_err() {
            return Err("the server certificate is not signed by the pinned CA".into());
        }
        return Ok(pem);
    }
    Err(if seen.is_empty() {
        "the server sent no CA certificate with its own; is it a kinit API server?".into()
    } else {
        format!(
            "the server's CA ({}) matches no --discovery-token-ca-cert-hash; check the hash (`kinit token create --print-join-command` prints it)",
            seen.join(", ")
        )
    })
}

/// Connects to `endpoint` (`host:port`), collects the chain and returns the pinned CA (PEM).
pub async fn fetch_pinned_ca(endpoint: &str, pins: &[String]) -> Result<String, JoinError> {
    let step = fail("discovery");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let recorder = Arc::new(RecordChain {
        chain: Mutex::new(Vec::new()),
        provider: provider.clone(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| step(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(endpoint),
    )
    .await
    .map_err(|_| step(format!("connecting to {endpoint} timed out")))?
    .map_err(|e| step(format!("cannot connect to {endpoint}: {e}")))?;
    let server_name = ServerName::try_from("kubernetes").expect("a valid DNS name");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(server_name, tcp))
        .await
        .map_err(|_| step(format!("TLS handshake with {endpoint} timed out")))?
        .map_err(|e| step(format!("TLS handshake with {endpoint}: {e}")))?;
    drop(tls);
    let chain = recorder.chain.lock().expect("not poisoned").clone();
    pinned_ca(&chain, pins).map_err(step)
}

/// A client for `server` trusting `ca_pem`, authenticated by `user`'s YAML (token or
/// certificate fields of a kubeconfig user entry).
async fn client(server: &str, ca_pem: &str, user_yaml: &str) -> Result<kube::Client, String> {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: u\n  user:\n{user_yaml}contexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n"
    );
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&yaml).map_err(|e| e.to_string())?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| e.to_string())?;
    kube::Client::try_from(config).map_err(|e| e.to_string())
}

/// What discovery found: the cluster's API server URL, CA and settings.
#[derive(Debug, Clone)]
pub struct Discovered {
    /// The control-plane endpoint from `cluster-info`.
    pub server: String,
    /// The cluster CA (PEM).
    pub ca_pem: String,
    /// The cluster settings from `kube-system/kinit-config`.
    pub cluster: ClusterConfig,
}

/// Discovery: pinned CA, then `cluster-info` (checked against the token's JWS signature) and
/// the cluster settings, read with the token over verified TLS.
pub async fn discover(
    endpoint: &str,
    token: &str,
    pins: &[String],
) -> Result<(Discovered, kube::Client), JoinError> {
    let step = fail("discovery");
    let (id, secret) = kinit_auth::parse_bootstrap_token(token)
        .ok_or_else(|| step("the token is not of the form [a-z0-9]{6}.[a-z0-9]{16}".into()))?;
    let ca_pem = fetch_pinned_ca(endpoint, pins).await?;
    let bootstrap = client(
        &format!("https://{endpoint}"),
        &ca_pem,
        &format!("    token: {token}\n"),
    )
    .await
    .map_err(&step)?;
    let info = Api::<ConfigMap>::namespaced(bootstrap.clone(), CLUSTER_INFO_NAMESPACE)
        .get(CLUSTER_INFO_NAME)
        .await
        .map_err(|e| step(format!("cannot read {CLUSTER_INFO_NAMESPACE}/{CLUSTER_INFO_NAME} with the token: {e}; is the token valid (`kinit token list`)?")))?;
    let data = info.data.unwrap_or_default();
    let kubeconfig = data
        .get(CLUSTER_INFO_KUBECONFIG_KEY)
        .ok_or_else(|| step("cluster-info has no kubeconfig".into()))?;
    let jws = data.get(&format!("{JWS_KEY_PREFIX}{id}")).ok_or_else(|| {
        step(format!(
            "cluster-info is not signed for token {id}; create tokens with `kinit token create` (signing usage)"
        ))
    })?;
    if !verify_detached_jws(jws, kubeconfig.as_bytes(), id, secret) {
        return Err(step(format!(
            "the cluster-info signature for token {id} does not verify"
        )));
    }
    // Read as plain YAML: kubeadm-shaped cluster-info has `contexts: null` and `users: null`.
    let parsed: serde_yaml::Value = serde_yaml::from_str(kubeconfig)
        .map_err(|e| step(format!("cluster-info's kubeconfig does not parse: {e}")))?;
    let cluster = &parsed["clusters"][0]["cluster"];
    let server = cluster["server"]
        .as_str()
        .ok_or_else(|| step("cluster-info names no server".into()))?
        .to_string();
    let published_ca = cluster["certificate-authority-data"]
        .as_str()
        .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
        .ok_or_else(|| step("cluster-info carries no CA".into()))?;
    if kinit_pki::ca_cert_hash(&published_ca).ok()
        != kinit_pki::ca_cert_hash(ca_pem.as_bytes()).ok()
    {
        return Err(step(
            "cluster-info names another CA than the pinned one".into(),
        ));
    }
    let settings = Api::<ConfigMap>::namespaced(bootstrap.clone(), "kube-system")
        .get(CLUSTER_CONFIG_NAME)
        .await
        .map_err(|e| {
            step(format!(
                "cannot read kube-system/{CLUSTER_CONFIG_NAME}: {e}; run `kinit apply` for the cluster first"
            ))
        })?;
    let yaml = settings
        .data
        .unwrap_or_default()
        .remove(CLUSTER_CONFIG_KEY)
        .ok_or_else(|| step(format!("{CLUSTER_CONFIG_NAME} has no {CLUSTER_CONFIG_KEY}")))?;
    let cluster_config: ClusterConfig = serde_yaml::from_str(&yaml)
        .map_err(|e| step(format!("{CLUSTER_CONFIG_NAME} does not parse: {e}")))?;
    Ok((
        Discovered {
            server,
            ca_pem,
            cluster: cluster_config,
        },
        bootstrap,
    ))
}

/// A new key and a CSR for `system:node:<name>` in `system:nodes` with `sans` (PEMs).
fn node_request(node: &str, sans: Vec<String>) -> Result<(String, String), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::new(sans).map_err(|e| e.to_string())?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    dn.push(rcgen::DnType::OrganizationName, "system:nodes");
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key).map_err(|e| e.to_string())?;
    Ok((key.serialize_pem(), csr.pem().map_err(|e| e.to_string())?))
}

/// Creates a CSR for `signer` and waits until it is signed; returns the certificate PEM.
async fn certificate(
    client: &kube::Client,
    node: &str,
    request_pem: &str,
    signer: &str,
    usages: &[&str],
    timeout: Duration,
) -> Result<String, JoinError> {
    let step = fail("certificate");
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            generate_name: Some(format!("node-csr-{node}-")),
            ..ObjectMeta::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(request_pem.as_bytes().to_vec()),
            signer_name: signer.to_string(),
            usages: Some(usages.iter().map(|u| u.to_string()).collect()),
            ..CertificateSigningRequestSpec::default()
        },
        status: None,
    };
    let created = api
        .create(&PostParams::default(), &csr)
        .await
        .map_err(|e| step(format!("cannot create a {signer} CSR: {e}")))?;
    let name = created.metadata.name.unwrap_or_default();
    let started = Instant::now();
    loop {
        let current = api
            .get(&name)
            .await
            .map_err(|e| step(format!("cannot read CSR {name}: {e}")))?;
        if let Some(status) = &current.status {
            if let Some(cert) = status.certificate.as_ref().filter(|c| !c.0.is_empty()) {
                return Ok(String::from_utf8_lossy(&cert.0).into_owned());
            }
            if let Some(c) = status
                .conditions
                .iter()
                .flatten()
                .find(|c| (c.type_ == "Denied" || c.type_ == "Failed") && c.status == "True")
            {
                return Err(step(format!(
                    "CSR {name} was {}: {}",
                    c.type_.to_lowercase(),
                    c.message.clone().unwrap_or_default()
                )));
            }
        }
        if started.elapsed() > timeout {
            return Err(step(format!(
                "CSR {name} ({signer}) was not signed within {timeout:?}; is the controller manager running (`kubectl get csr`)?"
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Certificates a previous join left on this machine that are still good: reused so that
/// running the same join again changes nothing.
#[derive(Debug, Default)]
pub struct Existing {
    /// Client certificate and key (PEM) from `/etc/kubernetes/kubelet.conf`.
    pub client: Option<(String, String)>,
    /// Serving certificate and key (PEM).
    pub serving: Option<(String, String)>,
}

/// Whether `cert_pem` was issued by `ca_pem`, is valid for 30 more days, and names `subject_cn`
/// and (when given) the IP `ip` among its SANs.
fn still_good(cert_pem: &str, ca_pem: &str, subject_cn: &str, ip: Option<IpAddr>) -> bool {
    kinit_pki::certificate_still_good(
        cert_pem.as_bytes(),
        Some(ca_pem.as_bytes()),
        Some(subject_cn),
        ip,
    )
}

/// Reads what a previous join of `node` left (kubelet.conf, serving certificate) and keeps
/// what is still good for this cluster's CA and `ip`.
pub fn existing_credentials(ca_pem: &str, node: &str, ip: IpAddr) -> Existing {
    let cn = format!("system:node:{node}");
    let client = std::fs::read("/etc/kubernetes/kubelet.conf")
        .ok()
        .and_then(|yaml| {
            let kc = kinit_pki::Kubeconfig::from_yaml(&yaml, std::path::Path::new("kubelet.conf"))
                .ok()?;
            let user = &kc.users.first()?.user;
            let decode = |d: &Option<String>| -> Option<String> {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(d.as_deref()?)
                    .ok()?;
                String::from_utf8(bytes).ok()
            };
            Some((
                decode(&user.client_certificate_data)?,
                decode(&user.client_key_data)?,
            ))
        })
        .filter(|(cert, _)| still_good(cert, ca_pem, &cn, None));
    let serving = match (
        std::fs::read_to_string(AGENT_SERVING_CERT),
        std::fs::read_to_string(AGENT_SERVING_KEY),
    ) {
        (Ok(cert), Ok(key)) if still_good(&cert, ca_pem, &cn, Some(ip)) => Some((cert, key)),
        _ => None,
    };
    Existing { client, serving }
}

/// A node name must be a lowercase RFC 1123 subdomain.
pub fn validate_node_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name
            .split('.')
            .all(|label| !label.is_empty() && !label.starts_with('-') && !label.ends_with('-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "node name {name:?} is not a lowercase DNS name (a-z, 0-9, '-', '.'); pass --node-name"
        ))
    }
}

/// Refuses to take over a Node of the same name that is Ready at another address (a cloned
/// machine, a typo, a control plane's name) unless `force`.
pub async fn check_name_is_free(
    bootstrap: &kube::Client,
    node: &str,
    ip: IpAddr,
    force: bool,
) -> Result<(), JoinError> {
    let step = fail("node");
    let Some(existing) = Api::<Node>::all(bootstrap.clone())
        .get_opt(node)
        .await
        .map_err(|e| step(format!("cannot read Node {node}: {e}")))?
    else {
        return Ok(());
    };
    let ready = crate::bootstrap::node_state(&existing) == crate::bootstrap::NodeState::Ready;
    let addresses: Vec<String> = existing
        .status
        .and_then(|s| s.addresses)
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a.type_ == "InternalIP")
        .map(|a| a.address)
        .collect();
    if ready && !addresses.is_empty() && !addresses.contains(&ip.to_string()) && !force {
        return Err(step(format!(
            "a Ready Node named {node} already exists at {}; pick another --node-name, or reset that node first (--force takes the name over)",
            addresses.join(", ")
        )));
    }
    Ok(())
}

/// The node's credentials and place in the cluster after TLS bootstrap.
pub struct Bootstrapped {
    /// `/etc/kubernetes/kubelet.conf` contents.
    pub kubeconfig: String,
    /// A client acting as the node.
    pub client: kube::Client,
    /// The pod CIDR the node IPAM controller gave the Node.
    pub pod_cidr: ipnet::IpNet,
    /// Serving certificate and key (PEM) for the agent's HTTPS server.
    pub serving: (String, String),
}

/// TLS bootstrap: client certificate through the token, the Node registered with its address,
/// its pod CIDR awaited, and a serving certificate through the node identity.
pub async fn bootstrap_node(
    bootstrap: &kube::Client,
    discovered: &Discovered,
    node: &str,
    ip: IpAddr,
    timeout: Duration,
    existing: &Existing,
) -> Result<Bootstrapped, JoinError> {
    let (cert, key) = match &existing.client {
        Some(pair) => pair.clone(),
        None => {
            let (key, request) = node_request(node, Vec::new()).map_err(fail("certificate"))?;
            let cert = certificate(
                bootstrap,
                node,
                &request,
                SIGNER_KUBELET_CLIENT,
                &["digital signature", "client auth"],
                timeout,
            )
            .await?;
            (cert, key)
        }
    };
    let kubeconfig = kinit_pki::Kubeconfig::with_client_certificate(
        &discovered.cluster.cluster_name,
        &discovered.server,
        &discovered.ca_pem,
        &format!("system:node:{node}"),
        &cert,
        &key,
    )
    .to_yaml()
    .map_err(|e| fail("certificate")(e.to_string()))?;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let client = client(
        &discovered.server,
        &discovered.ca_pem,
        &format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(&cert),
            b64(&key)
        ),
    )
    .await
    .map_err(fail("node"))?;

    let step = fail("node");
    let nodes: Api<Node> = Api::all(client.clone());
    if nodes
        .get_opt(node)
        .await
        .map_err(|e| step(format!("cannot read Node {node}: {e}")))?
        .is_none()
    {
        let object = Node {
            metadata: ObjectMeta {
                name: Some(node.to_string()),
                ..ObjectMeta::default()
            },
            ..Node::default()
        };
        nodes
            .create(&PostParams::default(), &object)
            .await
            .map_err(|e| step(format!("cannot register Node {node}: {e}")))?;
    }
    // The address goes on the Node first: the serving certificate is approved for it.
    let status = serde_json::json!({"status": {"addresses": [
        {"type": "InternalIP", "address": ip.to_string()},
        {"type": "Hostname", "address": node},
    ]}});
    nodes
        .patch_status(node, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map_err(|e| step(format!("cannot set the addresses of Node {node}: {e}")))?;
    let started = Instant::now();
    let pod_cidr = loop {
        let current = nodes
            .get(node)
            .await
            .map_err(|e| step(format!("cannot read Node {node}: {e}")))?;
        if let Some(cidr) = current.spec.and_then(|s| s.pod_cidr) {
            break cidr
                .parse::<ipnet::IpNet>()
                .map_err(|e| step(format!("Node {node} has pod CIDR {cidr:?}: {e}")))?;
        }
        if started.elapsed() > timeout {
            return Err(step(format!(
                "Node {node} got no pod CIDR within {timeout:?}; is the controller manager running with --allocate-node-cidrs?"
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    let serving = match &existing.serving {
        Some(pair) => pair.clone(),
        None => {
            let (serving_key, serving_request) =
                node_request(node, vec![node.to_string(), ip.to_string()])
                    .map_err(fail("certificate"))?;
            let serving_cert = certificate(
                &client,
                node,
                &serving_request,
                SIGNER_KUBELET_SERVING,
                &["digital signature", "server auth"],
                timeout,
            )
            .await?;
            (serving_cert, serving_key)
        }
    };
    Ok(Bootstrapped {
        kubeconfig,
        client,
        pod_cidr,
        serving,
    })
}

/// Every file the joining worker needs, rendered from the discovered cluster settings.
pub fn worker_files(
    discovered: &Discovered,
    node: &str,
    ip: IpAddr,
    boot: &Bootstrapped,
) -> anyhow::Result<Vec<DesiredFile>> {
    let host = kinit_inventory::Host::new(node, &ip.to_string(), &[Role::Worker]);
    let inventory = Inventory {
        api_version: kinit_inventory::API_VERSION.into(),
        kind: kinit_inventory::KIND.into(),
        metadata: Metadata {
            name: discovered.cluster.cluster_name.clone(),
        },
        spec: InventorySpec {
            hosts: vec![host.clone()],
            cluster: discovered.cluster.clone(),
        },
    };
    let derived = ClusterDerived {
        pod_cidrs: BTreeMap::from([(node.to_string(), boot.pod_cidr)]),
        // Only load-balancer hosts use it; a joined worker is none.
        vrrp_password: String::new(),
    };
    let context = cluster::render_context(&inventory, &host, &derived)?;
    let mut files: Vec<DesiredFile> = rendered_files(&context)?;
    let add = |files: &mut Vec<DesiredFile>, path: &str, mode: u32, contents: &str| {
        files.push(DesiredFile {
            path: path.into(),
            mode,
            contents: contents.as_bytes().to_vec(),
        })
    };
    add(
        &mut files,
        "/etc/kubernetes/pki/ca.crt",
        0o644,
        &discovered.ca_pem,
    );
    add(
        &mut files,
        "/etc/kubernetes/kubelet.conf",
        0o600,
        &boot.kubeconfig,
    );
    add(&mut files, AGENT_SERVING_CERT, 0o644, &boot.serving.0);
    add(&mut files, AGENT_SERVING_KEY, 0o600, &boot.serving.1);
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// How `kinit join` runs on the machine that joins.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// The API server endpoint, `host:port`.
    pub endpoint: String,
    /// Bootstrap token.
    pub token: String,
    /// Accepted `sha256:<hex>` pins of the cluster CA's public key.
    pub ca_hashes: Vec<String>,
    /// Node name [default: this machine's hostname].
    pub node_name: Option<String>,
    /// Node IP [default: the address this machine reaches the endpoint from].
    pub node_ip: Option<IpAddr>,
    /// The kinit binary to install [default: this program].
    pub binary: Option<std::path::PathBuf>,
    /// Take over the name of a Ready Node at another address.
    pub force: bool,
    /// Skip the preflight checks on a machine kinit has not installed yet.
    pub skip_preflight: bool,
    /// How long to wait for each certificate, the pod CIDR and the node to be Ready.
    pub wait_timeout: Duration,
    /// The host phases to run (the cluster phases are `apply`'s).
    pub phases: crate::phases::PhaseSelection,
    /// Receives notes for the user (`note: …`).
    pub notify: fn(&str),
}

/// What `kinit join` reports.
#[derive(Debug, serde::Serialize)]
pub struct JoinReport {
    /// The node's name.
    pub node: String,
    /// Its IP.
    pub node_ip: IpAddr,
    /// The API server it joined.
    pub server: String,
    /// Its pod range.
    pub pod_cidr: String,
    /// Titles of the host phases that ran.
    pub phases: Vec<String>,
    /// The node's state at the end.
    pub state: NodeState,
    /// Wall time.
    pub seconds: f64,
}

/// The local address the kernel would use towards `endpoint` (a connected UDP socket sends
/// nothing).
pub fn source_ip(endpoint: &str) -> anyhow::Result<IpAddr> {
    use std::net::ToSocketAddrs;
    let target = endpoint
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {endpoint}"))?
        .next()
        .with_context(|| format!("{endpoint} resolves to no address"))?;
    let bind = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = std::net::UdpSocket::bind(bind)?;
    socket.connect(target)?;
    Ok(socket.local_addr()?.ip())
}

/// Joins this machine as a worker: preflight (on a machine kinit has not installed), discovery
/// of the cluster pinned to the CA hashes, TLS bootstrap of the node's certificates, the host
/// phases on this machine, then a wait for the node to be Ready. `say` receives progress lines.
pub async fn join_this_machine(
    args: &JoinOptions,
    say: &(dyn Fn(&str) + Send + Sync),
) -> anyhow::Result<JoinReport> {
    let started = Instant::now();
    let timeout = args.wait_timeout;
    let node = match &args.node_name {
        Some(n) => n.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("cannot read this machine's hostname; pass --node-name")?
            .trim()
            .to_lowercase(),
    };
    validate_node_name(&node).map_err(anyhow::Error::msg)?;
    if std::path::Path::new("/etc/kubernetes/manifests/kube-apiserver.yaml").exists() {
        bail!("this machine runs a kinit control plane; workers join, control planes are managed with `kinit apply` (or `kinit reset` it first)");
    }
    let ip = match args.node_ip {
        Some(ip) => ip,
        None => source_ip(&args.endpoint)?,
    };
    let local = LocalHost::new(&node);
    let managed = std::path::Path::new(crate::sync::STATE_ROOT)
        .join(crate::sync::MANAGED_LIST)
        .exists();
    if !managed && !args.skip_preflight {
        say("preflight");
        let roles = kinit_executor::preflight::HostRoles {
            control_plane: false,
            etcd: false,
            worker: true,
        };
        let report = kinit_executor::preflight::check_host(
            &local,
            &roles,
            &kinit_executor::preflight::PreflightOptions::default(),
        )
        .await;
        if report.has_failures() {
            let failed: Vec<String> = report
                .checks
                .iter()
                .filter(|c| c.status == kinit_executor::preflight::CheckStatus::Fail)
                .map(|c| {
                    format!(
                        "{}: {}{}",
                        c.check,
                        c.message,
                        c.fix
                            .as_deref()
                            .map(|f| format!(" (fix: {f})"))
                            .unwrap_or_default()
                    )
                })
                .collect();
            bail!(
                "preflight failed; fix these (or pass --skip-preflight) and re-run:\n  {}",
                failed.join("\n  ")
            );
        }
    }
    say(&format!("discovering the cluster at {}", args.endpoint));
    let (discovered, bootstrap) = discover(&args.endpoint, &args.token, &args.ca_hashes).await?;
    say(&format!(
        "cluster {:?}, API {}; requesting certificates for node {node} ({ip})",
        discovered.cluster.cluster_name, discovered.server
    ));
    check_name_is_free(&bootstrap, &node, ip, args.force).await?;
    let existing = existing_credentials(&discovered.ca_pem, &node, ip);
    let boot = bootstrap_node(&bootstrap, &discovered, &node, ip, timeout, &existing).await?;
    say(&format!("pod CIDR {}; installing", boot.pod_cidr));
    let files = worker_files(&discovered, &node, ip, &boot)?;
    let binary = crate::apply::load_binary(args.binary.as_deref())?;
    let admin_box = crate::apply::admin_box_archive(
        std::path::Path::new(kinit_images::admin_box::DEFAULT_BUSYBOX),
        std::path::Path::new(crate::sync::STATE_ROOT),
        args.notify,
    )?;
    let hosts = vec![(
        local,
        HostTarget {
            binary,
            files,
            admin_box,
        },
    )];
    let outcome = converge_selected(
        &hosts,
        ConvergeOptions {
            concurrency: 1,
            dry_run: false,
            progress: false,
        },
        &args.phases,
        &run_id(),
    )
    .await
    .remove(0);
    if let Some(e) = &outcome.error {
        bail!("installing on {node} failed: {e}; fix it and run the same join again");
    }
    let phases = outcome.ran.iter().map(|p| p.title().to_string()).collect();
    say("waiting for the node to be Ready");
    let state =
        crate::bootstrap::wait_for_nodes(&boot.client, std::slice::from_ref(&node), timeout)
            .await?
            .remove(&node)
            .unwrap_or(NodeState::Missing);
    Ok(JoinReport {
        node,
        node_ip: ip,
        server: discovered.server,
        pod_cidr: boot.pod_cidr.to_string(),
        phases,
        state,
        seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    fn pki() -> (tempfile::TempDir, Vec<CertificateDer<'static>>, String) {
        let dir = tempfile::tempdir().unwrap();
        let spec = kinit_pki::PkiSpec {
            pki_dir: dir.path().to_path_buf(),
            nodes: vec![kinit_pki::ControlPlaneNode {
                name: "cp1".into(),
                ips: vec!["192.0.2.10".parse().unwrap()],
            }],
            ..kinit_pki::PkiSpec::default()
        };
        kinit_pki::generate(&spec).unwrap();
        let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&[read("apiserver.crt"), read("ca.crt")].concat())
                .collect::<Result<_, _>>()
                .unwrap();
        let pin = kinit_pki::ca_cert_hash(&read("ca.crt")).unwrap();
        (dir, chain, pin)
    }

    #[test]
    fn the_pinned_ca_is_accepted_only_when_it_matches_and_signed_the_leaf() {
        let (dir, chain, pin) = pki();
        let ca = pinned_ca(&chain, std::slice::from_ref(&pin)).unwrap();
        assert_eq!(kinit_pki::ca_cert_hash(ca.as_bytes()).unwrap(), pin);
        // Upper-case hex and a missing prefix are the same pin.
        let bare = pin.strip_prefix("sha256:").unwrap().to_uppercase();
        assert!(pinned_ca(&chain, &[bare]).is_ok());

        let wrong = format!("sha256:{}", "0".repeat(64));
        let err = pinned_ca(&chain, &[wrong]).unwrap_err();
        assert!(err.contains("matches no"), "{err}");
        assert!(pinned_ca(&chain[..1], std::slice::from_ref(&pin))
            .unwrap_err()
            .contains("no CA"));

        // The front-proxy CA presented with the apiserver leaf: pinned, but not the issuer.
        let fp = std::fs::read(dir.path().join("front-proxy-ca.crt")).unwrap();
        let fp_pin = kinit_pki::ca_cert_hash(&fp).unwrap();
        let fp_der = CertificateDer::pem_slice_iter(&fp).next().unwrap().unwrap();
        let err = pinned_ca(&[chain[0].clone(), fp_der], &[fp_pin]).unwrap_err();
        assert!(err.contains("not signed by the pinned CA"), "{err}");
    }

    #[test]
    fn node_names_must_be_lowercase_dns_names() {
        assert!(validate_node_name("node-1.example.com").is_ok());
        for bad in ["", "Node1", "node_1", "-a", "a..b", "a-"] {
            assert!(validate_node_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_fresh_certificates_from_this_ca_for_this_node_are_reused() {
        let (dir, _, _) = pki();
        let ca_pem = std::fs::read_to_string(dir.path().join("ca.crt")).unwrap();
        let other_ca = std::fs::read_to_string(dir.path().join("front-proxy-ca.crt")).unwrap();
        let ca = kinit_pki::CertificateAuthority::load(dir.path(), kinit_pki::CaKind::Kubernetes)
            .unwrap();
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        let issue = |days: i64| {
            kinit_pki::issue_serving_certificate(
                &ca,
                "system:node:n1",
                &[kinit_pki::SubjectAltName::Ip(ip)],
                time::Duration::days(days),
                kinit_pki::KeyAlgorithm::default(),
            )
            .unwrap()
            .cert_pem
        };
        let cert = issue(365);
        assert!(still_good(&cert, &ca_pem, "system:node:n1", Some(ip)));
        assert!(!still_good(&cert, &other_ca, "system:node:n1", Some(ip)));
        assert!(!still_good(&cert, &ca_pem, "system:node:n2", Some(ip)));
        let other_ip = "10.0.0.6".parse().ok();
        assert!(!still_good(&cert, &ca_pem, "system:node:n1", other_ip));
        assert!(!still_good(&issue(10), &ca_pem, "system:node:n1", Some(ip)));
    }

    #[test]
    fn node_requests_carry_the_node_identity() {
        use x509_parser::prelude::FromDer;
        let (_key, pem) = node_request("n1", vec!["n1".into(), "10.0.0.5".into()]).unwrap();
        let der = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .unwrap()
            .1
            .contents;
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&der).unwrap();
        let subject = csr.certification_request_info.subject.to_string();
        assert!(subject.contains("CN=system:node:n1"), "{subject}");
        assert!(subject.contains("O=system:nodes"), "{subject}");
    }
}
