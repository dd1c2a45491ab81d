//! P1 (throughput with no processing delay) and P2 (makespan with the default delay, against
//! the ideal of slots × mean delay).

use std::time::{Duration, Instant};

use super::harness::*;
use super::image_host::ImageHost;
use super::{Figures, Opts};

pub async fn run(backend: Backend, host: &ImageHost, o: &Opts, f: &mut Figures) {
    let name = backend.name();
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
}
