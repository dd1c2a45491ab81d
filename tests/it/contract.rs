//! The HTTP contract (../shared/CONTRACT.md), end to end against the real app, on SQLite and
//! on PostgreSQL: every submit and status case, per-image results, and the extended API.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{
    Backend, ImageServer, STORE_A, STORE_B, STORE_C, TestApp, TestDb, on_both_backends, payload,
    test_config,
};

const WAIT: Duration = Duration::from_secs(30);

async fn setup(backend: Backend) -> (TestDb, TestApp, ImageServer) {
    let db = TestDb::new(backend).await;
    let images = ImageServer::start().await;
    let app = TestApp::start(test_config(&db)).await;
    (db, app, images)
}

async fn submit_answers_201_with_an_integer_job_id(backend: Backend) {
    let (_db, app, images) = setup(backend).await;
    let body = payload(&[(STORE_A, vec![images.image(10, 10, "png")])]);
    for path in ["/api/submit/", "/api/submit"] {
        let (code, answer) = app.post_raw(path, body.to_string()).await;
        assert_eq!(code, 201, "{path}: {answer}");
        let object = answer.as_object().unwrap();
        assert_eq!(object.len(), 1, "only job_id: {answer}");
        assert!(answer["job_id"].is_i64(), "{answer}");
    }
    // Byte for byte: {"job_id":N}
    let res = app
        .client
        .post(format!("{}/api/submit/", app.base))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let text = res.text().await.unwrap();
    assert!(
        text.starts_with("{\"job_id\":") && text.ends_with('}'),
        "{text}"
    );
    app.stop().await;
}

async fn submit_accepts_any_content_type(backend: Backend) {
    let (_db, app, images) = setup(backend).await;
    let body = payload(&[(STORE_A, vec![images.image(10, 10, "png")])]).to_string();
    for ct in [
        "application/x-www-form-urlencoded",
        "text/plain",
        "application/json",
    ] {
        let res = app
            .client
            .post(format!("{}/api/submit/", app.base))
            .header("content-type", ct)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 201, "{ct}");
    }
    app.stop().await;
}

async fn each_bad_payload_is_a_400_naming_the_field(backend: Backend) {
    let (_db, app, _images) = setup(backend).await;
    let ok_visit = json!({"store_id": STORE_A, "image_url": ["http://x/a.jpg"], "visit_time": "t"});
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "body"),
        ("[1,2]".into(), "body"),
        ("\"text\"".into(), "body"),
        (json!({"visits": [ok_visit]}).to_string(), "count"),
        (json!({"count": "1", "visits": [ok_visit]}).to_string(), "count"),
        (json!({"count": 1}).to_string(), "visits"),
        (json!({"count": 1, "visits": "x"}).to_string(), "visits"),
        (json!({"count": 0, "visits": []}).to_string(), "visits"),
        (json!({"count": 2, "visits": [ok_visit]}).to_string(), "count"),
        (json!({"count": 1, "visits": [{"image_url": ["u"], "visit_time": "t"}]}).to_string(), "visits[0].store_id"),
        (json!({"count": 1, "visits": [{"store_id": "", "image_url": ["u"], "visit_time": "t"}]}).to_string(), "visits[0].store_id"),
        (json!({"count": 1, "visits": [{"store_id": 5, "image_url": ["u"], "visit_time": "t"}]}).to_string(), "visits[0].store_id"),
        (json!({"count": 1, "visits": [{"store_id": "S", "visit_time": "t"}]}).to_string(), "visits[0].image_url"),
        (json!({"count": 1, "visits": [{"store_id": "S", "image_url": [], "visit_time": "t"}]}).to_string(), "visits[0].image_url"),
        (json!({"count": 1, "visits": [{"store_id": "S", "image_url": "u", "visit_time": "t"}]}).to_string(), "visits[0].image_url"),
        (json!({"count": 1, "visits": [{"store_id": "S", "image_url": [""], "visit_time": "t"}]}).to_string(), "visits[0].image_url[0]"),
        (json!({"count": 1, "visits": [{"store_id": "S", "image_url": ["u"]}]}).to_string(), "visits[0].visit_time"),
        (json!({"count": 1, "visits": [{"store_id": "S", "image_url": ["u"], "visit_time": ""}]}).to_string(), "visits[0].visit_time"),
        (json!({"count": 2, "visits": [ok_visit, {"store_id": "S", "image_url": ["u", 3], "visit_time": "t"}]}).to_string(), "visits[1].image_url[1]"),
    ];
    for (body, field) in cases {
        let (code, answer) = app.post_raw("/api/submit/", body.clone()).await;
        assert_eq!(code, 400, "{body} → {answer}");
        let message = answer["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message for {body}: {answer}"));
        assert!(
            message.starts_with(field),
            "{body}: `{message}` should name {field}"
        );
    }
    app.stop().await;
}

async fn oversized_body_is_a_413_with_a_json_error(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = test_config(&db);
    config.api.max_body_bytes = 1024;
    let app = TestApp::start(config).await;
    let (code, answer) = app.post_raw("/api/submit/", vec![b' '; 4096]).await;
    assert_eq!(code, 413);
    assert!(
        answer["error"].as_str().unwrap().contains("body"),
        "{answer}"
    );
    app.stop().await;
}

async fn status_is_400_with_an_empty_object_for_bad_job_ids(backend: Backend) {
    let (_db, app, _images) = setup(backend).await;
    for query in [
        "",
        "?jobid=",
        "?jobid=abc",
        "?jobid=999999",
        "?job=1",
        "?jobid=-1",
        "?jobid=1.5",
    ] {
        let res = app
            .client
            .get(format!("{}/api/status{query}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 400, "{query}");
        assert_eq!(res.text().await.unwrap(), "{}", "{query}");
    }
    app.stop().await;
}

async fn completed_job_reports_every_perimeter(backend: Backend) {
    let _db = TestDb::new(backend).await;
    let images = ImageServer::start().await;
    let mut config = test_config(&_db);
    // The test server encodes the 4000×3000 JPEG on request: seconds in a debug build on a
    // loaded machine, more than the 5 s download timeout of the other tests.
    config.fetch.timeout = Duration::from_secs(60);
    let app = TestApp::start(config).await;
    let sizes: Vec<(u32, u32, &str)> = vec![
        (550, 368, "png"),
        (640, 480, "jpg"),
        (1, 1, "gif"),
        (300, 200, "bmp"),
        (123, 77, "webp"),
        (64, 256, "tiff"),
        (4000, 3000, "jpg"),
    ];
    let urls: Vec<String> = sizes
        .iter()
        .map(|(w, h, f)| images.image(*w, *h, f))
        .collect();
    let job = app
        .submit_ok(&payload(&[
            (STORE_A, urls[..4].to_vec()),
            (STORE_B, urls[4..].to_vec()),
        ]))
        .await;
    let status = app.wait_finished(job, WAIT).await;
    assert_eq!(
        status,
        json!({"status": "completed", "job_id": job.to_string()})
    );
    // A repeated jobid: the first one counts, on every endpoint alike.
    let (code, first) = app
        .get(&format!("/api/status?jobid={job}&jobid=999999"))
        .await;
    assert_eq!(
        (code, first["job_id"].as_str()),
        (200, Some(job.to_string().as_str()))
    );
    let (code, _) = app
        .get(&format!("/api/status?jobid=999999&jobid={job}"))
        .await;
    assert_eq!(code, 400);
    let results = app.all_images(job, 3).await;
    assert_eq!(results.len(), sizes.len());
    for (result, (w, h, f)) in results.iter().zip(&sizes) {
        assert_eq!(result["status"], "succeeded", "{f}: {result}");
        assert_eq!(result["width"], json!(w), "{f}");
        assert_eq!(result["height"], json!(h), "{f}");
        assert_eq!(result["perimeter"], json!(2 * (w + h)), "{f}");
        assert_eq!(result["error"], Value::Null);
    }
    assert_eq!(results[0]["store_id"], STORE_A);
    assert_eq!(results[4]["store_id"], STORE_B);
    assert_eq!(results[0]["visit_time"], "2026-11-28T10:00:00Z");
    app.stop().await;
}

async fn unknown_store_and_missing_image_fail_their_stores_in_order(backend: Backend) {
    let (_db, app, images) = setup(backend).await;
    let before = images.requests();
    let body = payload(&[
        (STORE_A, vec![images.image(20, 10, "png")]),
        (
            "S_NOT_A_STORE",
            vec![images.image(20, 10, "png"), images.image(30, 10, "png")],
        ),
        (
            STORE_B,
            vec![
                images.image(20, 10, "png"),
                images.url("/status/404"),
                images.url("/html"),
            ],
        ),
        (STORE_C, vec![images.image(20, 10, "png")]),
    ]);
    let job = app.submit_ok(&body).await;
    let status = app.wait_finished(job, WAIT).await;
    assert_eq!(status["status"], "failed", "{status}");
    assert_eq!(status["job_id"], job.to_string());
    let errors = status["error"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{status}");
    assert_eq!(errors[0]["store_id"], "S_NOT_A_STORE");
    assert!(
        errors[0]["error"]
            .as_str()
            .unwrap()
            .contains("not in the store master"),
        "{status}"
    );
    assert_eq!(errors[1]["store_id"], STORE_B);
    let b = errors[1]["error"].as_str().unwrap();
    assert!(b.starts_with("2 of 3 images failed; first: "), "{b}");
    assert!(b.ends_with("/status/404: HTTP 404 Not Found"), "{b}");
    // The unknown store's two images were never downloaded: 1 + 3 + 1 requests.
    assert_eq!(images.requests() - before, 5);
    let results = app.all_images(job, 100).await;
    assert_eq!(results[5]["error"], "not an image: looks like HTML");
    assert_eq!(results[1]["status"], "failed");
    assert_eq!(results[1]["width"], Value::Null);
    app.stop().await;
}

async fn a_job_of_only_unknown_stores_fails_at_once(backend: Backend) {
    let (_db, app, images) = setup(backend).await;
    let job = app
        .submit_ok(&payload(&[("NOPE", vec![images.image(5, 5, "png")])]))
        .await;
    let status = app.status(job).await;
    assert_eq!(
        status["status"], "failed",
        "finished in the submit transaction: {status}"
    );
    app.stop().await;
}

async fn job_is_ongoing_until_its_last_image_finishes(backend: Backend) {
    let (_db, app, images) = setup(backend).await;
    let slow = images.url("/slow/1500/10x10.png");
    let job = app
        .submit_ok(&payload(&[(
            STORE_A,
            vec![images.image(10, 10, "png"), slow],
        )]))
        .await;
    let early = app.status(job).await;
    assert_eq!(
        early,
        json!({"status": "ongoing", "job_id": job.to_string()})
    );
    let (code, detail) = app.get(&format!("/api/jobs/{job}")).await;
    assert_eq!(code, 200);
    assert_eq!(detail["status"], "ongoing");
    assert_eq!(detail["finished_at"], Value::Null);
    assert_eq!(detail["images"]["total"], 2);
    let done = app.wait_finished(job, WAIT).await;
    assert_eq!(done["status"], "completed");
    let (_, detail) = app.get(&format!("/api/jobs/{job}")).await;
    assert_eq!(
        detail["images"],
        json!({"total": 2, "succeeded": 2, "failed": 0, "pending": 0})
    );
    assert!(detail["finished_at"].is_string());
    assert_eq!(detail["error"], json!([]));
    app.stop().await;
}

async fn extended_api_answers_404_and_400_with_json(backend: Backend) {
    let (_db, app, images) = setup(backend).await;
    for path in [
        "/api/jobs/%FF%FE",
        "/api/jobs/%FF/images",
        "/api/jobs/424242",
        "/api/jobs/abc",
        "/api/jobs/424242/images",
        "/api/nothing",
    ] {
        let (code, body) = app.get(path).await;
        assert_eq!(code, 404, "{path}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    // A known path with the wrong method: 405 with a JSON error and the Allow header.
    let res = app
        .client
        .get(format!("{}/api/submit/", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 405);
    assert_eq!(
        res.headers().get("allow").map(|v| v.to_str().unwrap()),
        Some("POST")
    );
    let body: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert!(body["error"].as_str().unwrap().contains("GET"), "{body}");
    // A repeated query parameter: the first value counts, as for /api/status's jobid.
    let (code, body) = app.get("/api/jobs?status=sideways&status=failed").await;
    assert_eq!(code, 400, "{body}");
    let job = app
        .submit_ok(&payload(&[(STORE_A, vec![images.image(10, 10, "png")])]))
        .await;
    for query in [
        "limit=0",
        "limit=abc",
        "limit=100000",
        "after=xyz",
        "after=-4",
    ] {
        let (code, body) = app.get(&format!("/api/jobs/{job}/images?{query}")).await;
        assert_eq!(code, 400, "{query}");
        let field = query.split('=').next().unwrap();
        assert!(
            body["error"].as_str().unwrap().starts_with(field),
            "{query}: {body}"
        );
    }
    app.stop().await;
}

async fn results_paginate_in_submission_order(backend: Backend) {
    let (_db, app, images) = setup(backend).await;
    let urls: Vec<String> = (1..=25).map(|i| images.image(i, 1, "png")).collect();
    let job = app
        .submit_ok(&payload(&[
            (STORE_A, urls[..10].to_vec()),
            (STORE_B, urls[10..].to_vec()),
        ]))
        .await;
    app.wait_finished(job, WAIT).await;
    let results = app.all_images(job, 7).await;
    assert_eq!(results.len(), 25);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["width"], json!(i + 1), "position {i}");
    }
    app.stop().await;
}

async fn large_job_is_accepted_quickly_and_status_stays_cheap(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = test_config(&db);
    config.worker.concurrency = 1;
    config.worker.processing_delay = retail_pulse::worker::DelayRange {
        min_ms: 1000,
        max_ms: 1000,
    };
    let app = TestApp::start(config).await;
    // 10 visits of 1,000 images (the default per-visit limit).
    let urls: Vec<String> = (0..10_000)
        .map(|i| format!("http://127.0.0.1:9/{i}.png"))
        .collect();
    let visits: Vec<(&str, Vec<String>)> =
        urls.chunks(1000).map(|c| (STORE_A, c.to_vec())).collect();
    let body = payload(&visits);
    let started = std::time::Instant::now();
    let job = app.submit_ok(&body).await;
    let took = started.elapsed();
    // Generous for a loaded CI machine and a debug build; the benchmark measures the real figure.
    assert!(
        took < Duration::from_secs(5),
        "10,000-image submit took {took:?}"
    );
    let (_, detail) = app.get(&format!("/api/jobs/{job}")).await;
    assert_eq!(detail["images"]["total"], 10_000);
    app.stop().await;
}

async fn cancel_stops_unfinished_images_and_fails_the_job(backend: Backend) {
    let db = TestDb::new(backend).await;
    let images = ImageServer::start().await;
    let mut config = test_config(&db);
    config.worker.concurrency = 2;
    let app = TestApp::start(config).await;
    let slow: Vec<String> = (0..10)
        .map(|i| images.url(&format!("/slow/1500/{}x10.png", i + 1)))
        .collect();
    // Store A's first image fails for real before the cancel; the rest are cancelled.
    let mut store_a = vec![images.url("/status/404")];
    store_a.extend_from_slice(&slow[..4]);
    let job = app
        .submit_ok(&payload(&[
            (STORE_A, store_a),
            (STORE_B, slow[5..].to_vec()),
        ]))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, body) = app.post_raw(&format!("/api/jobs/{job}/cancel"), "").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "cancelled");
    assert_eq!(body["images"]["pending"], 0);
    let status = app.status(job).await;
    assert_eq!(status["status"], "failed");
    let errors = status["error"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{status}");
    assert_eq!(errors[0]["store_id"], STORE_A);
    let a = errors[0]["error"].as_str().unwrap();
    assert!(a.starts_with("1 of 5 images failed; first: "), "{a}");
    assert!(
        a.contains("HTTP 404 Not Found; 4 more not processed: job cancelled"),
        "{a}"
    );
    assert_eq!(
        errors[1]["error"],
        "job cancelled: 5 of 5 images not processed"
    );
    // The two in flight finish on the host, but nothing else is fetched and nothing recorded.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(
        images.requests() <= 3,
        "{} images fetched after a cancel",
        images.requests()
    );
    let results = app.all_images(job, 100).await;
    assert!(
        results
            .iter()
            .all(|r| r["status"] == "failed" && r["perimeter"].is_null()),
        "{results:?}"
    );
    let (code, body) = app.post_raw(&format!("/api/jobs/{job}/cancel"), "").await;
    assert_eq!(code, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("already finished"));
    let (code, _) = app.post_raw("/api/jobs/987654/cancel", "").await;
    assert_eq!(code, 404);
    app.stop().await;
}

async fn idempotency_key_returns_the_original_job(backend: Backend) {
    let (_db, app, images) = setup(backend).await;
    let body = payload(&[(STORE_A, vec![images.image(10, 10, "png")])]);
    let post = |key: &'static str, body: String| {
        let req = app
            .client
            .post(format!("{}/api/submit/", app.base))
            .header("Idempotency-Key", key)
            .body(body);
        async move {
            let res = req.send().await.unwrap();
            let code = res.status().as_u16();
            (
                code,
                serde_json::from_slice::<Value>(&res.bytes().await.unwrap()).unwrap(),
            )
        }
    };
    let (code, first) = post("order-1", body.to_string()).await;
    assert_eq!(code, 201);
    // Same JSON, other whitespace: the same job.
    let (code, again) = post("order-1", serde_json::to_string_pretty(&body).unwrap()).await;
    assert_eq!((code, &again), (201, &first));
    // Same key, another body: refused.
    let other = payload(&[(STORE_B, vec![images.image(10, 10, "png")])]);
    let (code, refused) = post("order-1", other.to_string()).await;
    assert_eq!(code, 422, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .starts_with("Idempotency-Key")
    );
    // Concurrent first uses of one key make one job.
    let racers: Vec<_> = (0..8).map(|_| post("order-2", body.to_string())).collect();
    let answers = futures_util::future::join_all(racers).await;
    let ids: std::collections::HashSet<i64> = answers
        .iter()
        .map(|(code, v)| {
            assert_eq!(*code, 201, "{v}");
            v["job_id"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    // A key given twice, or with a control character, is refused rather than guessed at.
    let res = app
        .client
        .post(format!("{}/api/submit/", app.base))
        .header("Idempotency-Key", "order-3")
        .header("Idempotency-Key", "order-4")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let (code, refused) = post("order\t5", body.to_string()).await;
    assert_eq!(code, 400, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .starts_with("Idempotency-Key")
    );
    // Without a key, every submit is a new job.
    let a = app.submit_ok(&body).await;
    let b = app.submit_ok(&body).await;
    assert_ne!(a, b);
    app.stop().await;
}

on_both_backends!(
    cancel_stops_unfinished_images_and_fails_the_job,
    idempotency_key_returns_the_original_job,
    submit_answers_201_with_an_integer_job_id,
    submit_accepts_any_content_type,
    each_bad_payload_is_a_400_naming_the_field,
    oversized_body_is_a_413_with_a_json_error,
    status_is_400_with_an_empty_object_for_bad_job_ids,
    completed_job_reports_every_perimeter,
    unknown_store_and_missing_image_fail_their_stores_in_order,
    a_job_of_only_unknown_stores_fails_at_once,
    job_is_ongoing_until_its_last_image_finishes,
    extended_api_answers_404_and_400_with_json,
    results_paginate_in_submission_order,
    large_job_is_accepted_quickly_and_status_stays_cheap,
);

/// The real store master (4,944 stores, names with quoted commas), read from the shared folder
/// beside the repository. Not copied into the repository; skipped, loudly, where it is absent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_store_master_imports_every_store() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/StoreMasterAssignment.csv");
    if !path.exists() {
        eprintln!(
            "SKIPPED the_real_store_master_imports_every_store: {} not found",
            path.display()
        );
        return;
    }
    let stores = retail_pulse::stores::load_file(&path).unwrap();
    assert_eq!(stores.len(), 4944);
    assert!(
        stores.iter().any(|s| s.store_name.contains(',')),
        "quoted names keep their commas"
    );
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = test_config(&db);
    config.store_master = Some(path);
    let images = ImageServer::start().await;
    let app = TestApp::start(config).await;
    let job = app
        .submit_ok(&payload(&[("RP00001", vec![images.image(4, 4, "png")])]))
        .await;
    assert_eq!(app.wait_finished(job, WAIT).await["status"], "completed");
    app.stop().await;
}
