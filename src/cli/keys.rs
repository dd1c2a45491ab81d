//! `retail-pulse keys create | list | revoke`: the operator's side of API keys, run against
//! the database directly (like `migrate`). `create` prints the new key alone on stdout, so
//! `KEY=$(retail-pulse keys create --name app)` captures exactly it; everything else goes to
//! stderr.

use anyhow::{Context, bail};
use clap::Subcommand;

use super::db::DbArgs;
use crate::auth::keys;
use crate::db::DbError;
use crate::db::keys::{KeyRow, NewKey, Revoke};
use crate::domain::time::format_ms;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it, alone, on stdout (shown this once: only its hash is kept).
    Create {
        /// A unique name for the key (who uses it: `field-app`, `partner-x`); never reused.
        #[arg(long)]
        name: String,
        /// The tenant the key acts for (default: the key's name). Keys of one tenant see
        /// the same jobs.
        #[arg(long)]
        tenant: Option<String>,
        /// An admin key sees and acts on every tenant's jobs and reads /metrics.
        #[arg(long)]
        admin: bool,
        /// This tenant's most unfinished images instead of the server's
        /// --tenant-max-unfinished-images (0: unlimited).
        #[arg(long)]
        max_unfinished_images: Option<u64>,
        /// This tenant's submits per minute instead of the server's
        /// --tenant-submits-per-minute (0: unlimited).
        #[arg(long)]
        submits_per_minute: Option<u32>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List keys: name, tenant, admin, created, last used, revoked, limits (never the key).
    List {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Revoke a key: servers refuse it within a second or two.
    Revoke {
        name: String,
        #[command(flatten)]
        db: DbArgs,
    },
}

pub async fn run(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create {
            name,
            tenant,
            admin,
            max_unfinished_images,
            submits_per_minute,
            db,
        } => {
            let tenant = tenant.unwrap_or_else(|| name.clone());
            keys::check_name("key name", &name).map_err(anyhow::Error::msg)?;
            keys::check_name("tenant", &tenant).map_err(anyhow::Error::msg)?;
            let db = db.open_ready().await?;
            let generated = keys::generate().context("cannot read the system's random source")?;
            let new = NewKey {
                name: &name,
                tenant: &tenant,
                admin,
                key_hash: &generated.hash,
                max_unfinished_images: max_unfinished_images.map(|v| v.min(i64::MAX as u64) as i64),
                submits_per_minute: submits_per_minute.map(i64::from),
            };
            let row = match crate::db::keys::insert(&db, &new).await {
                Ok(row) => row,
                Err(DbError::Duplicate(_)) => bail!(
                    "a key named `{name}` already exists (names are never reused, even after \
                     a revoke: choose another)"
                ),
                Err(e) => return Err(e.into()),
            };
            db.close().await;
            println!("{}", generated.key);
            eprintln!(
                "created {}key `{}` for tenant `{}`; it is shown only this once: store it now",
                if row.admin { "admin " } else { "" },
                row.name,
                row.tenant
            );
        }
        KeysCommand::List { db } => {
            let db = db.open_ready().await?;
            let rows = crate::db::keys::list(&db).await?;
            db.close().await;
            print!("{}", table(&rows));
            if rows.is_empty() {
                eprintln!("no keys yet: create one with `retail-pulse keys create --name NAME`");
            }
        }
        KeysCommand::Revoke { name, db } => {
            let db = db.open_ready().await?;
            let outcome = crate::db::keys::revoke(&db, &name).await?;
            db.close().await;
            match outcome {
                Revoke::Revoked(row) => eprintln!(
                    "revoked key `{}` (tenant `{}`): servers refuse it within a second or two",
                    row.name, row.tenant
                ),
                Revoke::AlreadyRevoked(row) => eprintln!(
                    "key `{}` was already revoked at {}",
                    row.name,
                    row.revoked_at.map(format_ms).unwrap_or_default()
                ),
                Revoke::NotFound => bail!("no key named `{name}`"),
            }
        }
    }
    Ok(())
}

/// The `keys list` table: aligned columns, `-` for nothing; never a key or its hash.
fn table(rows: &[KeyRow]) -> String {
    let time = |t: Option<i64>| t.map(format_ms).unwrap_or_else(|| "-".into());
    let limit = |v: Option<i64>| match v {
        None => "default".to_string(),
        Some(0) => "unlimited".to_string(),
        Some(n) => n.to_string(),
    };
    let mut lines: Vec<[String; 8]> = vec![[
        "NAME".into(),
        "TENANT".into(),
        "ADMIN".into(),
        "CREATED".into(),
        "LAST USED".into(),
        "REVOKED".into(),
        "MAX UNFINISHED".into(),
        "SUBMITS/MIN".into(),
    ]];
    for r in rows {
        lines.push([
            r.name.clone(),
            r.tenant.clone(),
            if r.admin { "yes" } else { "no" }.into(),
            format_ms(r.created_at),
            time(r.last_used_at),
            time(r.revoked_at),
            limit(r.max_unfinished_images),
            limit(r.submits_per_minute),
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for line in &lines {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_aligns_and_shows_every_column() {
        let row = KeyRow {
            id: 1,
            name: "field-app".into(),
            tenant: "acme".into(),
            admin: false,
            created_at: 0,
            last_used_at: None,
            revoked_at: Some(1000),
            max_unfinished_images: Some(0),
            submits_per_minute: None,
        };
        let text = table(&[row]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NAME       TENANT  ADMIN"), "{text}");
        assert!(lines[1].starts_with("field-app  acme    no"), "{text}");
        assert!(lines[1].contains("1970-01-01T00:00:01.000Z"), "{text}");
        assert!(lines[1].ends_with("unlimited       default"), "{text}");
    }
}
