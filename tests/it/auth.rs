//! Clients and keys, black-box on both backends: the `keys` command, who sees which job (every
//! endpoint × own key, another tenant's key, an admin key, no key and a revoked key), when
//! keys are needed (`auto` from loopback and from another host, `required`, `off`), the
//! per-tenant quota and submit rate, and the client's `--api-key`.

use std::time::{Duration, Instant};

use retail_pulse::app::Roles;
use retail_pulse::auth::AuthMode;
use retail_pulse::config::Config;
use serde_json::{Value, json};

use crate::common;
use crate::common::binary;
use crate::common::keys::{create_key, keys, revoke_key};
use crate::common::netns::NetNs;
use crate::common::{
    Answer, Backend, STORE_A, TestApp, TestDb, on_both_backends, payload, test_config,
};

/// How long a revoked key (or the first key, in `auto` mode) may take to be seen.
const PROPAGATION: Duration = Duration::from_secs(2);

/// A job that stays ongoing when no worker runs: one image of a known store.
fn one_image_job(n: u32) -> String {
    payload(&[(STORE_A, vec![format!("http://images.invalid/{n}.png")])]).to_string()
}

/// The API alone: jobs stay ongoing, so they can be cancelled and counted against quotas.
async fn api_only(config: Config) -> TestApp {
    TestApp::start_with(config, Roles::api_only()).await
}

fn assert_401(answer: &Answer, what: &str) {
    assert_eq!(answer.code, 401, "{what}: {}", answer.text);
    assert_eq!(
        answer.header("www-authenticate"),
        Some("Bearer"),
        "{what}: 401 without WWW-Authenticate: Bearer"
    );
    assert!(
        answer.json()["error"].is_string(),
        "{what}: 401 body {}",
        answer.text
    );
}

/// Polls `probe` until it answers `code`; panics after `within`. Returns how long it took.
async fn until_code(
    app: &TestApp,
    path: &str,
    key: Option<&str>,
    code: u16,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let answer = app.call("GET", path, key, None).await;
        if answer.code == code {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "GET {path} still {} after {within:?}: {}",
            answer.code,
            answer.text
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// --- The keys command -------------------------------------------------------------------

async fn keys_create_prints_only_the_key_and_list_never_shows_it(backend: Backend) {
    let db = TestDb::new(backend).await;
    let created = keys(&db.url, &["create", "--name", "field-app"]).await;
    assert_eq!(created.code, 0, "{created}");
    let key = created.stdout.trim_end_matches('\n');
    assert_eq!(
        created.stdout.lines().count(),
        1,
        "stdout is the key alone: {created}"
    );
    assert!(key.starts_with("rp_"), "{created}");
    assert_eq!(key.len(), 67, "rp_ and 64 hex digits: {key}");
    assert!(
        created.stderr.contains("field-app") && !created.stderr.contains(key),
        "stderr says what was made, without the key: {created}"
    );
    let admin = create_key(&db.url, "ops", &["--admin", "--tenant", "operations"]).await;
    assert_ne!(admin, key);
    let limited = create_key(
        &db.url,
        "partner",
        &["--max-unfinished-images", "0", "--submits-per-minute", "30"],
    )
    .await;

    let list = keys(&db.url, &["list"]).await;
    assert_eq!(list.code, 0, "{list}");
    let lines: Vec<&str> = list.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "a header and three keys: {list}");
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("LAST USED"),
        "{list}"
    );
    let field = lines.iter().find(|l| l.starts_with("field-app")).unwrap();
    let words: Vec<&str> = field.split_whitespace().collect();
    assert_eq!(
        words[1], "field-app",
        "the tenant defaults to the name: {field}"
    );
    assert_eq!(words[2], "no", "{field}");
    let ops = lines.iter().find(|l| l.starts_with("ops")).unwrap();
    assert!(ops.contains("operations") && ops.contains("yes"), "{ops}");
    let partner = lines.iter().find(|l| l.starts_with("partner")).unwrap();
    assert!(partner.ends_with("unlimited       30"), "{partner}");
    for secret in [key, admin.as_str(), limited.as_str()] {
        assert!(
            !list.stdout.contains(&secret[3..20]),
            "list shows a key: {list}"
        );
        assert!(
            !list.stderr.contains(&secret[3..20]),
            "list shows a key: {list}"
        );
    }
    assert!(!list.stdout.contains("rp_"), "{list}");

    // Names are unique and plain; a duplicate or a bad one creates nothing.
    let again = keys(&db.url, &["create", "--name", "field-app"]).await;
    assert_ne!(again.code, 0, "{again}");
    assert!(again.stderr.contains("already exists"), "{again}");
    assert!(again.stdout.is_empty(), "{again}");
    let bad = keys(&db.url, &["create", "--name", "bad name"]).await;
    assert_ne!(bad.code, 0, "{bad}");
    assert!(bad.stderr.contains("key name `bad name`"), "{bad}");
    let unknown = keys(&db.url, &["revoke", "nobody"]).await;
    assert_ne!(unknown.code, 0, "{unknown}");
    assert!(
        unknown.stderr.contains("no key named `nobody`"),
        "{unknown}"
    );
    assert_eq!(keys(&db.url, &["list"]).await.stdout.lines().count(), 4);
}

async fn a_revoked_key_is_refused_by_a_running_server_within_two_seconds(backend: Backend) {
    let db = TestDb::new(backend).await;
    let key = create_key(&db.url, "field-app", &[]).await;
    let app = api_only(test_config(&db)).await;
    // Used, so the server holds it in its cache.
    for _ in 0..3 {
        let answer = app.call("GET", "/api/jobs", Some(&key), None).await;
        assert_eq!(answer.code, 200, "{}", answer.text);
    }
    revoke_key(&db.url, "field-app").await;
    let took = until_code(&app, "/api/jobs", Some(&key), 401, PROPAGATION).await;
    eprintln!("revocation seen after {took:?}");
    let answer = app.call("GET", "/api/jobs", Some(&key), None).await;
    assert_401(&answer, "revoked key");
    app.stop().await;

    let list = keys(&db.url, &["list"]).await;
    let row = list.stdout.lines().nth(1).unwrap().to_string();
    let cells: Vec<&str> = row.split_whitespace().collect();
    // NAME TENANT ADMIN CREATED LAST-USED REVOKED …: both times are set.
    assert!(cells[4].starts_with("20"), "last used is recorded: {list}");
    assert!(cells[5].starts_with("20"), "revoked is recorded: {list}");
    let again = keys(&db.url, &["revoke", "field-app"]).await;
    assert_eq!(again.code, 0, "{again}");
    assert!(again.stderr.contains("already revoked"), "{again}");
}

/// `last used` is written once, not on every request: a second use within the minute (after
/// the server's lookup cache has expired, so the key is read from the database again) leaves
/// it as it was.
async fn last_used_is_recorded_without_a_write_per_request(backend: Backend) {
    let db = TestDb::new(backend).await;
    let key = create_key(&db.url, "app", &[]).await;
    let last_used = || async {
        let list = keys(&db.url, &["list"]).await;
        let row = list.stdout.lines().nth(1).unwrap().to_string();
        row.split_whitespace().nth(4).unwrap().to_string()
    };
    assert_eq!(last_used().await, "-", "never used yet");
    let app = api_only(test_config(&db)).await;
    assert_eq!(
        app.call("GET", "/api/jobs", Some(&key), None).await.code,
        200
    );
    let deadline = Instant::now() + PROPAGATION;
    let first = loop {
        let seen = last_used().await;
        if seen != "-" {
            break seen;
        }
        assert!(Instant::now() < deadline, "last used never recorded");
    };
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for _ in 0..20 {
        assert_eq!(
            app.call("GET", "/api/jobs", Some(&key), None).await.code,
            200
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(last_used().await, first, "rewritten within the minute");
    app.stop().await;
}

// --- Who sees what ------------------------------------------------------------------------

struct Tenants {
    alice: String,
    bob: String,
    admin: String,
    revoked: String,
}

async fn tenants(db: &TestDb) -> Tenants {
    let t = Tenants {
        alice: create_key(&db.url, "alice-app", &["--tenant", "alice"]).await,
        bob: create_key(&db.url, "bob-app", &["--tenant", "bob"]).await,
        admin: create_key(&db.url, "ops", &["--admin"]).await,
        revoked: create_key(&db.url, "alice-old", &["--tenant", "alice"]).await,
    };
    revoke_key(&db.url, "alice-old").await;
    t
}

async fn submit_as(app: &TestApp, key: &str, n: u32) -> i64 {
    let answer = app
        .call("POST", "/api/submit/", Some(key), Some(one_image_job(n)))
        .await;
    assert_eq!(answer.code, 201, "{}", answer.text);
    answer.json()["job_id"].as_i64().unwrap()
}

fn listed(answer: &Answer) -> Vec<i64> {
    assert_eq!(answer.code, 200, "{}", answer.text);
    answer.json()["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_i64().unwrap())
        .collect()
}

/// Every endpoint × {own key, other tenant's key, admin key, no key, revoked key}.
async fn every_endpoint_shows_a_tenant_only_its_own_jobs(backend: Backend) {
    let db = TestDb::new(backend).await;
    let t = tenants(&db).await;
    let app = api_only(test_config(&db)).await;
    let none: Option<&str> = None;

    // submit: keys submit into their own tenant; no key and a revoked key are refused.
    let a = submit_as(&app, &t.alice, 1).await;
    let b = submit_as(&app, &t.bob, 2).await;
    let o = submit_as(&app, &t.admin, 3).await;
    for (key, what) in [(none, "no key"), (Some(t.revoked.as_str()), "revoked key")] {
        let answer = app
            .call("POST", "/api/submit/", key, Some(one_image_job(4)))
            .await;
        assert_401(&answer, &format!("submit with {what}"));
    }
    let job = |key: &str, id: i64| {
        let key = key.to_string();
        let app = &app;
        async move {
            app.call("GET", &format!("/api/jobs/{id}"), Some(&key), None)
                .await
        }
    };
    assert_eq!(job(&t.alice, a).await.json()["tenant"], "alice");
    assert_eq!(job(&t.bob, b).await.json()["tenant"], "bob");
    assert_eq!(job(&t.admin, o).await.json()["tenant"], "ops");

    // status: the assignment's shape for its owner and an admin; 400 {} for anyone else,
    // exactly as for a job that does not exist.
    let status = |key: Option<&str>, id: i64| {
        let key = key.map(str::to_string);
        let app = &app;
        async move {
            app.call(
                "GET",
                &format!("/api/status?jobid={id}"),
                key.as_deref(),
                None,
            )
            .await
        }
    };
    let own = status(Some(&t.alice), a).await;
    assert_eq!(own.code, 200);
    assert_eq!(
        own.json(),
        json!({"status": "ongoing", "job_id": a.to_string()})
    );
    let admin = status(Some(&t.admin), a).await;
    assert_eq!((admin.code, admin.json()), (200, own.json()));
    let other = status(Some(&t.bob), a).await;
    let missing = status(Some(&t.bob), 999_999).await;
    assert_eq!((other.code, other.text.as_str()), (400, "{}"));
    assert_eq!((missing.code, missing.text.as_str()), (400, "{}"));
    assert_401(&status(None, a).await, "status without a key");
    assert_401(
        &status(Some(&t.revoked), a).await,
        "status with a revoked key",
    );

    // the jobs list: own tenant only; an admin sees all, or one tenant with ?tenant=.
    let list = |key: Option<&str>, query: &str| {
        let key = key.map(str::to_string);
        let path = format!("/api/jobs{query}");
        let app = &app;
        async move { app.call("GET", &path, key.as_deref(), None).await }
    };
    assert_eq!(listed(&list(Some(&t.alice), "").await), vec![a]);
    assert_eq!(listed(&list(Some(&t.bob), "").await), vec![b]);
    assert_eq!(listed(&list(Some(&t.admin), "").await), vec![o, b, a]);
    assert_eq!(
        listed(&list(Some(&t.admin), "?tenant=alice").await),
        vec![a]
    );
    assert_eq!(
        listed(&list(Some(&t.bob), "?tenant=alice").await),
        Vec::<i64>::new(),
        "a tenant filter never widens a non-admin's view"
    );
    assert_401(&list(None, "").await, "list without a key");
    assert_401(&list(Some(&t.revoked), "").await, "list with a revoked key");

    // one job and its images: 404 for another tenant, worded as for a missing job.
    for suffix in ["", "/images"] {
        let path = |id: i64| format!("/api/jobs/{id}{suffix}");
        let own = app.call("GET", &path(a), Some(&t.alice), None).await;
        assert_eq!(own.code, 200, "{}", own.text);
        let admin = app.call("GET", &path(a), Some(&t.admin), None).await;
        assert_eq!(admin.code, 200, "{}", admin.text);
        assert_eq!(admin.json(), own.json());
        let other = app.call("GET", &path(a), Some(&t.bob), None).await;
        assert_eq!(other.code, 404, "{}", other.text);
        assert_eq!(other.json(), json!({"error": format!("no job {a}")}));
        let missing_id = a + 1000;
        let missing = app.call("GET", &path(missing_id), Some(&t.bob), None).await;
        assert_eq!(
            missing.json(),
            json!({"error": format!("no job {missing_id}")})
        );
        assert_401(
            &app.call("GET", &path(a), None, None).await,
            "job without a key",
        );
        assert_401(
            &app.call("GET", &path(a), Some(&t.revoked), None).await,
            "job with a revoked key",
        );
    }

    // cancel: another tenant's attempt is a 404 and changes nothing.
    let cancel = |key: Option<&str>, id: i64| {
        let key = key.map(str::to_string);
        let app = &app;
        async move {
            app.call(
                "POST",
                &format!("/api/jobs/{id}/cancel"),
                key.as_deref(),
                None,
            )
            .await
        }
    };
    let other = cancel(Some(&t.bob), a).await;
    assert_eq!(other.code, 404, "{}", other.text);
    assert_eq!(other.json(), json!({"error": format!("no job {a}")}));
    assert_401(&cancel(None, a).await, "cancel without a key");
    assert_401(
        &cancel(Some(&t.revoked), a).await,
        "cancel with a revoked key",
    );
    assert_eq!(status(Some(&t.alice), a).await.json()["status"], "ongoing");
    let own = cancel(Some(&t.alice), a).await;
    assert_eq!(
        (own.code, &own.json()["status"]),
        (200, &json!("cancelled"))
    );
    let admin = cancel(Some(&t.admin), b).await;
    assert_eq!(
        (admin.code, &admin.json()["status"]),
        (200, &json!("cancelled"))
    );

    // metrics: admins only.
    let metrics = |key: Option<&str>| {
        let key = key.map(str::to_string);
        let app = &app;
        async move { app.call("GET", "/metrics", key.as_deref(), None).await }
    };
    let admin = metrics(Some(&t.admin)).await;
    assert_eq!(admin.code, 200, "{}", admin.text);
    assert!(admin.text.contains("retail_pulse_"), "{}", admin.text);
    for (key, what) in [(&t.alice, "own"), (&t.bob, "other")] {
        let answer = metrics(Some(key)).await;
        assert_eq!(answer.code, 403, "{what} key on /metrics: {}", answer.text);
        assert!(answer.json()["error"].as_str().unwrap().contains("admin"));
    }
    assert_401(&metrics(None).await, "metrics without a key");
    assert_401(
        &metrics(Some(&t.revoked)).await,
        "metrics with a revoked key",
    );

    // Health and the API description stay open.
    for path in ["/healthz", "/readyz", "/api/openapi.json"] {
        assert_eq!(app.call("GET", path, None, None).await.code, 200, "{path}");
    }
    app.stop().await;
}

/// Idempotency keys are per tenant: another tenant's use of the same key is a new job, and
/// never names the first tenant's job.
async fn idempotency_keys_are_scoped_to_the_tenant(backend: Backend) {
    let db = TestDb::new(backend).await;
    let t = tenants(&db).await;
    let app = api_only(test_config(&db)).await;
    let post = |key: &str, body: String| {
        let req = app
            .client
            .post(format!("{}/api/submit/", app.base))
            .bearer_auth(key)
            .header("Idempotency-Key", "order-1")
            .body(body);
        async move {
            let res = req.send().await.unwrap();
            let code = res.status().as_u16();
            let body: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
            (code, body)
        }
    };
    let (code, first) = post(&t.alice, one_image_job(1)).await;
    assert_eq!(code, 201, "{first}");
    let (code, again) = post(&t.alice, one_image_job(1)).await;
    assert_eq!((code, &again), (201, &first), "a replay within the tenant");
    let (code, same_body) = post(&t.bob, one_image_job(1)).await;
    assert_eq!(code, 201, "{same_body}");
    assert_ne!(same_body, first, "another tenant's key is not a replay");
    let (code, other_body) = post(&t.bob, one_image_job(2)).await;
    assert_eq!(
        code, 422,
        "bob reused his own key with another body: {other_body}"
    );
    let message = other_body["error"].as_str().unwrap();
    assert!(
        message.contains(&same_body["job_id"].to_string())
            && !message.contains(&format!("job {}", first["job_id"])),
        "{message}"
    );
    app.stop().await;
}

// --- When keys are needed -----------------------------------------------------------------

async fn auto_mode_serves_loopback_without_a_key_until_the_first_key_exists(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = api_only(test_config(&db)).await;
    let answer = app
        .call("POST", "/api/submit/", None, Some(one_image_job(1)))
        .await;
    assert_eq!(answer.code, 201, "{}", answer.text);
    let early = answer.json()["job_id"].as_i64().unwrap();
    let job = app
        .call("GET", &format!("/api/jobs/{early}"), None, None)
        .await;
    assert_eq!(job.json()["tenant"], "default");
    assert_eq!(app.call("GET", "/metrics", None, None).await.code, 200);

    let key = create_key(&db.url, "first", &[]).await;
    until_code(&app, "/api/jobs", None, 401, PROPAGATION).await;
    assert_401(
        &app.call("GET", "/api/jobs", None, None).await,
        "keyless after a key exists",
    );
    let answer = app.call("GET", "/api/jobs", None, None).await;
    assert!(
        answer.json()["error"].as_str().unwrap().contains("Bearer"),
        "{}",
        answer.text
    );
    // The new key's tenant does not see the jobs made before keys.
    assert_eq!(
        listed(&app.call("GET", "/api/jobs", Some(&key), None).await),
        Vec::<i64>::new()
    );
    // Revoking every key does not reopen the server.
    revoke_key(&db.url, "first").await;
    tokio::time::sleep(PROPAGATION).await;
    assert_401(
        &app.call("GET", "/api/jobs", None, None).await,
        "after every key is revoked",
    );
    app.stop().await;
}

/// Behind a reverse proxy the operator named, a loopback peer is that proxy relaying anyone:
/// `auto` serves nobody without a key, whatever `X-Forwarded-For` says.
async fn auto_mode_behind_a_trusted_proxy_serves_no_one_without_a_key(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = test_config(&db);
    config.api.trusted_proxies = retail_pulse::config::TrustedProxies::parse("127.0.0.1").unwrap();
    let app = api_only(config).await;
    let answer = app.call("GET", "/api/jobs", None, None).await;
    assert_401(&answer, "auto behind a proxy, no key");
    for claimed in ["127.0.0.1", "203.0.113.5"] {
        let relayed = app
            .client
            .get(format!("{}/api/jobs", app.base))
            .header("X-Forwarded-For", claimed)
            .send()
            .await
            .unwrap();
        assert_eq!(relayed.status().as_u16(), 401, "relayed for {claimed}");
    }
    let key = create_key(&db.url, "app", &[]).await;
    assert_eq!(
        app.call("GET", "/api/jobs", Some(&key), None).await.code,
        200
    );
    app.stop().await;
}

async fn required_mode_needs_a_key_even_on_loopback_and_off_mode_never_does(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = test_config(&db);
    config.api.auth.mode = AuthMode::Required;
    let app = api_only(config.clone()).await;
    let answer = app.call("GET", "/api/jobs", None, None).await;
    assert_401(&answer, "required mode, no keys at all");
    assert!(
        answer.json()["error"]
            .as_str()
            .unwrap()
            .contains("keys create")
    );
    let malformed = app
        .client
        .get(format!("{}/api/jobs", app.base))
        .header("Authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status().as_u16(), 401);
    let key = create_key(&db.url, "app", &[]).await;
    assert_eq!(
        app.call("GET", "/api/jobs", Some(&key), None).await.code,
        200
    );
    assert_eq!(app.call("GET", "/healthz", None, None).await.code, 200);
    app.stop().await;

    config.api.auth.mode = AuthMode::Off;
    let app = api_only(config).await;
    let answer = app
        .call("POST", "/api/submit/", None, Some(one_image_job(1)))
        .await;
    assert_eq!(
        answer.code, 201,
        "off: no key needed even though keys exist"
    );
    let id = answer.json()["job_id"].as_i64().unwrap();
    let job = app
        .call("GET", &format!("/api/jobs/{id}"), None, None)
        .await;
    assert_eq!(job.json()["tenant"], "default");
    assert_eq!(app.call("GET", "/metrics", None, None).await.code, 200);
    app.stop().await;
}

/// `auto` with no key from a client on another host (a network namespace): refused with
/// instructions, whatever `X-Forwarded-For` claims; served once it has a key.
async fn auto_mode_refuses_a_client_off_loopback_until_it_has_a_key(backend: Backend) {
    let Some(netns) = NetNs::for_test("auto_mode_refuses_a_client_off_loopback_until_it_has_a_key")
    else {
        return;
    };
    let db = TestDb::new(backend).await;
    let app = TestApp::start_on(test_config(&db), Roles::api_only(), "0.0.0.0:0").await;
    let remote = format!("http://{}:{}", netns.host_addr, app.port());
    let curl = |args: Vec<String>| {
        let cmd_args = args.clone();
        let netns = &netns;
        async move {
            let out = tokio::task::block_in_place(|| {
                let args: Vec<&str> = cmd_args.iter().map(String::as_str).collect();
                netns.run("curl", &args)
            });
            assert!(
                out.status.success(),
                "curl {args:?} in the namespace failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            parse_curl(&String::from_utf8_lossy(&out.stdout))
        }
    };
    let get = |path: &str, extra: &[&str]| {
        let mut args = vec![
            "-sS".to_string(),
            "-i".to_string(),
            "--max-time".to_string(),
            "20".to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(format!("{remote}{path}"));
        args
    };

    let (code, headers, body) = curl(get("/api/jobs", &[])).await;
    assert_eq!(code, 401, "{body}");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{headers}"
    );
    let message = serde_json::from_str::<Value>(&body).unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("no API keys yet") && message.contains("retail-pulse keys create"),
        "{message}"
    );
    let (code, _, body) = curl(get(
        "/api/jobs",
        &[
            "-H",
            "X-Forwarded-For: 127.0.0.1",
            "-H",
            "X-Real-IP: 127.0.0.1",
            "-H",
            "Forwarded: for=127.0.0.1",
        ],
    ))
    .await;
    assert_eq!(code, 401, "forwarding headers are not trusted: {body}");
    let mut submit = get("/api/submit/", &["-X", "POST", "--data-binary"]);
    submit.insert(submit.len() - 1, one_image_job(1));
    let (code, _, body) = curl(submit).await;
    assert_eq!(code, 401, "{body}");
    let (code, _, _) = curl(get("/healthz", &[])).await;
    assert_eq!(code, 200, "health stays open");
    // The same server serves loopback without a key.
    assert_eq!(app.call("GET", "/api/jobs", None, None).await.code, 200);

    let key = create_key(&db.url, "remote-app", &[]).await;
    let bearer = format!("Authorization: Bearer {key}");
    let (code, _, body) = curl(get("/api/jobs", &["-H", &bearer])).await;
    assert_eq!(code, 200, "{body}");
    until_code(&app, "/api/jobs", None, 401, PROPAGATION).await;
    app.stop().await;
}

/// `curl -i` output: status code, header block, body.
fn parse_curl(out: &str) -> (u16, String, String) {
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((out, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {out}"));
    (code, head.to_string(), body.to_string())
}

/// `serve --metrics-bind`: `/metrics` is open there, and admin-only on the API's address.
async fn metrics_bind_serves_metrics_without_a_key(backend: Backend) {
    let db = TestDb::new(backend).await;
    create_key(&db.url, "app", &[]).await;
    let service = common::service::Service::start(
        binary::BINARY,
        "serve",
        &db.url,
        &[
            ("RP_METRICS_BIND", "127.0.0.1:0"),
            ("RP_NO_WORKERS", "true"),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let ops = loop {
        let found = service.lines.lock().unwrap().iter().find_map(|line| {
            let v: Value = serde_json::from_str(line).ok()?;
            (v["message"] == "serving metrics and health")
                .then(|| v["addr"].as_str().unwrap().to_string())
        });
        if let Some(addr) = found {
            break format!("http://{addr}");
        }
        assert!(Instant::now() < deadline, "no metrics address logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let client = common::client();
    let get = |url: String| {
        let client = client.clone();
        async move {
            let res = client.get(url).send().await.unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        }
    };
    let (code, text) = get(format!("{ops}/metrics")).await;
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("retail_pulse_"), "{text}");
    assert_eq!(get(format!("{ops}/readyz")).await.0, 200);
    assert_eq!(get(format!("{ops}/api/jobs")).await.0, 404, "no API there");
    assert_eq!(get(format!("{}/metrics", service.base)).await.0, 401);
}

// --- Quotas and rates ---------------------------------------------------------------------

async fn a_submit_over_the_tenant_quota_gets_429_with_retry_after(backend: Backend) {
    let db = TestDb::new(backend).await;
    let alice = create_key(&db.url, "alice", &[]).await;
    let bob = create_key(&db.url, "bob", &[]).await;
    let big = create_key(&db.url, "big", &["--max-unfinished-images", "100"]).await;
    let mut config = test_config(&db);
    config.api.auth.max_unfinished_images = 5;
    let app = api_only(config).await;
    let job = |store: &str, n: usize| {
        let urls = (0..n)
            .map(|i| format!("http://images.invalid/{i}.png"))
            .collect();
        payload(&[(store, urls)]).to_string()
    };
    let submit = |key: &str, body: String| {
        let key = key.to_string();
        let app = &app;
        async move {
            app.call("POST", "/api/submit/", Some(&key), Some(body))
                .await
        }
    };
    let first = submit(&alice, job(STORE_A, 3)).await;
    assert_eq!(first.code, 201, "{}", first.text);
    let over = submit(&alice, job(STORE_A, 3)).await;
    assert_eq!(over.code, 429, "{}", over.text);
    let retry: u64 = over
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=300).contains(&retry), "{retry}");
    let message = over.json()["error"].as_str().unwrap().to_string();
    assert!(
        message.contains("quota of 5") && message.contains("3 unfinished"),
        "{message}"
    );
    // Up to the quota exactly is fine; images of unknown stores never count (they fail at once).
    assert_eq!(submit(&alice, job(STORE_A, 2)).await.code, 201);
    assert_eq!(submit(&alice, job("S-UNKNOWN", 10)).await.code, 201);
    assert_eq!(submit(&alice, job(STORE_A, 1)).await.code, 429);
    // A job that could never fit is too large, not "later".
    let never = submit(&bob, job(STORE_A, 6)).await;
    assert_eq!(never.code, 413, "{}", never.text);
    assert!(
        never.json()["error"]
            .as_str()
            .unwrap()
            .starts_with("visits")
    );
    // Quotas are per tenant; a key's override applies to its tenant.
    assert_eq!(submit(&bob, job(STORE_A, 5)).await.code, 201);
    assert_eq!(submit(&big, job(STORE_A, 60)).await.code, 201);
    // Cancelling frees the quota.
    let id = first.json()["job_id"].as_i64().unwrap();
    let cancelled = app
        .call(
            "POST",
            &format!("/api/jobs/{id}/cancel"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(cancelled.code, 200, "{}", cancelled.text);
    assert_eq!(submit(&alice, job(STORE_A, 3)).await.code, 201);
    app.stop().await;
}

async fn submits_over_the_tenant_rate_get_429_with_retry_after(backend: Backend) {
    let db = TestDb::new(backend).await;
    let alice = create_key(&db.url, "alice", &[]).await;
    let bob = create_key(&db.url, "bob", &[]).await;
    let free = create_key(&db.url, "free", &["--submits-per-minute", "0"]).await;
    let mut config = test_config(&db);
    config.api.auth.submits_per_minute = 3;
    let app = api_only(config).await;
    let submit = |key: &str, n: u32| {
        let key = key.to_string();
        let app = &app;
        async move {
            app.call("POST", "/api/submit/", Some(&key), Some(one_image_job(n)))
                .await
        }
    };
    let keyed = |key: &str, n: u32, idempotency: &str| {
        app.client
            .post(format!("{}/api/submit/", app.base))
            .bearer_auth(key)
            .header("Idempotency-Key", idempotency)
            .body(one_image_job(n))
            .send()
    };
    for n in 0..2 {
        let answer = submit(&alice, n).await;
        assert_eq!(answer.code, 201, "submit {n} of the burst: {}", answer.text);
    }
    let third = keyed(&alice, 2, "visit-2").await.unwrap();
    assert_eq!(third.status().as_u16(), 201);
    let third: Value = serde_json::from_slice(&third.bytes().await.unwrap()).unwrap();
    let limited = submit(&alice, 3).await;
    assert_eq!(limited.code, 429, "{}", limited.text);
    // A replay creates nothing and takes no token: the client retrying safely gets its job.
    for _ in 0..3 {
        let replay = keyed(&alice, 2, "visit-2").await.unwrap();
        assert_eq!(replay.status().as_u16(), 201);
        let again: Value = serde_json::from_slice(&replay.bytes().await.unwrap()).unwrap();
        assert_eq!(again, third);
    }
    let new_key = keyed(&alice, 4, "visit-4").await.unwrap();
    assert_eq!(new_key.status().as_u16(), 429, "a new key is a new submit");
    let retry: u64 = limited
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    // 3 a minute: the next token in 20 s, less the time the burst took.
    assert!((15..=20).contains(&retry), "Retry-After {retry}");
    assert!(
        limited.json()["error"]
            .as_str()
            .unwrap()
            .contains("3 submits a minute"),
        "{}",
        limited.text
    );
    // Refused requests are not jobs; other tenants have their own bucket.
    assert_eq!(
        listed(&app.call("GET", "/api/jobs", Some(&alice), None).await).len(),
        3
    );
    for n in 0..3 {
        assert_eq!(submit(&bob, n).await.code, 201);
    }
    for n in 0..10 {
        assert_eq!(submit(&free, n).await.code, 201, "0 is unlimited");
    }
    app.stop().await;
}

// --- The client and the API description -----------------------------------------------------

async fn the_cli_client_sends_its_api_key(backend: Backend) {
    let db = TestDb::new(backend).await;
    let key = create_key(&db.url, "cli", &[]).await;
    let app = api_only(test_config(&db)).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("job.json");
    std::fs::write(&file, one_image_job(1)).unwrap();
    let file = file.to_str().unwrap();
    let without = binary::run(&["submit", file, "--server", &app.base], &[]).await;
    assert_eq!(without.code, 2, "{without}");
    assert!(without.stderr.contains("HTTP 401"), "{without}");
    let with = binary::run(
        &["submit", file, "--server", &app.base, "--api-key", &key],
        &[],
    )
    .await;
    assert_eq!(with.code, 0, "{with}");
    let id = with.stdout.trim().to_string();
    let status = binary::run(
        &["status", &id, "--json", "--server", &app.base],
        &[("RP_API_KEY", &key)],
    )
    .await;
    assert_eq!(status.code, 0, "{status}");
    let job: Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(job["tenant"], "cli");
    assert!(!status.stderr.contains(&key) && !with.stderr.contains(&key));
    app.stop().await;
}

on_both_backends!(
    keys_create_prints_only_the_key_and_list_never_shows_it,
    a_revoked_key_is_refused_by_a_running_server_within_two_seconds,
    last_used_is_recorded_without_a_write_per_request,
    every_endpoint_shows_a_tenant_only_its_own_jobs,
    idempotency_keys_are_scoped_to_the_tenant,
    auto_mode_serves_loopback_without_a_key_until_the_first_key_exists,
    required_mode_needs_a_key_even_on_loopback_and_off_mode_never_does,
    auto_mode_behind_a_trusted_proxy_serves_no_one_without_a_key,
    auto_mode_refuses_a_client_off_loopback_until_it_has_a_key,
    metrics_bind_serves_metrics_without_a_key,
    a_submit_over_the_tenant_quota_gets_429_with_retry_after,
    submits_over_the_tenant_rate_get_429_with_retry_after,
    the_cli_client_sends_its_api_key,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_the_bearer_scheme_and_the_401_and_429_answers() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = api_only(test_config(&db)).await;
    let doc = app
        .call("GET", "/api/openapi.json", None, None)
        .await
        .json();
    let scheme = &doc["components"]["securitySchemes"]["api_key"];
    assert_eq!(scheme["type"], "http", "{scheme}");
    assert_eq!(scheme["scheme"], "bearer", "{scheme}");
    let protected = [
        ("/api/submit/", "post"),
        ("/api/status", "get"),
        ("/api/jobs", "get"),
        ("/api/jobs/{job_id}", "get"),
        ("/api/jobs/{job_id}/images", "get"),
        ("/api/jobs/{job_id}/cancel", "post"),
        ("/metrics", "get"),
    ];
    for (path, method) in protected {
        let op = &doc["paths"][path][method];
        assert_eq!(op["security"], json!([{"api_key": []}]), "{method} {path}");
        let unauthorized = &op["responses"]["401"];
        assert!(
            unauthorized["content"]["application/json"]["schema"].is_object(),
            "{method} {path} documents no 401 body"
        );
    }
    let too_many = &doc["paths"]["/api/submit/"]["post"]["responses"]["429"];
    assert!(too_many["headers"]["Retry-After"].is_object(), "{too_many}");
    assert!(doc["paths"]["/metrics"]["get"]["responses"]["403"].is_object());
    for open in ["/healthz", "/readyz"] {
        assert!(
            doc["paths"][open]["get"]["security"].is_null(),
            "{open} is open"
        );
    }
    app.stop().await;
}
