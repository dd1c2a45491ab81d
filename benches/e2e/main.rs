//! End-to-end benchmark: the real `retail-pulse` binary against a local image host, on SQLite
//! and (when `RP_BENCH_POSTGRES_URL` or `RP_TEST_POSTGRES_URL` is set) on PostgreSQL.
//!
//! Run: `cargo bench --bench e2e` (or `scripts/bench`, which also finds the local PostgreSQL).
//! Prints one table and writes it to `docs/BENCHMARKS.md`. One file per figure: throughput.rs
//! (P1, P2), latency.rs (P3, P4), memory.rs (P5 and flatness), scale.rs (P6), shapes.rs (P7–P9),
//! scaleout.rs (S1, for docs/SCALING.md), dashboard.rs, growth.rs (reads beside 1,000,000
//! finished jobs, claims across 500 tenants);
//! harness.rs holds what they share.
//!
//! Knobs (environment): RP_BENCH_IMAGES (10000), RP_BENCH_BIG_IMAGES (100000),
//! RP_BENCH_WORKERS (32: images in flight for P1, P4, P5, P6 and the fetch limit),
//! RP_BENCH_P2_WORKERS (100), RP_BENCH_SUBMITS (20), RP_BENCH_POLLERS (32),
//! RP_BENCH_OUT (docs/BENCHMARKS.md).

mod dashboard;
mod fetch_limit;
mod growth;
mod harness;
mod image_host;
mod latency;
#[path = "../../tests/it/common/launch.rs"]
mod launch;
mod memory;
#[path = "../../tests/it/common/range.rs"]
mod range;
mod scale;
mod scaleout;
mod service;
mod shapes;
mod throughput;

use std::time::Duration;

use harness::{Backend, ms};
use image_host::ImageHost;

pub struct Opts {
    pub images: usize,
    pub big_images: usize,
    pub workers: usize,
    pub p2_workers: usize,
    pub submits: usize,
    pub pollers: usize,
    pub out: String,
    pub postgres: Option<String>,
    /// RP_BENCH_ONLY=p1,p3: run only these scenarios (for profiling one figure).
    pub only: Option<Vec<String>>,
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

    pub fn runs(&self, scenario: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|s| s == scenario))
    }
}

/// Everything measured for one backend.
#[derive(Default)]
pub struct Figures {
    pub p1_rate: f64,
    pub p2_makespan: Duration,
    pub p2_ideal: Duration,
    pub p3: (Duration, Duration),
    pub p4: (Duration, Duration, usize, usize),
    pub p5_rss: u64,
    pub p5_rate: f64,
    pub flat_status: (Duration, Duration),
    pub flat_page: (Duration, Duration),
    pub flat_rate: (f64, f64),
    pub p6: Option<(f64, f64)>,
    pub shapes: Vec<shapes::Shape>,
    pub p8: Option<shapes::P8>,
    pub scale_out: Vec<scaleout::ScaleOut>,
    pub dashboard: dashboard::JobPageTime,
    pub growth_reads: Option<growth::Reads>,
    pub growth_tenants: Option<growth::Tenants>,
}

async fn run_backend(backend: Backend, host: &ImageHost, o: &Opts) -> Figures {
    let mut f = Figures::default();
    throughput::run(backend, host, o, &mut f).await;
    latency::run(backend, host, o, &mut f).await;
    memory::run(backend, host, o, &mut f).await;
    scale::run(backend, host, o, &mut f).await;
    shapes::run(backend, host, o, &mut f).await;
    scaleout::run(backend, host, o, &mut f).await;
    dashboard::run(backend, host, o, &mut f).await;
    growth::run(backend, host, o, &mut f).await;
    f
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
    let limit = fetch_limit::fetch_limit(&host, o.images, o.workers).await;
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
    let big_rate = |f: &Figures| f.shapes.first().map(|s| s.rate).unwrap_or(0.0);
    for (i, (jobs, per_job)) in shapes::SHAPES.iter().enumerate().skip(1) {
        let label = shapes::Shape {
            jobs: *jobs,
            per_job: *per_job,
            ..Default::default()
        }
        .label();
        // The 2,000 × 10 shape carries the target; 20,000 × 1 is reported beside it.
        let target = if i == 1 {
            "≥ 0.8 × 1 × 20,000"
        } else {
            "reported"
        };
        row(
            &format!(
                "P7 queue drain, {label} images, 32 slots, delay 0, fastest of {} (1 × 20,000: its reference)",
                shapes::DRAINS
            ),
            target,
            &|f| match f.shapes.get(i) {
                Some(s) => {
                    let ratio = s.rate / big_rate(f).max(1.0);
                    let mark = if i == 1 { verdict(ratio >= 0.8) } else { "" };
                    format!(
                        "{:.0} vs {:.0} images/s ({ratio:.2}×) {mark}",
                        s.rate,
                        big_rate(f)
                    )
                }
                None => "not run".into(),
            },
        );
    }
    row(
        "P8 one worker process (started after the submit), 2,000 slots, 100–400 ms, 40,000 images: rate vs ideal 8,000/s; peak RSS",
        "≥ 0.8×; ≤ 256 MB",
        &|f| match f.p8 {
            Some(p) => format!(
                "{:.0} images/s ({:.2}×), {:.0} MB {}",
                p.rate,
                p.rate / 8000.0,
                p.rss as f64 / 1e6,
                verdict(p.rate >= 0.8 * 8000.0 && p.rss <= 256_000_000)
            ),
            None => "not run".into(),
        },
    );
    row(
        "P8 CPU µs per image: service; PostgreSQL server; image host + load generator (this benchmark); cores busy of the machine's",
        "reported",
        &|f| match f.p8 {
            Some(p) => format!(
                "{:.0}; {}; {:.0}; {:.2} of {cores}",
                p.service_us,
                if p.postgres_us > 0.0 {
                    format!("{:.0}", p.postgres_us)
                } else {
                    "n/a".into()
                },
                p.bench_us,
                p.cores
            ),
            None => "not run".into(),
        },
    );
    for (i, _) in shapes::SHAPES.iter().enumerate().take(2) {
        row(
            &format!(
                "P9 CPU µs per image, {}: service (API + worker); PostgreSQL server",
                shapes::Shape {
                    jobs: shapes::SHAPES[i].0,
                    per_job: shapes::SHAPES[i].1,
                    ..Default::default()
                }
                .label()
            ),
            "reported",
            &|f| match f.shapes.get(i) {
                Some(s) if s.postgres_cpu_us > 0.0 => format!(
                    "{:.0} ({:.0} + {:.0}); {:.0}",
                    s.service_cpu_us(),
                    s.api_cpu_us,
                    s.worker_cpu_us,
                    s.postgres_cpu_us
                ),
                Some(s) => format!(
                    "{:.0} ({:.0} + {:.0}); n/a",
                    s.service_cpu_us(),
                    s.api_cpu_us,
                    s.worker_cpu_us
                ),
                None => "not run".into(),
            },
        );
    }
    for (i, processes) in scaleout::PROCESSES.iter().enumerate() {
        row(
            &format!(
                "S1 {processes} worker process(es) × 32 slots, 2,000 × 10, delay 0: images/s; PostgreSQL CPU µs per image, cores busy"
            ),
            "reported (docs/SCALING.md)",
            &|f| match f.scale_out.get(i) {
                Some(s) => format!(
                    "{:.0}; {:.0} µs, {:.2} cores",
                    s.rate, s.postgres_cpu_us, s.postgres_cores
                ),
                None => "n/a (PostgreSQL only)".into(),
            },
        );
    }
    row(dashboard::ROW, dashboard::TARGET, &|f| f.dashboard.cell());
    row(growth::READS_ROW, growth::READS_TARGET, &|f| {
        f.growth_reads.map_or("not run".into(), |r| r.cell())
    });
    row(growth::TENANTS_ROW, growth::TENANTS_TARGET, &|f| {
        f.growth_tenants.map_or("not run".into(), |t| t.cell())
    });
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
        "# Benchmarks\n\nProduced by `cargo bench --bench e2e` (see docs/PERFORMANCE.md). Rerun to refresh; \
         the figures depend on the machine.\n\n{t}"
    );
    if let Some(dir) = std::path::Path::new(&o.out).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&o.out, doc).expect("write the benchmark table");
    eprintln!("written to {}", o.out);
}
