//! One job: `GET /ui/jobs/{id}` (progress, per-store errors, its images page by page, the
//! webhook's state), its CSV, and cancelling it (`POST /ui/jobs/{id}/cancel`, two steps).

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

use super::csrf;
use super::data::Data;
use super::frame::{UiError, UiJobId, Viewer, html, query, small_form};
use super::views::{Choice, ConfirmCancelPage, ImageLine, JobLine, JobPage, Layout, WebhookView};
use crate::auth::Caller;
use crate::db::dashboard::Direction;
use crate::db::jobs::Cancel;
use crate::domain::ImageStatus;
use crate::web::{AppState, FirstParams};

/// Images per page of a job.
const IMAGES_PER_PAGE: i64 = 50;

/// Notices a redirect may ask the job page to show (fixed words, never text from the URL).
fn job_notice(key: &str) -> Option<&'static str> {
    match key {
        "submitted" => Some("Job submitted."),
        "cancelled" => Some("Job cancelled: its unfinished images will not be processed."),
        "finished" => Some("The job had already finished; there was nothing to cancel."),
        _ => None,
    }
}

pub(super) async fn page(
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
    let webhook = crate::web::jobs::with_webhooks(&state.db, vec![job.clone()])
        .await?
        .pop()
        .and_then(|body| body.webhook);
    let now = state.db.now_ms();
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
pub(super) async fn results_csv(
    State(state): State<AppState>,
    caller: Caller,
    UiJobId(id): UiJobId,
) -> Result<Response, UiError> {
    crate::web::export::csv_download(&state.db, &caller, id)
        .await?
        .ok_or_else(|| UiError::NotFound(format!("There is no job {id}.")))
}

/// `POST /ui/jobs/{id}/cancel`: with `confirm=yes` (the dialog's button, or the confirmation
/// page's), cancels; without, shows the confirmation page, so cancelling takes two deliberate
/// steps with or without JavaScript.
pub(super) async fn cancel(
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
            job: JobLine::new(&job, state.db.now_ms()),
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
