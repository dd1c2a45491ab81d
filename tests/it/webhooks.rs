//! Webhooks and retention, black-box on both backends: a receiver in this file takes the
//! `job.finished` events and checks every signature with code that is not the service's (the
//! Standard Webhooks crate, and HMAC-SHA256 written out here); retries, `410 Gone`, the
//! address guard, a restart mid-delivery, secret rotation, and `prune` with its archive.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use retail_pulse::app::Roles;
use retail_pulse::config::Config;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::common;
use crate::common::service::Service;
use crate::common::{
    Backend, ImageServer, STORE_A, STORE_B, TestApp, TestDb, binary, keys, on_both_backends,
    payload, test_config,
};

mod caps;
mod sealed;

const WAIT: Duration = Duration::from_secs(30);
/// A store that is not in the master: a job made only of it finishes at submit.
const UNKNOWN_STORE: &str = "S99999999";

/// A webhook receiver: answers each request with the next scripted reply (200 once the script
/// is used up) and keeps every request it got.
mod receiver {
    use super::*;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{StatusCode, Uri};

    /// What the receiver does with one request.
    #[derive(Debug, Clone, Copy)]
    pub enum Reply {
        Status(u16),
        /// Never answers (until long after any client has given up).
        Hang,
    }

    #[derive(Debug, Clone)]
    pub struct Received {
        pub path: String,
        pub headers: HeaderMap,
        pub body: Bytes,
    }

    impl Received {
        pub fn header(&self, name: &str) -> &str {
            self.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
        }

        pub fn json(&self) -> Value {
            serde_json::from_slice(&self.body).expect("a JSON body")
        }
    }

    #[derive(Default)]
    struct Inner {
        script: Mutex<VecDeque<Reply>>,
        got: Mutex<Vec<Received>>,
    }

    #[derive(Clone)]
    pub struct Receiver {
        pub addr: std::net::SocketAddr,
        inner: Arc<Inner>,
    }

    impl Receiver {
        pub async fn start(script: &[Reply]) -> Self {
            let inner = Arc::new(Inner::default());
            inner.script.lock().unwrap().extend(script.iter().copied());
            let app = axum::Router::new().fallback(take).with_state(inner.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind receiver");
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                axum::serve(listener, app).await.expect("receiver");
            });
            Receiver { addr, inner }
        }

        pub fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }

        pub fn received(&self) -> Vec<Received> {
            self.inner.got.lock().unwrap().clone()
        }

        /// Waits until at least `n` requests arrived; returns all of them.
        pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
            let deadline = Instant::now() + within;
            loop {
                let got = self.received();
                if got.len() >= n {
                    return got;
                }
                assert!(
                    Instant::now() < deadline,
                    "the receiver got {} of {n} requests within {within:?}",
                    got.len()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    async fn take(
        State(inner): State<Arc<Inner>>,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> StatusCode {
        inner.got.lock().unwrap().push(Received {
            path: uri.to_string(),
            headers,
            body,
        });
        let reply = inner.script.lock().unwrap().pop_front();
        match reply {
            None => StatusCode::OK,
            Some(Reply::Status(code)) => StatusCode::from_u16(code).unwrap(),
            Some(Reply::Hang) => {
                tokio::time::sleep(Duration::from_secs(600)).await;
                StatusCode::OK
            }
        }
    }
}

use receiver::{Received, Receiver, Reply};

/// Verifies a delivery with the Standard Webhooks reference crate.
fn verified_by_the_standard_library(secret: &str, got: &Received) -> bool {
    standardwebhooks::Webhook::new(secret)
        .expect("a whsec_ secret")
        .verify(&got.body, &got.headers)
        .is_ok()
}

/// Verifies a delivery by hand: HMAC-SHA256 over `id.timestamp.body`, keyed by the secret's
/// decoded bytes, base64, compared with each `v1,` signature of the header.
fn verified_by_hand(secret: &str, got: &Received) -> bool {
    let key = BASE64
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .expect("base64 secret");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(got.header("webhook-id").as_bytes());
    mac.update(b".");
    mac.update(got.header("webhook-timestamp").as_bytes());
    mac.update(b".");
    mac.update(&got.body);
    let expected = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
    got.header("webhook-signature")
        .split(' ')
        .any(|s| s == expected)
}

/// Both verifications, which must agree.
fn verifies(secret: &str, got: &Received) -> bool {
    let standard = verified_by_the_standard_library(secret, got);
    assert_eq!(
        standard,
        verified_by_hand(secret, got),
        "the two verifiers disagree on {:?}",
        got.headers
    );
    standard
}

/// A test configuration with retries a few tenths of a second apart.
fn config(db: &TestDb) -> Config {
    let mut config = test_config(db);
    config.webhooks.retry_base = Duration::from_millis(100);
    config.webhooks.retry_max = Duration::from_millis(400);
    config
}

async fn secret(app: &TestApp, key: Option<&str>) -> String {
    let answer = app.call("GET", "/api/webhooks/secret", key, None).await;
    assert_eq!(answer.code, 200, "{}", answer.text);
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    answer.json()["secret"]
        .as_str()
        .expect("a secret")
        .to_string()
}

/// The job as `GET /api/jobs/{id}` shows it.
async fn job(app: &TestApp, id: i64) -> Value {
    let (code, body) = app.get(&format!("/api/jobs/{id}")).await;
    assert_eq!(code, 200, "{body}");
    body
}

/// Polls the job until its webhook is in `state`; returns the job.
async fn wait_webhook(app: &TestApp, id: i64, state: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let body = job(app, id).await;
        if body["webhook"]["state"] == state {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "webhook of job {id} not {state}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn with_webhook(mut job: Value, url: &str) -> Value {
    job["webhook"] = json!(url);
    job
}

fn unknown_store_job(url: &str) -> Value {
    with_webhook(
        payload(&[(UNKNOWN_STORE, vec!["http://images.invalid/a.png".into()])]),
        url,
    )
}

/// The Standard Webhooks test vector (from the specification's reference libraries), signed
/// by the service's own function.
#[test]
fn signing_matches_the_standard_webhooks_test_vector() {
    let signature = retail_pulse::webhooks::sign(
        "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
        1649367553,
        br#"{"email":"test@example.com","username":"test_user"}"#,
    )
    .unwrap();
    assert_eq!(signature, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
}

async fn a_finished_job_sends_one_signed_event_with_its_body(backend: Backend) {
    let db = TestDb::new(backend).await;
    let images = ImageServer::start().await;
    let receiver = Receiver::start(&[]).await;
    let app = TestApp::start(config(&db)).await;
    let secret = secret(&app, None).await;
    assert!(secret.starts_with("whsec_"), "{secret}");
    let key = BASE64.decode(&secret["whsec_".len()..]).unwrap();
    assert!(key.len() >= 24, "{} bytes", key.len());
    assert_eq!(
        self::secret(&app, None).await,
        secret,
        "made once, then kept"
    );

    let url = receiver.url("/hooks/rp?source=test");
    let id = app
        .submit_ok(&with_webhook(
            payload(&[
                (
                    STORE_A,
                    vec![images.image(10, 20, "png"), images.url("/status/404")],
                ),
                (STORE_B, vec![images.image(30, 40, "jpg")]),
            ]),
            &url,
        ))
        .await;
    let ongoing = job(&app, id).await;
    if ongoing["status"] == "ongoing" {
        assert_eq!(
            ongoing["webhook"],
            json!({"url": url, "state": "pending", "attempts": 0, "last_error": null})
        );
    }
    let finished = wait_webhook(&app, id, "delivered").await;
    assert_eq!(finished["status"], "failed");
    assert_eq!(
        finished["webhook"],
        json!({"url": url, "state": "delivered", "attempts": 1, "last_error": null})
    );
    // A few more poll intervals: still exactly one event.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let got = receiver.received();
    assert_eq!(got.len(), 1, "one event per job");
    let event = &got[0];
    assert_eq!(event.path, "/hooks/rp?source=test");
    assert_eq!(event.header("content-type"), "application/json");
    assert!(event.header("webhook-id").starts_with("msg_"));
    let sent_at: i64 = event.header("webhook-timestamp").parse().unwrap();
    let now = chrono::Utc::now().timestamp();
    assert!(
        (now - sent_at).abs() < 120,
        "timestamp {sent_at}, now {now}"
    );
    assert!(verifies(&secret, event), "signed with the tenant's secret");
    let other = retail_pulse::webhooks::generate_secret().unwrap();
    assert!(!verifies(&other, event), "another secret does not verify");

    let body = event.json();
    assert_eq!(body["type"], "job.finished");
    assert_eq!(body["timestamp"], finished["finished_at"]);
    let mut expected = finished.clone();
    expected.as_object_mut().unwrap().remove("webhook");
    assert_eq!(
        body["data"], expected,
        "the data is the job as the API shows it"
    );
    app.stop().await;
}

async fn a_job_finished_at_submit_and_a_cancelled_job_each_send_their_event(backend: Backend) {
    let db = TestDb::new(backend).await;
    let images = ImageServer::start().await;
    let receiver = Receiver::start(&[]).await;
    let app = TestApp::start(config(&db)).await;
    let at_submit = app
        .submit_ok(&unknown_store_job(&receiver.url("/at-submit")))
        .await;
    let slow = app
        .submit_ok(&with_webhook(
            payload(&[(STORE_A, vec![images.url("/slow/20000/10x10.png")])]),
            &receiver.url("/cancelled"),
        ))
        .await;
    let answer = app
        .call("POST", &format!("/api/jobs/{slow}/cancel"), None, None)
        .await;
    assert_eq!(answer.code, 200, "{}", answer.text);
    assert_eq!(answer.json()["webhook"]["url"], receiver.url("/cancelled"));
    wait_webhook(&app, at_submit, "delivered").await;
    wait_webhook(&app, slow, "delivered").await;
    let got = receiver.received();
    assert_eq!(got.len(), 2, "{got:?}");
    let by_path = |path: &str| {
        got.iter()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("no event at {path}"))
            .json()
    };
    let first = by_path("/at-submit");
    assert_eq!(first["data"]["job_id"], at_submit);
    assert_eq!(first["data"]["status"], "failed");
    let second = by_path("/cancelled");
    assert_eq!(second["data"]["job_id"], slow);
    assert_eq!(second["data"]["status"], "cancelled");
    app.stop().await;
}

async fn a_receiver_that_fails_twice_gets_three_deliveries_with_one_id(backend: Backend) {
    let db = TestDb::new(backend).await;
    let receiver = Receiver::start(&[Reply::Status(500), Reply::Status(503)]).await;
    let app = TestApp::start(config(&db)).await;
    let secret = secret(&app, None).await;
    let id = app
        .submit_ok(&unknown_store_job(&receiver.url("/flaky")))
        .await;
    let finished = wait_webhook(&app, id, "delivered").await;
    assert_eq!(finished["webhook"]["attempts"], 3);
    assert_eq!(finished["webhook"]["last_error"], Value::Null);
    let got = receiver.wait_for(3, WAIT).await;
    assert_eq!(got.len(), 3);
    let ids: Vec<&str> = got.iter().map(|r| r.header("webhook-id")).collect();
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "one id on every attempt: {ids:?}"
    );
    for attempt in &got {
        assert!(verifies(&secret, attempt), "each attempt is signed");
        assert_eq!(attempt.body, got[0].body, "the same event each time");
    }
    app.stop().await;
}

async fn a_failing_receiver_shows_the_last_error_while_retrying(backend: Backend) {
    let db = TestDb::new(backend).await;
    let receiver = Receiver::start(&[Reply::Status(500); 50]).await;
    let mut config = config(&db);
    // Retries seconds apart: the state is caught between two of them.
    config.webhooks.retry_base = Duration::from_secs(5);
    config.webhooks.retry_max = Duration::from_secs(5);
    let app = TestApp::start(config).await;
    let id = app
        .submit_ok(&unknown_store_job(&receiver.url("/down")))
        .await;
    receiver.wait_for(1, WAIT).await;
    let deadline = Instant::now() + WAIT;
    let body = loop {
        let body = job(&app, id).await;
        if body["webhook"]["attempts"] == 1 && body["webhook"]["last_error"].is_string() {
            break body;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(body["webhook"]["state"], "pending");
    assert_eq!(
        body["webhook"]["last_error"],
        "HTTP 500 Internal Server Error"
    );
    app.stop().await;
}

async fn gone_stops_the_retries(backend: Backend) {
    let db = TestDb::new(backend).await;
    let receiver = Receiver::start(&[Reply::Status(410), Reply::Status(500)]).await;
    let app = TestApp::start(config(&db)).await;
    let id = app
        .submit_ok(&unknown_store_job(&receiver.url("/gone")))
        .await;
    let failed = wait_webhook(&app, id, "failed").await;
    assert_eq!(failed["webhook"]["attempts"], 1);
    let error = failed["webhook"]["last_error"].as_str().unwrap();
    assert!(error.contains("HTTP 410 Gone"), "{error}");
    // Many retry intervals later, still the one request.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.received().len(), 1);
    assert_eq!(job(&app, id).await["webhook"]["attempts"], 1);
    app.stop().await;
}

async fn the_address_guard_and_allow_list_apply_to_webhooks(backend: Backend) {
    let db = TestDb::new(backend).await;
    let receiver = Receiver::start(&[]).await;
    let mut config = config(&db);
    config.fetch.allow_private_networks = false;
    config.fetch.allow_hosts = retail_pulse::fetch::guard::AllowList::parse("localhost").unwrap();
    let app = TestApp::start(config).await;
    let port = receiver.addr.port();
    let literal = app
        .submit_ok(&unknown_store_job(&format!(
            "http://127.0.0.1:{port}/literal"
        )))
        .await;
    let spelled = app
        .submit_ok(&unknown_store_job(&format!(
            "http://2130706433:{port}/spelled"
        )))
        .await;
    let allowed = app
        .submit_ok(&unknown_store_job(&format!(
            "http://localhost:{port}/allowed"
        )))
        .await;
    for refused in [literal, spelled] {
        let body = wait_webhook(&app, refused, "failed").await;
        assert_eq!(body["webhook"]["attempts"], 1, "not retried: {body}");
        let error = body["webhook"]["last_error"].as_str().unwrap();
        assert!(
            error.starts_with("refused: address 127.0.0.1 is not a public address"),
            "{error}"
        );
    }
    wait_webhook(&app, allowed, "delivered").await;
    let got = receiver.received();
    let paths: Vec<&str> = got.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/allowed"], "only the allowed host was reached");
    app.stop().await;

    // Without the allow-list, a name that resolves to loopback is refused too.
    let mut config = self::config(&db);
    config.fetch.allow_private_networks = false;
    let app = TestApp::start(config).await;
    let named = app
        .submit_ok(&unknown_store_job(&format!(
            "http://localhost:{port}/named"
        )))
        .await;
    let body = wait_webhook(&app, named, "failed").await;
    let error = body["webhook"]["last_error"].as_str().unwrap();
    assert_eq!(
        error,
        "refused: host localhost resolves to a non-public address"
    );
    assert_eq!(receiver.received().len(), 1);
    app.stop().await;
}

async fn a_restart_in_the_middle_of_a_delivery_loses_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let receiver = Receiver::start(&[Reply::Hang]).await;
    let env = [
        ("RP_PROCESSING_DELAY_MS", "0"),
        ("RP_POLL_INTERVAL_MS", "100"),
        // A delivery's lease is twice this: a dead worker's delivery is free again in 4 s.
        ("RP_FETCH_TIMEOUT_SECS", "2"),
        ("RP_WEBHOOK_RETRY_BASE_MS", "100"),
        ("RP_WEBHOOK_RETRY_MAX_SECS", "1"),
    ];
    let client = common::client();
    let first = Service::start(binary::BINARY, "serve", &db.url, &env);
    let secret = first.get_json(&client, "/api/webhooks/secret").await["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let id = first
        .submit(&client, &unknown_store_job(&receiver.url("/restart")))
        .await;
    // The first attempt reaches the receiver, which does not answer; the service dies then.
    receiver.wait_for(1, WAIT).await;
    first.kill_hard();

    let second = Service::start(binary::BINARY, "serve", &db.url, &env);
    let got = receiver.wait_for(2, WAIT).await;
    let deadline = Instant::now() + WAIT;
    let job = loop {
        let job = second.get_json(&client, &format!("/api/jobs/{id}")).await;
        if job["webhook"]["state"] == "delivered" {
            break job;
        }
        assert!(Instant::now() < deadline, "{job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(job["webhook"]["attempts"], 2, "{job}");
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    assert!(verifies(&secret, &got[0]) && verifies(&secret, &got[1]));
    second.terminate();
}

async fn rotation_signs_with_both_secrets_for_a_while(backend: Backend) {
    let db = TestDb::new(backend).await;
    let receiver = Receiver::start(&[]).await;
    let app = TestApp::start(config(&db)).await;
    let old = secret(&app, None).await;
    let answer = app
        .call("POST", "/api/webhooks/secret/rotate", None, None)
        .await;
    assert_eq!(answer.code, 200, "{}", answer.text);
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    let rotated = answer.json();
    let new = rotated["secret"].as_str().unwrap().to_string();
    assert!(new.starts_with("whsec_") && new != old);
    assert!(rotated["previous_valid_until"].is_string(), "{rotated}");
    assert_eq!(secret(&app, None).await, new);

    let id = app
        .submit_ok(&unknown_store_job(&receiver.url("/both")))
        .await;
    wait_webhook(&app, id, "delivered").await;
    let event = receiver.received().pop().unwrap();
    assert_eq!(event.header("webhook-signature").split(' ').count(), 2);
    assert!(verifies(&new, &event), "the new secret verifies");
    assert!(verifies(&old, &event), "so does the old one, for now");
    app.stop().await;

    // Rotated again with no overlap: only the newest secret signs.
    let mut config = config(&db);
    config.webhooks.secret_overlap = Duration::ZERO;
    let app = TestApp::start(config).await;
    let answer = app
        .call("POST", "/api/webhooks/secret/rotate", None, None)
        .await;
    let newest = answer.json()["secret"].as_str().unwrap().to_string();
    let id = app
        .submit_ok(&unknown_store_job(&receiver.url("/one")))
        .await;
    wait_webhook(&app, id, "delivered").await;
    let event = receiver.received().pop().unwrap();
    assert_eq!(event.header("webhook-signature").split(' ').count(), 1);
    assert!(verifies(&newest, &event));
    assert!(!verifies(&new, &event), "the overlap is over at once");
    app.stop().await;
}

async fn each_tenant_has_its_own_secret_which_its_keys_share(backend: Backend) {
    let db = TestDb::new(backend).await;
    let receiver = Receiver::start(&[]).await;
    let app = TestApp::start(config(&db)).await;
    let acme = keys::create_key(&db.url, "acme-app", &["--tenant", "acme"]).await;
    let acme_too = keys::create_key(&db.url, "acme-ci", &["--tenant", "acme"]).await;
    let other = keys::create_key(&db.url, "other", &[]).await;
    let admin = keys::create_key(&db.url, "ops", &["--admin"]).await;

    let no_key = app.call("GET", "/api/webhooks/secret", None, None).await;
    assert_eq!(no_key.code, 401, "{}", no_key.text);
    let acme_secret = secret(&app, Some(&acme)).await;
    assert_eq!(secret(&app, Some(&acme_too)).await, acme_secret);
    let other_secret = secret(&app, Some(&other)).await;
    assert_ne!(other_secret, acme_secret);
    assert_ne!(
        secret(&app, Some(&admin)).await,
        acme_secret,
        "an admin's own tenant"
    );

    // A non-admin key may rotate its tenant's secret; the tenant's other keys see the new one.
    let rotated = app
        .call("POST", "/api/webhooks/secret/rotate", Some(&acme_too), None)
        .await;
    assert_eq!(rotated.code, 200, "{}", rotated.text);
    let acme_new = rotated.json()["secret"].as_str().unwrap().to_string();
    assert_eq!(secret(&app, Some(&acme)).await, acme_new);
    assert_eq!(secret(&app, Some(&other)).await, other_secret, "untouched");

    let answer = app
        .call(
            "POST",
            "/api/submit/",
            Some(&other),
            Some(unknown_store_job(&receiver.url("/other")).to_string()),
        )
        .await;
    assert_eq!(answer.code, 201, "{}", answer.text);
    let event = receiver.wait_for(1, WAIT).await.pop().unwrap();
    assert!(verifies(&other_secret, &event));
    assert!(!verifies(&acme_new, &event) && !verifies(&acme_secret, &event));
    assert_eq!(event.json()["data"]["tenant"], "other");
    app.stop().await;
}

/// Rows left in a table for a job, read straight from the database.
async fn rows_of(db: &TestDb, table: &str, job_id: i64) -> i64 {
    let pool = retail_pulse::db::Db::connect(&db.url, 2).await.unwrap();
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM {table} WHERE {} = $1",
        if table == "jobs" { "id" } else { "job_id" }
    )))
    .bind(job_id)
    .fetch_one(pool.pool())
    .await
    .unwrap();
    pool.close().await;
    n
}

/// An archive file, unzipped and parsed: its header and rows.
fn read_archive(path: &std::path::Path) -> (Vec<String>, Vec<Vec<String>>) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .expect("gzip");
    assert!(text.contains("\r\n"), "RFC 4180 line ends");
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header = reader.headers().unwrap().iter().map(String::from).collect();
    let rows = reader
        .records()
        .map(|r| r.unwrap().iter().map(String::from).collect())
        .collect();
    (header, rows)
}

/// The rows an archive must hold: the results endpoint's images, one row each.
fn expected_rows(images: &[Value]) -> Vec<Vec<String>> {
    let text = |v: &Value| match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    images
        .iter()
        .map(|i| {
            [
                "store_id",
                "url",
                "visit_time",
                "status",
                "width",
                "height",
                "perimeter",
                "error",
            ]
            .iter()
            .map(|k| text(&i[*k]))
            .collect()
        })
        .collect()
}

async fn prune_removes_finished_jobs_keeps_ongoing_ones_and_archives_them(backend: Backend) {
    let db = TestDb::new(backend).await;
    let images = ImageServer::start().await;
    let receiver = Receiver::start(&[]).await;
    let app = TestApp::start(config(&db)).await;
    let completed = app
        .submit_ok(&payload(&[(
            STORE_A,
            vec![images.image(10, 20, "png"), images.image(7, 7, "gif")],
        )]))
        .await;
    let failed = app
        .submit_ok(&with_webhook(
            payload(&[
                (
                    STORE_A,
                    vec![images.image(3, 4, "png"), images.url("/status/404")],
                ),
                (UNKNOWN_STORE, vec![images.image(5, 5, "png")]),
            ]),
            &receiver.url("/pruned"),
        ))
        .await;
    app.wait_finished(completed, WAIT).await;
    wait_webhook(&app, failed, "delivered").await;
    let results = [
        (completed, app.all_images(completed, 1000).await),
        (failed, app.all_images(failed, 1000).await),
    ];
    app.stop().await;
    // An API without workers: this job stays ongoing while prune runs.
    let app = TestApp::start_with(config(&db), Roles::api_only()).await;
    let ongoing = app
        .submit_ok(&payload(&[(STORE_B, vec![images.image(6, 6, "png")])]))
        .await;

    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let env = [("DATABASE_URL", db.url.as_str())];
    let run = binary::run(&["prune", "--older-than", "1h"], &env).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.starts_with("pruned 0 jobs"), "{run}");
    let archive_arg = archive.to_str().unwrap();
    let run = binary::run(
        &["prune", "--older-than", "0s", "--archive-dir", archive_arg],
        &env,
    )
    .await;
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stdout.starts_with("pruned 2 jobs finished before ")
            && run.stdout.contains("(5 images, 1 webhook delivery)")
            && run
                .stdout
                .contains(&format!("archived 2 jobs to {archive_arg}")),
        "{run}"
    );

    for (id, images) in &results {
        let (code, body) = app.get(&format!("/api/jobs/{id}")).await;
        assert_eq!(code, 404, "{body}");
        let (code, body) = app.get(&format!("/api/status?jobid={id}")).await;
        assert_eq!((code, body), (400, json!({})));
        for table in ["jobs", "images", "webhook_deliveries"] {
            assert_eq!(rows_of(&db, table, *id).await, 0, "{table} of job {id}");
        }
        let (header, rows) = read_archive(&archive.join(format!("job-{id}.csv.gz")));
        assert_eq!(
            header,
            [
                "store_id",
                "url",
                "visit_time",
                "status",
                "width",
                "height",
                "perimeter",
                "error"
            ]
        );
        assert_eq!(rows, expected_rows(images), "archive of job {id}");
    }
    assert_eq!(job(&app, ongoing).await["status"], "ongoing");
    assert_eq!(rows_of(&db, "images", ongoing).await, 1);
    // A second run finds nothing more, and leaves the archives as they were.
    let before = std::fs::read(archive.join(format!("job-{completed}.csv.gz"))).unwrap();
    let run = binary::run(
        &["prune", "--older-than", "0s", "--archive-dir", archive_arg],
        &env,
    )
    .await;
    assert!(run.stdout.starts_with("pruned 0 jobs"), "{run}");
    assert_eq!(
        std::fs::read(archive.join(format!("job-{completed}.csv.gz"))).unwrap(),
        before
    );
    app.stop().await;

    // The ongoing job was left whole: workers finish it.
    let app = TestApp::start(config(&db)).await;
    assert_eq!(
        app.wait_finished(ongoing, WAIT).await["status"],
        "completed"
    );
    app.stop().await;
}

async fn retention_prunes_periodically_and_counts_it(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = config(&db);
    config.retention.older_than = Some(Duration::ZERO);
    let app = TestApp::start(config).await;
    let id = app
        .submit_ok(&payload(&[(
            UNKNOWN_STORE,
            vec!["http://x.invalid/a".into()],
        )]))
        .await;
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, _) = app.get(&format!("/api/jobs/{id}")).await;
        if code == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "job {id} never pruned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = app.call("GET", "/metrics", None, None).await;
    assert!(
        metrics
            .text
            .contains("retail_pulse_pruned_total{table=\"jobs\"} 1"),
        "{}",
        metrics.text
    );
    assert!(
        metrics
            .text
            .contains("retail_pulse_pruned_total{table=\"images\"} 1")
    );
    app.stop().await;
}

async fn one_process_prunes_at_a_time(backend: Backend) {
    use retail_pulse::db::retention::PruneLock;
    let db = TestDb::new(backend).await;
    let app = TestApp::start(config(&db)).await;
    let id = app
        .submit_ok(&payload(&[(
            UNKNOWN_STORE,
            vec!["http://x.invalid/a".into()],
        )]))
        .await;
    let handle = retail_pulse::db::Db::connect(&db.url, 4).await.unwrap();
    let pruner = retail_pulse::retention::Pruner::new(
        handle.clone(),
        Duration::ZERO,
        None,
        Arc::new(retail_pulse::metrics::Metrics::new()),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    // Another process (here, another session) holds the lock.
    let held = PruneLock::try_take(&handle).await.unwrap().expect("free");
    let while_held = pruner.prune(&stop).await.unwrap();
    match backend {
        Backend::Postgres => {
            assert_eq!(while_held, None, "skipped while another process prunes");
            assert_eq!(job(&app, id).await["job_id"], id);
            held.release().await;
            let pruned = pruner
                .prune(&stop)
                .await
                .unwrap()
                .expect("the lock is free");
            assert_eq!(pruned.jobs, 1);
        }
        // One host: each process runs one pruner, and the lock is its own.
        Backend::Sqlite => {
            assert_eq!(while_held.map(|p| p.jobs), Some(1));
            held.release().await;
        }
    }
    let (code, _) = app.get(&format!("/api/jobs/{id}")).await;
    assert_eq!(code, 404);
    handle.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_refuses_a_bad_webhook_naming_the_field() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::start_with(config(&db), Roles::api_only()).await;
    let job = payload(&[(STORE_A, vec!["https://example.com/a.png".into()])]);
    let long = format!("https://example.com/{}", "a".repeat(2048));
    let cases = [
        (
            json!("ftp://example.com/hook"),
            "webhook: must be an http or https URL, not ftp",
        ),
        (
            json!("hooks.example.com"),
            "webhook: is not a URL (relative URL without a base)",
        ),
        (json!(7), "webhook: must be a string, not a number"),
        (json!(""), "webhook: must not be empty"),
        (json!(long), "webhook: is longer than 2048 bytes"),
    ];
    for (value, message) in cases {
        let mut bad = job.clone();
        bad["webhook"] = value;
        let (code, body) = app.submit(&bad).await;
        assert_eq!((code, body), (400, json!({"error": message})));
    }
    let twice = job.to_string().replacen(
        '{',
        r#"{"webhook": "https://a.example/1", "webhook": "https://a.example/2", "#,
        1,
    );
    let (code, body) = app.post_raw("/api/submit/", twice).await;
    assert_eq!(code, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("duplicate key `webhook`"),
        "{body}"
    );
    // Without a webhook, the job shows none.
    let id = app.submit_ok(&job).await;
    assert!(job_without_webhook(&app, id).await);
    app.stop().await;
}

async fn job_without_webhook(app: &TestApp, id: i64) -> bool {
    job(app, id).await.get("webhook").is_none()
}

on_both_backends!(
    a_finished_job_sends_one_signed_event_with_its_body,
    a_job_finished_at_submit_and_a_cancelled_job_each_send_their_event,
    a_receiver_that_fails_twice_gets_three_deliveries_with_one_id,
    a_failing_receiver_shows_the_last_error_while_retrying,
    gone_stops_the_retries,
    the_address_guard_and_allow_list_apply_to_webhooks,
    a_restart_in_the_middle_of_a_delivery_loses_nothing,
    rotation_signs_with_both_secrets_for_a_while,
    each_tenant_has_its_own_secret_which_its_keys_share,
    prune_removes_finished_jobs_keeps_ongoing_ones_and_archives_them,
    retention_prunes_periodically_and_counts_it,
    one_process_prunes_at_a_time,
);
