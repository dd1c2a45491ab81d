//! `retail-pulse stores import FILE`: load or refresh the store master from a CSV file.

use std::path::PathBuf;

use clap::Subcommand;

use super::db::DbArgs;
use crate::stores;

#[derive(Debug, Subcommand)]
pub enum StoresCommand {
    /// Load or refresh the store master from a CSV file (AreaCode, StoreName, StoreID).
    Import {
        file: PathBuf,
        #[command(flatten)]
        db: DbArgs,
    },
}

pub async fn run(command: StoresCommand) -> anyhow::Result<()> {
    match command {
        StoresCommand::Import { file, db } => {
            let db = db.open_ready().await?;
            let list = stores::load_file(&file)?;
            let count = crate::db::stores::upsert(&db, &list).await?;
            db.close().await;
            println!("imported {count} stores from {}", file.display());
        }
    }
    Ok(())
}
