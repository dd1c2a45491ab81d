//! Who is calling, and what they may do: API keys, tenants and the per-tenant limits.
//!
//! A request becomes a [`Caller`] — a tenant, and whether it is an admin — in one middleware,
//! [`require_caller`], before any handler runs; handlers take the `Caller` as an extractor and
//! pass [`Caller::scope`] to every job query, whose SQL then filters by tenant (see
//! [`crate::db::jobs::Scope`]). Keys are made and hashed in [`keys`] and stored by
//! [`crate::db::keys`]; [`rate`] holds the per-tenant submit buckets; [`command`] is
//! `retail-pulse keys create | list | revoke`.
//!
//! When a key is needed depends on the [`AuthMode`]: `auto` (the default) serves clients on
//! loopback without a key until the first key is created and requires one from then on;
//! `required` always requires one; `off` never checks (a trusted network only). Key lookups
//! are cached for at most [`CACHE_TTL`], so a revoked key is refused within about a second;
//! `last used` is written at most once per [`LAST_USED_RESOLUTION`] per key.

pub(crate) mod keys;
pub(crate) mod rate;
pub(crate) mod sessions;

pub use sessions::SessionConfig;

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;

use crate::db::jobs::Scope;
use crate::db::keys::LimitOverride;
use crate::db::{self, Db, DbError};
use crate::ttl_map::TtlMap;

/// The tenant of jobs submitted without a key.
pub const DEFAULT_TENANT: &str = "default";
/// Longest a key lookup is trusted without asking the database again: a revocation takes
/// effect within this time.
pub const CACHE_TTL: Duration = Duration::from_secs(1);
/// How stale `last used` may be: the database is written at most once per key per interval.
pub const LAST_USED_RESOLUTION: Duration = Duration::from_secs(60);

/// When a request needs a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// Until the first key exists, only loopback clients are served (without a key); from
    /// then on, every API request needs one.
    #[default]
    Auto,
    /// Every API request needs a key.
    Required,
    /// Keys are never checked; every caller is an admin of the default tenant.
    Off,
}

impl std::str::FromStr for AuthMode {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(AuthMode::Auto),
            "required" => Ok(AuthMode::Required),
            "off" => Ok(AuthMode::Off),
            _ => Err(format!("`{text}`: expected auto, required or off")),
        }
    }
}

impl std::fmt::Display for AuthMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuthMode::Auto => "auto",
            AuthMode::Required => "required",
            AuthMode::Off => "off",
        })
    }
}

/// The server-wide authentication settings and per-tenant defaults.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// Most unfinished images one tenant may hold; 0: unlimited.
    pub max_unfinished_images: u64,
    /// Submits per minute per tenant (a token bucket of this size); 0: unlimited.
    pub submits_per_minute: u32,
    /// The API is behind a reverse proxy the operator named: a loopback peer is that proxy,
    /// not a local client, so `auto` serves nobody without a key.
    pub behind_proxy: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::Auto,
            max_unfinished_images: 500_000,
            submits_per_minute: 600,
            behind_proxy: false,
        }
    }
}

/// The limits that apply to one tenant; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantLimits {
    pub max_unfinished_images: Option<u64>,
    pub submits_per_minute: Option<u32>,
}

impl TenantLimits {
    /// The server's defaults, overridden by the values set on the tenant's live keys: when
    /// several keys set one, the most generous wins (0, unlimited, above any number) — one
    /// tenant has one quota, whichever of its keys is used.
    pub fn resolve(config: &AuthConfig, overrides: &[LimitOverride]) -> Self {
        fn pick(default: u64, set: impl Iterator<Item = i64>) -> Option<u64> {
            let set: Vec<u64> = set.map(|v| v.max(0) as u64).collect();
            let value = if set.is_empty() {
                default
            } else if set.contains(&0) {
                0
            } else {
                set.into_iter().max().unwrap_or(default)
            };
            (value > 0).then_some(value)
        }
        Self {
            max_unfinished_images: pick(
                config.max_unfinished_images,
                overrides.iter().filter_map(|o| o.max_unfinished_images),
            ),
            submits_per_minute: pick(
                u64::from(config.submits_per_minute),
                overrides.iter().filter_map(|o| o.submits_per_minute),
            )
            .map(|v| v.min(u64::from(u32::MAX)) as u32),
        }
    }
}

/// The one who sent a request: set by [`require_caller`], taken by handlers as an extractor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The tenant the caller acts for; new jobs belong to it.
    pub tenant: String,
    /// Sees and acts on every tenant's jobs, and reads `/metrics`.
    pub admin: bool,
    /// The name of the key used; `None` when no key was needed.
    pub key_name: Option<String>,
    pub limits: TenantLimits,
}

impl Caller {
    /// Which jobs this caller may see and act on.
    pub fn scope(&self) -> Scope<'_> {
        if self.admin {
            Scope::All
        } else {
            Scope::Tenant(&self.tenant)
        }
    }
}

/// Why a request has no [`Caller`]. Every variant but `Unavailable` is a 401.
#[derive(Debug)]
pub enum AuthError {
    /// No `Authorization` header where a key is needed.
    Missing,
    /// An `Authorization` header that is not `Bearer <key>`.
    Malformed,
    /// A key that is unknown or revoked.
    Invalid,
    /// `auto` mode with no key created yet, and a client that is not on loopback.
    LoopbackOnly,
    /// The key store could not be read.
    Db(DbError),
}

impl From<DbError> for AuthError {
    fn from(error: DbError) -> Self {
        AuthError::Db(error)
    }
}

impl AuthError {
    /// The message of the 401 (`None` for a database error, which is not a 401).
    pub fn message(&self) -> Option<&'static str> {
        Some(match self {
            AuthError::Missing => {
                "missing API key: send it as `Authorization: Bearer <key>` (an operator \
                 creates keys with `retail-pulse keys create --name NAME`)"
            }
            AuthError::Malformed => "Authorization: expected `Bearer <key>`",
            AuthError::Invalid => "unknown or revoked API key",
            AuthError::LoopbackOnly => {
                "this server has no API keys yet, so it serves only clients on its own \
                 machine: create a key there with `retail-pulse keys create --name NAME` \
                 and send it as `Authorization: Bearer <key>`"
            }
            AuthError::Db(_) => return None,
        })
    }
}

/// Turns request headers and the peer address into a [`Caller`], and holds the per-tenant
/// submit buckets. One per API process; cheap to share behind an `Arc`.
pub struct Authenticator {
    db: Db,
    config: AuthConfig,
    /// Key lookups by key hash (`None`: no live key has it), each trusted for [`CACHE_TTL`].
    cache: TtlMap<String, Option<Caller>>,
    /// Whether any key exists (`auto` mode), and when that was read. Once true it stays true:
    /// key rows are never deleted.
    keys_exist: Mutex<Option<(bool, Instant)>>,
    /// The keyless caller (its limits come from the database), trusted for [`CACHE_TTL`].
    keyless: Mutex<Option<(Caller, Instant)>>,
    submits: rate::Buckets,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(db: Db, config: AuthConfig) -> Self {
        Self {
            submits: rate::Buckets::new(db.clone()),
            db,
            config,
            cache: TtlMap::new(CACHE_TTL),
            keys_exist: Mutex::new(None),
            keyless: Mutex::new(None),
        }
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// Says at start what `auto` means here while no key exists: who is served without one.
    pub async fn warn_if_open(&self, bind: Option<SocketAddr>) {
        // Read past the cache: a key created right after the start must count at once.
        if self.config.mode != AuthMode::Auto || db::keys::any_exist(&self.db).await.unwrap_or(true)
        {
            return;
        }
        if self.config.behind_proxy {
            tracing::info!(
                "auth=auto behind a trusted proxy: no caller is served without a key; create one with `retail-pulse keys create`"
            );
        } else if bind.is_some_and(|b| !b.ip().is_loopback()) {
            tracing::warn!(
                bind = ?bind,
                "auth=auto and no key yet: every loopback client is an admin without a key, and behind a reverse proxy or sidecar on this host that is every caller; create a key (`retail-pulse keys create`), set --auth required, or name the proxy in --trusted-proxies"
            );
        }
    }

    /// Who sent a request with these headers from `peer` (the TCP peer address: proxies'
    /// `X-Forwarded-For` is never trusted).
    pub async fn caller(
        &self,
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
    ) -> Result<Caller, AuthError> {
        if self.config.mode == AuthMode::Off {
            return Ok(self.keyless().await?);
        }
        match bearer(headers)? {
            Some(key) => self.lookup(key).await?.ok_or(AuthError::Invalid),
            None => match self.config.mode {
                AuthMode::Required => Err(AuthError::Missing),
                _ if self.any_key_exists().await? => Err(AuthError::Missing),
                _ if !self.config.behind_proxy
                    && peer.is_some_and(|p| p.ip().to_canonical().is_loopback()) =>
                {
                    Ok(self.keyless().await?)
                }
                _ => Err(AuthError::LoopbackOnly),
            },
        }
    }

    /// Takes one of the caller's tenant's submit tokens; `Err` says how long until one is
    /// available.
    pub async fn take_submit_token(
        &self,
        caller: &Caller,
    ) -> Result<Result<(), Duration>, DbError> {
        match caller.limits.submits_per_minute {
            None => Ok(Ok(())),
            Some(per_minute) => {
                let key = format!("submit:{}", caller.tenant);
                self.submits.take(&key, per_minute, None).await
            }
        }
    }

    /// The caller when no key is needed: an admin of the default tenant (it sees every job;
    /// what it submits belongs to `default`).
    async fn keyless(&self) -> Result<Caller, DbError> {
        if let Some((caller, at)) = &*self.keyless.lock().unwrap_or_else(|e| e.into_inner())
            && at.elapsed() < CACHE_TTL
        {
            return Ok(caller.clone());
        }
        let overrides = db::keys::tenant_overrides(&self.db, DEFAULT_TENANT).await?;
        let caller = Caller {
            tenant: DEFAULT_TENANT.to_string(),
            admin: true,
            key_name: None,
            limits: TenantLimits::resolve(&self.config, &overrides),
        };
        *self.keyless.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((caller.clone(), Instant::now()));
        Ok(caller)
    }

    async fn any_key_exists(&self) -> Result<bool, DbError> {
        if let Some((exist, at)) = *self.keys_exist.lock().unwrap_or_else(|e| e.into_inner())
            && (exist || at.elapsed() < CACHE_TTL)
        {
            return Ok(exist);
        }
        let exist = db::keys::any_exist(&self.db).await?;
        *self.keys_exist.lock().unwrap_or_else(|e| e.into_inner()) = Some((exist, Instant::now()));
        Ok(exist)
    }

    /// The caller a key stands for, from the cache when fresh, else from the database.
    async fn lookup(&self, key: &str) -> Result<Option<Caller>, DbError> {
        if !keys::looks_like_a_key(key) {
            return Ok(None);
        }
        let hash = keys::hash(key);
        if let Some(hit) = self.cache.get(&hash) {
            return Ok(hit);
        }
        let caller = match db::keys::find_live(&self.db, &hash).await? {
            None => None,
            Some(row) => Some(self.caller_for(row).await?),
        };
        self.cache.insert(hash, caller.clone());
        Ok(caller)
    }

    /// The live key row of `key` (for the dashboard's sign-in), without the cache: a fresh
    /// answer for a deliberate act. `None` for a malformed, unknown or revoked key.
    pub async fn live_key(&self, key: &str) -> Result<Option<db::keys::KeyRow>, DbError> {
        if !keys::looks_like_a_key(key) {
            return Ok(None);
        }
        db::keys::find_live(&self.db, &keys::hash(key)).await
    }

    /// The caller a live key stands for, with its tenant's limits (and its use recorded).
    pub async fn caller_for(&self, row: db::keys::KeyRow) -> Result<Caller, DbError> {
        let overrides = db::keys::tenant_overrides(&self.db, &row.tenant).await?;
        self.record_use(&row);
        Ok(Caller {
            limits: TenantLimits::resolve(&self.config, &overrides),
            tenant: row.tenant,
            admin: row.admin,
            key_name: Some(row.name),
        })
    }

    /// Writes `last used` in the background when the stored value is older than
    /// [`LAST_USED_RESOLUTION`] (the request does not wait for it).
    fn record_use(&self, row: &db::keys::KeyRow) {
        let now = self.db.now_ms();
        let resolution = LAST_USED_RESOLUTION.as_millis() as i64;
        if row.last_used_at.is_some_and(|t| now - t < resolution) {
            return;
        }
        let db = self.db.clone();
        let id = row.id;
        tokio::spawn(async move {
            if let Err(error) = db::keys::touch(&db, id, now, resolution).await {
                tracing::debug!(%error, key.id = id, "could not record a key's last use");
            }
        });
    }
}

/// The key of an `Authorization: Bearer <key>` header; `None` without the header.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    let mut all = headers.get_all(axum::http::header::AUTHORIZATION).iter();
    let Some(value) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        // Two credentials: which one counts would be a guess (proxies and clients disagree).
        return Err(AuthError::Malformed);
    }
    let text = value.to_str().map_err(|_| AuthError::Malformed)?.trim();
    let (scheme, key) = text.split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") || key.trim().is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(Some(key.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse() {
        assert_eq!("auto".parse::<AuthMode>().unwrap(), AuthMode::Auto);
        assert_eq!("Required".parse::<AuthMode>().unwrap(), AuthMode::Required);
        assert_eq!("off".parse::<AuthMode>().unwrap(), AuthMode::Off);
        assert!("maybe".parse::<AuthMode>().is_err());
    }

    #[test]
    fn bearer_headers_are_read_strictly() {
        let mut headers = HeaderMap::new();
        assert!(matches!(bearer(&headers), Ok(None)));
        headers.insert("authorization", "Bearer rp_x".parse().unwrap());
        let mut twice = headers.clone();
        twice.append("authorization", "Bearer rp_y".parse().unwrap());
        assert!(
            bearer(&twice).is_err(),
            "two Authorization headers are refused"
        );
        assert_eq!(bearer(&headers).unwrap(), Some("rp_x"));
        headers.insert("authorization", "bearer   rp_x ".parse().unwrap());
        assert_eq!(bearer(&headers).unwrap(), Some("rp_x"));
        for bad in ["Basic dXNlcjpwdw==", "Bearer", "Bearer ", "rp_x"] {
            headers.insert("authorization", bad.parse().unwrap());
            assert!(
                matches!(bearer(&headers), Err(AuthError::Malformed)),
                "{bad}"
            );
        }
    }

    #[test]
    fn limits_come_from_defaults_or_the_most_generous_key() {
        let config = AuthConfig {
            mode: AuthMode::Auto,
            max_unfinished_images: 100,
            submits_per_minute: 10,
            behind_proxy: false,
        };
        let set = |max: Option<i64>, rate: Option<i64>| LimitOverride {
            max_unfinished_images: max,
            submits_per_minute: rate,
        };
        let none = TenantLimits::resolve(&config, &[set(None, None)]);
        assert_eq!(none.max_unfinished_images, Some(100));
        assert_eq!(none.submits_per_minute, Some(10));
        let two = TenantLimits::resolve(&config, &[set(Some(5), None), set(Some(50), Some(2))]);
        assert_eq!(two.max_unfinished_images, Some(50));
        assert_eq!(two.submits_per_minute, Some(2));
        let unlimited = TenantLimits::resolve(&config, &[set(Some(5), None), set(Some(0), None)]);
        assert_eq!(unlimited.max_unfinished_images, None);
        let off = AuthConfig {
            max_unfinished_images: 0,
            submits_per_minute: 0,
            ..config
        };
        let open = TenantLimits::resolve(&off, &[]);
        assert_eq!(open.max_unfinished_images, None);
        assert_eq!(open.submits_per_minute, None);
    }
}
