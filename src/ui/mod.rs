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
//!
//! One file per page: [`overview`], [`jobs`] (the list and its live JSON), [`job`] (one job,
//! its CSV, cancelling), [`submit`], [`login`]; [`frame`] is what they share — the dashboard's
//! own error ([`frame::UiError`]), the page headers, the assets and the layout.

mod chart;
mod csrf;
pub(crate) mod data;
mod frame;
mod job;
mod jobs;
mod login;
mod overview;
pub(crate) mod session;
mod submit;
mod views;

use axum::Router;
use axum::response::Redirect;
use axum::routing::{get, post};

use crate::web::AppState;

/// The dashboard's routes, to be mounted beside the API's: the pages behind
/// [`session::require_viewer`], the way in and the assets open.
pub fn router(state: &AppState) -> Router<AppState> {
    let pages = pages().route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        session::require_viewer,
    ));
    open_routes().merge(pages)
}

/// What needs no caller: the way in and the compiled-in assets.
fn open_routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route(
            "/ui/assets/app.css",
            get(|| async { frame::asset(&frame::CSS) }),
        )
        .route(
            "/ui/assets/app.js",
            get(|| async { frame::asset(&frame::JS) }),
        )
        .route("/ui/login", get(login::form).post(login::sign_in))
        .route("/ui/logout", post(login::sign_out))
}

/// The pages, forms and live JSON: each needs a caller.
fn pages() -> Router<AppState> {
    Router::new()
        .route("/ui/", get(overview::page))
        .route("/ui/jobs", get(jobs::list))
        .route("/ui/jobs/{job_id}", get(job::page))
        .route("/ui/jobs/{job_id}/cancel", post(job::cancel))
        .route("/ui/jobs/{job_id}/results.csv", get(job::results_csv))
        .route("/ui/submit", get(submit::form).post(submit::submit))
        .route("/ui/live/jobs", get(jobs::live))
}

#[cfg(test)]
mod tests {
    use super::frame::query;

    #[test]
    fn query_strings_leave_out_empty_values_and_escape_the_rest() {
        assert_eq!(query(&[("state", ""), ("from", "")]), "");
        assert_eq!(
            query(&[("state", "failed"), ("after", "o12"), ("to", "")]),
            "?state=failed&after=o12"
        );
        assert_eq!(query(&[("q", "a&b")]), "?q=a%26b");
    }
}
