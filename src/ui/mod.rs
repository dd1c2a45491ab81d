//! The dashboard: server-rendered pages under `/ui/` served by the same binary as the API —
//! the overview (jobs by state, queue depth, images finished per minute, workers, failures by
//! kind), the job list (state and date filters, search by id, ongoing first, keyset pages),
//! one job (progress, per-store errors, its images page by page, cancel, CSV) and a submit
//! form. Templates (`templates/`, askama) and assets (`assets/`: one stylesheet, one small
//! script) are compiled in; nothing comes from a CDN and every page reads without JavaScript.
//! The script only polls JSON (`/ui/live/jobs`) to move progress bars and a job's webhook
//! state, and re-reads the overview.
//!
//! The pages sit behind [`session::require_viewer`]: the API's key check, or — where a key is
//! needed and the browser sends none — a sign-in session ([`session`], [`login`]: a key pasted
//! once at `/ui/login`, a session cookie after). Every data access goes through
//! [`data::Data`] in the caller's scope (the API's own queries, plus the read-only views of
//! `db::dashboard` and `db::workers`), so a tenant's session sees its own jobs only. Forms are
//! protected by [`csrf`]; [`views`] turns rows into words and [`chart`] draws the per-minute
//! chart.

mod chart;
mod csrf;
pub mod data;
mod login;
pub mod session;
mod views;

use std::collections::HashMap;
use std::sync::LazyLock;

use askama::Template;
use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde_json::json;

use crate::auth::Caller;
use crate::db::DbError;
use crate::db::dashboard::{Direction, JobCursor, JobFilter};
use crate::db::jobs::Cancel;
use crate::domain::wire::JobBody;
use crate::domain::{ImageStatus, JobStatus};
use crate::http::{ApiError, AppState, FirstParams};
use data::Data;
use views::{
    Choice, ConfirmCancelPage, ErrorPage, FailureLine, Figure, ImageLine, JobLine, JobPage,
    JobsPage, Layout, LoginPage, OperationsView, OverviewPage, StateTile, SubmitPage, WebhookView,
    WorkersView,
};

/// Jobs per page of the list.
const JOBS_PER_PAGE: i64 = 25;
/// Jobs on the overview.
const RECENT_JOBS: i64 = 8;
/// Images per page of a job.
const IMAGES_PER_PAGE: i64 = 50;
/// Most jobs one live-progress request may ask about.
const LIVE_MAX_IDS: usize = 100;
/// Largest form body besides a job (a cancel form).
const SMALL_FORM_BYTES: usize = 16 * 1024;

/// What needs no caller: the way in and the compiled-in assets.
pub fn open_routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/assets/app.css", get(|| async { asset(&CSS) }))
        .route("/ui/assets/app.js", get(|| async { asset(&JS) }))
        .route("/ui/login", get(login::form).post(login::sign_in))
        .route("/ui/logout", axum::routing::post(login::sign_out))
}

/// The pages and forms: mounted behind the API's key check.
pub fn pages() -> Router<AppState> {
    Router::new()
        .route("/ui/", get(overview))
        .route("/ui/jobs", get(jobs))
        .route("/ui/jobs/{job_id}", get(job))
        .route("/ui/jobs/{job_id}/cancel", axum::routing::post(cancel))
        .route("/ui/jobs/{job_id}/results.csv", get(results_csv))
        .route("/ui/submit", get(submit_form).post(submit))
        .route("/ui/live/jobs", get(live_jobs))
}

// ---------------------------------------------------------------------------------------
// Responses

/// A page could not be shown: rendered as an error page with its status.
#[derive(Debug)]
enum UiError {
    NotFound(String),
    BadRequest(String),
    Forbidden(String),
    /// The API's own error (a database outage is a 503, as there).
    Api(ApiError),
}

impl From<DbError> for UiError {
    fn from(error: DbError) -> Self {
        UiError::Api(ApiError::from(error))
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            UiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            UiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            UiError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            UiError::Api(e) => {
                let (status, body, _) = e.parts();
                let message = body["error"].as_str().unwrap_or("error").to_string();
                (status, message)
            }
        };
        let title = status.canonical_reason().unwrap_or("Error").to_string();
        html(
            status,
            &ErrorPage {
                layout: Layout::bare(title),
                status: status.as_u16(),
                message,
            },
            None,
        )
    }
}

/// Renders a page with the headers every page carries: no caching (pages hold live numbers
/// and form tokens), a content security policy that allows only this server's own script and
/// stylesheet, and no framing.
fn html(
    status: StatusCode,
    page: &impl Template,
    cookie: Option<(HeaderName, HeaderValue)>,
) -> Response {
    let body = match page.render() {
        Ok(body) => body,
        Err(error) => {
            return ApiError::Internal(format!("template failed: {error}")).into_response();
        }
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("same-origin"),
    );
    if let Some((name, value)) = cookie {
        headers.append(name, value);
    }
    response
}

/// A compiled-in asset, served under a URL that names its content hash (so it can be cached
/// for long: a new build changes the URL).
struct Asset {
    body: &'static str,
    content_type: &'static str,
    url: String,
}

static CSS: LazyLock<Asset> =
    LazyLock::new(|| Asset::new(include_str!("assets/app.css"), "text/css", "app.css"));
static JS: LazyLock<Asset> =
    LazyLock::new(|| Asset::new(include_str!("assets/app.js"), "text/javascript", "app.js"));

impl Asset {
    fn new(body: &'static str, content_type: &'static str, name: &str) -> Self {
        use sha2::{Digest, Sha256};
        let hash = Sha256::digest(body.as_bytes());
        let tag: String = hash.iter().take(6).map(|b| format!("{b:02x}")).collect();
        Asset {
            body,
            content_type,
            url: format!("/ui/assets/{name}?v={tag}"),
        }
    }
}

fn asset(asset: &Asset) -> Response {
    (
        [
            (
                CONTENT_TYPE,
                format!("{}; charset=utf-8", asset.content_type),
            ),
            (CACHE_CONTROL, "public, max-age=86400".into()),
        ],
        asset.body,
    )
        .into_response()
}

impl Layout {
    fn new(title: impl Into<String>, active: &'static str, viewer: &Viewer) -> Self {
        Layout {
            title: title.into(),
            active,
            css: CSS.url.clone(),
            js: JS.url.clone(),
            signed_in: viewer.signed_in.clone(),
            csrf: viewer.csrf.token.clone(),
        }
    }

    /// The frame of a page shown without a viewer (an error): no sign-out button.
    fn bare(title: impl Into<String>) -> Self {
        Layout {
            title: title.into(),
            active: "",
            css: CSS.url.clone(),
            js: JS.url.clone(),
            signed_in: None,
            csrf: String::new(),
        }
    }
}

/// Who is looking, as every page needs it: the key a sign-in session acts for (shown, with a
/// sign-out button), and the CSRF token the page's forms carry (with its cookie if the
/// browser has none yet).
struct Viewer {
    signed_in: Option<String>,
    csrf: csrf::Csrf,
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let secure = state.sessions.secure(&parts.headers);
        Ok(Viewer {
            signed_in: parts
                .extensions
                .get::<session::SignedIn>()
                .map(|s| s.key_name.clone()),
            csrf: csrf::issue(&parts.headers, secure),
        })
    }
}

impl Viewer {
    /// The `Set-Cookie` of the CSRF token, if the page must send one.
    fn cookie(&self) -> Option<(HeaderName, HeaderValue)> {
        self.csrf.set_cookie.clone()
    }
}

// ---------------------------------------------------------------------------------------
// Pages

async fn overview(
    State(state): State<AppState>,
    caller: Caller,
    viewer: Viewer,
) -> Result<Response, UiError> {
    let o = Data::new(&state, &caller).overview(RECENT_JOBS).await?;
    let states = o
        .jobs_by_state
        .iter()
        .map(|(status, n)| StateTile {
            state: status.as_str(),
            label: state_label(*status),
            count: views::thousands(*n),
            url: format!("/ui/jobs?state={}", status.as_str()),
        })
        .collect();
    let now = o.now;
    let ops = o.operations.map(|ops| OperationsView {
        queue: vec![
            Figure {
                key: "pending",
                label: "Pending",
                value: views::thousands(ops.queue.pending),
                hint: "waiting for a worker",
            },
            Figure {
                key: "running",
                label: "Running",
                value: views::thousands(ops.queue.running),
                hint: "leased to a worker now",
            },
            Figure {
                key: "retry",
                label: "Waiting for a retry",
                value: views::thousands(ops.queue.retry_waiting),
                hint: "back in the queue after a failed attempt",
            },
        ],
        workers: WorkersView::new(&ops.workers, now),
        chart: chart::build(ops.chart_since, &ops.per_minute),
        failures: ops
            .failures
            .into_iter()
            .map(|(kind, failed, retried)| FailureLine::new(kind, failed, retried))
            .collect(),
    });
    let page = OverviewPage {
        layout: Layout::new("Overview", "overview", &viewer),
        states,
        ops,
        recent: o.recent.iter().map(|j| JobLine::new(j, now)).collect(),
    };
    Ok(html(StatusCode::OK, &page, viewer.cookie()))
}

fn state_label(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Ongoing => "Ongoing",
        JobStatus::Completed => "Completed",
        JobStatus::Failed => "Failed",
        JobStatus::Cancelled => "Cancelled",
    }
}

/// A date of a date filter (`YYYY-MM-DD`, UTC) as epoch ms of its start.
fn day_start(field: &str, text: &str) -> Result<Option<i64>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map(|d| {
            Some(
                d.and_hms_opt(0, 0, 0)
                    .expect("midnight exists")
                    .and_utc()
                    .timestamp_millis(),
            )
        })
        .map_err(|_| format!("{field}: not a date; use YYYY-MM-DD"))
}

/// A query string from pairs, leaving out empty values.
fn query(pairs: &[(&str, &str)]) -> String {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        out.append_pair(k, v);
    }
    let q = out.finish();
    if q.is_empty() { q } else { format!("?{q}") }
}

async fn jobs(
    State(state): State<AppState>,
    caller: Caller,
    viewer: Viewer,
    FirstParams(params): FirstParams,
) -> Result<Response, UiError> {
    let data = Data::new(&state, &caller);
    let param = |name: &str| params.get(name).map(|s| s.trim()).unwrap_or_default();
    let (state_text, from_text, to_text, id_text) =
        (param("state"), param("from"), param("to"), param("id"));
    let mut notice = None;
    let mut status = StatusCode::OK;

    if !id_text.is_empty() {
        match id_text.trim_start_matches('#').parse::<i64>() {
            Ok(id) => match data.job(id).await? {
                Some(job) => {
                    return Ok(Redirect::to(&format!("/ui/jobs/{}", job.id)).into_response());
                }
                None => {
                    notice = Some(format!("No job {id}."));
                    status = StatusCode::NOT_FOUND;
                }
            },
            Err(_) => {
                notice = Some("id: a job id is a whole number".into());
                status = StatusCode::BAD_REQUEST;
            }
        }
    }
    let mut problems = Vec::new();
    let job_status = match state_text {
        "" => None,
        s => JobStatus::parse(s).or_else(|| {
            problems.push("state: must be one of ongoing, completed, failed, cancelled".into());
            None
        }),
    };
    let from = day_start("from", from_text).unwrap_or_else(|e| {
        problems.push(e);
        None
    });
    let to = day_start("to", to_text)
        .unwrap_or_else(|e| {
            problems.push(e);
            None
        })
        // The whole of the last day.
        .map(|t| t + 86_400_000);
    if let (Some(f), Some(t)) = (from, to)
        && f >= t
    {
        problems.push("to: must not be before from".into());
    }
    let cursor = match params.get("after") {
        None => None,
        Some(text) => JobCursor::decode(text).or_else(|| {
            problems.push("after: not a cursor from this list".into());
            None
        }),
    };
    if !problems.is_empty() {
        notice = Some(problems.join("; "));
        status = StatusCode::BAD_REQUEST;
    }
    let filter = JobFilter {
        status: job_status,
        created_from: from,
        created_to: to,
    };
    let now = crate::db::now_ms();
    let (rows, next) = data.jobs(&filter, cursor, JOBS_PER_PAGE).await?;
    let keep = [("from", from_text), ("to", to_text)];
    let states = std::iter::once(("", "All"))
        .chain(
            [
                JobStatus::Ongoing,
                JobStatus::Completed,
                JobStatus::Failed,
                JobStatus::Cancelled,
            ]
            .map(|s| (s.as_str(), state_label(s))),
        )
        .map(|(value, label)| Choice {
            value: value.into(),
            label: label.into(),
            selected: job_status.map(JobStatus::as_str).unwrap_or("") == value,
            url: format!("/ui/jobs{}", query(&[("state", value), keep[0], keep[1]])),
        })
        .collect();
    let here = [("state", state_text), keep[0], keep[1]];
    let page = JobsPage {
        layout: Layout::new("Jobs", "jobs", &viewer),
        jobs: rows.iter().map(|j| JobLine::new(j, now)).collect(),
        states,
        from: from_text.into(),
        to: to_text.into(),
        id: id_text.into(),
        filtered: !(state_text.is_empty() && from_text.is_empty() && to_text.is_empty()),
        next_url: next.map(|c| {
            let cursor = c.encode();
            format!(
                "/ui/jobs{}",
                query(&[here[0], here[1], here[2], ("after", &cursor)])
            )
        }),
        first_url: cursor.map(|_| format!("/ui/jobs{}", query(&here))),
        notice,
    };
    Ok(html(status, &page, viewer.cookie()))
}

/// The `{job_id}` of a dashboard path: anything else is no job (an HTML 404).
struct UiJobId(i64);

impl<S: Send + Sync> FromRequestParts<S> for UiJobId {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw = Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(raw)| raw)
            .unwrap_or_default();
        raw.parse::<i64>()
            .map(UiJobId)
            .map_err(|_| UiError::NotFound("There is no such job.".into()))
    }
}

/// Notices a redirect may ask the job page to show (fixed words, never text from the URL).
fn job_notice(key: &str) -> Option<&'static str> {
    match key {
        "submitted" => Some("Job submitted."),
        "cancelled" => Some("Job cancelled: its unfinished images will not be processed."),
        "finished" => Some("The job had already finished; there was nothing to cancel."),
        _ => None,
    }
}

async fn job(
    State(state): State<AppState>,
    caller: Caller,
    viewer: Viewer,
    UiJobId(id): UiJobId,
    FirstParams(params): FirstParams,
) -> Result<Response, UiError> {
    let data = Data::new(&state, &caller);
    let job = data
        .job(id)
        .await?
        .ok_or_else(|| UiError::NotFound(format!("There is no job {id}.")))?;
    let filter_text = params.get("status").map(String::as_str).unwrap_or("");
    let filter = match filter_text {
        "" => None,
        s => Some(ImageStatus::parse(s).ok_or_else(|| {
            UiError::BadRequest("status: must be one of pending, running, succeeded, failed".into())
        })?),
    };
    let position = |name: &str| -> Result<Option<i64>, UiError> {
        params
            .get(name)
            .map(|v| {
                v.parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| UiError::BadRequest(format!("{name}: not a position")))
            })
            .transpose()
    };
    let direction = match (position("after")?, position("before")?) {
        (_, Some(before)) => Direction::Before(before),
        (Some(after), None) => Direction::After(after),
        (None, None) => Direction::After(-1),
    };
    let mut rows = data
        .images(&job, filter, direction, IMAGES_PER_PAGE + 1)
        .await?;
    let more = rows.len() as i64 > IMAGES_PER_PAGE;
    if more {
        match direction {
            Direction::After(_) => {
                rows.pop();
            }
            Direction::Before(_) => {
                rows.remove(0);
            }
        }
    }
    let (has_prev, has_next) = match direction {
        Direction::After(after) => (after >= 0, more),
        Direction::Before(_) => (more, true),
    };
    let link = |key: &str, seq: i64| {
        let seq = seq.to_string();
        format!(
            "/ui/jobs/{id}{}#images",
            query(&[("status", filter_text), (key, &seq)])
        )
    };
    let prev_url = rows
        .first()
        .filter(|_| has_prev)
        .map(|first| link("before", first.seq));
    let next_url = rows
        .last()
        .filter(|_| has_next)
        .map(|last| link("after", last.seq));
    let first_url =
        has_prev.then(|| format!("/ui/jobs/{id}{}#images", query(&[("status", filter_text)])));
    let filters = [
        ("", "All"),
        ("pending", "Pending"),
        ("running", "Running"),
        ("succeeded", "Succeeded"),
        ("failed", "Failed"),
    ]
    .map(|(value, label)| Choice {
        value: value.into(),
        label: label.into(),
        selected: value == filter_text,
        url: format!("/ui/jobs/{id}{}#images", query(&[("status", value)])),
    })
    .into_iter()
    .collect();
    let webhook = crate::http::jobs::with_webhooks(&state, vec![job.clone()])
        .await
        .map_err(UiError::Api)?
        .pop()
        .and_then(|body| body.webhook);
    let now = crate::db::now_ms();
    let page = JobPage {
        layout: Layout::new(format!("Job {id}"), "jobs", &viewer),
        job: JobLine::new(&job, now),
        errors: job.errors.clone(),
        images: rows.iter().map(ImageLine::new).collect(),
        filters,
        filter_label: match filter {
            None => "images".into(),
            Some(s) => format!("{} images", s.as_str()),
        },
        prev_url,
        next_url,
        first_url,
        csrf: viewer.csrf.token.clone(),
        notice: params
            .get("done")
            .and_then(|k| job_notice(k))
            .map(String::from),
        webhook: WebhookView::new(webhook.as_ref()),
        csv_url: format!("/ui/jobs/{id}/results.csv"),
        api_url: format!("/api/jobs/{id}"),
    };
    Ok(html(StatusCode::OK, &page, viewer.cookie()))
}

/// `GET /ui/jobs/{id}/results.csv`: the API's CSV export, for a browser signed in to the
/// dashboard (the API's own URL needs a key in a header).
async fn results_csv(
    State(state): State<AppState>,
    caller: Caller,
    UiJobId(id): UiJobId,
) -> Result<Response, ApiError> {
    crate::http::export::csv_download(&state, &caller, id).await
}

/// Reads a small urlencoded form body.
async fn small_form(body: Body) -> Result<HashMap<String, String>, UiError> {
    let bytes = crate::http::body::read(body, SMALL_FORM_BYTES, "form")
        .await
        .map_err(UiError::Api)?;
    Ok(url::form_urlencoded::parse(&bytes)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect())
}

/// `POST /ui/jobs/{id}/cancel`: with `confirm=yes` (the dialog's button, or the confirmation
/// page's), cancels; without, shows the confirmation page, so cancelling takes two deliberate
/// steps with or without JavaScript.
async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    viewer: Viewer,
    UiJobId(id): UiJobId,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, UiError> {
    let form = small_form(body).await?;
    csrf::check(&headers, form.get(csrf::FIELD).map(String::as_str))
        .map_err(|e| UiError::Forbidden(e.to_string()))?;
    let data = Data::new(&state, &caller);
    let job = data
        .job(id)
        .await?
        .ok_or_else(|| UiError::NotFound(format!("There is no job {id}.")))?;
    if form.get("confirm").map(String::as_str) != Some("yes") {
        let page = ConfirmCancelPage {
            layout: Layout::new(format!("Cancel job {id}?"), "jobs", &viewer),
            job: JobLine::new(&job, crate::db::now_ms()),
            csrf: viewer.csrf.token.clone(),
        };
        return Ok(html(StatusCode::OK, &page, viewer.cookie()));
    }
    let done = match data.cancel(&job).await? {
        Cancel::Cancelled(_) => "cancelled",
        Cancel::Finished(_) => "finished",
        Cancel::NotFound => return Err(UiError::NotFound(format!("There is no job {id}."))),
    };
    Ok(Redirect::to(&format!("/ui/jobs/{id}?done={done}")).into_response())
}

const EXAMPLE_JOB: &str = r#"{
  "count": 2,
  "visits": [
    {"store_id": "S00339218",
     "image_url": ["https://www.gstatic.com/webp/gallery/2.jpg",
                   "https://www.gstatic.com/webp/gallery/3.jpg"],
     "visit_time": "2026-11-28T10:00:00Z"},
    {"store_id": "S01408764",
     "image_url": ["https://www.gstatic.com/webp/gallery/3.jpg"],
     "visit_time": "2026-11-28T10:05:00Z"}
  ]
}"#;

/// Pasted text is shown again after a refusal up to this size.
const ECHO_MAX_BYTES: usize = 256 * 1024;

fn submit_page(
    state: &AppState,
    viewer: &Viewer,
    status: StatusCode,
    text: String,
    error: Option<String>,
) -> Response {
    let page = SubmitPage {
        layout: Layout::new("Submit a job", "submit", viewer),
        csrf: viewer.csrf.token.clone(),
        text,
        status: error.as_ref().map(|_| status.as_u16()),
        error,
        example: EXAMPLE_JOB,
        max_images: views::thousands(state.limits.max_images_per_job as i64),
    };
    html(status, &page, viewer.cookie())
}

async fn submit_form(State(state): State<AppState>, _caller: Caller, viewer: Viewer) -> Response {
    submit_page(&state, &viewer, StatusCode::OK, String::new(), None)
}

/// The fields of the submit form: the token, and the job pasted or uploaded.
#[derive(Default)]
struct SubmitForm {
    csrf: Option<String>,
    text: String,
    file: Vec<u8>,
}

async fn read_submit_form(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<SubmitForm, ApiError> {
    // Room for the job (as text or as a file) and the other fields.
    let limit = state.max_body_bytes + 64 * 1024;
    let bytes = crate::http::body::read(body, limit, "form")
        .await
        .map_err(|e| match e {
            ApiError::TooLarge(_) => crate::http::submit::over_limit(state.max_body_bytes),
            other => other,
        })?;
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mut form = SubmitForm::default();
    if let Ok(boundary) = multer::parse_boundary(content_type) {
        let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(bytes) });
        let mut multipart = multer::Multipart::new(stream, boundary);
        let bad = |e: multer::Error| ApiError::BadRequest(format!("form: cannot be read: {e}"));
        while let Some(field) = multipart.next_field().await.map_err(bad)? {
            match field.name() {
                Some(csrf::FIELD) => form.csrf = Some(field.text().await.map_err(bad)?),
                Some("job") => form.text = field.text().await.map_err(bad)?,
                Some("file") => form.file = field.bytes().await.map_err(bad)?.to_vec(),
                _ => {}
            }
        }
    } else {
        for (k, v) in url::form_urlencoded::parse(&bytes) {
            match k.as_ref() {
                csrf::FIELD => form.csrf = Some(v.into_owned()),
                "job" => form.text = v.into_owned(),
                _ => {}
            }
        }
    }
    Ok(form)
}

/// `POST /ui/submit`: the job goes through the API's own submit path; a refusal shows the
/// API's status and message.
async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    viewer: Viewer,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let form = match read_submit_form(&state, &headers, body).await {
        Ok(form) => form,
        Err(error) => {
            let (status, body, _) = error.parts();
            let message = body["error"].as_str().map(String::from);
            return submit_page(&state, &viewer, status, String::new(), message);
        }
    };
    if let Err(e) = csrf::check(&headers, form.csrf.as_deref()) {
        return UiError::Forbidden(e.to_string()).into_response();
    }
    let from_file = !form.file.is_empty();
    let job: &[u8] = if from_file {
        &form.file
    } else {
        form.text.as_bytes()
    };
    let echo = if !from_file && form.text.len() <= ECHO_MAX_BYTES {
        form.text.clone()
    } else {
        String::new()
    };
    if job.iter().all(u8::is_ascii_whitespace) {
        return submit_page(
            &state,
            &viewer,
            StatusCode::BAD_REQUEST,
            echo,
            Some("job: paste a job's JSON or choose a file".into()),
        );
    }
    match Data::new(&state, &caller).submit(job).await {
        Ok(id) => Redirect::to(&format!("/ui/jobs/{id}?done=submitted")).into_response(),
        Err(error) => {
            let (status, body, _) = error.parts();
            let message = body["error"].as_str().map(String::from);
            submit_page(&state, &viewer, status, echo, message)
        }
    }
}

/// `GET /ui/live/jobs?ids=1,2,3`: the progress of the jobs a list shows, in one query, as
/// `{"jobs": [<the /api/jobs/{id} body>, …]}`.
async fn live_jobs(
    State(state): State<AppState>,
    caller: Caller,
    FirstParams(params): FirstParams,
) -> Result<Response, ApiError> {
    let ids = params
        .get("ids")
        .map(String::as_str)
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<i64>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| ApiError::BadRequest("ids: comma-separated job ids".into()))?;
    if ids.len() > LIVE_MAX_IDS {
        return Err(ApiError::BadRequest(format!(
            "ids: at most {LIVE_MAX_IDS} jobs at once"
        )));
    }
    let jobs = Data::new(&state, &caller).progress(&ids).await?;
    let jobs: Vec<JobBody> = crate::http::jobs::with_webhooks(&state, jobs).await?;
    Ok((
        [(CACHE_CONTROL, "no-store")],
        axum::Json(json!({ "jobs": jobs })),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_filters_read_utc_days() {
        assert_eq!(day_start("from", ""), Ok(None));
        assert_eq!(day_start("from", "1970-01-02"), Ok(Some(86_400_000)));
        assert_eq!(
            day_start("to", "2026-13-01"),
            Err("to: not a date; use YYYY-MM-DD".into())
        );
    }

    #[test]
    fn query_strings_leave_out_empty_values_and_escape_the_rest() {
        assert_eq!(query(&[("state", ""), ("from", "")]), "");
        assert_eq!(
            query(&[("state", "failed"), ("after", "o12"), ("to", "")]),
            "?state=failed&after=o12"
        );
        assert_eq!(query(&[("q", "a&b")]), "?q=a%26b");
    }

    #[test]
    fn assets_are_named_by_their_content() {
        assert!(CSS.url.starts_with("/ui/assets/app.css?v="));
        assert!(JS.url.starts_with("/ui/assets/app.js?v="));
        assert_ne!(CSS.url, JS.url);
    }
}
