//! Shared test harness: a fresh database per test (SQLite file or PostgreSQL database), a
//! local image server that generates real encoded images, the app started in-process on
//! port 0, and a small JSON client.

pub mod binary;
pub mod images;
pub mod keys;
pub mod launch;
pub mod netns;
pub mod range;
pub mod relay;
pub mod service;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use retail_pulse::app::{self, Roles};
use retail_pulse::config::Config;
use retail_pulse::worker::DelayRange;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard, oneshot};
use tokio::task::JoinHandle;

pub use images::ImageServer;

/// The environment variable naming a PostgreSQL server for the tests (any database on it;
/// each test creates and drops its own). Unset: PostgreSQL tests are skipped, loudly.
pub const POSTGRES_ENV: &str = "RP_TEST_POSTGRES_URL";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs each named `async fn name(backend: Backend)` as two tests, `sqlite::name` and
/// `postgres::name`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(_turn) = $crate::common::postgres_turn(stringify!($name)).await
                    else {
                        return;
                    };
                    super::$name($crate::common::Backend::Postgres).await
                }
            )*
        }
    };
}
pub(crate) use on_both_backends;

/// True when PostgreSQL tests can run; otherwise says clearly that this one is skipped.
fn postgres_available(test: &str) -> bool {
    if std::env::var(POSTGRES_ENV).is_ok_and(|v| !v.is_empty()) {
        true
    } else {
        eprintln!(
            "SKIPPED postgres::{test}: set {POSTGRES_ENV} (e.g. postgres://postgres@127.0.0.1/test) to run it"
        );
        false
    }
}

/// Every PostgreSQL test of this binary uses the same server, and one of them stops it
/// (`outage::postgres_restart_mid_job_is_ridden_out`): that one runs alone
/// ([`postgres_alone`]), the others share it ([`postgres_turn`]). Each test takes its turn
/// once, at its start, and holds it to its end — never twice, as a second shared turn would
/// wait behind a test waiting to be alone.
static POSTGRES_TURNS: RwLock<()> = RwLock::const_new(());

/// For a PostgreSQL test: its turn on the server, shared with the other PostgreSQL tests and
/// held until dropped; `None` (after saying it is skipped) when PostgreSQL tests cannot run.
pub async fn postgres_turn(test: &str) -> Option<RwLockReadGuard<'static, ()>> {
    if !postgres_available(test) {
        return None;
    }
    Some(POSTGRES_TURNS.read().await)
}

/// For a test that disturbs every connection to the server (a restart): waits until no other
/// PostgreSQL test runs, and keeps them waiting until dropped. `None` as [`postgres_turn`].
pub async fn postgres_alone(test: &str) -> Option<RwLockWriteGuard<'static, ()>> {
    if !postgres_available(test) {
        return None;
    }
    Some(POSTGRES_TURNS.write().await)
}

/// A database made for one test and removed after it.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_drop: Option<(String, String)>,
}

impl TestDb {
    /// A database for one test, with the schema in place (as `retail-pulse migrate` leaves it).
    pub async fn new(backend: Backend) -> Self {
        let db = Self::empty(backend).await;
        if backend == Backend::Postgres {
            // As an operator does: `migrate` first; the service processes wait for it.
            let handle = retail_pulse::db::Db::connect(&db.url, 1)
                .await
                .expect("connect to the test database");
            handle.migrate().await.expect("migrate the test database");
            handle.close().await;
        }
        db
    }

    /// A database for one test with no schema yet (SQLite processes make it themselves).
    pub async fn empty(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                let path: PathBuf = dir.path().join("test.db");
                TestDb {
                    url: format!("sqlite://{}?mode=rwc", path.display()),
                    _dir: Some(dir),
                    pg_drop: None,
                }
            }
            Backend::Postgres => {
                let admin = std::env::var(POSTGRES_ENV).expect("postgres url");
                let name = format!("rp_test_{}_{:08x}", std::process::id(), fastrand::u32(..));
                let conn = sqlx::postgres::PgPool::connect(&admin)
                    .await
                    .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {admin}: {e}"));
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&conn)
                    .await
                    .expect("create test database");
                conn.close().await;
                let mut url = url::Url::parse(&admin).expect("postgres url");
                url.set_path(&name);
                TestDb {
                    url: url.to_string(),
                    _dir: None,
                    pg_drop: Some((admin, name)),
                }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.pg_drop.take() {
            // Drop runs outside async: use a private runtime on a plain thread.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(conn) = sqlx::postgres::PgPool::connect(&admin).await {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&conn)
                        .await;
                        conn.close().await;
                    }
                });
            })
            .join();
        }
    }
}

/// A configuration for tests: local image server allowed, no GPU delay, short leases; on
/// PostgreSQL the secret key the spawned processes get too ([`launch::TEST_SECRET_KEY`]; on
/// SQLite the service keeps its own key file beside the database).
pub fn test_config(db: &TestDb) -> Config {
    let mut config = Config::default();
    config.database.url = db.url.clone();
    if db.url.starts_with("postgres") {
        config.webhooks.secret_keys = Some(
            retail_pulse::webhooks::sealing::KeyRing::parse_list(
                launch::TEST_SECRET_KEY,
                "test key",
            )
            .expect("a key"),
        );
    }
    config.database.max_connections = 8;
    // A loaded CI machine can be slow to hand out a connection; 503s are tested elsewhere.
    config.database.acquire_timeout = Duration::from_secs(10);
    config.fetch.allow_private_networks = true;
    config.fetch.timeout = Duration::from_secs(5);
    config.worker.processing_delay = DelayRange {
        min_ms: 0,
        max_ms: 0,
    };
    config.worker.concurrency = 8;
    config.worker.lease = Duration::from_secs(5);
    config.worker.poll_interval = Duration::from_millis(200);
    config.worker.retry_base = Duration::from_millis(50);
    config.worker.retry_max = Duration::from_millis(500);
    config.worker.shutdown_grace = Duration::from_secs(2);
    config
}

/// The app running in this test process.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl TestApp {
    pub async fn start(config: Config) -> Self {
        Self::start_with(config, Roles::all()).await
    }

    pub async fn start_with(config: Config, roles: Roles) -> Self {
        Self::start_on(config, roles, "127.0.0.1:0").await
    }

    /// Starts the app listening on `bind` (e.g. `0.0.0.0:0`, to be reached from a network
    /// namespace); `base` still points at it through loopback.
    pub async fn start_on(config: Config, roles: Roles, bind: &str) -> Self {
        let listener = TcpListener::bind(bind).await.expect("bind");
        let app = app::build(config, Some(listener), roles)
            .await
            .expect("app builds");
        let mut addr = app.local_addr().expect("api role has an address");
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            app.run(async {
                let _ = stopped.await;
            })
            .await
            .expect("app runs");
        });
        TestApp {
            base: format!("http://{addr}"),
            client: client(),
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    /// Graceful stop, as on SIGTERM; waits until the app has shut down.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(30), handle)
                .await
                .expect("app stops within 30 s")
                .expect("app task");
        }
    }

    /// The port the app listens on.
    pub fn port(&self) -> u16 {
        self.base.rsplit(':').next().unwrap().parse().expect("port")
    }

    /// Any request, with an optional API key (`Authorization: Bearer KEY`): the whole answer.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<String>,
    ) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let res = req.send().await.expect("request");
        let code = res.status().as_u16();
        let headers = res.headers().clone();
        let bytes = res.bytes().await.expect("body");
        Answer {
            code,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let res = self
            .client
            .post(format!("{}{path}", self.base))
            .body(body)
            .send()
            .await
            .expect("request");
        read(res).await
    }

    pub async fn submit(&self, payload: &Value) -> (u16, Value) {
        self.post_raw("/api/submit/", payload.to_string()).await
    }

    /// Submits and returns the job id, asserting 201.
    pub async fn submit_ok(&self, payload: &Value) -> i64 {
        let (code, body) = self.submit(payload).await;
        assert_eq!(code, 201, "submit answered {code}: {body}");
        body["job_id"].as_i64().expect("job_id is an integer")
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let res = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request");
        read(res).await
    }

    pub async fn status(&self, job_id: i64) -> Value {
        let (code, body) = self.get(&format!("/api/status?jobid={job_id}")).await;
        assert_eq!(code, 200, "{body}");
        body
    }

    /// Polls the assignment's status until the job is no longer ongoing.
    pub async fn wait_finished(&self, job_id: i64, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let body = self.status(job_id).await;
            if body["status"] != "ongoing" {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "job {job_id} still ongoing after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Every image of a job through the paginated results endpoint.
    pub async fn all_images(&self, job_id: i64, page: usize) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let path = match &after {
                Some(c) => format!("/api/jobs/{job_id}/images?limit={page}&after={c}"),
                None => format!("/api/jobs/{job_id}/images?limit={page}"),
            };
            let (code, body) = self.get(&path).await;
            assert_eq!(code, 200, "{body}");
            out.extend(
                body["images"]
                    .as_array()
                    .expect("images array")
                    .iter()
                    .cloned(),
            );
            match body["next"].as_str() {
                Some(c) => after = Some(c.to_string()),
                None => return out,
            }
        }
    }
}

/// An HTTP answer: status, headers and body text.
#[derive(Debug)]
pub struct Answer {
    pub code: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Answer {
    /// The body as JSON (panics, showing it, when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|_| panic!("response {} is not JSON: {}", self.code, self.text))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn read(res: reqwest::Response) -> (u16, Value) {
    let code = res.status().as_u16();
    let bytes = res.bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        panic!(
            "response {code} is not JSON: {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (code, body)
}

/// A job payload of the assignment's shape: one visit per (store, urls) pair.
pub fn payload(visits: &[(&str, Vec<String>)]) -> Value {
    let visits: Vec<Value> = visits
        .iter()
        .map(|(store, urls)| serde_json::json!({"store_id": store, "image_url": urls, "visit_time": "2026-11-28T10:00:00Z"}))
        .collect();
    serde_json::json!({"count": visits.len(), "visits": visits})
}

/// An HTTP client for tests (with the TLS crypto provider the service uses installed).
pub fn client() -> reqwest::Client {
    retail_pulse::fetch::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A store id from the bundled sample store master.
pub const STORE_A: &str = "S00339218";
pub const STORE_B: &str = "S01408764";
pub const STORE_C: &str = "RP90001";
