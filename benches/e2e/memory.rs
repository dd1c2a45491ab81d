//! P5 (peak memory with a 100,000-image job queued and processed) and the flatness checks:
//! status, a results page and throughput from the start to the end of that job.

use std::time::{Duration, Instant};

use super::harness::*;
use super::image_host::ImageHost;
use super::{Figures, Opts};

pub async fn run(backend: Backend, host: &ImageHost, o: &Opts, f: &mut Figures) {
    let name = backend.name();
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
            let url = format!("{}/api/status?jobid={id}", svc.base);
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
                format!("{}/api/jobs/{id}/images?limit=1000", svc.base)
            } else {
                format!("{}/api/jobs/{id}/images?limit=1000&after={after}", svc.base)
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
}
