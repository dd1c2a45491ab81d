//! `Range` as nginx answers it, for the local image hosts of the tests and of the benchmark
//! (`benches/e2e` includes this file): the service asks for the first 64 KB of each image.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

/// The answer to `Range: bytes=A-B` (or `A-`): 206 with that part and `Content-Range`, 416
/// when it starts past the end; the whole body without a range it understands.
pub fn ranged(headers: &HeaderMap, body: Bytes) -> Response {
    let asked = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok())));
    let Some((from, to)) = asked else {
        return body.into_response();
    };
    let size = body.len();
    if from >= size {
        return (
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, format!("bytes */{size}"))],
        )
            .into_response();
    }
    let to = to.unwrap_or(size - 1).min(size - 1);
    (
        StatusCode::PARTIAL_CONTENT,
        [(header::CONTENT_RANGE, format!("bytes {from}-{to}/{size}"))],
        body.slice(from..=to),
    )
        .into_response()
}
