//! `GET /ui/jobs`: the job list (state and date filters, search by id, keyset pages), and
//! `GET /ui/live/jobs`, the JSON the list's script polls to move its progress bars.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CACHE_CONTROL;
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::json;

use super::data::Data;
use super::frame::{UiError, Viewer, html, query};
use super::overview::state_label;
use super::views::{Choice, JobLine, JobsPage, Layout};
use crate::auth::Caller;
use crate::db::dashboard::{JobCursor, JobFilter};
use crate::domain::JobStatus;
use crate::domain::wire::JobBody;
use crate::web::{AppState, FirstParams};

/// Jobs per page of the list.
const JOBS_PER_PAGE: i64 = 25;
/// Most jobs one live-progress request may ask about.
const LIVE_MAX_IDS: usize = 100;

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

pub(super) async fn list(
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
    let now = state.db.now_ms();
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

/// `GET /ui/live/jobs?ids=1,2,3`: the progress of the jobs a list shows, in one query, as
/// `{"jobs": [<the /api/jobs/{id} body>, …]}`.
pub(super) async fn live(
    State(state): State<AppState>,
    caller: Caller,
    FirstParams(params): FirstParams,
) -> Response {
    match live_bodies(&state, &caller, &params).await {
        Ok(jobs) => (
            [(CACHE_CONTROL, "no-store")],
            axum::Json(json!({ "jobs": jobs })),
        )
            .into_response(),
        Err(error) => error.into_json(),
    }
}

async fn live_bodies(
    state: &AppState,
    caller: &Caller,
    params: &HashMap<String, String>,
) -> Result<Vec<JobBody>, UiError> {
    let ids = params
        .get("ids")
        .map(String::as_str)
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<i64>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| UiError::BadRequest("ids: comma-separated job ids".into()))?;
    if ids.len() > LIVE_MAX_IDS {
        return Err(UiError::BadRequest(format!(
            "ids: at most {LIVE_MAX_IDS} jobs at once"
        )));
    }
    let jobs = Data::new(state, caller).progress(&ids).await?;
    Ok(crate::web::jobs::with_webhooks(&state.db, jobs).await?)
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
}
