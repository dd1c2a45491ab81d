//! How flag values are written: durations with a unit, seconds as decimals, the simulated
//! GPU time, public URLs and allow-lists. Each parser's error is what clap prints beside the
//! flag's name.

use std::time::Duration;

use anyhow::Context;

use crate::fetch::guard::AllowList;
use crate::worker::DelayRange;

/// A duration flag: a whole number and a unit (`45s`, `90m`, `12h`, `30d`), printed back the
/// same way (so a default shows in `--help` as it would be written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Duration);

impl std::str::FromStr for Span {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        parse_duration(text).map(Span)
    }
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Days from three on (`24h` and `48h` read better as hours), then the largest unit
        // that divides the duration.
        let secs = self.0.as_secs();
        let (n, unit) = [(86_400, "d"), (3600, "h"), (60, "m")]
            .into_iter()
            .find(|&(unit, _)| {
                secs > 0 && secs.is_multiple_of(unit) && (unit < 86_400 || secs >= 3 * unit)
            })
            .map_or((secs, "s"), |(unit, name)| (secs / unit, name));
        write!(f, "{n}{unit}")
    }
}

/// Parses a duration written as a whole number and a unit: `45s`, `90m`, `12h`, `30d` (`0s`,
/// or a bare `0`, is zero).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let problem = || format!("`{text}` is not a duration like 45s, 90m, 12h or 30d");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(problem)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| problem())?;
    let unit_secs: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(problem()),
    };
    number
        .checked_mul(unit_secs)
        .filter(|secs| *secs <= 100 * 365 * 86_400)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{text}` is longer than a hundred years"))
}

/// A flag given in (decimal) seconds, as a duration.
pub fn secs(value: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .with_context(|| format!("--{flag}: `{value}` is not a duration"))
}

pub fn parse_allow_hosts(text: &str) -> Result<AllowList, String> {
    AllowList::parse(text)
}

pub fn parse_trusted_proxies(text: &str) -> Result<crate::config::TrustedProxies, String> {
    crate::config::TrustedProxies::parse(text)
}

pub fn parse_delay(text: &str) -> Result<DelayRange, String> {
    DelayRange::parse(text)
}

/// `--public-url`: an absolute http(s) URL (kept as text: a parsed URL would make every
/// command's arguments larger).
pub fn parse_public_url(text: &str) -> Result<String, String> {
    match url::Url::parse(text) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            Ok(text.to_string())
        }
        Ok(_) => Err(format!("`{text}`: must start with http:// or https://")),
        Err(e) => Err(format!("`{text}`: not a URL: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_their_unit() {
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(
            parse_duration("12h").unwrap(),
            Duration::from_secs(12 * 3600)
        );
        assert_eq!(parse_duration("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration(" 45s ").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in [
            "",
            "12",
            "h",
            "1.5h",
            "-1d",
            "3w",
            "1h30m",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spans_print_as_they_are_written() {
        for text in ["24h", "48h", "12h", "90m", "45s", "3d", "30d", "0s"] {
            assert_eq!(text.parse::<Span>().unwrap().to_string(), text);
        }
        assert_eq!(Span(Duration::from_secs(7200)).to_string(), "2h");
    }
}
