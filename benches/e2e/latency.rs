//! P3 (submit latency, the API alone) and P4 (status latency under concurrent pollers while a
//! job runs).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::harness::*;
use super::image_host::ImageHost;
use super::{Figures, Opts};

pub async fn run(backend: Backend, host: &ImageHost, o: &Opts, f: &mut Figures) {
    let name = backend.name();
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
}
