//! The dashboard's figure: the server time of `/ui/jobs/{id}` for a job of `images` images
//! (100,000 by default). The service runs API-only (no workers), so the job stays ongoing with
//! every image pending — the page's heaviest case — and the time is measured from the
//! benchmark process over loopback (an upper bound on the server's own time).
//!
//! Pages asked for, round robin: the first page of images, a deep keyset page near the end,
//! the page before a position in the middle, and the `pending` and `failed` filters.

use std::time::Duration;

use serde_json::{Value, json};

use super::harness::*;
use super::image_host::ImageHost;
use super::{Figures, Opts};

/// The figure's row in the table.
pub const ROW: &str = "Dashboard /ui/jobs/{id} server time, 100,000-image job, p50 / p99";
pub const TARGET: &str = "p99 ≤ 50 ms";
const BUDGET: Duration = Duration::from_millis(50);
/// Requests measured (after a warm-up round).
const SAMPLES: usize = 200;

/// p50 and p99 of the job page's time.
#[derive(Debug, Clone, Copy, Default)]
pub struct JobPageTime {
    pub p50: Duration,
    pub p99: Duration,
}

impl JobPageTime {
    /// The table cell.
    pub fn cell(&self) -> String {
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
        let ok = if self.p99 <= BUDGET { "✅" } else { "❌" };
        format!("{} / {} {ok}", ms(self.p50), ms(self.p99))
    }
}

/// The `dashboard` scenario (`RP_BENCH_ONLY=dashboard`): a fresh database, a job of
/// `big_images` images, its page timed.
pub async fn run(backend: Backend, _host: &ImageHost, o: &Opts, f: &mut Figures) {
    if !o.runs("dashboard") {
        return;
    }
    let db = BenchDb::new(backend, &o.postgres).await;
    f.dashboard = job_page_time(&db, o.big_images).await;
    eprintln!(
        "[{}] dashboard job page {}",
        backend.name(),
        f.dashboard.cell()
    );
    db.remove().await;
}

/// Starts `serve --no-workers` on `db`, submits a job of `images` images and times its page.
async fn job_page_time(db: &BenchDb, images: usize) -> JobPageTime {
    let svc = start("serve", db, &[("RP_NO_WORKERS", "true".to_string())]);
    let c = Client::new(&svc.base);
    let visits: Vec<Value> = (0..images.div_ceil(100))
        .map(|v| {
            let urls: Vec<String> = (v * 100..((v + 1) * 100).min(images))
                .map(|i| format!("http://images.invalid/{i}.jpg"))
                .collect();
            json!({"store_id": "S00339218", "image_url": urls, "visit_time": "2026-11-28T10:00:00Z"})
        })
        .collect();
    let (id, _) = c
        .submit(&json!({"count": visits.len(), "visits": visits}).to_string())
        .await;
    let paths = [
        format!("/ui/jobs/{id}"),
        format!("/ui/jobs/{id}?after={}", images.saturating_sub(100)),
        format!("/ui/jobs/{id}?before={}", images / 2),
        format!("/ui/jobs/{id}?status=pending&after={}", images * 3 / 4),
        format!("/ui/jobs/{id}?status=failed"),
    ];
    let mut samples = time_gets(&c, &paths, SAMPLES).await;
    svc.terminate();
    samples.sort();
    let at =
        |p: f64| samples[((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1];
    JobPageTime {
        p50: at(0.50),
        p99: at(0.99),
    }
}
