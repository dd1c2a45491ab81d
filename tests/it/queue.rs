//! The durable queue: fairness between jobs, leases (exclusive claims, expiry, results only
//! under the lease, poison images), retries, graceful shutdown, and a hard kill mid-job.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use retail_pulse::db::{self, Db};
use retail_pulse::domain::{ErrorKind, Limits, Submission};
use retail_pulse::queue::{Outcome, Queue};
use retail_pulse::worker::DelayRange;
use serde_json::json;

use crate::common;
use crate::common::service::Service;
use crate::common::{
    Backend, ImageServer, STORE_A, STORE_B, TestApp, TestDb, on_both_backends, payload, test_config,
};

async fn migrated(db: &TestDb) -> Db {
    let handle = Db::connect(&db.url, 8).await.unwrap();
    handle.migrate().await.unwrap();
    let stores = retail_pulse::stores::parse(retail_pulse::stores::SAMPLE_CSV.as_bytes()).unwrap();
    db::stores::upsert(&handle, &stores).await.unwrap();
    handle
}

async fn create_job(db: &Db, store: &str, images: usize) -> i64 {
    let urls: Vec<String> = (0..images)
        .map(|i| format!("http://img.invalid/{i}.png"))
        .collect();
    let body = payload(&[(store, urls)]).to_string();
    let submission = Submission::parse(body.as_bytes(), &Limits::default()).unwrap();
    let known: HashSet<String> = [STORE_A.to_string(), STORE_B.to_string()].into();
    db::jobs::create(
        db,
        db::jobs::Owner::unlimited("default"),
        &submission,
        &known,
        None,
    )
    .await
    .unwrap()
    .job_id()
    .expect("no quota, so a job")
}

const BIN: &str = env!("CARGO_BIN_EXE_retail-pulse");

fn ok() -> Outcome {
    Outcome::Succeeded {
        width: 1,
        height: 1,
        perimeter: 4,
    }
}

async fn small_job_is_not_stuck_behind_a_large_one(backend: Backend) {
    let db = TestDb::new(backend).await;
    let images = ImageServer::start().await;
    let mut config = test_config(&db);
    config.worker.concurrency = 4;
    config.worker.processing_delay = DelayRange {
        min_ms: 20,
        max_ms: 20,
    };
    let app = TestApp::start(config).await;
    // Alone, the big job needs 600 × 20 ms / 4 slots = 3 s.
    let big = app
        .submit_ok(&payload(&[(
            STORE_A,
            (0..600)
                .map(|i| images.image(10 + i % 7, 10, "png"))
                .collect(),
        )]))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let small = app
        .submit_ok(&payload(&[(
            STORE_B,
            (0..5).map(|_| images.image(3, 3, "png")).collect(),
        )]))
        .await;
    let done = app.wait_finished(small, Duration::from_secs(30)).await;
    let took = started.elapsed();
    assert_eq!(done["status"], "completed");
    assert_eq!(
        app.status(big).await["status"],
        "ongoing",
        "the big job should still be running"
    );
    assert!(
        took < Duration::from_millis(1500),
        "5-image job took {took:?} behind a 600-image job"
    );
    app.stop().await;
}

async fn concurrent_claims_never_share_an_image(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let db = migrated(&tdb).await;
    let jobs = [
        create_job(&db, STORE_A, 300).await,
        create_job(&db, STORE_B, 100).await,
    ];
    let mut handles = Vec::new();
    for w in 0..6 {
        let queue = Queue::new(db.clone(), format!("w{w}"), Duration::from_secs(30), 3);
        handles.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let batch = queue.claim(7).await.unwrap();
                if batch.is_empty() {
                    return mine;
                }
                let outcomes: Vec<_> = batch.iter().map(|c| (c.id, ok())).collect();
                assert_eq!(queue.complete(&outcomes).await.unwrap(), batch.len());
                mine.extend(batch.into_iter().map(|c| c.id));
            }
        }));
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    for h in handles {
        let ids = h.await.unwrap();
        total += ids.len();
        seen.extend(ids);
    }
    assert_eq!(total, 400, "every image claimed exactly once");
    assert_eq!(seen.len(), 400);
    for job in jobs {
        let row = db::jobs::get(&db, db::jobs::Scope::All, job)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.status.as_str(), "completed");
        assert_eq!(row.succeeded, row.total);
    }
}

async fn results_are_recorded_only_under_the_lease(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let db = migrated(&tdb).await;
    let job = create_job(&db, STORE_A, 1).await;
    let slow = Queue::new(db.clone(), "slow".into(), Duration::from_millis(1000), 5);
    let claimed = slow.claim(1).await.unwrap();
    assert_eq!(claimed.len(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let other = Queue::new(db.clone(), "other".into(), Duration::from_secs(30), 5);
    assert_eq!(
        other.reap_expired().await.unwrap(),
        1,
        "expired lease taken back"
    );
    let again = other.claim(1).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0].attempts, 1,
        "a claim whose worker never started the image costs it no attempt"
    );
    // The first worker wakes up late: its result is refused; the new owner's is recorded.
    assert_eq!(slow.complete(&[(claimed[0].id, ok())]).await.unwrap(), 0);
    assert_eq!(other.complete(&[(again[0].id, ok())]).await.unwrap(), 1);
    assert_eq!(
        other.complete(&[(again[0].id, ok())]).await.unwrap(),
        0,
        "never twice"
    );
    let row = db::jobs::get(&db, db::jobs::Scope::All, job)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (row.succeeded, row.failed, row.status.as_str()),
        (1, 0, "completed")
    );
}

async fn heartbeat_keeps_a_lease_alive(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let db = migrated(&tdb).await;
    create_job(&db, STORE_A, 1).await;
    let holder = Queue::new(db.clone(), "holder".into(), Duration::from_millis(1000), 5);
    let reaper = Queue::new(db.clone(), "reaper".into(), Duration::from_secs(30), 5);
    holder.claim(1).await.unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(holder.heartbeat().await.unwrap(), 1);
        assert_eq!(
            reaper.reap_expired().await.unwrap(),
            0,
            "a heartbeating lease is not taken"
        );
    }
}

async fn a_lease_let_go_is_not_renewed(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let db = migrated(&tdb).await;
    create_job(&db, STORE_A, 2).await;
    // Lease 1 s: the let-go image expires at 1 s; the renewed one (at 0.6 s) at 1.6 s; the
    // reaper looks at 1.2 s, with 0.4 s of margin either side.
    let q = Queue::new(db.clone(), "q".into(), Duration::from_millis(1000), 5);
    let claimed = q.claim(2).await.unwrap();
    // The outcome of the first could not be written (say, the database was away): let it go.
    q.let_go([claimed[0].id]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        q.heartbeat().await.unwrap(),
        1,
        "only the image still held is renewed"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let other = Queue::new(db.clone(), "other".into(), Duration::from_secs(30), 5);
    assert_eq!(
        other.reap_expired().await.unwrap(),
        1,
        "the let-go image expires and is taken back"
    );
    let again = other.claim(2).await.unwrap();
    assert_eq!(
        again.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![claimed[0].id]
    );
}

async fn jobs_waiting_on_retries_do_not_hide_newer_jobs(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let db = migrated(&tdb).await;
    let q = Queue::new(db.clone(), "q".into(), Duration::from_secs(30), 3);
    // More jobs than one claim looks at, each with its only image waiting on a far retry.
    for _ in 0..260 {
        create_job(&db, STORE_A, 1).await;
    }
    let mut waiting = Vec::new();
    loop {
        let batch = q.claim(64).await.unwrap();
        if batch.is_empty() {
            break;
        }
        waiting.extend(batch.iter().map(|c| {
            let retry = Outcome::Retry {
                after: Duration::from_secs(3600),
                kind: ErrorKind::Network,
                message: "later".into(),
            };
            (c.id, retry)
        }));
    }
    assert_eq!(waiting.len(), 260);
    assert_eq!(q.complete(&waiting).await.unwrap(), 260);
    let fresh = create_job(&db, STORE_B, 1).await;
    q.scheduler().forget();
    let claimed = q.claim(1).await.unwrap();
    assert_eq!(
        claimed.len(),
        1,
        "the newest job must not starve behind waiting ones"
    );
    assert_eq!(claimed[0].job_id, fresh);
}

async fn poison_image_fails_after_its_attempts(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let db = migrated(&tdb).await;
    let job = create_job(&db, STORE_A, 1).await;
    for attempt in 1..=3 {
        // Each "worker" claims it, records that it started it, and dies without a word.
        let doomed = Queue::new(
            db.clone(),
            format!("doomed{attempt}"),
            Duration::from_millis(50),
            3,
        );
        let c = doomed.claim(1).await.unwrap();
        assert_eq!(c.len(), 1, "attempt {attempt} claims it");
        assert_eq!(c[0].attempts, attempt);
        assert_eq!(doomed.record(&[c[0].id], &[]).await.unwrap(), 0);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(doomed.reap_expired().await.unwrap(), 1);
    }
    let last = Queue::new(db.clone(), "last".into(), Duration::from_secs(30), 3);
    assert!(
        last.claim(1).await.unwrap().is_empty(),
        "a poison image is not claimed again"
    );
    let row = db::jobs::get(&db, db::jobs::Scope::All, job)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.status.as_str(), "failed");
    assert!(
        row.errors[0].error.contains("abandoned after 3 attempts"),
        "{:?}",
        row.errors
    );
}

/// The tenants' counters follow every way a job's images and the job itself change: a job of
/// known and unknown stores, outcomes recorded, a lease taken back, a cancel, a prune. Each
/// counter equals what aggregating the jobs table gives, and the recount finds nothing to fix
/// until a counter is broken behind its back.
async fn tenant_counters_follow_submits_outcomes_cancels_and_prunes(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let db = migrated(&tdb).await;
    let done = create_job(&db, STORE_A, 3).await;
    let cancelled = create_job(&db, STORE_A, 4).await;
    let _open = create_job(&db, STORE_B, 5).await;
    // A job of an unknown store only: failed at once.
    let body = payload(&[("S-UNKNOWN", vec!["http://img.invalid/x.png".into()])]).to_string();
    let submission = Submission::parse(body.as_bytes(), &Limits::default()).unwrap();
    db::jobs::create(
        &db,
        db::jobs::Owner::unlimited("default"),
        &submission,
        &HashSet::new(),
        None,
    )
    .await
    .unwrap();
    let q = Queue::new(db.clone(), "w".into(), Duration::from_secs(30), 3);
    let claimed = q.claim(3).await.unwrap();
    assert!(claimed.iter().all(|c| c.job_id == done));
    let fail = Outcome::Failed {
        kind: ErrorKind::HttpStatus,
        message: "HTTP 404".into(),
    };
    q.complete(&[
        (claimed[0].id, ok()),
        (claimed[1].id, ok()),
        (claimed[2].id, fail),
    ])
    .await
    .unwrap();
    db::jobs::cancel(&db, db::jobs::Scope::All, cancelled)
        .await
        .unwrap();
    let expected = |db: Db| async move {
        let (aggregated,): (String,) = sqlx::query_as(
            "SELECT CAST(SUM(CASE WHEN status = 'ongoing' THEN total - succeeded - failed ELSE 0 END) AS TEXT) || ' ' || \
               CAST(SUM(succeeded) AS TEXT) || ' ' || CAST(SUM(failed) AS TEXT) || ' ' || \
               CAST(SUM(CASE WHEN status = 'ongoing' THEN 1 ELSE 0 END) AS TEXT) || ' ' || \
               CAST(SUM(CASE WHEN status = 'completed' THEN 1 ELSE 0 END) AS TEXT) || ' ' || \
               CAST(SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS TEXT) || ' ' || \
               CAST(SUM(CASE WHEN status = 'cancelled' THEN 1 ELSE 0 END) AS TEXT) FROM jobs",
        )
        .fetch_one(db.pool())
        .await
        .unwrap();
        let c = db::counts::totals(&db).await.unwrap();
        let counted = format!(
            "{} {} {} {} {} {} {}",
            c.unfinished_images,
            c.images_succeeded,
            c.images_failed,
            c.jobs_ongoing,
            c.jobs_completed,
            c.jobs_failed,
            c.jobs_cancelled
        );
        (aggregated, counted)
    };
    let (aggregated, counted) = expected(db.clone()).await;
    assert_eq!(counted, aggregated);
    assert_eq!(
        counted, "5 2 6 1 0 2 1",
        "unfinished, succeeded, failed, then jobs by state"
    );
    // Pruning the finished jobs takes them out of the counts too.
    for job in [done, cancelled] {
        db::retention::delete_images(&db, job, 1000).await.unwrap();
        db::retention::delete_job(&db, job).await.unwrap();
    }
    let (aggregated, counted) = expected(db.clone()).await;
    assert_eq!(counted, aggregated);
    assert_eq!(db::counts::recount_unfinished(&db).await.unwrap(), 0);
    sqlx::query("UPDATE tenant_counts SET unfinished_images = 999")
        .execute(db.pool())
        .await
        .unwrap();
    assert_eq!(db::counts::recount_unfinished(&db).await.unwrap(), 1);
    let (aggregated, counted) = expected(db.clone()).await;
    assert_eq!(
        counted, aggregated,
        "the recount puts a broken counter right"
    );
}

/// A worker that dies before it starts an image costs the image nothing: its claim comes
/// back with the lease, and the expiry is counted, so the next worker knows to record the
/// start before running it (`expiries`). A worker that dies after the start is recorded costs
/// it that attempt.
async fn a_dead_workers_unstarted_images_cost_nothing_and_come_back_marked(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let db = migrated(&tdb).await;
    create_job(&db, STORE_A, 1).await;
    let worker = |name: &str| Queue::new(db.clone(), name.into(), Duration::from_millis(50), 3);
    let first = worker("died-before-starting");
    let c = first.claim(1).await.unwrap();
    assert_eq!((c[0].attempts, c[0].expiries), (1, 0));
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(first.reap_expired().await.unwrap(), 1);
    let second = worker("died-after-starting");
    let c = second.claim(1).await.unwrap();
    assert_eq!(
        (c[0].attempts, c[0].expiries),
        (1, 1),
        "no attempt spent, the expiry counted"
    );
    second.record(&[c[0].id], &[]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(second.reap_expired().await.unwrap(), 1);
    let third = worker("third");
    let c = third.claim(1).await.unwrap();
    assert_eq!(
        (c[0].attempts, c[0].expiries),
        (2, 2),
        "the started one cost an attempt"
    );
    let (claims,): (i64,) = sqlx::query_as("SELECT CAST(claims AS BIGINT) FROM images")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(claims, 2, "the second worker's claim and this one");
}

/// A stopping worker hands back what it claimed and never started: pending at once, the claim
/// refunded; what it started keeps its attempt until its outcome or release.
async fn unstarted_images_are_handed_back_with_their_claims_refunded(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let db = migrated(&tdb).await;
    create_job(&db, STORE_A, 4).await;
    let q = Queue::new(db.clone(), "stopping".into(), Duration::from_secs(30), 3);
    let claimed = q.claim(4).await.unwrap();
    assert_eq!(claimed.len(), 4);
    let ids: Vec<i64> = claimed.iter().map(|c| c.id).collect();
    q.record(&ids[..1], &[]).await.unwrap();
    assert_eq!(q.hand_back(&ids).await.unwrap(), 3, "the started one stays");
    let counts: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT status, CAST(attempts AS BIGINT), CAST(claims AS BIGINT) FROM images ORDER BY id",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert_eq!(counts[0], ("running".to_string(), 1, 1));
    for row in &counts[1..] {
        assert_eq!(row, &("pending".to_string(), 0, 0));
    }
    assert_eq!(q.release_all().await.unwrap(), 1);
    let first: (String, i64, i64) = sqlx::query_as(
        "SELECT status, CAST(attempts AS BIGINT), CAST(claims AS BIGINT) FROM images ORDER BY id LIMIT 1",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(
        first,
        ("pending".to_string(), 0, 0),
        "a shutdown is not the image's doing"
    );
}

async fn retry_waits_for_its_time(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let db = migrated(&tdb).await;
    create_job(&db, STORE_A, 1).await;
    let q = Queue::new(db.clone(), "q".into(), Duration::from_secs(30), 3);
    let c = q.claim(1).await.unwrap();
    let retry = Outcome::Retry {
        after: Duration::from_millis(400),
        kind: ErrorKind::Network,
        message: "reset".into(),
    };
    assert_eq!(q.complete(&[(c[0].id, retry)]).await.unwrap(), 1);
    assert!(q.claim(1).await.unwrap().is_empty(), "not before its time");
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(q.claim(1).await.unwrap().len(), 1);
}

async fn flaky_host_succeeds_and_broken_host_fails_after_retries(backend: Backend) {
    let db = TestDb::new(backend).await;
    let images = ImageServer::start().await;
    let mut config = test_config(&db);
    config.worker.max_attempts = 3;
    config.worker.retry_base = Duration::from_millis(200);
    let app = TestApp::start(config).await;
    let key = format!("k{}", fastrand::u32(..));
    let flaky = images.url(&format!("/flaky/{key}/2/40x30.png"));
    let polite_key = format!("{key}-retry-after");
    let polite = images.url(&format!("/retry-after/{polite_key}/1/10x10.png"));
    let job = app
        .submit_ok(&payload(&[
            (STORE_A, vec![flaky, polite]),
            (STORE_B, vec![images.url("/status/500")]),
        ]))
        .await;
    let status = app.wait_finished(job, Duration::from_secs(30)).await;
    assert_eq!(status["status"], "failed");
    let errors = status["error"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{status}");
    assert_eq!(errors[0]["store_id"], STORE_B);
    assert!(
        errors[0]["error"]
            .as_str()
            .unwrap()
            .ends_with("HTTP 500 Internal Server Error (after 3 attempts)"),
        "{status}"
    );
    let results = app.all_images(job, 10).await;
    assert_eq!(results[0]["status"], "succeeded");
    assert_eq!(results[0]["perimeter"], 140);
    // A 503 with Retry-After: 1 is retried after a second, not after the 100–200 ms backoff.
    assert_eq!(results[1]["perimeter"], 40);
    let polite_times = images.flaky_times(&polite_key);
    assert_eq!(polite_times.len(), 2);
    let waited = polite_times[1] - polite_times[0];
    assert!(
        waited >= Duration::from_millis(1000),
        "Retry-After ignored: {waited:?}"
    );
    // Backoff: base 200 ms with jitter in [d/2, d], doubling: ≥100 ms, then ≥200 ms.
    let times = images.flaky_times(&key);
    assert_eq!(times.len(), 3);
    assert!(
        times[1] - times[0] >= Duration::from_millis(100),
        "{:?}",
        times[1] - times[0]
    );
    assert!(
        times[2] - times[1] >= Duration::from_millis(200),
        "{:?}",
        times[2] - times[1]
    );
    app.stop().await;
}

async fn graceful_stop_hands_unfinished_images_back(backend: Backend) {
    let db = TestDb::new(backend).await;
    let images = ImageServer::start().await;
    let mut config = test_config(&db);
    config.worker.concurrency = 2;
    config.worker.shutdown_grace = Duration::from_millis(100);
    let app = TestApp::start(config.clone()).await;
    let slow = images.url("/slow/3000/10x10.png");
    let job = app
        .submit_ok(&payload(&[(STORE_A, vec![slow.clone(), slow])]))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.stop().await;
    let handle = Db::connect(&db.url, 2).await.unwrap();
    let rows = db::images::page(&handle, job, -1, 10).await.unwrap();
    assert!(
        rows.iter().all(|r| r.status.as_str() == "pending"),
        "released, not left leased: {rows:?}"
    );
    // Another start finishes the job without waiting for any lease to expire.
    config.worker.lease = Duration::from_secs(600);
    let app = TestApp::start(config).await;
    let status = app.wait_finished(job, Duration::from_secs(20)).await;
    assert_eq!(status["status"], "completed");
    app.stop().await;
}

async fn killed_process_loses_nothing_and_doubles_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let images = ImageServer::start().await;
    let settings = [
        ("RP_PROCESSING_DELAY_MS", "5-15"),
        ("RP_WORKERS", "8"),
        ("RP_LEASE_SECS", "1.5"),
        ("RP_POLL_INTERVAL_MS", "100"),
    ];
    let client = common::client();
    let n = 2000u32;
    let urls: Vec<String> = (0..n)
        .map(|i| images.image(1 + i % 50, 1 + i / 50, "png"))
        .collect();
    // Two visits of 1,000 images (the per-visit limit).
    let body = payload(&[
        (STORE_A, urls[..1000].to_vec()),
        (STORE_B, urls[1000..].to_vec()),
    ]);
    let mut service = Service::start(BIN, "serve", &db.url, &settings);
    // The same job once undisturbed, for the time it takes without kills.
    let started = Instant::now();
    let baseline = service.submit(&client, &body).await;
    while service
        .get_json(&client, &format!("/api/jobs/{baseline}"))
        .await["status"]
        == "ongoing"
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let undisturbed = started.elapsed();
    let started = Instant::now();
    let job = service.submit(&client, &body).await;
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let detail = service.get_json(&client, &format!("/api/jobs/{job}")).await;
        let done = detail["images"]["succeeded"].as_i64().unwrap();
        if detail["status"] != "ongoing" {
            break;
        }
        // Kill at roughly a quarter, a half and three quarters of the way.
        if kills < 3 && done >= (i64::from(n) / 4) * (kills + 1) {
            service.kill_hard();
            kills += 1;
            service = Service::start(BIN, "serve", &db.url, &settings);
        }
        assert!(Instant::now() < deadline, "job did not finish: {detail}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(kills, 3, "the job finished before all the kills");
    eprintln!(
        "{n} images: {undisturbed:?} undisturbed, {:?} with three kill -9 and restarts",
        started.elapsed()
    );
    let detail = service.get_json(&client, &format!("/api/jobs/{job}")).await;
    assert_eq!(detail["status"], "completed", "{detail}");
    assert_eq!(
        detail["images"],
        json!({"total": n, "succeeded": n, "failed": 0, "pending": 0})
    );
    let page = service
        .get_json(&client, &format!("/api/jobs/{job}/images?limit=5000"))
        .await;
    let results = page["images"].as_array().unwrap();
    assert_eq!(results.len(), n as usize);
    for (i, r) in results.iter().enumerate() {
        let (w, h) = (1 + i as i64 % 50, 1 + i as i64 / 50);
        assert_eq!(r["perimeter"], json!(2 * (w + h)), "image {i}: {r}");
    }
}

/// A tenant with 400 jobs queued does not slow another tenant's 5-image job: with 32 slots and
/// the default 100–400 ms per image it finishes in about its own processing time.
async fn a_busy_tenant_does_not_slow_another_tenants_small_job(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let db = migrated(&tdb).await;
    let images = ImageServer::start().await;
    for i in 0..400 {
        let urls: Vec<String> = (0..10).map(|k| images.image(1 + i, 1 + k, "png")).collect();
        let body = payload(&[(STORE_A, urls)]).to_string();
        let submission = Submission::parse(body.as_bytes(), &Limits::default()).unwrap();
        let owner = db::jobs::Owner::unlimited("default");
        db::jobs::create(&db, owner, &submission, &[STORE_A.to_string()].into(), None)
            .await
            .unwrap();
    }
    sqlx::query("UPDATE jobs SET tenant = 'busy'")
        .execute(db.pool())
        .await
        .unwrap();
    let mut config = test_config(&tdb);
    config.worker.concurrency = 32;
    config.worker.processing_delay = DelayRange {
        min_ms: 100,
        max_ms: 400,
    };
    let app = TestApp::start(config).await;
    // Let the busy tenant fill every slot and the workers' buffers first.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let submitted = Instant::now();
    let urls: Vec<String> = (0..5).map(|k| images.image(7, 1 + k, "png")).collect();
    let small = app.submit_ok(&payload(&[(STORE_B, urls)])).await;
    let status = app.wait_finished(small, Duration::from_secs(30)).await;
    let took = submitted.elapsed();
    assert_eq!(status["status"], "completed", "{status}");
    let busy_left: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM jobs WHERE tenant = 'busy' AND status = 'ongoing'",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert!(
        busy_left > 300,
        "the busy tenant's jobs were still queued ({busy_left})"
    );
    assert!(
        took < Duration::from_secs(3),
        "the small tenant's 5-image job took {took:?} beside 400 queued jobs"
    );
    eprintln!("a 5-image job of a second tenant finished in {took:?} beside 400 queued jobs");
    app.stop().await;
}

/// Cancel, result recording and heartbeats run at once over the same jobs, many times: every
/// one of them locks image rows in id order, then job rows, so none ever deadlocks (PostgreSQL
/// counts deadlocks per database; the count stays 0).
async fn cancel_completion_and_heartbeat_never_deadlock(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let db = migrated(&tdb).await;
    for round in 0..25 {
        let mut jobs = Vec::new();
        for _ in 0..3 {
            jobs.push(create_job(&db, STORE_A, 40).await);
        }
        let first = Queue::new(
            db.clone(),
            format!("first-{round}"),
            Duration::from_secs(30),
            3,
        );
        let second = Queue::new(
            db.clone(),
            format!("second-{round}"),
            Duration::from_secs(30),
            3,
        );
        let mine = first.claim(60).await.unwrap();
        let theirs = second.claim(60).await.unwrap();
        let ok_all = |claimed: &[retail_pulse::queue::ClaimedImage]| -> Vec<(i64, Outcome)> {
            claimed.iter().rev().map(|c| (c.id, ok())).collect()
        };
        let (mine, theirs) = (ok_all(&mine), ok_all(&theirs));
        let (a, b, c, d, e) = tokio::join!(
            first.complete(&mine),
            second.heartbeat(),
            db::jobs::cancel(&db, db::jobs::Scope::All, jobs[1]),
            second.complete(&theirs),
            first.heartbeat(),
        );
        for (what, result) in [
            ("first complete", a.map(|_| ())),
            ("second heartbeat", b.map(|_| ())),
            ("cancel", c.map(|_| ())),
            ("second complete", d.map(|_| ())),
            ("first heartbeat", e.map(|_| ())),
        ] {
            if let Err(error) = result {
                panic!("round {round}: {what} failed: {error}");
            }
        }
    }
    if backend == Backend::Postgres {
        let deadlocks: i64 = sqlx::query_scalar(
            "SELECT CAST(deadlocks AS BIGINT) FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(db.pool())
        .await
        .unwrap();
        assert_eq!(deadlocks, 0, "PostgreSQL detected deadlocks");
    }
}

/// A start recorded in the same batch as the image's outcome (the writer skips its update)
/// counts the one attempt, as a start recorded before it does; beside a deferral, which counts
/// none, the start still counts.
async fn a_start_and_its_outcome_in_one_batch_count_one_attempt(backend: Backend) {
    let tdb = TestDb::new(backend).await;
    let db = migrated(&tdb).await;
    create_job(&db, STORE_A, 4).await;
    let q = Queue::new(db.clone(), "w".into(), Duration::from_secs(30), 3);
    let c = q.claim(4).await.unwrap();
    let ids: Vec<i64> = c.iter().map(|c| c.id).collect();
    let done = Outcome::Succeeded {
        width: 2,
        height: 3,
        perimeter: 10,
    };
    let retry = Outcome::Retry {
        after: Duration::from_secs(60),
        kind: ErrorKind::Network,
        message: "reset".into(),
    };
    let deferred = Outcome::Deferred {
        after: Duration::from_secs(60),
    };
    // Together: ids 0-2. Apart: id 3 (its start first, then its outcome).
    q.record(
        &ids[..3],
        &[(ids[0], done.clone()), (ids[1], retry), (ids[2], deferred)],
    )
    .await
    .unwrap();
    q.record(&ids[3..], &[]).await.unwrap();
    q.record(&[], &[(ids[3], done)]).await.unwrap();
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT status, CAST(attempts AS BIGINT), CAST(claims AS BIGINT) FROM images ORDER BY id",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            ("succeeded".to_string(), 1, 1),
            ("pending".to_string(), 1, 1),
            ("pending".to_string(), 1, 0),
            ("succeeded".to_string(), 1, 1),
        ]
    );
}

on_both_backends!(
    a_start_and_its_outcome_in_one_batch_count_one_attempt,
    a_busy_tenant_does_not_slow_another_tenants_small_job,
    cancel_completion_and_heartbeat_never_deadlock,
    small_job_is_not_stuck_behind_a_large_one,
    concurrent_claims_never_share_an_image,
    results_are_recorded_only_under_the_lease,
    heartbeat_keeps_a_lease_alive,
    a_lease_let_go_is_not_renewed,
    jobs_waiting_on_retries_do_not_hide_newer_jobs,
    poison_image_fails_after_its_attempts,
    a_dead_workers_unstarted_images_cost_nothing_and_come_back_marked,
    tenant_counters_follow_submits_outcomes_cancels_and_prunes,
    unstarted_images_are_handed_back_with_their_claims_refunded,
    retry_waits_for_its_time,
    flaky_host_succeeds_and_broken_host_fails_after_retries,
    graceful_stop_hands_unfinished_images_back,
    killed_process_loses_nothing_and_doubles_nothing,
);
