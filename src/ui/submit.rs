//! `GET /ui/submit` and `POST /ui/submit`: a job pasted or uploaded as a file, accepted exactly
//! as the API accepts it.

use axum::body::Body;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

use super::csrf;
use super::data::Data;
use super::frame::{UiError, Viewer, html};
use super::views::{self, Layout, SubmitPage};
use crate::auth::Caller;
use crate::web::AppState;
use crate::web::body::{self, BodyError};
use crate::web::submit::over_limit;

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

pub(super) async fn form(
    State(state): State<AppState>,
    _caller: Caller,
    viewer: Viewer,
) -> Response {
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
) -> Result<SubmitForm, UiError> {
    // Room for the job (as text or as a file) and the other fields.
    let limit = state.max_body_bytes + 64 * 1024;
    let bytes = body::read(body, limit, "form").await.map_err(|e| match e {
        BodyError::TooLarge(_) => UiError::from(over_limit(state.max_body_bytes)),
        other => other.into(),
    })?;
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mut form = SubmitForm::default();
    if let Ok(boundary) = multer::parse_boundary(content_type) {
        let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(bytes) });
        let mut multipart = multer::Multipart::new(stream, boundary);
        let bad = |e: multer::Error| UiError::BadRequest(format!("form: cannot be read: {e}"));
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

/// `POST /ui/submit`: the job goes through the API's own submit path
/// ([`crate::web::submit`]); a refusal shows the same status and message the API would give.
pub(super) async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    viewer: Viewer,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let form = match read_submit_form(&state, &headers, body).await {
        Ok(form) => form,
        Err(error) => {
            let status = error.status();
            let message = Some(error.message());
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
            let error = UiError::from(error);
            let (status, wait) = (error.status(), error.retry_after());
            let mut response = submit_page(&state, &viewer, status, echo, Some(error.message()));
            UiError::tell_when(&mut response, wait);
            response
        }
    }
}
