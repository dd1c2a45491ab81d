//! The overview's chart: images finished per minute over the last hour, as the geometry of an
//! inline SVG (one stacked bar per minute: succeeded, then failed on top). Drawn on the
//! server, so it needs no script and no chart library; the template writes the numbers. The
//! SVG holds only bars and gridlines and stretches to its box; the axis labels are HTML, so
//! they stay legible at any width.

use super::views::{minute_label, thousands};

/// The SVG's coordinate system (stretched to its box).
pub const WIDTH: f64 = 600.0;
pub const HEIGHT: f64 = 150.0;
/// Minutes shown.
pub const MINUTES: usize = 60;

pub struct Chart {
    pub bars: Vec<Bar>,
    /// The scale's labels: top, middle (gridlines at the top, the middle and the bottom).
    pub y_top: String,
    pub y_mid: String,
    pub total: String,
    pub failed: String,
    pub peak: String,
    /// One sentence for screen readers.
    pub summary: String,
    pub view_box: String,
    pub empty: bool,
}

pub struct Bar {
    pub x: String,
    pub width: String,
    pub ok_y: String,
    pub ok_height: String,
    pub bad_y: String,
    pub bad_height: String,
    pub has_bad: bool,
    pub title: String,
}

/// The chart of `counts` — (minute start, succeeded, failed), any order, minutes without
/// activity left out — for the [`MINUTES`] minutes from `since`.
pub fn build(since: i64, counts: &[(i64, i64, i64)]) -> Chart {
    let mut minutes = vec![(0i64, 0i64); MINUTES];
    for &(minute, ok, bad) in counts {
        let slot = (minute - since) / 60_000;
        if (0..MINUTES as i64).contains(&slot) {
            let m = &mut minutes[slot as usize];
            m.0 += ok;
            m.1 += bad;
        }
    }
    let peak = minutes.iter().map(|(ok, bad)| ok + bad).max().unwrap_or(0);
    let top = nice_ceiling(peak.max(4));
    let slot = WIDTH / MINUTES as f64;
    let bar_width = slot * 0.72;
    let y = |value: i64| HEIGHT * (1.0 - value as f64 / top as f64);
    let bars = minutes
        .iter()
        .enumerate()
        .map(|(i, &(ok, bad))| {
            let x = slot * i as f64 + (slot - bar_width) / 2.0;
            let ok_top = y(ok);
            let bad_top = y(ok + bad);
            let minute = since + i as i64 * 60_000;
            Bar {
                x: f(x),
                width: f(bar_width),
                ok_y: f(ok_top),
                ok_height: f(y(0) - ok_top),
                bad_y: f(bad_top),
                bad_height: f(ok_top - bad_top),
                has_bad: bad > 0,
                title: format!(
                    "{}: {} succeeded, {} failed",
                    minute_label(minute),
                    thousands(ok),
                    thousands(bad)
                ),
            }
        })
        .collect();
    let total: i64 = minutes.iter().map(|(ok, bad)| ok + bad).sum();
    let failed: i64 = minutes.iter().map(|(_, bad)| bad).sum();
    Chart {
        bars,
        y_top: thousands(top),
        y_mid: thousands(top / 2),
        total: thousands(total),
        failed: thousands(failed),
        peak: thousands(peak),
        summary: format!(
            "{} images finished in the last hour, {} of them failed; at most {} in one minute.",
            thousands(total),
            thousands(failed),
            thousands(peak)
        ),
        view_box: format!("0 0 {WIDTH} {HEIGHT}"),
        empty: total == 0,
    }
}

/// The smallest 1, 2 or 5 × 10ⁿ at or above `n`: a scale with round gridlines.
fn nice_ceiling(n: i64) -> i64 {
    let mut step = 1i64;
    loop {
        for m in [1, 2, 5] {
            if m * step >= n {
                return m * step;
            }
        }
        step *= 10;
    }
}

fn f(v: f64) -> String {
    format!("{v:.1}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_rounds_up_to_one_two_or_five() {
        assert_eq!(nice_ceiling(4), 5);
        assert_eq!(nice_ceiling(7), 10);
        assert_eq!(nice_ceiling(11), 20);
        assert_eq!(nice_ceiling(200), 200);
        assert_eq!(nice_ceiling(201), 500);
    }

    #[test]
    fn minutes_land_in_their_slot_and_the_tallest_bar_fits() {
        let since = 1_000 * 60_000;
        let chart = build(
            since,
            &[
                (since, 3, 1),
                (since + 59 * 60_000, 10, 0),
                (since - 60_000, 99, 0),
            ],
        );
        assert_eq!(chart.bars.len(), MINUTES);
        assert_eq!(chart.total, "14");
        assert_eq!(chart.failed, "1");
        assert_eq!(chart.peak, "10");
        assert!(chart.bars[0].has_bad && !chart.bars[59].has_bad);
        // The peak reaches the top of the plot, and nothing goes above it.
        assert_eq!(chart.bars[59].ok_y, f(0.0));
        assert_eq!((chart.y_top.as_str(), chart.y_mid.as_str()), ("10", "5"));
        assert!(chart.bars[1].ok_height == "0.0");
        assert!(chart.bars[0].title.ends_with("3 succeeded, 1 failed"));
        assert!(!chart.empty);
        assert!(build(since, &[]).empty);
    }
}
