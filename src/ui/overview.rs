//! `GET /ui/`: the overview — jobs by state, and for admins the queue, the workers, images
//! finished per minute and failures by kind.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

use super::chart;
use super::data::Data;
use super::frame::{UiError, Viewer, html};
use super::views::{
    self, FailureLine, Figure, JobLine, Layout, OperationsView, OverviewPage, StateTile,
    WorkersView,
};
use crate::auth::Caller;
use crate::domain::JobStatus;
use crate::web::AppState;

/// Jobs on the overview.
const RECENT_JOBS: i64 = 8;

pub(super) async fn page(
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

pub(super) fn state_label(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Ongoing => "Ongoing",
        JobStatus::Completed => "Completed",
        JobStatus::Failed => "Failed",
        JobStatus::Cancelled => "Cancelled",
    }
}
