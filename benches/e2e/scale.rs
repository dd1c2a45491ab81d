//! P6: one worker process against two, when the processing delay dominates (PostgreSQL).

use std::time::Instant;

use super::harness::*;
use super::image_host::ImageHost;
use super::service::Service;
use super::{Figures, Opts};

pub async fn run(backend: Backend, host: &ImageHost, o: &Opts, f: &mut Figures) {
    let name = backend.name();
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
}
