//! API key rows: created by `retail-pulse keys create`, looked up by the hash of the key a
//! request presents, listed and revoked. The key itself is never stored (see [`crate::auth`]).

use super::{Db, DbError, err};

/// A key as stored: everything but the secret, which exists only in the creator's hands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub id: i64,
    pub name: String,
    pub tenant: String,
    pub admin: bool,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// This key's override of the tenant's unfinished-image quota (0: unlimited).
    pub max_unfinished_images: Option<i64>,
    /// This key's override of the tenant's submit rate (0: unlimited).
    pub submits_per_minute: Option<i64>,
}

/// A key to store: its hash, never the key.
#[derive(Debug, Clone)]
pub struct NewKey<'a> {
    pub name: &'a str,
    pub tenant: &'a str,
    pub admin: bool,
    pub key_hash: &'a str,
    pub max_unfinished_images: Option<i64>,
    pub submits_per_minute: Option<i64>,
}

const COLUMNS: &str = "id, name, tenant, admin, created_at, last_used_at, revoked_at, \
     max_unfinished_images, submits_per_minute";

super::from_row!(KeyRow {
    id: i64,
    name: String,
    tenant: String,
    admin: bool as i64 => |raw: i64| Ok(raw != 0),
    created_at: i64,
    last_used_at: Option<i64>,
    revoked_at: Option<i64>,
    max_unfinished_images: Option<i64>,
    submits_per_minute: Option<i64>,
});

/// Stores a new key. A name already taken (by a live or a revoked key) is
/// [`DbError::Duplicate`].
pub async fn insert(db: &Db, key: &NewKey<'_>) -> Result<KeyRow, DbError> {
    let sql = format!(
        "INSERT INTO api_keys (name, tenant, admin, key_hash, created_at, \
         max_unfinished_images, submits_per_minute) VALUES ($1, $2, $3, $4, $5, $6, $7) \
         RETURNING {COLUMNS}"
    );
    let _turn = db.write_turn().await;
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(key.name)
        .bind(key.tenant)
        .bind(i64::from(key.admin))
        .bind(key.key_hash)
        .bind(db.now_ms())
        .bind(key.max_unfinished_images)
        .bind(key.submits_per_minute)
        .fetch_one(db.pool())
        .await
        .map_err(err)
}

/// Every key, oldest first, revoked ones included.
pub async fn list(db: &Db) -> Result<Vec<KeyRow>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM api_keys ORDER BY id");
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(db.pool())
        .await
        .map_err(err)
}

/// What `revoke` found.
#[derive(Debug)]
pub enum Revoke {
    /// The key was live and is revoked from now on.
    Revoked(KeyRow),
    /// The key had been revoked before; nothing changed.
    AlreadyRevoked(KeyRow),
    NotFound,
}

/// Revokes the key of this name. Its row stays (history, and the name is not reused).
pub async fn revoke(db: &Db, name: &str) -> Result<Revoke, DbError> {
    let sql = format!(
        "UPDATE api_keys SET revoked_at = $2 WHERE name = $1 AND revoked_at IS NULL \
         RETURNING {COLUMNS}"
    );
    let revoked = {
        let _turn = db.write_turn().await;
        sqlx::query_as::<_, KeyRow>(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .bind(db.now_ms())
            .fetch_optional(db.pool())
            .await
            .map_err(err)?
    };
    if let Some(row) = revoked {
        return Ok(Revoke::Revoked(row));
    }
    let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE name = $1");
    let row = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(name)
        .fetch_optional(db.pool())
        .await
        .map_err(err)?;
    Ok(match row {
        Some(row) => Revoke::AlreadyRevoked(row),
        None => Revoke::NotFound,
    })
}

/// The live (not revoked) key with this hash.
pub async fn find_live(db: &Db, key_hash: &str) -> Result<Option<KeyRow>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL");
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(key_hash)
        .fetch_optional(db.pool())
        .await
        .map_err(err)
}

/// The limits one live key sets for its tenant (`None`: the server's default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitOverride {
    pub max_unfinished_images: Option<i64>,
    pub submits_per_minute: Option<i64>,
}

super::from_row!(LimitOverride {
    max_unfinished_images: Option<i64>,
    submits_per_minute: Option<i64>,
});

/// The limit overrides set on a tenant's live keys, one per key.
pub async fn tenant_overrides(db: &Db, tenant: &str) -> Result<Vec<LimitOverride>, DbError> {
    sqlx::query_as(
        "SELECT max_unfinished_images, submits_per_minute FROM api_keys \
         WHERE tenant = $1 AND revoked_at IS NULL",
    )
    .bind(tenant)
    .fetch_all(db.pool())
    .await
    .map_err(err)
}

/// Whether any key was ever created (revoked ones count: revoking every key does not reopen
/// a server that `auto` mode had closed).
pub async fn any_exist(db: &Db) -> Result<bool, DbError> {
    let found: Option<i64> = sqlx::query_scalar("SELECT id FROM api_keys LIMIT 1")
        .fetch_optional(db.pool())
        .await
        .map_err(err)?;
    Ok(found.is_some())
}

/// Records that a key was used at `now`, unless that was already recorded less than
/// `resolution_ms` ago: `last used` costs at most one write per key and interval.
pub async fn touch(db: &Db, id: i64, now: i64, resolution_ms: i64) -> Result<(), DbError> {
    let _turn = db.write_turn().await;
    sqlx::query(
        "UPDATE api_keys SET last_used_at = $2 WHERE id = $1 \
         AND (last_used_at IS NULL OR last_used_at < $3)",
    )
    .bind(id)
    .bind(now)
    .bind(now - resolution_ms)
    .execute(db.pool())
    .await
    .map_err(err)?;
    Ok(())
}
