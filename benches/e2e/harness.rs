//! What every figure uses: a fresh database per scenario, the service as a separate
//! process, an HTTP client for its API, job payloads, percentiles, and CPU time read from
//! `/proc`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::image_host::ImageHost;
use super::service::Service;

pub const BIN: &str = env!("CARGO_BIN_EXE_retail-pulse");
pub const STORE: &str = "S00339218";

#[derive(Clone, Copy, PartialEq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh database for one scenario, removed afterwards.
pub struct BenchDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    drop: Option<(String, String)>,
}

impl BenchDb {
    pub async fn new(backend: Backend, pg: &Option<String>) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("bench.db").display()
                );
                BenchDb {
                    url,
                    _dir: Some(dir),
                    drop: None,
                }
            }
            Backend::Postgres => {
                let admin = pg.clone().expect("postgres url");
                let name = format!("rp_bench_{:08x}", fastrand::u32(..));
                let pool = sqlx::postgres::PgPool::connect(&admin)
                    .await
                    .expect("reach PostgreSQL");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
                let mut url = url::Url::parse(&admin).unwrap();
                url.set_path(&name);
                // As an operator does: the schema first, then the processes (which wait for it).
                let bin = std::env::var("RP_BENCH_BIN").unwrap_or_else(|_| BIN.to_string());
                let migrated = std::process::Command::new(bin)
                    .arg("migrate")
                    .env("DATABASE_URL", url.as_str())
                    .env("RUST_LOG", "warn")
                    .status()
                    .expect("run retail-pulse migrate");
                assert!(migrated.success(), "retail-pulse migrate failed");
                BenchDb {
                    url: url.to_string(),
                    _dir: None,
                    drop: Some((admin, name)),
                }
            }
        }
    }

    pub async fn remove(mut self) {
        if let Some((admin, name)) = self.drop.take()
            && let Ok(pool) = sqlx::postgres::PgPool::connect(&admin).await
        {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&pool)
            .await;
            pool.close().await;
        }
    }
}

pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
}

impl Client {
    pub fn new(base: &str) -> Self {
        Client {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .unwrap(),
            base: base.to_string(),
        }
    }

    pub async fn submit(&self, body: &str) -> (i64, Duration) {
        let started = Instant::now();
        let res = self
            .http
            .post(format!("{}/api/submit/", self.base))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = res.status();
        let bytes = res.bytes().await.unwrap();
        let took = started.elapsed();
        assert_eq!(status.as_u16(), 201, "{}", String::from_utf8_lossy(&bytes));
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        (v["job_id"].as_i64().unwrap(), took)
    }

    pub async fn get(&self, path: &str) -> (u16, Value, Duration) {
        let started = Instant::now();
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let code = res.status().as_u16();
        let bytes = res.bytes().await.unwrap();
        let took = started.elapsed();
        (
            code,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            took,
        )
    }

    pub async fn job(&self, id: i64) -> Value {
        self.get(&format!("/api/jobs/{id}")).await.1
    }

    /// Polls until the job is finished; returns the time it took from `since`.
    pub async fn wait(&self, id: i64, since: Instant) -> Duration {
        loop {
            let job = self.job(id).await;
            if job["status"] != "ongoing" {
                assert_eq!(job["status"], "completed", "benchmark job failed: {job}");
                return since.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub fn payload(host: &ImageHost, n: usize, offset: usize) -> String {
    // Visits of 10 images each, as field agents' visits usually hold several photos.
    let visits: Vec<Value> = (0..n.div_ceil(10))
        .map(|v| {
            let urls: Vec<String> = (v * 10..((v + 1) * 10).min(n))
                .map(|i| host.url(offset + i).0)
                .collect();
            json!({"store_id": STORE, "image_url": urls, "visit_time": "2026-11-28T10:00:00Z"})
        })
        .collect();
    json!({"count": visits.len(), "visits": visits}).to_string()
}

/// Times `samples` GETs of `paths`, round robin, after one warm-up round of them; each must
/// answer 200 and is read to its end.
pub async fn time_gets(c: &Client, paths: &[String], samples: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples + paths.len() {
        let path = &paths[i % paths.len()];
        let started = Instant::now();
        let res = c
            .http
            .get(format!("{}{path}", c.base))
            .send()
            .await
            .expect("request");
        assert_eq!(res.status().as_u16(), 200, "{path}");
        res.bytes().await.expect("body");
        if i >= paths.len() {
            times.push(started.elapsed());
        }
    }
    times
}

pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

pub fn settings(workers: usize, delay: &str) -> Vec<(&'static str, String)> {
    vec![
        ("RP_WORKERS", workers.to_string()),
        ("RP_PROCESSING_DELAY_MS", delay.to_string()),
        (
            "RUST_LOG",
            // RP_BENCH_RUST_LOG: another filter, to look inside one run (e.g. sqlx::query=debug).
            std::env::var("RP_BENCH_RUST_LOG").unwrap_or_else(|_| {
                "warn,retail_pulse::app=info,retail_pulse::worker=info".to_string()
            }),
        ),
        // The benchmark is one client submitting thousands of jobs: not a rate to limit.
        ("RP_TENANT_SUBMITS_PER_MINUTE", "0".to_string()),
    ]
}

/// Starts the service. `RP_BENCH_BIN` runs another build of it instead (to compare two
/// versions under the same conditions).
pub fn start(sub: &str, db: &BenchDb, env: &[(&'static str, String)]) -> Service {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let bin = std::env::var("RP_BENCH_BIN").unwrap_or_else(|_| BIN.to_string());
    Service::start(&bin, sub, &db.url, &pairs)
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// CPU time (user + system) a process has used so far, from `/proc/PID/stat`.
pub fn cpu_of(pid: u32) -> Duration {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the command name (which may hold spaces) start after the last ')'.
            let rest = stat.rsplit_once(')')?.1.to_string();
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .unwrap_or(0);
    ticks_to_duration(ticks)
}

/// CPU time used so far by every process named `postgres` (the server and its backends;
/// backends that exited meanwhile are counted in their parent's `cutime`/`cstime`).
pub fn postgres_cpu() -> Duration {
    let mut ticks = 0u64;
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let Some((head, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            if !head.ends_with("(postgres") {
                continue;
            }
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let get = |i: usize| -> u64 { fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0) };
            // utime, stime, cutime, cstime
            ticks += get(11) + get(12) + get(13) + get(14);
        }
    }
    ticks_to_duration(ticks)
}

fn ticks_to_duration(ticks: u64) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// Waits until no job is ongoing; returns when that was seen.
pub async fn wait_all_finished(c: &Client, since: Instant, within: Duration) -> Duration {
    loop {
        let (code, body, _) = c.get("/api/jobs?status=ongoing&limit=1").await;
        assert_eq!(code, 200, "{body}");
        if body["jobs"].as_array().is_some_and(|j| j.is_empty()) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < within,
            "jobs still ongoing after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Submits `jobs` jobs of `per_job` images each, `in_flight` at a time; image URLs start at
/// `offset`. Returns the job ids.
pub async fn submit_many(
    c: &std::sync::Arc<Client>,
    host: &ImageHost,
    jobs: usize,
    per_job: usize,
    offset: usize,
) -> Vec<i64> {
    let in_flight = 16;
    let mut ids = Vec::with_capacity(jobs);
    let mut tasks = tokio::task::JoinSet::new();
    for j in 0..jobs {
        if tasks.len() >= in_flight
            && let Some(done) = tasks.join_next().await
        {
            ids.push(done.unwrap());
        }
        let c = c.clone();
        let body = payload(host, per_job, offset + j * per_job);
        tasks.spawn(async move { c.submit(&body).await.0 });
    }
    while let Some(done) = tasks.join_next().await {
        ids.push(done.unwrap());
    }
    ids
}
