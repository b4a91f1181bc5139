//! SSH key generation (ed25519), for lab hosts and for users who need a fresh key.

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::{HashAlg, PrivateKey};

/// A freshly generated key pair in OpenSSH formats.
pub struct GeneratedKey {
    /// `-----BEGIN OPENSSH PRIVATE KEY-----` text (unencrypted; store it with mode 0600).
    pub private_openssh: String,
    /// `ssh-ed25519 AAAA… comment` line for authorized_keys / `.pub` files.
    pub public_openssh: String,
    /// `ssh-ed25519 AAAA…` without comment, for known_hosts entries.
    pub public_key_only: String,
    /// `SHA256:…` fingerprint, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("public_openssh", &self.public_openssh)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Generates an ed25519 key pair from the operating system's random source.
pub fn generate_ed25519(comment: &str) -> Result<GeneratedKey, String> {
    let seed: [u8; 32] = rand::random();
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    key.set_comment(comment);
    let private_openssh = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| format!("cannot encode the private key: {e}"))?
        .to_string();
    let public = key.public_key();
    let public_openssh = public
        .to_openssh()
        .map_err(|e| format!("cannot encode the public key: {e}"))?;
    let mut bare = public.clone();
    bare.set_comment("");
    let public_key_only = bare
        .to_openssh()
        .map_err(|e| format!("cannot encode the public key: {e}"))?
        .trim()
        .to_string();
    Ok(GeneratedKey {
        private_openssh,
        public_openssh,
        public_key_only,
        fingerprint: public.fingerprint(HashAlg::Sha256).to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_distinct_and_load_back() {
        let a = generate_ed25519("root@lab").unwrap();
        let b = generate_ed25519("root@lab").unwrap();
        assert_ne!(a.private_openssh, b.private_openssh);
        assert!(a.public_openssh.starts_with("ssh-ed25519 "));
        assert!(a.public_openssh.trim_end().ends_with(" root@lab"));
        assert_eq!(a.public_key_only.split_whitespace().count(), 2);
        assert!(a.fingerprint.starts_with("SHA256:"));
        let loaded = russh::keys::decode_secret_key(&a.private_openssh, None).unwrap();
        assert_eq!(
            loaded.public_key().fingerprint(HashAlg::Sha256).to_string(),
            a.fingerprint
        );
        assert!(!format!("{a:?}").contains("PRIVATE"));
    }
}
