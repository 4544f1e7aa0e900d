//! The farm key and the challenge-response MACs built from it.
//!
//! Both sides send a fresh 32-byte nonce; the client proves the key with
//! `MAC(key, "client" | server_nonce | client_nonce)`, the server answers with
//! `MAC(key, "server" | client_nonce | server_nonce)`. The MAC is BLAKE3 in keyed mode with a
//! key derived from the farm secret; comparisons are constant-time (`blake3::Hash`'s `PartialEq`).

/// A farm secret, in the derived form used for MACs.
#[derive(Clone)]
pub struct FarmKey {
    mac_key: [u8; 32],
}

impl std::fmt::Debug for FarmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FarmKey(..)")
    }
}

/// A fresh random nonce.
pub fn nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    getrandom::fill(&mut n).expect("the operating system's random source works");
    n
}

impl FarmKey {
    /// From the secret text as `rayfarm key generate` prints it (any non-empty text works; a
    /// generated key has 256 bits of entropy).
    pub fn from_secret(secret: &str) -> Result<FarmKey, String> {
        let s = secret.trim();
        if s.is_empty() {
            return Err("the farm key is empty".into());
        }
        Ok(FarmKey {
            mac_key: blake3::derive_key("rayfarm farm key 2026-11 v1", s.as_bytes()),
        })
    }

    /// A new random secret, as text.
    pub fn generate_secret() -> String {
        format!("rfk1-{}", hex::encode(nonce()))
    }

    fn mac(&self, label: &[u8], a: &[u8; 32], b: &[u8; 32]) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.mac_key);
        h.update(label);
        h.update(a);
        h.update(b);
        h.finalize()
    }

    pub fn client_mac(&self, server_nonce: &[u8; 32], client_nonce: &[u8; 32]) -> [u8; 32] {
        *self.mac(b"client", server_nonce, client_nonce).as_bytes()
    }

    pub fn server_mac(&self, server_nonce: &[u8; 32], client_nonce: &[u8; 32]) -> [u8; 32] {
        *self.mac(b"server", client_nonce, server_nonce).as_bytes()
    }

    pub fn verify_client_mac(
        &self,
        server_nonce: &[u8; 32],
        client_nonce: &[u8; 32],
        mac: &[u8; 32],
    ) -> bool {
        self.mac(b"client", server_nonce, client_nonce) == blake3::Hash::from(*mac)
    }

    pub fn verify_server_mac(
        &self,
        server_nonce: &[u8; 32],
        client_nonce: &[u8; 32],
        mac: &[u8; 32],
    ) -> bool {
        self.mac(b"server", client_nonce, server_nonce) == blake3::Hash::from(*mac)
    }
}
