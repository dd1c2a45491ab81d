//! What operators see: health, readiness, metrics that move with the work, the jobs list,
//! request ids, and log lines that carry the ids of the image they are about.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common;
use crate::common::service::Service;
use crate::common::{
    Backend, ImageServer, STORE_A, STORE_B, TestApp, TestDb, on_both_backends, payload, test_config,
};

const WAIT: Duration = Duration::from_secs(30);

/// `name{labels} value` lines of a Prometheus text exposition.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(app: &TestApp) -> HashMap<String, f64> {
    let res = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let ct = res
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(ct.contains("text"), "{ct}");
    samples(&res.text().await.unwrap())
}

fn get(s: &HashMap<String, f64>, key: &str) -> f64 {
    s.get(key).copied().unwrap_or(0.0)
}

async fn health_and_readiness(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::start(test_config(&db)).await;
    let (code, body) = app.get("/healthz").await;
    assert_eq!((code, body["status"].as_str()), (200, Some("ok")));
    let (code, body) = app.get("/readyz").await;
    assert_eq!((code, body["status"].as_str()), (200, Some("ready")));
    let handle = retail_pulse::db::Db::connect(&db.url, 2).await.unwrap();
    sqlx::query("DROP TABLE rp_schema_migrations")
        .execute(handle.pool())
        .await
        .unwrap();
    let (code, body) = app.get("/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body["error"].is_string(), "{body}");
    handle.close().await;
    app.stop().await;
}

async fn metrics_move_as_a_job_runs(backend: Backend) {
    let db = TestDb::new(backend).await;
    let images = ImageServer::start().await;
    let app = TestApp::start(test_config(&db)).await;
    let before = scrape(&app).await;
    let job = app
        .submit_ok(&payload(&[
            (
                STORE_A,
                vec![
                    images.image(10, 10, "png"),
                    images.image(20, 10, "jpg"),
                    images.image(5, 5, "gif"),
                ],
            ),
            (STORE_B, vec![images.url("/status/404")]),
        ]))
        .await;
    app.wait_finished(job, WAIT).await;
    let after = scrape(&app).await;
    let delta = |k: &str| get(&after, k) - get(&before, k);
    assert_eq!(
        delta(r#"retail_pulse_images_finished_total{outcome="succeeded",error_kind="none"}"#),
        3.0,
        "{after:?}"
    );
    assert_eq!(
        delta(r#"retail_pulse_images_finished_total{outcome="failed",error_kind="http_status"}"#),
        1.0
    );
    assert_eq!(
        delta(
            r#"retail_pulse_http_requests_total{route="/api/submit/",method="POST",status="201"}"#
        ),
        1.0
    );
    assert!(
        delta(r#"retail_pulse_http_requests_total{route="/api/status",method="GET",status="200"}"#)
            >= 1.0
    );
    assert_eq!(
        delta("retail_pulse_download_bytes_count"),
        4.0 - 1.0,
        "three bodies downloaded"
    );
    assert_eq!(get(&after, r#"retail_pulse_jobs{state="failed"}"#), 1.0);
    assert_eq!(
        get(&after, r#"retail_pulse_images{state="succeeded"}"#),
        3.0
    );
    assert_eq!(get(&after, r#"retail_pulse_images{state="failed"}"#), 1.0);
    assert_eq!(get(&after, r#"retail_pulse_images{state="pending"}"#), 0.0);
    assert_eq!(get(&after, "retail_pulse_worker_slots"), 8.0);
    assert_eq!(get(&after, "retail_pulse_worker_slots_busy"), 0.0);
    // An invented method (a 405) does not become a label of its own.
    let odd = reqwest::Method::from_bytes(b"FROBNICATE").unwrap();
    let res = app
        .client
        .request(odd, format!("{}/api/submit/", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 405);
    let after = scrape(&app).await;
    assert!(after.keys().all(|k| !k.contains("FROBNICATE")), "{after:?}");
    // No label carries a URL or an id.
    assert!(
        after
            .keys()
            .all(|k| !k.contains("http://") && !k.contains("job_id")),
        "{after:?}"
    );
    app.stop().await;
}

async fn jobs_list_newest_first_with_filter_and_pages(backend: Backend) {
    let db = TestDb::new(backend).await;
    let images = ImageServer::start().await;
    let app = TestApp::start(test_config(&db)).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let store = if i == 2 { "NOPE" } else { STORE_A };
        let job = app
            .submit_ok(&payload(&[(store, vec![images.image(10, 10, "png")])]))
            .await;
        app.wait_finished(job, WAIT).await;
        ids.push(job);
    }
    let (code, page) = app.get("/api/jobs?limit=2").await;
    assert_eq!(code, 200, "{page}");
    let got: Vec<i64> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_i64().unwrap())
        .collect();
    assert_eq!(got, vec![ids[4], ids[3]]);
    assert_eq!(page["jobs"][0]["images"]["total"], 1);
    let next = page["next"].as_str().unwrap();
    let (_, page2) = app.get(&format!("/api/jobs?limit=2&after={next}")).await;
    let got: Vec<i64> = page2["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_i64().unwrap())
        .collect();
    assert_eq!(got, vec![ids[2], ids[1]]);
    let (_, failed) = app.get("/api/jobs?status=failed").await;
    let got: Vec<i64> = failed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_i64().unwrap())
        .collect();
    assert_eq!(got, vec![ids[2]]);
    assert_eq!(failed["next"], Value::Null);
    let (code, bad) = app.get("/api/jobs?status=sideways").await;
    assert_eq!(code, 400);
    assert!(bad["error"].as_str().unwrap().starts_with("status"));
    app.stop().await;
}

async fn every_response_carries_a_request_id(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::start(test_config(&db)).await;
    let mut seen = std::collections::HashSet::new();
    for path in ["/healthz", "/api/status?jobid=1", "/api/jobs/1", "/nowhere"] {
        let res = app
            .client
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        let id = res
            .headers()
            .get("x-request-id")
            .expect("x-request-id")
            .to_str()
            .unwrap()
            .to_string();
        assert!(seen.insert(id), "request ids are unique");
    }
    app.stop().await;
}

on_both_backends!(
    health_and_readiness,
    metrics_move_as_a_job_runs,
    jobs_list_newest_first_with_filter_and_pages,
    every_response_carries_a_request_id,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_image_is_logged_once_with_its_ids() {
    let db = TestDb::new(Backend::Sqlite).await;
    let images = ImageServer::start().await;
    let svc = Service::start(
        env!("CARGO_BIN_EXE_retail-pulse"),
        "serve",
        &db.url,
        &[("RP_PROCESSING_DELAY_MS", "0")],
    );
    let client = common::client();
    let job = svc
        .submit(
            &client,
            &payload(&[(STORE_B, vec![images.url("/status/404")])]),
        )
        .await;
    let deadline = Instant::now() + WAIT;
    let line = loop {
        let found = svc
            .lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("image failed"))
            .cloned();
        if let Some(line) = found {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "no log line for the failed image"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["error"], "HTTP 404 Not Found");
    assert_eq!(v["error.kind"], "http_status");
    let span = &v["span"];
    assert_eq!(span["job.id"], job, "{line}");
    assert_eq!(span["store.id"], STORE_B, "{line}");
    assert!(span["image.id"].is_i64(), "{line}");
    let count = svc
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| {
            l.contains("HTTP 404 Not Found")
                && l.contains("\"level\":\"INFO\"")
                && l.contains("image failed")
        })
        .count();
    assert_eq!(count, 1, "logged once");
}

/// Checks `value` against an OpenAPI 3.1 schema of `doc`: documented keys only, required keys
/// present, JSON types as declared. Enough to catch a document that drifts from the code.
fn conforms(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/components/schemas/");
        return conforms(doc, &doc["components"]["schemas"][name], value, at);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema.get(key).and_then(Value::as_array) {
            return if options.iter().any(|o| conforms(doc, o, value, at).is_ok()) {
                Ok(())
            } else {
                Err(format!("{at}: {value} matches none of {key}"))
            };
        }
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        return all.iter().try_for_each(|s| conforms(doc, s, value, at));
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return Ok(()), // an unconstrained schema
    };
    let actual = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let integer_as_number = actual == "integer" && types.contains(&"number");
    if !(types.contains(&actual) || integer_as_number) {
        return Err(format!("{at}: {actual} where the document says {types:?}"));
    }
    if let Value::Object(map) = value {
        let props = schema["properties"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for (k, v) in map {
            let Some(s) = props.get(k) else {
                return Err(format!("{at}.{k}: not in the document"));
            };
            conforms(doc, s, v, &format!("{at}.{k}"))?;
        }
        for req in schema["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !map.contains_key(req) {
                return Err(format!("{at}.{req}: required by the document, missing"));
            }
        }
    }
    if let Value::Array(items) = value {
        for (i, v) in items.iter().enumerate() {
            conforms(doc, &schema["items"], v, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_matches_real_responses() {
    let db = TestDb::new(Backend::Sqlite).await;
    let images = ImageServer::start().await;
    let app = TestApp::start(test_config(&db)).await;
    let (code, doc) = app.get("/api/openapi.json").await;
    assert_eq!(code, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));

    let ok = app
        .submit_ok(&payload(&[(STORE_A, vec![images.image(10, 10, "png")])]))
        .await;
    app.wait_finished(ok, WAIT).await;
    let bad = app
        .submit_ok(&payload(&[(STORE_B, vec![images.url("/status/404")])]))
        .await;
    app.wait_finished(bad, WAIT).await;
    let slow = app
        .submit_ok(&payload(&[(
            STORE_A,
            vec![images.url("/slow/2000/10x10.png")],
        )]))
        .await;
    let mut with_webhook = payload(&[("S99999999", vec![images.image(3, 3, "png")])]);
    with_webhook["webhook"] = serde_json::json!(images.url("/hook"));
    let hooked = app.submit_ok(&with_webhook).await;

    let cases: Vec<(&str, &str, String, Option<String>, u16)> = vec![
        (
            "/api/submit/",
            "post",
            "/api/submit/".into(),
            Some(payload(&[(STORE_A, vec![images.image(3, 3, "png")])]).to_string()),
            201,
        ),
        (
            "/api/submit/",
            "post",
            "/api/submit/".into(),
            Some("{}".into()),
            400,
        ),
        (
            "/api/status",
            "get",
            format!("/api/status?jobid={ok}"),
            None,
            200,
        ),
        (
            "/api/status",
            "get",
            format!("/api/status?jobid={bad}"),
            None,
            200,
        ),
        (
            "/api/status",
            "get",
            format!("/api/status?jobid={slow}"),
            None,
            200,
        ),
        (
            "/api/status",
            "get",
            "/api/status?jobid=nope".into(),
            None,
            400,
        ),
        ("/api/jobs", "get", "/api/jobs?limit=2".into(), None, 200),
        ("/api/jobs", "get", "/api/jobs?status=x".into(), None, 400),
        (
            "/api/jobs/{job_id}",
            "get",
            format!("/api/jobs/{bad}"),
            None,
            200,
        ),
        (
            "/api/jobs/{job_id}",
            "get",
            "/api/jobs/99999".into(),
            None,
            404,
        ),
        (
            "/api/jobs/{job_id}/images",
            "get",
            format!("/api/jobs/{bad}/images"),
            None,
            200,
        ),
        (
            "/api/jobs/{job_id}/images",
            "get",
            format!("/api/jobs/{ok}/images?limit=0"),
            None,
            400,
        ),
        (
            "/api/jobs/{job_id}/cancel",
            "post",
            format!("/api/jobs/{ok}/cancel"),
            None,
            409,
        ),
        (
            "/api/jobs/{job_id}/cancel",
            "post",
            format!("/api/jobs/{slow}/cancel"),
            None,
            200,
        ),
        (
            "/api/jobs/{job_id}/results.csv",
            "get",
            "/api/jobs/99999/results.csv".into(),
            None,
            404,
        ),
        ("/api/workers", "get", "/api/workers".into(), None, 200),
        ("/healthz", "get", "/healthz".into(), None, 200),
        ("/readyz", "get", "/readyz".into(), None, 200),
        (
            "/api/jobs/{job_id}",
            "get",
            format!("/api/jobs/{hooked}"),
            None,
            200,
        ),
        (
            "/api/webhooks/secret",
            "get",
            "/api/webhooks/secret".into(),
            None,
            200,
        ),
        (
            "/api/webhooks/secret/rotate",
            "post",
            "/api/webhooks/secret/rotate".into(),
            None,
            200,
        ),
    ];
    for (path, method, url, body, expected) in cases {
        let (code, value) = match body {
            Some(b) => app.post_raw(&url, b).await,
            None if method == "post" => app.post_raw(&url, "").await,
            None => app.get(&url).await,
        };
        assert_eq!(code, expected, "{method} {url}: {value}");
        let response = &doc["paths"][path][method]["responses"][code.to_string()];
        assert!(
            response.is_object(),
            "{method} {path} {code} is not documented"
        );
        let schema = &response["content"]["application/json"]["schema"];
        assert!(
            schema.is_object(),
            "{method} {path} {code} has no JSON schema"
        );
        if let Err(e) = conforms(&doc, schema, &value, "body") {
            panic!("{method} {url} {code}: {e}\n{value}");
        }
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_process_serves_its_metrics_when_asked() {
    let db = TestDb::new(Backend::Sqlite).await;
    let worker = Service::start(
        env!("CARGO_BIN_EXE_retail-pulse"),
        "worker",
        &db.url,
        &[("RP_METRICS_BIND", "127.0.0.1:0"), ("RP_WORKERS", "5")],
    );
    let client = common::client();
    let text = client
        .get(format!("{}/metrics", worker.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        get(&samples(&text), "retail_pulse_worker_slots"),
        5.0,
        "{text}"
    );
    let res = client
        .get(format!("{}/api/jobs", worker.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 404, "a worker serves no API");
}

/// Retention goes on past a job whose archive cannot be written (a full disk: a 4 KiB tmpfs
/// the big job's archive does not fit in), leaves that job in place, prunes the next one and
/// says, with a failing exit, how many it left. Needs root (mount); says SKIPPED elsewhere
/// unless `RP_REQUIRE_NETNS=1` (CI, which runs the root-only tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_archive_fails_is_skipped_and_the_pass_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("full");
    std::fs::create_dir(&archive).unwrap();
    let archive_arg = archive.to_str().unwrap().to_string();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4k", "tmpfs", &archive_arg])
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert!(
            std::env::var("RP_REQUIRE_NETNS").as_deref() != Ok("1"),
            "cannot mount a tmpfs (root needed)"
        );
        eprintln!(
            "SKIPPED operability::a_job_whose_archive_fails_is_skipped_and_the_pass_goes_on: needs root to mount a tmpfs"
        );
        return;
    }
    struct Unmount(String);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(archive_arg.clone());

    let db = TestDb::new(Backend::Sqlite).await;
    let images = ImageServer::start().await;
    let app = TestApp::start(test_config(&db)).await;
    let visits: Vec<(&str, Vec<String>)> = (0..3)
        .map(|v| {
            let urls = (0..1000).map(|i| images.image(1 + v * 1000 + i, 7, "png"));
            (STORE_A, urls.collect())
        })
        .collect();
    let big = app.submit_ok(&payload(&visits)).await;
    app.wait_finished(big, Duration::from_secs(120)).await;
    let small = app
        .submit_ok(&payload(&[(STORE_A, vec![images.image(3, 4, "png")])]))
        .await;
    app.wait_finished(small, Duration::from_secs(30)).await;
    app.stop().await;

    let env = [("DATABASE_URL", db.url.as_str())];
    let run = common::binary::run(
        &["prune", "--older-than", "0s", "--archive-dir", &archive_arg],
        &env,
    )
    .await;
    assert_ne!(run.code, 0, "{run}");
    assert!(run.stdout.starts_with("pruned 1 job "), "{run}");
    assert!(run.stderr.contains("1 job was left in place"), "{run}");
    assert!(
        archive.join(format!("job-{small}.csv.gz")).is_file(),
        "{run}"
    );
    assert!(!archive.join(format!("job-{big}.csv.gz")).exists());
    let handle = retail_pulse::db::Db::connect(&db.url, 1).await.unwrap();
    let left: Vec<i64> = sqlx::query_scalar("SELECT id FROM jobs ORDER BY id")
        .fetch_all(handle.pool())
        .await
        .unwrap();
    assert_eq!(left, [big], "only the job whose archive failed stays");
    handle.close().await;
}

/// The start-time connection check on PostgreSQL: a process whose pool cannot fit beside the
/// connections already open warns at start, naming the limit and what to change; one that fits
/// says how many connections it takes, without the warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_too_big_for_max_connections_is_warned_about_at_start() {
    const TEST: &str = "operability::a_pool_too_big_for_max_connections_is_warned_about_at_start";
    let Some(_turn) = common::postgres_turn(TEST).await else {
        return;
    };
    let db = TestDb::new(Backend::Postgres).await;
    async fn line_with(svc: &Service, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(line) = svc
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return line.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no log line with {needle:?}: {:?}",
                svc.lines.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let bin = env!("CARGO_BIN_EXE_retail-pulse");
    let big = Service::start(
        bin,
        "worker",
        &db.url,
        &[("RP_DB_MAX_CONNECTIONS", "100000")],
    );
    let warning = line_with(&big, "it will be refused connections under load").await;
    assert!(warning.contains("\"level\":\"WARN\""), "{warning}");
    assert!(warning.contains("max_connections"), "{warning}");
    assert!(
        warning.contains("100001"),
        "the pool and its LISTEN connection: {warning}"
    );
    big.terminate();

    let small = Service::start(bin, "worker", &db.url, &[("RP_DB_MAX_CONNECTIONS", "4")]);
    let fits = line_with(&small, "database connections: 5 for this process").await;
    assert!(fits.contains("\"level\":\"INFO\""), "{fits}");
    assert!(
        !small
            .lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("refused connections")),
        "no warning when the pool fits"
    );
    small.terminate();
}

/// An archive directory that is a file is refused before anything is pruned: by `prune`, and
/// by a service started with retention, each naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_dir_that_is_a_file_is_refused_at_once() {
    let db = TestDb::new(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("afile");
    std::fs::write(&file, b"").unwrap();
    let file = file.to_str().unwrap();
    let env = [("DATABASE_URL", db.url.as_str())];
    let run = common::binary::run(
        &["prune", "--older-than", "0s", "--archive-dir", file],
        &env,
    )
    .await;
    assert_ne!(run.code, 0, "{run}");
    assert!(
        run.stderr.contains("--archive-dir") && run.stderr.contains("is not a directory"),
        "{run}"
    );
    let run = common::binary::run(
        &[
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--retention",
            "1d",
            "--archive-dir",
            file,
        ],
        &env,
    )
    .await;
    assert_ne!(run.code, 0, "{run}");
    assert!(
        run.stderr.contains("archive-dir") && run.stderr.contains("is not a directory"),
        "{run}"
    );
}
