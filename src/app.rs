//! Wiring: connect to the database and wait for its schema (or migrate it, see
//! [`crate::db::SchemaStart`]), load the store master, then run the HTTP API and
//! the worker pool (either or both), and retention when it is on, until the shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::auth::sessions::Sessions;
use crate::config::Config;
use crate::db::{self, Db, DbConfig, DbError, SchemaStart};
use crate::fetch::FetchError;
use crate::http;
use crate::metrics::Metrics;
use crate::retention::Pruner;
use crate::stores::{self, StoreMasterError};
use crate::web::{self, AppState};
use crate::webhooks::WebhookSecrets;
use crate::webhooks::keys::{KeyError, keys_at_start};
use crate::webhooks::secrets::SecretsError;
use crate::worker::WorkerPool;

#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    StoreMaster(#[from] StoreMasterError),
    #[error("cannot set up the image downloader: {0}")]
    Fetch(#[from] FetchError),
    #[error("the HTTP server failed: {0}")]
    Serve(#[from] std::io::Error),
    #[error(transparent)]
    Worker(#[from] crate::worker::WorkerError),
    #[error(transparent)]
    SecretKey(#[from] KeyError),
    /// (Not a `source`: its words are in the message, once.)
    #[error("cannot open or reseal the webhook secrets: {0}")]
    Sealing(SecretsError),
}

impl From<SecretsError> for StartError {
    fn from(error: SecretsError) -> Self {
        StartError::Sealing(error)
    }
}

/// Which parts of the service this process runs.
#[derive(Debug, Clone, Copy)]
pub struct Roles {
    pub api: bool,
    pub workers: bool,
}

impl Roles {
    pub fn all() -> Self {
        Self {
            api: true,
            workers: true,
        }
    }
    pub fn api_only() -> Self {
        Self {
            api: true,
            workers: false,
        }
    }
    pub fn workers_only() -> Self {
        Self {
            api: false,
            workers: true,
        }
    }
}

/// Says at start when this process's connections do not fit in what PostgreSQL has left:
/// the pool, and a worker's LISTEN connection. Without it the first sign is a process that
/// cannot connect, minutes later, under load.
async fn warn_if_the_pool_cannot_fit(db: &Db, pool: u32, roles: Roles) {
    let wants = i64::from(pool) + i64::from(roles.workers);
    match db.connection_room().await {
        Ok(Some((room, open))) if open + wants > room => tracing::warn!(
            max_connections = room,
            open,
            this_process = wants,
            "PostgreSQL accepts {room} connections, {open} are open, and this process may open \
             {wants} more: it will be refused connections under load. Raise max_connections, \
             lower --db-max-connections, or pool in front (PgBouncer, session mode)"
        ),
        Ok(Some((room, open))) => tracing::info!(
            max_connections = room,
            open,
            this_process = wants,
            "database connections: {wants} for this process, {open} open of {room}"
        ),
        Ok(None) => {}
        Err(error) => tracing::debug!(%error, "cannot read the server's connection limit"),
    }
}

/// Runs `work` while a stand-in on `listener`'s socket answers `/healthz` (alive) and `/readyz`
/// (not yet); gives the listener back when `work` is done.
async fn answer_health_while<T>(
    listener: TcpListener,
    timeouts: web::serve::ReadTimeouts,
    work: impl Future<Output = T>,
) -> std::io::Result<(TcpListener, T)> {
    let socket = listener.into_std()?;
    let stand_in = TcpListener::from_std(socket.try_clone()?)?;
    let listener = TcpListener::from_std(socket)?;
    let stop = CancellationToken::new();
    let server = tokio::spawn(web::serve::serve(
        stand_in,
        http::waiting_router(),
        timeouts,
        stop.clone(),
    ));
    let out = work.await;
    stop.cancel();
    let _ = server.await;
    Ok((listener, out))
}

/// Of `--db-max-connections`, the connections a process running both roles keeps for its API
/// (a quarter, at least 2; none for one role or a pool under 4): the workers' claims and
/// records never hold every connection a status read or a submit needs.
pub fn api_share(max_connections: u32, roles: Roles) -> u32 {
    if roles.api && roles.workers && max_connections >= 4 {
        (max_connections / 4).max(2)
    } else {
        0
    }
}

/// A built, not yet running service.
pub struct App {
    db: Db,
    /// The API's pool: its own when the process also runs workers, else `db`'s.
    api_db: Db,
    listener: Option<TcpListener>,
    /// A second listener serving only the operations endpoints, open (`serve --metrics-bind`).
    ops_listener: Option<TcpListener>,
    state: Option<AppState>,
    /// Whether the listener serves the whole API or only the operations endpoints.
    api: bool,
    workers: Option<WorkerPool>,
    /// Periodic pruning of old finished jobs (`--retention`), whatever the roles.
    retention: Option<Pruner>,
    /// How long the listeners' clients may take to send a request.
    read_timeouts: web::serve::ReadTimeouts,
}

/// Connects, migrates, loads the store master and prepares the roles asked for. The API role
/// needs a `listener` (bound by the caller, so tests can use port 0 and know the port at once).
pub async fn build(
    config: Config,
    listener: Option<TcpListener>,
    roles: Roles,
) -> Result<App, StartError> {
    // A process with both roles gives its API a pool of its own (see [`api_share`]).
    let api_share = api_share(config.database.max_connections, roles);
    let db = Db::connect_with(&DbConfig {
        max_connections: config.database.max_connections - api_share,
        ..config.database.clone()
    })
    .await?;
    let schema = if config.database.migrate_at_start {
        SchemaStart::Migrate
    } else {
        SchemaStart::Wait
    };
    // A process waiting for `migrate` answers its health checks meanwhile (alive, not ready):
    // a liveness probe must not restart it for waiting as told.
    let (listener, prepared) = match listener {
        Some(listener) if db.backend() == db::Backend::Postgres && schema == SchemaStart::Wait => {
            let (listener, prepared) = answer_health_while(
                listener,
                config.api.read_timeouts,
                db.prepare_schema(schema),
            )
            .await?;
            (Some(listener), prepared)
        }
        listener => (listener, db.prepare_schema(schema).await),
    };
    prepared?;
    warn_if_the_pool_cannot_fit(&db, config.database.max_connections, roles).await;
    load_store_master(&db, &config).await?;
    let webhook_secrets = webhook_secrets(&db, &config).await?;
    let api_db = if api_share > 0 {
        db.share(api_share).await?
    } else {
        db.clone()
    };
    let wake = Arc::new(Notify::new());
    let metrics = Arc::new(Metrics::new());
    // A listener without the API role serves the operations endpoints only (a worker's metrics).
    let bind = listener.as_ref().and_then(|l| l.local_addr().ok());
    let state = listener.is_some().then(|| {
        let mut auth = config.api.auth.clone();
        // A loopback peer is the proxy the operator named, not a local client.
        auth.behind_proxy |= !config.api.trusted_proxies.is_empty();
        let auth = Arc::new(Authenticator::new(api_db.clone(), auth));
        AppState {
            db: api_db.clone(),
            wake: wake.clone(),
            metrics: metrics.clone(),
            limits: config.api.limits,
            max_body_bytes: config.api.max_body_bytes,
            sessions: Arc::new(Sessions::new(
                api_db.clone(),
                auth.clone(),
                config.api.sessions.clone(),
            )),
            auth,
            webhook_secret_overlap: config.webhooks.secret_overlap,
            webhook_secrets: webhook_secrets.clone(),
            trusted_proxies: config.api.trusted_proxies.clone(),
        }
    });
    if let Some(state) = &state {
        state.auth.warn_if_open(bind).await;
    }
    let retention = config.retention.older_than.map(|older_than| {
        Pruner::new(
            db.clone(),
            older_than,
            config.retention.archive_dir.clone(),
            metrics.clone(),
        )
    });
    let workers = if roles.workers {
        Some(WorkerPool::new(
            db.clone(),
            &config.worker,
            &config.fetch,
            &config.webhooks,
            webhook_secrets,
            wake,
            metrics,
        )?)
    } else {
        None
    };
    Ok(App {
        db,
        api_db,
        listener: if state.is_some() { listener } else { None },
        ops_listener: None,
        state,
        api: roles.api,
        workers,
        retention,
        read_timeouts: config.api.read_timeouts,
    })
}

/// The webhook secrets of this process, sealed by its secret key (`None`: webhooks are off).
/// Every row still in clear, or sealed by another key than the first, is resealed first, so
/// that an old key can be retired once every process has started with the new one.
async fn webhook_secrets(
    db: &Db,
    config: &Config,
) -> Result<Option<Arc<WebhookSecrets>>, StartError> {
    let Some(keys) = keys_at_start(db, config.webhooks.secret_keys.clone()).await? else {
        return Ok(None);
    };
    let secrets = WebhookSecrets::new(db.clone(), keys);
    // A row sealed by a key not given is an error: retiring that key was too early.
    let report = secrets.seal_all().await?;
    for tenant in &report.unreadable {
        tracing::error!(
            tenant = %tenant,
            "a webhook secret does not open (altered, or copied from another tenant's row): \
             that tenant's deliveries cannot be signed until its secret is rotated"
        );
    }
    if report.unreadable.is_empty() {
        tracing::info!(
            resealed = report.resealed,
            key.id = secrets.key_id(),
            "every webhook secret is sealed with the first secret key"
        );
    }
    Ok(Some(Arc::new(secrets)))
}

/// An explicit store master is always (re)loaded; the bundled sample only fills an empty table,
/// so a deployment that imported the real master never gets sample stores mixed in.
async fn load_store_master(db: &Db, config: &Config) -> Result<(), StartError> {
    match &config.store_master {
        Some(path) => {
            let list = stores::load_file(path)?;
            let n = db::stores::upsert(db, &list).await?;
            tracing::info!(stores = n, file = %path.display(), "store master loaded");
        }
        None => {
            if db::stores::count(db).await? == 0 {
                let list = stores::parse(stores::SAMPLE_CSV.as_bytes())?;
                let n = db::stores::upsert(db, &list).await?;
                tracing::info!(
                    stores = n,
                    "store master was empty: loaded the bundled sample"
                );
            }
        }
    }
    Ok(())
}

impl App {
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Also serves `/metrics`, `/healthz` and `/readyz`, open to whoever can reach it, on
    /// `listener` (an address for the monitoring network; the API's own `/metrics` needs an
    /// admin key). Only for an app with an API listener.
    pub fn with_ops_listener(mut self, listener: TcpListener) -> Self {
        if self.state.is_some() {
            self.ops_listener = Some(listener);
        }
        self
    }

    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The pool the API reads and writes through (its own beside workers, else [`App::db`]).
    pub fn api_db(&self) -> &Db {
        &self.api_db
    }

    pub fn worker_id(&self) -> Option<&str> {
        self.workers.as_ref().map(|w| w.id())
    }

    /// Runs until `shutdown` resolves, then stops claiming, drains, and closes the pool.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let token = CancellationToken::new();
        let trigger = token.clone();
        tokio::spawn(async move {
            shutdown.await;
            trigger.cancel();
        });
        if let Some(addr) = self.local_addr() {
            tracing::info!(%addr, "listening");
        }
        if let Some(addr) = self.ops_addr() {
            tracing::info!(%addr, "serving metrics and health");
        }
        let ops_router = self.state.clone().map(http::ops_router);
        let ops = async {
            match (self.ops_listener, ops_router) {
                (Some(listener), Some(router)) => {
                    web::serve::serve(listener, router, self.read_timeouts, token.clone()).await
                }
                _ => Ok(()),
            }
        };
        let api = async {
            match (self.listener, self.state) {
                (Some(listener), Some(state)) => {
                    let router = if self.api {
                        let dashboard = crate::ui::router(&state);
                        http::router(state, dashboard)
                    } else {
                        http::ops_router(state)
                    };
                    web::serve::serve(listener, router, self.read_timeouts, token.clone()).await
                }
                _ => Ok(()),
            }
        };
        let workers = async {
            match self.workers {
                Some(pool) => {
                    let result = pool.run(token.clone()).await;
                    // A worker pool that cannot go on takes the whole process down with it,
                    // so a supervisor restarts it (its API would otherwise look healthy).
                    token.cancel();
                    result
                }
                None => Ok(()),
            }
        };
        // The database's clock as this process tells it (Db::now_ms), re-measured every minute.
        let clock = async {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
                    _ = token.cancelled() => return,
                }
                if let Err(error) = self.db.sync_clock().await {
                    tracing::debug!(%error, "could not read the database's clock");
                }
            }
        };
        let retention = async {
            if let Some(pruner) = self.retention {
                pruner.run_periodically(token.clone()).await;
            }
        };
        let (served, ops_served, worked, (), ()) =
            tokio::join!(api, ops, workers, retention, clock);
        self.db.close().await;
        self.api_db.close().await;
        served?;
        ops_served?;
        worked?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_with_both_roles_keeps_a_quarter_of_its_connections_for_the_api() {
        assert_eq!(api_share(16, Roles::all()), 4);
        assert_eq!(api_share(40, Roles::all()), 10);
        assert_eq!(api_share(4, Roles::all()), 2, "at least two");
        assert_eq!(api_share(3, Roles::all()), 0, "too small to split");
        assert_eq!(api_share(16, Roles::workers_only()), 0);
        let api_only = Roles {
            api: true,
            workers: false,
        };
        assert_eq!(api_share(16, api_only), 0);
    }

    #[tokio::test]
    async fn the_api_of_a_process_with_workers_reads_through_a_pool_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.database.url = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
        config.database.max_connections = 16;
        let listen = || async { TcpListener::bind("127.0.0.1:0").await.unwrap() };
        let both = build(config.clone(), Some(listen().await), Roles::all())
            .await
            .unwrap();
        assert_eq!(both.db().max_connections(), 12, "the workers' share");
        assert_eq!(both.api_db().max_connections(), 4, "the API's own");
        assert!(!both.api_db().pool().is_closed());
        let api_only = Roles {
            api: true,
            workers: false,
        };
        let one = build(config, Some(listen().await), api_only).await.unwrap();
        assert_eq!(one.db().max_connections(), 16);
        assert_eq!(one.api_db().max_connections(), 16, "one pool for one role");
    }
}
