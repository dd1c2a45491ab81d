//! What the templates show: the page types (one per template in `templates/`) and the words,
//! numbers and times made from database rows. Everything here is plain formatting; askama
//! escapes every value when it is written into the HTML.

use askama::Template;

use super::chart::Chart;
use crate::db::dashboard::ImageView;
use crate::db::workers;
use crate::db::workers::WorkerRow;
use crate::domain::Job;
use crate::domain::time::format_ms;
use crate::domain::{ImageStatus, JobStatus, StoreError, WorkerState};

/// The frame of every page: its title and which navigation entry is current.
pub struct Layout {
    pub title: String,
    /// overview | jobs | submit | "" (none)
    pub active: &'static str,
    /// The stylesheet's and the script's URLs (named by content, so cacheable).
    pub css: String,
    pub js: String,
    /// The name of the key a sign-in session acts for: shown with a sign-out button.
    pub signed_in: Option<String>,
    /// The CSRF token of the sign-out form.
    pub csrf: String,
}

#[derive(Template)]
#[template(path = "overview.html")]
pub struct OverviewPage {
    pub layout: Layout,
    pub states: Vec<StateTile>,
    /// The service-wide figures (admins only).
    pub ops: Option<OperationsView>,
    pub recent: Vec<JobLine>,
}

/// The queue, the workers, the chart and the failures by kind.
pub struct OperationsView {
    pub queue: Vec<Figure>,
    pub workers: WorkersView,
    pub chart: Chart,
    pub failures: Vec<FailureLine>,
}

#[derive(Template)]
#[template(path = "jobs.html")]
pub struct JobsPage {
    pub layout: Layout,
    pub jobs: Vec<JobLine>,
    pub states: Vec<Choice>,
    pub from: String,
    pub to: String,
    pub id: String,
    /// Set when the list is filtered: a link back to everything.
    pub filtered: bool,
    pub next_url: Option<String>,
    pub first_url: Option<String>,
    /// A message above the list (a search that found nothing, a bad filter).
    pub notice: Option<String>,
}

#[derive(Template)]
#[template(path = "job.html")]
pub struct JobPage {
    pub layout: Layout,
    pub job: JobLine,
    pub errors: Vec<StoreError>,
    pub images: Vec<ImageLine>,
    pub filters: Vec<Choice>,
    pub filter_label: String,
    pub prev_url: Option<String>,
    pub next_url: Option<String>,
    pub first_url: Option<String>,
    pub csrf: String,
    pub notice: Option<String>,
    pub webhook: WebhookView,
    pub csv_url: String,
    pub api_url: String,
}

#[derive(Template)]
#[template(path = "confirm_cancel.html")]
pub struct ConfirmCancelPage {
    pub layout: Layout,
    pub job: JobLine,
    pub csrf: String,
}

#[derive(Template)]
#[template(path = "submit.html")]
pub struct SubmitPage {
    pub layout: Layout,
    pub csrf: String,
    /// What was pasted, shown again after a refusal.
    pub text: String,
    /// The API's own error message for a refused job, and its status.
    pub error: Option<String>,
    pub status: Option<u16>,
    pub example: &'static str,
    pub max_images: String,
}

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub layout: Layout,
    pub csrf: String,
    /// Where to go after signing in (already checked to be a dashboard path).
    pub next: String,
    pub error: Option<String>,
    /// The session's idle time and longest life, in words.
    pub idle: String,
    pub lifetime: String,
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    pub layout: Layout,
    pub status: u16,
    pub message: String,
}

/// A link in a filter bar or a choice in a select.
pub struct Choice {
    pub value: String,
    pub label: String,
    pub selected: bool,
    pub url: String,
}

/// A count of jobs in one state, linking to the list of them.
pub struct StateTile {
    pub state: &'static str,
    pub label: &'static str,
    pub count: String,
    pub url: String,
}

/// A labelled number.
pub struct Figure {
    pub key: &'static str,
    pub label: &'static str,
    pub value: String,
    pub hint: &'static str,
}

pub struct WorkersView {
    pub alive: usize,
    pub busy: i64,
    pub slots: i64,
    pub busy_label: String,
    pub rows: Vec<WorkerLine>,
}

pub struct WorkerLine {
    pub id: String,
    pub host: String,
    pub pid: i64,
    pub version: String,
    pub state: &'static str,
    pub started: String,
    pub started_ago: String,
    pub last_seen_ago: String,
    pub busy: i64,
    pub slots: i64,
}

pub struct FailureLine {
    pub kind: String,
    pub label: &'static str,
    pub failed: String,
    pub retried: String,
}

/// A job's webhook as its page shows it: the state the API gives (`GET /api/jobs/{id}`), or
/// `none` for a job that names no webhook.
pub struct WebhookView {
    /// none | pending | delivered | failed
    pub state: &'static str,
    /// The receiver's scheme, host and port: the path and query of a webhook URL may hold
    /// credentials, so the page leaves them out.
    pub target: Option<String>,
    pub attempts: i64,
    pub last_error: Option<String>,
}

impl WebhookView {
    pub fn new(webhook: Option<&crate::domain::wire::WebhookBody>) -> Self {
        match webhook {
            None => WebhookView {
                state: "none",
                target: None,
                attempts: 0,
                last_error: None,
            },
            Some(w) => WebhookView {
                state: w.state,
                target: Some(webhook_target(&w.url)),
                attempts: w.attempts,
                last_error: w.last_error.clone(),
            },
        }
    }
}

/// `https://hooks.example:8443` of `https://user:pw@hooks.example:8443/path?token=…`.
pub fn webhook_target(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or_default();
            match u.port() {
                Some(port) => format!("{}://{host}:{port}", u.scheme()),
                None => format!("{}://{host}", u.scheme()),
            }
        }
        Err(_) => "(not a URL)".into(),
    }
}

/// A job as lists and the job page show it.
pub struct JobLine {
    pub id: i64,
    pub status: &'static str,
    pub ongoing: bool,
    pub total: i64,
    pub done: i64,
    pub total_text: String,
    pub done_text: String,
    pub succeeded: String,
    pub failed: String,
    pub failed_count: i64,
    pub pending: String,
    pub percent: String,
    pub created: String,
    pub created_iso: String,
    pub created_ago: String,
    pub finished: Option<String>,
    pub finished_iso: Option<String>,
    pub took: Option<String>,
    pub url: String,
}

/// One image row of the job page.
pub struct ImageLine {
    pub position: String,
    pub store_id: String,
    pub url: String,
    pub visit_time: String,
    pub status: &'static str,
    pub size: String,
    pub perimeter: String,
    pub error: String,
    pub attempts: i64,
}

impl JobLine {
    pub fn new(job: &Job, now: i64) -> Self {
        let done = job.succeeded + job.failed;
        let percent = if job.total == 0 {
            100.0
        } else {
            done as f64 * 100.0 / job.total as f64
        };
        JobLine {
            id: job.id,
            status: job.status.as_str(),
            ongoing: job.status == JobStatus::Ongoing,
            total: job.total,
            done,
            total_text: thousands(job.total),
            done_text: thousands(done),
            succeeded: thousands(job.succeeded),
            failed: thousands(job.failed),
            failed_count: job.failed,
            pending: thousands(job.pending()),
            percent: format!("{}%", percent.floor()),
            created: clock(job.created_at),
            created_iso: format_ms(job.created_at),
            created_ago: ago(job.created_at, now),
            finished: job.finished_at.map(clock),
            finished_iso: job.finished_at.map(format_ms),
            took: job.finished_at.map(|f| span(f - job.created_at)),
            url: format!("/ui/jobs/{}", job.id),
        }
    }
}

impl ImageLine {
    pub fn new(image: &ImageView) -> Self {
        let size = match (image.width, image.height) {
            (Some(w), Some(h)) => format!("{w} × {h}"),
            _ => String::new(),
        };
        ImageLine {
            position: thousands(image.seq + 1),
            store_id: image.store_id.clone(),
            url: image.url.clone(),
            visit_time: image.visit_time.clone(),
            status: image.status.as_str(),
            size,
            perimeter: image.perimeter.map(thousands).unwrap_or_default(),
            error: image
                .error
                .clone()
                .filter(|_| image.status == ImageStatus::Failed)
                .unwrap_or_default(),
            attempts: image.attempts,
        }
    }
}

impl WorkersView {
    pub fn new(rows: &[WorkerRow], now: i64) -> Self {
        let lines: Vec<WorkerLine> = rows
            .iter()
            .map(|w| WorkerLine {
                id: w.id.clone(),
                host: w.host.clone(),
                pid: w.pid,
                version: w.version.clone(),
                state: WorkerState::of(w.last_seen_at, w.stopped_at, now).as_str(),
                started: clock(w.started_at),
                started_ago: ago(w.started_at, now),
                last_seen_ago: ago(w.last_seen_at, now),
                busy: w.busy,
                slots: w.slots,
            })
            .collect();
        let alive: Vec<&WorkerLine> = lines.iter().filter(|w| w.state == "alive").collect();
        let busy = alive.iter().map(|w| w.busy).sum();
        let slots = alive.iter().map(|w| w.slots).sum();
        WorkersView {
            alive: alive.len(),
            busy,
            slots,
            busy_label: format!("{} of {} slots busy", thousands(busy), thousands(slots)),
            rows: lines,
        }
    }
}

impl FailureLine {
    pub fn new(kind: String, failed: i64, retried: i64) -> Self {
        FailureLine {
            label: kind_label(&kind),
            kind,
            failed: thousands(failed),
            retried: thousands(retried),
        }
    }
}

/// What an error kind means, for people.
pub fn kind_label(kind: &str) -> &'static str {
    match kind {
        "unknown_store" => "Store not in the store master",
        "invalid_url" => "Invalid URL",
        "blocked_address" => "Address refused (private network)",
        "http_status" => "Image host answered an error",
        "timeout" => "Timed out",
        "too_large" => "Image too large",
        "network" => "Network error",
        "too_many_redirects" => "Too many redirects",
        "not_an_image" => "Not an image",
        "lease_expired" => "Worker lost (lease expired)",
        "cancelled" => "Job cancelled",
        "internal" => "Internal error",
        _ => "Other",
    }
}

/// `12,345`.
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `2026-11-28 10:00:01 UTC`.
pub fn clock(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%d %H:%M:%S UTC")
        .to_string()
}

/// `just now`, `42 s ago`, `3 min ago`, `5 h ago`, `2 d ago`.
pub fn ago(ms: i64, now: i64) -> String {
    let secs = (now - ms).max(0) / 1000;
    match secs {
        0..=1 => "just now".into(),
        2..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

/// A duration: `0.4 s`, `12.5 s`, `3 min 4 s`, `2 h 5 min`.
pub fn span(ms: i64) -> String {
    let ms = ms.max(0);
    match ms {
        0..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{} min {} s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{} h {} min", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// The minute a chart bar stands for, as `10:42`.
pub fn minute_label(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(workers::minute_of(ms))
        .unwrap_or_default()
        .format("%H:%M")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_times_and_durations_read_naturally() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(100_000), "100,000");
        assert_eq!(thousands(-1_234_567), "-1,234,567");
        assert_eq!(clock(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(ago(0, 500), "just now");
        assert_eq!(ago(0, 42_000), "42 s ago");
        assert_eq!(ago(0, 180_000), "3 min ago");
        assert_eq!(ago(0, 5 * 3_600_000), "5 h ago");
        assert_eq!(ago(0, 49 * 3_600_000), "2 d ago");
        assert_eq!(span(400), "0.4 s");
        assert_eq!(span(184_000), "3 min 4 s");
        assert_eq!(span(7_500_000), "2 h 5 min");
        assert_eq!(minute_label(61_500), "00:01");
    }

    #[test]
    fn a_job_line_counts_progress_from_the_job_row() {
        let job = Job {
            id: 7,
            tenant: "default".into(),
            status: JobStatus::Ongoing,
            total: 3,
            succeeded: 1,
            failed: 1,
            errors: Vec::new(),
            created_at: 0,
            finished_at: None,
            webhook_url: None,
        };
        let line = JobLine::new(&job, 2_000);
        assert_eq!(line.done, 2);
        assert_eq!(line.percent, "66%");
        assert_eq!(line.pending, "1");
        assert!(line.ongoing && line.took.is_none());
        assert_eq!(line.url, "/ui/jobs/7");
    }
}
