//! `GET /api/openapi.json`: the API described from the code (utoipa). The handlers carry
//! their own `#[utoipa::path]`; this file lists them and holds the shapes that exist only on
//! the wire (the submit body is parsed by hand for its error messages, and the error bodies).

use axum::Json;
use axum::Router;
use axum::routing::get;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use super::AppState;

/// `{"error": "<field>: <problem>"}` — every error except the assignment's `400 {}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    #[schema(example = "visits[1].image_url: must not be empty")]
    pub error: String,
}

/// `{}`: the assignment's answer to a bad `jobid`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmptyBody {}

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthBody {
    /// ok | ready | unready
    pub status: String,
    /// Why the service is not ready (503 only).
    pub error: Option<String>,
}

/// A job: store visits with their photos. Unknown extra fields are ignored.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubmitRequest {
    /// Must equal the number of visits.
    pub count: u64,
    pub visits: Vec<VisitRequest>,
    /// Optional: an http(s) URL that receives a signed `job.finished` event (Standard
    /// Webhooks) when the job finishes.
    #[schema(example = "https://hooks.example.com/retail-pulse")]
    pub webhook: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VisitRequest {
    #[schema(example = "S00339218")]
    pub store_id: String,
    /// http(s) URLs of the visit's photos.
    pub image_url: Vec<String>,
    /// Kept as sent; RFC 3339 values are also stored as a timestamp.
    #[schema(example = "2026-11-28T10:00:00Z")]
    pub visit_time: String,
}

/// The `api_key` security scheme the protected operations name: `Authorization: Bearer rp_…`.
struct BearerKeys;

impl Modify for BearerKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("rp_ followed by 64 hex digits")
                    .description(Some(
                        "An API key from `retail-pulse keys create`. Needed unless the server runs \
                         with --auth off, or in --auth auto before any key exists (then only \
                         loopback clients are served).",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Retail Pulse",
        description = "Store-visit photos in, perimeters out."
    ),
    modifiers(&BearerKeys),
    paths(
        super::submit::submit,
        super::status::status,
        super::jobs::list,
        super::jobs::job,
        super::jobs::images,
        super::jobs::cancel,
        super::export::results_csv,
        super::workers::list,
        super::webhooks::secret,
        super::webhooks::rotate,
        super::health::alive,
        super::health::ready,
        super::health::metrics,
    ),
    components(schemas(
        SubmitRequest,
        VisitRequest,
        ErrorBody,
        EmptyBody,
        HealthBody,
        super::submit::Submitted,
        super::status::StatusBody,
        crate::domain::wire::JobBody,
        crate::domain::wire::WebhookBody,
        crate::domain::wire::Progress,
        super::jobs::JobList,
        super::jobs::ImagesBody,
        super::jobs::ImageBody,
        super::workers::WorkerList,
        super::workers::WorkerBody,
        super::webhooks::SecretBody,
        super::webhooks::RotatedBody,
        crate::domain::StoreError,
    ))
)]
pub struct ApiDoc;

pub fn router() -> Router<AppState> {
    Router::new().route(
        "/api/openapi.json",
        get(|| async { Json(ApiDoc::openapi()) }),
    )
}
