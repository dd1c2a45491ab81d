//! The database: one connection pool over SQLite or PostgreSQL, chosen by the URL scheme, with
//! the migrations of each backend and the queries per area (`jobs`, `images`, `stores`).
//!
//! Queries go through sqlx's `Any` driver with `$n` placeholders, which both backends accept,
//! so there is one query path; the few statements whose SQL must differ (the queue's claim)
//! branch on [`Backend`].

pub mod images;
pub mod jobs;
pub mod stores;

use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Executor};
use thiserror::Error;

/// Which database engine is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Error)]
pub enum DbError {
    /// The database cannot be reached right now (connection refused, pool timed out, …).
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
    #[error("migration {version} failed: {source}")]
    Migration {
        version: i64,
        #[source]
        source: sqlx::Error,
    },
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    /// A unique constraint refused the write (e.g. an idempotency key already in use).
    #[error("duplicate: {0}")]
    Duplicate(#[source] sqlx::Error),
}

impl DbError {
    /// Sorts a driver error into "try again later" and "this query is wrong".
    pub fn classify(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => DbError::Unavailable(error),
            sqlx::Error::Database(ref db)
                if db.code().is_some_and(|c| {
                    // PostgreSQL: admin shutdown / cannot connect now / too many connections;
                    // SQLite: busy / locked.
                    ["57P01", "57P02", "57P03", "53300", "5", "6", "517"].contains(&c.as_ref())
                }) =>
            {
                DbError::Unavailable(error)
            }
            sqlx::Error::Database(ref db) if db.is_unique_violation() => DbError::Duplicate(error),
            other => DbError::Query(other),
        }
    }

    pub fn is_unavailable(&self) -> bool {
        matches!(self, DbError::Unavailable(_))
    }
}

/// Shorthand used by every query function.
pub(crate) fn err(error: sqlx::Error) -> DbError {
    DbError::classify(error)
}

/// How long a query waits for a connection. While the database is away, this is how long an
/// API request takes to answer 503: short, so clients get a quick answer and retry.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// A handle to the pool; cheap to clone.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    url: String,
    /// SQLite allows one writer at a time; connections of one process that race for the file
    /// lock fall into SQLite's sleeping busy handler. Taking this lock first turns that into
    /// an orderly queue. Unused on PostgreSQL, where row locks do the work.
    writer: Arc<tokio::sync::Mutex<()>>,
    /// When this process last refreshed the images table's planner statistics (epoch ms).
    analyzed_at: Arc<std::sync::atomic::AtomicI64>,
}

/// (version, SQL) per backend, applied in order; never edit one that has shipped.
const SQLITE_MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/sqlite/0001_init.sql")),
    (
        2,
        include_str!("../../migrations/sqlite/0002_idempotency_and_worker.sql"),
    ),
    (3, include_str!("../../migrations/sqlite/0003_tenants.sql")),
];
const POSTGRES_MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_init.sql")),
    (
        2,
        include_str!("../../migrations/postgres/0002_idempotency_and_worker.sql"),
    ),
    (3, include_str!("../../migrations/postgres/0003_tenants.sql")),
];

/// A bulk insert at least this large refreshes the planner statistics (PostgreSQL).
const ANALYZE_AFTER_ROWS: usize = 10_000;
/// At most one refresh per process in this interval.
const ANALYZE_INTERVAL_MS: i64 = 5 * 60 * 1000;

impl Db {
    /// Opens a pool. A `sqlite:` URL with `mode=rwc` creates the file if it is missing.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, DbError> {
        Self::connect_with(url, max_connections, DEFAULT_ACQUIRE_TIMEOUT).await
    }

    /// [`Db::connect`] with a chosen wait for a free connection.
    pub async fn connect_with(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<Self, DbError> {
        install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let mut options = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout);
        if backend == Backend::Sqlite {
            options = options.after_connect(|conn, _meta| {
                Box::pin(async move {
                    // WAL lets readers (status polls) run beside the one writer; NORMAL
                    // synchronous is durable across process crashes, which is what we promise.
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                         PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                    )
                    .await?;
                    Ok(())
                })
            });
        }
        let pool = options.connect(url).await.map_err(err)?;
        Ok(Self {
            pool,
            backend,
            url: url.to_string(),
            writer: Arc::new(tokio::sync::Mutex::new(())),
            analyzed_at: Arc::new(std::sync::atomic::AtomicI64::new(0)),
        })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Held around every write on SQLite (see [`Db::writer`]); `None` on PostgreSQL.
    pub async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.backend {
            Backend::Sqlite => Some(self.writer.lock().await),
            Backend::Postgres => None,
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// After a large bulk insert, refreshes PostgreSQL's statistics of the images table in
    /// the background. Until autovacuum gets to it (a minute or more), a table that grew by
    /// 100,000 rows is planned as if it were tiny: the results page, for one, would sort the
    /// whole job instead of walking the (job_id, seq) index. Rate-limited per process.
    pub fn refresh_statistics_after(&self, rows: usize) {
        use std::sync::atomic::Ordering;
        if self.backend != Backend::Postgres || rows < ANALYZE_AFTER_ROWS {
            return;
        }
        let now = now_ms();
        let last = self.analyzed_at.load(Ordering::Relaxed);
        if now - last < ANALYZE_INTERVAL_MS
            || self
                .analyzed_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let pool = self.pool.clone();
        tokio::spawn(async move {
            if let Err(error) = pool.execute("ANALYZE images").await {
                tracing::warn!(%error, "could not refresh planner statistics");
            }
        });
    }

    /// A `FROM` item that expands one JSON-array parameter into rows, one per element, each
    /// element itself an array read with `t.value ->> i`. Bulk statements pass their rows this
    /// way: one parameter and one statement text whatever the batch size, so the statement is
    /// prepared once and no backend's parameter limit is ever near.
    pub(crate) fn json_rows(&self, param: &str) -> String {
        match self.backend {
            Backend::Sqlite => format!("json_each({param}) AS t"),
            Backend::Postgres => {
                format!("jsonb_array_elements(CAST({param} AS jsonb)) AS t(value)")
            }
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

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
            conn.execute("SELECT pg_advisory_lock(7210550)")
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
                    .bind(now_ms())
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

/// Milliseconds since the Unix epoch: how every time is stored.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Formats a stored time for the API (RFC 3339, UTC, milliseconds).
pub fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
