//! The database flags every subcommand that opens the database shares, and the one way they
//! open it ([`DbArgs::open`]).

use clap::Args;

use super::values::secs;
use crate::db::{self, Db, DbConfig, SchemaStart, SessionLimits};

#[derive(Debug, Args, Clone)]
pub struct DbArgs {
    /// Database URL: `sqlite://FILE?mode=rwc` or `postgres://USER@HOST/DB`.
    #[arg(long, env = "DATABASE_URL", default_value = db::DEFAULT_URL)]
    pub database_url: String,
    /// Connections in the pool.
    #[arg(long, env = "RP_DB_MAX_CONNECTIONS", default_value_t = DbConfig::default().max_connections)]
    pub db_max_connections: u32,
    /// Seconds a query waits for a free connection; while the database is away, how long the
    /// API takes to answer 503.
    #[arg(long, env = "RP_DB_ACQUIRE_TIMEOUT_SECS", default_value_t = DbConfig::default().acquire_timeout.as_secs_f64())]
    pub db_acquire_timeout_secs: f64,
    /// PostgreSQL: seconds a session may sit idle inside a transaction before the server ends
    /// it and frees its locks (0: the server's default).
    #[arg(
        long,
        env = "RP_DB_IDLE_IN_TRANSACTION_TIMEOUT_SECS",
        default_value_t = SessionLimits::default().idle_in_transaction.as_secs_f64()
    )]
    pub db_idle_in_transaction_timeout_secs: f64,
    /// PostgreSQL: seconds a statement waits for a row lock before giving up (the queue backs
    /// off and retries; 0: wait forever).
    #[arg(long, env = "RP_DB_LOCK_TIMEOUT_SECS", default_value_t = SessionLimits::default().lock_wait.as_secs_f64())]
    pub db_lock_timeout_secs: f64,
    /// PostgreSQL: seconds any statement may run (0: no limit).
    #[arg(long, env = "RP_DB_STATEMENT_TIMEOUT_SECS", default_value_t = SessionLimits::default().statement.as_secs_f64())]
    pub db_statement_timeout_secs: f64,
    /// PostgreSQL: TCP keepalive idle seconds on both ends; a peer that stopped answering is
    /// declared dead after about twice this (0: the systems' defaults, about 2 h).
    #[arg(long, env = "RP_DB_KEEPALIVE_SECS", default_value_t = SessionLimits::default().keepalive.as_secs_f64())]
    pub db_keepalive_secs: f64,
    /// Seconds one queue operation (claim, heartbeat, a batch of results) may take before its
    /// connection is dropped and the operation retried (0: no deadline).
    #[arg(long, env = "RP_DB_OPERATION_TIMEOUT_SECS", default_value_t = SessionLimits::default().operation.as_secs_f64())]
    pub db_operation_timeout_secs: f64,
}

impl DbArgs {
    /// The database part of the configuration.
    pub fn to_config(&self) -> anyhow::Result<DbConfig> {
        Ok(DbConfig {
            url: self.database_url.clone(),
            max_connections: self.db_max_connections,
            acquire_timeout: secs(self.db_acquire_timeout_secs, "db-acquire-timeout-secs")?,
            session: SessionLimits {
                idle_in_transaction: secs(
                    self.db_idle_in_transaction_timeout_secs,
                    "db-idle-in-transaction-timeout-secs",
                )?,
                lock_wait: secs(self.db_lock_timeout_secs, "db-lock-timeout-secs")?,
                statement: secs(self.db_statement_timeout_secs, "db-statement-timeout-secs")?,
                keepalive: secs(self.db_keepalive_secs, "db-keepalive-secs")?,
                operation: secs(self.db_operation_timeout_secs, "db-operation-timeout-secs")?,
            },
            migrate_at_start: false,
        })
    }
}

impl DbArgs {
    /// Connects as every database flag says: the one way each subcommand opens the database.
    pub async fn open(&self) -> anyhow::Result<Db> {
        Ok(Db::connect_with(&self.to_config()?).await?)
    }

    /// [`DbArgs::open`], for a one-shot command: on PostgreSQL it fails at once, saying what
    /// to run, unless the schema is one this binary runs on (it never migrates production by
    /// being started); the embedded SQLite database is migrated.
    pub async fn open_ready(&self) -> anyhow::Result<Db> {
        let db = self.open().await?;
        db.prepare_schema(SchemaStart::Check).await?;
        Ok(db)
    }
}
