//! A fast local image host for the benchmark: a few real encoded images, encoded once at
//! start and served from memory under many distinct URLs (`/img/{n}.{ext}`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use image::{ImageFormat, RgbImage};

/// (width, height, format, extension) of the images served, in rotation.
pub const SAMPLES: [(u32, u32, ImageFormat, &str); 4] = [
    (640, 480, ImageFormat::Jpeg, "jpg"),
    (1024, 768, ImageFormat::Jpeg, "jpg"),
    (300, 200, ImageFormat::Png, "png"),
    (800, 600, ImageFormat::WebP, "webp"),
];

pub struct ImageHost {
    pub addr: SocketAddr,
    pub bytes_per_image: Vec<usize>,
}

fn encode(width: u32, height: u32, format: ImageFormat) -> Vec<u8> {
    // Noise-like content so the encoders produce photo-sized files, not a few hundred bytes.
    let img = RgbImage::from_fn(width, height, |x, y| {
        let v = x
            .wrapping_mul(2_654_435_761)
            .wrapping_add(y.wrapping_mul(40_503))
            >> 13;
        image::Rgb([v as u8, (v >> 8) as u8, (x ^ y) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

impl ImageHost {
    pub async fn start() -> Self {
        let bodies: Arc<Vec<bytes::Bytes>> = Arc::new(
            SAMPLES
                .iter()
                .map(|(w, h, f, _)| bytes::Bytes::from(encode(*w, *h, *f)))
                .collect(),
        );
        let bytes_per_image = bodies.iter().map(|b| b.len()).collect();
        let app = Router::new()
            .route("/img/{file}", get(serve))
            .with_state(bodies);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.expect("image host") });
        ImageHost {
            addr,
            bytes_per_image,
        }
    }

    /// The URL of image `n`, and the perimeter the service must find for it.
    pub fn url(&self, n: usize) -> (String, u64) {
        let (w, h, _, ext) = SAMPLES[n % SAMPLES.len()];
        (
            format!("http://{}/img/{n}.{ext}", self.addr),
            2 * u64::from(w + h),
        )
    }
}

/// Serves image `n`, honouring `Range: bytes=A-B` as nginx does (the service asks for the
/// first 64 KB of each image first).
async fn serve(
    State(bodies): State<Arc<Vec<bytes::Bytes>>>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    let n: usize = match file.split('.').next().and_then(|s| s.parse().ok()) {
        Some(n) => n,
        None => return StatusCode::NOT_FOUND.into_response(),
    };
    super::range::ranged(&headers, bodies[n % bodies.len()].clone())
}
