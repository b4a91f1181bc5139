//! Certificates: CA creation and loading, signing leaves, and reading certificates back
//! (x509-parser) for reuse decisions, expiry checks and renewal.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SigningKey,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::error::PkiError;
use crate::files::{self, MODE_PUBLIC, MODE_SECRET};
use crate::keys::{self, KeyAlgorithm};

/// Certificates are valid from a few minutes in the past so small clock skew between hosts
/// does not make a fresh certificate "not yet valid".
pub(crate) const BACKDATE: Duration = Duration::minutes(5);

/// DER of an empty X.509 Name (`SEQUENCE {}`).
const EMPTY_NAME: &[u8] = &[0x30, 0x00];

/// The three certificate authorities of a kubeadm-style cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CaKind {
    /// `ca.crt`/`ca.key`: cluster CA (API server, kubelets, users).
    #[serde(rename = "ca")]
    Kubernetes,
    /// `etcd/ca.crt`/`etcd/ca.key`: etcd CA.
    #[serde(rename = "etcd-ca")]
    Etcd,
    /// `front-proxy-ca.crt`/`front-proxy-ca.key`: aggregation-layer CA.
    #[serde(rename = "front-proxy-ca")]
    FrontProxy,
}

impl CaKind {
    /// All CAs, in the order kubeadm lists them.
    pub const ALL: [CaKind; 3] = [CaKind::Kubernetes, CaKind::Etcd, CaKind::FrontProxy];

    /// Name as shown by `check-expiration` (`ca`, `etcd-ca`, `front-proxy-ca`).
    pub fn name(self) -> &'static str {
        match self {
            CaKind::Kubernetes => "ca",
            CaKind::Etcd => "etcd-ca",
            CaKind::FrontProxy => "front-proxy-ca",
        }
    }

    /// File base name relative to the PKI directory, without extension.
    pub fn base_name(self) -> &'static str {
        match self {
            CaKind::Kubernetes => "ca",
            CaKind::Etcd => "etcd/ca",
            CaKind::FrontProxy => "front-proxy-ca",
        }
    }

    /// Subject common name of a CA kinit creates (same as kubeadm).
    pub fn common_name(self) -> &'static str {
        match self {
            CaKind::Kubernetes => "kubernetes",
            CaKind::Etcd => "etcd-ca",
            CaKind::FrontProxy => "front-proxy-ca",
        }
    }

    /// `<pki_dir>/<base>.crt`
    pub fn cert_path(self, pki_dir: &Path) -> PathBuf {
        pki_dir.join(format!("{}.crt", self.base_name()))
    }

    /// `<pki_dir>/<base>.key`
    pub fn key_path(self, pki_dir: &Path) -> PathBuf {
        pki_dir.join(format!("{}.key", self.base_name()))
    }
}

impl fmt::Display for CaKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A subject alternative name: DNS name or IP address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SubjectAltName {
    /// A DNS name (wildcards such as `*.example.com` allowed).
    Dns(String),
    /// An IPv4 or IPv6 address.
    Ip(IpAddr),
}

impl SubjectAltName {
    /// Classifies `value` as an IP address when it parses as one, otherwise as a DNS name
    /// (lower-cased, as DNS names compare case-insensitively).
    pub fn classify(value: &str) -> SubjectAltName {
        let v = value.trim();
        let unbracketed = v.trim_start_matches('[').trim_end_matches(']');
        match unbracketed.parse::<IpAddr>() {
            Ok(ip) => SubjectAltName::Ip(ip),
            Err(_) => SubjectAltName::Dns(v.to_ascii_lowercase()),
        }
    }

    pub(crate) fn to_rcgen(&self) -> Result<SanType, PkiError> {
        Ok(match self {
            SubjectAltName::Ip(ip) => SanType::IpAddress(*ip),
            SubjectAltName::Dns(name) => SanType::DnsName(
                name.clone()
                    .try_into()
                    .map_err(|e| PkiError::spec("extra_sans", format!("`{name}`: {e}")))?,
            ),
        })
    }
}

impl fmt::Display for SubjectAltName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubjectAltName::Dns(d) => f.write_str(d),
            SubjectAltName::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// The extended key usages kinit issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Usage {
    ServerAuth,
    ClientAuth,
}

/// Encodes an X.509 subject `O=<org>…, CN=<cn>` (one RDN per attribute, CN last like Go's
/// `pkix.Name`). Hand-built because rcgen's `DistinguishedName` keeps one value per attribute
/// type (rcgen issue #81) and Kubernetes reads every `O` as a group.
pub(crate) fn encode_subject(common_name: &str, organizations: &[String]) -> Vec<u8> {
    const ORGANIZATION: &[u64] = &[2, 5, 4, 10];
    const COMMON_NAME: &[u64] = &[2, 5, 4, 3];
    let attribute = |w: yasna::DERWriter, oid: &[u64], value: &str| {
        w.write_set(|w| {
            w.next().write_sequence(|w| {
                w.next()
                    .write_oid(&yasna::models::ObjectIdentifier::from_slice(oid));
                w.next().write_utf8_string(value);
            })
        })
    };
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            for org in organizations {
                attribute(w.next(), ORGANIZATION, org);
            }
            attribute(w.next(), COMMON_NAME, common_name);
        })
    })
}

/// What a leaf certificate must contain, independent of how it is signed.
#[derive(Debug, Clone)]
pub(crate) struct LeafRequest {
    /// DER of the subject Name.
    pub subject: Vec<u8>,
    pub sans: Vec<SanType>,
    pub key_usages: Vec<KeyUsagePurpose>,
    pub extended_key_usages: Vec<ExtendedKeyUsagePurpose>,
    pub validity: Duration,
}

impl LeafRequest {
    /// A new certificate with kubeadm's key usages: digitalSignature (+ keyEncipherment for RSA
    /// keys, where it is meaningful) and the given extended usages.
    pub(crate) fn new(
        common_name: &str,
        organizations: &[String],
        sans: &[SubjectAltName],
        usages: &[Usage],
        rsa_key: bool,
        validity: Duration,
    ) -> Result<Self, PkiError> {
        let mut key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if rsa_key {
            key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        Ok(LeafRequest {
            subject: encode_subject(common_name, organizations),
            sans: sans
                .iter()
                .map(SubjectAltName::to_rcgen)
                .collect::<Result<_, _>>()?,
            key_usages,
            extended_key_usages: usages
                .iter()
                .map(|u| match u {
                    Usage::ServerAuth => ExtendedKeyUsagePurpose::ServerAuth,
                    Usage::ClientAuth => ExtendedKeyUsagePurpose::ClientAuth,
                })
                .collect(),
            validity,
        })
    }

    /// The same subject, SANs and usages as an existing certificate, with a new validity.
    pub(crate) fn from_existing(
        cert: &X509Certificate<'_>,
        validity: Duration,
        path: &Path,
    ) -> Result<Self, PkiError> {
        let invalid = |reason: String| PkiError::InvalidCertificate {
            path: path.to_path_buf(),
            reason,
        };
        let mut sans = Vec::new();
        if let Some(ext) = cert
            .subject_alternative_name()
            .map_err(|e| invalid(format!("subjectAltName: {e}")))?
        {
            for name in &ext.value.general_names {
                sans.push(match name {
                    GeneralName::DNSName(d) => SanType::DnsName(
                        (*d).try_into()
                            .map_err(|e| invalid(format!("DNS name `{d}`: {e}")))?,
                    ),
                    GeneralName::IPAddress(b) => SanType::IpAddress(
                        ip_from_bytes(b).ok_or_else(|| invalid("malformed IP SAN".into()))?,
                    ),
                    GeneralName::URI(u) => SanType::URI(
                        (*u).try_into()
                            .map_err(|e| invalid(format!("URI `{u}`: {e}")))?,
                    ),
                    GeneralName::RFC822Name(m) => SanType::Rfc822Name(
                        (*m).try_into()
                            .map_err(|e| invalid(format!("e-mail `{m}`: {e}")))?,
                    ),
                    other => return Err(invalid(format!("unsupported SAN {other:?}"))),
                });
            }
        }
        let mut key_usages = Vec::new();
        if let Some(ku) = cert
            .key_usage()
            .map_err(|e| invalid(format!("keyUsage: {e}")))?
        {
            let ku = ku.value;
            let pairs = [
                (ku.digital_signature(), KeyUsagePurpose::DigitalSignature),
                (ku.non_repudiation(), KeyUsagePurpose::ContentCommitment),
                (ku.key_encipherment(), KeyUsagePurpose::KeyEncipherment),
                (ku.data_encipherment(), KeyUsagePurpose::DataEncipherment),
                (ku.key_agreement(), KeyUsagePurpose::KeyAgreement),
                (ku.key_cert_sign(), KeyUsagePurpose::KeyCertSign),
                (ku.crl_sign(), KeyUsagePurpose::CrlSign),
                (ku.encipher_only(), KeyUsagePurpose::EncipherOnly),
                (ku.decipher_only(), KeyUsagePurpose::DecipherOnly),
            ];
            key_usages.extend(pairs.into_iter().filter(|(set, _)| *set).map(|(_, u)| u));
        }
        let mut extended_key_usages = Vec::new();
        if let Some(eku) = cert
            .extended_key_usage()
            .map_err(|e| invalid(format!("extendedKeyUsage: {e}")))?
        {
            let eku = &eku.value;
            let pairs = [
                (eku.any, ExtendedKeyUsagePurpose::Any),
                (eku.server_auth, ExtendedKeyUsagePurpose::ServerAuth),
                (eku.client_auth, ExtendedKeyUsagePurpose::ClientAuth),
                (eku.code_signing, ExtendedKeyUsagePurpose::CodeSigning),
                (
                    eku.email_protection,
                    ExtendedKeyUsagePurpose::EmailProtection,
                ),
                (eku.time_stamping, ExtendedKeyUsagePurpose::TimeStamping),
                (eku.ocsp_signing, ExtendedKeyUsagePurpose::OcspSigning),
            ];
            extended_key_usages.extend(pairs.into_iter().filter(|(set, _)| *set).map(|(_, u)| u));
            for oid in &eku.other {
                let arcs: Vec<u64> = oid
                    .iter()
                    .ok_or_else(|| invalid(format!("extended key usage {oid} too large")))?
                    .collect();
                extended_key_usages.push(ExtendedKeyUsagePurpose::Other(arcs));
            }
        }
        Ok(LeafRequest {
            subject: cert.subject().as_raw().to_vec(),
            sans,
            key_usages,
            extended_key_usages,
            validity,
        })
    }
}

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

/// A random, positive 128-bit serial number.
fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| PkiError::crypto("certificate serial number", e))?;
    // Positive and with a non-zero leading byte, so the DER INTEGER keeps its 16 bytes.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn now_seconds() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

/// A certificate authority: its certificate and, unless externally managed, its private key.
pub struct CertificateAuthority {
    kind_name: String,
    cert_path: PathBuf,
    key_path: PathBuf,
    cert_pem: String,
    cert_der: Vec<u8>,
    key: Option<KeyPair>,
    subject: Vec<u8>,
    public_key_info: Vec<u8>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("name", &self.kind_name)
            .field("cert_path", &self.cert_path)
            .field("has_key", &self.key.is_some())
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl CertificateAuthority {
    /// Loads `<pki_dir>/<base>.crt` and, if present, `<pki_dir>/<base>.key` for `kind`.
    pub fn load(pki_dir: &Path, kind: CaKind) -> Result<Self, PkiError> {
        Self::load_files(
            kind.name(),
            &kind.cert_path(pki_dir),
            &kind.key_path(pki_dir),
        )
    }

    /// Loads a CA from explicit paths; a missing key file means "externally managed".
    /// Fails when the certificate is missing, unparsable, not a CA, or does not match the key.
    pub fn load_files(name: &str, cert_path: &Path, key_path: &Path) -> Result<Self, PkiError> {
        let pem = std::fs::read(cert_path).map_err(|e| PkiError::io("read", cert_path, e))?;
        let key = match files::read_optional(key_path)? {
            Some(bytes) => Some(keys::parse_key_pem(&bytes, key_path)?),
            None => None,
        };
        Self::from_parts(name, cert_path, key_path, &pem, key)
    }

    fn from_parts(
        name: &str,
        cert_path: &Path,
        key_path: &Path,
        pem: &[u8],
        key: Option<KeyPair>,
    ) -> Result<Self, PkiError> {
        let der = pem_to_der(pem, cert_path)?;
        let x = parse_der(&der, cert_path)?;
        let is_ca = x
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(PkiError::InvalidCertificate {
                path: cert_path.to_path_buf(),
                reason: "not a CA certificate (basicConstraints CA:TRUE missing)".into(),
            });
        }
        if let Some(k) = &key {
            if k.der_bytes() != x.public_key().subject_public_key.data.as_ref() {
                return Err(PkiError::KeyMismatch {
                    cert: cert_path.to_path_buf(),
                    key: key_path.to_path_buf(),
                });
            }
        }
        let cert_pem = String::from_utf8_lossy(pem).into_owned();
        Ok(CertificateAuthority {
            kind_name: name.to_string(),
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            subject: x.subject().as_raw().to_vec(),
            public_key_info: x.public_key().raw.to_vec(),
            not_before: x.validity().not_before.to_datetime(),
            not_after: x.validity().not_after.to_datetime(),
            cert_pem,
            cert_der: der.clone(),
            key,
        })
    }

    /// Creates a new self-signed CA (CN from `kind`, 10 years by default) and writes it:
    /// key first (0600), then certificate (0644), both atomically.
    pub(crate) fn create(
        pki_dir: &Path,
        kind: CaKind,
        alg: KeyAlgorithm,
        validity: Duration,
    ) -> Result<Self, PkiError> {
        let cert_path = kind.cert_path(pki_dir);
        let key_path = kind.key_path(pki_dir);
        let what = cert_path.display().to_string();
        let key = keys::generate_key(alg, &what)?;
        let now = now_seconds();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, kind.common_name());
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
        ];
        if alg == KeyAlgorithm::Rsa2048 {
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        params.serial_number = Some(random_serial()?);
        params.not_before = now - BACKDATE;
        params.not_after = now + validity;
        let cert = params
            .self_signed(&key)
            .map_err(|e| PkiError::crypto(&what, e))?;
        let pem = cert.pem();
        files::write_atomic(&key_path, keys::key_pem(&key).as_bytes(), MODE_SECRET)?;
        files::write_atomic(&cert_path, pem.as_bytes(), MODE_PUBLIC)?;
        Self::from_parts(
            kind.name(),
            &cert_path,
            &key_path,
            pem.as_bytes(),
            Some(key),
        )
    }

    /// Name of this CA (`ca`, `etcd-ca`, `front-proxy-ca`, or what the caller chose).
    pub fn name(&self) -> &str {
        &self.kind_name
    }

    /// Path of the CA certificate.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// Path where the CA key is (or would be) stored.
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// `true` when the CA key is absent: certificates can be checked but not signed.
    pub fn is_externally_managed(&self) -> bool {
        self.key.is_none()
    }

    /// End of the CA's validity.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// kubeadm discovery hash: `sha256:<hex SHA-256 of the CA's SubjectPublicKeyInfo DER>`.
    pub fn cert_hash(&self) -> String {
        spki_hash(&self.public_key_info)
    }

    /// Fails with a clear message when the CA cannot sign anything.
    pub(crate) fn require_key(&self, target: &str, reason: &str) -> Result<&KeyPair, PkiError> {
        self.key.as_ref().ok_or_else(|| PkiError::ExternalCa {
            target: target.to_string(),
            reason: reason.to_string(),
            ca_cert: self.cert_path.clone(),
            ca_key: self.key_path.clone(),
        })
    }

    /// `true` when `cert` names this CA as issuer (byte-exact, as Go's verifier requires) and
    /// its signature verifies with this CA's public key.
    pub(crate) fn signed(&self, cert: &X509Certificate<'_>) -> bool {
        if cert.issuer().as_raw() != self.subject.as_slice() {
            return false;
        }
        match SubjectPublicKeyInfo::from_der(&self.public_key_info) {
            Ok((_, spki)) => cert.verify_signature(Some(&spki)).is_ok(),
            Err(_) => false,
        }
    }

    /// Signs a leaf certificate for `public_key` and returns its DER.
    ///
    /// Validity runs from a few minutes ago for `request.validity`, capped at the CA's own expiry
    /// so the chain stays valid.
    pub(crate) fn sign(
        &self,
        request: &LeafRequest,
        public_key: &impl PublicKeyData,
        target: &str,
    ) -> Result<Vec<u8>, PkiError> {
        let ca_key = self.require_key(target, "it has to be issued")?;
        let issuer = Issuer::from_ca_cert_der(&self.cert_der.as_slice().into(), ca_key)
            .map_err(|e| PkiError::crypto(target, format!("reading CA {}: {e}", self.kind_name)))?;
        let now = now_seconds();
        let mut params = CertificateParams::default();
        // The real subject is put in below; a placeholder keeps rcgen from marking the SAN
        // extension critical, which RFC 5280 reserves for certificates with an empty subject.
        let mut draft_subject = DistinguishedName::new();
        if request.subject != EMPTY_NAME {
            draft_subject.push(DnType::CommonName, "placeholder");
        }
        params.distinguished_name = draft_subject;
        params.subject_alt_names = request.sans.clone();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = request.key_usages.clone();
        params.extended_key_usages = request.extended_key_usages.clone();
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        params.not_before = (now - BACKDATE).max(self.not_before);
        params.not_after = (now + request.validity).min(self.not_after);
        let draft = params
            .signed_by(public_key, &issuer)
            .map_err(|e| PkiError::crypto(target, e))?;
        replace_names_and_resign(draft.der(), &self.subject, &request.subject, ca_key)
            .map_err(|e| PkiError::crypto(target, e))
    }
}

/// A certificate requested for someone else's key, e.g. from a CertificateSigningRequest: the
/// exact subject Name and public key of the request, with the usages the signer allows.
#[derive(Debug, Clone)]
pub struct RequestedCertificate {
    /// DER of the subject Name, copied byte for byte (several `O` values survive).
    pub subject_der: Vec<u8>,
    /// DER SubjectPublicKeyInfo of the requester's key.
    pub public_key_der: Vec<u8>,
    /// Subject alternative names.
    pub sans: Vec<SubjectAltName>,
    /// Key usages.
    pub key_usages: Vec<KeyUsagePurpose>,
    /// Extended key usages.
    pub extended_key_usages: Vec<ExtendedKeyUsagePurpose>,
    /// Requested validity (capped at the CA's expiry).
    pub validity: Duration,
}

impl CertificateAuthority {
    /// Signs a certificate for a requester's public key (CSR signing) and returns it as PEM.
    /// `target` names the request in errors.
    pub fn sign_requested(
        &self,
        request: &RequestedCertificate,
        target: &str,
    ) -> Result<String, PkiError> {
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(&request.public_key_der)
            .map_err(|e| PkiError::crypto(target, format!("unsupported public key: {e}")))?;
        let leaf = LeafRequest {
            subject: request.subject_der.clone(),
            sans: request
                .sans
                .iter()
                .map(SubjectAltName::to_rcgen)
                .collect::<Result<_, _>>()?,
            key_usages: request.key_usages.clone(),
            extended_key_usages: request.extended_key_usages.clone(),
            validity: request.validity,
        };
        let der = self.sign(&leaf, &public_key, target)?;
        Ok(der_to_pem(&der))
    }
}

/// Puts `issuer` and `subject` (DER Names) into a certificate built by rcgen and signs it again.
///
/// rcgen re-encodes the issuer from the CA's parsed subject and allows only one value per
/// attribute type; Go clients match issuer to CA subject byte for byte, and Kubernetes groups
/// need several `O` values. So the TBS certificate is rebuilt around the exact Name bytes.
fn replace_names_and_resign(
    draft: &[u8],
    issuer: &[u8],
    subject: &[u8],
    signer: &KeyPair,
) -> Result<Vec<u8>, String> {
    use x509_parser::der_parser::asn1_rs::{Any, Header};
    let (_, cert) = x509_parser::parse_x509_certificate(draft)
        .map_err(|e| format!("draft certificate: {e}"))?;
    let tbs: &[u8] = cert.tbs_certificate.as_ref();
    let offset_in = |outer: &[u8], inner: &[u8]| inner.as_ptr() as usize - outer.as_ptr() as usize;
    let draft_issuer = cert.tbs_certificate.issuer.as_raw();
    let draft_subject = cert.tbs_certificate.subject.as_raw();
    let (i0, s0) = (offset_in(tbs, draft_issuer), offset_in(tbs, draft_subject));
    let (i1, s1) = (i0 + draft_issuer.len(), s0 + draft_subject.len());
    let (after_header, _) = Header::from_der(tbs).map_err(|e| format!("draft TBS header: {e}"))?;
    let header_len = tbs.len() - after_header.len();
    let mut content = Vec::with_capacity(tbs.len() + subject.len() + issuer.len());
    content.extend_from_slice(&tbs[header_len..i0]);
    content.extend_from_slice(issuer);
    content.extend_from_slice(&tbs[i1..s0]);
    content.extend_from_slice(subject);
    content.extend_from_slice(&tbs[s1..]);
    let new_tbs = yasna::construct_der(|w| w.write_sequence(|w| w.next().write_der(&content)));

    // The signatureAlgorithm element follows the TBS certificate in the draft; reuse it verbatim.
    let after_tbs = &draft[offset_in(draft, tbs) + tbs.len()..];
    let (rest, _) =
        Any::from_der(after_tbs).map_err(|e| format!("draft signature algorithm: {e}"))?;
    let algorithm = &after_tbs[..after_tbs.len() - rest.len()];

    let signature = signer.sign(&new_tbs).map_err(|e| e.to_string())?;
    Ok(yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_der(&new_tbs);
            w.next().write_der(algorithm);
            w.next().write_bitvec_bytes(&signature, signature.len() * 8);
        })
    }))
}

/// `sha256:<hex>` over a DER SubjectPublicKeyInfo.
pub(crate) fn spki_hash(spki_der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(spki_der)))
}

/// kubeadm discovery hash of a CA certificate given as PEM:
/// `sha256:<hex of SHA-256 over the certificate's SubjectPublicKeyInfo DER>`.
pub fn ca_cert_hash(ca_cert_pem: &[u8]) -> Result<String, PkiError> {
    let path = Path::new("<CA certificate>");
    let der = pem_to_der(ca_cert_pem, path)?;
    let cert = parse_der(&der, path)?;
    Ok(spki_hash(cert.public_key().raw))
}

/// DER of the first `CERTIFICATE` block of a PEM file.
pub(crate) fn pem_to_der(pem: &[u8], path: &Path) -> Result<Vec<u8>, PkiError> {
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        match block {
            Ok(b) if b.label == "CERTIFICATE" => return Ok(b.contents),
            Ok(_) => continue,
            Err(e) => {
                return Err(PkiError::InvalidCertificate {
                    path: path.to_path_buf(),
                    reason: format!("PEM: {e}"),
                })
            }
        }
    }
    Err(PkiError::InvalidCertificate {
        path: path.to_path_buf(),
        reason: "no CERTIFICATE PEM block".into(),
    })
}

/// Parses certificate DER, naming `path` on failure.
pub(crate) fn parse_der<'a>(der: &'a [u8], path: &Path) -> Result<X509Certificate<'a>, PkiError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c)
        .map_err(|e| PkiError::InvalidCertificate {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// DER → PEM (`CERTIFICATE`).
pub fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Subject common name of a certificate (first CN).
pub(crate) fn common_name(cert: &X509Certificate<'_>) -> Option<String> {
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_string)
}

/// All subject `O` values of a certificate, in order.
pub(crate) fn organizations(cert: &X509Certificate<'_>) -> Vec<String> {
    cert.subject()
        .iter_organization()
        .filter_map(|a| a.as_str().ok())
        .map(str::to_string)
        .collect()
}

/// DNS and IP subject alternative names of a certificate.
pub(crate) fn subject_alt_names(cert: &X509Certificate<'_>) -> Vec<SubjectAltName> {
    let mut out = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => out.push(SubjectAltName::Dns(d.to_ascii_lowercase())),
                GeneralName::IPAddress(b) => {
                    if let Some(ip) = ip_from_bytes(b) {
                        out.push(SubjectAltName::Ip(ip));
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// `true` if the certificate allows every usage in `usages`.
pub(crate) fn has_usages(cert: &X509Certificate<'_>, usages: &[Usage]) -> bool {
    let Ok(Some(eku)) = cert.extended_key_usage() else {
        return usages.is_empty();
    };
    usages.iter().all(|u| match u {
        Usage::ServerAuth => eku.value.server_auth || eku.value.any,
        Usage::ClientAuth => eku.value.client_auth || eku.value.any,
    })
}

/// `true` if the private key belongs to the certificate.
pub(crate) fn key_matches(cert: &X509Certificate<'_>, key: &KeyPair) -> bool {
    key.der_bytes() == cert.public_key().subject_public_key.data.as_ref()
}

/// `true` if the certificate's key is RSA.
pub(crate) fn is_rsa(key: &KeyPair) -> bool {
    key.algorithm() == &rcgen::PKCS_RSA_SHA256
}

/// Public key of an existing certificate, usable to sign a renewed certificate for it.
pub(crate) fn certificate_public_key(
    cert: &X509Certificate<'_>,
    path: &Path,
) -> Result<rcgen::SubjectPublicKeyInfo, PkiError> {
    rcgen::SubjectPublicKeyInfo::from_der(cert.public_key().raw).map_err(|e| {
        PkiError::InvalidCertificate {
            path: path.to_path_buf(),
            reason: format!("unsupported public key: {e}"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_ca(dir: &Path, alg: KeyAlgorithm) -> CertificateAuthority {
        CertificateAuthority::create(dir, CaKind::Kubernetes, alg, Duration::days(10)).unwrap()
    }

    #[test]
    fn leaf_with_several_groups_chains_to_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = test_ca(dir.path(), KeyAlgorithm::EcdsaP256);
        let key = keys::generate_key(KeyAlgorithm::EcdsaP256, "leaf").unwrap();
        let groups = vec![
            "dev".to_string(),
            "ops".to_string(),
            "system:masters".into(),
        ];
        let req = LeafRequest::new(
            "alice",
            &groups,
            &[
                SubjectAltName::classify("10.0.0.1"),
                SubjectAltName::classify("Host.Example"),
            ],
            &[Usage::ClientAuth],
            false,
            Duration::days(1),
        )
        .unwrap();
        let der = ca.sign(&req, &key, "alice").unwrap();
        let x = parse_der(&der, Path::new("alice")).unwrap();
        assert_eq!(common_name(&x).as_deref(), Some("alice"));
        assert_eq!(organizations(&x), groups);
        assert_eq!(
            subject_alt_names(&x),
            vec![
                SubjectAltName::Ip("10.0.0.1".parse().unwrap()),
                SubjectAltName::Dns("host.example".into())
            ]
        );
        assert!(
            !x.subject_alternative_name().unwrap().unwrap().critical,
            "SAN must not be critical when the subject is set"
        );
        assert!(ca.signed(&x), "signature must verify against the CA");
        assert!(key_matches(&x, &key));
        assert!(has_usages(&x, &[Usage::ClientAuth]));
        assert!(!has_usages(&x, &[Usage::ServerAuth]));
        assert!(x.validity().not_after.to_datetime() <= ca.not_after());
        assert!(x.subject().to_string().contains("O=dev"));
    }

    #[test]
    fn leaf_validity_is_capped_at_ca_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let ca = test_ca(dir.path(), KeyAlgorithm::EcdsaP256);
        let key = keys::generate_key(KeyAlgorithm::EcdsaP256, "leaf").unwrap();
        let req = LeafRequest::new(
            "x",
            &[],
            &[],
            &[Usage::ClientAuth],
            false,
            Duration::days(400),
        )
        .unwrap();
        let der = ca.sign(&req, &key, "x").unwrap();
        let x = parse_der(&der, Path::new("x")).unwrap();
        assert_eq!(x.validity().not_after.to_datetime(), ca.not_after());
    }

    #[test]
    fn rsa_ca_signs_rsa_leaf() {
        let dir = tempfile::tempdir().unwrap();
        let ca = test_ca(dir.path(), KeyAlgorithm::Rsa2048);
        let key = keys::generate_key(KeyAlgorithm::Rsa2048, "leaf").unwrap();
        assert!(is_rsa(&key));
        let req = LeafRequest::new(
            "kube-apiserver",
            &[],
            &[SubjectAltName::classify("kubernetes")],
            &[Usage::ServerAuth],
            true,
            Duration::days(1),
        )
        .unwrap();
        let der = ca.sign(&req, &key, "apiserver").unwrap();
        let x = parse_der(&der, Path::new("x")).unwrap();
        assert!(ca.signed(&x));
        let ku = x.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && ku.key_encipherment());
        // Loading the CA back from disk (PKCS#8 RSA key) works and keeps it usable.
        let again = CertificateAuthority::load(dir.path(), CaKind::Kubernetes).unwrap();
        assert!(!again.is_externally_managed());
        assert!(again.signed(&x));
    }

    #[test]
    fn ca_without_key_is_externally_managed_and_refuses_to_sign() {
        let dir = tempfile::tempdir().unwrap();
        test_ca(dir.path(), KeyAlgorithm::EcdsaP256);
        std::fs::remove_file(CaKind::Kubernetes.key_path(dir.path())).unwrap();
        let ca = CertificateAuthority::load(dir.path(), CaKind::Kubernetes).unwrap();
        assert!(ca.is_externally_managed());
        let key = keys::generate_key(KeyAlgorithm::EcdsaP256, "leaf").unwrap();
        let req = LeafRequest::new(
            "x",
            &[],
            &[],
            &[Usage::ClientAuth],
            false,
            Duration::days(1),
        )
        .unwrap();
        let msg = ca
            .sign(&req, &key, "apiserver.crt")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("externally managed"), "{msg}");
        assert!(msg.contains("ca.key"), "{msg}");
    }

    #[test]
    fn ca_with_foreign_key_is_rejected() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        test_ca(a.path(), KeyAlgorithm::EcdsaP256);
        test_ca(b.path(), KeyAlgorithm::EcdsaP256);
        std::fs::copy(
            CaKind::Kubernetes.key_path(b.path()),
            CaKind::Kubernetes.key_path(a.path()),
        )
        .unwrap();
        let err = CertificateAuthority::load(a.path(), CaKind::Kubernetes).unwrap_err();
        assert!(matches!(err, PkiError::KeyMismatch { .. }), "{err}");
    }

    #[test]
    fn ca_hash_is_sha256_of_spki() {
        let dir = tempfile::tempdir().unwrap();
        let ca = test_ca(dir.path(), KeyAlgorithm::EcdsaP256);
        let hash = ca_cert_hash(ca.cert_pem().as_bytes()).unwrap();
        assert_eq!(hash, ca.cert_hash());
        let hex_part = hash.strip_prefix("sha256:").unwrap();
        assert_eq!(hex_part.len(), 64);
        assert!(hex_part
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        let x = parse_der(ca.cert_der(), Path::new("ca")).unwrap();
        let expected = hex::encode(Sha256::digest(x.public_key().raw));
        assert_eq!(hex_part, expected);
        assert!(ca_cert_hash(b"not pem").is_err());
    }

    #[test]
    fn der_pem_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let ca = test_ca(dir.path(), KeyAlgorithm::EcdsaP256);
        let pem = der_to_pem(ca.cert_der());
        assert_eq!(
            pem_to_der(pem.as_bytes(), Path::new("x")).unwrap(),
            ca.cert_der()
        );
    }

    #[test]
    fn classify_sans() {
        assert_eq!(
            SubjectAltName::classify("fd00::1"),
            SubjectAltName::Ip("fd00::1".parse().unwrap())
        );
        assert_eq!(
            SubjectAltName::classify("[fd00::1]"),
            SubjectAltName::Ip("fd00::1".parse().unwrap())
        );
        assert_eq!(
            SubjectAltName::classify("API.example.com"),
            SubjectAltName::Dns("api.example.com".into())
        );
    }
}
