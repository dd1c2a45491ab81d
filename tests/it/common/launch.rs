//! Starting the real `retail-pulse` binary as a separate process, for the tests
//! (`service.rs`) and the benchmark (`benches/e2e` includes this file, so all of it is what
//! both use). It is told to bind port 0 and announces its address in its JSON log, which is
//! read here — no guessing of free ports, no sleeps.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The secret key every process started on PostgreSQL is given (base64 of 32 bytes of 42), so
/// that processes sharing a database share their webhook secrets. A test that wants another,
/// or none, passes `RP_SECRET_KEY` in `extra` (empty: none). On SQLite the service makes its
/// own key file beside the database.
pub const TEST_SECRET_KEY: &str = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";

/// Starts `retail-pulse <subcommand>` with these environment variables (added to
/// `DATABASE_URL`, a port-0 bind, private networks allowed, JSON logs and, on PostgreSQL,
/// [`TEST_SECRET_KEY`]) and waits until it
/// says it has started. Returns the process and `http://addr` for `serve` (empty for
/// `worker`). Every line of its log goes to `on_line`, on a thread of its own, until the
/// process closes its stdout.
pub fn launch(
    binary: &str,
    subcommand: &str,
    db_url: &str,
    extra: &[(&str, &str)],
    mut on_line: impl FnMut(String) + Send + 'static,
) -> (Child, String) {
    let mut cmd = Command::new(binary);
    cmd.arg(subcommand)
        .env("DATABASE_URL", db_url)
        .env("RP_BIND", "127.0.0.1:0")
        .env("RP_ALLOW_PRIVATE_NETWORKS", "true")
        .env("RP_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if db_url.starts_with("postgres") {
        cmd.env("RP_SECRET_KEY", TEST_SECRET_KEY);
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start retail-pulse");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let listens = subcommand == "serve" || extra.iter().any(|(k, _)| *k == "RP_METRICS_BIND");
    let waits_for = if listens {
        "listening"
    } else {
        "worker pool started"
    };
    // RP_TEST_ECHO_LOGS=1 shows the service's log lines (on stderr) when debugging a test.
    let echo = std::env::var("RP_TEST_ECHO_LOGS").is_ok();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if echo {
                eprintln!("{line}");
            }
            let started = (!sent)
                .then(|| serde_json::from_str::<Value>(&line).ok())
                .flatten()
                .filter(|v| v["message"] == waits_for);
            // The line is handed on first: whoever reads the log once this returns finds
            // the line that said the service had started.
            on_line(line);
            if let Some(v) = started {
                let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_string());
                sent = true;
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("retail-pulse {subcommand} did not start"));
    let base = if addr.is_empty() {
        String::new()
    } else {
        format!("http://{addr}")
    };
    (child, base)
}
