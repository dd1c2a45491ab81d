//! Reading a download's body: only its beginning is kept (until the image's header can be
//! read, never more than [`HEAD_CAP`]), its size is counted against the cap, and a host that
//! sends too slowly, or nothing at all, is cut off by the low-speed check.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::{DOWNLOAD, FetchError, Fetcher, HEAD_CAP};

/// The first prefix of a body offered to a download's `enough` (see [`Fetcher::download`]).
pub(super) const FIRST_LOOK: usize = 4 * 1024;

/// A body read by [`Fetcher::download`]: its kept beginning, and what was seen of it.
pub(super) struct Body {
    pub(super) head: Bytes,
    /// Bytes received.
    pub(super) read: u64,
    /// `enough` said the kept beginning suffices.
    pub(super) satisfied: bool,
    /// The body went on past [`HEAD_CAP`] without `enough` being satisfied.
    pub(super) head_capped: bool,
}

/// The low-speed limit of one download: the bytes received in consecutive windows of the
/// stall timeout's length; a window that ends with fewer than `min × window` bytes fails the
/// download as [`FetchError::TooSlow`] (or [`FetchError::Stalled`] when nothing came at all).
struct SpeedCheck {
    min: u64,
    window: Duration,
    needed: u64,
    started: Instant,
    bytes: u64,
}

impl SpeedCheck {
    fn new(min: u64, window: Duration) -> Self {
        Self {
            min,
            window,
            needed: (min as f64 * window.as_secs_f64()).ceil() as u64,
            started: Instant::now(),
            bytes: 0,
        }
    }

    /// When the current window ends; `None` when the limit is off.
    fn window_end(&self) -> Option<Instant> {
        (self.min > 0 && !self.window.is_zero()).then(|| self.started + self.window)
    }

    /// Counts `bytes` just received; at the end of a window, judges it and starts the next.
    fn check(&mut self, bytes: u64) -> Result<(), FetchError> {
        let Some(end) = self.window_end() else {
            return Ok(());
        };
        self.bytes += bytes;
        let now = Instant::now();
        if now < end {
            return Ok(());
        }
        if self.bytes == 0 {
            return Err(FetchError::Stalled(self.window));
        }
        if self.bytes < self.needed {
            return Err(FetchError::TooSlow {
                min: self.min,
                window: self.window,
            });
        }
        self.started = now;
        self.bytes = 0;
        Ok(())
    }
}

impl Fetcher {
    /// Reads a response's body to its end (more than `cap` bytes: too large), keeping its beginning until
    /// `enough` says the prefix is sufficient, never more than [`HEAD_CAP`]. The prefix is
    /// copied in steps that double from FIRST_LOOK (`enough` is asked after each), so an image
    /// whose header sits in its first few KB costs a few KB of copying and memory, whatever
    /// size of chunk the connection hands over, and a body that never yields a header costs
    /// O(n log n), not O(n²).
    pub(super) async fn read(
        &self,
        mut response: reqwest::Response,
        enough: &impl Fn(&[u8]) -> bool,
        started: Instant,
        cap: u64,
    ) -> Result<Body, FetchError> {
        let mut head = BytesMut::new();
        let mut keeping = true;
        let mut satisfied = false;
        let mut want = FIRST_LOOK;
        let mut head_capped = false;
        let mut total: u64 = 0;
        let mut speed = SpeedCheck::new(self.config.min_speed_bytes, self.config.stall_timeout);
        // One timer per speed window, not one per chunk (a photo arrives in dozens of chunks,
        // and registering a timer for each cost a third of the download path's throughput).
        let mut window_end = speed.window_end();
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let mut deadline =
            std::pin::pin!(tokio::time::sleep_until(window_end.unwrap_or(far).into()));
        loop {
            // Reading waits no longer than the end of the current speed window, so a host that
            // sends nothing at all is judged there too (reqwest's `chunk` is cancel-safe).
            let next = tokio::select! {
                biased;
                next = response.chunk() => next,
                _ = &mut deadline, if window_end.is_some() => {
                    speed.check(0)?;
                    window_end = speed.window_end();
                    deadline.as_mut().reset(window_end.unwrap_or(far).into());
                    continue;
                }
            };
            let Some(chunk) = next.map_err(|e| self.classify(e, started, DOWNLOAD))? else {
                break;
            };
            speed.check(chunk.len() as u64)?;
            if speed.window_end() != window_end {
                window_end = speed.window_end();
                deadline.as_mut().reset(window_end.unwrap_or(far).into());
            }
            total += chunk.len() as u64;
            if total > cap {
                return Err(FetchError::TooLarge(self.config.max_bytes));
            }
            let mut rest: &[u8] = &chunk;
            while keeping && !rest.is_empty() {
                let take = rest.len().min(want - head.len());
                head.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if head.len() < want {
                    break;
                }
                satisfied = enough(&head);
                keeping = !satisfied;
                if keeping && head.len() == HEAD_CAP {
                    keeping = false;
                    head_capped = true;
                }
                want = (want * 2).min(HEAD_CAP);
            }
        }
        // A body that ended inside a step is asked about what it gave.
        if keeping && !head.is_empty() {
            satisfied = enough(&head);
        }
        Ok(Body {
            head: head.freeze(),
            read: total,
            satisfied,
            head_capped,
        })
    }
}
