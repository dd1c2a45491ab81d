//! The live line `submit --wait` redraws on a terminal:
//!
//! ```text
//! job 12 [#########...............]  150/400 images  3 failed  41.2 img/s  ETA 6s
//! ```
//!
//! Hand-written (a carriage return and "erase to end of line") rather than a progress-bar
//! crate: one line, redrawn four times a second, needs no dependency. The rate is measured
//! over the last few seconds, not since the start, so the ETA follows a job whose speed
//! changes (another job finishing, workers joining).

use std::collections::VecDeque;
use std::io::Write;
use std::time::{Duration, Instant};

use super::Counts;

/// How far back the rate looks.
const WINDOW: Duration = Duration::from_secs(5);
const BAR_WIDTH: u64 = 24;

/// Finished-image counts over time → images per second.
#[derive(Debug, Default)]
pub struct Meter {
    samples: VecDeque<(Instant, u64)>,
}

impl Meter {
    pub fn record(&mut self, at: Instant, finished: u64) {
        self.samples.push_back((at, finished));
        // Keep one sample at or beyond the window's start, so the span covers the window.
        while self.samples.len() > 2 && at.duration_since(self.samples[1].0) >= WINDOW {
            self.samples.pop_front();
        }
    }

    /// Images finished per second over the window; `None` until two samples are apart.
    pub fn rate(&self) -> Option<f64> {
        let (t0, n0) = *self.samples.front()?;
        let (t1, n1) = *self.samples.back()?;
        let span = t1.duration_since(t0).as_secs_f64();
        (span > 0.0).then(|| n1.saturating_sub(n0) as f64 / span)
    }
}

/// Time left at `rate`; `None` when nothing is moving (no honest estimate exists).
pub fn eta(remaining: u64, rate: Option<f64>) -> Option<Duration> {
    match rate {
        _ if remaining == 0 => Some(Duration::ZERO),
        Some(r) if r > 0.0 => Duration::try_from_secs_f64(remaining as f64 / r).ok(),
        _ => None,
    }
}

/// `7s`, `2m05s`, `1h02m`: short enough for one line.
pub fn human_duration(d: Duration) -> String {
    // Rounded up: "0s" left should mean done, not "under a second".
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

/// One progress line, without control characters.
pub fn render(job_id: i64, counts: &Counts, rate: Option<f64>) -> String {
    let done = counts.finished().min(counts.total);
    // An empty job is complete: a full bar.
    let filled = (done * BAR_WIDTH)
        .checked_div(counts.total)
        .unwrap_or(BAR_WIDTH);
    let bar: String = (0..BAR_WIDTH)
        .map(|i| if i < filled { '#' } else { '.' })
        .collect();
    let rate_text = match rate {
        Some(r) => format!("{r:.1} img/s"),
        None => "-- img/s".to_string(),
    };
    let eta_text = match eta(counts.total.saturating_sub(done), rate) {
        Some(d) => human_duration(d),
        None => "--".to_string(),
    };
    format!(
        "job {job_id} [{bar}] {done}/{} images  {} failed  {rate_text}  ETA {eta_text}",
        counts.total, counts.failed
    )
}

/// The line on the terminal: redrawn in place, erased before the final report.
pub struct ProgressLine<W: Write> {
    out: W,
    job_id: i64,
    meter: Meter,
    drawn: bool,
}

impl<W: Write> ProgressLine<W> {
    pub fn new(out: W, job_id: i64) -> Self {
        Self {
            out,
            job_id,
            meter: Meter::default(),
            drawn: false,
        }
    }

    pub fn update(&mut self, counts: &Counts) {
        self.meter.record(Instant::now(), counts.finished());
        let line = render(self.job_id, counts, self.meter.rate());
        // A progress line that cannot be drawn is not worth failing the command for.
        let _ = write!(self.out, "\r{line}\x1b[K");
        let _ = self.out.flush();
        self.drawn = true;
    }

    pub fn clear(&mut self) {
        if self.drawn {
            let _ = write!(self.out, "\r\x1b[K");
            let _ = self.out.flush();
            self.drawn = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_measured_over_the_recent_window() {
        let start = Instant::now();
        let mut meter = Meter::default();
        meter.record(start, 0);
        assert_eq!(meter.rate(), None);
        // Slow at first (1/s for 10 s), then fast (10/s for 5 s): the rate is the recent one.
        for s in 1..=10 {
            meter.record(start + Duration::from_secs(s), s);
        }
        for s in 11..=15 {
            meter.record(start + Duration::from_secs(s), 10 + (s - 10) * 10);
        }
        let rate = meter.rate().unwrap();
        assert!((rate - 10.0).abs() < 0.01, "{rate}");
    }

    #[test]
    fn eta_needs_movement() {
        assert_eq!(eta(10, None), None);
        assert_eq!(eta(10, Some(0.0)), None);
        assert_eq!(eta(10, Some(5.0)), Some(Duration::from_secs(2)));
        assert_eq!(eta(0, None), Some(Duration::ZERO));
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(human_duration(Duration::from_secs(7)), "7s");
        assert_eq!(human_duration(Duration::from_millis(300)), "1s");
        assert_eq!(human_duration(Duration::ZERO), "0s");
        assert_eq!(human_duration(Duration::from_secs(125)), "2m05s");
        assert_eq!(human_duration(Duration::from_secs(3720)), "1h02m");
    }

    #[test]
    fn line_shows_counts_rate_and_eta() {
        let counts = Counts {
            total: 400,
            succeeded: 147,
            failed: 3,
            pending: 250,
        };
        assert_eq!(
            render(12, &counts, Some(50.0)),
            "job 12 [#########...............] 150/400 images  3 failed  50.0 img/s  ETA 5s"
        );
        assert!(render(12, &counts, None).ends_with("-- img/s  ETA --"));
    }

    #[test]
    fn line_is_redrawn_in_place_and_cleared() {
        let mut out = Vec::new();
        {
            let mut line = ProgressLine::new(&mut out, 1);
            line.update(&Counts {
                total: 2,
                succeeded: 1,
                failed: 0,
                pending: 1,
            });
            line.clear();
        }
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("\rjob 1 ["), "{text:?}");
        assert!(text.ends_with("\r\x1b[K"), "{text:?}");
    }
}
