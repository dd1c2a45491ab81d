//! What operators see: health, readiness, metrics that move with the work, the jobs list,
//! request ids, and log lines that carry the ids of the image they are about.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::service::Service;
use common::{Backend, ImageServer, STORE_A, STORE_B, TestApp, TestDb, payload, test_config};
use serde_json::Value;

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
    let body = payload(&[(STORE_B, vec![images.url("/status/404")])]).to_string();
    let res = client
        .post(format!("{}/api/submit/", svc.base))
        .body(body)
        .send()
        .await
        .unwrap();
    let job = serde_json::from_slice::<Value>(&res.bytes().await.unwrap()).unwrap()["job_id"]
        .as_i64()
        .unwrap();
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
