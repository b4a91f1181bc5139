//! Loading the service-account RSA keys (`sa.key`, `sa.pub`) in the PEM flavours clusters hold.

use base64::Engine;
use jsonwebtoken::{DecodingKey, EncodingKey};
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey, EncodeRsaPrivateKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256};
use x509_parser::pem::Pem;

use crate::AuthError;

/// Smallest RSA modulus accepted for service-account keys (ring refuses smaller ones).
const MIN_RSA_BITS: usize = 2048;

/// One public key able to verify RS256 service-account tokens.
#[derive(Clone)]
pub(crate) struct VerifyingKey {
    pub(crate) key_id: String,
    pub(crate) decoding: DecodingKey,
}

/// The private key that signs service-account tokens.
pub(crate) struct SigningKey {
    pub(crate) key_id: String,
    pub(crate) encoding: EncodingKey,
}

/// The `kid` Kubernetes puts in token headers: unpadded base64url of SHA-256 over the PKIX
/// (SubjectPublicKeyInfo) DER of the public key.
fn key_id(public: &RsaPublicKey) -> Result<String, AuthError> {
    let der = public
        .to_public_key_der()
        .map_err(|e| AuthError::InvalidKey(format!("cannot encode RSA public key: {e}")))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(der.as_bytes())))
}

fn check_size(public: &RsaPublicKey, what: &str) -> Result<(), AuthError> {
    let bits = public.size() * 8;
    if bits < MIN_RSA_BITS {
        return Err(AuthError::InvalidKey(format!(
            "{what}: RSA key has {bits} bits; at least {MIN_RSA_BITS} are required, generate a new sa.key"
        )));
    }
    Ok(())
}

fn verifying(public: &RsaPublicKey, what: &str) -> Result<VerifyingKey, AuthError> {
    check_size(public, what)?;
    Ok(VerifyingKey {
        key_id: key_id(public)?,
        decoding: DecodingKey::from_rsa_raw_components(&public.n_bytes(), &public.e_bytes()),
    })
}

fn pem_blocks(pem: &[u8], what: &str) -> Result<Vec<Pem>, AuthError> {
    let mut blocks = Vec::new();
    for block in Pem::iter_from_buffer(pem) {
        blocks
            .push(block.map_err(|e| AuthError::InvalidKey(format!("{what}: not valid PEM: {e}")))?);
    }
    if blocks.is_empty() {
        return Err(AuthError::InvalidKey(format!(
            "{what}: no PEM block found; expected `-----BEGIN PUBLIC KEY-----` (sa.pub)"
        )));
    }
    Ok(blocks)
}

fn parse_private(block: &Pem, what: &str) -> Result<RsaPrivateKey, AuthError> {
    let parsed = match block.label.as_str() {
        "RSA PRIVATE KEY" => {
            RsaPrivateKey::from_pkcs1_der(&block.contents).map_err(|e| e.to_string())
        }
        "PRIVATE KEY" => RsaPrivateKey::from_pkcs8_der(&block.contents).map_err(|e| e.to_string()),
        other => Err(format!("PEM block `{other}` is not an RSA private key")),
    };
    parsed.map_err(|e| {
        AuthError::InvalidKey(format!(
            "{what}: {e}; service-account tokens need an RSA key (`RSA PRIVATE KEY` or `PRIVATE KEY`)"
        ))
    })
}

/// Reads every RSA public key in one PEM file: `PUBLIC KEY`, `RSA PUBLIC KEY`, `CERTIFICATE`
/// and private keys (whose public half is used), like the API server's `--service-account-key-file`.
pub(crate) fn parse_public_keys(pem: &[u8], what: &str) -> Result<Vec<VerifyingKey>, AuthError> {
    let mut keys = Vec::new();
    for block in pem_blocks(pem, what)? {
        let public = match block.label.as_str() {
            "PUBLIC KEY" => {
                RsaPublicKey::from_public_key_der(&block.contents).map_err(|e| e.to_string())
            }
            "RSA PUBLIC KEY" => {
                RsaPublicKey::from_pkcs1_der(&block.contents).map_err(|e| e.to_string())
            }
            "CERTIFICATE" => block
                .parse_x509()
                .map_err(|e| e.to_string())
                .and_then(|cert| {
                    RsaPublicKey::from_public_key_der(cert.public_key().raw)
                        .map_err(|e| e.to_string())
                }),
            "RSA PRIVATE KEY" | "PRIVATE KEY" => Ok(parse_private(&block, what)?.to_public_key()),
            other => Err(format!("PEM block `{other}` holds no RSA public key")),
        }
        .map_err(|e| {
            AuthError::InvalidKey(format!(
                "{what}: {e}; service-account tokens are RS256, give the RSA sa.pub"
            ))
        })?;
        keys.push(verifying(&public, what)?);
    }
    Ok(keys)
}

/// Reads the RSA private key that signs service-account tokens (`sa.key`).
pub(crate) fn parse_signing_key(pem: &[u8], what: &str) -> Result<SigningKey, AuthError> {
    let blocks = pem_blocks(pem, what)?;
    let Some(block) = blocks.iter().find(|b| b.label.ends_with("PRIVATE KEY")) else {
        return Err(AuthError::InvalidKey(format!(
            "{what}: no private key PEM block; give sa.key, not sa.pub"
        )));
    };
    let private = parse_private(block, what)?;
    let public = private.to_public_key();
    check_size(&public, what)?;
    let der = private
        .to_pkcs1_der()
        .map_err(|e| AuthError::InvalidKey(format!("{what}: cannot re-encode RSA key: {e}")))?;
    Ok(SigningKey {
        key_id: key_id(&public)?,
        encoding: EncodingKey::from_rsa_der(der.as_bytes()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{rsa_key_pem, rsa_public_pem};

    #[test]
    fn public_and_private_halves_share_key_id() {
        let public = parse_public_keys(rsa_public_pem(0).as_bytes(), "sa.pub").unwrap();
        let private = parse_signing_key(rsa_key_pem(0).as_bytes(), "sa.key").unwrap();
        assert_eq!(public.len(), 1);
        assert_eq!(public[0].key_id, private.key_id);
        let other = parse_public_keys(rsa_public_pem(1).as_bytes(), "sa.pub").unwrap();
        assert_ne!(other[0].key_id, private.key_id);
    }

    #[test]
    fn several_blocks_and_private_keys_are_accepted_as_public_keys() {
        let both = format!("{}{}", rsa_public_pem(0), rsa_key_pem(1));
        let keys = parse_public_keys(both.as_bytes(), "keys.pem").unwrap();
        assert_eq!(keys.len(), 2);
    }

    #[test]
    fn garbage_and_ec_keys_are_rejected_with_file_name() {
        let err = parse_public_keys(b"hello", "/etc/kubernetes/pki/sa.pub")
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("/etc/kubernetes/pki/sa.pub"),
            "{err}"
        );
        let ec = rcgen::KeyPair::generate().unwrap();
        let err = parse_public_keys(ec.public_key_pem().as_bytes(), "sa.pub")
            .err()
            .unwrap();
        assert!(matches!(err, AuthError::InvalidKey(_)), "{err}");
        let err = parse_signing_key(rsa_public_pem(0).as_bytes(), "sa.key")
            .err()
            .unwrap();
        assert!(err.to_string().contains("give sa.key"), "{err}");
    }
}
