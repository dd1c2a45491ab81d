//! The schema: the migrations of each backend, applied in order, and whether a database has
//! them all.

use std::time::Duration;

use sqlx::{AssertSqlSafe, Executor};

use super::{Backend, Db, DbError, err};

/// Declares the migrations once for both backends: (version, file name without `.sql`), each
/// file under `migrations/sqlite/` and `migrations/postgres/`. Applied in order; never edit
/// one that has shipped.
macro_rules! migrations {
    ($($version:literal $name:literal),* $(,)?) => {
        const SQLITE_MIGRATIONS: &[(i64, &str)] = &[$((
            $version,
            include_str!(concat!("../../migrations/sqlite/", $name, ".sql")),
        )),*];
        const POSTGRES_MIGRATIONS: &[(i64, &str)] = &[$((
            $version,
            include_str!(concat!("../../migrations/postgres/", $name, ".sql")),
        )),*];
    };
}

migrations! {
    1 "0001_init",
    2 "0002_idempotency_and_worker",
    3 "0003_tenants",
    4 "0004_fair_claims",
    5 "0005_api_keys",
    6 "0006_workers",
    7 "0007_webhooks",
    9 "0009_ui_sessions",
    10 "0010_claims",
    11 "0011_tenant_counts",
    12 "0012_rate_buckets",
    13 "0013_origins",
    14 "0014_crashes",
    16 "0016_sealed_secrets",
}

impl Db {
    /// Applies the migrations this database has not seen yet, each in its own transaction.
    /// On PostgreSQL an advisory lock keeps two processes starting at once from racing.
    pub async fn migrate(&self) -> Result<(), DbError> {
        let (migrations, create) = match self.backend {
            Backend::Sqlite => (
                SQLITE_MIGRATIONS,
                "CREATE TABLE IF NOT EXISTS rp_schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
            ),
            Backend::Postgres => (
                POSTGRES_MIGRATIONS,
                "CREATE TABLE IF NOT EXISTS rp_schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
            ),
        };
        let mut conn = self.pool.acquire().await.map_err(err)?;
        if self.backend == Backend::Postgres {
            // Another process may be migrating: wait for it by polling (a blocking lock
            // request would run into lock_timeout), and let a long migration run past
            // statement_timeout on this connection only.
            loop {
                let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(7210550)")
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(err)?;
                if locked {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            conn.execute("SET statement_timeout = 0")
                .await
                .map_err(err)?;
        }
        let result = async {
            conn.execute(create).await.map_err(err)?;
            for &(version, sql) in migrations {
                let applied: Option<i64> = sqlx::query_scalar(
                    "SELECT version FROM rp_schema_migrations WHERE version = $1",
                )
                .bind(version)
                .fetch_optional(&mut *conn)
                .await
                .map_err(err)?;
                if applied.is_some() {
                    continue;
                }
                let step = async {
                    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                    tx.execute(sql).await?;
                    sqlx::query(
                        "INSERT INTO rp_schema_migrations (version, applied_at) VALUES ($1, $2)",
                    )
                    .bind(version)
                    .bind(self.now_ms())
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await
                };
                step.await
                    .map_err(|source| DbError::Migration { version, source })?;
                tracing::info!(migration = version, "applied migration");
            }
            Ok(())
        }
        .await;
        if self.backend == Backend::Postgres {
            let _ = conn.execute("SELECT pg_advisory_unlock(7210550)").await;
            // The connection goes back to the pool: restore its limit.
            let restore = match self.limits.statement.as_millis() {
                0 => "RESET statement_timeout".to_string(),
                ms => format!("SET statement_timeout = {ms}"),
            };
            if conn
                .execute(sqlx::raw_sql(AssertSqlSafe(restore)))
                .await
                .is_err()
            {
                drop(conn.detach());
            }
        }
        result
    }

    /// True when the database answers and every migration is applied.
    pub async fn is_ready(&self) -> Result<bool, DbError> {
        let latest = match self.backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.last(),
            Backend::Postgres => POSTGRES_MIGRATIONS.last(),
        }
        .map(|m| m.0)
        .unwrap_or(0);
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM rp_schema_migrations")
                .fetch_one(&self.pool)
                .await
                .map_err(err)?;
        Ok(applied.unwrap_or(0) >= latest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_backends_have_the_same_migrations() {
        let versions = |list: &[(i64, &str)]| list.iter().map(|m| m.0).collect::<Vec<_>>();
        assert_eq!(versions(SQLITE_MIGRATIONS), versions(POSTGRES_MIGRATIONS));
        let sorted = {
            let mut v = versions(SQLITE_MIGRATIONS);
            v.sort_unstable();
            v.dedup();
            v
        };
        assert_eq!(versions(SQLITE_MIGRATIONS), sorted, "in order, each once");
    }
}
