//! The dashboard's sign-in sessions: a key pasted once starts a session, which then acts for
//! that key (so for its tenant) until it is signed out, idle for [`SessionConfig::idle`], older
//! than [`MAX_LIFETIME`], or its key is revoked.
//!
//! A session id is 32 random bytes, shown to the browser once (the cookie is
//! [`crate::ui::session`]'s business) and stored only as its SHA-256 in `ui_sessions`, beside
//! the key's id; the key itself is never stored. Lookups are cached for at most
//! [`super::CACHE_TTL`], as key lookups are. Failed sign-ins are limited per client address
//! ([`FAILURES_PER_MINUTE`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::rate::Buckets;
use super::{Authenticator, CACHE_TTL, Caller, LAST_USED_RESOLUTION};
use crate::db::{self, Db, DbError};
use crate::ttl_map::TtlMap;

/// Hex characters of a session id (32 random bytes).
const ID_LEN: usize = 64;
/// The longest a session lasts, however busy.
pub const MAX_LIFETIME: Duration = Duration::from_secs(7 * 86_400);
/// Failed sign-ins one client address may make per minute (in bursts of as many).
pub const FAILURES_PER_MINUTE: u32 = 10;

/// How the dashboard's sessions behave.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// A session unused for this long ends.
    pub idle: Duration,
    /// The address people use to reach the service (`--public-url`); `https://…` makes every
    /// cookie `Secure`.
    pub public_url: Option<url::Url>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(12 * 3600),
            public_url: None,
        }
    }
}

/// What a sign-in attempt came to.
#[derive(Debug)]
pub enum SignIn {
    /// A new session: the id goes into the cookie.
    Started { id: String },
    /// The key is malformed, unknown or revoked (which of these is not said).
    Refused,
    /// Too many failed attempts from this address: try again after this long.
    TooMany(Duration),
}

/// The dashboard's sessions: sign-in, the lookup behind every page, sign-out. One per API
/// process, shared behind an `Arc`.
pub struct Sessions {
    db: Db,
    auth: Arc<Authenticator>,
    config: SessionConfig,
    /// Session lookups by id hash, each trusted for [`CACHE_TTL`].
    cache: TtlMap<String, Option<Caller>>,
    /// Failed sign-ins by client address.
    failures: Buckets,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Sessions {
    pub fn new(db: Db, auth: Arc<Authenticator>, config: SessionConfig) -> Self {
        Self {
            failures: Buckets::new(db.clone()),
            db,
            auth,
            config,
            cache: TtlMap::new(CACHE_TTL),
        }
    }

    /// How sessions behave here.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// How long an unused session lasts.
    pub fn idle(&self) -> Duration {
        self.config.idle
    }

    fn idle_ms(&self) -> i64 {
        self.config.idle.as_millis().min(i64::MAX as u128) as i64
    }

    /// How stale `last seen` may be: a minute, or a quarter of the idle time if shorter.
    fn touch_resolution_ms(&self) -> i64 {
        (LAST_USED_RESOLUTION.as_millis() as i64).min(self.idle_ms() / 4)
    }

    /// The caller of a live session with this id (the cookie's value).
    pub async fn caller(&self, id: &str) -> Result<Option<Caller>, DbError> {
        if !well_formed(id) {
            return Ok(None);
        }
        let hash = hash(id);
        if let Some(hit) = self.cache.get(&hash) {
            return Ok(hit);
        }
        let now = self.db.now_ms();
        let caller =
            match db::ui_sessions::find_live(&self.db, &hash, now, now - self.idle_ms()).await? {
                None => None,
                Some(session) => {
                    let resolution = self.touch_resolution_ms();
                    if now - session.last_seen_at >= resolution {
                        let db = self.db.clone();
                        let hash = hash.clone();
                        tokio::spawn(async move {
                            if let Err(error) =
                                db::ui_sessions::touch(&db, &hash, now, now - resolution).await
                            {
                                tracing::debug!(%error, "could not record a session's last use");
                            }
                        });
                    }
                    Some(self.auth.caller_for(session.key).await?)
                }
            };
        self.cache.insert(hash, caller.clone());
        Ok(caller)
    }

    /// Signs in with `key` from `client`: a new session if the key is live.
    pub async fn sign_in(&self, key: &str, client: Option<IpAddr>) -> Result<SignIn, DbError> {
        let bucket = format!(
            "signin:{}",
            client.map_or_else(|| "unknown".to_string(), |ip| ip.to_string())
        );
        if let Err(wait) = self
            .failures
            .check(&bucket, FAILURES_PER_MINUTE, None)
            .await?
        {
            return Ok(SignIn::TooMany(wait));
        }
        let Some(row) = self.auth.live_key(key.trim()).await? else {
            // Empty or not, the refusal is what counts.
            let _ = self
                .failures
                .take(&bucket, FAILURES_PER_MINUTE, None)
                .await?;
            return Ok(SignIn::Refused);
        };
        let at = self.db.now_ms();
        // Sessions that can no longer be used go when a new one comes: the table holds about
        // the live ones.
        let idle_since = at - self.idle_ms();
        if let Err(error) = db::ui_sessions::prune(&self.db, at, idle_since).await {
            tracing::debug!(%error, "could not prune ended sessions");
        }
        let id = new_id();
        let expires_at = at + MAX_LIFETIME.as_millis() as i64;
        db::ui_sessions::insert(&self.db, &hash(&id), row.id, at, expires_at).await?;
        tracing::info!(key.name = %row.name, tenant = %row.tenant, "dashboard sign-in");
        Ok(SignIn::Started { id })
    }

    /// Ends the session with this id, here at once (other API processes within
    /// [`CACHE_TTL`]).
    pub async fn sign_out(&self, id: &str) -> Result<(), DbError> {
        if !well_formed(id) {
            return Ok(());
        }
        let hash = hash(id);
        db::ui_sessions::delete(&self.db, &hash).await?;
        self.cache.remove(&hash);
        Ok(())
    }
}

pub(crate) fn well_formed(id: &str) -> bool {
    id.len() == ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub(crate) fn new_id() -> String {
    let mut bytes = [0u8; ID_LEN / 2];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn hash(id: &str) -> String {
    Sha256::digest(id.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_random_well_formed_and_stored_hashed() {
        let id = new_id();
        assert!(well_formed(&id));
        assert_ne!(new_id(), id);
        assert!(!well_formed("abc"));
        assert_eq!(hash(&id).len(), 64);
        assert_ne!(hash(&id), id);
    }
}
