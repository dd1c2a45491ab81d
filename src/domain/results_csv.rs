//! A job's per-image results as RFC 4180 CSV: the one place that knows the columns, their
//! words and the quoting. The results endpoint (`GET /api/jobs/{id}/results.csv`, which the
//! dashboard's download link and the client's `results --csv` read) and the retention archive
//! (`job-ID.csv.gz`) both write through [`ResultsCsv`], so the two files cannot drift apart.
//!
//! The header is `store_id,url,visit_time,status,width,height,perimeter,error`; one row per
//! image in submission order. `status` is pending, succeeded or failed (an image leased to a
//! worker is still pending); `width`, `height` and `perimeter` are empty unless it succeeded,
//! `error` unless it failed. Records end with CRLF; a field is quoted only when it holds a
//! comma, a quote or a line break, its quotes doubled.

use std::io::Write;

use super::ImageStatus;

/// The columns, in order.
pub const HEADER: [&str; 8] = [
    "store_id",
    "url",
    "visit_time",
    "status",
    "width",
    "height",
    "perimeter",
    "error",
];

/// One image's result, as a row holds it.
#[derive(Debug, Clone, Copy)]
pub struct ResultRow<'a> {
    pub store_id: &'a str,
    pub url: &'a str,
    pub visit_time: &'a str,
    pub status: ImageStatus,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub perimeter: Option<i64>,
    pub error: Option<&'a str>,
}

impl ResultRow<'_> {
    /// The status word of the results: the contract knows pending, succeeded and failed.
    pub fn status_word(&self) -> &'static str {
        match self.status {
            ImageStatus::Running => ImageStatus::Pending.as_str(),
            other => other.as_str(),
        }
    }

    fn fields(&self) -> [String; 8] {
        let succeeded = self.status == ImageStatus::Succeeded;
        let number = |n: Option<i64>| {
            n.filter(|_| succeeded)
                .map(|n| n.to_string())
                .unwrap_or_default()
        };
        [
            self.store_id.to_string(),
            self.url.to_string(),
            self.visit_time.to_string(),
            self.status_word().to_string(),
            number(self.width),
            number(self.height),
            number(self.perimeter),
            self.error
                .filter(|_| self.status == ImageStatus::Failed)
                .unwrap_or_default()
                .to_string(),
        ]
    }
}

/// Writes results CSV to `W`: the header (once, with [`ResultsCsv::header`]) and rows.
pub struct ResultsCsv<W: Write> {
    out: csv::Writer<W>,
}

impl<W: Write> ResultsCsv<W> {
    pub fn new(out: W) -> Self {
        Self {
            out: csv::WriterBuilder::new()
                .terminator(csv::Terminator::CRLF)
                .from_writer(out),
        }
    }

    pub fn header(&mut self) -> std::io::Result<()> {
        self.out.write_record(HEADER).map_err(into_io)
    }

    pub fn row(&mut self, row: &ResultRow<'_>) -> std::io::Result<()> {
        self.out.write_record(row.fields()).map_err(into_io)
    }

    /// Flushes and hands back the writer.
    pub fn into_inner(self) -> std::io::Result<W> {
        self.out.into_inner().map_err(|e| e.into_error())
    }
}

fn into_io(error: csv::Error) -> std::io::Error {
    match error.into_kind() {
        csv::ErrorKind::Io(e) => e,
        other => std::io::Error::other(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(rows: &[ResultRow<'_>]) -> String {
        let mut csv = ResultsCsv::new(Vec::new());
        csv.header().unwrap();
        for row in rows {
            csv.row(row).unwrap();
        }
        String::from_utf8(csv.into_inner().unwrap()).unwrap()
    }

    #[test]
    fn fields_are_quoted_only_where_rfc_4180_needs_it() {
        let row = ResultRow {
            store_id: "S1",
            url: "http://h/a,b.png",
            visit_time: "say \"hi\"",
            status: ImageStatus::Failed,
            width: None,
            height: None,
            perimeter: None,
            error: Some("line one\nline two"),
        };
        assert_eq!(
            written(&[row]),
            "store_id,url,visit_time,status,width,height,perimeter,error\r\n\
             S1,\"http://h/a,b.png\",\"say \"\"hi\"\"\",failed,,,,\"line one\nline two\"\r\n"
        );
    }

    #[test]
    fn numbers_only_when_succeeded_errors_only_when_failed_running_is_pending() {
        let base = ResultRow {
            store_id: "S1",
            url: "u",
            visit_time: "t",
            status: ImageStatus::Succeeded,
            width: Some(3),
            height: Some(4),
            perimeter: Some(14),
            error: Some("stale"),
        };
        let running = ResultRow {
            status: ImageStatus::Running,
            ..base
        };
        assert_eq!(
            written(&[base, running]),
            "store_id,url,visit_time,status,width,height,perimeter,error\r\n\
             S1,u,t,succeeded,3,4,14,\r\n\
             S1,u,t,pending,,,,\r\n"
        );
    }
}
