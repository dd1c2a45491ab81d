//! Sealing webhook signing secrets at rest: ChaCha20-Poly1305 (the `ring` crate's AEAD) under
//! a 32-byte key the process is given (`--secret-key`, `--secret-key-file`) or, on SQLite,
//! keeps beside the database file ([`super::keys`]).
//!
//! A sealed value is base64 of `nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes)`, with a fresh
//! random nonce per seal. The associated data binds the value to its tenant and its slot
//! (`current` or `previous`), so a sealed value copied into another tenant's row, or from one
//! slot into the other, does not open: it is an error, never a wrong secret. Each row also
//! names the key that sealed it (its [`SecretKey::id`]: the first 8 bytes of the key's
//! SHA-256, in hex), so a key ring can hold an old key beside the new one while rows are
//! resealed, and the old key can then be retired.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use sha2::{Digest, Sha256};

/// Bytes in a secret key.
pub const KEY_BYTES: usize = 32;
/// What the associated data of every sealed secret starts with (versioned, so that a future
/// format cannot be mistaken for this one).
const AAD_PREFIX: &str = "retail-pulse webhook secret v1";

/// Which of a tenant's two secrets a sealed value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Current,
    /// The secret before the last rotation, signing beside the current one for the overlap.
    Previous,
}

impl Slot {
    fn as_str(self) -> &'static str {
        match self {
            Slot::Current => "current",
            Slot::Previous => "previous",
        }
    }
}

/// Why a secret could not be sealed or opened. The words never carry key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error(
        "sealed with secret key {0}, which is not among the keys given (RP_SECRET_KEY / RP_SECRET_KEY_FILE)"
    )]
    UnknownKey(String),
    #[error("the sealed secret does not open: not sealed for this tenant and slot, or altered")]
    DoesNotOpen,
    #[error("no random bytes for a nonce: {0}")]
    Random(String),
}

/// Why a secret key given to the process is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyParseError {
    #[error("{origin}: key {position} is not base64 of {KEY_BYTES} bytes")]
    Malformed {
        origin: String,
        /// 1-based, among the keys of that source.
        position: usize,
    },
    #[error("{0}: no key in it")]
    Empty(String),
}

/// One secret key, ready to seal and open.
#[derive(Clone)]
pub struct SecretKey {
    key: LessSafeKey,
    id: String,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The id only: key material never reaches a log.
        f.debug_struct("SecretKey").field("id", &self.id).finish()
    }
}

impl SecretKey {
    pub fn from_bytes(bytes: &[u8; KEY_BYTES]) -> Self {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, bytes).expect("32 bytes is the key size");
        let digest = Sha256::digest(bytes);
        let id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Self {
            key: LessSafeKey::new(unbound),
            id,
        }
    }

    /// A fresh key from the operating system's random source, and its base64 (what a key file
    /// or `RP_SECRET_KEY` holds).
    pub fn generate() -> Result<(Self, String), getrandom::Error> {
        let mut bytes = [0u8; KEY_BYTES];
        getrandom::fill(&mut bytes)?;
        let text = BASE64.encode(bytes);
        let key = Self::from_bytes(&bytes);
        bytes.fill(0);
        Ok((key, text))
    }

    fn from_base64(text: &str) -> Option<Self> {
        let mut bytes: [u8; KEY_BYTES] = BASE64.decode(text.trim()).ok()?.try_into().ok()?;
        let key = Self::from_bytes(&bytes);
        bytes.fill(0);
        Some(key)
    }

    /// Names the key without revealing it: the first 8 bytes of its SHA-256, in hex.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals `secret` as `tenant`'s secret in `slot`.
    pub fn seal(&self, tenant: &str, slot: Slot, secret: &str) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| SealError::Random(e.to_string()))?;
        let mut sealed = secret.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(tenant, slot)),
                &mut sealed,
            )
            .map_err(|_| SealError::Random("sealing failed".into()))?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(BASE64.encode(out))
    }

    /// Opens what [`SecretKey::seal`] made for the same tenant and slot.
    pub fn open(&self, tenant: &str, slot: Slot, sealed: &str) -> Result<String, SealError> {
        let bytes = BASE64.decode(sealed).map_err(|_| SealError::DoesNotOpen)?;
        if bytes.len() < NONCE_LEN + CHACHA20_POLY1305.tag_len() {
            return Err(SealError::DoesNotOpen);
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::DoesNotOpen)?;
        let mut rest = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad(tenant, slot)), &mut rest)
            .map_err(|_| SealError::DoesNotOpen)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SealError::DoesNotOpen)
    }
}

/// The associated data: the format, the slot, then the tenant (the slot is one of two fixed
/// words without a newline, so no two (slot, tenant) pairs give the same bytes).
fn aad(tenant: &str, slot: Slot) -> Vec<u8> {
    format!("{AAD_PREFIX}\n{}\n{tenant}", slot.as_str()).into_bytes()
}

/// The keys a process holds: the first seals, every one opens what it sealed.
#[derive(Clone)]
pub struct KeyRing {
    /// Never empty.
    keys: Vec<SecretKey>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id()).collect();
        f.debug_struct("KeyRing").field("ids", &ids).finish()
    }
}

impl KeyRing {
    pub fn single(key: SecretKey) -> Self {
        Self { keys: vec![key] }
    }

    /// Keys as `RP_SECRET_KEY` gives them: base64, comma-separated, the sealing one first.
    /// `source` names where they came from, for the error (which never quotes a key).
    pub fn parse_list(text: &str, source: &str) -> Result<Self, KeyParseError> {
        Self::parse(text.split(','), source)
    }

    /// Keys as a key file holds them: one base64 key per line, the sealing one first; blank
    /// lines and lines starting with `#` are skipped.
    pub fn parse_lines(text: &str, source: &str) -> Result<Self, KeyParseError> {
        Self::parse(
            text.lines().filter(|l| !l.trim_start().starts_with('#')),
            source,
        )
    }

    fn parse<'a>(
        parts: impl Iterator<Item = &'a str>,
        source: &str,
    ) -> Result<Self, KeyParseError> {
        let mut keys: Vec<SecretKey> = Vec::new();
        for (i, part) in parts.map(str::trim).filter(|p| !p.is_empty()).enumerate() {
            let key = SecretKey::from_base64(part).ok_or_else(|| KeyParseError::Malformed {
                origin: source.to_string(),
                position: i + 1,
            })?;
            // The same key twice is harmless; keep the first.
            if !keys.iter().any(|k| k.id == key.id) {
                keys.push(key);
            }
        }
        if keys.is_empty() {
            return Err(KeyParseError::Empty(source.to_string()));
        }
        Ok(Self { keys })
    }

    /// The key new seals use.
    pub fn sealing(&self) -> &SecretKey {
        &self.keys[0]
    }

    /// The ids of every key, the sealing one first.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.id())
    }

    /// Opens a value sealed by the key named `key_id`.
    pub fn open(
        &self,
        key_id: &str,
        tenant: &str,
        slot: Slot,
        sealed: &str,
    ) -> Result<String, SealError> {
        self.keys
            .iter()
            .find(|k| k.id == key_id)
            .ok_or_else(|| SealError::UnknownKey(key_id.to_string()))?
            .open(tenant, slot, sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::generate().unwrap().0
    }

    #[test]
    fn a_sealed_secret_opens_for_its_tenant_and_slot_only() {
        let k = key();
        let sealed = k.seal("acme", Slot::Current, "whsec_abc").unwrap();
        assert_eq!(k.open("acme", Slot::Current, &sealed).unwrap(), "whsec_abc");
        assert_eq!(
            k.open("other", Slot::Current, &sealed),
            Err(SealError::DoesNotOpen),
            "moved to another tenant's row"
        );
        assert_eq!(
            k.open("acme", Slot::Previous, &sealed),
            Err(SealError::DoesNotOpen),
            "moved to the other slot"
        );
        assert_eq!(
            key().open("acme", Slot::Current, &sealed),
            Err(SealError::DoesNotOpen),
            "another key"
        );
    }

    #[test]
    fn each_seal_has_its_own_nonce_and_hides_the_secret() {
        let k = key();
        let a = k.seal("t", Slot::Current, "whsec_same").unwrap();
        let b = k.seal("t", Slot::Current, "whsec_same").unwrap();
        assert_ne!(a, b);
        assert!(!a.contains("whsec_"));
        let bytes = BASE64.decode(&a).unwrap();
        assert_eq!(bytes.len(), NONCE_LEN + "whsec_same".len() + 16);
    }

    #[test]
    fn an_altered_value_does_not_open() {
        let k = key();
        let sealed = k.seal("t", Slot::Current, "whsec_x").unwrap();
        let mut bytes = BASE64.decode(&sealed).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(
            k.open("t", Slot::Current, &BASE64.encode(bytes)),
            Err(SealError::DoesNotOpen)
        );
        assert_eq!(
            k.open("t", Slot::Current, "not base64!"),
            Err(SealError::DoesNotOpen)
        );
        assert_eq!(
            k.open("t", Slot::Current, "AAAA"),
            Err(SealError::DoesNotOpen)
        );
    }

    #[test]
    fn the_first_key_seals_and_every_key_opens_its_own() {
        let (a, a_text) = SecretKey::generate().unwrap();
        let (b, b_text) = SecretKey::generate().unwrap();
        let ring = KeyRing::parse_list(&format!("{b_text}, {a_text}"), "RP_SECRET_KEY").unwrap();
        assert_eq!(ring.sealing().id(), b.id());
        let old = a.seal("t", Slot::Current, "whsec_old").unwrap();
        assert_eq!(
            ring.open(a.id(), "t", Slot::Current, &old).unwrap(),
            "whsec_old"
        );
        let only_b = KeyRing::parse_lines(&format!("# new\n{b_text}\n\n"), "file").unwrap();
        assert_eq!(
            only_b.open(a.id(), "t", Slot::Current, &old),
            Err(SealError::UnknownKey(a.id().to_string()))
        );
    }

    #[test]
    fn key_ids_are_derived_from_the_key() {
        let bytes = [7u8; KEY_BYTES];
        let id = SecretKey::from_bytes(&bytes).id().to_string();
        assert_eq!(id.len(), 16);
        assert_eq!(SecretKey::from_bytes(&bytes).id(), id);
        assert_ne!(SecretKey::from_bytes(&[8u8; KEY_BYTES]).id(), id);
    }

    #[test]
    fn malformed_keys_are_refused_without_quoting_them() {
        let short = BASE64.encode([1u8; 16]);
        let error = KeyRing::parse_list(
            &format!("{}, {short}", BASE64.encode([1u8; 32])),
            "RP_SECRET_KEY",
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "RP_SECRET_KEY: key 2 is not base64 of 32 bytes"
        );
        assert!(!error.to_string().contains(&short));
        assert!(KeyRing::parse_list(" , ", "RP_SECRET_KEY").is_err());
        assert!(KeyRing::parse_lines("# only a comment\n", "f").is_err());
    }

    #[test]
    fn debug_output_shows_key_ids_only() {
        let (k, text) = SecretKey::generate().unwrap();
        let ring = KeyRing::single(k.clone());
        let shown = format!("{ring:?} {k:?}");
        assert!(shown.contains(k.id()), "{shown}");
        assert!(!shown.contains(&text), "{shown}");
    }
}
