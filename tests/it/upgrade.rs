//! Upgrades on PostgreSQL: who migrates (only `migrate`, or a process started with
//! `--migrate`), what the others do meanwhile (wait, saying so), a schema from a newer release
//! (refused unless it keeps this one), and the previous release running beside this one
//! through a migration.
//!
//! The two-version test runs the previous release's binary, which `scripts/test` builds from
//! the commit named in `scripts/previous-release` and passes in `RP_PREVIOUS_BINARY`. Without
//! it the test says it is skipped — unless `RP_REQUIRE_PREVIOUS=1` (as in CI), where it fails.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common;
use crate::common::binary::run;
use crate::common::service::Service;
use crate::common::{Backend, ImageServer, STORE_A, STORE_B, TestDb, payload};

const BIN: &str = env!("CARGO_BIN_EXE_retail-pulse");

/// A `serve` started on a database without the schema waits for it, says so and what to run,
/// and serves once `retail-pulse migrate` has run; `--migrate` makes one that migrates itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_waits_for_migrate_and_says_what_to_run() {
    let name = "a_service_waits_for_migrate_and_says_what_to_run";
    let Some(_turn) = common::postgres_turn(name).await else {
        return;
    };
    let db = TestDb::empty(Backend::Postgres).await;
    let url = db.url.clone();
    // A known port: the health checks answer there before the service says it listens.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let bind = addr.clone();
    // Service::start returns once the service listens, which it may not do before migrate.
    let starting = tokio::task::spawn_blocking(move || {
        Service::start(BIN, "serve", &url, &[("RP_BIND", bind.as_str())])
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !starting.is_finished(),
        "serve started on an unmigrated database"
    );
    // Meanwhile: alive, not ready, saying why; nothing else is served.
    let client = common::client();
    let get = async |path: &str| {
        let res = client
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path} while waiting: {e}"));
        let code = res.status().as_u16();
        let body: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
        (code, body)
    };
    assert_eq!(get("/healthz").await.0, 200);
    let (code, ready) = get("/readyz").await;
    assert_eq!(code, 503, "{ready}");
    assert!(
        ready["error"]
            .as_str()
            .unwrap()
            .contains("retail-pulse migrate"),
        "{ready}"
    );
    assert_eq!(get("/api/jobs").await.0, 503);
    let tables: i64 = {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        let n = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'jobs'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        pool.close().await;
        n
    };
    assert_eq!(tables, 0, "serve migrated the database by itself");
    let migrated = run(&["migrate"], &[("DATABASE_URL", &db.url)]).await;
    assert_eq!(migrated.code, 0, "{migrated}");
    let server = tokio::time::timeout(Duration::from_secs(20), starting)
        .await
        .expect("serve did not start after migrate")
        .unwrap();
    let lines = server.lines.lock().unwrap().clone();
    let waited = lines
        .iter()
        .find(|l| l.contains("waiting for the database schema"))
        .unwrap_or_else(|| panic!("no line said why it waited: {lines:#?}"));
    assert!(waited.contains("retail-pulse migrate"), "{waited}");
    let ready = server.get_json(&client, "/readyz").await;
    assert_eq!(ready["status"], "ready", "{ready}");
    drop(server);

    let fresh = TestDb::empty(Backend::Postgres).await;
    let own = Service::start(BIN, "serve", &fresh.url, &[("RP_MIGRATE", "true")]);
    let ready = own.get_json(&client, "/readyz").await;
    assert_eq!(ready["status"], "ready", "{ready}");
}

/// One-shot commands never migrate PostgreSQL: on a database without the schema they fail at
/// once and name the command that would fix it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_commands_refuse_a_database_without_the_schema() {
    let name = "one_shot_commands_refuse_a_database_without_the_schema";
    let Some(_turn) = common::postgres_turn(name).await else {
        return;
    };
    let db = TestDb::empty(Backend::Postgres).await;
    for command in [
        &["keys", "list"][..],
        &["keys", "create", "--name", "ops"],
        &["prune", "--older-than", "30d"],
    ] {
        let out = run(command, &[("DATABASE_URL", &db.url)]).await;
        assert_ne!(out.code, 0, "{command:?}: {out}");
        assert!(
            out.stderr.contains("run `retail-pulse migrate`"),
            "{command:?}: {out}"
        );
    }
    let migrated = run(&["migrate"], &[("DATABASE_URL", &db.url)]).await;
    assert_eq!(migrated.code, 0, "{migrated}");
    let out = run(&["keys", "list"], &[("DATABASE_URL", &db.url)]).await;
    assert_eq!(out.code, 0, "{out}");
}

/// A schema a newer release migrated: run on when its migrations keep this binary's version,
/// refused (at start, and by `/readyz` of a running one) when they do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_from_a_newer_release_runs_only_if_it_keeps_this_one() {
    let name = "a_schema_from_a_newer_release_runs_only_if_it_keeps_this_one";
    let Some(_turn) = common::postgres_turn(name).await else {
        return;
    };
    let db = TestDb::new(Backend::Postgres).await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let record = async |version: i64, keeps: i64| {
        sqlx::query(
            "INSERT INTO rp_schema_migrations (version, applied_at, keeps) VALUES ($1, 0, $2)",
        )
        .bind(version)
        .bind(keeps)
        .execute(&pool)
        .await
        .unwrap();
    };
    // An expand migration of the next release: it keeps every version from 1 on.
    record(900, 1).await;
    let out = run(&["migrate"], &[("DATABASE_URL", &db.url)]).await;
    assert_eq!(
        out.code, 0,
        "a schema that keeps this release is fine: {out}"
    );
    let server = Service::start(BIN, "serve", &db.url, &[]);
    let client = common::client();
    let ready = server.get_json(&client, "/readyz").await;
    assert_eq!(ready["status"], "ready", "{ready}");
    // A contract migration: only binaries that know it.
    record(901, 901).await;
    let ready = server.get_json(&client, "/readyz").await;
    assert_eq!(ready["status"], "unready", "{ready}");
    assert!(
        ready["error"].as_str().unwrap().contains("newer release"),
        "{ready}"
    );
    drop(server);
    let out = run(
        &["serve"],
        &[("DATABASE_URL", &db.url), ("RP_BIND", "127.0.0.1:0")],
    )
    .await;
    assert_ne!(out.code, 0, "{out}");
    assert!(out.stderr.contains("version 901"), "{out}");
    let out = run(&["keys", "list"], &[("DATABASE_URL", &db.url)]).await;
    assert_ne!(out.code, 0, "{out}");
    assert!(out.stderr.contains("newer release"), "{out}");
    // `migrate` of the older binary has nothing to do and undoes nothing, but says that its
    // release cannot run here (a `migrate && serve` deploy stops at the migrate).
    let out = run(&["migrate"], &[("DATABASE_URL", &db.url)]).await;
    assert_ne!(out.code, 0, "{out}");
    assert!(out.stderr.contains("newer release"), "{out}");
    let applied: i64 = sqlx::query_scalar("SELECT MAX(version) FROM rp_schema_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(applied, 901);
    pool.close().await;
}

/// The previous release's binary, or `None` after saying the test is skipped.
fn previous_release(test: &str) -> Option<String> {
    match std::env::var("RP_PREVIOUS_BINARY") {
        Ok(path) if std::path::Path::new(&path).is_file() => Some(path),
        other => {
            let why = format!(
                "RP_PREVIOUS_BINARY is {other:?}: scripts/test builds it from scripts/previous-release"
            );
            assert!(
                std::env::var("RP_REQUIRE_PREVIOUS").as_deref() != Ok("1"),
                "{test}: required, but {why}"
            );
            eprintln!("SKIPPED upgrade::{test}: {why}");
            None
        }
    }
}

/// Every job of the database finished as `completed`, and each image has exactly one result.
async fn all_done_once(pool: &sqlx::PgPool, jobs: &[i64], images: i64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE status = 'completed' AND id = ANY($1)",
        )
        .bind(jobs)
        .fetch_one(pool)
        .await
        .unwrap();
        if done == jobs.len() as i64 {
            break;
        }
        let states: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) FROM images GROUP BY status")
                .fetch_all(pool)
                .await
                .unwrap();
        assert!(
            Instant::now() < deadline,
            "{done} of {} jobs completed; images: {states:?}",
            jobs.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (rows, measured, attempts): (i64, i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(perimeter), CAST(MAX(attempts) AS BIGINT) FROM images",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        (rows, measured),
        (images, images),
        "an image lost or unmeasured"
    );
    assert!(attempts <= 1, "an image ran twice (attempts {attempts})");
}

/// A rolling upgrade: the previous release serves and works; this release's `migrate` runs
/// under it; it keeps serving and working on the new schema, and reads what the new release
/// writes; this release's API and worker join; the previous one stops. Nothing is lost, no
/// image runs twice, every job completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_release_runs_beside_this_one_through_a_migration() {
    let name = "the_previous_release_runs_beside_this_one_through_a_migration";
    let Some(previous) = previous_release(name) else {
        return;
    };
    let Some(_turn) = common::postgres_turn(name).await else {
        return;
    };
    let db = TestDb::empty(Backend::Postgres).await;
    let images = ImageServer::start().await;
    let client = common::client();
    let job = |store: &str, n: u32, from: u32| {
        payload(&[(
            store,
            (0..n).map(|i| images.image(from + i, 3, "png")).collect(),
        )])
    };
    let slow = [("RP_PROCESSING_DELAY_MS", "20"), ("RP_WORKERS", "8")];
    // The previous release migrates its own schema at start, as it always did.
    let old = Service::start(&previous, "serve", &db.url, &slow);
    let mut jobs = vec![old.submit(&client, &job(STORE_A, 400, 1)).await];

    let migrated = run(&["migrate"], &[("DATABASE_URL", &db.url)]).await;
    assert_eq!(migrated.code, 0, "{migrated}");
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM rp_schema_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    let before: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM images WHERE status = 'succeeded'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        before < 400,
        "the first job ended before the migration: make it longer"
    );
    // The previous release still serves and works on the new schema.
    let ready = old.get_json(&client, "/readyz").await;
    assert_eq!(
        ready["status"], "ready",
        "previous release after migrate: {ready}"
    );
    jobs.push(old.submit(&client, &job(STORE_B, 50, 1000)).await);

    // This release joins: an API and a worker (they find the schema ready).
    let api = Service::start(BIN, "serve", &db.url, &[("RP_NO_WORKERS", "true")]);
    let worker = Service::start(BIN, "worker", &db.url, &slow);
    jobs.push(api.submit(&client, &job(STORE_A, 50, 2000)).await);
    // Each reads the other's jobs.
    let theirs = old
        .get_json(&client, &format!("/api/status?jobid={}", jobs[2]))
        .await;
    assert!(
        theirs["status"].is_string(),
        "previous release reading a new job: {theirs}"
    );
    let ours: Value = api
        .get_json(&client, &format!("/api/status?jobid={}", jobs[0]))
        .await;
    assert!(
        ours["status"].is_string(),
        "this release reading an old job: {ours}"
    );

    // The previous release stops mid-work, handing back what it had not started.
    let stopped = old.terminate();
    assert!(stopped.success(), "previous release exit: {stopped:?}");
    all_done_once(&pool, &jobs, 500, Duration::from_secs(90)).await;
    for id in &jobs {
        let status = api
            .get_json(&client, &format!("/api/status?jobid={id}"))
            .await;
        assert_eq!(status["status"], "completed", "job {id}: {status}");
    }
    assert!(
        versions.last().copied().unwrap_or(0) > 14,
        "migrate applied nothing new: {versions:?}"
    );
    drop(worker);
    pool.close().await;
}
