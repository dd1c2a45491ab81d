//! Dashboard sessions: a browser signed in with an API key (see [`crate::ui::session`]). Rows
//! hold the SHA-256 of the session id, never the id, and the key the session acts for; a
//! session is live only while its key is (the lookup joins `api_keys`), so revoking a key ends
//! its sessions with no further step.

use super::keys::KeyRow;
use super::{Db, DbError, err};

/// A session that is still live, with the key it acts for.
#[derive(Debug, Clone)]
pub struct LiveSession {
    pub key: KeyRow,
    /// When the session was last seen (written at most once per resolution, see [`touch`]).
    pub last_seen_at: i64,
}

/// The key's columns as [`KeyRow`] reads them, and the session's last sighting beside them.
impl<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> for LiveSession {
    fn from_row(row: &'r sqlx::any::AnyRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        Ok(Self {
            key: KeyRow::from_row(row)?,
            last_seen_at: row.try_get("session_last_seen_at")?,
        })
    }
}

/// Stores a new session for key `key_id`, ending at `expires_at` at the latest.
pub async fn insert(
    db: &Db,
    id_hash: &str,
    key_id: i64,
    now: i64,
    expires_at: i64,
) -> Result<(), DbError> {
    let _turn = db.write_turn().await;
    sqlx::query(
        "INSERT INTO ui_sessions (id_hash, key_id, created_at, last_seen_at, expires_at) \
         VALUES ($1, $2, $3, $3, $4)",
    )
    .bind(id_hash)
    .bind(key_id)
    .bind(now)
    .bind(expires_at)
    .execute(db.pool())
    .await
    .map_err(err)?;
    Ok(())
}

/// The session with this hash if it is live at `now`: not past its end, seen after
/// `idle_since`, and its key not revoked.
pub async fn find_live(
    db: &Db,
    id_hash: &str,
    now: i64,
    idle_since: i64,
) -> Result<Option<LiveSession>, DbError> {
    let found: Option<LiveSession> = sqlx::query_as(
        "SELECT k.id, k.name, k.tenant, k.admin, k.created_at, k.last_used_at, k.revoked_at, \
         k.max_unfinished_images, k.submits_per_minute, s.last_seen_at AS session_last_seen_at \
         FROM ui_sessions s JOIN api_keys k ON k.id = s.key_id \
         WHERE s.id_hash = $1 AND k.revoked_at IS NULL AND s.expires_at > $2 \
         AND s.last_seen_at > $3",
    )
    .bind(id_hash)
    .bind(now)
    .bind(idle_since)
    .fetch_optional(db.pool())
    .await
    .map_err(err)?;
    Ok(found)
}

/// Records that the session was used at `now`, unless that was recorded after `unless_after`
/// already (one write per session and interval at most).
pub async fn touch(db: &Db, id_hash: &str, now: i64, unless_after: i64) -> Result<(), DbError> {
    let _turn = db.write_turn().await;
    sqlx::query(
        "UPDATE ui_sessions SET last_seen_at = $2 WHERE id_hash = $1 AND last_seen_at < $3",
    )
    .bind(id_hash)
    .bind(now)
    .bind(unless_after)
    .execute(db.pool())
    .await
    .map_err(err)?;
    Ok(())
}

/// Ends a session (signing out). Ending one that does not exist is no error.
pub async fn delete(db: &Db, id_hash: &str) -> Result<(), DbError> {
    let _turn = db.write_turn().await;
    sqlx::query("DELETE FROM ui_sessions WHERE id_hash = $1")
        .bind(id_hash)
        .execute(db.pool())
        .await
        .map_err(err)?;
    Ok(())
}

/// Deletes the sessions that can no longer be used: past their end, idle since before
/// `idle_since`, or of a revoked key. Returns how many.
pub async fn prune(db: &Db, now: i64, idle_since: i64) -> Result<u64, DbError> {
    let _turn = db.write_turn().await;
    let done = sqlx::query(
        "DELETE FROM ui_sessions WHERE expires_at <= $1 OR last_seen_at <= $2 \
         OR key_id IN (SELECT id FROM api_keys WHERE revoked_at IS NOT NULL)",
    )
    .bind(now)
    .bind(idle_since)
    .execute(db.pool())
    .await
    .map_err(err)?;
    Ok(done.rows_affected())
}
