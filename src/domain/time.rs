//! How times are shown: every time is kept as epoch milliseconds and shown as RFC 3339.

/// Formats a stored time for clients (RFC 3339, UTC, milliseconds).
pub fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
