//! The dashboard in a real headless Chromium over WebDriver (see `ui/browser.rs`), against the
//! app started in this process on each backend. With RP_SCREENSHOTS=1 (`scripts/screenshots`)
//! the tests also save the pages at desktop and phone widths into docs/img/.

mod browser;

use std::time::Duration;

use fantoccini::{Client, Locator};
use retail_pulse::worker::DelayRange;
use serde_json::{Value, json};

use crate::common;
use crate::common::{
    Backend, ImageServer, STORE_A, STORE_B, TestApp, TestDb, on_both_backends, payload, test_config,
};
use browser::{DESKTOP, PHONE, screenshot, text, wait_until, with_browser};

const WAIT: Duration = Duration::from_secs(30);

/// Screenshots come from the SQLite run only (the pages are the same on both).
fn shots(backend: Backend) -> bool {
    backend == Backend::Sqlite
}

/// A fresh database, the image server and the app (workers included, no processing delay).
async fn setup(backend: Backend) -> (TestDb, ImageServer, TestApp) {
    let db = TestDb::new(backend).await;
    let images = ImageServer::start().await;
    let app = TestApp::start(test_config(&db)).await;
    (db, images, app)
}

async fn click(b: &Client, css: &str) {
    b.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
}

async fn open(client: &Client, app_base: &str, path: &str) {
    client
        .goto(&format!("{app_base}{path}"))
        .await
        .unwrap_or_else(|e| panic!("open {path}: {e}"));
}

async fn overview_lists_a_submitted_job(backend: Backend) {
    if !browser::available("overview_lists_a_submitted_job") {
        return;
    }
    let (db, images, app) = setup(backend).await;
    let done = app
        .submit_ok(&payload(&[(STORE_A, vec![images.image(20, 10, "png")])]))
        .await;
    app.wait_finished(done, WAIT).await;
    with_browser(move |b| async move {
        open(&b, &app.base, "/").await;
        // `/` leads to the overview.
        assert!(b.current_url().await.unwrap().path().ends_with("/ui/"));
        assert_eq!(b.title().await.unwrap(), "Overview · Retail Pulse");
        let link = b
            .find(Locator::Css(&format!("a[href='/ui/jobs/{done}']")))
            .await
            .expect("the job is listed");
        assert_eq!(link.text().await.unwrap(), format!("Job {done}"));
        // This process's workers registered; the job counts as completed.
        wait_until(
            &b,
            "document.querySelector('#sec-workers .badge-alive')",
            WAIT,
        )
        .await;
        let completed = text(&b, ".tile-completed .tile-value").await;
        assert_eq!(completed, "1");
        link.click().await.unwrap();
        wait_until(&b, &format!("location.pathname == '/ui/jobs/{done}'"), WAIT).await;
        assert_eq!(text(&b, "#job-status").await, "COMPLETED");
        app.stop().await;
        drop(db);
    })
    .await;
}

async fn a_job_submitted_through_the_form_opens_its_page(backend: Backend) {
    if !browser::available("a_job_submitted_through_the_form_opens_its_page") {
        return;
    }
    let (db, images, app) = setup(backend).await;
    let good = payload(&[(STORE_A, vec![images.image(30, 20, "png")])]);
    // The API's own answer to a bad job: the form must show the same.
    let bad =
        json!({"count": 2, "visits": [{"store_id": STORE_A, "image_url": [], "visit_time": "x"}]});
    let (code, api_error) = app.submit(&bad).await;
    assert_eq!(code, 400);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("job.json");
    std::fs::write(&file, good.to_string()).unwrap();
    with_browser(move |b| async move {
        // Pasted: refused with the API's message, the text kept for fixing.
        open(&b, &app.base, "/ui/submit").await;
        set_value(&b, "#job", &bad.to_string()).await;
        click(&b, "form.submit-form button[type=submit]").await;
        wait_until(&b, "document.getElementById('submit-error')", WAIT).await;
        assert_eq!(
            text(&b, "#submit-error").await,
            api_error["error"].as_str().unwrap()
        );
        assert!(text(&b, ".alert").await.contains("HTTP 400"));
        let kept = b
            .execute("return document.getElementById('job').value;", vec![])
            .await
            .unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(kept.as_str().unwrap()).unwrap(),
            bad
        );
        if shots(backend) {
            screenshot(&b, "submit", DESKTOP).await;
        }

        // Pasted and good: on to the new job's page.
        set_value(&b, "#job", &good.to_string()).await;
        click(&b, "form.submit-form button[type=submit]").await;
        wait_until(&b, "/^\\/ui\\/jobs\\/\\d+$/.test(location.pathname)", WAIT).await;
        let id = job_id_in(&b).await;
        assert!(text(&b, ".notice").await.contains("Job submitted"));
        let (code, job) = app.get(&format!("/api/jobs/{id}")).await;
        assert_eq!(code, 200);
        assert_eq!(job["images"]["total"], 1);

        // Uploaded as a file: another job.
        open(&b, &app.base, "/ui/submit").await;
        b.find(Locator::Id("file"))
            .await
            .unwrap()
            .send_keys(&file.display().to_string())
            .await
            .unwrap();
        click(&b, "form.submit-form button[type=submit]").await;
        wait_until(
            &b,
            &format!("/^\\/ui\\/jobs\\/\\d+$/.test(location.pathname) && location.pathname != '/ui/jobs/{id}'"),
            WAIT,
        )
        .await;
        let second = job_id_in(&b).await;
        assert_eq!(second, id + 1);
        app.stop().await;
        drop((db, dir));
    })
    .await;
}

async fn set_value(b: &Client, css: &str, value: &str) {
    b.execute(
        "document.querySelector(arguments[0]).value = arguments[1];",
        vec![json!(css), json!(value)],
    )
    .await
    .expect("set a field");
}

async fn job_id_in(b: &Client) -> i64 {
    let url = b.current_url().await.unwrap();
    url.path()
        .rsplit('/')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a job page: {url}"))
}

async fn progress_bar_reaches_done_without_a_reload(backend: Backend) {
    if !browser::available("progress_bar_reaches_done_without_a_reload") {
        return;
    }
    let db = TestDb::new(backend).await;
    let images = ImageServer::start().await;
    let mut config = test_config(&db);
    // Slow enough to see the job ongoing: 12 images, 2 at a time, 400 ms each.
    config.worker.processing_delay = DelayRange {
        min_ms: 400,
        max_ms: 400,
    };
    config.worker.concurrency = 2;
    let app = TestApp::start(config).await;
    let urls: Vec<String> = (0..12).map(|i| images.image(10 + i, 10, "png")).collect();
    with_browser(move |b| async move {
        // Submitted once the browser is up, so the page opens while the job runs.
        let id = app.submit_ok(&payload(&[(STORE_A, urls)])).await;
        open(&b, &app.base, &format!("/ui/jobs/{id}")).await;
        assert_eq!(text(&b, "#job-status").await, "ONGOING");
        let value = |b: &Client| {
            let b = b.clone();
            async move {
                b.execute(
                    "const p = document.getElementById('job-progress'); return [p.value, p.max];",
                    vec![],
                )
                .await
                .unwrap()
            }
        };
        let first = value(&b).await;
        assert_eq!(first[1], 12.0);
        assert!(first[0].as_f64().unwrap() < 12.0, "{first}");
        // A mark that a reload would wipe out.
        b.execute("window.__sameDocument = 'yes';", vec![])
            .await
            .unwrap();
        // Moving without a reload.
        wait_until(&b, "document.getElementById('job-progress').value > 0", WAIT).await;
        wait_until(
            &b,
            "document.getElementById('job-progress').value == 12 && document.getElementById('job-status').textContent == 'completed'",
            WAIT,
        )
        .await;
        let same = b
            .execute("return window.__sameDocument;", vec![])
            .await
            .unwrap();
        assert_eq!(same, "yes", "the page was reloaded");
        assert_eq!(text(&b, "#job-percent").await, "100%");
        assert!(text(&b, "#job-finished").await.contains("UTC"));
        assert!(
            b.find(Locator::Id("cancel-form")).await.is_err(),
            "a finished job offers no cancel"
        );
        app.stop().await;
        drop(db);
    })
    .await;
}

async fn job_page_shows_a_per_store_error(backend: Backend) {
    if !browser::available("job_page_shows_a_per_store_error") {
        return;
    }
    let (db, images, app) = setup(backend).await;
    let id = app
        .submit_ok(&payload(&[
            (STORE_A, vec![images.image(40, 30, "png")]),
            (STORE_B, vec![images.url("/status/404")]),
            ("S99999999", vec![images.image(5, 5, "png")]),
        ]))
        .await;
    let status = app.wait_finished(id, WAIT).await;
    assert_eq!(status["status"], "failed");
    with_browser(move |b| async move {
        open(&b, &app.base, &format!("/ui/jobs/{id}")).await;
        assert_eq!(text(&b, "#job-status").await, "FAILED");
        let rows = b
            .find_all(Locator::Css("#job-errors-body tr"))
            .await
            .unwrap();
        assert_eq!(rows.len(), 2);
        // The same entries, in the same order, as /api/status gives them.
        for (row, expected) in rows.iter().zip(status["error"].as_array().unwrap()) {
            let cells = row.find_all(Locator::Css("td")).await.unwrap();
            assert_eq!(cells[0].text().await.unwrap(), expected["store_id"]);
            assert_eq!(cells[1].text().await.unwrap(), expected["error"]);
        }
        // The image table, filtered to the failures.
        click(&b, "nav.chips a[href$='status=failed#images']").await;
        wait_until(&b, "location.search == '?status=failed'", WAIT).await;
        let failed = b
            .find_all(Locator::Css("table.images tbody tr"))
            .await
            .unwrap();
        assert_eq!(failed.len(), 2);
        assert!(text(&b, "table.images tbody").await.contains("HTTP 404"));
        if shots(backend) {
            open(&b, &app.base, &format!("/ui/jobs/{id}")).await;
            screenshot(&b, "job", DESKTOP).await;
            screenshot(&b, "job-phone", PHONE).await;
        }
        app.stop().await;
        drop(db);
    })
    .await;
}

async fn cancel_asks_for_confirmation_then_cancels(backend: Backend) {
    if !browser::available("cancel_asks_for_confirmation_then_cancels") {
        return;
    }
    let (db, images, app) = setup(backend).await;
    let urls: Vec<String> = (0..20)
        .map(|i| images.url(&format!("/slow/20000/{}x10.png", 10 + i)))
        .collect();
    let id = app.submit_ok(&payload(&[(STORE_A, urls)])).await;
    with_browser(move |b| async move {
        open(&b, &app.base, &format!("/ui/jobs/{id}")).await;
        let cancel = b
            .find(Locator::Css("#cancel-form button"))
            .await
            .expect("an ongoing job can be cancelled");
        // The first thought: keep it.
        cancel.click().await.unwrap();
        wait_until(&b, "document.getElementById('confirm-cancel').open", WAIT).await;
        click(&b, "#confirm-cancel button[value=keep]").await;
        wait_until(&b, "!document.getElementById('confirm-cancel').open", WAIT).await;
        assert_eq!(
            app.get(&format!("/api/jobs/{id}")).await.1["status"],
            "ongoing"
        );
        // Then for real.
        cancel.click().await.unwrap();
        wait_until(&b, "document.getElementById('confirm-cancel').open", WAIT).await;
        if shots(backend) {
            screenshot(&b, "cancel-dialog", DESKTOP).await;
        }
        click(&b, "#confirm-cancel-yes").await;
        wait_until(&b, "location.search == '?done=cancelled'", WAIT).await;
        assert_eq!(text(&b, "#job-status").await, "CANCELLED");
        assert!(text(&b, ".notice").await.contains("Job cancelled"));
        assert_eq!(
            app.get(&format!("/api/jobs/{id}")).await.1["status"],
            "cancelled"
        );
        app.stop().await;
        drop(db);
    })
    .await;
}

async fn csv_download_matches_the_api_results(backend: Backend) {
    if !browser::available("csv_download_matches_the_api_results") {
        return;
    }
    let (db, images, app) = setup(backend).await;
    let id = app
        .submit_ok(&payload(&[
            (
                STORE_A,
                vec![images.image(64, 48, "png"), images.image(7, 9, "gif")],
            ),
            (
                STORE_B,
                vec![images.url("/status/500"), images.image(3, 4, "jpg")],
            ),
            ("S404", vec![images.image(1, 1, "png")]),
        ]))
        .await;
    app.wait_finished(id, WAIT).await;
    let api = app.all_images(id, 2).await;
    with_browser(move |b| async move {
        open(&b, &app.base, &format!("/ui/jobs/{id}")).await;
        let link = b.find(Locator::Id("csv-link")).await.unwrap();
        let href = link
            .prop("href")
            .await
            .unwrap()
            .expect("the link has a URL");
        assert!(link.attr("download").await.unwrap().is_some());
        // As the link gives it.
        let res = app.client.get(&href).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/csv")
        );
        let body = res.text().await.unwrap();
        let mut reader = csv::Reader::from_reader(body.as_bytes());
        assert_eq!(
            reader.headers().unwrap().iter().collect::<Vec<_>>(),
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
        let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), api.len());
        let cell = |v: &Value| match v {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        for (row, image) in rows.iter().zip(&api) {
            let expected: Vec<String> = [
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
            .map(|k| cell(&image[*k]))
            .collect();
            assert_eq!(row.iter().collect::<Vec<_>>(), expected);
        }
        app.stop().await;
        drop(db);
    })
    .await;
}

/// Where keys are needed, a person signs in once through the form: a wrong key is refused on
/// the page, the right one leads back to where they were going, and they see their tenant's
/// jobs only until they sign out.
async fn signing_in_with_a_key_shows_only_its_tenants_jobs(backend: Backend) {
    if !browser::available("signing_in_with_a_key_shows_only_its_tenants_jobs") {
        return;
    }
    let (db, images, app) = setup(backend).await;
    let alice = common::keys::create_key(&db.url, "alice-app", &["--tenant", "alice"]).await;
    let bob = common::keys::create_key(&db.url, "bob-app", &["--tenant", "bob"]).await;
    let submit = |key: String, url: String| {
        let app = &app;
        async move {
            let body = payload(&[(STORE_A, vec![url])]).to_string();
            let answer = app
                .call("POST", "/api/submit/", Some(&key), Some(body))
                .await;
            assert_eq!(answer.code, 201, "{}", answer.text);
            answer.json()["job_id"].as_i64().unwrap()
        }
    };
    let mine = submit(alice.clone(), images.image(12, 8, "png")).await;
    let theirs = submit(bob, images.image(9, 9, "png")).await;
    with_browser(move |b| async move {
        open(&b, &app.base, "/ui/jobs").await;
        wait_until(&b, "location.pathname == '/ui/login'", WAIT).await;
        assert_eq!(b.title().await.unwrap(), "Sign in · Retail Pulse");
        // The field is labelled, and a password field.
        let field = b
            .find(Locator::Css("label[for=key] + input#key"))
            .await
            .unwrap();
        assert_eq!(
            field.attr("type").await.unwrap().as_deref(),
            Some("password")
        );
        if shots(backend) {
            screenshot(&b, "login", DESKTOP).await;
            screenshot(&b, "login-phone", PHONE).await;
        }
        field
            .send_keys(&format!("rp_{}", "7".repeat(64)))
            .await
            .unwrap();
        click(&b, "#login-form button[type=submit]").await;
        wait_until(&b, "document.getElementById('login-error')", WAIT).await;
        assert!(text(&b, "#login-error").await.contains("not accepted"));

        let field = b.find(Locator::Id("key")).await.unwrap();
        field.send_keys(&alice).await.unwrap();
        click(&b, "#login-form button[type=submit]").await;
        wait_until(&b, "location.pathname == '/ui/jobs'", WAIT).await;
        assert_eq!(text(&b, "#signed-in-key").await, "alice-app");
        b.find(Locator::Css(&format!("a[href='/ui/jobs/{mine}']")))
            .await
            .expect("her job is listed");
        assert!(
            b.find(Locator::Css(&format!("a[href='/ui/jobs/{theirs}']")))
                .await
                .is_err(),
            "another tenant's job is not"
        );
        // Her job's page, live updates included (they read the dashboard's JSON).
        open(&b, &app.base, &format!("/ui/jobs/{mine}")).await;
        wait_until(
            &b,
            "document.getElementById('job-status').textContent == 'completed'",
            WAIT,
        )
        .await;
        open(&b, &app.base, &format!("/ui/jobs/{theirs}")).await;
        assert!(text(&b, "#error-message").await.contains("no job"));
        // Signing out ends it: the pages ask for a key again.
        open(&b, &app.base, "/ui/jobs").await;
        click(&b, "#sign-out button[type=submit]").await;
        wait_until(&b, "location.pathname == '/ui/login'", WAIT).await;
        open(&b, &app.base, "/ui/").await;
        wait_until(&b, "location.pathname == '/ui/login'", WAIT).await;
        app.stop().await;
        drop(db);
    })
    .await;
}

/// The job page shows its webhook's state, and follows it to `delivered` without a reload.
async fn the_job_page_follows_the_webhook_to_delivered(backend: Backend) {
    if !browser::available("the_job_page_follows_the_webhook_to_delivered") {
        return;
    }
    let db = TestDb::new(backend).await;
    let images = ImageServer::start().await;
    let mut config = test_config(&db);
    config.fetch.timeout = Duration::from_secs(30);
    config.fetch.stall_timeout = Duration::from_secs(30);
    let app = TestApp::start(config).await;
    // Slow enough that the page opens while the job runs (the browser takes a while to start).
    let mut job = payload(&[(STORE_A, vec![images.url("/slow/15000/16x9.png")])]);
    job["webhook"] = json!(images.url("/status/200"));
    let id = app.submit_ok(&job).await;
    with_browser(move |b| async move {
        open(&b, &app.base, &format!("/ui/jobs/{id}")).await;
        // Read together: the script may change both at any moment.
        let first = b
            .execute(
                "return [document.getElementById('webhook-state').textContent, \
                 document.getElementById('webhook-attempts').textContent];",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(first, json!(["pending", "0"]), "the job is still running");
        wait_until(
            &b,
            "document.getElementById('webhook-state').textContent == 'delivered'",
            WAIT,
        )
        .await;
        assert_eq!(text(&b, "#webhook-attempts").await, "1");
        assert_eq!(text(&b, "#webhook-error").await, "none");
        assert_eq!(text(&b, "#job-status").await, "COMPLETED");
        if shots(backend) {
            screenshot(&b, "job-webhook", DESKTOP).await;
        }
        app.stop().await;
        drop(db);
    })
    .await;
}

/// With RP_SCREENSHOTS=1: a dashboard with some life in it — jobs in every state, retries,
/// failures, two minutes of throughput — at desktop and phone widths.
async fn screenshots_of_a_busy_dashboard(backend: Backend) {
    if std::env::var("RP_SCREENSHOTS").ok().as_deref() != Some("1") || !shots(backend) {
        return;
    }
    if !browser::available("screenshots_of_a_busy_dashboard") {
        return;
    }
    let db = TestDb::new(backend).await;
    let images = ImageServer::start().await;
    let mut config = test_config(&db);
    config.worker.processing_delay = DelayRange {
        min_ms: 100,
        max_ms: 400,
    };
    config.worker.concurrency = 16;
    let app = TestApp::start(config).await;
    let minutes: u64 = std::env::var("RP_SCREENSHOTS_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let started = std::time::Instant::now();
    let mut round = 0u32;
    // Jobs of varied sizes and outcomes, one every few seconds, for a few minutes.
    while started.elapsed() < Duration::from_secs(minutes * 60) {
        let n = [40, 120, 15, 300, 60][round as usize % 5];
        let mut urls: Vec<String> = (0..n)
            .map(|i| images.image(100 + i % 50, 80, "png"))
            .collect();
        if round % 3 == 1 {
            urls.push(images.url("/status/404"));
            urls.push(images.url(&format!("/flaky/r{round}/1/12x12.png")));
        }
        let mut visits = vec![(STORE_A, urls)];
        if round % 4 == 2 {
            visits.push(("S77777777", vec![images.image(9, 9, "png")]));
        }
        app.submit_ok(&payload(&visits)).await;
        round += 1;
        tokio::time::sleep(Duration::from_secs(6)).await;
    }
    let slow: Vec<String> = (0..400)
        .map(|i| images.url(&format!("/slow/1500/{}x40.png", 40 + i % 30)))
        .collect();
    let ongoing = app.submit_ok(&payload(&[(STORE_A, slow)])).await;
    let cancelled = app
        .submit_ok(&payload(&[(
            STORE_B,
            vec![images.url("/slow/60000/5x5.png"); 30],
        )]))
        .await;
    app.post_raw(&format!("/api/jobs/{cancelled}/cancel"), "")
        .await;
    // A heartbeat or two, so the last counts reach the chart.
    tokio::time::sleep(Duration::from_secs(11)).await;
    with_browser(move |b| async move {
        open(&b, &app.base, "/ui/").await;
        screenshot(&b, "overview", DESKTOP).await;
        screenshot(&b, "overview-phone", PHONE).await;
        browser::color_scheme(&b, "dark").await;
        screenshot(&b, "overview-dark", DESKTOP).await;
        browser::color_scheme(&b, "light").await;
        open(&b, &app.base, "/ui/jobs").await;
        screenshot(&b, "jobs", DESKTOP).await;
        screenshot(&b, "jobs-phone", PHONE).await;
        open(&b, &app.base, &format!("/ui/jobs/{ongoing}")).await;
        screenshot(&b, "job-busy", DESKTOP).await;
        app.stop().await;
        drop(db);
    })
    .await;
}

on_both_backends!(
    overview_lists_a_submitted_job,
    a_job_submitted_through_the_form_opens_its_page,
    progress_bar_reaches_done_without_a_reload,
    job_page_shows_a_per_store_error,
    cancel_asks_for_confirmation_then_cancels,
    csv_download_matches_the_api_results,
    signing_in_with_a_key_shows_only_its_tenants_jobs,
    the_job_page_follows_the_webhook_to_delivered,
    screenshots_of_a_busy_dashboard,
);
