//! Mapping a verified TLS client certificate to a user: CN is the user name, every O is a group.

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{AuthError, UserInfo};

/// Maps the leaf certificate of an already verified client chain to a user.
///
/// The user name is the subject's CN (the last one when several are present, as Go's x509
/// package reads it) and the groups are all O values, plus `system:authenticated`. The
/// certificate must be inside its validity period and, when it has an extended key usage
/// extension, allow client authentication.
pub fn user_from_client_certificate(leaf_der: &[u8]) -> Result<UserInfo, AuthError> {
    let (_, cert) = X509Certificate::from_der(leaf_der).map_err(|e| {
        AuthError::unauthorized(format!("client certificate is not valid DER X.509: {e}"))
    })?;
    let subject = cert.subject();
    let text = |value: &x509_parser::x509::AttributeTypeAndValue<'_>, what: &str| {
        value.as_str().map(str::to_owned).map_err(|e| {
            AuthError::unauthorized(format!(
                "client certificate subject `{subject}`: {what} is not a string: {e}"
            ))
        })
    };
    let mut name = String::new();
    for cn in subject.iter_common_name() {
        name = text(cn, "CN")?;
    }
    if name.is_empty() {
        return Err(AuthError::unauthorized(format!(
            "client certificate subject `{subject}` has no common name (CN); \
             sign client certificates with CN=<user name>"
        )));
    }
    let mut groups = Vec::new();
    for org in subject.iter_organization() {
        groups.push(text(org, "O")?);
    }
    let validity = cert.validity();
    if !validity.is_valid() {
        return Err(AuthError::unauthorized(format!(
            "client certificate for `{name}` is only valid from {} to {}; renew it (`kinit certs renew`)",
            validity.not_before, validity.not_after
        )));
    }
    if let Ok(Some(eku)) = cert.extended_key_usage() {
        if !eku.value.any && !eku.value.client_auth {
            return Err(AuthError::unauthorized(format!(
                "client certificate for `{name}` does not allow client authentication \
                 (extended key usage lacks clientAuth)"
            )));
        }
    }
    Ok(UserInfo::new(name, groups).with_authenticated_group())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GROUP_AUTHENTICATED;
    use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair};

    fn cert(
        cn: Option<&str>,
        orgs: &[&str],
        eku: ExtendedKeyUsagePurpose,
        expired: bool,
    ) -> Vec<u8> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        for org in orgs {
            dn.push(DnType::OrganizationName, *org);
        }
        if let Some(cn) = cn {
            dn.push(DnType::CommonName, cn);
        }
        params.distinguished_name = dn;
        params.extended_key_usages = vec![eku];
        if expired {
            params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(30);
            params.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        }
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    /// A client certificate issued by kinit-pki (several O= values, which rcgen alone cannot
    /// write) under a throwaway CA.
    fn kinit_client_cert(user: &str, groups: &[&str]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "test-ca");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        let (cert_path, key_path) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
        std::fs::write(&cert_path, ca.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let ca = kinit_pki::CertificateAuthority::load_files("ca", &cert_path, &key_path).unwrap();
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        let issued = kinit_pki::issue_client_certificate(
            &ca,
            user,
            &groups,
            time::Duration::hours(1),
            kinit_pki::KeyAlgorithm::EcdsaP256,
        )
        .unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(issued.cert_pem.as_bytes()).unwrap();
        pem.contents
    }

    #[test]
    fn cn_is_user_and_organizations_are_groups() {
        let der = kinit_client_cert("kubernetes-admin", &["kubeadm:cluster-admins", "dev"]);
        let user = user_from_client_certificate(&der).unwrap();
        assert_eq!(user.name, "kubernetes-admin");
        assert_eq!(
            user.groups,
            vec!["kubeadm:cluster-admins", "dev", GROUP_AUTHENTICATED]
        );
        assert!(user.uid.is_empty() && user.extra.is_empty());
    }

    #[test]
    fn node_certificate_maps_to_node_user() {
        let der = cert(
            Some("system:node:worker-1"),
            &["system:nodes"],
            ExtendedKeyUsagePurpose::ClientAuth,
            false,
        );
        let user = user_from_client_certificate(&der).unwrap();
        assert_eq!(user.node_name(), Some("worker-1"));
    }

    #[test]
    fn missing_cn_expired_and_server_only_certs_are_rejected() {
        let no_cn = cert(None, &["dev"], ExtendedKeyUsagePurpose::ClientAuth, false);
        let err = user_from_client_certificate(&no_cn).unwrap_err();
        assert!(err.to_string().contains("no common name"), "{err}");

        let expired = cert(Some("bob"), &[], ExtendedKeyUsagePurpose::ClientAuth, true);
        let err = user_from_client_certificate(&expired).unwrap_err();
        assert!(err.to_string().contains("renew"), "{err}");

        let server = cert(Some("bob"), &[], ExtendedKeyUsagePurpose::ServerAuth, false);
        let err = user_from_client_certificate(&server).unwrap_err();
        assert!(err.to_string().contains("clientAuth"), "{err}");

        let err = user_from_client_certificate(b"not a cert").unwrap_err();
        assert_eq!(err.http_status(), 401);
    }
}
