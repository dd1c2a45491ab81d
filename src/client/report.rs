//! A job for people: its status and counts on the first line (the line a glance needs), then
//! its times, then one line per failed store, in the order the server gives them (the order
//! of the stores in the submission).
//!
//! ```text
//! job 13 failed: 3 images, 1 succeeded, 2 failed
//!   created   2026-11-28T10:00:00.000Z
//!   finished  2026-11-28T10:00:01.250Z (1.2 s)
//!   errors (1 store):
//!     S999  unknown store_id: not in the store master (2 of 2 images not processed)
//! ```

use std::fmt::Write;

use chrono::DateTime;

use super::Job;
use crate::domain::JobStatus;

pub fn render(job: &Job) -> String {
    let c = &job.images;
    let mut out = match job.status {
        JobStatus::Ongoing => format!(
            "job {} ongoing: {}/{} images finished ({} succeeded, {} failed, {} pending)\n",
            job.job_id,
            c.finished(),
            c.total,
            c.succeeded,
            c.failed,
            c.pending
        ),
        status => {
            let mut line = format!(
                "job {} {}: {} images, {} succeeded, {} failed",
                job.job_id,
                status.as_str(),
                c.total,
                c.succeeded,
                c.failed
            );
            // A cancelled job leaves images that were never processed.
            if c.pending > 0 {
                let _ = write!(line, ", {} not processed", c.pending);
            }
            line + "\n"
        }
    };
    let _ = writeln!(out, "  created   {}", job.created_at);
    if let Some(finished) = &job.finished_at {
        match elapsed_secs(&job.created_at, finished) {
            Some(secs) => {
                let _ = writeln!(out, "  finished  {finished} ({secs:.1} s)");
            }
            None => {
                let _ = writeln!(out, "  finished  {finished}");
            }
        }
    }
    if !job.error.is_empty() {
        let n = job.error.len();
        let _ = writeln!(
            out,
            "  errors ({n} store{}):",
            if n == 1 { "" } else { "s" }
        );
        let width = job
            .error
            .iter()
            .map(|e| e.store_id.chars().count())
            .max()
            .unwrap_or(0);
        for e in &job.error {
            let _ = writeln!(out, "    {:<width$}  {}", e.store_id, e.error);
        }
    }
    out
}

fn elapsed_secs(from: &str, to: &str) -> Option<f64> {
    let from = DateTime::parse_from_rfc3339(from).ok()?;
    let to = DateTime::parse_from_rfc3339(to).ok()?;
    Some((to - from).num_milliseconds() as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Counts;
    use crate::domain::StoreError;

    fn job(status: JobStatus, counts: Counts, errors: &[(&str, &str)]) -> Job {
        Job {
            job_id: 13,
            status,
            created_at: "2026-11-28T10:00:00.000Z".into(),
            finished_at: (status != JobStatus::Ongoing).then(|| "2026-11-28T10:00:01.250Z".into()),
            images: counts,
            error: errors
                .iter()
                .map(|(s, e)| StoreError {
                    store_id: s.to_string(),
                    error: e.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn failed_job_lists_each_store_error() {
        let text = render(&job(
            JobStatus::Failed,
            Counts {
                total: 3,
                succeeded: 1,
                failed: 2,
                pending: 0,
            },
            &[
                ("S999", "unknown store_id"),
                ("S00339218", "1 of 1 images failed"),
            ],
        ));
        assert_eq!(
            text,
            "job 13 failed: 3 images, 1 succeeded, 2 failed\n\
             \x20 created   2026-11-28T10:00:00.000Z\n\
             \x20 finished  2026-11-28T10:00:01.250Z (1.2 s)\n\
             \x20 errors (2 stores):\n\
             \x20   S999       unknown store_id\n\
             \x20   S00339218  1 of 1 images failed\n"
        );
    }

    #[test]
    fn ongoing_job_shows_progress_and_no_finish() {
        let text = render(&job(
            JobStatus::Ongoing,
            Counts {
                total: 4,
                succeeded: 1,
                failed: 0,
                pending: 3,
            },
            &[],
        ));
        assert!(
            text.starts_with("job 13 ongoing: 1/4 images finished"),
            "{text}"
        );
        assert!(!text.contains("finished  "), "{text}");
    }

    #[test]
    fn cancelled_job_says_what_was_not_processed() {
        let text = render(&job(
            JobStatus::Cancelled,
            Counts {
                total: 4,
                succeeded: 1,
                failed: 0,
                pending: 3,
            },
            &[],
        ));
        assert!(
            text.starts_with("job 13 cancelled: 4 images, 1 succeeded, 0 failed, 3 not processed"),
            "{text}"
        );
    }
}
