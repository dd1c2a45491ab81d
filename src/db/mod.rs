//! The database: one connection pool over SQLite or PostgreSQL, chosen by the URL scheme, with
//! the migrations of each backend and the queries per area (`jobs`, `images`, `stores`, `keys`,
//! `workers`, `webhooks`, `retention`, and `dashboard` for the read-only views of the dashboard).
//!
//! Queries go through sqlx's `Any` driver with `$n` placeholders, which both backends accept,
//! so there is one query path; the few statements whose SQL must differ (the queue's claim)
//! branch on [`Backend`].

pub mod counts;
pub(crate) mod dashboard;
pub mod images;
pub mod jobs;
pub(crate) mod keys;
pub(crate) mod origins;
pub mod rates;
pub mod retention;
pub(crate) mod session;
pub mod stores;
pub(crate) mod ui_sessions;
pub(crate) mod webhooks;
pub(crate) mod workers;

mod dialect;
mod migrate;
mod row;

pub(crate) use row::from_row;

use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyConnection, AnyPool, AssertSqlSafe, Executor};
use thiserror::Error;

pub use migrate::{SchemaFit, SchemaStart};
pub use session::SessionLimits;

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
    /// A lock, deadlock or serialization conflict, a statement cut short by a timeout, or an
    /// operation past its client-side deadline: transient, try again after a short wait.
    #[error("database busy: {0}")]
    Contended(String),
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
    #[error("migration {version} failed: {source}")]
    Migration {
        version: i64,
        #[source]
        source: sqlx::Error,
    },
    /// The database's schema is not one this binary can run on (behind it, or too new).
    #[error("{0}")]
    Schema(String),
    /// A value could not be converted between its stored form and its Rust form (an unknown
    /// status word, JSON that does not parse or cannot be written).
    #[error("cannot convert stored data: {0}")]
    Encoding(String),
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
            // A peer that speaks no PostgreSQL (a pooler or balancer whose server is gone
            // accepts and closes): the database is away, not the query wrong.
            | sqlx::Error::Protocol(_)
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
            sqlx::Error::Database(ref db)
                if db.code().is_some_and(|c| {
                    // lock_not_available (lock_timeout), query_canceled (statement_timeout),
                    // deadlock_detected, serialization_failure, and a session the server
                    // ended for idling in a transaction.
                    ["55P03", "57014", "40P01", "40001", "25P03"].contains(&c.as_ref())
                }) =>
            {
                DbError::Contended(error.to_string())
            }
            sqlx::Error::Database(ref db) if db.is_unique_violation() => DbError::Duplicate(error),
            other => DbError::Query(other),
        }
    }

    /// Whether waiting and trying again may succeed (the database is away or busy).
    pub fn is_transient(&self) -> bool {
        matches!(self, DbError::Unavailable(_) | DbError::Contended(_))
    }
}

/// Shorthand used by every query function.
pub(crate) fn err(error: sqlx::Error) -> DbError {
    DbError::classify(error)
}

/// How long a query waits for a connection. While the database is away, this is how long an
/// API request takes to answer 503: short, so clients get a quick answer and retry. It also
/// bounds the liveness check of a pooled connection (a ping before it is handed out), so a
/// connection the network silently cut answers 503 in this time too, within 2 s in all.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_millis(1500);

/// Default database: a SQLite file in the working directory, created on first run.
pub const DEFAULT_URL: &str = "sqlite://retail-pulse.db?mode=rwc";

/// Where the database is and how its connections behave.
#[derive(Debug, Clone)]
pub struct DbConfig {
    pub url: String,
    pub max_connections: u32,
    /// How long a query waits for a connection (and so how fast an outage answers 503).
    pub acquire_timeout: Duration,
    /// Timeouts and keepalives every session runs under (see [`session`]).
    pub session: SessionLimits,
    /// Apply missing migrations at start on PostgreSQL too (`--migrate`); without it a
    /// service process waits for `retail-pulse migrate` (SQLite always migrates).
    pub migrate_at_start: bool,
}

impl Default for DbConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_URL.to_string(),
            max_connections: 16,
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
            session: SessionLimits::default(),
            migrate_at_start: false,
        }
    }
}

/// A handle to the pool; cheap to clone.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    url: String,
    /// How the pool was opened (for [`Db::share`]).
    config: DbConfig,
    limits: SessionLimits,
    /// SQLite allows one writer at a time; connections of one process that race for the file
    /// lock fall into SQLite's sleeping busy handler. Taking this lock first turns that into
    /// an orderly queue. Unused on PostgreSQL, where row locks do the work.
    writer: Arc<tokio::sync::Mutex<()>>,
    /// When this process last refreshed the images table's planner statistics (epoch ms).
    analyzed_at: Arc<std::sync::atomic::AtomicI64>,
    /// The database's clock minus this host's, in ms, as last measured ([`Db::sync_clock`]).
    clock_offset: Arc<std::sync::atomic::AtomicI64>,
}

/// A bulk insert at least this large refreshes the planner statistics (PostgreSQL).
const ANALYZE_AFTER_ROWS: usize = 10_000;
/// At most one refresh per process in this interval.
const ANALYZE_INTERVAL_MS: i64 = 5 * 60 * 1000;

impl Db {
    /// Opens a pool with the default session limits. A `sqlite:` URL with `mode=rwc` creates
    /// the file if it is missing.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, DbError> {
        Self::connect_with(&DbConfig {
            url: url.to_string(),
            max_connections,
            ..DbConfig::default()
        })
        .await
    }

    /// Opens a pool as configured: size, wait for a connection, and the limits every session
    /// runs under (see [`session`]).
    pub async fn connect_with(config: &DbConfig) -> Result<Self, DbError> {
        install_default_drivers();
        let url = config.url.as_str();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let pool = open_pool(config, backend).await?;
        let db = Self {
            pool,
            backend,
            url: url.to_string(),
            config: config.clone(),
            limits: config.session,
            writer: Arc::new(tokio::sync::Mutex::new(())),
            analyzed_at: Arc::new(std::sync::atomic::AtomicI64::new(0)),
            clock_offset: Arc::new(std::sync::atomic::AtomicI64::new(0)),
        };
        db.sync_clock().await?;
        Ok(db)
    }

    /// Another pool of `max_connections` on the same database, sharing this one's SQLite
    /// write turn and clock: what the API of a process that also runs workers reads and writes
    /// through, so that a status read never waits for a connection a claim holds. An in-memory
    /// SQLite database cannot be opened twice: it shares this pool instead.
    pub async fn share(&self, max_connections: u32) -> Result<Db, DbError> {
        if self.backend == Backend::Sqlite && sqlite_file(&self.url).is_none() {
            return Ok(self.clone());
        }
        let config = DbConfig {
            max_connections,
            ..self.config.clone()
        };
        Ok(Self {
            pool: open_pool(&config, self.backend).await?,
            config,
            ..self.clone()
        })
    }

    /// Measures how far the database's clock is from this host's (half the round trip is the
    /// error), so that [`Db::now_ms`] tells the database's time without asking it. Called at
    /// start and about once a minute after (`app`).
    pub async fn sync_clock(&self) -> Result<i64, DbError> {
        let before = local_now_ms();
        let theirs = self.now().await?;
        let after = local_now_ms();
        let offset = theirs - (before + after) / 2;
        self.clock_offset
            .store(offset, std::sync::atomic::Ordering::Relaxed);
        Ok(offset)
    }

    /// Now on the database's clock, in epoch milliseconds, without a query: this host's clock
    /// corrected by the last measured offset. What every time written or compared outside SQL
    /// uses, so a host whose clock is off still agrees with the others (and with the times
    /// SQL writes with `{now}`).
    pub fn now_ms(&self) -> i64 {
        local_now_ms() + self.clock_offset.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `op` on one connection of the pool under the client-side deadline of a queue
    /// operation ([`SessionLimits::operation`]). Past the deadline the connection is detached
    /// and closed rather than returned to the pool (returning it would first ping a peer that
    /// may never answer), and the operation fails as [`DbError::Contended`]: the caller backs
    /// off and retries on a fresh connection. A transaction opened inside `op` that does not
    /// finish is rolled back by the server when the connection closes.
    pub async fn timed<T>(
        &self,
        op: impl AsyncFnOnce(&mut AnyConnection) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let mut conn = self.pool.acquire().await.map_err(err)?;
        if self.limits.operation.is_zero() {
            return op(&mut conn).await;
        }
        match tokio::time::timeout(self.limits.operation, op(&mut conn)).await {
            Ok(result) => result,
            Err(_) => {
                drop(conn.detach());
                Err(DbError::Contended(format!(
                    "no answer from the database within {:?}; connection dropped",
                    self.limits.operation
                )))
            }
        }
    }

    /// The most connections this pool opens.
    pub fn max_connections(&self) -> u32 {
        self.config.max_connections
    }

    /// The limits every session of this pool runs under.
    pub fn limits(&self) -> SessionLimits {
        self.limits
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

    /// PostgreSQL: how many connections the server accepts from ordinary roles
    /// (`max_connections` less the superusers' reserve) and how many clients hold now, so a
    /// process can say at start when its pool cannot fit. `None` on SQLite.
    pub async fn connection_room(&self) -> Result<Option<(i64, i64)>, DbError> {
        if self.backend != Backend::Postgres {
            return Ok(None);
        }
        let room: (i64, i64) = sqlx::query_as(
            "SELECT CAST(current_setting('max_connections') AS BIGINT) \
                    - CAST(current_setting('superuser_reserved_connections') AS BIGINT), \
                    (SELECT COUNT(*) FROM pg_stat_activity WHERE backend_type = 'client backend')",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(err)?;
        Ok(Some(room))
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
        let now = local_now_ms();
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

    /// The SQL expression for "now", in epoch milliseconds, on the database's own clock:
    /// `now()` on PostgreSQL (the transaction's start, the same for every worker host), the
    /// database file's host clock on SQLite.
    pub fn clock(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => "CAST(EXTRACT(EPOCH FROM now()) * 1000 AS BIGINT)",
            Backend::Sqlite => "CAST(unixepoch('subsec') * 1000 AS INTEGER)",
        }
    }

    /// `sql` with every `{now}` replaced by [`Db::clock`]: how queries say "now", so that
    /// leases, retries and timestamps never depend on the clock of the host that runs them.
    pub fn with_clock(&self, sql: &str) -> String {
        sql.replace("{now}", self.clock())
    }

    /// The database's clock, in epoch milliseconds.
    pub async fn now(&self) -> Result<i64, DbError> {
        sqlx::query_scalar(AssertSqlSafe(self.with_clock("SELECT {now}")))
            .fetch_one(&self.pool)
            .await
            .map_err(err)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The file of a SQLite database (`None` for an in-memory one, and for PostgreSQL).
    pub fn sqlite_file(&self) -> Option<std::path::PathBuf> {
        match self.backend {
            Backend::Sqlite => sqlite_file(&self.url),
            Backend::Postgres => None,
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A pool as configured: size, wait for a connection, and the limits every session runs
/// under (see [`session`]).
async fn open_pool(config: &DbConfig, backend: Backend) -> Result<AnyPool, DbError> {
    let url = config.url.as_str();
    let limits = config.session;
    let mut options = AnyPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout);
    options = match backend {
        Backend::Sqlite => options.after_connect(move |conn, _meta| {
            Box::pin(async move {
                // WAL lets readers (status polls) run beside the one writer; NORMAL
                // synchronous is durable across process crashes, which is what we promise.
                conn.execute(sqlx::raw_sql(AssertSqlSafe(format!(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                     PRAGMA foreign_keys = ON; {}",
                    limits.sqlite_busy_timeout()
                ))))
                .await?;
                Ok(())
            })
        }),
        Backend::Postgres => {
            // JIT compilation off: every statement here is a short, indexed one, but the
            // planner cannot know how many rows a JSON parameter holds and guesses costs past
            // `jit_above_cost`, and compiling then took 10–15 ms of a 1 ms claim (measured:
            // a 100,000-image job drained at a third of its rate, its claims 232 µs per image).
            let settings = format!("SET jit = off; {}", limits.postgres_settings());
            let server = server_address(url);
            options.after_connect(move |conn, _meta| {
                let settings = settings.clone();
                let server = server.clone();
                Box::pin(async move {
                    if let Some((host, port)) = server {
                        let peers: Vec<_> = tokio::net::lookup_host((host.as_str(), port))
                            .await
                            .map(|a| a.collect())
                            .unwrap_or_default();
                        limits.configure_client_sockets(&peers);
                    }
                    conn.execute(sqlx::raw_sql(AssertSqlSafe(settings))).await?;
                    Ok(())
                })
            })
        }
    };
    options.connect(url).await.map_err(err)
}

/// The file a `sqlite:` URL names: `sqlite://FILE?…`, `sqlite:FILE`; `None` for an in-memory
/// database (`sqlite::memory:`, `sqlite://:memory:`, `mode=memory`).
fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let memory =
        url::form_urlencoded::parse(query.as_bytes()).any(|(k, v)| k == "mode" && v == "memory");
    if memory || path.is_empty() || path == ":memory:" {
        return None;
    }
    let path = percent_decode(path);
    Some(std::path::PathBuf::from(path))
}

/// `%XX` escapes decoded (sqlx lets a file name hold `?` or `#` so).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Host and port of a `postgres://` URL (`None` for a Unix socket or an unparsable URL).
fn server_address(url: &str) -> Option<(String, u16)> {
    let parsed = url::Url::parse(url).ok()?;
    let host = parsed.host_str()?.trim_matches(['[', ']']).to_string();
    if host.is_empty() || host.starts_with('/') {
        return None;
    }
    Some((host, parsed.port().unwrap_or(5432)))
}

/// Milliseconds since the Unix epoch on this host's clock (only [`Db::now_ms`] uses it).
fn local_now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod file_tests {
    use super::sqlite_file;
    use std::path::PathBuf;

    #[test]
    fn a_sqlite_url_names_its_file_unless_in_memory() {
        let file = |url| sqlite_file(url);
        assert_eq!(
            file("sqlite://retail-pulse.db?mode=rwc"),
            Some(PathBuf::from("retail-pulse.db"))
        );
        assert_eq!(
            file("sqlite:///tmp/x/test.db?mode=rwc"),
            Some(PathBuf::from("/tmp/x/test.db"))
        );
        assert_eq!(file("sqlite:data.db"), Some(PathBuf::from("data.db")));
        assert_eq!(file("sqlite://a%3Fb.db"), Some(PathBuf::from("a?b.db")));
        for memory in [
            "sqlite::memory:",
            "sqlite://:memory:",
            "sqlite://?mode=memory",
            "sqlite://x.db?mode=memory",
        ] {
            assert_eq!(file(memory), None, "{memory}");
        }
    }
}

#[cfg(test)]
mod classify_tests {
    use super::DbError;

    #[test]
    fn a_peer_that_speaks_no_postgresql_is_a_database_away_not_a_bad_query() {
        // What sqlx says when a pooler or balancer accepts and closes at once (a hostile pass:
        // it was a 500).
        let error = sqlx::Error::Protocol("unexpected response from SSLRequest: 0x00".into());
        let classified = DbError::classify(error);
        assert!(classified.is_transient(), "{classified:?}");
        assert!(matches!(classified, DbError::Unavailable(_)));
    }
}
