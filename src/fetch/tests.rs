//! The downloader against local hosts that misbehave in every way a real one can.

use super::body::FIRST_LOOK;
use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves `body` once per connection, in one write, on 127.0.0.1, ignoring `Range`;
/// returns its URL.
async fn serve_once(body: Vec<u8>) -> String {
    serve(body, false, None, 0).await.0
}

/// As [`serve_once`], honouring `Range: bytes=A-B` when `ranges` (206 with
/// `Content-Range`, or 416 for a body too short for it, as nginx), stating `total` as the
/// full size when given (a lying host) and the true size otherwise, each answer after
/// `pause_ms`. Also returns the
/// `Range` of each request received ("" for none).
async fn serve(
    body: Vec<u8>,
    ranges: bool,
    total: Option<&'static str>,
    pause_ms: u64,
) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (body, log) = (body.clone(), log.clone());
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let n = socket.read(&mut request).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&request[..n]).to_lowercase();
                let range = request
                    .lines()
                    .find_map(|l| l.strip_prefix("range: bytes="))
                    .unwrap_or("")
                    .trim()
                    .to_string();
                log.lock().unwrap().push(range.clone());
                tokio::time::sleep(Duration::from_millis(pause_ms)).await;
                let asked = range
                    .split_once('-')
                    .filter(|_| ranges)
                    .map(|(a, b)| (a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()));
                let (status, extra, part) = match asked {
                    None => ("200 OK", String::new(), &body[..]),
                    Some((from, _)) if from >= body.len() => (
                        "416 Range Not Satisfiable",
                        format!("content-range: bytes */{}\r\n", body.len()),
                        &body[..0],
                    ),
                    Some((from, to)) => {
                        let to = to.min(body.len() - 1);
                        let size = total.map_or(body.len().to_string(), str::to_string);
                        (
                            "206 Partial Content",
                            format!("content-range: bytes {from}-{to}/{size}\r\n"),
                            &body[from..=to],
                        )
                    }
                };
                let mut answer = format!(
                    "HTTP/1.1 {status}\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n",
                    part.len()
                )
                .into_bytes();
                answer.extend_from_slice(part);
                let _ = socket.write_all(&answer).await;
            });
        }
    });
    (format!("http://{addr}/image.png"), seen)
}

fn fetcher() -> Fetcher {
    fetcher_with(|_| {})
}

/// A fetcher that may reach 127.0.0.1, with `set` applied to its settings.
/// Downloads `url` with the default test fetcher, which must succeed.
async fn download_ok(url: &str) -> Download {
    fetcher()
        .download(url, crate::measure::is_readable)
        .await
        .unwrap()
}

fn fetcher_with(set: impl FnOnce(&mut FetchConfig)) -> Fetcher {
    let mut config = FetchConfig {
        allow_private_networks: true,
        ..FetchConfig::default()
    };
    set(&mut config);
    Fetcher::new(&config).unwrap()
}

/// A PNG header (IHDR with the given size) and no pixels.
fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    v.extend_from_slice(&width.to_be_bytes());
    v.extend_from_slice(&height.to_be_bytes());
    v.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
    v
}

#[tokio::test]
async fn a_download_keeps_a_few_kb_of_a_large_body_whose_header_comes_first() {
    let mut body = png_header(640, 480);
    body.resize(3 * 1024 * 1024, 0x55);
    let url = serve_once(body).await;
    let download = download_ok(&url).await;
    assert_eq!(
        download.total_bytes,
        3 * 1024 * 1024,
        "the whole body is read"
    );
    assert!(
        download.head.len() <= FIRST_LOOK,
        "kept {} bytes of a body whose header is in its first 33",
        download.head.len()
    );
    assert!(!download.head_capped);
    let dims = crate::measure::measure(&download.head).unwrap();
    assert_eq!((dims.width, dims.height), (640, 480));
}

#[tokio::test]
async fn a_body_that_never_yields_a_header_is_kept_up_to_the_cap_only() {
    // Starts like a PNG (so more bytes could help) but its header never comes.
    let mut body = b"\x89PNG\r\n\x1a\n".to_vec();
    body.resize(HEAD_CAP + 512 * 1024, 0);
    let url = serve_once(body).await;
    let download = fetcher().download(&url, |_| false).await.unwrap();
    assert_eq!(download.head.len(), HEAD_CAP);
    assert!(download.head_capped);
    assert_eq!(download.total_bytes, (HEAD_CAP + 512 * 1024) as u64);
}

#[tokio::test]
async fn a_host_that_honours_ranges_sends_the_first_range_only_and_states_the_size() {
    let mut body = png_header(640, 480);
    body.resize(3 * 1024 * 1024, 0x55);
    let (url, seen) = serve(body, true, None, 0).await;
    let download = download_ok(&url).await;
    assert_eq!(
        *seen.lock().unwrap(),
        vec![format!("0-{}", FIRST_RANGE - 1)]
    );
    assert_eq!(download.total_bytes, 3 * 1024 * 1024, "the size stated");
    assert!(download.head.len() <= FIRST_LOOK);
    let dims = crate::measure::measure(&download.head).unwrap();
    assert_eq!((dims.width, dims.height), (640, 480));
}

#[tokio::test]
async fn the_size_cap_applies_to_the_size_a_ranged_answer_states() {
    let mut body = png_header(640, 480);
    body.resize(3 * 1024 * 1024, 0x55);
    let (url, _) = serve(body, true, None, 0).await;
    let error = fetcher_with(|c| c.max_bytes = 1024 * 1024)
        .download(&url, crate::measure::is_readable)
        .await
        .unwrap_err();
    assert!(matches!(error, FetchError::TooLarge(_)), "{error:?}");
}

/// A 640×480 JPEG whose size (SOF0) comes after two full-size APP1 segments, ~128 KB in.
fn jpeg_with_late_size() -> Vec<u8> {
    let mut body = vec![0xFF, 0xD8];
    for _ in 0..2 {
        body.extend_from_slice(&[0xFF, 0xE1, 0xFF, 0xFF]);
        body.resize(body.len() + 0xFFFF - 2, 0);
    }
    body.extend_from_slice(&[0xFF, 0xC0, 0, 17, 8, 0x01, 0xE0, 0x02, 0x80, 3]);
    body.extend_from_slice(&[1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
    body.resize(body.len() + 4096, 0);
    body
}

#[tokio::test]
async fn a_header_past_the_first_range_is_found_in_the_whole_body() {
    let body = jpeg_with_late_size();
    let size = body.len() as u64;
    let (url, seen) = serve(body, true, None, 0).await;
    let download = download_ok(&url).await;
    assert_eq!(
        *seen.lock().unwrap(),
        vec![format!("0-{}", FIRST_RANGE - 1), String::new()],
        "a ranged request, then one for the whole body"
    );
    assert_eq!(download.total_bytes, size);
    let dims = crate::measure::measure(&download.head).unwrap();
    assert_eq!((dims.width, dims.height), (640, 480));
}

#[tokio::test]
async fn a_body_shorter_than_its_range_is_taken_whole_and_an_empty_one_asked_again() {
    let (url, seen) = serve(png_header(20, 10), true, None, 0).await;
    let download = download_ok(&url).await;
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "one request for a small image"
    );
    assert_eq!(download.total_bytes, png_header(20, 10).len() as u64);
    // An empty body cannot satisfy any range (416): it is fetched without one.
    let (url, seen) = serve(Vec::new(), true, None, 0).await;
    let download = download_ok(&url).await;
    assert_eq!(seen.lock().unwrap().len(), 2);
    assert!(download.head.is_empty());
    assert_eq!(download.total_bytes, 0);
}

#[tokio::test]
async fn a_stated_size_below_what_came_is_no_size() {
    // `bytes 0-65535/0`: taken at its word, the part would be the whole file.
    let (url, seen) = serve(jpeg_with_late_size(), true, Some("0"), 0).await;
    let download = download_ok(&url).await;
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "asked again for the whole body"
    );
    let dims = crate::measure::measure(&download.head).unwrap();
    assert_eq!((dims.width, dims.height), (640, 480));
}

#[tokio::test]
async fn the_size_cap_counts_both_requests_of_a_download() {
    // No stated size: the first 64 KB, then the whole body (~135 KB): ~200 KB in all.
    let (url, seen) = serve(jpeg_with_late_size(), true, Some("*"), 0).await;
    let error = fetcher_with(|c| c.max_bytes = 150 * 1024)
        .download(&url, crate::measure::is_readable)
        .await
        .unwrap_err();
    assert_eq!(seen.lock().unwrap().len(), 2);
    assert!(matches!(error, FetchError::TooLarge(_)), "{error:?}");
}

#[tokio::test]
async fn the_time_for_a_whole_download_counts_both_requests() {
    // Each answer takes 700 ms: either fits in the 1 s for the whole download, both do not.
    let (url, seen) = serve(jpeg_with_late_size(), true, None, 700).await;
    let error = fetcher_with(|c| c.timeout = Duration::from_secs(1))
        .download(&url, crate::measure::is_readable)
        .await
        .unwrap_err();
    assert_eq!(seen.lock().unwrap().len(), 2);
    assert!(
        matches!(
            error,
            FetchError::Timeout {
                phase: DOWNLOAD,
                ..
            }
        ),
        "{error:?}"
    );
}
