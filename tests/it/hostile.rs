//! Hostile input: malformed bodies, URLs that point inward, hosts that misbehave, and
//! arbitrary bytes where JSON or an image is expected. Nothing may answer 500, panic or hang.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use retail_pulse::domain::{Limits, Submission};
use retail_pulse::fetch::guard::AllowList;
use serde_json::{Value, json};

use crate::common::images::raw_server;
use crate::common::{
    Backend, ImageServer, STORE_A, TestApp, TestDb, on_both_backends, payload, test_config,
};

const WAIT: Duration = Duration::from_secs(30);

fn visit(urls: Value) -> Value {
    json!({"store_id": STORE_A, "image_url": urls, "visit_time": "t"})
}

async fn malformed_bodies_get_a_clear_4xx(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = test_config(&db);
    config.api.limits.max_visits = 3;
    config.api.limits.max_images_per_visit = 4;
    config.api.limits.max_images_per_job = 6;
    config.api.limits.max_url_len = 100;
    config.api.limits.max_store_id_len = 10;
    let app = TestApp::start(config).await;
    let long_url = format!("http://x/{}", "a".repeat(200));
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (br#"{"count": 1, "count": 1, "visits": []}"#.to_vec(), 400, "body"),
        (br#"{"count": 1, "visits": [{"store_id": "A", "store_id": "B", "image_url": ["u"], "visit_time": "t"}]}"#.to_vec(), 400, "body"),
        (deep.into_bytes(), 400, "body"),
        (b"{\"count\": 1, \"visits\": [{\"store_id\": \"\xff\xfe\", \"image_url\": [\"u\"], \"visit_time\": \"t\"}]}".to_vec(), 400, "body"),
        (b"".to_vec(), 400, "body"),
        (b"null".to_vec(), 400, "body"),
        (br#"{"count": -1, "visits": [1]}"#.to_vec(), 400, "count"),
        (br#"{"count": 1.5, "visits": [1]}"#.to_vec(), 400, "count"),
        (br#"{"count": 1e400, "visits": [1]}"#.to_vec(), 400, "body"),
        (br#"{"count": 99999999999999999999999, "visits": [1]}"#.to_vec(), 400, "count"),
        (br#"{"count": 18446744073709551615, "visits": [1]}"#.to_vec(), 400, "count"),
        (br#"{"count": true, "visits": [1]}"#.to_vec(), 400, "count"),
        (json!({"count": 1, "visits": [visit(json!([long_url]))]}).to_string().into_bytes(), 400, "visits[0].image_url[0]"),
        (json!({"count": 1, "visits": [{"store_id": "S".repeat(11), "image_url": ["u"], "visit_time": "t"}]}).to_string().into_bytes(), 400, "visits[0].store_id"),
        (json!({"count": 4, "visits": [visit(json!(["u"])), visit(json!(["u"])), visit(json!(["u"])), visit(json!(["u"]))]}).to_string().into_bytes(), 413, "visits"),
        (json!({"count": 1, "visits": [visit(json!(["u", "u", "u", "u", "u"]))]}).to_string().into_bytes(), 413, "visits[0].image_url"),
        (json!({"count": 2, "visits": [visit(json!(["u", "u", "u", "u"])), visit(json!(["u", "u", "u"]))]}).to_string().into_bytes(), 413, "visits"),
        (json!({"count": 1, "visits": [visit(json!([["nested"]]))]}).to_string().into_bytes(), 400, "visits[0].image_url[0]"),
        (json!({"count": 1, "visits": [visit(json!([null]))]}).to_string().into_bytes(), 400, "visits[0].image_url[0]"),
    ];
    for (body, code, field) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(120)]).into_owned();
        let (got, answer) = app.post_raw("/api/submit/", body).await;
        assert_eq!(got, code, "{shown} → {answer}");
        let message = answer["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{shown}: no error in {answer}"));
        assert!(
            message.starts_with(field),
            "{shown}: `{message}` should name {field}"
        );
    }
    // Unknown fields are accepted and ignored.
    let extra = json!({"count": 1, "visits": [{"store_id": STORE_A, "image_url": ["http://x/a.png"], "visit_time": "t", "gps": [1, 2]}], "client": "v2"});
    let (got, answer) = app.submit(&extra).await;
    assert_eq!(got, 201, "{answer}");
    app.stop().await;
}

/// Every inward-pointing spelling of the local image server is refused, and the server sees
/// no request at all. (Private ranges other than loopback are covered by the guard's unit
/// tests: no traffic may be sent towards them from here.)
async fn urls_pointing_inward_are_refused_without_a_request(backend: Backend) {
    let db = TestDb::new(backend).await;
    let images = ImageServer::start().await;
    let port = images.addr.port();
    let mut config = test_config(&db);
    config.fetch.allow_private_networks = false;
    config.worker.max_attempts = 1;
    let app = TestApp::start(config).await;
    let urls: Vec<String> = [
        "127.0.0.1",
        "localhost",
        "2130706433",
        "0x7f000001",
        "127.1",
        "0177.0.0.1",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "0.0.0.0",
    ]
    .iter()
    .map(|host| format!("http://{host}:{port}/img/10x10.png"))
    .chain([
        "file:///etc/passwd".to_string(),
        "ftp://127.0.0.1/x.png".to_string(),
        "gopher://localhost:70/".to_string(),
    ])
    .collect();
    let job = app.submit_ok(&payload(&[(STORE_A, urls.clone())])).await;
    let status = app.wait_finished(job, WAIT).await;
    assert_eq!(status["status"], "failed");
    let results = app.all_images(job, 100).await;
    for (url, r) in urls.iter().zip(&results) {
        assert_eq!(r["status"], "failed", "{url}: {r}");
        let error = r["error"].as_str().unwrap();
        let expected = if url.starts_with("http://") {
            "refused: "
        } else {
            "invalid URL: "
        };
        assert!(error.starts_with(expected), "{url}: {error}");
    }
    assert_eq!(
        images.requests(),
        0,
        "the guarded server must see no request"
    );
    app.stop().await;
}

async fn allow_list_opens_one_host_and_redirects_are_checked_again(backend: Backend) {
    let db = TestDb::new(backend).await;
    let images = ImageServer::start().await;
    let port = images.addr.port();
    let mut config = test_config(&db);
    config.fetch.allow_private_networks = false;
    config.fetch.allow_hosts = AllowList::parse("127.0.0.1").unwrap();
    config.worker.max_attempts = 1;
    let app = TestApp::start(config).await;
    let elsewhere = format!("http://127.0.0.2:{port}/img/10x10.png");
    let urls = vec![
        images.image(30, 20, "png"),
        images.url(&format!("/redirect-to?url={elsewhere}")),
        format!("http://[::1]:{port}/img/10x10.png"),
    ];
    let job = app.submit_ok(&payload(&[(STORE_A, urls)])).await;
    app.wait_finished(job, WAIT).await;
    let results = app.all_images(job, 10).await;
    assert_eq!(
        results[0]["perimeter"], 100,
        "the allow-listed address is reachable: {}",
        results[0]
    );
    let redirected = results[1]["error"].as_str().unwrap();
    assert!(
        redirected.starts_with("refused: address 127.0.0.2"),
        "{redirected}"
    );
    assert!(
        results[2]["error"]
            .as_str()
            .unwrap()
            .starts_with("refused: "),
        "{}",
        results[2]
    );
    assert_eq!(
        images.requests(),
        2,
        "the image and the redirect, nothing more"
    );
    app.stop().await;
}

/// One slot, no retries: each bad host must fail with its own message within the limits, and
/// free the slot for the good image queued behind them.
async fn misbehaving_hosts_fail_in_time_and_free_the_slot(backend: Backend) {
    let db = TestDb::new(backend).await;
    let images = ImageServer::start().await;
    let hang = raw_server("hang").await;
    let reset = raw_server("reset").await;
    let mut config = test_config(&db);
    config.worker.concurrency = 1;
    config.worker.max_attempts = 1;
    config.fetch.timeout = Duration::from_millis(1500);
    config.fetch.stall_timeout = Duration::from_millis(500);
    config.fetch.max_bytes = 2 * 1024 * 1024;
    let app = TestApp::start(config).await;
    let cases: Vec<(String, &str)> = vec![
        (format!("http://{hang}/x.png"), "stalled: no data for 0.5 s"),
        (
            images.url("/drip"),
            "too slow: under 1024 bytes/s for 0.5 s",
        ),
        (images.url("/endless"), "larger than 2097152 bytes"),
        (
            images.url("/corrupt-jpeg"),
            "not an image: no readable JPEG size in the first 1048576 bytes",
        ),
        (images.url("/loop"), "redirect loop at "),
        (images.url("/redirect/9"), "more than 5 redirects"),
        (format!("http://{reset}/x.png"), "connection failed: "),
        (images.url("/empty"), "not an image: empty body"),
        (images.url("/truncated"), "connection failed: "),
        (images.url("/status/403"), "HTTP 403 Forbidden"),
        (images.url("/html"), "not an image: looks like HTML"),
        (images.url("/redirect/2"), ""),
    ];
    let urls: Vec<String> = cases.iter().map(|c| c.0.clone()).collect();
    let started = Instant::now();
    let job = app.submit_ok(&payload(&[(STORE_A, urls)])).await;
    app.wait_finished(job, WAIT).await;
    let took = started.elapsed();
    let results = app.all_images(job, 100).await;
    for ((url, expected), r) in cases.iter().zip(&results) {
        if expected.is_empty() {
            assert_eq!(r["perimeter"], 40, "{url}: {r}");
        } else {
            let error = r["error"].as_str().unwrap_or_else(|| panic!("{url}: {r}"));
            assert!(
                error.starts_with(expected),
                "{url}: `{error}` should start with `{expected}`"
            );
        }
    }
    // hang 0.5 + drip 1.5 + the rest quick, one at a time.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    app.stop().await;
}

/// A host that trickles (a byte every 200 ms) keeps sending, so the stall timeout never
/// fires; the minimum speed ends each attempt after one window, and the retries with it.
async fn a_trickling_host_fails_as_too_slow_retries_included(backend: Backend) {
    let db = TestDb::new(backend).await;
    let images = ImageServer::start().await;
    let mut config = test_config(&db);
    config.worker.max_attempts = 3;
    config.fetch.timeout = Duration::from_secs(30);
    config.fetch.stall_timeout = Duration::from_secs(1);
    let app = TestApp::start(config).await;
    let started = Instant::now();
    let job = app
        .submit_ok(&payload(&[(STORE_A, vec![images.url("/drip")])]))
        .await;
    app.wait_finished(job, WAIT).await;
    let took = started.elapsed();
    let results = app.all_images(job, 10).await;
    let error = results[0]["error"].as_str().unwrap_or_default();
    assert_eq!(
        error, "too slow: under 1024 bytes/s for 1 s (after 3 attempts)",
        "{results:?}"
    );
    // Three windows of 1 s and two short backoffs, not three total timeouts of 30 s.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    app.stop().await;
}

async fn internal_errors_show_only_a_request_id(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::start(test_config(&db)).await;
    // Break the schema under the running app.
    let handle = retail_pulse::db::Db::connect(&db.url, 2).await.unwrap();
    sqlx::query("DROP TABLE images")
        .execute(handle.pool())
        .await
        .unwrap();
    let res = app
        .client
        .get(format!("{}/api/jobs/1/images", app.base))
        .send()
        .await
        .unwrap();
    let res = if res.status().as_u16() == 404 {
        // No job 1: make one first (its images insert fails → 500 from submit).
        app.client
            .post(format!("{}/api/submit/", app.base))
            .body(payload(&[(STORE_A, vec!["http://x/a.png".into()])]).to_string())
            .send()
            .await
            .unwrap()
    } else {
        res
    };
    assert_eq!(res.status().as_u16(), 500);
    let id = res
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(
        body,
        json!({"error": format!("internal error; request id {id}")})
    );
    handle.close().await;
    app.stop().await;
}

/// A declared body over the limit is refused from its headers: the client is not invited to
/// send 100 GB first (`Expect: 100-continue` gets the 413, not a 100).
async fn an_oversized_declared_body_is_refused_before_it_is_sent(backend: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::new(backend).await;
    let app = TestApp::start(test_config(&db)).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "POST /api/submit/ HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 99999999999\r\n\
         Expect: 100-continue\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut answer))
        .await
        .expect("an answer without sending the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"error\":\"body: larger than"), "{answer}");
    app.stop().await;
}

/// Every C0 control character (U+0000 to U+001F) in every string field, on both backends:
/// NUL is a 400 naming the field everywhere; any control character is a 400 in `store_id` and
/// in each image URL; `visit_time` (free text) keeps tab, line feed and carriage return
/// exactly as sent and refuses the rest. Never a 500.
async fn every_control_character_in_every_string_field_is_refused_or_kept_exactly(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let app = TestApp::start_with(test_config(&db), retail_pulse::app::Roles::api_only()).await;
    let fields = [
        "visits[0].store_id",
        "visits[0].image_url[0]",
        "visits[0].image_url[1]",
        "visits[0].visit_time",
    ];
    let mut kept = 0;
    for code_point in 0u32..0x20 {
        let c = char::from_u32(code_point).unwrap();
        for field in fields {
            let mut visit = json!({
                "store_id": STORE_A,
                "image_url": ["http://images.invalid/a.png", "http://images.invalid/b.png"],
                "visit_time": "2026-11-28T10:00:00Z",
            });
            let (value, target) = match field {
                "visits[0].store_id" => (format!("S00{c}339218"), &mut visit["store_id"]),
                "visits[0].image_url[0]" => (
                    format!("http://images.invalid/{c}a.png"),
                    &mut visit["image_url"][0],
                ),
                "visits[0].image_url[1]" => (
                    format!("http://images.invalid/b.png{c}"),
                    &mut visit["image_url"][1],
                ),
                _ => (format!("morning{c}after rain"), &mut visit["visit_time"]),
            };
            *target = json!(value);
            let body = json!({"count": 1, "visits": [visit]});
            let (code, answer) = app.submit(&body).await;
            let free_text = field.ends_with("visit_time") && matches!(c, '\t' | '\n' | '\r');
            if free_text {
                assert_eq!(code, 201, "U+{code_point:04X} in {field}: {answer}");
                let id = answer["job_id"].as_i64().unwrap();
                let images = app.all_images(id, 10).await;
                assert_eq!(images[0]["visit_time"], json!(value), "kept exactly");
                kept += 1;
                continue;
            }
            assert_eq!(code, 400, "U+{code_point:04X} in {field}: {answer}");
            let message = answer["error"].as_str().unwrap();
            assert!(
                message.starts_with(&format!("{field}: must not contain")),
                "U+{code_point:04X} in {field}: {message}"
            );
            if c == '\0' {
                assert!(message.contains("NUL"), "{message}");
            }
        }
    }
    assert_eq!(kept, 3, "tab, line feed and carriage return in visit_time");
    app.stop().await;
}

/// A refusal by the address guard names the host, never what it resolved to: the results
/// endpoint must not map internal names to addresses for anyone who asks.
async fn a_refused_host_name_never_reveals_its_addresses(backend: Backend) {
    let db = TestDb::new(backend).await;
    let images = ImageServer::start().await;
    let mut config = test_config(&db);
    config.fetch.allow_private_networks = false;
    config.worker.max_attempts = 1;
    let app = TestApp::start(config).await;
    let url = format!("http://localhost:{}/img/10x10.png", images.addr.port());
    let job = app.submit_ok(&payload(&[(STORE_A, vec![url])])).await;
    app.wait_finished(job, WAIT).await;
    let results = app.all_images(job, 10).await;
    assert_eq!(
        results[0]["error"],
        "refused: host localhost resolves to a non-public address"
    );
    let (_, status) = app.get(&format!("/api/status?jobid={job}")).await;
    let shown = status.to_string();
    for address in ["127.0.0.1", "::1"] {
        assert!(!shown.contains(address), "{shown}");
    }
    assert_eq!(images.requests(), 0);
    app.stop().await;
}

/// A client that sends its headers or its body too slowly holds nothing for long: headers
/// not complete within the header timeout close the connection (an idle keep-alive one too);
/// a body not complete within the body timeout, however it spaces its bytes, is a 408 naming
/// the body. A prompt request on the same server is served meanwhile.
async fn slow_clients_are_cut_off_at_the_read_timeouts(backend: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::new(backend).await;
    let mut config = test_config(&db);
    config.api.read_timeouts = retail_pulse::config::ReadTimeouts {
        headers: Duration::from_secs(1),
        body: Duration::from_secs(1),
    };
    let app = TestApp::start(config).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    // Reads until the server closes the connection (or 10 s pass); returns what came.
    async fn until_closed(socket: &mut tokio::net::TcpStream) -> (String, Duration) {
        let started = Instant::now();
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                Err(_) => panic!(
                    "still open after 10 s: {}",
                    String::from_utf8_lossy(&answer)
                ),
            }
        }
        (
            String::from_utf8_lossy(&answer).into_owned(),
            started.elapsed(),
        )
    }

    // Headers that never end: closed at the header timeout, without an answer.
    let mut headers_only = tokio::net::TcpStream::connect(&addr).await.unwrap();
    headers_only
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n").as_bytes())
        .await
        .unwrap();
    // A connection that sends nothing at all.
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // Meanwhile a prompt client is served.
    let (code, _) = app.get("/healthz").await;
    assert_eq!(code, 200);
    let (answer, took) = until_closed(&mut headers_only).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert!(
        took < Duration::from_secs(4),
        "headers: closed after {took:?}"
    );
    let (_, took) = until_closed(&mut silent).await;
    assert!(
        took < Duration::from_secs(4),
        "silent: closed after {took:?}"
    );

    // A body that trickles one byte every 200 ms: 408 at the body timeout (a timeout per read
    // would never fire).
    let mut trickle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    trickle
        .write_all(
            format!(
                "POST /api/submit/ HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 1000\r\n\
                 Content-Type: application/json\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let (mut read, mut write) = trickle.into_split();
        let sending = async {
            for _ in 0..50 {
                if write.write_all(b" ").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        let mut answer = Vec::new();
        let reading = async {
            let mut buf = [0u8; 4096];
            while let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_secs(15), read.read(&mut buf)).await
            {
                if n == 0 {
                    break;
                }
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
                    break;
                }
            }
        };
        tokio::join!(sending, reading);
        String::from_utf8_lossy(&answer).into_owned()
    });
    let answer = writer.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains(r#"{"error":"body: not received within 1 s"}"#),
        "{answer}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(11),
        "the 408 came after {:?}",
        started.elapsed()
    );
    app.stop().await;
}

on_both_backends!(
    slow_clients_are_cut_off_at_the_read_timeouts,
    a_trickling_host_fails_as_too_slow_retries_included,
    every_control_character_in_every_string_field_is_refused_or_kept_exactly,
    a_refused_host_name_never_reveals_its_addresses,
    an_oversized_declared_body_is_refused_before_it_is_sent,
    malformed_bodies_get_a_clear_4xx,
    urls_pointing_inward_are_refused_without_a_request,
    allow_list_opens_one_host_and_redirects_are_checked_again,
    misbehaving_hosts_fail_in_time_and_free_the_slot,
    internal_errors_show_only_a_request_id,
);

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("count".to_string()),
                    Just("visits".to_string()),
                    Just("store_id".to_string()),
                    Just("image_url".to_string()),
                    Just("visit_time".to_string()),
                    ".{0,6}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_parser(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Submission::parse(&bytes, &Limits::default());
    }

    #[test]
    fn arbitrary_json_is_accepted_or_refused_with_a_named_field(value in json_value()) {
        if let Err(e) = Submission::from_value(&value, &Limits::default()) {
            let message = e.to_string();
            prop_assert!(
                message.starts_with("body") || message.starts_with("count") || message.starts_with("visits"),
                "{message}"
            );
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_measurer(
        magic in prop_oneof![
            Just(b"\x89PNG\r\n\x1a\n".to_vec()), Just(b"\xff\xd8\xff".to_vec()), Just(b"GIF89a".to_vec()),
            Just(b"RIFF\0\0\0\0WEBP".to_vec()), Just(b"II*\0".to_vec()), Just(b"MM\0*".to_vec()),
            Just(b"BM".to_vec()), Just(b"\0\0\0\x1cftypavif".to_vec()), Just(b"\0\0\0\x18ftypheic".to_vec()), Just(Vec::new())
        ],
        tail in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut bytes = magic;
        bytes.extend(tail);
        let started = Instant::now();
        let _ = retail_pulse::measure::measure(&bytes);
        let _ = retail_pulse::measure::is_readable(&bytes);
        prop_assert!(started.elapsed() < Duration::from_millis(100), "measure took {:?}", started.elapsed());
    }
}
