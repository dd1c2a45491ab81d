//! S1, for `docs/SCALING.md`: several worker processes on one PostgreSQL. 2,000 jobs × 10
//! images are submitted first (`serve --no-workers`), then K `worker` processes (K = 1, 2, 4),
//! 32 slots each and no delay, drain them together. Reported per K: the drain rate, the CPU
//! the PostgreSQL server spent per image, and how many cores it kept busy — the figures a
//! capacity model of "worker processes per PostgreSQL core" is built from. On this machine the
//! workers, the image host and PostgreSQL share the same cores, so the rate is a floor.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::harness::*;
use super::image_host::ImageHost;
use super::service::Service;
use super::{Figures, Opts};

/// One S1 run.
#[derive(Debug, Clone, Default)]
pub struct ScaleOut {
    pub processes: usize,
    pub rate: f64,
    /// CPU µs per image: all worker processes together; the PostgreSQL server.
    pub worker_cpu_us: f64,
    pub postgres_cpu_us: f64,
    /// PostgreSQL CPU seconds per wall second while draining.
    pub postgres_cores: f64,
}

pub const PROCESSES: [usize; 3] = [1, 2, 4];

pub async fn run(backend: Backend, host: &ImageHost, o: &Opts, f: &mut Figures) {
    if backend != Backend::Postgres || !o.runs("s1") {
        return;
    }
    for processes in PROCESSES {
        let s = drain(backend, host, o, processes).await;
        eprintln!(
            "[postgres] S1 {processes} worker processes: {:.0} images/s; CPU/image: workers {:.0} µs, postgres {:.0} µs ({:.2} cores busy)",
            s.rate, s.worker_cpu_us, s.postgres_cpu_us, s.postgres_cores
        );
        f.scale_out.push(s);
    }
}

async fn drain(backend: Backend, host: &ImageHost, o: &Opts, processes: usize) -> ScaleOut {
    let (jobs, per_job) = (2_000, 10);
    let db = BenchDb::new(backend, &o.postgres).await;
    let mut api_env = settings(32, "0");
    api_env.push(("RP_NO_WORKERS", "true".into()));
    let api = start("serve", &db, &api_env);
    let c = Arc::new(Client::new(&api.base));
    submit_many(&c, host, jobs, per_job, 0).await;
    let pg_before = postgres_cpu();
    let t0 = Instant::now();
    let workers: Vec<Service> = (0..processes)
        .map(|_| start("worker", &db, &settings(32, "0")))
        .collect();
    let took = wait_all_finished(&c, t0, Duration::from_secs(600)).await;
    let pg_cpu = postgres_cpu().saturating_sub(pg_before);
    let worker_cpu: Duration = workers.iter().map(|w| cpu_of(w.child.id())).sum();
    let images = (jobs * per_job) as f64;
    let per_image = |d: Duration| d.as_secs_f64() * 1e6 / images;
    for w in workers {
        w.terminate();
    }
    api.terminate();
    db.remove().await;
    ScaleOut {
        processes,
        rate: images / took.as_secs_f64(),
        worker_cpu_us: per_image(worker_cpu),
        postgres_cpu_us: per_image(pg_cpu),
        postgres_cores: pg_cpu.as_secs_f64() / took.as_secs_f64(),
    }
}
