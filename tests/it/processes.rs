//! Many processes, one truth (PostgreSQL, real processes): what a dead or stopping worker
//! costs the images it held, and limits that hold for the service as a whole however many API
//! processes answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use retail_pulse::db::Db;
use retail_pulse::queue::Queue;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common;
use crate::common::service::Service;
use crate::common::{Backend, ImageServer, STORE_A, TestDb, payload};

const BIN: &str = env!("CARGO_BIN_EXE_retail-pulse");

/// How many images of the database are in each state, and their attempts and claims summed.
async fn tally(pool: &sqlx::PgPool) -> Value {
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT status, COUNT(*), CAST(SUM(attempts) AS BIGINT), CAST(SUM(claims) AS BIGINT) \
         FROM images GROUP BY status",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(status, n, attempts, claims)| {
            (
                status,
                json!({"n": n, "attempts": attempts, "claims": claims}),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

async fn wait_for(what: &str, within: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A worker killed with many images claimed and some of them started costs an attempt to the
/// started ones only; the rest come back with their claim refunded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_costs_an_attempt_only_to_the_images_it_had_started() {
    let name = "a_killed_worker_costs_an_attempt_only_to_the_images_it_had_started";
    let Some(_turn) = common::postgres_turn(name).await else {
        return;
    };
    let db = TestDb::new(Backend::Postgres).await;
    let images = ImageServer::start().await;
    let api = Service::start(BIN, "serve", &db.url, &[("RP_NO_WORKERS", "true")]);
    // Each image is started and then waits its (long) simulated GPU time.
    let worker = Service::start(
        BIN,
        "worker",
        &db.url,
        &[
            ("RP_WORKERS", "32"),
            ("RP_FETCH_MAX_PER_ORIGIN", "32"),
            ("RP_PROCESSING_DELAY_MS", "60000"),
            ("RP_LEASE_SECS", "60"),
        ],
    );
    let client = common::client();
    let urls: Vec<String> = (0..400).map(|i| images.image(1 + i, 5, "png")).collect();
    api.submit(&client, &payload(&[(STORE_A, urls)])).await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    wait_for("32 starts recorded", Duration::from_secs(30), async || {
        let started: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM images WHERE status = 'running' AND started = 1",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        started == 32
    })
    .await;
    let claimed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM images WHERE status = 'running'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        claimed > 32,
        "the worker holds images it has not started: {claimed}"
    );
    worker.kill_hard();
    // Its leases run out (made to at once), and any worker's reaper takes the images back.
    sqlx::query("UPDATE images SET lease_expires_at = 0 WHERE status = 'running'")
        .execute(&pool)
        .await
        .unwrap();
    let handle = Db::connect(&db.url, 2).await.unwrap();
    let reaper = Queue::new(handle, "reaper".into(), Duration::from_secs(30), 3);
    assert_eq!(reaper.reap_expired().await.unwrap(), claimed as u64);
    let t = tally(&pool).await;
    assert_eq!(t["pending"]["n"], 400, "{t}");
    assert_eq!(
        t["pending"]["attempts"], 32,
        "only the started images paid: {t}"
    );
    assert_eq!(
        t["pending"]["claims"], 32,
        "the unstarted got their claim back: {t}"
    );
    let marked: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM images WHERE expiries = 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(marked, claimed, "each expiry is counted");
    drop(api);
}

/// An image whose download kills its worker, again and again: it fails after its attempts
/// (its start recorded ahead once its lease had expired), and every other image of its job
/// succeeds — the images the dead workers had claimed and not started paid nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_kills_its_worker_fails_and_no_other_image_does() {
    let name = "an_image_that_kills_its_worker_fails_and_no_other_image_does";
    let Some(_turn) = common::postgres_turn(name).await else {
        return;
    };
    let db = TestDb::new(Backend::Postgres).await;
    // A host that serves a PNG on every path but /poison, which kills the worker that asked.
    let victim = Arc::new(AtomicU32::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = format!("http://{}", listener.local_addr().unwrap());
    {
        let victim = victim.clone();
        tokio::spawn(async move {
            let png = common::images::encode(4, 3, "png");
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let (victim, png) = (victim.clone(), png.clone());
                tokio::spawn(async move {
                    let mut request = vec![0u8; 4096];
                    let n = conn.read(&mut request).await.unwrap_or(0);
                    if String::from_utf8_lossy(&request[..n]).starts_with("GET /poison") {
                        let pid = victim.load(Ordering::SeqCst);
                        if pid != 0 {
                            unsafe {
                                libc::kill(pid as i32, libc::SIGKILL);
                            }
                        }
                        return;
                    }
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        png.len()
                    );
                    let _ = conn.write_all(head.as_bytes()).await;
                    let _ = conn.write_all(&png).await;
                });
            }
        });
    }
    let api = Service::start(BIN, "serve", &db.url, &[("RP_NO_WORKERS", "true")]);
    let client = common::client();
    let mut urls: Vec<String> = (0..10).map(|i| format!("{host}/ok/{i}.png")).collect();
    urls.insert(3, format!("{host}/poison"));
    let job = api.submit(&client, &payload(&[(STORE_A, urls)])).await;
    let worker_env = [
        ("RP_WORKERS", "1"),
        ("RP_PROCESSING_DELAY_MS", "0"),
        ("RP_LEASE_SECS", "1"),
        ("RP_POLL_INTERVAL_MS", "100"),
        ("RP_MAX_ATTEMPTS", "3"),
    ];
    let started = Instant::now();
    let mut deaths = 0;
    let detail = loop {
        let worker = Service::start(BIN, "worker", &db.url, &worker_env);
        victim.store(worker.child.id(), Ordering::SeqCst);
        let mut worker = Some(worker);
        let detail = loop {
            let detail = api.get_json(&client, &format!("/api/jobs/{job}")).await;
            let died = worker
                .as_mut()
                .is_some_and(|w| w.child.try_wait().unwrap().is_some());
            if detail["status"] != "ongoing" || died {
                break detail;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if detail["status"] != "ongoing" {
            break detail;
        }
        deaths += 1;
        drop(worker.take());
        assert!(
            deaths <= 8,
            "still ongoing after {deaths} dead workers: {detail}"
        );
        assert!(started.elapsed() < Duration::from_secs(90), "{detail}");
    };
    assert_eq!(detail["status"], "failed", "{detail}");
    assert_eq!(
        detail["images"],
        json!({"total": 11, "succeeded": 10, "failed": 1, "pending": 0}),
        "only the poison failed: {detail}"
    );
    let error = detail["error"][0]["error"].as_str().unwrap();
    assert!(error.contains("abandoned after 3 attempts"), "{error}");
    assert!((3..=4).contains(&deaths), "{deaths} workers died");
    drop(api);
}

/// SIGTERM to a worker in the middle of 2,000 images in flight: it hands its unstarted images
/// back at once, drains, and exits within 15 s (compose's stop grace), leaving nothing leased
/// and nothing charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_2000_slot_drain_exits_within_15_s_with_nothing_lost() {
    let name = "sigterm_during_a_2000_slot_drain_exits_within_15_s_with_nothing_lost";
    let Some(_turn) = common::postgres_turn(name).await else {
        return;
    };
    let db = TestDb::new(Backend::Postgres).await;
    let images = ImageServer::start().await;
    let api = Service::start(BIN, "serve", &db.url, &[("RP_NO_WORKERS", "true")]);
    let worker = Service::start(
        BIN,
        "worker",
        &db.url,
        &[
            ("RP_WORKERS", "2000"),
            ("RP_PROCESSING_DELAY_MS", "100-400"),
        ],
    );
    let client = common::client();
    // Twelve visits of 1,000 images (the per-visit limit).
    let visits: Vec<(&str, Vec<String>)> = (0..12)
        .map(|v| {
            let urls = (0..1000)
                .map(|i| images.image(1 + i % 50, 1 + v, "png"))
                .collect();
            (STORE_A, urls)
        })
        .collect();
    let job = api.submit(&client, &payload(&visits)).await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    wait_for(
        "the worker busy with 2,000 images",
        Duration::from_secs(60),
        async || {
            let started: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM images WHERE status = 'running' AND started = 1",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            started >= 1500
        },
    )
    .await;
    let stopping = Instant::now();
    let status = worker.terminate();
    let took = stopping.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(15), "exit took {took:?}");
    let t = tally(&pool).await;
    assert!(t.get("running").is_none(), "nothing left leased: {t}");
    assert_eq!(
        t["pending"]["attempts"], 0,
        "no attempt charged for the stop: {t}"
    );
    assert_eq!(
        t["pending"]["claims"], 0,
        "no claim charged for the stop: {t}"
    );
    let detail = api.get_json(&client, &format!("/api/jobs/{job}")).await;
    assert_eq!(detail["images"]["failed"], 0, "{detail}");
    drop(api);
}

/// `n` submits of `body` at once, spread over `apis` in turn: their status codes.
async fn burst(apis: &[Service], body: &str, n: usize) -> Vec<u16> {
    let client = common::client();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (client, body) = (client.clone(), body.to_string());
        let base = apis[i % apis.len()].base.clone();
        tasks.spawn(async move {
            client
                .post(format!("{base}/api/submit/"))
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        });
    }
    let mut codes = Vec::new();
    while let Some(code) = tasks.join_next().await {
        codes.push(code.unwrap());
    }
    codes
}

/// Three API processes, a tenant quota of 1,000 unfinished images, 60 concurrent submits of
/// 50 images each: exactly 1,000 images are admitted (20 jobs), the rest refused with 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_holds_exactly_across_three_api_processes() {
    let name = "a_quota_holds_exactly_across_three_api_processes";
    let Some(_turn) = common::postgres_turn(name).await else {
        return;
    };
    let db = TestDb::new(Backend::Postgres).await;
    let env = [
        ("RP_NO_WORKERS", "true"),
        ("RP_TENANT_MAX_UNFINISHED_IMAGES", "1000"),
        ("RP_TENANT_SUBMITS_PER_MINUTE", "0"),
    ];
    let apis: Vec<Service> = (0..3)
        .map(|_| Service::start(BIN, "serve", &db.url, &env))
        .collect();
    let urls: Vec<String> = (0..50)
        .map(|i| format!("http://img.invalid/{i}.png"))
        .collect();
    let body = payload(&[(STORE_A, urls)]).to_string();
    let codes = burst(&apis, &body, 60).await;
    let accepted = codes.iter().filter(|c| **c == 201).count();
    let refused = codes.iter().filter(|c| **c == 429).count();
    assert_eq!((accepted, refused), (20, 40), "{codes:?}");
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let images: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM images")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(images, 1000);
}

/// Three API processes, a submit rate of 60 a minute: a burst of 150 submits spread over the
/// three gets the tenant's 60 (and what refills meanwhile), not 60 per process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_rate_holds_across_three_api_processes() {
    let name = "a_submit_rate_holds_across_three_api_processes";
    let Some(_turn) = common::postgres_turn(name).await else {
        return;
    };
    let db = TestDb::new(Backend::Postgres).await;
    let env = [
        ("RP_NO_WORKERS", "true"),
        ("RP_TENANT_SUBMITS_PER_MINUTE", "60"),
    ];
    let apis: Vec<Service> = (0..3)
        .map(|_| Service::start(BIN, "serve", &db.url, &env))
        .collect();
    let body = payload(&[(STORE_A, vec!["http://img.invalid/1.png".into()])]).to_string();
    let started = Instant::now();
    let codes = burst(&apis, &body, 150).await;
    let accepted = codes.iter().filter(|c| **c == 201).count();
    // The burst is the bucket (60) plus one a second of refill while it lasted.
    let refill = started.elapsed().as_secs_f64().ceil() as usize;
    assert!(
        (60..=66 + refill).contains(&accepted),
        "{accepted} of 150 accepted in {:?}",
        started.elapsed()
    );
}

/// A host that serves a small PNG on every path after `pause`, counting the connections it
/// has open at once (the highest is returned by the counter); `hang` paths never get an answer.
async fn counting_host(pause: Duration) -> (String, Arc<AtomicU32>, Arc<AtomicU32>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (open, highest) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let (o, h) = (open.clone(), highest.clone());
    tokio::spawn(async move {
        let png = common::images::encode(4, 3, "png");
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let (open, highest, png) = (o.clone(), h.clone(), png.clone());
            tokio::spawn(async move {
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                highest.fetch_max(now, Ordering::SeqCst);
                let mut request = vec![0u8; 4096];
                let n = conn.read(&mut request).await.unwrap_or(0);
                if String::from_utf8_lossy(&request[..n]).starts_with("GET /hang") {
                    // Never answers; the connection counts as open until the client gives up.
                    while conn.read(&mut request).await.is_ok_and(|n| n > 0) {}
                    open.fetch_sub(1, Ordering::SeqCst);
                    return;
                }
                tokio::time::sleep(pause).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    png.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(&png).await;
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (base, open, highest)
}

/// Three worker processes, an origin budget of 8: the origin never sees more than 8
/// downloads at once, whatever the workers' slots (16 each), and the job still completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_budget_holds_across_three_worker_processes() {
    let name = "an_origin_budget_holds_across_three_worker_processes";
    let Some(_turn) = common::postgres_turn(name).await else {
        return;
    };
    let db = TestDb::new(Backend::Postgres).await;
    let (host, _open, highest) = counting_host(Duration::from_millis(100)).await;
    let api = Service::start(BIN, "serve", &db.url, &[("RP_NO_WORKERS", "true")]);
    let env = [
        ("RP_WORKERS", "16"),
        ("RP_FETCH_MAX_PER_ORIGIN", "8"),
        ("RP_PROCESSING_DELAY_MS", "0"),
    ];
    let workers: Vec<Service> = (0..3)
        .map(|_| Service::start(BIN, "worker", &db.url, &env))
        .collect();
    let client = common::client();
    let urls: Vec<String> = (0..240).map(|i| format!("{host}/{i}.png")).collect();
    let job = api.submit(&client, &payload(&[(STORE_A, urls)])).await;
    let started = Instant::now();
    loop {
        let detail = api.get_json(&client, &format!("/api/jobs/{job}")).await;
        if detail["status"] != "ongoing" {
            assert_eq!(detail["status"], "completed", "{detail}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{detail}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let most = highest.load(Ordering::SeqCst);
    assert!(
        most <= 8,
        "{most} downloads at once at an origin with a budget of 8"
    );
    assert!(
        most >= 4,
        "the budget was used ({most} at most): the workers shared it"
    );
    drop(workers);
}

/// Three worker processes, an origin budget of 8 and the default delay: a job whose first
/// 400 images are on a host that accepts connections and never answers, and whose last 200
/// are on a good host. The hanging host may hold only 8 slots of the 96, and its waiting
/// images must not keep the workers from claiming past them (a worker parks at most half its
/// parking with one origin's images and gives the rest back for a while): the 200 good
/// images finish in about their own time, long before the hanging ones time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_origin_beside_a_good_one_across_three_workers() {
    let name = "a_hanging_origin_beside_a_good_one_across_three_workers";
    let Some(_turn) = common::postgres_turn(name).await else {
        return;
    };
    let db = TestDb::new(Backend::Postgres).await;
    let (hanging, _, hanging_most) = counting_host(Duration::ZERO).await;
    let (good, _, _) = counting_host(Duration::ZERO).await;
    let api = Service::start(BIN, "serve", &db.url, &[("RP_NO_WORKERS", "true")]);
    let env = [("RP_FETCH_MAX_PER_ORIGIN", "8")];
    let workers: Vec<Service> = (0..3)
        .map(|_| Service::start(BIN, "worker", &db.url, &env))
        .collect();
    let pool = sqlx::postgres::PgPool::connect(&db.url).await.unwrap();
    let client = common::client();
    let mut urls: Vec<String> = (0..400)
        .map(|i| format!("{hanging}/hang/{i}.png"))
        .collect();
    urls.extend((0..200).map(|i| format!("{good}/{i}.png")));
    let visits: Vec<(&str, Vec<String>)> =
        urls.chunks(100).map(|c| (STORE_A, c.to_vec())).collect();
    let job = api.submit(&client, &payload(&visits)).await;
    let submitted = Instant::now();
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM images WHERE job_id = $1 AND url LIKE $2 AND status = 'succeeded'",
        )
        .bind(job)
        .bind(format!("{good}/%"))
        .fetch_one(&pool)
        .await
        .unwrap();
        if done == 200 {
            eprintln!(
                "the 200 good images finished {:?} after the submit",
                submitted.elapsed()
            );
            break;
        }
        // 8 s, not the 15 s the issue allows: the hanging downloads stall out at 10 s and
        // open the breaker, which would let the good images through at about 11 s anyway.
        assert!(
            submitted.elapsed() < Duration::from_secs(8),
            "only {done} of the 200 good images done {:?} after the submit",
            submitted.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let most = hanging_most.load(Ordering::SeqCst);
    assert!(most <= 8, "{most} downloads at once at the hanging host");
    drop(workers);
    pool.close().await;
}
