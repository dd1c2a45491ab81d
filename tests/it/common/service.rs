//! The real `retail-pulse` binary as a separate process (for kill -9, several workers, and
//! reading what it logs), started by [`launch`](super::launch::launch).

use std::process::Child;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::launch::launch;

pub struct Service {
    pub child: Child,
    /// Every line the service has written to stdout (its log), so far.
    pub lines: Arc<Mutex<Vec<String>>>,
    /// `http://addr` for `serve`; empty for `worker`.
    pub base: String,
}

impl Service {
    /// Starts `retail-pulse <subcommand>` with these environment variables (added to
    /// `DATABASE_URL`, a port-0 bind, private networks allowed and JSON logs).
    pub fn start(binary: &str, subcommand: &str, db_url: &str, extra: &[(&str, &str)]) -> Self {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let kept = lines.clone();
        let (child, base) = launch(binary, subcommand, db_url, extra, move |line| {
            kept.lock().unwrap().push(line)
        });
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
        let status = res.status().as_u16();
        let body: Value = serde_json::from_slice(&res.bytes().await.expect("body")).expect("JSON");
        assert_eq!(status, 201, "submit refused: {body}");
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
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
