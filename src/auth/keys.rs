//! API keys themselves: making one, hashing one, and the names keys and tenants may have.
//!
//! A key is `rp_` followed by 64 hex digits: 256 bits from the operating system's random
//! source. The prefix lets secret scanners (and people) recognise a leaked key. Only the
//! SHA-256 of a key is stored: with 256 random bits there is nothing to guess, so a slow
//! password hash would add cost to every request and no safety.

use sha2::{Digest, Sha256};

/// What every key starts with.
pub const PREFIX: &str = "rp_";
const RANDOM_BYTES: usize = 32;
/// The length of a well-formed key: the prefix and two hex digits per random byte.
pub const KEY_LEN: usize = PREFIX.len() + 2 * RANDOM_BYTES;

/// A new key, to be shown once, and the hash to store.
pub struct Generated {
    pub key: String,
    pub hash: String,
}

impl std::fmt::Debug for Generated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never reaches a log by accident.
        f.debug_struct("Generated")
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

/// Makes a key from the operating system's cryptographic random source.
pub fn generate() -> Result<Generated, getrandom::Error> {
    let mut bytes = [0u8; RANDOM_BYTES];
    getrandom::fill(&mut bytes)?;
    let key = format!("{PREFIX}{}", hex(&bytes));
    let hash = hash(&key);
    Ok(Generated { key, hash })
}

/// The stored form of a key: its SHA-256, in hex.
pub fn hash(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

/// Whether `text` has the shape of a key (checked before any database lookup, so garbage
/// costs nothing).
pub fn looks_like_a_key(text: &str) -> bool {
    text.len() == KEY_LEN
        && text.starts_with(PREFIX)
        && text[PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Key names and tenant names: 1 to 64 of `A-Z a-z 0-9 . _ -`, starting with a letter or
/// digit — safe in a log line, a table and a metrics label.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} `{name}`: use 1 to 64 letters, digits, `.`, `_` or `-`, starting with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_random_and_recognisable() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert!(a.key.starts_with("rp_"));
        assert_eq!(a.key.len(), KEY_LEN);
        assert_ne!(a.key, b.key);
        assert!(looks_like_a_key(&a.key));
        assert_eq!(a.hash, hash(&a.key));
        assert_eq!(a.hash.len(), 64);
        assert!(!format!("{a:?}").contains(&a.key), "Debug hides the key");
    }

    #[test]
    fn malformed_keys_are_recognised_without_a_lookup() {
        assert!(!looks_like_a_key(""));
        assert!(!looks_like_a_key("rp_123"));
        assert!(!looks_like_a_key(&format!("xx_{}", "a".repeat(64))));
        assert!(!looks_like_a_key(&format!("rp_{}", "A".repeat(64))));
        assert!(looks_like_a_key(&format!("rp_{}", "0f".repeat(32))));
    }

    #[test]
    fn the_hash_is_sha256_hex() {
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn names_are_short_and_plain() {
        assert!(check_name("name", "field-app_2.eu").is_ok());
        for bad in ["", "-x", "a b", "a/b", "ä", &"x".repeat(65)] {
            assert!(check_name("name", bad).is_err(), "{bad}");
        }
    }
}
