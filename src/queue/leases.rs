//! Keeping and giving up leases: the heartbeat that extends this process's leases, letting
//! images go (their leases then expire), handing every lease back at shutdown, and the reaper
//! that takes back the images of workers whose leases expired.

use std::collections::BTreeMap;

use serde_json::json;
use sqlx::{AssertSqlSafe, Connection};

use super::Queue;
use crate::db::{Backend, DbError, err, jobs};
use crate::domain::ErrorKind;

impl Queue {
    /// Stops renewing the leases of these images (their outcome will not be recorded by this
    /// process): they expire and another worker takes them.
    pub fn let_go(&self, ids: impl IntoIterator<Item = i64>) {
        let mut held = self.held.lock().expect("held lock");
        for id in ids {
            held.remove(&id);
        }
    }

    /// Stops renewing every lease this process holds (nothing it holds will be recorded).
    pub fn let_go_all(&self) {
        self.held.lock().expect("held lock").clear();
    }

    fn held_ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .held
            .lock()
            .expect("held lock")
            .iter()
            .copied()
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Extends the leases of the images this process still holds, in id order, skipping rows
    /// another transaction has locked (they are renewed next beat). Returns how many it
    /// renewed.
    pub async fn heartbeat(&self) -> Result<u64, DbError> {
        let ids = self.held_ids();
        if ids.is_empty() {
            return Ok(0);
        }
        let lock = match self.db.backend() {
            Backend::Postgres => "ORDER BY id FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = self.db.with_clock(&format!(
            "UPDATE images SET lease_expires_at = {{now}} + $1 WHERE id IN ( \
               SELECT id FROM images WHERE {mine} AND {held} {lock})",
            mine = self.db.held_by("$2"),
            held = self.db.any_of("id", &self.db.json_ids("$3"))
        ));
        let ids = json!(ids).to_string();
        let _turn = self.db.write_turn().await;
        let done = self
            .db
            .timed(async |conn| {
                sqlx::query(AssertSqlSafe(sql))
                    .bind(self.lease_ms())
                    .bind(&self.owner)
                    .bind(ids)
                    .execute(&mut *conn)
                    .await
                    .map_err(err)
            })
            .await?;
        Ok(done.rows_affected())
    }

    /// Hands back these images, which this worker claimed and never started (it is stopping):
    /// pending again at once, their claim refunded, nothing else changed. Returns how many.
    pub async fn hand_back(&self, ids: &[i64]) -> Result<u64, DbError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        self.let_go(ids.iter().copied());
        let sql = self.db.with_clock(&format!(
            "UPDATE images SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, \
             claims = claims - 1, updated_at = {{now}} WHERE id IN ( \
               SELECT id FROM images WHERE {held} AND started = 0 AND {ours} {lock})",
            held = self.db.held_by("$1"),
            ours = self.db.any_of("id", &self.db.json_ids("$2")),
            lock = match self.db.backend() {
                Backend::Postgres => "ORDER BY id FOR UPDATE",
                Backend::Sqlite => "",
            },
        ));
        let ids = json!(ids).to_string();
        let _turn = self.db.write_turn().await;
        let done = self
            .db
            .timed(async |conn| {
                sqlx::query(AssertSqlSafe(sql))
                    .bind(&self.owner)
                    .bind(ids)
                    .execute(&mut *conn)
                    .await
                    .map_err(err)
            })
            .await?;
        Ok(done.rows_affected())
    }

    /// Hands back every image this worker still holds (used at shutdown, after the drain):
    /// they become pending again, and neither the interrupted attempt nor the claim is
    /// counted (the stop was not the image's doing).
    pub async fn release_all(&self) -> Result<u64, DbError> {
        self.held.lock().expect("held lock").clear();
        let lock = match self.db.backend() {
            Backend::Postgres => "ORDER BY id FOR UPDATE",
            Backend::Sqlite => "",
        };
        let sql = self.db.with_clock(&format!(
            "UPDATE images SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, \
             attempts = attempts - started, claims = claims - 1, started = 0, \
             updated_at = {{now}} WHERE id IN ( \
               SELECT id FROM images WHERE lease_owner = $1 AND status = 'running' {lock})"
        ));
        let _turn = self.db.write_turn().await;
        let done = self
            .db
            .timed(async |conn| {
                sqlx::query(AssertSqlSafe(sql))
                    .bind(&self.owner)
                    .execute(&mut *conn)
                    .await
                    .map_err(err)
            })
            .await?;
        Ok(done.rows_affected())
    }

    /// Takes back images whose lease expired (their worker died or hung): back to pending,
    /// or failed once their attempts are used up (only a started image's attempt was counted)
    /// or they have been claimed `max_claims` times without an outcome. An image that was not
    /// started gets its claim back (the worker's death was not its doing); every one counts
    /// the expiry, so its next worker records its start before running it; a started one also
    /// counts a crash, so it runs alone. Safe to run from every worker at once:
    /// rows another transaction holds are skipped (and taken back on a later pass).
    pub async fn reap_expired(&self) -> Result<u64, DbError> {
        let expired_ids = self.db.with_clock(match self.db.backend() {
            Backend::Postgres => {
                "SELECT id FROM images WHERE status = 'running' AND lease_expires_at < {now} \
                 ORDER BY lease_expires_at LIMIT 1000 FOR UPDATE SKIP LOCKED"
            }
            Backend::Sqlite => {
                "SELECT id FROM images WHERE status = 'running' AND lease_expires_at < {now} \
                 ORDER BY lease_expires_at LIMIT 1000"
            }
        });
        let now = self.db.with_clock("{now}");
        let _turn = self.db.write_turn().await;
        let (failed, requeued) = self
            .db
            .timed(async |conn| {
                let mut tx = conn.begin().await.map_err(err)?;
                // Write first: on SQLite this takes the write lock at once instead of upgrading a read.
                let failed: Vec<(i64,)> = sqlx::query_as(AssertSqlSafe(format!(
                    "UPDATE images SET status = 'failed', lease_owner = NULL, lease_expires_at = NULL, \
                       error = CASE WHEN attempts >= $2 \
                         THEN 'abandoned after ' || CAST(attempts AS TEXT) || ' attempts: its worker stopped or stalled while processing it' \
                         ELSE 'abandoned after ' || CAST(claims AS TEXT) || ' claims without an outcome: its workers stopped before finishing it' END \
                         || COALESCE('; earlier: ' || error, ''), \
                       error_kind = $1, started = 0, expiries = expiries + 1, crashes = crashes + started, updated_at = {now} \
                     WHERE id IN ({expired_ids}) AND (attempts >= $2 OR claims - 1 + started >= $3) \
                     RETURNING job_id"
                )))
                .bind(ErrorKind::LeaseExpired.as_str())
                .bind(self.max_attempts)
                .bind(self.max_claims)
                .fetch_all(&mut *tx)
                .await
                .map_err(err)?;
                let requeued = sqlx::query(AssertSqlSafe(format!(
                    "UPDATE images SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, \
                       claims = claims - 1 + started, started = 0, expiries = expiries + 1, \
                       crashes = crashes + started, \
                       updated_at = {now} WHERE id IN ({expired_ids})"
                )))
                .execute(&mut *tx)
                .await
                .map_err(err)?;
                let mut per_job: BTreeMap<i64, jobs::Finished> = BTreeMap::new();
                for (job_id,) in &failed {
                    per_job.entry(*job_id).or_default().failed += 1;
                }
                jobs::record_finished(&self.db, &mut tx, &per_job).await?;
                tx.commit().await.map_err(err)?;
                Ok((failed.len() as u64, requeued.rows_affected()))
            })
            .await?;
        let total = failed + requeued;
        if total > 0 {
            tracing::warn!(requeued, failed, "took back images whose lease expired");
        }
        Ok(total)
    }
}
