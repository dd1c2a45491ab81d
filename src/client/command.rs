//! `submit`, `status` and `results`: what they print, and the exit code that tells a script how
//! it went.
//!
//! Output follows where it goes: on a terminal, sentences and a live progress line; piped,
//! no progress line and nothing a script would have to strip; with `--json`, one JSON
//! document on stdout. Errors always go to stderr, so stdout stays parseable.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use thiserror::Error;

use super::progress::ProgressLine;
use super::{ApiClient, ClientError, JobDocument, ResultsError, report};
use crate::domain::JobStatus;

/// How often `--wait` asks for the job.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How long `--wait` keeps asking while the server is unreachable or answers 5xx (a restart,
/// a database fail-over) before it gives up on the job.
const PATIENCE: Duration = Duration::from_secs(30);

/// How a client command ended. The numbers are a contract with scripts (see `--help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: the job completed (`submit --wait`), was submitted (`submit`), or was found (`status`).
    Success,
    /// 1: the job ran and failed, or was cancelled.
    JobFailed,
    /// 2: nothing useful happened: the file could not be read, the server could not be
    /// reached or refused the request, or the job does not exist.
    NotDone,
    /// 130: interrupted (Ctrl-C) while waiting; the job goes on on the server.
    Interrupted,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::JobFailed => 1,
            Exit::NotDone => 2,
            Exit::Interrupted => 130,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.code())
    }
}

/// Where output goes, decided once: tests and pipes get no terminal decoration.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
    pub terminal: bool,
}

impl Output {
    pub fn detect(json: bool) -> Self {
        Self {
            json,
            terminal: std::io::stdout().is_terminal(),
        }
    }

    fn print_json(&self, value: &Value) {
        let text = if self.terminal {
            serde_json::to_string_pretty(value)
        } else {
            serde_json::to_string(value)
        };
        println!("{}", text.expect("a JSON value serialises"));
    }
}

/// A job file that cannot be sent.
#[derive(Debug, Error)]
pub enum JobFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// Caught here rather than by the server: the parser's line and column are more use to
    /// the person who wrote the file than a 400.
    #[error("{path} is not JSON: {source}")]
    NotJson {
        path: String,
        source: serde_json::Error,
    },
}

/// Reads a job file (`-` for standard input) and checks that it is JSON. The bytes are
/// sent unchanged: the server validates the payload's shape.
pub fn read_job_file(file: &Path) -> Result<Vec<u8>, JobFileError> {
    let path = file.display().to_string();
    let read = if path == "-" {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes).map(|_| bytes)
    } else {
        std::fs::read(file)
    };
    let bytes = read.map_err(|source| JobFileError::Read {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice::<serde::de::IgnoredAny>(&bytes)
        .map_err(|source| JobFileError::NotJson { path, source })?;
    Ok(bytes)
}

pub struct SubmitOptions {
    pub file: PathBuf,
    pub server: String,
    pub api_key: Option<String>,
    pub wait: bool,
}

/// `retail-pulse submit FILE [--wait]`.
pub async fn submit(options: SubmitOptions, output: Output) -> Exit {
    let body = match read_job_file(&options.file) {
        Ok(body) => body,
        Err(e) => return fail(&e),
    };
    let client = match ApiClient::new(&options.server, options.api_key.as_deref()) {
        Ok(client) => client,
        Err(e) => return fail(&e),
    };
    let job_id = match client.submit(body).await {
        Ok(id) => id,
        Err(e) => return fail(&e),
    };
    if !options.wait {
        if output.json {
            output.print_json(&json!({ "job_id": job_id }));
        } else if output.terminal {
            println!("submitted job {job_id}; follow it with `retail-pulse status {job_id}`");
        } else {
            // Piped: just the id, for `id=$(retail-pulse submit job.json)`.
            println!("{job_id}");
        }
        return Exit::Success;
    }
    let show_progress = output.terminal && !output.json;
    if show_progress {
        println!("submitted job {job_id} to {}", client.server());
    }
    let progress = show_progress.then(|| ProgressLine::new(std::io::stdout(), job_id));
    let finished = tokio::select! {
        result = wait(&client, job_id, progress) => result,
        _ = tokio::signal::ctrl_c() => {
            if show_progress {
                println!();
            }
            eprintln!(
                "stopped waiting; job {job_id} goes on on the server: `retail-pulse status {job_id}`"
            );
            return Exit::Interrupted;
        }
    };
    match finished {
        Ok(document) => {
            show(&document, output);
            match document.job.status {
                JobStatus::Completed => Exit::Success,
                _ => Exit::JobFailed,
            }
        }
        Err(e) => {
            eprintln!("error: job {job_id} was submitted, but waiting for it failed: {e}");
            Exit::NotDone
        }
    }
}

/// `retail-pulse status ID`.
pub async fn status(server: &str, api_key: Option<&str>, job_id: i64, output: Output) -> Exit {
    let client = match ApiClient::new(server, api_key) {
        Ok(client) => client,
        Err(e) => return fail(&e),
    };
    match client.job(job_id).await {
        Ok(document) => {
            show(&document, output);
            Exit::Success
        }
        Err(e) => fail(&e),
    }
}

/// `retail-pulse results ID [--csv]`: every image of the job in submission order, as the
/// server's CSV (`--csv`) or as JSON lines (one `/api/jobs/{id}/images` object per line), both
/// streamed page by page. Exit codes as for `status`; a reader that stops early (`| head`) is
/// not an error.
pub async fn results(server: &str, api_key: Option<&str>, job_id: i64, csv: bool) -> Exit {
    let client = match ApiClient::new(server, api_key) {
        Ok(client) => client,
        Err(e) => return fail(&e),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let result = if csv {
        client.results_csv(job_id, &mut out).await
    } else {
        json_lines(&client, job_id, &mut out).await
    };
    match result {
        Ok(()) => Exit::Success,
        Err(ResultsError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Exit::Success,
        Err(e) => fail(&e),
    }
}

async fn json_lines(
    client: &ApiClient,
    job_id: i64,
    out: &mut impl std::io::Write,
) -> Result<(), ResultsError> {
    let mut after: Option<String> = None;
    loop {
        let (images, next) = client.images_page(job_id, after.as_deref()).await?;
        for image in images {
            writeln!(out, "{image}").map_err(ResultsError::Output)?;
        }
        match next {
            Some(cursor) => after = Some(cursor),
            None => return out.flush().map_err(ResultsError::Output),
        }
    }
}

/// Polls until the job leaves `ongoing`, redrawing the progress line if there is one.
/// Transient failures are retried for [`PATIENCE`]; a 4xx ends the wait at once.
async fn wait(
    client: &ApiClient,
    job_id: i64,
    mut progress: Option<ProgressLine<std::io::Stdout>>,
) -> Result<JobDocument, ClientError> {
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing_since: Option<Instant> = None;
    loop {
        ticker.tick().await;
        match client.job(job_id).await {
            Ok(document) => {
                failing_since = None;
                if document.job.status != JobStatus::Ongoing {
                    if let Some(line) = progress.as_mut() {
                        line.clear();
                    }
                    return Ok(document);
                }
                if let Some(line) = progress.as_mut() {
                    line.update(&document.job.images);
                }
            }
            Err(e) if e.is_transient() => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= PATIENCE {
                    if let Some(line) = progress.as_mut() {
                        line.clear();
                    }
                    return Err(e);
                }
            }
            Err(e) => {
                if let Some(line) = progress.as_mut() {
                    line.clear();
                }
                return Err(e);
            }
        }
    }
}

fn show(document: &JobDocument, output: Output) {
    if output.json {
        output.print_json(&document.raw);
    } else {
        print!("{}", report::render(&document.job));
    }
}

fn fail(error: &dyn std::error::Error) -> Exit {
    eprintln!("error: {error}");
    Exit::NotDone
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_the_documented_ones() {
        for (exit, code) in [
            (Exit::Success, 0u8),
            (Exit::JobFailed, 1),
            (Exit::NotDone, 2),
            (Exit::Interrupted, 130),
        ] {
            assert_eq!(exit.code(), code, "{exit:?}");
        }
    }

    #[test]
    fn job_file_must_exist_and_be_json() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.json");
        assert!(matches!(
            read_job_file(&missing),
            Err(JobFileError::Read { .. })
        ));
        let broken = dir.path().join("broken.json");
        std::fs::write(&broken, "{\"count\": 1,").unwrap();
        let err = read_job_file(&broken).unwrap_err();
        assert!(matches!(err, JobFileError::NotJson { .. }));
        assert!(err.to_string().contains("line 1"), "{err}");
        let good = dir.path().join("good.json");
        std::fs::write(&good, "{\"count\": 0, \"visits\": []}").unwrap();
        assert_eq!(
            read_job_file(&good).unwrap(),
            b"{\"count\": 0, \"visits\": []}"
        );
    }
}
