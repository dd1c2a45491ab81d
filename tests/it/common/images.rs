//! A local image host for tests: real encoded images generated on demand (cached), plus the
//! misbehaving endpoints a real host can have. Counts every request it receives.
//!
//! Routes:
//! - `/img/{w}x{h}.{png|jpg|gif|bmp|webp|tiff}` — an image of that size and format; image
//!   routes honour `Range` as nginx does (206 with `Content-Range`)
//! - `/status/{code}` — answers that status with an HTML body (GET or POST: a webhook target too)
//! - `/html` — an HTML error page served with 200
//! - `/flaky/{key}/{fails}/{w}x{h}.png` — 503 for the first `fails` requests of `key`, then the image
//! - `/slow/{ms}/{w}x{h}.png` — waits `ms` before answering
//! - `/redirect/{n}` — `n` redirects, then a 10×10 PNG; `/loop` — redirects to itself
//! - `/redirect-to?url=…` — one redirect to any URL
//! - `/drip` — a PNG header, then one byte every 200 ms, forever
//! - `/endless` — a PNG header, then zeros as fast as they go, forever
//! - `/retry-after/{key}/{secs}/{w}x{h}.png` — first 503 with `Retry-After: secs`, then the image
//! - `/corrupt-jpeg` — a JPEG start, then 1.5 MB of empty segments and never a size
//! - `/empty` — 200 with no body; `/truncated` — promises 1000 bytes, sends 10 and closes

use std::collections::HashMap;
use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Query;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use image::{ImageFormat, RgbImage};

#[derive(Default)]
struct Inner {
    cache: Mutex<HashMap<String, Arc<Vec<u8>>>>,
    requests: AtomicUsize,
    flaky_times: Mutex<HashMap<String, Vec<std::time::Instant>>>,
}

#[derive(Clone)]
pub struct ImageServer {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

/// Encodes a `width`×`height` image in `ext`'s format.
pub fn encode(width: u32, height: u32, ext: &str) -> Vec<u8> {
    let format = match ext {
        "png" => ImageFormat::Png,
        "jpg" | "jpeg" => ImageFormat::Jpeg,
        "gif" => ImageFormat::Gif,
        "bmp" => ImageFormat::Bmp,
        "webp" => ImageFormat::WebP,
        "tiff" => ImageFormat::Tiff,
        other => panic!("no encoder for {other}"),
    };
    let img = RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

impl ImageServer {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0").await
    }

    /// The same server bound to `bind` (`0.0.0.0:0`: reachable from network namespaces).
    pub async fn start_on(bind: &str) -> Self {
        let inner = Arc::new(Inner::default());
        let app = Router::new()
            .route("/img/{file}", get(image_route))
            .route("/status/{code}", get(status_route).post(status_route))
            .route(
                "/html",
                get(|| async {
                    (
                        [(header::CONTENT_TYPE, "text/html")],
                        "<!DOCTYPE html><html><body>Not here</body></html>",
                    )
                }),
            )
            .route("/flaky/{key}/{fails}/{file}", get(flaky_route))
            .route("/slow/{ms}/{file}", get(slow_route))
            .route("/redirect/{n}", get(redirect_route))
            .route("/loop", get(|| async { Redirect::to("/loop") }))
            .route("/redirect-to", get(redirect_to_route))
            .route("/drip", get(drip_route))
            .route("/endless", get(endless_route))
            .route("/empty", get(|| async { StatusCode::OK }))
            .route("/retry-after/{key}/{secs}/{file}", get(retry_after_route))
            .route("/corrupt-jpeg", get(corrupt_jpeg_route))
            .route("/truncated", get(truncated_route))
            .layer(axum::middleware::from_fn_with_state(inner.clone(), count))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .expect("bind image server");
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.expect("image server");
        });
        ImageServer { addr, inner }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn image(&self, width: u32, height: u32, ext: &str) -> String {
        self.url(&format!("/img/{width}x{height}.{ext}"))
    }

    pub fn requests(&self) -> usize {
        self.inner.requests.load(Ordering::SeqCst)
    }

    /// When each request for a flaky key arrived.
    pub fn flaky_times(&self, key: &str) -> Vec<std::time::Instant> {
        self.inner
            .flaky_times
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .unwrap_or_default()
    }
}

async fn count(
    State(inner): State<Arc<Inner>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    inner.requests.fetch_add(1, Ordering::SeqCst);
    next.run(req).await
}

fn parse_file(file: &str) -> Option<(u32, u32, String)> {
    let (dims, ext) = file.split_once('.')?;
    let (w, h) = dims.split_once('x')?;
    Some((w.parse().ok()?, h.parse().ok()?, ext.to_string()))
}

/// Serves a generated image. Encoding (slow for big images in a debug build) runs on the
/// blocking pool, so it never stalls the runtime that the app under test shares.
async fn serve_image(inner: &Arc<Inner>, file: &str, headers: &HeaderMap) -> Response {
    let Some((w, h, ext)) = parse_file(file) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let cached = inner.cache.lock().unwrap().get(file).cloned();
    let bytes = match cached {
        Some(bytes) => bytes,
        None => {
            let encoded = tokio::task::spawn_blocking(move || Arc::new(encode(w, h, &ext)))
                .await
                .expect("encode task");
            inner
                .cache
                .lock()
                .unwrap()
                .entry(file.to_string())
                .or_insert(encoded)
                .clone()
        }
    };
    let mut answer = super::range::ranged(headers, bytes::Bytes::from(bytes.as_ref().clone()));
    answer.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    answer
}

async fn image_route(
    State(inner): State<Arc<Inner>>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    serve_image(&inner, &file, &headers).await
}

async fn status_route(Path(code): Path<u16>) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT);
    (
        status,
        [(header::CONTENT_TYPE, "text/html")],
        "<html><body>error</body></html>",
    )
        .into_response()
}

/// Records when a request for `key` came, and returns how many have come for it so far.
fn note_request(inner: &Inner, key: String) -> usize {
    let mut times = inner.flaky_times.lock().unwrap();
    let seen = times.entry(key).or_default();
    seen.push(std::time::Instant::now());
    seen.len()
}

async fn flaky_route(
    State(inner): State<Arc<Inner>>,
    Path((key, fails, file)): Path<(String, usize, String)>,
    headers: HeaderMap,
) -> Response {
    let seen = note_request(&inner, key);
    if seen <= fails {
        return (StatusCode::SERVICE_UNAVAILABLE, "try later").into_response();
    }
    serve_image(&inner, &file, &headers).await
}

async fn slow_route(
    State(inner): State<Arc<Inner>>,
    Path((ms, file)): Path<(u64, String)>,
    headers: HeaderMap,
) -> Response {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    serve_image(&inner, &file, &headers).await
}

async fn redirect_route(Path(n): Path<u32>) -> Response {
    if n == 0 {
        Redirect::to("/img/10x10.png").into_response()
    } else {
        Redirect::to(&format!("/redirect/{}", n - 1)).into_response()
    }
}

async fn redirect_to_route(Query(q): Query<HashMap<String, String>>) -> Response {
    Redirect::to(q.get("url").map(String::as_str).unwrap_or("/")).into_response()
}

const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

async fn drip_route() -> Response {
    let stream = futures_util::stream::unfold(0u32, |n| async move {
        if n > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let chunk = if n == 0 {
            bytes::Bytes::from_static(PNG_MAGIC)
        } else {
            bytes::Bytes::from_static(b"\0")
        };
        Some((Ok::<_, std::io::Error>(chunk), n + 1))
    });
    Body::from_stream(stream).into_response()
}

async fn endless_route() -> Response {
    let stream = futures_util::stream::unfold(0u32, |n| async move {
        let chunk = if n == 0 {
            bytes::Bytes::from_static(PNG_MAGIC)
        } else {
            bytes::Bytes::from(vec![0u8; 64 * 1024])
        };
        Some((Ok::<_, std::io::Error>(chunk), n + 1))
    });
    Body::from_stream(stream).into_response()
}

async fn truncated_route() -> Response {
    let stream = futures_util::stream::iter(vec![
        Ok(bytes::Bytes::from_static(b"\x89PNG\r\n\x1a\n\0\0")),
        Err(std::io::Error::other("cut short")),
    ]);
    (
        [(header::CONTENT_LENGTH, "1000")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// A TCP server that misbehaves below HTTP: `hang` accepts and never answers; `reset` reads
/// the request, sends half a status line and resets the connection.
pub async fn raw_server(behaviour: &'static str) -> SocketAddr {
    raw_server_on(behaviour, "127.0.0.1:0").await
}

/// [`raw_server`] bound to `bind`.
pub async fn raw_server_on(behaviour: &'static str, bind: &str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .expect("bind raw server");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut socket, _)) = listener.accept().await {
            match behaviour {
                "hang" => held.push(socket),
                _ => {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = [0u8; 1024];
                    let _ = socket.read(&mut buf).await;
                    let _ = socket.write_all(b"HTTP/1.1 200").await;
                    // Zero linger: the close sends RST, the point of this behaviour.
                    #[allow(deprecated)]
                    let _ = socket.set_linger(Some(Duration::ZERO));
                    drop(socket);
                }
            }
        }
    });
    addr
}

async fn retry_after_route(
    State(inner): State<Arc<Inner>>,
    Path((key, secs, file)): Path<(String, u64, String)>,
    headers: HeaderMap,
) -> Response {
    let first = note_request(&inner, key) == 1;
    if first {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, secs.to_string())],
            "busy",
        )
            .into_response();
    }
    serve_image(&inner, &file, &headers).await
}

async fn corrupt_jpeg_route() -> Response {
    let mut body = vec![0xFF, 0xD8];
    while body.len() < 1_500_000 {
        body.extend_from_slice(&[0xFF, 0xE0, 0x00, 0x02]);
    }
    body.into_response()
}
