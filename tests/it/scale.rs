//! Scale-out on PostgreSQL: one API process and several `worker` processes share one database.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common;
use crate::common::service::Service;
use crate::common::{ImageServer, STORE_A, TestDb, payload};

const BIN: &str = env!("CARGO_BIN_EXE_retail-pulse");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_processes_share_a_job_and_survive_losing_one() {
    let Some(_turn) =
        common::postgres_turn("worker_processes_share_a_job_and_survive_losing_one").await
    else {
        return;
    };
    let db = TestDb::new(common::Backend::Postgres).await;
    let images = ImageServer::start().await;
    let worker_env = [
        ("RP_PROCESSING_DELAY_MS", "20"),
        ("RP_WORKERS", "4"),
        ("RP_LEASE_SECS", "1.5"),
        ("RP_POLL_INTERVAL_MS", "100"),
    ];
    let api = Service::start(BIN, "serve", &db.url, &[("RP_NO_WORKERS", "true")]);
    let first = Service::start(BIN, "worker", &db.url, &worker_env);
    let second = Service::start(BIN, "worker", &db.url, &worker_env);
    let client = common::client();
    let n = 300i64;
    let urls: Vec<String> = (0..n)
        .map(|i| images.image(1 + i as u32, 7, "png"))
        .collect();
    let job = api.submit(&client, &payload(&[(STORE_A, urls)])).await;

    // Both workers take part.
    let pool = sqlx::postgres::PgPool::connect(&db.url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let workers: i64 = sqlx::query_scalar("SELECT COUNT(DISTINCT processed_by) FROM images WHERE job_id = $1 AND processed_by IS NOT NULL")
            .bind(job)
            .fetch_one(&pool)
            .await
            .unwrap();
        if workers == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the two workers never both recorded results"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Lose one worker for good, mid-job: the other finishes, taking over its leases.
    let first_id = first
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "worker pool started")
        .and_then(|v| v["worker.id"].as_str().map(str::to_string))
        .expect("the worker logs its id");
    first.kill_hard();
    let killed_at = Instant::now();
    let mut taken_over = None;
    loop {
        if taken_over.is_none() {
            let still_held: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM images WHERE lease_owner = $1 AND status = 'running'",
            )
            .bind(&first_id)
            .fetch_one(&pool)
            .await
            .unwrap();
            if still_held == 0 {
                taken_over = Some(killed_at.elapsed());
            }
        }
        let detail = api.get_json(&client, &format!("/api/jobs/{job}")).await;
        if detail["status"] != "ongoing" {
            assert_eq!(detail["status"], "completed", "{detail}");
            assert_eq!(
                detail["images"],
                json!({"total": n, "succeeded": n, "failed": 0, "pending": 0})
            );
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(60),
            "job stuck after losing a worker: {detail}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let processed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM images WHERE job_id = $1 AND status = 'succeeded' AND perimeter = 2 * (width + height)")
        .bind(job)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(processed, n);
    // Each image was fetched once, except those the killed worker had taken and not yet
    // recorded (in flight, in its buffer, or with the outcome on its way to the database):
    // they were claimed a second time, by the survivor. So every extra fetch is matched by an
    // image whose lease expired — and no live worker ever fetched an image another held.
    // (Attempts count only the starts the dead worker had recorded, so they can be fewer.)
    let fetched = images.requests() as i64;
    let reclaimed: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM images WHERE job_id = $1 AND expiries >= 1")
            .bind(job)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        fetched >= n && fetched - n <= reclaimed,
        "{fetched} fetches for {n} images, {reclaimed} taken back from the dead worker"
    );
    eprintln!(
        "dead worker's images taken over {:?} after kill -9 (lease 1.5 s); job done {:?} after the kill",
        taken_over.expect("taken over"),
        killed_at.elapsed()
    );
    pool.close().await;
    drop(second);
    drop(api);
}
