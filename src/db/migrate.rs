//! The schema: the migrations of each backend, who applies them, and whether a database's
//! schema is one this binary can run on.
//!
//! **Who migrates.** On PostgreSQL only `retail-pulse migrate` (or a process started with
//! `--migrate`) applies migrations; every other process waits for the schema it needs,
//! saying so in its log, so an operator's newer binary never upgrades production by being
//! started. The embedded SQLite database has one host and migrates itself.
//!
//! **Two versions side by side.** Each migration says which binaries can still run on the
//! schema once it is applied: the oldest schema version such a binary knows (`keeps`). A
//! migration that only adds (a table, a nullable column, an index) keeps the binaries before
//! it; one that takes something away (a column an older binary reads, a status word it does
//! not know) keeps only those that know it. A binary refuses a schema carrying a migration it
//! does not know and that does not keep it. So a rolling upgrade is: run the new `migrate`
//! (expand), roll the processes, and only in a later release contract.
//!
//! **How a migration runs.** In one transaction, without the service's statement and lock
//! timeouts (an operator runs it, and a DDL that gives up after 2 s would only fail the
//! deploy). A PostgreSQL file whose first line is `-- rp:no-transaction` runs statement by
//! statement outside any transaction, for what PostgreSQL refuses inside one (`CREATE INDEX
//! CONCURRENTLY`, which builds an index without blocking writes). Such a file must be safe to
//! run again after a failure halfway (`DROP INDEX CONCURRENTLY IF EXISTS` before the create,
//! which also removes an index a failed build left invalid), and its statements may not
//! contain a `;` at the end of a line other than their own end.

use std::time::{Duration, Instant};

use sqlx::{AnyConnection, AssertSqlSafe, Executor};

use super::{Backend, Db, DbError, err};

/// One migration: its version, its SQL, and the oldest schema version a binary may know and
/// still run on the schema once it is applied (see the module doc).
#[derive(Debug, Clone, Copy)]
struct Migration {
    version: i64,
    sql: &'static str,
    keeps: i64,
}

/// The first line of a PostgreSQL migration that runs outside a transaction.
const NO_TRANSACTION: &str = "-- rp:no-transaction";

/// Declares the migrations once for both backends: `version "file name without .sql"`, with
/// `keeps N` when binaries that know only version N still run on the schema after it
/// (without it, only binaries that know this migration do). Each file is under
/// `migrations/sqlite/` and `migrations/postgres/`. Applied in order; never edit one that has
/// shipped.
macro_rules! migrations {
    (@keeps $version:literal) => { $version };
    (@keeps $version:literal $keeps:literal) => { $keeps };
    ($($version:literal $name:literal $(keeps $keeps:literal)?),* $(,)?) => {
        const SQLITE_MIGRATIONS: &[Migration] = &[$(Migration {
            version: $version,
            sql: include_str!(concat!("../../migrations/sqlite/", $name, ".sql")),
            keeps: migrations!(@keeps $version $($keeps)?),
        }),*];
        const POSTGRES_MIGRATIONS: &[Migration] = &[$(Migration {
            version: $version,
            sql: include_str!(concat!("../../migrations/postgres/", $name, ".sql")),
            keeps: migrations!(@keeps $version $($keeps)?),
        }),*];
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
    15 "0015_jobs_by_tenant" keeps 14,
    16 "0016_sealed_secrets" keeps 14,
    17 "0017_hot_starts" keeps 14,
}

/// The PostgreSQL advisory lock that keeps two `migrate` runs from racing.
const MIGRATION_LOCK: i64 = 7210550;

/// How often a process waiting for the schema says so again.
const WAIT_LOG_EVERY: Duration = Duration::from_secs(30);

/// What a database's schema is to this binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaFit {
    /// Every migration this binary knows is applied, and none it does not know excludes it.
    Ready,
    /// The database lacks migrations this binary needs: `at` is applied, `needs` is wanted.
    Behind { at: i64, needs: i64 },
    /// A newer binary applied a migration that binaries knowing only `knows` cannot run on
    /// (it keeps binaries from `keeps` on).
    TooNew { at: i64, knows: i64, keeps: i64 },
}

impl SchemaFit {
    /// The words for a log line or an error.
    pub fn describe(&self) -> String {
        match *self {
            SchemaFit::Ready => "the schema is current".into(),
            SchemaFit::Behind { at, needs } => format!(
                "the database schema is at version {at} and this binary needs {needs}: \
                 run `retail-pulse migrate` (or start one process with --migrate)"
            ),
            SchemaFit::TooNew { at, knows, keeps } => format!(
                "the database schema is at version {at}, applied by a newer release, which \
                 runs only binaries that know version {keeps} or later; this binary knows \
                 {knows}: run the newer release"
            ),
        }
    }
}

/// How a process that starts treats the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaStart {
    /// Apply what is missing (`migrate`, `--migrate`, and every process on SQLite).
    Migrate,
    /// Wait until someone has, logging why (`serve` and `worker` on PostgreSQL).
    Wait,
    /// Fail at once when the schema does not fit (a one-shot command on PostgreSQL).
    Check,
}

impl Db {
    fn migrations(&self) -> &'static [Migration] {
        match self.backend {
            Backend::Sqlite => SQLITE_MIGRATIONS,
            Backend::Postgres => POSTGRES_MIGRATIONS,
        }
    }

    /// The latest migration this binary knows.
    pub fn schema_version(&self) -> i64 {
        self.migrations().last().map_or(0, |m| m.version)
    }

    /// Brings the schema to where this process can run, as `how` says; on SQLite every
    /// process migrates (one host, and its file lock orders them).
    pub async fn prepare_schema(&self, how: SchemaStart) -> Result<(), DbError> {
        let how = if self.backend == Backend::Sqlite {
            SchemaStart::Migrate
        } else {
            how
        };
        match how {
            SchemaStart::Migrate => self.migrate().await,
            SchemaStart::Wait => self.wait_for_schema().await,
            SchemaStart::Check => match self.schema_fit().await? {
                SchemaFit::Ready => Ok(()),
                unfit => Err(DbError::Schema(unfit.describe())),
            },
        }
    }

    /// Waits until the schema is one this binary runs on, with a log line at once and every
    /// [`WAIT_LOG_EVERY`] after; fails at once on a schema too new for it.
    pub async fn wait_for_schema(&self) -> Result<(), DbError> {
        let mut said: Option<Instant> = None;
        loop {
            let fit = match self.schema_fit().await {
                Ok(fit) => fit,
                Err(error) if error.is_transient() => {
                    tracing::warn!(%error, "cannot read the schema version; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(error) => return Err(error),
            };
            match fit {
                SchemaFit::Ready => {
                    if said.is_some() {
                        tracing::info!(version = self.schema_version(), "the schema is ready");
                    }
                    return Ok(());
                }
                SchemaFit::TooNew { .. } => return Err(DbError::Schema(fit.describe())),
                SchemaFit::Behind { at, needs } => {
                    if said.is_none_or(|at| at.elapsed() >= WAIT_LOG_EVERY) {
                        tracing::warn!(
                            schema = at,
                            needs,
                            "waiting for the database schema: {}",
                            fit.describe()
                        );
                        said = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Whether this binary can run on the database's schema now.
    pub async fn schema_fit(&self) -> Result<SchemaFit, DbError> {
        let knows = self.schema_version();
        let applied: Option<i64> =
            match sqlx::query_scalar("SELECT MAX(version) FROM rp_schema_migrations")
                .fetch_one(&self.pool)
                .await
            {
                Ok(applied) => applied,
                // No table yet: nothing is applied.
                Err(sqlx::Error::Database(e)) if is_missing_table(&*e) => None,
                Err(e) => return Err(err(e)),
            };
        let at = applied.unwrap_or(0);
        if at < knows {
            return Ok(SchemaFit::Behind { at, needs: knows });
        }
        if at == knows {
            return Ok(SchemaFit::Ready);
        }
        // Migrations of a newer binary: they were recorded with what they keep.
        let keeps: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(COALESCE(keeps, version)) FROM rp_schema_migrations WHERE version > $1",
        )
        .bind(knows)
        .fetch_one(&self.pool)
        .await
        .map_err(err)?;
        let keeps = keeps.unwrap_or(at);
        Ok(if keeps <= knows {
            SchemaFit::Ready
        } else {
            SchemaFit::TooNew { at, knows, keeps }
        })
    }

    /// Applies the migrations this database has not seen yet, in order, on a connection of
    /// its own without the service's timeouts (dropped after). On PostgreSQL an advisory lock
    /// keeps two processes migrating at once from racing; the one that waits says so.
    pub async fn migrate(&self) -> Result<(), DbError> {
        let mut conn = self.pool.acquire().await.map_err(err)?.detach();
        let result = self.migrate_on(&mut conn).await;
        if self.backend == Backend::Postgres {
            let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(MIGRATION_LOCK)
                .execute(&mut conn)
                .await;
        }
        let _ = sqlx::Connection::close(conn).await;
        result
    }

    async fn migrate_on(&self, conn: &mut AnyConnection) -> Result<(), DbError> {
        let create = match self.backend {
            Backend::Sqlite => {
                "CREATE TABLE IF NOT EXISTS rp_schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)"
            }
            Backend::Postgres => {
                // A blocking lock request would wait silently: poll, and say who waits.
                let mut said = false;
                loop {
                    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                        .bind(MIGRATION_LOCK)
                        .fetch_one(&mut *conn)
                        .await
                        .map_err(err)?;
                    if locked {
                        break;
                    }
                    if !said {
                        tracing::info!("another process is migrating; waiting for it");
                        said = true;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                conn.execute("SET statement_timeout = 0; SET lock_timeout = 0")
                    .await
                    .map_err(err)?;
                "CREATE TABLE IF NOT EXISTS rp_schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)"
            }
        };
        conn.execute(create).await.map_err(err)?;
        self.add_keeps_column(conn).await?;
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM rp_schema_migrations")
                .fetch_one(&mut *conn)
                .await
                .map_err(err)?;
        let applied = applied.unwrap_or(0);
        if applied > self.schema_version() {
            tracing::info!(
                schema = applied,
                knows = self.schema_version(),
                "the schema is newer than this binary: nothing to apply"
            );
        }
        for migration in self.migrations() {
            let done: Option<i64> =
                sqlx::query_scalar("SELECT version FROM rp_schema_migrations WHERE version = $1")
                    .bind(migration.version)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(err)?;
            if done.is_some() {
                continue;
            }
            let started = Instant::now();
            self.apply(conn, migration)
                .await
                .map_err(|source| DbError::Migration {
                    version: migration.version,
                    source,
                })?;
            tracing::info!(
                migration = migration.version,
                ms = started.elapsed().as_millis() as u64,
                "applied migration"
            );
        }
        Ok(())
    }

    /// `rp_schema_migrations.keeps`, which binaries before this one did not write.
    async fn add_keeps_column(&self, conn: &mut AnyConnection) -> Result<(), DbError> {
        let check = match self.backend {
            Backend::Sqlite => {
                "SELECT COUNT(*) FROM pragma_table_info('rp_schema_migrations') WHERE name = 'keeps'"
            }
            Backend::Postgres => {
                "SELECT COUNT(*) FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = 'rp_schema_migrations' \
                 AND column_name = 'keeps'"
            }
        };
        let has: i64 = sqlx::query_scalar(check)
            .fetch_one(&mut *conn)
            .await
            .map_err(err)?;
        if has == 0 {
            conn.execute("ALTER TABLE rp_schema_migrations ADD COLUMN keeps BIGINT")
                .await
                .map_err(err)?;
        }
        Ok(())
    }

    async fn apply(&self, conn: &mut AnyConnection, migration: &Migration) -> sqlx::Result<()> {
        let record =
            "INSERT INTO rp_schema_migrations (version, applied_at, keeps) VALUES ($1, $2, $3)";
        if self.backend == Backend::Postgres && migration.sql.starts_with(NO_TRANSACTION) {
            for statement in statements(migration.sql) {
                conn.execute(sqlx::raw_sql(AssertSqlSafe(statement)))
                    .await?;
            }
            sqlx::query(record)
                .bind(migration.version)
                .bind(self.now_ms())
                .bind(migration.keeps)
                .execute(&mut *conn)
                .await?;
            return Ok(());
        }
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        tx.execute(migration.sql).await?;
        sqlx::query(record)
            .bind(migration.version)
            .bind(self.now_ms())
            .bind(migration.keeps)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }
}

/// The statements of a migration run outside a transaction: split where a line ends with `;`,
/// comments and blank lines dropped.
fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with("--") {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if trimmed.ends_with(';') {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.trim().is_empty() {
        out.push(current);
    }
    out
}

/// PostgreSQL's undefined_table, or SQLite's "no such table".
fn is_missing_table(error: &dyn sqlx::error::DatabaseError) -> bool {
    error.code().is_some_and(|c| c == "42P01") || error.message().contains("no such table")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_backends_have_the_same_migrations() {
        let versions = |list: &[Migration]| {
            list.iter()
                .map(|m| (m.version, m.keeps))
                .collect::<Vec<_>>()
        };
        assert_eq!(versions(SQLITE_MIGRATIONS), versions(POSTGRES_MIGRATIONS));
        let mut sorted = versions(SQLITE_MIGRATIONS);
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(versions(SQLITE_MIGRATIONS), sorted, "in order, each once");
        for m in SQLITE_MIGRATIONS {
            assert!(
                m.keeps <= m.version,
                "migration {} keeps a later one",
                m.version
            );
        }
    }

    #[test]
    fn a_migration_outside_a_transaction_is_split_into_its_statements() {
        let sql = "-- rp:no-transaction\n-- why\nDROP INDEX CONCURRENTLY IF EXISTS a;\n\
                   CREATE INDEX CONCURRENTLY a\n  ON t (x);\n";
        assert_eq!(
            statements(sql),
            vec![
                "DROP INDEX CONCURRENTLY IF EXISTS a;\n".to_string(),
                "CREATE INDEX CONCURRENTLY a\n  ON t (x);\n".to_string(),
            ]
        );
    }
}
