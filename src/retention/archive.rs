//! A pruned job's results, kept as a file: `job-<id>.csv.gz` in the archive directory, gzipped
//! RFC 4180 CSV (CRLF line ends) with the header
//! `store_id,url,visit_time,status,width,height,perimeter,error` and one row per image in
//! submission order — written by [`crate::domain::results_csv`], as the results endpoint is.
//!
//! The file is written beside its final name and linked into place only when complete, and an
//! existing archive is never replaced: a pass cut short after archiving (some images already
//! deleted) does not overwrite the full archive with a partial one on its next run.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;

use crate::db::{self, Db, DbError};
use crate::domain::results_csv::ResultsCsv;

/// Images read per database round trip.
const PAGE: i64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The archive file of a job in `dir`.
pub fn path(dir: &Path, job_id: i64) -> PathBuf {
    dir.join(format!("job-{job_id}.csv.gz"))
}

type CsvGz = ResultsCsv<GzEncoder<BufWriter<File>>>;

/// Writes the job's archive unless it exists already. Returns whether it wrote one.
pub async fn write(db: &Db, dir: &Path, job_id: i64) -> Result<bool, ArchiveError> {
    let target = path(dir, job_id);
    if target.exists() {
        return Ok(false);
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ArchiveError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let partial = dir.join(format!(
        ".job-{job_id}.csv.gz.{}-{:08x}.partial",
        std::process::id(),
        fastrand::u32(..)
    ));
    let written = write_file(db, job_id, &partial).await;
    let placed = written.and_then(|()| match std::fs::hard_link(&partial, &target) {
        Ok(()) => Ok(true),
        // Another pass archived the job meanwhile: its file stands.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io(&target)(e)),
    });
    let _ = std::fs::remove_file(&partial);
    placed
}

async fn write_file(db: &Db, job_id: i64, partial: &Path) -> Result<(), ArchiveError> {
    let io = |source| ArchiveError::Io {
        path: partial.to_path_buf(),
        source,
    };
    let file = File::create(partial).map_err(io)?;
    let mut out: CsvGz =
        ResultsCsv::new(GzEncoder::new(BufWriter::new(file), Compression::default()));
    out.header().map_err(io)?;
    let mut after = -1;
    loop {
        let rows = db::images::page(db, job_id, after, PAGE).await?;
        let Some(last) = rows.last() else { break };
        after = last.seq;
        let full = rows.len() as i64 == PAGE;
        // Compressing is CPU work: off the async threads, a page at a time.
        out = tokio::task::spawn_blocking(move || {
            for row in &rows {
                out.row(&row.result())?;
            }
            Ok::<_, std::io::Error>(out)
        })
        .await
        .map_err(|e| io(std::io::Error::other(e)))?
        .map_err(io)?;
        if !full {
            break;
        }
    }
    tokio::task::spawn_blocking(move || {
        let gz = out.into_inner()?;
        let mut file = gz.finish()?.into_inner().map_err(|e| e.into_error())?;
        file.flush()?;
        file.sync_all()
    })
    .await
    .map_err(|e| io(std::io::Error::other(e)))?
    .map_err(io)
}
