//! The pool as a whole: what it does when its outcome writer fails.

use super::*;

use crate::domain::{Limits, Submission};

/// A worker pool over a fresh SQLite file holding one job of `n` images whose URLs fail at
/// once (an unsupported scheme), so outcomes reach the writer without any network.
async fn pool_with_a_job(n: usize) -> (tempfile::TempDir, Db, WorkerPool) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let config = WorkerConfig {
        concurrency: 4,
        lease: Duration::from_secs(2),
        processing_delay: DelayRange::ZERO,
        ..WorkerConfig::default()
    };
    let db = Db::connect(&url, 16).await.unwrap();
    db.migrate().await.unwrap();
    let stores = crate::stores::parse(crate::stores::SAMPLE_CSV.as_bytes()).unwrap();
    crate::db::stores::upsert(&db, &stores).await.unwrap();
    let urls: Vec<String> = (0..n)
        .map(|i| format!("ftp://images.invalid/{i}.png"))
        .collect();
    let body = serde_json::json!({"count": 1, "visits": [
        {"store_id": "S00339218", "image_url": urls, "visit_time": "t"}]});
    let submission = Submission::parse(body.to_string().as_bytes(), &Limits::default()).unwrap();
    let known = ["S00339218".to_string()].into();
    let owner = crate::db::jobs::Owner::unlimited(crate::auth::DEFAULT_TENANT);
    crate::db::jobs::create(&db, owner, &submission, &known, None)
        .await
        .unwrap();
    let pool = WorkerPool::new(
        db.clone(),
        &config,
        &FetchConfig::default(),
        &WebhookConfig::default(),
        None,
        Arc::new(Notify::new()),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    (dir, db, pool)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_stops_stops_the_pool_and_its_leases() {
    let (_dir, db, pool) = pool_with_a_job(40).await;
    let writer = |_queue: Arc<Queue>,
                  mut rx: mpsc::Receiver<Note>,
                  _lease: Duration,
                  _metrics: Arc<Metrics>| async move {
        rx.recv().await;
        panic!("disk on fire");
    };
    let stopped = tokio::time::timeout(
        Duration::from_secs(10),
        pool.run_with_writer(CancellationToken::new(), writer),
    )
    .await
    .expect("the pool stops by itself, without a shutdown signal");
    match stopped {
        Err(WorkerError::WriterStopped(cause)) => {
            assert!(cause.contains("disk on fire"), "{cause}")
        }
        other => panic!("expected a writer failure, got {other:?}"),
    }
    // Nothing was recorded, nothing is left leased: every image is back in the queue.
    let (running, pending): (i64, i64) = sqlx::query_as(
        "SELECT CAST(SUM(CASE WHEN status = 'running' THEN 1 ELSE 0 END) AS BIGINT), \
         CAST(SUM(CASE WHEN status = 'pending' THEN 1 ELSE 0 END) AS BIGINT) FROM images",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!((running, pending), (0, 40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_ends_early_also_stops_the_pool() {
    let (_dir, _db, pool) = pool_with_a_job(10).await;
    let writer = |_queue: Arc<Queue>,
                  rx: mpsc::Receiver<Note>,
                  _lease: Duration,
                  _metrics: Arc<Metrics>| async move {
        drop(rx);
    };
    let stopped = tokio::time::timeout(
        Duration::from_secs(10),
        pool.run_with_writer(CancellationToken::new(), writer),
    )
    .await
    .expect("the pool stops by itself");
    assert!(
        matches!(stopped, Err(WorkerError::WriterStopped(_))),
        "{stopped:?}"
    );
}
