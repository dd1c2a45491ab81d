//! The command-line client (`retail-pulse submit | status`) as a user runs it: the real binary
//! against the real app started in this process (SQLite), checked by exit code and output.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ImageServer, STORE_A, STORE_B, TestApp, TestDb, payload, test_config};
use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_retail-pulse");

/// What one run of the binary left behind.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `retail-pulse ARGS` to its end (killed after a minute, so a hang fails the test
/// instead of stalling the suite). Off the async runtime: the app under test runs on it.
async fn run(args: &[&str]) -> Run {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(BINARY)
            .args(&args)
            .env_remove("RP_SERVER")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start retail-pulse");
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().expect("try_wait").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("retail-pulse {args:?} still running after 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("output");
        Run {
            code: out.status.code().expect("exited, not killed by a signal"),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .expect("runner thread")
}

/// A job file in a directory that lives as long as the returned guard.
fn job_file(body: &Value) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("job.json");
    std::fs::write(&path, serde_json::to_vec_pretty(body).unwrap()).expect("write job file");
    (dir, path)
}

async fn setup() -> (TestDb, TestApp, ImageServer) {
    let db = TestDb::new(common::Backend::Sqlite).await;
    let images = ImageServer::start().await;
    let app = TestApp::start(test_config(&db)).await;
    (db, app, images)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_exits_0_when_the_job_completes() {
    let (_db, app, images) = setup().await;
    let (_dir, file) = job_file(&payload(&[
        (
            STORE_A,
            vec![
                images.image(30, 20, "png"),
                images.url("/slow/300/40x10.png"),
            ],
        ),
        (STORE_B, vec![images.image(5, 5, "jpg")]),
    ]));
    let out = run(&[
        "submit",
        file.to_str().unwrap(),
        "--wait",
        "--server",
        &app.base,
    ])
    .await;
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout
            .contains("completed: 3 images, 3 succeeded, 0 failed"),
        "{out}"
    );
    // Not a terminal: no progress line, no control characters, no logs.
    assert!(
        !out.stdout.contains('\r') && !out.stdout.contains("ETA"),
        "{out}"
    );
    assert!(!out.stdout.contains("INFO"), "{out}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_exits_1_and_names_the_failed_store() {
    let (_db, app, images) = setup().await;
    let (_dir, file) = job_file(&payload(&[
        (STORE_A, vec![images.image(10, 10, "png")]),
        ("S_NOT_A_STORE", vec![images.image(10, 10, "png")]),
    ]));
    let out = run(&[
        "submit",
        file.to_str().unwrap(),
        "--wait",
        "--server",
        &app.base,
    ])
    .await;
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stdout.contains("failed: 2 images"), "{out}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("S_NOT_A_STORE"))
        .unwrap_or_else(|| panic!("no line for the store: {out}"));
    assert!(line.contains("unknown store_id"), "{out}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_json_prints_the_final_job_as_one_document() {
    let (_db, app, images) = setup().await;
    let (_dir, file) = job_file(&payload(&[(
        STORE_A,
        vec![images.image(10, 10, "png"), images.image(20, 10, "gif")],
    )]));
    let out = run(&[
        "submit",
        file.to_str().unwrap(),
        "--wait",
        "--json",
        "--server",
        &app.base,
    ])
    .await;
    assert_eq!(out.code, 0, "{out}");
    let job: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {out}"));
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["images"]["total"], 2, "{job}");
    assert_eq!(job["images"]["succeeded"], 2, "{job}");
    // The document is the server's own /api/jobs/{id}.
    let (code, server) = app.get(&format!("/api/jobs/{}", job["job_id"])).await;
    assert_eq!(code, 200);
    assert_eq!(job, server);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_without_wait_prints_the_job_id() {
    let (_db, app, images) = setup().await;
    let (_dir, file) = job_file(&payload(&[(STORE_A, vec![images.image(10, 10, "png")])]));
    let path = file.to_str().unwrap();
    let piped = run(&["submit", path, "--server", &app.base]).await;
    assert_eq!(piped.code, 0, "{piped}");
    let id: i64 = piped
        .stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("piped output is the bare id: {piped}"));
    let json = run(&["submit", path, "--json", "--server", &app.base]).await;
    assert_eq!(json.code, 0, "{json}");
    let body: Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(body, serde_json::json!({ "job_id": id + 1 }));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_refused_by_the_server_exits_2_with_its_message() {
    let (_db, app, images) = setup().await;
    let mut body = payload(&[(STORE_A, vec![images.image(10, 10, "png")])]);
    body["count"] = 5.into();
    let (_dir, file) = job_file(&body);
    let out = run(&[
        "submit",
        file.to_str().unwrap(),
        "--wait",
        "--server",
        &app.base,
    ])
    .await;
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("HTTP 400"), "{out}");
    assert!(
        out.stderr.contains("count: is 5 but visits has 1 entries"),
        "{out}"
    );
    assert!(out.stdout.is_empty(), "{out}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_to_a_server_that_is_not_listening_exits_2() {
    // A port that was free a moment ago and is closed now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_dir, file) = job_file(&payload(&[(STORE_A, vec!["http://x.test/a.png".into()])]));
    let server = format!("http://127.0.0.1:{port}");
    let out = run(&[
        "submit",
        file.to_str().unwrap(),
        "--wait",
        "--server",
        &server,
    ])
    .await;
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("cannot reach the server"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_of_an_unreadable_file_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.json");
    let out = run(&["submit", missing.to_str().unwrap()]).await;
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("cannot read"), "{out}");
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{\"count\": 1, \"visits\": [").unwrap();
    let out = run(&["submit", broken.to_str().unwrap()]).await;
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("is not JSON"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_one_job_and_exits_2_for_an_unknown_one() {
    let (_db, app, images) = setup().await;
    let job_id = app
        .submit_ok(&payload(&[(STORE_A, vec![images.image(10, 10, "png")])]))
        .await;
    app.wait_finished(job_id, Duration::from_secs(30)).await;
    let id = job_id.to_string();

    let json = run(&["status", &id, "--json", "--server", &app.base]).await;
    assert_eq!(json.code, 0, "{json}");
    let body: Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(body["job_id"], job_id);
    assert_eq!(body["status"], "completed");

    let text = run(&["status", &id, "--server", &app.base]).await;
    assert_eq!(text.code, 0, "{text}");
    assert!(
        text.stdout
            .starts_with(&format!("job {job_id} completed: 1 images")),
        "{text}"
    );
    assert!(text.stdout.contains("finished"), "{text}");

    let unknown = run(&["status", "999999", "--server", &app.base]).await;
    assert_eq!(unknown.code, 2, "{unknown}");
    assert!(unknown.stderr.contains("no job 999999"), "{unknown}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_comes_from_rp_server_when_not_given() {
    let (_db, app, images) = setup().await;
    let job_id = app
        .submit_ok(&payload(&[(STORE_A, vec![images.image(10, 10, "png")])]))
        .await;
    let base = app.base.clone();
    let id = job_id.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BINARY)
            .args(["status", &id, "--json"])
            .env("RP_SERVER", &base)
            .output()
            .expect("run")
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    app.stop().await;
}
