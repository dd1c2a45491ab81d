//! A PostgreSQL restart mid-job: the API answers 503 quickly while the database is away, and
//! the job completes unattended once it is back. Restarts the local server, so it lives alone
//! in this test binary (cargo runs test binaries one after another).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::service::Service;
use common::{ImageServer, STORE_A, TestDb, payload};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_retail-pulse");

/// The local cluster's version, when this machine can restart it (`pg_ctlcluster`, as root).
fn local_cluster() -> Option<String> {
    let versions = std::fs::read_dir("/etc/postgresql").ok()?;
    let version = versions
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()?;
    let ok = Command::new("pg_ctlcluster").arg("--help").output().is_ok();
    ok.then_some(version)
}

fn cluster(version: &str, action: &str) {
    let status = Command::new("pg_ctlcluster")
        .args([
            "--skip-systemctl-redirect",
            version,
            "main",
            action,
            "-m",
            "fast",
        ])
        .status()
        .expect("run pg_ctlcluster");
    assert!(status.success(), "pg_ctlcluster {action} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_job_is_ridden_out() {
    if !common::postgres_available("postgres_restart_mid_job_is_ridden_out") {
        return;
    }
    let Some(version) = local_cluster() else {
        eprintln!(
            "SKIPPED postgres_restart_mid_job_is_ridden_out: no local cluster to restart (pg_ctlcluster, /etc/postgresql)"
        );
        return;
    };
    let db = TestDb::new(common::Backend::Postgres).await;
    let images = ImageServer::start().await;
    let svc = Service::start(
        BIN,
        "serve",
        &db.url,
        &[
            ("RP_PROCESSING_DELAY_MS", "10"),
            ("RP_WORKERS", "4"),
            ("RP_LEASE_SECS", "3"),
            ("RP_POLL_INTERVAL_MS", "200"),
        ],
    );
    let client = common::client();
    let n = 400;
    let urls: Vec<String> = (0..n).map(|i| images.image(2 + i, 3, "png")).collect();
    let job = svc.submit(&client, &payload(&[(STORE_A, urls)])).await;
    let status_url = format!("{}/api/status?jobid={job}", svc.base);
    tokio::time::sleep(Duration::from_millis(500)).await;

    cluster(&version, "stop");
    let asked = Instant::now();
    let res = client.get(&status_url).send().await.unwrap();
    let took = asked.elapsed();
    let code = res.status().as_u16();
    let body: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await; // the workers meet the outage too
    cluster(&version, "start");
    assert_eq!(code, 503, "{body}");
    assert!(body["error"].is_string(), "{body}");
    assert!(took < Duration::from_secs(3), "503 took {took:?}");
    assert!(
        svc.child.try_wait_alive(),
        "the service survived the outage"
    );

    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(res) = client.get(&status_url).send().await
            && res.status().as_u16() == 200
        {
            let body: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
            if body["status"] != "ongoing" {
                assert_eq!(body["status"], "completed", "{body}");
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "job did not complete after the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

trait Alive {
    fn try_wait_alive(&self) -> bool;
}

impl Alive for std::process::Child {
    fn try_wait_alive(&self) -> bool {
        // `try_wait` needs &mut; /proc tells without it.
        std::path::Path::new(&format!("/proc/{}/status", self.id())).exists()
    }
}
