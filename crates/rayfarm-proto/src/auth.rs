//! The farm key and the keys derived from it: the channel's pre-shared key, the HTTP API's
//! bearer token and the job folder's MAC key. Comparisons are constant-time (`blake3::Hash`'s
//! `PartialEq`).

/// Fewest characters a farm secret may have. `rayfarm key generate` makes 69-character keys with
/// 256 bits of entropy; a shorter secret is refused rather than quietly accepted, because every
/// key below (channel, API token, job-folder MACs) is only as strong as the secret.
pub const MIN_SECRET_CHARS: usize = 16;

/// Why a farm secret was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("the farm key is empty; make one with `rayfarm key generate`")]
    Empty,
    #[error("the farm key has {0} characters, fewer than the {MIN_SECRET_CHARS} that are safe; make a new one with `rayfarm key generate`")]
    TooShort(usize),
}

/// A farm secret, held only in derived forms: one key per use, each from BLAKE3's key
/// derivation function with its own context string, so that no derived key reveals the secret
/// or any other derived key. In particular the API token (which people paste into browsers and
/// scripts) cannot be used to join the farm, read its traffic or forge job-folder files.
#[derive(Clone)]
pub struct FarmKey {
    /// The Noise pre-shared key of the channel (see `channel`).
    channel_psk: [u8; 32],
    /// The bearer token of the manager's HTTP API.
    api_token: [u8; 32],
    /// The key of the MACs on job.desc files and parts in a network folder.
    folder_mac_key: [u8; 32],
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

/// Context strings of the key derivation (BLAKE3 `derive_key`). Changing one changes every key
/// derived with it, so they are part of the protocol (PROTOCOL.md lists them).
pub const KDF_CONTEXT_CHANNEL: &str = "rayfarm 2026-11-29 noise channel psk v1";
pub const KDF_CONTEXT_API_TOKEN: &str = "rayfarm 2026-11-29 http api bearer token v1";
pub const KDF_CONTEXT_FOLDER_MAC: &str = "rayfarm 2026-11-29 job folder mac v1";

impl FarmKey {
    /// From the secret text as `rayfarm key generate` prints it. Leading and trailing
    /// whitespace is ignored; at least [`MIN_SECRET_CHARS`] characters must remain.
    pub fn from_secret(secret: &str) -> Result<FarmKey, KeyError> {
        let s = secret.trim();
        if s.is_empty() {
            return Err(KeyError::Empty);
        }
        let n = s.chars().count();
        if n < MIN_SECRET_CHARS {
            return Err(KeyError::TooShort(n));
        }
        let b = s.as_bytes();
        Ok(FarmKey {
            channel_psk: blake3::derive_key(KDF_CONTEXT_CHANNEL, b),
            api_token: blake3::derive_key(KDF_CONTEXT_API_TOKEN, b),
            folder_mac_key: blake3::derive_key(KDF_CONTEXT_FOLDER_MAC, b),
        })
    }

    /// The Noise pre-shared key of every TCP channel.
    pub fn channel_psk(&self) -> &[u8; 32] {
        &self.channel_psk
    }

    /// The manager API's bearer token, as `rayfarm key api-token` prints it (`rft1-` and 64 hex
    /// digits).
    pub fn api_token(&self) -> String {
        format!("rft1-{}", hex::encode(self.api_token))
    }

    /// Whether `presented` is this farm's API token, compared in constant time.
    pub fn verify_api_token(&self, presented: &str) -> bool {
        let Some(hex_part) = presented.trim().strip_prefix("rft1-") else {
            return false;
        };
        let mut got = [0u8; 32];
        if hex::decode_to_slice(hex_part, &mut got).is_err() {
            return false;
        }
        // blake3::Hash's equality is constant-time.
        blake3::Hash::from(got) == blake3::Hash::from(self.api_token)
    }

    /// A keyed MAC over a job-folder file, bound to its job and its name in the job, so that a
    /// file can be neither edited, nor moved to another name, nor swapped in from another job.
    pub fn folder_mac(&self, job_id: &str, name: &str, contents_hash: &[u8; 32]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.folder_mac_key);
        for part in [job_id.as_bytes(), name.as_bytes()] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.update(contents_hash);
        *h.finalize().as_bytes()
    }

    /// Checks [`FarmKey::folder_mac`] in constant time.
    pub fn verify_folder_mac(
        &self,
        job_id: &str,
        name: &str,
        contents_hash: &[u8; 32],
        mac: &[u8; 32],
    ) -> bool {
        blake3::Hash::from(self.folder_mac(job_id, name, contents_hash)) == blake3::Hash::from(*mac)
    }

    /// A new random secret, as text.
    pub fn generate_secret() -> String {
        format!("rfk1-{}", hex::encode(nonce()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_empty_secrets_are_refused() {
        assert_eq!(FarmKey::from_secret("  ").err(), Some(KeyError::Empty));
        assert_eq!(
            FarmKey::from_secret("fifteen-chars!!").err(),
            Some(KeyError::TooShort(15))
        );
        assert!(FarmKey::from_secret("sixteen-chars!!!").is_ok());
        assert!(FarmKey::from_secret(&FarmKey::generate_secret()).is_ok());
    }

    #[test]
    fn the_api_token_is_stable_checked_and_unlike_the_other_keys() {
        let k = FarmKey::from_secret("a farm key for the tests").unwrap();
        let t = k.api_token();
        assert!(t.starts_with("rft1-") && t.len() == 5 + 64, "{t}");
        assert_eq!(
            t,
            FarmKey::from_secret(" a farm key for the tests\n")
                .unwrap()
                .api_token()
        );
        assert!(k.verify_api_token(&t));
        assert!(!k.verify_api_token(&t[..t.len() - 1]));
        assert!(!k.verify_api_token(""));
        assert!(!k.verify_api_token(&t.replace("rft1-", "rfk1-")));
        let other = FarmKey::from_secret("another farm key for tests").unwrap();
        assert!(!other.verify_api_token(&t));
        // The token reveals neither the channel key nor the folder key.
        let raw = hex::decode(&t[5..]).unwrap();
        assert_ne!(&raw[..], &k.channel_psk()[..]);
        assert_ne!(raw, k.folder_mac_key.to_vec());
    }

    #[test]
    fn folder_macs_bind_job_and_name() {
        let k = FarmKey::from_secret("a farm key for the tests").unwrap();
        let h = [5u8; 32];
        let m = k.folder_mac("job1", "part-0", &h);
        assert!(k.verify_folder_mac("job1", "part-0", &h, &m));
        assert!(!k.verify_folder_mac("job2", "part-0", &h, &m));
        assert!(!k.verify_folder_mac("job1", "part-1", &h, &m));
        assert!(!k.verify_folder_mac("job1", "part-0", &[6u8; 32], &m));
        // Length-prefixed fields: moving a character between id and name changes the MAC.
        assert_ne!(m, k.folder_mac("job1p", "art-0", &h));
    }
}
