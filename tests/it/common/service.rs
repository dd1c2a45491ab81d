#![allow(dead_code)]

//! The real `retail-pulse` binary as a separate process (for kill -9, several workers, and
//! the benchmark's memory figures). It is told to bind port 0 and announces its address in
//! its JSON log, which is read here — no guessing of free ports, no sleeps.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

pub struct Service {
    pub child: Child,
    /// Every line the service has written to stdout (its log), so far.
    pub lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// `http://addr` for `serve`; empty for `worker`.
    pub base: String,
}

impl Service {
    /// Starts `retail-pulse <subcommand>` with these environment variables (added to
    /// `DATABASE_URL`, a port-0 bind, private networks allowed and JSON logs).
    pub fn start(binary: &str, subcommand: &str, db_url: &str, extra: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(binary);
        cmd.arg(subcommand)
            .env("DATABASE_URL", db_url)
            .env("RP_BIND", "127.0.0.1:0")
            .env("RP_ALLOW_PRIVATE_NETWORKS", "true")
            .env("RP_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
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
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = lines.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("{line}");
                }
                kept.lock().unwrap().push(line.clone());
                if !sent
                    && let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["message"] == waits_for
                {
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
        Service { child, lines, base }
    }

    /// Submits a job payload and returns its id, asserting 201.
    pub async fn submit(&self, client: &reqwest::Client, payload: &Value) -> i64 {
        let res = client
            .post(format!("{}/api/submit/", self.base))
            .body(payload.to_string())
            .send()
            .await
            .expect("submit");
        assert_eq!(res.status().as_u16(), 201, "submit refused");
        let body: Value = serde_json::from_slice(&res.bytes().await.expect("body")).expect("JSON");
        body["job_id"].as_i64().expect("job_id")
    }

    /// GETs a path of the service's API as JSON.
    pub async fn get_json(&self, client: &reqwest::Client, path: &str) -> Value {
        let res = client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request");
        serde_json::from_slice(&res.bytes().await.expect("body")).expect("JSON")
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill_hard(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.child.wait().expect("wait")
    }

    /// Peak resident memory of the process so far, in bytes (Linux).
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
