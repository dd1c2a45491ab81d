//! Webhook secrets sealed at rest: what the table holds (read raw), a sealed value moved to
//! another tenant's row, the secret key rotated (`B,A`, then `B` alone), rows left in clear by
//! an older version, the previous secret erased after its overlap, the SQLite key file, and
//! PostgreSQL without a key (refusing to start over existing secrets; otherwise webhooks off).

use std::time::{Duration, Instant};

use retail_pulse::app::{self, Roles};
use retail_pulse::config::Config;
use retail_pulse::webhooks::sealing::{KeyRing, SecretKey};
use serde_json::Value;

use super::{Receiver, config, secret, unknown_store_job, verifies, wait_webhook};
use crate::common::service::Service;
use crate::common::{Backend, TestApp, TestDb, binary, keys, on_both_backends, payload};

/// Two secret keys: base64 of 32 bytes of 7, and of 9.
const KEY_A: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
const KEY_B: &str = "CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=";

fn key_id(bytes: u8) -> String {
    SecretKey::from_bytes(&[bytes; 32]).id().to_string()
}

fn with_keys(db: &TestDb, keys: &str) -> Config {
    let mut config = config(db);
    config.webhooks.secret_keys = Some(KeyRing::parse_list(keys, "test").unwrap());
    config
}

fn without_key(db: &TestDb) -> Config {
    let mut config = config(db);
    config.webhooks.secret_keys = None;
    config
}

/// A row of `webhook_secrets` as stored.
#[derive(Debug, Clone)]
struct Raw {
    tenant: String,
    secret: Option<String>,
    previous_secret: Option<String>,
    secret_sealed: Option<String>,
    previous_sealed: Option<String>,
    key_id: Option<String>,
    previous_expires_at: Option<i64>,
}

async fn raw_rows(db: &TestDb) -> Vec<Raw> {
    let handle = retail_pulse::db::Db::connect(&db.url, 2).await.unwrap();
    type Row = (
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<i64>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT tenant, secret, previous_secret, secret_sealed, previous_sealed, key_id, \
         previous_expires_at FROM webhook_secrets ORDER BY tenant",
    )
    .fetch_all(handle.pool())
    .await
    .unwrap();
    handle.close().await;
    rows.into_iter()
        .map(|r| Raw {
            tenant: r.0,
            secret: r.1,
            previous_secret: r.2,
            secret_sealed: r.3,
            previous_sealed: r.4,
            key_id: r.5,
            previous_expires_at: r.6,
        })
        .collect()
}

async fn execute(db: &TestDb, sql: &str, binds: &[&str]) {
    let handle = retail_pulse::db::Db::connect(&db.url, 2).await.unwrap();
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()));
    for b in binds {
        query = query.bind(b.to_string());
    }
    query.execute(handle.pool()).await.unwrap();
    handle.close().await;
}

/// No column of any row holds one of these secrets, whole or as its base64 part.
fn nowhere_in(rows: &[Raw], secrets: &[&str]) {
    for row in rows {
        let columns = [
            &row.secret,
            &row.previous_secret,
            &row.secret_sealed,
            &row.previous_sealed,
        ];
        for value in columns.into_iter().flatten() {
            for secret in secrets {
                let bare = secret.trim_start_matches("whsec_");
                assert!(!value.contains(bare), "{row:?} holds a secret in clear");
            }
        }
    }
}

async fn rotate(app: &TestApp, key: Option<&str>) -> String {
    let answer = app
        .call("POST", "/api/webhooks/secret/rotate", key, None)
        .await;
    assert_eq!(answer.code, 200, "{}", answer.text);
    answer.json()["secret"].as_str().unwrap().to_string()
}

async fn a_read_and_a_rotation_leave_no_secret_in_clear(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::start(with_keys(&db, KEY_A)).await;
    let first = secret(&app, None).await;
    let rows = raw_rows(&db).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].tenant, "default");
    assert!(rows[0].secret.is_none() && rows[0].secret_sealed.is_some());
    assert_eq!(rows[0].key_id.as_deref(), Some(key_id(7).as_str()));
    nowhere_in(&rows, &[&first]);

    let second = rotate(&app, None).await;
    let rows = raw_rows(&db).await;
    let row = &rows[0];
    assert!(
        row.secret.is_none() && row.previous_secret.is_none(),
        "{row:?}"
    );
    assert!(row.secret_sealed.is_some() && row.previous_sealed.is_some());
    assert_ne!(row.secret_sealed, row.previous_sealed);
    nowhere_in(&rows, &[&first, &second]);
    app.stop().await;
}

async fn a_sealed_secret_moved_to_another_tenants_row_does_not_open(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::start(with_keys(&db, KEY_A)).await;
    let acme = keys::create_key(&db.url, "acme", &[]).await;
    let other = keys::create_key(&db.url, "other", &[]).await;
    let acme_secret = secret(&app, Some(&acme)).await;
    secret(&app, Some(&other)).await;
    // Whoever can write the table copies acme's sealed secret into the other tenant's row.
    execute(
        &db,
        "UPDATE webhook_secrets SET secret_sealed = \
           (SELECT secret_sealed FROM webhook_secrets WHERE tenant = $1) WHERE tenant = $2",
        &["acme", "other"],
    )
    .await;
    let answer = app
        .call("GET", "/api/webhooks/secret", Some(&other), None)
        .await;
    assert_eq!(answer.code, 500, "an error, not a secret: {}", answer.text);
    assert!(!answer.text.contains(&acme_secret), "{}", answer.text);
    assert_eq!(secret(&app, Some(&acme)).await, acme_secret, "untouched");
    app.stop().await;
}

async fn a_new_secret_key_reseals_every_row_and_keeps_the_webhook_secret(backend: Backend) {
    let db = TestDb::new(backend).await;
    let receiver = Receiver::start(&[]).await;
    let app = TestApp::start(with_keys(&db, KEY_A)).await;
    let webhook_secret = secret(&app, None).await;
    app.stop().await;

    // B first, A still given: rows are resealed with B at start, the secret is the same.
    let app = TestApp::start(with_keys(&db, &format!("{KEY_B},{KEY_A}"))).await;
    let rows = raw_rows(&db).await;
    assert_eq!(rows[0].key_id.as_deref(), Some(key_id(9).as_str()));
    assert_eq!(secret(&app, None).await, webhook_secret);
    let id = app
        .submit_ok(&unknown_store_job(&receiver.url("/b-and-a")))
        .await;
    wait_webhook(&app, id, "delivered").await;
    assert!(verifies(
        &webhook_secret,
        &receiver.received().pop().unwrap()
    ));
    app.stop().await;

    // A retired: B alone opens every row.
    let app = TestApp::start(with_keys(&db, KEY_B)).await;
    assert_eq!(secret(&app, None).await, webhook_secret);
    let id = app.submit_ok(&unknown_store_job(&receiver.url("/b"))).await;
    wait_webhook(&app, id, "delivered").await;
    assert!(verifies(
        &webhook_secret,
        &receiver.received().pop().unwrap()
    ));
    app.stop().await;

    // A alone cannot open what B sealed: the process refuses to start, naming B's key.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = app::build(with_keys(&db, KEY_A), Some(listener), Roles::all()).await;
    let error = refused.err().expect("refused").to_string();
    assert!(
        error.contains(&key_id(9)) && error.contains("RP_SECRET_KEY"),
        "{error}"
    );
}

async fn secrets_an_older_version_left_in_clear_are_sealed_at_start(backend: Backend) {
    let db = TestDb::new(backend).await;
    let receiver = Receiver::start(&[]).await;
    // Migrated, then a row as a version before sealing writes it: in clear, with a previous
    // secret still in its overlap.
    TestApp::start(with_keys(&db, KEY_A)).await.stop().await;
    let current = retail_pulse::webhooks::generate_secret().unwrap();
    let previous = retail_pulse::webhooks::generate_secret().unwrap();
    let far = (local_now_ms() + 3_600_000).to_string();
    execute(
        &db,
        &format!(
            "INSERT INTO webhook_secrets (tenant, secret, previous_secret, previous_expires_at, \
               created_at) VALUES ('default', $1, $2, {far}, 0)"
        ),
        &[&current, &previous],
    )
    .await;

    let app = TestApp::start(with_keys(&db, KEY_A)).await;
    let rows = raw_rows(&db).await;
    let row = &rows[0];
    assert!(
        row.secret.is_none() && row.previous_secret.is_none(),
        "{row:?}"
    );
    assert!(row.secret_sealed.is_some() && row.previous_sealed.is_some());
    assert!(row.previous_expires_at.is_some());
    nowhere_in(&rows, &[&current, &previous]);
    assert_eq!(secret(&app, None).await, current);
    let id = app
        .submit_ok(&unknown_store_job(&receiver.url("/legacy")))
        .await;
    wait_webhook(&app, id, "delivered").await;
    let event = receiver.received().pop().unwrap();
    assert!(verifies(&current, &event) && verifies(&previous, &event));
    app.stop().await;
}

fn local_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn the_previous_secret_is_erased_when_its_overlap_ends(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = with_keys(&db, KEY_A);
    config.webhooks.secret_overlap = Duration::from_secs(1);
    let app = TestApp::start(config).await;
    secret(&app, None).await;
    rotate(&app, None).await;
    assert!(raw_rows(&db).await[0].previous_sealed.is_some());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let row = raw_rows(&db).await.remove(0);
        if row.previous_sealed.is_none() {
            assert!(row.previous_secret.is_none() && row.previous_expires_at.is_none());
            assert!(row.secret_sealed.is_some(), "the current one stays");
            break;
        }
        assert!(Instant::now() < deadline, "not erased: {row:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.stop().await;
}

/// The file of a SQLite test database.
fn sqlite_path(db: &TestDb) -> String {
    let rest = db.url.strip_prefix("sqlite://").unwrap();
    rest.split('?').next().unwrap().to_string()
}

fn logged(service: &Service, message_part: &str) -> Option<Value> {
    service
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains(message_part))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_makes_a_private_key_file_beside_the_database_and_reuses_it() {
    use std::os::unix::fs::PermissionsExt;
    let db = TestDb::new(Backend::Sqlite).await;
    let key_file = format!("{}.key", sqlite_path(&db));
    let client = crate::common::client();
    let first = Service::start(binary::BINARY, "serve", &db.url, &[]);
    let made = logged(&first, "back it up with the database").expect("said so in the log");
    assert_eq!(made["path"], key_file.as_str(), "{made}");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let content = std::fs::read_to_string(&key_file).unwrap();
    let webhook_secret = first.get_json(&client, "/api/webhooks/secret").await["secret"]
        .as_str()
        .unwrap()
        .to_string();
    first.terminate();
    assert!(
        !content.contains(&webhook_secret) && !format!("{made}").contains(content.trim()),
        "the key is not logged"
    );

    let second = Service::start(binary::BINARY, "serve", &db.url, &[]);
    let reused = logged(&second, "sealed with the key in this file").expect("said so");
    assert_eq!(reused["path"], key_file.as_str());
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), content);
    let again = second.get_json(&client, "/api/webhooks/secret").await;
    assert_eq!(again["secret"], webhook_secret.as_str());
    second.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_without_a_key_refuses_to_start_over_existing_secrets() {
    let Some(_turn) = crate::common::postgres_turn("refuses_to_start_over_secrets").await else {
        return;
    };
    let db = TestDb::new(Backend::Postgres).await;
    let app = TestApp::start(with_keys(&db, KEY_A)).await;
    secret(&app, None).await;
    app.stop().await;

    let run = binary::run(
        &["worker"],
        &[("DATABASE_URL", &db.url), ("RP_SECRET_KEY", "")],
    )
    .await;
    assert_ne!(run.code, 0, "{run}");
    assert!(
        run.stderr.contains("RP_SECRET_KEY") && run.stderr.contains("1 webhook secrets"),
        "{run}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_without_a_key_answers_503_for_webhooks_and_delivers_none() {
    let Some(_turn) = crate::common::postgres_turn("without_a_key_answers_503").await else {
        return;
    };
    let db = TestDb::new(Backend::Postgres).await;
    let receiver = Receiver::start(&[]).await;
    let app = TestApp::start(without_key(&db)).await;
    for (method, path) in [
        ("GET", "/api/webhooks/secret"),
        ("POST", "/api/webhooks/secret/rotate"),
    ] {
        let answer = app.call(method, path, None, None).await;
        assert_eq!(answer.code, 503, "{path}: {}", answer.text);
        assert!(
            answer.json()["error"]
                .as_str()
                .unwrap()
                .contains("RP_SECRET_KEY")
        );
    }
    let (code, body) = app.submit(&unknown_store_job(&receiver.url("/off"))).await;
    assert_eq!(code, 503, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.starts_with("webhook: ") && error.contains("RP_SECRET_KEY"),
        "{error}"
    );
    // A job without a webhook is accepted as ever.
    let id = app
        .submit_ok(&payload(&[(
            super::UNKNOWN_STORE,
            vec!["http://a.invalid/x.png".into()],
        )]))
        .await;
    assert_eq!(app.status(id).await["status"], "failed");

    // An API that has the key accepts a job with a webhook; the keyless worker leaves its
    // delivery alone.
    let keyed = TestApp::start_with(with_keys(&db, KEY_A), Roles::api_only()).await;
    let id = keyed
        .submit_ok(&unknown_store_job(&receiver.url("/keyed")))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let job = keyed.get(&format!("/api/jobs/{id}")).await.1;
    assert_eq!(job["webhook"]["state"], "pending", "{job}");
    assert_eq!(job["webhook"]["attempts"], 0, "{job}");
    assert!(receiver.received().is_empty());
    keyed.stop().await;
    app.stop().await;
}

on_both_backends!(
    a_read_and_a_rotation_leave_no_secret_in_clear,
    a_sealed_secret_moved_to_another_tenants_row_does_not_open,
    a_new_secret_key_reseals_every_row_and_keeps_the_webhook_secret,
    secrets_an_older_version_left_in_clear_are_sealed_at_start,
    the_previous_secret_is_erased_when_its_overlap_ends,
);
