//! A real headless Chromium for one test, driven over WebDriver: chromedriver started on a
//! free port in its own process group, a fresh profile directory, and everything ended when
//! the test ends — the session closed, then chromedriver and every Chromium process under it
//! killed — also when the test panics.
//!
//! Without Chromium and chromedriver installed the browser tests print SKIPPED and pass,
//! unless `RP_REQUIRE_BROWSER=1` (CI), where a missing browser fails them.

use std::future::Future;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The longest a browser test may run before it is stopped (and fails).
const TEST_LIMIT: Duration = Duration::from_secs(600);

/// Desktop and phone viewport widths (CSS pixels).
pub const DESKTOP: (u32, u32) = (1280, 900);
pub const PHONE: (u32, u32) = (390, 844);

/// chromedriver and the Chromium processes it started; killed on drop, so a panicking test
/// leaves nothing behind.
struct Driver {
    child: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // Chromium's helpers may leave the process group; find them by parentage first.
        let mut family = descendants(pid);
        family.push(pid);
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
            for p in &family {
                libc::kill(*p, libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
    }
}

/// Every process below `root`, from /proc.
fn descendants(root: i32) -> Vec<i32> {
    let mut parent_of = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid …; comm may hold spaces, so read after the last ')'.
            if let Some(ppid) = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok())
            {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parent_of
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// Whether browser tests can run here; `false` prints SKIPPED (or panics under
/// RP_REQUIRE_BROWSER=1).
pub fn available(test: &str) -> bool {
    if Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists() {
        return true;
    }
    if std::env::var("RP_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
        panic!(
            "{test}: RP_REQUIRE_BROWSER=1 but {CHROMIUM} or {CHROMEDRIVER} is missing \
             (apt-get install chromium chromium-driver)"
        );
    }
    eprintln!(
        "SKIPPED {test}: no {CHROMIUM} / {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
    );
    false
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts chromedriver and a browser session, runs `test` with it, then ends the session and
/// kills the processes — whether `test` returned or panicked (the panic is then resumed).
pub async fn with_browser<F, Fut>(test: F)
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let profile = tempfile::tempdir().expect("profile dir");
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start chromedriver");
    let driver = Driver {
        child,
        _profile: profile,
    };
    let url = format!("http://127.0.0.1:{port}");
    let client = connect(&url, driver._profile.path()).await;
    let mut task = tokio::spawn(test(client.clone()));
    let result = tokio::time::timeout(TEST_LIMIT, &mut task).await;
    if result.is_err() {
        task.abort();
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), client.close()).await;
    drop(driver);
    match result {
        Ok(Ok(())) => {}
        Ok(Err(error)) => std::panic::resume_unwind(error.into_panic()),
        Err(_) => panic!("the browser test did not finish within {TEST_LIMIT:?}"),
    }
}

async fn connect(url: &str, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                format!("--user-data-dir={}", profile.display()),
            ]
        }),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(url)
            .await
        {
            Ok(client) => {
                client
                    .set_window_size(DESKTOP.0, DESKTOP.1)
                    .await
                    .expect("window size");
                return client;
            }
            // chromedriver may not listen yet.
            Err(error) if Instant::now() < deadline => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("cannot start a browser session: {error}"),
        }
    }
}

/// Waits until `script` (a JavaScript expression) is truthy, failing after `within`.
pub async fn wait_until(client: &Client, script: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let value = client
            .execute(&format!("return !!({script});"), vec![])
            .await
            .expect("script runs");
        if value == Value::Bool(true) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still false after {within:?}: {script}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The text of the element with this CSS selector.
pub async fn text(client: &Client, css: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .text()
        .await
        .expect("text")
}

/// A Chrome DevTools command, sent through chromedriver's `goog/cdp/execute`.
#[derive(Debug)]
struct Cdp {
    cmd: &'static str,
    params: Value,
}

impl fantoccini::wd::WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/goog/cdp/execute",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        let body = json!({"cmd": self.cmd, "params": self.params});
        (http::Method::POST, Some(body.to_string()))
    }
}

/// Makes the page's viewport `width` × `height` CSS pixels (a phone's when narrow: overlay
/// scrollbars, mobile layout rules).
async fn viewport(client: &Client, width: u32, height: u32) {
    client
        .issue_cmd(Cdp {
            cmd: "Emulation.setDeviceMetricsOverride",
            params: json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}),
        })
        .await
        .expect("set the viewport");
}

/// Makes the page see `prefers-color-scheme: scheme` (`light` or `dark`).
pub async fn color_scheme(client: &Client, scheme: &str) {
    client
        .issue_cmd(Cdp {
            cmd: "Emulation.setEmulatedMedia",
            params: json!({"features": [{"name": "prefers-color-scheme", "value": scheme}]}),
        })
        .await
        .expect("emulate a colour scheme");
}

/// With RP_SCREENSHOTS=1, saves the whole page as `docs/img/<name>.png` at `width` CSS
/// pixels.
pub async fn screenshot(client: &Client, name: &str, (width, height): (u32, u32)) {
    if std::env::var("RP_SCREENSHOTS").ok().as_deref() != Some("1") {
        return;
    }
    viewport(client, width, height).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let full = client
        .execute(
            "return Math.ceil(document.documentElement.scrollHeight);",
            vec![],
        )
        .await
        .expect("page height")
        .as_u64()
        .unwrap_or(u64::from(height)) as u32;
    viewport(client, width, full.max(height)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let png = client.screenshot().await.expect("screenshot");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/img");
    std::fs::create_dir_all(&dir).expect("docs/img");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    client
        .issue_cmd(Cdp {
            cmd: "Emulation.clearDeviceMetricsOverride",
            params: json!({}),
        })
        .await
        .expect("reset the viewport");
}
