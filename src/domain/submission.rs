//! A job submission, parsed from the request body once: after [`Submission::parse`] every
//! field is known to be present, of the right type and non-empty, and `count` matches.
//! Error messages name the field the way a client wrote it: `visits[1].image_url[0]`.
//!
//! Control characters: `store_id` and image URLs may hold none (they are identifiers: a
//! control character there is an attack on a log, a terminal or a database, never data).
//! `visit_time` is free text and may hold tab, line feed and carriage return, but no other
//! control character. NUL is refused everywhere (PostgreSQL cannot store it in text).

use serde_json::Value;

/// Why a body was refused. The HTTP layer maps `Invalid` to 400 and `TooLarge` to 413.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValidationError {
    Invalid(String),
    TooLarge(String),
}

impl std::fmt::Display for ValidationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValidationError::Invalid(m) | ValidationError::TooLarge(m) => f.write_str(m),
        }
    }
}

fn invalid(message: impl Into<String>) -> ValidationError {
    ValidationError::Invalid(message.into())
}

/// Size limits a submission must respect.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Visits in one job (413 above).
    pub max_visits: usize,
    /// Images in one visit (413 above).
    pub max_images_per_visit: usize,
    /// Images in one job (413 above).
    pub max_images_per_job: usize,
    pub max_url_len: usize,
    pub max_store_id_len: usize,
    pub max_visit_time_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_visits: 100_000,
            max_images_per_visit: 1_000,
            max_images_per_job: 100_000,
            max_url_len: 2048,
            max_store_id_len: 64,
            max_visit_time_len: 256,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visit {
    pub store_id: String,
    pub image_urls: Vec<String>,
    /// Exactly as the client sent it.
    pub visit_time: String,
    /// The same instant in epoch milliseconds, when `visit_time` is RFC 3339.
    pub visit_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    pub visits: Vec<Visit>,
    /// Where to POST the `job.finished` event, as the client wrote it (an http(s) URL).
    pub webhook: Option<String>,
}

impl Submission {
    /// Parses and validates a request body.
    pub fn parse(body: &[u8], limits: &Limits) -> Result<Self, ValidationError> {
        let value = super::strict_json::parse(body)
            .map_err(|e| invalid(format!("body is not valid JSON: {e}")))?;
        Self::from_value(&value, limits)
    }

    pub fn from_value(value: &Value, limits: &Limits) -> Result<Self, ValidationError> {
        let object = value
            .as_object()
            .ok_or_else(|| invalid(format!("body must be a JSON object, not {}", kind(value))))?;
        let webhook = parse_webhook(object.get("webhook"), limits.max_url_len)?;
        let count = match object.get("count") {
            None => return Err(invalid("count: is required")),
            Some(v) => parse_count(v)?,
        };
        let visits = match object.get("visits") {
            None => return Err(invalid("visits: is required")),
            Some(Value::Array(a)) => a,
            Some(other) => {
                return Err(invalid(format!(
                    "visits: must be an array, not {}",
                    kind(other)
                )));
            }
        };
        if visits.is_empty() {
            return Err(invalid("visits: must not be empty"));
        }
        if visits.len() > limits.max_visits {
            return Err(ValidationError::TooLarge(format!(
                "visits: a job may hold at most {} visits",
                limits.max_visits
            )));
        }
        if count != visits.len() as u64 {
            return Err(invalid(format!(
                "count: is {count} but visits has {} entries",
                visits.len()
            )));
        }
        let mut parsed = Vec::with_capacity(visits.len());
        let mut images = 0usize;
        for (i, visit) in visits.iter().enumerate() {
            let visit = parse_visit(i, visit, limits)?;
            images += visit.image_urls.len();
            if images > limits.max_images_per_job {
                return Err(ValidationError::TooLarge(format!(
                    "visits: a job may hold at most {} images",
                    limits.max_images_per_job
                )));
            }
            parsed.push(visit);
        }
        Ok(Self {
            visits: parsed,
            webhook,
        })
    }

    pub fn image_count(&self) -> usize {
        self.visits.iter().map(|v| v.image_urls.len()).sum()
    }
}

fn parse_count(value: &Value) -> Result<u64, ValidationError> {
    match value {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Ok(u)
            } else if n.as_i64().is_some() {
                Err(invalid("count: must not be negative"))
            } else {
                match n.as_f64() {
                    Some(f) if f.fract() != 0.0 => Err(invalid("count: must be a whole number")),
                    Some(f) if f < 0.0 => Err(invalid("count: must not be negative")),
                    Some(f) if f <= u64::MAX as f64 => Err(invalid(
                        "count: must be an integer, written without a fraction or exponent",
                    )),
                    _ => Err(invalid("count: is too large")),
                }
            }
        }
        other => Err(invalid(format!(
            "count: must be an integer, not {}",
            kind(other)
        ))),
    }
}

/// The optional `webhook` field: absent or null is none; otherwise an http(s) URL with a host.
fn parse_webhook(value: Option<&Value>, max_len: usize) -> Result<Option<String>, ValidationError> {
    let text = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => required_string(Some(v), "webhook", max_len, Text::Identifier)?,
    };
    let text = text.trim().to_string();
    let url =
        url::Url::parse(&text).map_err(|e| invalid(format!("webhook: is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "webhook: must be an http or https URL, not {}",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("webhook: must name a host"));
    }
    Ok(Some(text))
}

fn parse_visit(i: usize, value: &Value, limits: &Limits) -> Result<Visit, ValidationError> {
    let field = |name: &str| format!("visits[{i}].{name}");
    let object = value.as_object().ok_or_else(|| {
        invalid(format!(
            "visits[{i}]: must be an object, not {}",
            kind(value)
        ))
    })?;
    let store_id = required_string(
        object.get("store_id"),
        &field("store_id"),
        limits.max_store_id_len,
        Text::Identifier,
    )?;
    let visit_time = required_string(
        object.get("visit_time"),
        &field("visit_time"),
        limits.max_visit_time_len,
        Text::Free,
    )?;
    let urls = match object.get("image_url") {
        None => return Err(invalid(format!("{}: is required", field("image_url")))),
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(invalid(format!(
                "{}: must be an array of URLs, not {}",
                field("image_url"),
                kind(other)
            )));
        }
    };
    if urls.is_empty() {
        return Err(invalid(format!(
            "{}: must not be empty",
            field("image_url")
        )));
    }
    if urls.len() > limits.max_images_per_visit {
        return Err(ValidationError::TooLarge(format!(
            "{}: a visit may hold at most {} images",
            field("image_url"),
            limits.max_images_per_visit
        )));
    }
    let image_urls = urls
        .iter()
        .enumerate()
        .map(|(j, u)| {
            required_string(
                Some(u),
                &format!("visits[{i}].image_url[{j}]"),
                limits.max_url_len,
                Text::Identifier,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let visit_at = chrono::DateTime::parse_from_rfc3339(visit_time.trim())
        .ok()
        .map(|t| t.timestamp_millis());
    Ok(Visit {
        store_id,
        image_urls,
        visit_time,
        visit_at,
    })
}

/// Which characters a string field may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Text {
    /// No control character at all (`store_id`, image URLs).
    Identifier,
    /// Free text: tab, line feed and carriage return allowed, no other control character.
    Free,
}

impl Text {
    /// The first character this rule refuses, if any.
    fn refused(self, s: &str) -> Option<char> {
        s.chars().find(|&c| match self {
            Text::Identifier => c.is_control(),
            Text::Free => c.is_control() && !matches!(c, '\t' | '\n' | '\r'),
        })
    }
}

fn required_string(
    value: Option<&Value>,
    field: &str,
    max_len: usize,
    text: Text,
) -> Result<String, ValidationError> {
    match value {
        None => Err(invalid(format!("{field}: is required"))),
        Some(Value::String(s)) if s.trim().is_empty() => {
            Err(invalid(format!("{field}: must not be empty")))
        }
        Some(Value::String(s)) if s.len() > max_len => {
            Err(invalid(format!("{field}: is longer than {max_len} bytes")))
        }
        Some(Value::String(s)) => match text.refused(s) {
            Some('\0') => Err(invalid(format!("{field}: must not contain NUL (U+0000)"))),
            Some(c) => Err(invalid(format!(
                "{field}: must not contain control characters (found U+{:04X})",
                c as u32
            ))),
            None => Ok(s.clone()),
        },
        Some(other) => Err(invalid(format!(
            "{field}: must be a string, not {}",
            kind(other)
        ))),
    }
}

/// How a JSON value is named in an error message.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<Submission, ValidationError> {
        Submission::from_value(&value, &Limits::default())
    }

    fn message(value: Value) -> String {
        match parse(value).unwrap_err() {
            ValidationError::Invalid(m) | ValidationError::TooLarge(m) => m,
        }
    }

    fn example() -> Value {
        json!({"count": 2, "visits": [
            {"store_id": "S00339218", "image_url": ["https://a/1.jpg", "https://a/2.jpg"], "visit_time": "time of store visit"},
            {"store_id": "S01408764", "image_url": ["https://a/3.jpg"], "visit_time": "2024-01-02T03:04:05Z"}
        ]})
    }

    #[test]
    fn the_assignment_example_parses() {
        let s = parse(example()).unwrap();
        assert_eq!(s.visits.len(), 2);
        assert_eq!(s.image_count(), 3);
        assert_eq!(s.visits[0].visit_time, "time of store visit");
        assert_eq!(s.visits[0].visit_at, None);
        assert_eq!(s.visits[1].visit_at, Some(1_704_164_645_000));
    }

    #[test]
    fn non_json_and_non_objects_are_refused() {
        assert!(Submission::parse(b"not json", &Limits::default()).is_err());
        assert!(message(json!([1, 2])).starts_with("body must be a JSON object"));
    }

    #[test]
    fn count_must_match_and_be_a_whole_non_negative_number() {
        let mut v = example();
        v["count"] = json!(3);
        assert_eq!(message(v.clone()), "count: is 3 but visits has 2 entries");
        v["count"] = json!(-1);
        assert_eq!(message(v.clone()), "count: must not be negative");
        v["count"] = json!(2.5);
        assert_eq!(message(v.clone()), "count: must be a whole number");
        v["count"] = json!(2.0);
        assert!(message(v.clone()).starts_with("count: must be an integer, written without"));
        v["count"] = json!("2");
        assert_eq!(
            message(v.clone()),
            "count: must be an integer, not a string"
        );
        v.as_object_mut().unwrap().remove("count");
        assert_eq!(message(v), "count: is required");
    }

    #[test]
    fn visits_must_be_a_non_empty_array() {
        assert_eq!(
            message(json!({"count": 0, "visits": []})),
            "visits: must not be empty"
        );
        assert_eq!(
            message(json!({"count": 0, "visits": {}})),
            "visits: must be an array, not an object"
        );
        assert_eq!(message(json!({"count": 0})), "visits: is required");
    }

    #[test]
    fn visit_fields_are_named_in_errors() {
        let mut v = example();
        v["visits"][1]["image_url"] = json!("https://a/1.jpg");
        assert_eq!(
            message(v.clone()),
            "visits[1].image_url: must be an array of URLs, not a string"
        );
        v["visits"][1]["image_url"] = json!([]);
        assert_eq!(message(v.clone()), "visits[1].image_url: must not be empty");
        v["visits"][1]["image_url"] = json!(["ok", 5]);
        assert_eq!(
            message(v.clone()),
            "visits[1].image_url[1]: must be a string, not a number"
        );
        v = example();
        v["visits"][0]["store_id"] = json!("  ");
        assert_eq!(message(v.clone()), "visits[0].store_id: must not be empty");
        v["visits"][0].as_object_mut().unwrap().remove("store_id");
        assert_eq!(message(v.clone()), "visits[0].store_id: is required");
        v = example();
        v["visits"][0]["visit_time"] = json!(null);
        assert_eq!(
            message(v),
            "visits[0].visit_time: must be a string, not null"
        );
    }

    #[test]
    fn control_characters_are_refused_naming_the_field() {
        let mut v = example();
        v["visits"][0]["store_id"] = json!("S003\u{0}39218");
        assert_eq!(
            message(v),
            "visits[0].store_id: must not contain NUL (U+0000)"
        );
        let mut v = example();
        v["visits"][1]["image_url"][0] = json!("https://a/\u{1b}[31m.jpg");
        assert_eq!(
            message(v),
            "visits[1].image_url[0]: must not contain control characters (found U+001B)"
        );
        let mut v = example();
        v["visits"][0]["visit_time"] = json!("morning\u{0}");
        assert_eq!(
            message(v),
            "visits[0].visit_time: must not contain NUL (U+0000)"
        );
        let mut v = example();
        v["visits"][0]["visit_time"] = json!("morning\u{7}");
        assert!(message(v).starts_with("visits[0].visit_time: must not contain control"));
    }

    #[test]
    fn visit_time_keeps_tabs_and_line_breaks() {
        let mut v = example();
        v["visits"][0]["visit_time"] = json!("Monday\tmorning\r\nafter rain");
        let s = parse(v).unwrap();
        assert_eq!(s.visits[0].visit_time, "Monday\tmorning\r\nafter rain");
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let mut v = example();
        v["extra"] = json!(true);
        v["visits"][0]["note"] = json!("x");
        assert!(parse(v).is_ok());
    }

    #[test]
    fn a_webhook_is_an_optional_http_url() {
        let mut v = example();
        assert_eq!(parse(v.clone()).unwrap().webhook, None);
        v["webhook"] = json!(null);
        assert_eq!(parse(v.clone()).unwrap().webhook, None);
        v["webhook"] = json!(" https://hooks.example.com/rp?x=1 ");
        assert_eq!(
            parse(v.clone()).unwrap().webhook.as_deref(),
            Some("https://hooks.example.com/rp?x=1")
        );
        v["webhook"] = json!("http://10.0.0.1:8080/in");
        assert!(
            parse(v.clone()).is_ok(),
            "the address guard acts at delivery"
        );
    }

    #[test]
    fn a_bad_webhook_is_refused_naming_the_field() {
        let cases = [
            (
                json!("ftp://example.com/x"),
                "webhook: must be an http or https URL, not ftp",
            ),
            (
                json!("not a url"),
                "webhook: is not a URL (relative URL without a base)",
            ),
            (json!(""), "webhook: must not be empty"),
            (json!(42), "webhook: must be a string, not a number"),
            (
                json!("https://a/\u{7}"),
                "webhook: must not contain control characters (found U+0007)",
            ),
            (
                json!("mailto:ops@example.com"),
                "webhook: must be an http or https URL, not mailto",
            ),
        ];
        for (value, expected) in cases {
            let mut v = example();
            v["webhook"] = value;
            assert_eq!(message(v), expected);
        }
        let mut v = example();
        v["webhook"] = json!(format!("https://example.com/{}", "a".repeat(2100)));
        assert_eq!(message(v), "webhook: is longer than 2048 bytes");
    }

    #[test]
    fn too_many_images_is_too_large() {
        let limits = Limits {
            max_images_per_job: 2,
            ..Limits::default()
        };
        let err = Submission::from_value(&example(), &limits).unwrap_err();
        assert!(matches!(err, ValidationError::TooLarge(_)));
    }
}
