//! Client identities signed by the cluster CA: certificates for `(user, groups)` and
//! kubeconfigs embedding them (`kinit kubeconfig --user alice --group dev`).

use std::path::Path;

use time::Duration;

use crate::cert::{self, CertificateAuthority, LeafRequest, SubjectAltName, Usage};
use crate::error::PkiError;
use crate::files::{self, MODE_SECRET};
use crate::keys::{self, KeyAlgorithm};
use crate::kubeconfig::Kubeconfig;

/// A client certificate and its private key, both PEM.
#[derive(Clone)]
pub struct ClientCertificate {
    /// `CERTIFICATE` PEM.
    pub cert_pem: String,
    /// `PRIVATE KEY` (PKCS#8) PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Issues a client-auth certificate with `CN=<user>` and one `O=` per group (Kubernetes reads
/// these as user name and groups), with a fresh key of `algorithm`, valid for `validity`.
pub fn issue_client_certificate(
    ca: &CertificateAuthority,
    user: &str,
    groups: &[String],
    validity: Duration,
    algorithm: KeyAlgorithm,
) -> Result<ClientCertificate, PkiError> {
    if user.trim().is_empty() {
        return Err(PkiError::spec(
            "user",
            "the user name (certificate CN) must not be empty",
        ));
    }
    if let Some(i) = groups.iter().position(|g| g.trim().is_empty()) {
        return Err(PkiError::spec(
            format!("groups[{i}]"),
            "group names must not be empty",
        ));
    }
    if validity <= Duration::ZERO {
        return Err(PkiError::spec("validity", "must be positive"));
    }
    let target = format!("client certificate for `{user}`");
    ca.require_key(&target, "it has to be issued")?;
    let key = keys::generate_key(algorithm, &target)?;
    let request = LeafRequest::new(
        user,
        groups,
        &[],
        &[Usage::ClientAuth],
        cert::is_rsa(&key),
        validity,
    )?;
    let der = ca.sign(&request, &key, &target)?;
    Ok(ClientCertificate {
        cert_pem: cert::der_to_pem(&der),
        key_pem: keys::key_pem(&key),
    })
}

/// Issues a serving certificate (server auth) for `common_name` with `sans` (DNS names and IP
/// addresses), e.g. a node agent's HTTPS endpoint, signed by `ca` with a fresh key.
pub fn issue_serving_certificate(
    ca: &CertificateAuthority,
    common_name: &str,
    sans: &[SubjectAltName],
    validity: Duration,
    algorithm: KeyAlgorithm,
) -> Result<ClientCertificate, PkiError> {
    if common_name.trim().is_empty() {
        return Err(PkiError::spec("common_name", "must not be empty"));
    }
    if sans.is_empty() {
        return Err(PkiError::spec(
            "sans",
            "a serving certificate needs at least one DNS name or IP address",
        ));
    }
    if validity <= Duration::ZERO {
        return Err(PkiError::spec("validity", "must be positive"));
    }
    let target = format!("serving certificate for `{common_name}`");
    ca.require_key(&target, "it has to be issued")?;
    let key = keys::generate_key(algorithm, &target)?;
    let request = LeafRequest::new(
        common_name,
        &[],
        sans,
        &[Usage::ServerAuth],
        cert::is_rsa(&key),
        validity,
    )?;
    let der = ca.sign(&request, &key, &target)?;
    Ok(ClientCertificate {
        cert_pem: cert::der_to_pem(&der),
        key_pem: keys::key_pem(&key),
    })
}

/// A kubeconfig for `user` (in `groups`) against `server` (`https://host:port`), cluster named
/// `cluster_name`, context `<user>@<cluster_name>`, embedding the CA and a new client certificate.
pub fn client_kubeconfig(
    ca: &CertificateAuthority,
    cluster_name: &str,
    server: &str,
    user: &str,
    groups: &[String],
    validity: Duration,
    algorithm: KeyAlgorithm,
) -> Result<Kubeconfig, PkiError> {
    if !server.starts_with("https://") {
        return Err(PkiError::spec(
            "server",
            format!("`{server}` must be an https:// URL such as https://10.0.0.10:6443"),
        ));
    }
    let client = issue_client_certificate(ca, user, groups, validity, algorithm)?;
    Ok(Kubeconfig::with_client_certificate(
        cluster_name,
        server,
        ca.cert_pem(),
        user,
        &client.cert_pem,
        &client.key_pem,
    ))
}

/// Writes a kubeconfig atomically with mode 0600 (it contains a private key).
pub fn write_kubeconfig(path: &Path, kubeconfig: &Kubeconfig) -> Result<(), PkiError> {
    files::write_atomic(path, kubeconfig.to_yaml()?.as_bytes(), MODE_SECRET)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::CaKind;

    #[test]
    fn kubeconfig_for_user_and_groups() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::create(
            dir.path(),
            CaKind::Kubernetes,
            KeyAlgorithm::EcdsaP256,
            Duration::days(30),
        )
        .unwrap();
        let groups = vec!["dev".to_string(), "qa".to_string()];
        let kc = client_kubeconfig(
            &ca,
            "prod",
            "https://10.0.0.10:6443",
            "alice",
            &groups,
            Duration::days(7),
            KeyAlgorithm::EcdsaP256,
        )
        .unwrap();
        assert_eq!(kc.current_context, "alice@prod");
        let path = dir.path().join("alice.conf");
        write_kubeconfig(&path, &kc).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let back = Kubeconfig::load(&path).unwrap();
        let (cert_pem, key_pem) = back.client_credentials(&path).unwrap();
        let der = cert::pem_to_der(&cert_pem, &path).unwrap();
        let x = cert::parse_der(&der, &path).unwrap();
        assert_eq!(cert::common_name(&x).as_deref(), Some("alice"));
        assert_eq!(cert::organizations(&x), groups);
        assert!(ca.signed(&x));
        let key = keys::parse_key_pem(&key_pem, &path).unwrap();
        assert!(cert::key_matches(&x, &key));
        let days =
            (x.validity().not_after.to_datetime() - time::OffsetDateTime::now_utc()).whole_days();
        assert!((6..=7).contains(&days), "{days}");
        assert_eq!(back.ca_data().unwrap(), ca.cert_pem().as_bytes());
    }

    #[test]
    fn bad_inputs_are_rejected_before_signing() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::create(
            dir.path(),
            CaKind::Kubernetes,
            KeyAlgorithm::EcdsaP256,
            Duration::days(30),
        )
        .unwrap();
        let d = Duration::days(1);
        let alg = KeyAlgorithm::EcdsaP256;
        assert!(issue_client_certificate(&ca, " ", &[], d, alg).is_err());
        assert!(issue_client_certificate(&ca, "bob", &["".into()], d, alg).is_err());
        assert!(issue_client_certificate(&ca, "bob", &[], Duration::ZERO, alg).is_err());
        let err = client_kubeconfig(&ca, "c", "10.0.0.1:6443", "bob", &[], d, alg).unwrap_err();
        assert!(err.to_string().contains("https://"), "{err}");
    }
}
