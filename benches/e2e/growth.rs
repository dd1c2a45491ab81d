//! Tables that grow (`RP_BENCH_ONLY=growth`; `tenants` runs the second part alone):
//!
//! - **Reads beside a big history**: `/metrics` and the admin overview (`/ui/`) with 1,000,000
//!   finished jobs of 100 tenants in the table, each asked for 200 times (after a warm-up)
//!   while the service idles: what a scrape and a dashboard poll cost once a year of jobs has
//!   piled up. The jobs are written with one SQL statement (as a year of submits would leave
//!   them, counters included), not submitted one by one.
//! - **Many tenants**: the worker process's CPU per image for 500 jobs of 40 images, all of
//!   one tenant, then the same jobs spread over 500 tenants: what fair turns across tenants
//!   cost the claims.

use std::time::{Duration, Instant};

use retail_pulse::db::Db;

use super::harness::*;
use super::image_host::ImageHost;
use super::{Figures, Opts};

pub const READS_ROW: &str =
    "/metrics and admin overview `/ui/` server time, 1,000,000 finished jobs, p99";
pub const READS_TARGET: &str = "p99 ≤ 10 ms";
const READS_BUDGET: Duration = Duration::from_millis(10);
pub const TENANTS_ROW: &str =
    "Worker CPU per image, 500 jobs × 40 images: 1 tenant / 500 tenants (ratio)";
pub const TENANTS_TARGET: &str = "500 tenants ≤ 1.5 × 1 tenant";

const FINISHED_JOBS: i64 = 1_000_000;
const SAMPLES: usize = 200;
const JOBS: usize = 500;
const PER_JOB: usize = 40;

/// The p99s of the two reads.
#[derive(Debug, Clone, Copy)]
pub struct Reads {
    pub metrics: Duration,
    pub overview: Duration,
}

impl Reads {
    pub fn cell(&self) -> String {
        let ok = self.metrics <= READS_BUDGET && self.overview <= READS_BUDGET;
        format!(
            "{} / {} {}",
            ms(self.metrics),
            ms(self.overview),
            if ok { "✅" } else { "❌" }
        )
    }
}

/// Worker CPU per image with one tenant and with many.
#[derive(Debug, Clone, Copy)]
pub struct Tenants {
    pub one: Duration,
    pub many: Duration,
}

impl Tenants {
    pub fn cell(&self) -> String {
        let ratio = self.many.as_secs_f64() / self.one.as_secs_f64().max(1e-9);
        let us = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
        format!(
            "{} / {} ({ratio:.2}×) {}",
            us(self.one),
            us(self.many),
            if ratio <= 1.5 { "✅" } else { "❌" }
        )
    }
}

pub async fn run(backend: Backend, host: &ImageHost, o: &Opts, f: &mut Figures) {
    if o.runs("growth") {
        let db = BenchDb::new(backend, &o.postgres).await;
        let reads = reads_beside_history(&db).await;
        eprintln!("[{}] growth reads {}", backend.name(), reads.cell());
        f.growth_reads = Some(reads);
        db.remove().await;
    }
    if !o.runs("growth") && !o.runs("tenants") {
        return;
    }
    let one = cpu_per_image(backend, host, o, 1).await;
    let many = cpu_per_image(backend, host, o, JOBS).await;
    let tenants = Tenants { one, many };
    eprintln!("[{}] growth tenants {}", backend.name(), tenants.cell());
    f.growth_tenants = Some(tenants);
}

/// Writes a year of finished jobs, then times `/metrics` and `/ui/` on an idle service.
async fn reads_beside_history(bench: &BenchDb) -> Reads {
    let db = Db::connect(&bench.url, 2).await.expect("connect");
    // SQLite bench databases are migrated by the first process; this is that one here.
    db.migrate().await.expect("migrate");
    let now = db.now().await.expect("clock");
    // One job a finished every ~31 s over a year, 10 % failed, across 100 tenants.
    let insert = format!(
        "WITH RECURSIVE g(n) AS (SELECT CAST(1 AS BIGINT) UNION ALL SELECT n + 1 FROM g WHERE n < {FINISHED_JOBS}) \
         INSERT INTO jobs (status, total, succeeded, failed, created_at, finished_at, tenant) \
         SELECT CASE WHEN n % 10 = 0 THEN 'failed' ELSE 'completed' END, 10, \
                CASE WHEN n % 10 = 0 THEN 9 ELSE 10 END, CASE WHEN n % 10 = 0 THEN 1 ELSE 0 END, \
                {now} - ({FINISHED_JOBS} - n) * 31000 - 60000, {now} - ({FINISHED_JOBS} - n) * 31000, \
                't' || CAST(n % 100 AS TEXT) FROM g"
    );
    let counts = "INSERT INTO tenant_counts (tenant, unfinished_images, images_succeeded, \
           images_failed, jobs_ongoing, jobs_completed, jobs_failed, jobs_cancelled) \
         SELECT tenant, 0, SUM(succeeded), SUM(failed), 0, \
                SUM(CASE WHEN status = 'completed' THEN 1 ELSE 0 END), \
                SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END), 0 \
         FROM jobs GROUP BY tenant";
    let started = Instant::now();
    for sql in [insert.as_str(), "DELETE FROM tenant_counts", counts] {
        sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(db.pool())
            .await
            .expect("write the history");
    }
    // What autovacuum does for a table that grew (statistics, visibility).
    let settle = match db.backend() {
        retail_pulse::db::Backend::Postgres => "VACUUM ANALYZE",
        retail_pulse::db::Backend::Sqlite => "ANALYZE",
    };
    sqlx::query(settle)
        .execute(db.pool())
        .await
        .expect("analyze");
    eprintln!(
        "  {FINISHED_JOBS} finished jobs written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    db.close().await;

    let svc = start("serve", bench, &settings(8, "0"));
    let c = Client::new(&svc.base);
    let time = async |path: &str| {
        let mut samples = time_gets(&c, &[path.to_string()], SAMPLES).await;
        percentile(&mut samples, 99.0)
    };
    let metrics = time("/metrics").await;
    let overview = time("/ui/").await;
    svc.terminate();
    Reads { metrics, overview }
}

/// The worker's CPU per image for [`JOBS`] jobs of [`PER_JOB`] images spread over `tenants`
/// tenants, submitted before the worker starts (so every claim sees all of them).
async fn cpu_per_image(backend: Backend, host: &ImageHost, o: &Opts, tenants: usize) -> Duration {
    let bench = BenchDb::new(backend, &o.postgres).await;
    let api = start(
        "serve",
        &bench,
        &[
            vec![("RP_NO_WORKERS", "true".to_string())],
            settings(o.workers, "0"),
        ]
        .concat(),
    );
    let c = std::sync::Arc::new(Client::new(&api.base));
    submit_many(&c, host, JOBS, PER_JOB, 0).await;
    if tenants > 1 {
        let db = Db::connect(&bench.url, 2).await.expect("connect");
        // As if each job had come from its own tenant's key; the counters follow.
        for sql in [
            format!("UPDATE jobs SET tenant = 't' || CAST(id % {tenants} AS TEXT)"),
            "DELETE FROM tenant_counts".to_string(),
            "INSERT INTO tenant_counts (tenant, unfinished_images) \
             SELECT tenant, SUM(total) FROM jobs GROUP BY tenant"
                .to_string(),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(db.pool())
                .await
                .expect("spread the jobs over tenants");
        }
        db.close().await;
    }
    let started = Instant::now();
    let worker = start("worker", &bench, &settings(o.workers, "0"));
    let before = cpu_of(worker.child.id());
    wait_all_finished(&c, started, Duration::from_secs(300)).await;
    let cpu = cpu_of(worker.child.id()) - before;
    worker.terminate();
    api.terminate();
    bench.remove().await;
    cpu / (JOBS * PER_JOB) as u32
}
