//! The database goes away under the service: a PostgreSQL restart mid-job (the API answers
//! 503 quickly, the job completes unattended once it is back), and a worker host that
//! vanishes in the middle of a transaction (the queue must not freeze behind its session).
//! The restart disturbs every connection to the local server, so it runs while no other
//! PostgreSQL test does ([`common::postgres_alone`]).

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common;
use crate::common::relay::{Mode, Relay};
use crate::common::service::Service;
use crate::common::{ImageServer, STORE_A, TestDb, payload};

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
    let Some(_alone) = common::postgres_alone("postgres_restart_mid_job_is_ridden_out").await
    else {
        return;
    };
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

/// A worker host vanishes in the middle of a transaction: a relay between it and PostgreSQL
/// first flaps (loses bytes for a moment, a few times), then cuts for good right after the
/// server answered a statement inside a transaction, so the server keeps that session "idle
/// in transaction", holding its row locks, and never hears of the client again. Round 1 cuts
/// after the first statement of a transaction (the session holds image rows: the reaper skips
/// them); round 2 after the second (it holds the job row: every other result of the job
/// waits behind it). Without the session limits (`RP_DB_IDLE_IN_TRANSACTION_TIMEOUT_SECS=0
/// RP_DB_LOCK_TIMEOUT_SECS=0 RP_DB_KEEPALIVE_SECS=0` for the workers; set
/// `RP_TEST_WITHOUT_SESSION_LIMITS=1` to see it) neither job ever completes; with them, each
/// completes with every image recorded once, well within 60 s of the cut, and no session of
/// the vanished worker stays idle in a transaction past the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_host_vanishing_mid_transaction_does_not_freeze_the_queue() {
    let Some(_turn) =
        common::postgres_turn("a_worker_host_vanishing_mid_transaction_does_not_freeze_the_queue")
            .await
    else {
        return;
    };
    let db = TestDb::new(common::Backend::Postgres).await;
    let images = ImageServer::start().await;
    let without_limits = std::env::var("RP_TEST_WITHOUT_SESSION_LIMITS").is_ok();
    let idle_timeout_secs = 4u64;
    let idle = idle_timeout_secs.to_string();
    let mut worker_env: Vec<(&str, &str)> = vec![
        ("RP_PROCESSING_DELAY_MS", "40"),
        ("RP_LEASE_SECS", "5"),
        ("RP_POLL_INTERVAL_MS", "100"),
        ("RP_DB_IDLE_IN_TRANSACTION_TIMEOUT_SECS", idle.as_str()),
        ("RP_DB_OPERATION_TIMEOUT_SECS", "8"),
    ];
    if without_limits {
        worker_env.extend([
            ("RP_DB_IDLE_IN_TRANSACTION_TIMEOUT_SECS", "0"),
            ("RP_DB_LOCK_TIMEOUT_SECS", "0"),
            ("RP_DB_KEEPALIVE_SECS", "0"),
        ]);
    }
    let api = Service::start(BIN, "serve", &db.url, &[("RP_NO_WORKERS", "true")]);
    let mut steady_env = worker_env.clone();
    steady_env.push(("RP_WORKERS", "4"));
    let steady = Service::start(BIN, "worker", &db.url, &steady_env);
    let pool = sqlx::postgres::PgPool::connect(&db.url).await.unwrap();
    let client = common::client();
    let upstream: std::net::SocketAddr = {
        let url = url::Url::parse(&db.url).unwrap();
        let host = url.host_str().unwrap().to_string();
        tokio::net::lookup_host((host.as_str(), url.port().unwrap_or(5432)))
            .await
            .unwrap()
            .next()
            .unwrap()
    };

    for (round, updates) in [(1usize, 1usize), (2, 2)] {
        let relay = Relay::start(upstream).await;
        let app_name = format!("rp-vanishing-{round}");
        let mut via = url::Url::parse(&db.url).unwrap();
        via.set_host(Some("127.0.0.1")).unwrap();
        via.set_port(Some(relay.addr.port())).unwrap();
        via.query_pairs_mut()
            .append_pair("sslmode", "disable")
            .append_pair("application_name", &app_name);
        let mut env = worker_env.clone();
        env.push(("RP_WORKERS", "8"));
        let vanishing = Service::start(BIN, "worker", via.as_str(), &env);

        // The first job carries traffic through the flaps (connections must be busy to lose
        // bytes); the second is submitted only once the worker is back, right before the cut
        // is armed, so the vanishing worker is sure to have outcomes to write (a fast machine
        // may have finished the first job by then: the cut would never find a transaction).
        let n = 1000i64;
        let job_for = |round: usize, shift: u32| -> Value {
            let urls: Vec<String> = (0..n)
                .map(|i| images.image(1 + (i % 97) as u32, 2 + shift + round as u32, "png"))
                .collect();
            let visits: Vec<(&str, Vec<String>)> =
                urls.chunks(100).map(|c| (STORE_A, c.to_vec())).collect();
            payload(&visits)
        };
        let flapped = api.submit(&client, &job_for(round, 0)).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        relay
            .flap(3, Duration::from_millis(150), Duration::from_millis(600))
            .await;
        if round == 1 {
            // Connections that lost bytes hang until the operation deadline; the worker then
            // drops them, reconnects and goes on, without a restart.
            let worker_id = worker_id(&vanishing);
            let healed = db_now(&pool).await;
            let recovered = Instant::now();
            loop {
                let recorded: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM images WHERE processed_by = $1 AND updated_at > $2",
                )
                .bind(&worker_id)
                .bind(healed)
                .fetch_one(&pool)
                .await
                .unwrap();
                if recorded > 0 {
                    break;
                }
                assert!(
                    recovered.elapsed() < Duration::from_secs(30),
                    "the worker did not go on after the link flapped"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            eprintln!(
                "round {round}: the worker recorded results again {:?} after the flaps",
                recovered.elapsed()
            );
        }
        let cut_job = api.submit(&client, &job_for(round, 10)).await;
        relay.cut_inside_transaction(updates);
        let armed = Instant::now();
        while !relay.has_cut() {
            if armed.elapsed() > Duration::from_secs(20) {
                let detail = api.get_json(&client, &format!("/api/jobs/{cut_job}")).await;
                panic!("round {round}: the vanishing worker never opened a transaction: {detail}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let cut = Instant::now();
        assert_eq!(relay.mode(), Mode::Blackhole);
        let held: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = $1 \
             AND state LIKE 'idle in transaction%'",
        )
        .bind(&app_name)
        .fetch_one(&pool)
        .await
        .unwrap();
        eprintln!(
            "round {round}: cut with {held} session(s) of the vanished worker idle in a transaction"
        );

        let mut took = Duration::ZERO;
        for job in [flapped, cut_job] {
            let done = loop {
                let detail = api.get_json(&client, &format!("/api/jobs/{job}")).await;
                if detail["status"] != "ongoing" {
                    break detail;
                }
                if cut.elapsed() > Duration::from_secs(60) {
                    let lines = steady.lines.lock().unwrap();
                    let tail: Vec<&String> = lines.iter().rev().take(30).rev().collect();
                    panic!(
                        "round {round}: job {job} still ongoing 60 s after the cut: {detail}\nthe steady worker's last lines:\n{}",
                        tail.iter()
                            .map(|l| l.as_str())
                            .collect::<Vec<_>>()
                            .join("\n")
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            took = cut.elapsed();
            assert_eq!(done["status"], "completed", "round {round}: {done}");
            assert_eq!(
                done["images"],
                json!({"total": n, "succeeded": n, "failed": 0, "pending": 0}),
                "round {round}, job {job}"
            );
            let recorded: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM images WHERE job_id = $1 AND status = 'succeeded' \
                 AND perimeter = 2 * (width + height) AND processed_by IS NOT NULL",
            )
            .bind(job)
            .fetch_one(&pool)
            .await
            .unwrap();
            assert_eq!(
                recorded, n,
                "round {round}, job {job}: every image recorded once"
            );
        }

        // The server ended every session of the vanished worker that sat in a transaction.
        let settle = Duration::from_secs(idle_timeout_secs + 2);
        if took < settle {
            tokio::time::sleep(settle - took).await;
        }
        let stuck: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = $1 \
             AND state LIKE 'idle in transaction%'",
        )
        .bind(&app_name)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(
            stuck, 0,
            "round {round}: sessions still idle in transaction"
        );
        eprintln!("round {round}: job completed {took:?} after the cut");
        vanishing.kill_hard();
    }
    pool.close().await;
}

/// The id a `worker` process logs when it starts.
fn worker_id(service: &Service) -> String {
    service
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "worker pool started")
        .and_then(|v| v["worker.id"].as_str().map(str::to_string))
        .expect("the worker logs its id")
}

/// The database's clock, in the service's unit (epoch milliseconds).
async fn db_now(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT CAST(EXTRACT(EPOCH FROM now()) * 1000 AS BIGINT)")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Every pooled connection runs under the configured limits, not only the first one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_limits_are_in_force_on_every_pooled_connection() {
    let Some(_turn) =
        common::postgres_turn("session_limits_are_in_force_on_every_pooled_connection").await
    else {
        return;
    };
    let db = TestDb::new(common::Backend::Postgres).await;
    let config = retail_pulse::db::DbConfig {
        url: db.url.clone(),
        max_connections: 6,
        session: retail_pulse::db::SessionLimits {
            idle_in_transaction: Duration::from_secs(7),
            lock_wait: Duration::from_millis(1500),
            statement: Duration::from_secs(45),
            keepalive: Duration::from_secs(12),
            operation: Duration::from_secs(20),
        },
        ..Default::default()
    };
    let handle = retail_pulse::db::Db::connect_with(&config).await.unwrap();
    // Hold every connection at once, so each one of the pool is asked.
    let mut conns = Vec::new();
    for _ in 0..config.max_connections {
        conns.push(handle.pool().acquire().await.unwrap());
    }
    for conn in conns.iter_mut() {
        let mut shown = Vec::new();
        for setting in [
            "idle_in_transaction_session_timeout",
            "lock_timeout",
            "statement_timeout",
            "tcp_keepalives_idle",
            "tcp_keepalives_interval",
            "tcp_keepalives_count",
            "tcp_user_timeout",
            "jit",
        ] {
            let value: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {setting}")))
                .fetch_one(&mut **conn)
                .await
                .unwrap();
            shown.push(value);
        }
        assert_eq!(
            shown,
            ["7s", "1500ms", "45s", "12", "4", "3", "24000", "off"],
            "settings of one pooled connection"
        );
    }
    drop(conns);
    handle.close().await;
}
