//! End-to-end benchmark: the real `retail-pulse` binary against a local image host, on SQLite
//! and (when `RP_BENCH_POSTGRES_URL` or `RP_TEST_POSTGRES_URL` is set) on PostgreSQL.
//!
//! Run: `cargo bench --bench e2e` (or `scripts/bench`, which also finds the local PostgreSQL).
//! Prints one table and writes it to `docs/BENCHMARKS.md`.
//!
//! Knobs (environment): RP_BENCH_IMAGES (10000), RP_BENCH_BIG_IMAGES (100000),
//! RP_BENCH_WORKERS (32: images in flight for P1, P4, P5, P6 and the fetch limit),
//! RP_BENCH_P2_WORKERS (100), RP_BENCH_SUBMITS (20), RP_BENCH_POLLERS (32),
//! RP_BENCH_OUT (docs/BENCHMARKS.md).

#[path = "../../tests/common/service.rs"]
mod service;

mod image_host;

use std::sync::Arc;
use std::time::{Duration, Instant};

use image_host::ImageHost;
use serde_json::{Value, json};
use service::Service;

const BIN: &str = env!("CARGO_BIN_EXE_retail-pulse");
const STORE: &str = "S00339218";

struct Opts {
    images: usize,
    big_images: usize,
    workers: usize,
    p2_workers: usize,
    submits: usize,
    pollers: usize,
    out: String,
    postgres: Option<String>,
    /// RP_BENCH_ONLY=p1,p3: run only these scenarios (for profiling one figure).
    only: Option<Vec<String>>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Opts {
    fn from_env() -> Self {
        Opts {
            images: env_or("RP_BENCH_IMAGES", 10_000),
            big_images: env_or("RP_BENCH_BIG_IMAGES", 100_000),
            workers: env_or("RP_BENCH_WORKERS", 32),
            p2_workers: env_or("RP_BENCH_P2_WORKERS", 100),
            submits: env_or("RP_BENCH_SUBMITS", 20),
            pollers: env_or("RP_BENCH_POLLERS", 32),
            out: env_or("RP_BENCH_OUT", "docs/BENCHMARKS.md".to_string()),
            postgres: std::env::var("RP_BENCH_POSTGRES_URL")
                .or_else(|_| std::env::var("RP_TEST_POSTGRES_URL"))
                .ok()
                .filter(|s| !s.is_empty()),
            only: std::env::var("RP_BENCH_ONLY")
                .ok()
                .map(|v| v.split(',').map(|s| s.trim().to_lowercase()).collect()),
        }
    }

    fn runs(&self, scenario: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|s| s == scenario))
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh database for one scenario, removed afterwards.
struct BenchDb {
    url: String,
    _dir: Option<tempfile::TempDir>,
    drop: Option<(String, String)>,
}

impl BenchDb {
    async fn new(backend: Backend, pg: &Option<String>) -> Self {
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
                BenchDb {
                    url: url.to_string(),
                    _dir: None,
                    drop: Some((admin, name)),
                }
            }
        }
    }

    async fn remove(mut self) {
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

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn new(base: &str) -> Self {
        Client {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .unwrap(),
            base: base.to_string(),
        }
    }

    async fn submit(&self, body: &str) -> (i64, Duration) {
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

    async fn get(&self, path: &str) -> (u16, Value, Duration) {
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

    async fn job(&self, id: i64) -> Value {
        self.get(&format!("/api/jobs/{id}")).await.1
    }

    /// Polls until the job is finished; returns the time it took from `since`.
    async fn wait(&self, id: i64, since: Instant) -> Duration {
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

fn payload(host: &ImageHost, n: usize, offset: usize) -> String {
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

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The ceiling: the workers' own HTTP client and concurrency, fetching and measuring with no
/// database at all.
async fn fetch_limit(host: &ImageHost, n: usize, concurrency: usize) -> f64 {
    let mut config = retail_pulse::config::Config::default().fetch;
    config.allow_private_networks = true;
    let fetcher = retail_pulse::fetch::Fetcher::new(&config).unwrap();
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = slots.clone().acquire_owned().await.unwrap();
        let fetcher = fetcher.clone();
        let (url, _) = host.url(i);
        tasks.spawn(async move {
            // Exactly what a worker does with an image, minus the database.
            let download = fetcher
                .download(&url, retail_pulse::measure::is_readable)
                .await
                .expect("fetch");
            retail_pulse::measure::measure(&download.head).expect("measure");
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    n as f64 / started.elapsed().as_secs_f64()
}

/// Everything measured for one backend.
#[derive(Default)]
struct Figures {
    p1_rate: f64,
    p2_makespan: Duration,
    p2_ideal: Duration,
    p3: (Duration, Duration),
    p4: (Duration, Duration, usize, usize),
    p5_rss: u64,
    p5_rate: f64,
    flat_status: (Duration, Duration),
    flat_page: (Duration, Duration),
    flat_rate: (f64, f64),
    p6: Option<(f64, f64)>,
}

fn settings(workers: usize, delay: &str) -> Vec<(&'static str, String)> {
    vec![
        ("RP_WORKERS", workers.to_string()),
        ("RP_PROCESSING_DELAY_MS", delay.to_string()),
        (
            "RUST_LOG",
            "warn,retail_pulse::app=info,retail_pulse::worker=info".to_string(),
        ),
    ]
}

fn start(sub: &str, db: &BenchDb, env: &[(&'static str, String)]) -> Service {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Service::start(BIN, sub, &db.url, &pairs)
}

async fn run_backend(backend: Backend, host: &ImageHost, o: &Opts) -> Figures {
    let name = if backend == Backend::Sqlite {
        "sqlite"
    } else {
        "postgres"
    };
    let mut f = Figures::default();

    // P1: throughput with no processing delay.
    if o.runs("p1") {
        let db = BenchDb::new(backend, &o.postgres).await;
        let svc = start("serve", &db, &settings(o.workers, "0"));
        let c = Client::new(&svc.base);
        let body = payload(host, o.images, 0);
        let (id, _) = c.submit(&body).await;
        let t = c.wait(id, Instant::now()).await;
        f.p1_rate = o.images as f64 / t.as_secs_f64();
        eprintln!("[{name}] P1 {:.0} images/s", f.p1_rate);
        svc.terminate();
        db.remove().await;
    }
    // P2: makespan with the default 100–400 ms delay.
    if o.runs("p2") {
        let db = BenchDb::new(backend, &o.postgres).await;
        let svc = start("serve", &db, &settings(o.p2_workers, "100-400"));
        let c = Client::new(&svc.base);
        let body = payload(host, o.images, 0);
        let t0 = Instant::now();
        let (id, _) = c.submit(&body).await;
        f.p2_makespan = c.wait(id, t0).await;
        f.p2_ideal = Duration::from_secs_f64(o.images as f64 * 0.25 / o.p2_workers as f64);
        eprintln!("[{name}] P2 {:?} vs ideal {:?}", f.p2_makespan, f.p2_ideal);
        svc.terminate();
        db.remove().await;
    }
    // P3: submit latency (API only, so the figure is the submit path itself).
    if o.runs("p3") {
        let db = BenchDb::new(backend, &o.postgres).await;
        let mut env = settings(o.workers, "0");
        env.push(("RP_NO_WORKERS", "true".into()));
        let svc = start("serve", &db, &env);
        let c = Client::new(&svc.base);
        let mut samples = Vec::new();
        for i in 0..o.submits {
            let body = payload(host, o.images, i * o.images);
            samples.push(c.submit(&body).await.1);
        }
        f.p3 = (
            percentile(&mut samples, 50.0),
            percentile(&mut samples, 99.0),
        );
        eprintln!("[{name}] P3 p50 {:?} p99 {:?}", f.p3.0, f.p3.1);
        svc.terminate();
        db.remove().await;
    }
    // P4: status latency under concurrent pollers while a job runs.
    if o.runs("p4") {
        let db = BenchDb::new(backend, &o.postgres).await;
        let svc = start("serve", &db, &settings(o.workers, "100-400"));
        let c = Arc::new(Client::new(&svc.base));
        let (id, _) = c.submit(&payload(host, o.images, 0)).await;
        let until = Instant::now() + Duration::from_secs(5);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..o.pollers {
            let c = c.clone();
            tasks.spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0;
                while Instant::now() < until {
                    let (code, body, took) = c.get(&format!("/api/status?jobid={id}")).await;
                    if code != 200 || body["status"] != "ongoing" {
                        errors += 1;
                    }
                    lat.push(took);
                }
                (lat, errors)
            });
        }
        let mut all = Vec::new();
        let mut errors = 0;
        while let Some(r) = tasks.join_next().await {
            let (lat, e) = r.unwrap();
            all.extend(lat);
            errors += e;
        }
        let n = all.len();
        f.p4 = (
            percentile(&mut all, 50.0),
            percentile(&mut all, 99.0),
            n,
            errors,
        );
        eprintln!(
            "[{name}] P4 p50 {:?} p99 {:?} over {n} requests, {errors} errors",
            f.p4.0, f.p4.1
        );
        svc.terminate();
        db.remove().await;
    }
    // P5 and the flatness checks: one job of `big_images`, run to the end with no delay.
    if o.runs("p5") {
        let db = BenchDb::new(backend, &o.postgres).await;
        let svc = start("serve", &db, &settings(o.workers, "0"));
        let c = Client::new(&svc.base);
        let n = o.big_images;
        let (id, _) = c.submit(&payload(host, n, 0)).await;
        let t0 = Instant::now();
        let status_cost = |c: &Client| {
            let c = c.http.clone();
            let url = format!("{}/api/status?jobid={id}", c_base(&svc));
            async move {
                let mut s = Vec::new();
                for _ in 0..50 {
                    let t = Instant::now();
                    c.get(&url).send().await.unwrap().bytes().await.unwrap();
                    s.push(t.elapsed());
                }
                percentile(&mut s, 50.0)
            }
        };
        let page_cost = |after: usize| {
            let http = c.http.clone();
            let url = if after == 0 {
                format!("{}/api/jobs/{id}/images?limit=1000", c_base(&svc))
            } else {
                format!(
                    "{}/api/jobs/{id}/images?limit=1000&after={after}",
                    c_base(&svc)
                )
            };
            async move {
                let mut s = Vec::new();
                for _ in 0..10 {
                    let t = Instant::now();
                    http.get(&url).send().await.unwrap().bytes().await.unwrap();
                    s.push(t.elapsed());
                }
                percentile(&mut s, 50.0)
            }
        };
        let status_start = status_cost(&c).await;
        let page_first = page_cost(0).await;
        let page_last = page_cost(n - 1001).await;
        // Throughput over the first and the last tenth of the job: claiming must not slow down.
        let tenth = (n / 10) as i64;
        let mut first_tenth = None;
        let mut last_started = None;
        let mut last_tenth = None;
        loop {
            let job = c.job(id).await;
            let done = job["images"]["succeeded"].as_i64().unwrap_or(0)
                + job["images"]["failed"].as_i64().unwrap_or(0);
            if first_tenth.is_none() && done >= tenth {
                first_tenth = Some(t0.elapsed());
            }
            if last_started.is_none() && done >= (n as i64 - tenth) {
                last_started = Some((Instant::now(), done));
            }
            if job["status"] != "ongoing" {
                if let Some((at, d)) = last_started {
                    last_tenth = Some((n as i64 - d, at.elapsed()));
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let total = t0.elapsed();
        let status_end = status_cost(&c).await;
        f.p5_rss = svc.peak_rss_bytes().unwrap_or(0);
        f.p5_rate = n as f64 / total.as_secs_f64();
        f.flat_status = (status_start, status_end);
        f.flat_page = (page_first, page_last);
        let first_rate = tenth as f64 / first_tenth.unwrap_or(total).as_secs_f64();
        let last_rate = last_tenth
            .map(|(d, t)| d as f64 / t.as_secs_f64().max(0.001))
            .unwrap_or(0.0);
        f.flat_rate = (first_rate, last_rate);
        eprintln!(
            "[{name}] P5 peak RSS {} MB, {:.0} images/s; status {:?}→{:?}; page {:?}→{:?}; rate {:.0}→{:.0}",
            f.p5_rss / 1_000_000,
            f.p5_rate,
            status_start,
            status_end,
            page_first,
            page_last,
            first_rate,
            last_rate
        );
        svc.terminate();
        db.remove().await;
    }
    // P6: one worker process against two, when the delay dominates (PostgreSQL only).
    if backend == Backend::Postgres && o.runs("p6") {
        let mut rates = Vec::new();
        for processes in [1, 2] {
            let db = BenchDb::new(backend, &o.postgres).await;
            let mut api_env = settings(o.workers, "100-400");
            api_env.push(("RP_NO_WORKERS", "true".into()));
            let api = start("serve", &db, &api_env);
            let workers: Vec<Service> = (0..processes)
                .map(|_| start("worker", &db, &settings(o.workers, "100-400")))
                .collect();
            let c = Client::new(&api.base);
            let n = 2000;
            let t0 = Instant::now();
            let (id, _) = c.submit(&payload(host, n, 0)).await;
            let t = c.wait(id, t0).await;
            rates.push(n as f64 / t.as_secs_f64());
            for w in workers {
                w.terminate();
            }
            api.terminate();
            db.remove().await;
        }
        f.p6 = Some((rates[0], rates[1]));
        eprintln!("[{name}] P6 {:.1} → {:.1} images/s", rates[0], rates[1]);
    }
    f
}

fn c_base(svc: &Service) -> &str {
    &svc.base
}

fn verdict(ok: bool) -> &'static str {
    if ok { "✅" } else { "❌" }
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; there is nothing else to parse.
    let o = Opts::from_env();
    retail_pulse::fetch::install_crypto_provider();
    let host = ImageHost::start().await;
    eprintln!(
        "image host at {}, image sizes {:?} bytes",
        host.addr, host.bytes_per_image
    );
    let limit = fetch_limit(&host, o.images, o.workers).await;
    eprintln!("fetch limit: {limit:.0} images/s");

    let mut results = vec![("SQLite", run_backend(Backend::Sqlite, &host, &o).await)];
    if o.postgres.is_some() {
        results.push((
            "PostgreSQL",
            run_backend(Backend::Postgres, &host, &o).await,
        ));
    } else {
        eprintln!("PostgreSQL: SKIPPED (set RP_BENCH_POSTGRES_URL or RP_TEST_POSTGRES_URL)");
    }

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC");
    let mut t = String::new();
    t.push_str(&format!(
        "Measured {date} on {cores} cores, release build, `cargo bench --bench e2e` (service as a separate process; \
         image host and load generator in the benchmark process, on the same cores).\n\n"
    ));
    t.push_str(&format!(
        "Fetch limit (the workers' HTTP client, {} in flight, no database): **{limit:.0} images/s** \
         (images of {:?} bytes).\n\n",
        o.workers, host.bytes_per_image
    ));
    let header: Vec<&str> = std::iter::once("figure")
        .chain(std::iter::once("target"))
        .chain(results.iter().map(|r| r.0))
        .collect();
    t.push_str(&format!(
        "| {} |\n|{}\n",
        header.join(" | "),
        "---|".repeat(header.len())
    ));
    let mut row = |name: &str, target: &str, cell: &dyn Fn(&Figures) -> String| {
        let cells: Vec<String> = results.iter().map(|(_, f)| cell(f)).collect();
        t.push_str(&format!("| {name} | {target} | {} |\n", cells.join(" | ")));
    };
    row(
        &format!(
            "P1 images/s, {} images, delay 0, {} in flight",
            o.images, o.workers
        ),
        "≥ 0.5 × fetch limit",
        &|f| {
            format!(
                "{:.0} ({:.2}×) {}",
                f.p1_rate,
                f.p1_rate / limit,
                verdict(f.p1_rate >= 0.5 * limit)
            )
        },
    );
    row(
        &format!(
            "P2 makespan, {} images, 100–400 ms, {} in flight",
            o.images, o.p2_workers
        ),
        "≤ 1.10 × ideal",
        &|f| {
            let r = f.p2_makespan.as_secs_f64() / f.p2_ideal.as_secs_f64();
            format!(
                "{:.1} s vs {:.1} s ideal ({r:.2}×) {}",
                f.p2_makespan.as_secs_f64(),
                f.p2_ideal.as_secs_f64(),
                verdict(r <= 1.10)
            )
        },
    );
    row(
        &format!(
            "P3 submit latency, {} images, p50 / p99 of {}",
            o.images, o.submits
        ),
        "p50 ≤ 150 ms",
        &|f| {
            format!(
                "{} / {} {}",
                ms(f.p3.0),
                ms(f.p3.1),
                verdict(f.p3.0 <= Duration::from_millis(150))
            )
        },
    );
    row(
        &format!("P4 /api/status latency, {} pollers, p50 / p99", o.pollers),
        "p99 ≤ 10 ms, no errors",
        &|f| {
            format!(
                "{} / {} over {} requests, {} errors {}",
                ms(f.p4.0),
                ms(f.p4.1),
                f.p4.2,
                f.p4.3,
                verdict(f.p4.1 <= Duration::from_millis(10) && f.p4.3 == 0)
            )
        },
    );
    row(
        &format!("P5 peak RSS, {} images queued and processed", o.big_images),
        "≤ 150 MB",
        &|f| {
            format!(
                "{:.0} MB ({:.0} images/s) {}",
                f.p5_rss as f64 / 1e6,
                f.p5_rate,
                verdict(f.p5_rss <= 150_000_000)
            )
        },
    );
    row(
        "P6 2 worker processes vs 1, delay-bound",
        "≥ 1.8×",
        &|f| match f.p6 {
            Some((one, two)) => format!(
                "{one:.1} → {two:.1} images/s ({:.2}×) {}",
                two / one,
                verdict(two / one >= 1.8)
            ),
            None => "n/a (PostgreSQL only)".into(),
        },
    );
    row(
        "flat: /api/status p50, start → end of the big job",
        "same",
        &|f| format!("{} → {}", ms(f.flat_status.0), ms(f.flat_status.1)),
    );
    row("flat: results page of 1000, first → last", "same", &|f| {
        format!("{} → {}", ms(f.flat_page.0), ms(f.flat_page.1))
    });
    row(
        "flat: images/s, first → last tenth of the big job",
        "same",
        &|f| format!("{:.0} → {:.0}", f.flat_rate.0, f.flat_rate.1),
    );

    println!("\n{t}");
    let doc = format!(
        "# Benchmarks\n\nProduced by `cargo bench --bench e2e` (see README, \"Performance\"). Rerun to refresh; \
         the figures depend on the machine.\n\n{t}"
    );
    if let Some(dir) = std::path::Path::new(&o.out).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&o.out, doc).expect("write the benchmark table");
    eprintln!("written to {}", o.out);
}
