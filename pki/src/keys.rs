//! Private keys: generation (ECDSA P-256 through ring, RSA through the `rsa` crate because ring
//! cannot generate RSA keys), PEM encoding, and loading of the PEM flavours kubeadm writes.

use std::path::Path;

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256};
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey, LineEnding};
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde::{Deserialize, Serialize};

use crate::error::PkiError;

/// Key algorithm for newly generated certificate keys (kubeadm's `encryptionAlgorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum KeyAlgorithm {
    /// ECDSA on the NIST P-256 curve, signed with SHA-256 (default).
    #[default]
    #[serde(rename = "ecdsa-p256")]
    EcdsaP256,
    /// RSA with a 2048-bit modulus, PKCS#1 v1.5 signatures with SHA-256.
    #[serde(rename = "rsa-2048")]
    Rsa2048,
}

impl KeyAlgorithm {
    /// The spelling used in configuration files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::Rsa2048 => "rsa-2048",
        }
    }
}

impl std::fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for KeyAlgorithm {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<Self, PkiError> {
        match s.to_ascii_lowercase().as_str() {
            "ecdsa-p256" => Ok(KeyAlgorithm::EcdsaP256),
            "rsa-2048" => Ok(KeyAlgorithm::Rsa2048),
            other => Err(PkiError::spec(
                "key_algorithm",
                format!("`{other}` is not supported; use `ecdsa-p256` or `rsa-2048`"),
            )),
        }
    }
}

/// Operating-system randomness as the `rand_core` generator the `rsa` crate expects.
fn os_rng() -> rsa::rand_core::UnwrapErr<getrandom::SysRng> {
    rsa::rand_core::UnwrapErr(getrandom::SysRng)
}

/// Generates a new RSA private key of `bits` bits.
pub(crate) fn generate_rsa(bits: usize, what: &str) -> Result<RsaPrivateKey, PkiError> {
    RsaPrivateKey::new(&mut os_rng(), bits).map_err(|e| PkiError::crypto(what, e))
}

/// Generates a signing key pair for a certificate.
pub(crate) fn generate_key(alg: KeyAlgorithm, what: &str) -> Result<KeyPair, PkiError> {
    match alg {
        KeyAlgorithm::EcdsaP256 => {
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| PkiError::crypto(what, e))
        }
        KeyAlgorithm::Rsa2048 => {
            let key = generate_rsa(2048, what)?;
            let der = key.to_pkcs8_der().map_err(|e| PkiError::crypto(what, e))?;
            KeyPair::from_pkcs8_der_and_sign_algo(&der.as_bytes().into(), &PKCS_RSA_SHA256)
                .map_err(|e| PkiError::crypto(what, e))
        }
    }
}

/// PEM ("PRIVATE KEY", PKCS#8) for a certificate key.
pub(crate) fn key_pem(key: &KeyPair) -> String {
    key.serialize_pem()
}

/// Parses a private key PEM: PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`) or SEC1 P-256
/// (`EC PRIVATE KEY`, what kubeadm writes for ECDSA keys). ring only reads PKCS#8, so the
/// other two are re-encoded as PKCS#8 first.
pub(crate) fn parse_key_pem(pem: &[u8], path: &Path) -> Result<KeyPair, PkiError> {
    let invalid = |reason: String| PkiError::InvalidKey {
        path: path.to_path_buf(),
        reason,
    };
    let (_, block) =
        x509_parser::pem::parse_x509_pem(pem).map_err(|e| invalid(format!("no PEM block: {e}")))?;
    let pkcs8: Vec<u8> = match block.label.as_str() {
        "PRIVATE KEY" => block.contents.clone(),
        "RSA PRIVATE KEY" => RsaPrivateKey::from_pkcs1_der(&block.contents)
            .map_err(|e| invalid(format!("PKCS#1 RSA key: {e}")))?
            .to_pkcs8_der()
            .map_err(|e| invalid(format!("PKCS#1 RSA key: {e}")))?
            .as_bytes()
            .to_vec(),
        "EC PRIVATE KEY" => {
            use p256::pkcs8::EncodePrivateKey as _;
            p256::SecretKey::from_sec1_der(&block.contents)
                .map_err(|e| invalid(format!("SEC1 EC key (only P-256 is read): {e}")))?
                .to_pkcs8_der()
                .map_err(|e| invalid(format!("SEC1 EC key: {e}")))?
                .as_bytes()
                .to_vec()
        }
        other => return Err(invalid(format!("unexpected PEM block `{other}`"))),
    };
    KeyPair::try_from(pkcs8.as_slice()).map_err(|e| invalid(e.to_string()))
}

/// Reads and parses a private key file.
#[cfg(test)]
pub(crate) fn load_key(path: &Path) -> Result<KeyPair, PkiError> {
    let pem = std::fs::read(path).map_err(|e| PkiError::io("read", path, e))?;
    parse_key_pem(&pem, path)
}

/// The service-account signing key pair, kept as the RSA type for PKCS#1/PKIX encodings.
pub(crate) struct ServiceAccountKey(pub(crate) RsaPrivateKey);

impl ServiceAccountKey {
    /// A fresh RSA-2048 key (RS256 service-account tokens).
    pub(crate) fn generate() -> Result<Self, PkiError> {
        generate_rsa(2048, "service-account key sa.key").map(ServiceAccountKey)
    }

    /// Parses `sa.key` (PKCS#1 as kubeadm writes it, or PKCS#8).
    pub(crate) fn parse(pem: &[u8], path: &Path) -> Result<Self, PkiError> {
        let text = std::str::from_utf8(pem).map_err(|_| PkiError::InvalidKey {
            path: path.to_path_buf(),
            reason: "not UTF-8 PEM text".into(),
        })?;
        RsaPrivateKey::from_pkcs1_pem(text)
            .or_else(|_| RsaPrivateKey::from_pkcs8_pem(text))
            .map(ServiceAccountKey)
            .map_err(|e| PkiError::InvalidKey {
                path: path.to_path_buf(),
                reason: format!("expected an RSA private key: {e}"),
            })
    }

    /// `RSA PRIVATE KEY` PEM (PKCS#1), the encoding kubeadm uses for `sa.key`.
    pub(crate) fn private_pem(&self) -> Result<String, PkiError> {
        self.0
            .to_pkcs1_pem(LineEnding::LF)
            .map(|p| p.to_string())
            .map_err(|e| PkiError::crypto("encode sa.key", e))
    }

    /// `PUBLIC KEY` PEM (PKIX SubjectPublicKeyInfo) for `sa.pub`.
    pub(crate) fn public_pem(&self) -> Result<String, PkiError> {
        RsaPublicKey::from(&self.0)
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| PkiError::crypto("encode sa.pub", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::PublicKeyData;

    #[test]
    fn ecdsa_key_round_trips_through_pkcs8_pem() {
        let key = generate_key(KeyAlgorithm::EcdsaP256, "test").unwrap();
        let pem = key_pem(&key);
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let back = parse_key_pem(pem.as_bytes(), Path::new("k")).unwrap();
        assert_eq!(back.der_bytes(), key.der_bytes());
        assert_eq!(back.algorithm(), &PKCS_ECDSA_P256_SHA256);
    }

    #[test]
    fn sec1_and_pkcs1_keys_are_accepted() {
        // SEC1 "EC PRIVATE KEY" as kubeadm writes ECDSA keys.
        let secret = p256::SecretKey::from_slice(&[7u8; 32]).unwrap();
        let sec1 = secret.to_sec1_pem(p256::pkcs8::LineEnding::LF).unwrap();
        assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"));
        let kp = parse_key_pem(sec1.as_bytes(), Path::new("ec.key")).unwrap();
        assert_eq!(kp.algorithm(), &PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            kp.der_bytes(),
            secret.public_key().to_sec1_bytes().as_ref(),
            "public point must survive the SEC1 -> PKCS#8 conversion"
        );
    }

    #[test]
    fn garbage_key_names_the_file() {
        let err = parse_key_pem(b"nope", Path::new("/x/bad.key")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/x/bad.key"), "{msg}");
        let wrong = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let msg = parse_key_pem(wrong.as_bytes(), Path::new("c"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("CERTIFICATE"), "{msg}");
    }

    #[test]
    fn key_algorithm_parses_and_serializes() {
        assert_eq!(
            "RSA-2048".parse::<KeyAlgorithm>().unwrap(),
            KeyAlgorithm::Rsa2048
        );
        assert!("dsa".parse::<KeyAlgorithm>().is_err());
        assert_eq!(
            serde_yaml::to_string(&KeyAlgorithm::EcdsaP256)
                .unwrap()
                .trim(),
            "ecdsa-p256"
        );
    }
}
