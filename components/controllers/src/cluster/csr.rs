//! Certificate signing for node bootstrap, like kube-controller-manager's `csrapproving` and
//! `csrsigning` controllers:
//!
//! - **approving**: a `kubernetes.io/kube-apiserver-client-kubelet` CSR whose request is
//!   `CN=system:node:<name>, O=system:nodes` with client-auth usages and no SANs is approved when
//!   a SubjectAccessReview says its requester may `create certificatesigningrequests/nodeclient`
//!   (bootstrap tokens, via kubeadm's default binding) or, when the requester is that node
//!   itself, `…/selfnodeclient` (renewal); a `kubernetes.io/kubelet-serving` CSR is approved
//!   when the node itself asks and every SAN is its own name or an address on its Node;
//! - **signing**: approved CSRs of `kube-apiserver-client-kubelet`, `kubelet-serving` and
//!   `kube-apiserver-client` are checked against their signer's rules and signed with the
//!   cluster CA (`--cluster-signing-cert-file`/`--cluster-signing-key-file`), writing
//!   `status.certificate`.
//!
//! A CSR that cannot be parsed, whose signature does not verify, or that breaks its signer's
//! rules gets a `Failed` condition saying why.

use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures::StreamExt;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::api::core::v1::Node;
use kinit_pki::{CertificateAuthority, RequestedCertificate, SubjectAltName};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::{Client, ResourceExt};
use rcgen::{ExtendedKeyUsagePurpose, KeyUsagePurpose};
use serde_json::json;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use super::util::now;
use super::{ClusterControllerError, ReconcileError};
use crate::informer::Informers;

/// Signer of kubelet client certificates.
pub const SIGNER_KUBELET_CLIENT: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// Signer of kubelet serving certificates.
pub const SIGNER_KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";
/// Signer of API client certificates.
pub const SIGNER_APISERVER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";
/// Group of node identities.
pub const NODES_GROUP: &str = "system:nodes";
/// User name prefix of node identities.
pub const NODE_USER_PREFIX: &str = "system:node:";

/// The parts of a PKCS#10 request the controllers look at.
#[derive(Debug, Clone)]
pub struct ParsedCsr {
    /// Subject common name (first CN).
    pub common_name: String,
    /// Subject organizations.
    pub organizations: Vec<String>,
    /// DER of the subject Name.
    pub subject_der: Vec<u8>,
    /// DER SubjectPublicKeyInfo.
    pub public_key_der: Vec<u8>,
    /// Requested DNS SANs.
    pub dns_names: Vec<String>,
    /// Requested IP SANs.
    pub ip_addresses: Vec<IpAddr>,
    /// Number of requested email and URI SANs (never allowed for node certificates).
    pub other_sans: usize,
}

/// Parses a PEM `CERTIFICATE REQUEST` and verifies its self-signature.
pub fn parse_csr(pem: &[u8]) -> Result<ParsedCsr, String> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|e| format!("spec.request is not PEM: {e}"))?;
    if block.label != "CERTIFICATE REQUEST" && block.label != "NEW CERTIFICATE REQUEST" {
        return Err(format!(
            "spec.request holds a PEM block of type {:?}, expected \"CERTIFICATE REQUEST\"",
            block.label
        ));
    }
    let (_, csr) = X509CertificationRequest::from_der(&block.contents)
        .map_err(|e| format!("spec.request is not a PKCS#10 certificate request: {e}"))?;
    csr.verify_signature()
        .map_err(|e| format!("the request's signature does not verify: {e}"))?;
    let info = &csr.certification_request_info;
    let text = |a: &x509_parser::x509::AttributeTypeAndValue<'_>| {
        a.as_str()
            .map(str::to_string)
            .map_err(|e| format!("unreadable subject attribute: {e}"))
    };
    let common_name = match info.subject.iter_common_name().next() {
        Some(cn) => text(cn)?,
        None => String::new(),
    };
    let organizations = info
        .subject
        .iter_organization()
        .map(text)
        .collect::<Result<Vec<_>, _>>()?;
    let mut dns_names = Vec::new();
    let mut ip_addresses = Vec::new();
    let mut other_sans = 0;
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for name in &san.general_names {
                match name {
                    GeneralName::DNSName(d) => dns_names.push(d.to_string()),
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => ip_addresses
                            .push(IpAddr::from(<[u8; 4]>::try_from(*b).expect("4 bytes"))),
                        16 => ip_addresses
                            .push(IpAddr::from(<[u8; 16]>::try_from(*b).expect("16 bytes"))),
                        _ => return Err("malformed IP address in subjectAltName".into()),
                    },
                    _ => other_sans += 1,
                }
            }
        }
    }
    Ok(ParsedCsr {
        common_name,
        organizations,
        subject_der: info.subject.as_raw().to_vec(),
        public_key_der: info.subject_pki.raw.to_vec(),
        dns_names,
        ip_addresses,
        other_sans,
    })
}

fn check_usages(usages: &[String], required: &str, allowed: &[&str]) -> Result<(), String> {
    if let Some(bad) = usages.iter().find(|u| !allowed.contains(&u.as_str())) {
        return Err(format!(
            "usage {bad:?} is not allowed for this signer (allowed: {})",
            allowed.join(", ")
        ));
    }
    if !usages.iter().any(|u| u == required) {
        return Err(format!("usages must include {required:?}"));
    }
    Ok(())
}

fn check_node_subject(csr: &ParsedCsr) -> Result<String, String> {
    if csr.organizations != [NODES_GROUP] {
        return Err(format!(
            "subject organization must be exactly [{NODES_GROUP}], got {:?}",
            csr.organizations
        ));
    }
    match csr.common_name.strip_prefix(NODE_USER_PREFIX) {
        Some(node) if !node.is_empty() => Ok(node.to_string()),
        _ => Err(format!(
            "subject common name must be {NODE_USER_PREFIX}<node name>, got {:?}",
            csr.common_name
        )),
    }
}

/// Checks a kubelet client CSR (Kubernetes' `ValidateKubeletClientCSR`): node subject, no
/// SANs, client-auth usages; returns the node name.
pub fn validate_kubelet_client(csr: &ParsedCsr, usages: &[String]) -> Result<String, String> {
    let node = check_node_subject(csr)?;
    if !csr.dns_names.is_empty() || !csr.ip_addresses.is_empty() || csr.other_sans > 0 {
        return Err(
            "a kubelet client certificate must not request subject alternative names".into(),
        );
    }
    check_usages(
        usages,
        "client auth",
        &["digital signature", "key encipherment", "client auth"],
    )?;
    Ok(node)
}

/// Checks a kubelet serving CSR: node subject, DNS/IP SANs only (at least one), server-auth
/// usages; returns the node name.
pub fn validate_kubelet_serving(csr: &ParsedCsr, usages: &[String]) -> Result<String, String> {
    let node = check_node_subject(csr)?;
    if csr.other_sans > 0 {
        return Err(
            "a kubelet serving certificate may only request DNS and IP subject alternative names"
                .into(),
        );
    }
    if csr.dns_names.is_empty() && csr.ip_addresses.is_empty() {
        return Err("a kubelet serving certificate must request at least one DNS or IP subject alternative name".into());
    }
    check_usages(
        usages,
        "server auth",
        &["digital signature", "key encipherment", "server auth"],
    )?;
    Ok(node)
}

/// Checks an API client CSR: client-auth usages only.
pub fn validate_apiserver_client(csr: &ParsedCsr, usages: &[String]) -> Result<(), String> {
    if csr.common_name.is_empty() {
        return Err("subject common name (the user name) must not be empty".into());
    }
    check_usages(
        usages,
        "client auth",
        &["digital signature", "key encipherment", "client auth"],
    )
}

/// Checks a CSR against its signer's rules; `Ok(None)` for signers this controller ignores.
pub fn validate_for_signer(
    signer: &str,
    csr: &ParsedCsr,
    usages: &[String],
) -> Result<Option<()>, String> {
    match signer {
        SIGNER_KUBELET_CLIENT => validate_kubelet_client(csr, usages).map(|_| Some(())),
        SIGNER_KUBELET_SERVING => validate_kubelet_serving(csr, usages).map(|_| Some(())),
        SIGNER_APISERVER_CLIENT => validate_apiserver_client(csr, usages).map(|_| Some(())),
        _ => Ok(None),
    }
}

/// The subresource of `certificatesigningrequests` a requester needs for auto-approval, most
/// specific first: `selfnodeclient` when the requester is the node named in the request, then
/// `nodeclient`.
pub fn approval_permissions(requester: &str, node: &str) -> Vec<&'static str> {
    if requester == format!("{NODE_USER_PREFIX}{node}") {
        vec!["selfnodeclient", "nodeclient"]
    } else {
        vec!["nodeclient"]
    }
}

/// Signs CSRs with the cluster CA.
pub struct Signer {
    ca: CertificateAuthority,
    max_duration: Duration,
}

impl Signer {
    /// Loads the CA certificate and key (kubeadm layout: `pki/ca.crt`, `pki/ca.key`).
    pub fn load(
        cert: &Path,
        key: &Path,
        max_duration: Duration,
    ) -> Result<Signer, ClusterControllerError> {
        let ca = CertificateAuthority::load_files("ca", cert, key).map_err(|source| {
            ClusterControllerError::SigningCa {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                source: Box::new(source),
            }
        })?;
        if ca.is_externally_managed() {
            return Err(ClusterControllerError::SigningKeyMissing {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            });
        }
        Ok(Signer { ca, max_duration })
    }

    /// Signs `csr` for `usages`, valid for `requested` (capped at the signing duration);
    /// returns the certificate PEM.
    pub fn sign(
        &self,
        name: &str,
        csr: &ParsedCsr,
        usages: &[String],
        requested: Option<Duration>,
    ) -> Result<String, String> {
        let validity = requested
            .map(|r| r.min(self.max_duration))
            .unwrap_or(self.max_duration);
        let mut key_usages = Vec::new();
        let mut extended = Vec::new();
        for u in usages {
            match u.as_str() {
                "digital signature" => key_usages.push(KeyUsagePurpose::DigitalSignature),
                "key encipherment" => key_usages.push(KeyUsagePurpose::KeyEncipherment),
                "client auth" => extended.push(ExtendedKeyUsagePurpose::ClientAuth),
                "server auth" => extended.push(ExtendedKeyUsagePurpose::ServerAuth),
                other => return Err(format!("usage {other:?} cannot be issued")),
            }
        }
        let mut sans: Vec<SubjectAltName> = csr
            .dns_names
            .iter()
            .map(|d| SubjectAltName::Dns(d.clone()))
            .collect();
        sans.extend(csr.ip_addresses.iter().map(|ip| SubjectAltName::Ip(*ip)));
        let request = RequestedCertificate {
            subject_der: csr.subject_der.clone(),
            public_key_der: csr.public_key_der.clone(),
            sans,
            key_usages,
            extended_key_usages: extended,
            validity: time::Duration::try_from(validity).unwrap_or(time::Duration::days(365)),
        };
        self.ca
            .sign_requested(&request, &format!("certificatesigningrequest {name}"))
            .map_err(|e| e.to_string())
    }
}

struct Ctx {
    client: Client,
    approving: bool,
    signer: Option<Signer>,
}

fn has_condition(csr: &CertificateSigningRequest, type_: &str) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

fn with_condition(
    csr: &CertificateSigningRequest,
    type_: &str,
    reason: &str,
    message: &str,
) -> serde_json::Value {
    let mut conditions: Vec<CertificateSigningRequestCondition> = csr
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    conditions.push(CertificateSigningRequestCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_update_time: Some(now()),
        last_transition_time: Some(now()),
    });
    json!({"status": {"conditions": conditions}})
}

async fn fail(
    api: &Api<CertificateSigningRequest>,
    csr: &CertificateSigningRequest,
    message: &str,
) -> Result<(), ReconcileError> {
    let name = csr.name_any();
    tracing::warn!(csr = %name, %message, "certificate signing request failed");
    let patch = with_condition(csr, "Failed", "SignerValidationFailure", message);
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(ReconcileError::kube(format!(
            "marking certificatesigningrequest {name} Failed"
        )))?;
    Ok(())
}

async fn may(
    client: &Client,
    csr: &CertificateSigningRequest,
    subresource: &str,
) -> Result<bool, ReconcileError> {
    let spec = &csr.spec;
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: spec.username.clone(),
            uid: spec.uid.clone(),
            groups: spec.groups.clone(),
            extra: spec.extra.clone(),
            resource_attributes: Some(ResourceAttributes {
                group: Some("certificates.k8s.io".into()),
                resource: Some("certificatesigningrequests".into()),
                subresource: Some(subresource.into()),
                verb: Some("create".into()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let answer =
        api.create(&PostParams::default(), &review)
            .await
            .map_err(ReconcileError::kube(
                "asking the API server for a SubjectAccessReview",
            ))?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// Names and addresses no node may get a serving certificate for: the API server's (the
/// `kubernetes` names, its Service IP, endpoints and the published endpoint — the cluster CA
/// signs both kinds of serving certificate) and those of every other Node.
#[derive(Debug, Default, Clone)]
pub struct Reserved {
    /// DNS names.
    pub names: Vec<String>,
    /// IP addresses.
    pub ips: Vec<IpAddr>,
}

impl Reserved {
    fn name_taken(&self, name: &str) -> bool {
        name == "kubernetes"
            || name.starts_with("kubernetes.")
            || self.names.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

fn node_addresses(node: &Node) -> Vec<IpAddr> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|a| a.iter().filter_map(|a| a.address.parse().ok()).collect())
        .unwrap_or_default()
}

/// Whether a kubelet serving CSR may be approved without a person: the node itself asks (user
/// and `system:nodes` group), every DNS SAN is its own name and every IP SAN one of its Node's
/// addresses, and none of them is [`Reserved`]. (Kubernetes leaves serving CSRs to an external
/// approver; kinit approves exactly this case.)
pub fn serving_request_is_own(
    requester: &str,
    groups: &[String],
    node: &str,
    csr: &ParsedCsr,
    node_object: Option<&Node>,
    reserved: &Reserved,
) -> Result<(), String> {
    if requester != format!("{NODE_USER_PREFIX}{node}") || !groups.iter().any(|g| g == NODES_GROUP)
    {
        return Err(format!(
            "requester {requester:?} is not the node {node:?} itself"
        ));
    }
    let Some(node_object) = node_object else {
        return Err(format!("Node {node} does not exist"));
    };
    for dns in &csr.dns_names {
        if dns != node {
            return Err(format!("DNS name {dns:?} is not the node's name"));
        }
        if reserved.name_taken(dns) {
            return Err(format!("DNS name {dns:?} belongs to the API server"));
        }
    }
    let addresses = node_addresses(node_object);
    for ip in &csr.ip_addresses {
        if !addresses.contains(ip) {
            return Err(format!(
                "IP address {ip} is not among the addresses of Node {node}"
            ));
        }
        if reserved.ips.contains(ip) {
            return Err(format!(
                "IP address {ip} belongs to the API server or another node"
            ));
        }
    }
    Ok(())
}

/// What [`Reserved`] holds for a request from `node`, read from the API.
async fn reserved_for(client: &Client, node: &str) -> Result<Reserved, ReconcileError> {
    use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Service};
    let mut reserved = Reserved::default();
    let read = |what: &str| ReconcileError::kube(format!("reading {what}"));
    for other in Api::<Node>::all(client.clone())
        .list(&Default::default())
        .await
        .map_err(read("Nodes"))?
        .items
    {
        if other.metadata.name.as_deref() != Some(node) {
            reserved.ips.extend(node_addresses(&other));
        }
    }
    if let Some(service) = Api::<Service>::namespaced(client.clone(), "default")
        .get_opt("kubernetes")
        .await
        .map_err(read("Service default/kubernetes"))?
    {
        let spec = service.spec.unwrap_or_default();
        for ip in spec
            .cluster_ips
            .unwrap_or_default()
            .iter()
            .chain(&spec.cluster_ip)
        {
            reserved.ips.extend(ip.parse::<IpAddr>().ok());
        }
    }
    if let Some(endpoints) = Api::<Endpoints>::namespaced(client.clone(), "default")
        .get_opt("kubernetes")
        .await
        .map_err(read("Endpoints default/kubernetes"))?
    {
        for subset in endpoints.subsets.unwrap_or_default() {
            for address in subset.addresses.unwrap_or_default() {
                reserved.ips.extend(address.ip.parse::<IpAddr>().ok());
            }
        }
    }
    if let Some(info) = Api::<ConfigMap>::namespaced(client.clone(), "kube-public")
        .get_opt("cluster-info")
        .await
        .map_err(read("ConfigMap kube-public/cluster-info"))?
    {
        let kubeconfig = info.data.unwrap_or_default().remove("kubeconfig");
        let server = kubeconfig
            .and_then(|k| serde_yaml::from_str::<serde_yaml::Value>(&k).ok())
            .and_then(|v| {
                v["clusters"][0]["cluster"]["server"]
                    .as_str()
                    .map(str::to_string)
            });
        if let Some(url) = server.and_then(|s| url::Url::parse(&s).ok()) {
            match url.host() {
                Some(url::Host::Domain(d)) => reserved.names.push(d.to_string()),
                Some(url::Host::Ipv4(ip)) => reserved.ips.push(ip.into()),
                Some(url::Host::Ipv6(ip)) => reserved.ips.push(ip.into()),
                None => {}
            }
        }
    }
    Ok(reserved)
}

/// Adds the `Approved` condition (reason `AutoApproved`) through the approval subresource;
/// signing follows when the approval comes back as a watch event.
async fn approve(
    api: &Api<CertificateSigningRequest>,
    csr: &CertificateSigningRequest,
    message: &str,
) -> Result<(), ReconcileError> {
    let name = csr.name_any();
    let patch = with_condition(csr, "Approved", "AutoApproved", message);
    api.patch_subresource(
        "approval",
        &name,
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(ReconcileError::kube(format!(
        "approving certificatesigningrequest {name}"
    )))?;
    Ok(())
}

async fn reconcile(
    csr: Arc<CertificateSigningRequest>,
    ctx: Arc<Ctx>,
) -> Result<Action, ReconcileError> {
    let name = csr.name_any();
    let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    let signer = csr.spec.signer_name.as_str();
    let usages: Vec<String> = csr.spec.usages.clone().unwrap_or_default();
    if has_condition(&csr, "Failed") || has_condition(&csr, "Denied") {
        return Ok(Action::await_change());
    }
    let approved = has_condition(&csr, "Approved");
    let issued = csr
        .status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty());
    if issued {
        return Ok(Action::await_change());
    }
    let handled = [
        SIGNER_KUBELET_CLIENT,
        SIGNER_KUBELET_SERVING,
        SIGNER_APISERVER_CLIENT,
    ];
    if !handled.contains(&signer) {
        return Ok(Action::await_change());
    }
    let will_sign = approved && ctx.signer.is_some();
    let will_approve = !approved
        && ctx.approving
        && (signer == SIGNER_KUBELET_CLIENT || signer == SIGNER_KUBELET_SERVING);
    if !will_sign && !will_approve {
        return Ok(Action::await_change());
    }
    let parsed = match parse_csr(&csr.spec.request.0) {
        Ok(p) => p,
        Err(message) => {
            fail(&api, &csr, &message).await?;
            return Ok(Action::await_change());
        }
    };
    if let Err(message) = validate_for_signer(signer, &parsed, &usages) {
        fail(&api, &csr, &format!("{message} (signer {signer})")).await?;
        return Ok(Action::await_change());
    }
    if will_approve && signer == SIGNER_KUBELET_SERVING {
        let node = validate_kubelet_serving(&parsed, &usages).map_err(ReconcileError::Invalid)?;
        let requester = csr.spec.username.clone().unwrap_or_default();
        let node_object = Api::<Node>::all(ctx.client.clone())
            .get_opt(&node)
            .await
            .map_err(ReconcileError::kube(format!("reading Node {node}")))?;
        let groups = csr.spec.groups.clone().unwrap_or_default();
        let reserved = reserved_for(&ctx.client, &node).await?;
        if let Err(why) = serving_request_is_own(
            &requester,
            &groups,
            &node,
            &parsed,
            node_object.as_ref(),
            &reserved,
        ) {
            tracing::info!(csr = %name, %requester, "not auto-approving kubelet serving certificate: {why}");
            return Ok(Action::await_change());
        }
        tracing::info!(csr = %name, node = %node, "auto-approving kubelet serving certificate");
        approve(
            &api,
            &csr,
            "Auto approving kubelet serving certificate: the node asks for its own name and addresses.",
        )
        .await?;
        return Ok(Action::await_change());
    }
    if will_approve {
        let node = validate_kubelet_client(&parsed, &usages).map_err(ReconcileError::Invalid)?;
        let requester = csr.spec.username.clone().unwrap_or_default();
        for subresource in approval_permissions(&requester, &node) {
            if may(&ctx.client, &csr, subresource).await? {
                tracing::info!(csr = %name, %requester, node = %node, "auto-approving kubelet client certificate");
                approve(
                    &api,
                    &csr,
                    "Auto approving kubelet client certificate after SubjectAccessReview.",
                )
                .await?;
                // The approval comes back as a watch event; signing happens then.
                return Ok(Action::await_change());
            }
        }
        tracing::info!(csr = %name, %requester, "not auto-approving: requester may not create node client certificates");
        return Ok(Action::await_change());
    }
    let Some(signer_ca) = ctx.signer.as_ref() else {
        return Ok(Action::await_change());
    };
    let requested = csr
        .spec
        .expiration_seconds
        .map(|s| Duration::from_secs(s.max(600) as u64));
    let pem = match signer_ca.sign(&name, &parsed, &usages, requested) {
        Ok(p) => p,
        Err(message) => {
            fail(&api, &csr, &format!("signing failed: {message}")).await?;
            return Ok(Action::await_change());
        }
    };
    let patch = json!({"status": {"certificate": base64::engine::general_purpose::STANDARD.encode(pem.as_bytes())}});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(ReconcileError::kube(format!(
            "writing the certificate of certificatesigningrequest {name}"
        )))?;
    tracing::info!(csr = %name, signer, "certificate issued");
    Ok(Action::await_change())
}

fn error_policy(
    csr: Arc<CertificateSigningRequest>,
    error: &ReconcileError,
    _ctx: Arc<Ctx>,
) -> Action {
    tracing::warn!(csr = %csr.name_any(), %error, "certificate signing request handling failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// Sets CSR approval and/or signing up on the shared CertificateSigningRequest informer and
/// returns the future that runs it until dropped.
pub fn run(
    informers: &mut Informers,
    approving: bool,
    signer: Option<Signer>,
) -> impl Future<Output = Result<(), ClusterControllerError>> + Send + 'static {
    let ctx = Arc::new(Ctx {
        client: informers.client().clone(),
        approving,
        signer,
    });
    let csrs = informers.get::<CertificateSigningRequest>();
    let controller = Controller::for_stream(csrs.objects(), csrs.store());
    async move {
        controller
            .run(reconcile, error_policy, ctx)
            .for_each(|r| async move {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "csr controller event");
                }
            })
            .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    fn request(cn: &str, orgs: &[&str], sans: &[&str]) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        for o in orgs {
            dn.push(DnType::OrganizationName, *o);
        }
        params.distinguished_name = dn;
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn usages(u: &[&str]) -> Vec<String> {
        u.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn kubelet_client_request_is_valid() {
        let csr =
            parse_csr(request("system:node:worker1", &["system:nodes"], &[]).as_bytes()).unwrap();
        let node =
            validate_kubelet_client(&csr, &usages(&["digital signature", "client auth"])).unwrap();
        assert_eq!(node, "worker1");
    }

    #[test]
    fn malformed_requests_are_rejected_with_reasons() {
        let wrong_org =
            parse_csr(request("system:node:w", &["system:masters"], &[]).as_bytes()).unwrap();
        let e = validate_kubelet_client(&wrong_org, &usages(&["client auth"])).unwrap_err();
        assert!(e.contains("organization"), "{e}");
        let wrong_cn = parse_csr(request("alice", &["system:nodes"], &[]).as_bytes()).unwrap();
        assert!(
            validate_kubelet_client(&wrong_cn, &usages(&["client auth"]))
                .unwrap_err()
                .contains("common name")
        );
        let with_san =
            parse_csr(request("system:node:w", &["system:nodes"], &["w.example"]).as_bytes())
                .unwrap();
        assert!(validate_kubelet_client(&with_san, &usages(&["client auth"])).is_err());
        let ok = parse_csr(request("system:node:w", &["system:nodes"], &[]).as_bytes()).unwrap();
        assert!(validate_kubelet_client(&ok, &usages(&["server auth"]))
            .unwrap_err()
            .contains("not allowed"));
        assert!(
            validate_kubelet_client(&ok, &usages(&["digital signature"]))
                .unwrap_err()
                .contains("client auth")
        );
        assert!(parse_csr(b"not pem").is_err());
        let cert_label = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(parse_csr(cert_label.as_bytes())
            .unwrap_err()
            .contains("CERTIFICATE REQUEST"));
    }

    #[test]
    fn serving_requests_need_sans() {
        let csr =
            parse_csr(request("system:node:w", &["system:nodes"], &["w", "10.0.0.5"]).as_bytes())
                .unwrap();
        assert_eq!(csr.dns_names, ["w"]);
        assert_eq!(csr.ip_addresses, ["10.0.0.5".parse::<IpAddr>().unwrap()]);
        assert!(
            validate_kubelet_serving(&csr, &usages(&["digital signature", "server auth"])).is_ok()
        );
        let bare = parse_csr(request("system:node:w", &["system:nodes"], &[]).as_bytes()).unwrap();
        assert!(validate_kubelet_serving(&bare, &usages(&["server auth"])).is_err());
    }

    #[test]
    fn self_renewal_checks_selfnodeclient_first() {
        assert_eq!(
            approval_permissions("system:node:w", "w"),
            ["selfnodeclient", "nodeclient"]
        );
        assert_eq!(
            approval_permissions("system:bootstrap:abcdef", "w"),
            ["nodeclient"]
        );
        assert_eq!(
            approval_permissions("system:node:other", "w"),
            ["nodeclient"]
        );
    }

    #[test]
    fn serving_requests_are_approved_only_for_the_nodes_own_name_and_addresses() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1"},
            "status": {"addresses": [
                {"type": "InternalIP", "address": "10.0.0.5"},
                {"type": "InternalIP", "address": "10.0.0.1"},
                {"type": "Hostname", "address": "n1"}
            ]}
        }))
        .unwrap();
        let nodes = vec![NODES_GROUP.to_string()];
        let reserved = Reserved {
            names: vec!["api.example.com".into()],
            ips: vec!["10.0.0.1".parse().unwrap()],
        };
        let check = |requester: &str,
                     groups: &[String],
                     node_name: &str,
                     sans: &[&str],
                     object: Option<&Node>| {
            let csr = parse_csr(
                request(&format!("system:node:{node_name}"), &["system:nodes"], sans).as_bytes(),
            )
            .unwrap();
            serving_request_is_own(requester, groups, node_name, &csr, object, &reserved)
        };
        assert!(check(
            "system:node:n1",
            &nodes,
            "n1",
            &["n1", "10.0.0.5"],
            Some(&node)
        )
        .is_ok());
        let err = check("system:node:n2", &nodes, "n1", &["n1"], Some(&node)).unwrap_err();
        assert!(err.contains("not the node"), "{err}");
        assert!(
            check("system:node:n1", &[], "n1", &["n1"], Some(&node)).is_err(),
            "group needed"
        );
        assert!(check("system:node:n1", &nodes, "n1", &["n1"], None).is_err());
        let err = check("system:node:n1", &nodes, "n1", &["10.0.0.6"], Some(&node)).unwrap_err();
        assert!(err.contains("10.0.0.6"), "{err}");
        assert!(check(
            "system:node:n1",
            &nodes,
            "n1",
            &["other.example.com"],
            Some(&node)
        )
        .is_err());
        // The node reports 10.0.0.1 itself, but it is the API server's (or another node's).
        let err = check("system:node:n1", &nodes, "n1", &["10.0.0.1"], Some(&node)).unwrap_err();
        assert!(err.contains("belongs to"), "{err}");
        // A node named like the API server gets no serving certificate for that name.
        for name in ["kubernetes.default.svc", "api.example.com"] {
            let err = check(
                &format!("system:node:{name}"),
                &nodes,
                name,
                &[name],
                Some(&node),
            )
            .unwrap_err();
            assert!(err.contains("belongs to the API server"), "{err}");
        }
    }
}
