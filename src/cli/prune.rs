//! `retail-pulse prune --older-than DURATION`: one retention pass by hand.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::db::DbArgs;
use super::values::Span;
use crate::domain::time::format_ms;
use crate::metrics::Metrics;
use crate::retention::Pruner;

pub const PRUNE_HELP: &str = "\
Jobs are deleted in small statements (at most 1000 images each) that never touch an ongoing
job, so the queue keeps working meanwhile. A job whose webhook is still being delivered is
left for a later run. Prints what it removed; exit 0, or 1 on an error (what was removed
before it stays removed). On PostgreSQL it waits while another process is pruning.";

#[derive(Debug, Args, Clone)]
pub struct PruneArgs {
    /// Delete finished jobs whose finish time is older than this: `30d`, `12h`, `90m`, `0s`.
    #[arg(long)]
    pub older_than: Span,
    /// Before deleting a job, write its results there as gzipped CSV (`job-ID.csv.gz`).
    #[arg(long, env = "RP_ARCHIVE_DIR")]
    pub archive_dir: Option<PathBuf>,
    #[command(flatten)]
    pub db: DbArgs,
}

/// `retail-pulse prune`: one pass, then what it removed on stdout.
pub async fn run(args: PruneArgs) -> anyhow::Result<()> {
    let older_than = args.older_than.0;
    if let Some(problem) = args
        .archive_dir
        .as_deref()
        .and_then(crate::retention::archive_dir_problem)
    {
        anyhow::bail!("--archive-dir: {problem}");
    }
    let db = args.db.open_ready().await?;
    let cutoff = db.now().await? - older_than.as_millis() as i64;
    let pruner = Pruner::new(
        db.clone(),
        older_than,
        args.archive_dir.clone(),
        Arc::new(Metrics::new()),
    );
    let never = CancellationToken::new();
    let mut told = false;
    let pruned = loop {
        if let Some(pruned) = pruner.prune(&never).await? {
            break pruned;
        }
        if !told {
            eprintln!("another process is pruning this database; waiting for it to finish");
            told = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let plural = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    println!(
        "pruned {} finished before {} ({}, {})",
        plural(pruned.jobs, "job", "jobs"),
        format_ms(cutoff),
        plural(pruned.images, "image", "images"),
        plural(pruned.deliveries, "webhook delivery", "webhook deliveries"),
    );
    if let Some(dir) = &args.archive_dir {
        println!(
            "archived {} to {}",
            plural(pruned.archived, "job", "jobs"),
            dir.display()
        );
    }
    db.close().await;
    if pruned.skipped > 0 {
        anyhow::bail!(
            "{} left in place: the archive could not be written (the errors are in the log above){}",
            plural(pruned.skipped, "job was", "jobs were"),
            if pruned.jobs > 0 {
                "; the others were pruned"
            } else {
                ""
            }
        );
    }
    Ok(())
}
