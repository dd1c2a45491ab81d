//! The service under test as a separate process, started as the tests start it
//! ([`launch`]): its address read from its log, which is then let go (the figures read
//! nothing from it).

use std::process::{Child, ExitStatus};

use super::launch::launch;

pub struct Service {
    pub child: Child,
    /// `http://addr` for `serve`; empty for `worker`.
    pub base: String,
}

impl Service {
    /// Starts `retail-pulse <subcommand>` with these environment variables (added to
    /// `DATABASE_URL`, a port-0 bind, private networks allowed and JSON logs).
    pub fn start(binary: &str, subcommand: &str, db_url: &str, extra: &[(&str, &str)]) -> Self {
        let (child, base) = launch(binary, subcommand, db_url, extra, |_| {});
        Service { child, base }
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(mut self) -> ExitStatus {
        // SAFETY: kill has no memory preconditions; the pid is our child's.
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
