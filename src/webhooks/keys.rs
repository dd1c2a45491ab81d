//! Which secret key seals the webhook secrets of this process, decided at start-up
//! ([`keys_at_start`]):
//!
//! - keys given (`--secret-key`, `--secret-key-file`): those;
//! - none, on a SQLite file: the key file beside it (`<database file>.key`, mode 0600), made
//!   on first start and reused after — it must be backed up with the database;
//! - none, on an in-memory SQLite database: a key made for this process (the data goes with
//!   it anyway);
//! - none, on PostgreSQL: no key, webhooks off — unless the database already holds webhook
//!   secrets or undelivered deliveries, which a process without the key could not use: then
//!   the process refuses to start.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::sealing::{KeyParseError, KeyRing, SecretKey};
use crate::db::{self, Backend, Db, DbError};

/// The settings that give a key, for the messages that ask for one.
pub const KEY_SETTINGS: &str =
    "RP_SECRET_KEY (--secret-key) or RP_SECRET_KEY_FILE (--secret-key-file)";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(
        "this database holds {secrets} webhook secrets and {undelivered} undelivered webhook deliveries, \
         but no secret key was given to open them: set {KEY_SETTINGS} to the key the other processes use \
         (`retail-pulse secrets new-key` makes a first one)"
    )]
    Required { secrets: i64, undelivered: i64 },
    #[error(
        "the webhook secrets in this database are sealed by key {ids}, but the key file {path} is missing: \
         restore it from the backup of the database, or give the key in RP_SECRET_KEY"
    )]
    KeyFileMissing { path: String, ids: String },
    #[error("the secret key file {path}: {error}")]
    KeyFile { path: String, error: String },
    #[error(transparent)]
    Parse(#[from] KeyParseError),
}

/// The keys this process seals and opens webhook secrets with, or `None` when webhooks are
/// off (PostgreSQL without a key). Logs which, and where a key file is.
pub async fn keys_at_start(db: &Db, given: Option<KeyRing>) -> Result<Option<KeyRing>, KeyError> {
    if let Some(keys) = given {
        return Ok(Some(keys));
    }
    match (db.backend(), db.sqlite_file()) {
        (Backend::Sqlite, Some(file)) => Ok(Some(key_file_beside(db, &file).await?)),
        (Backend::Sqlite, None) => {
            let (key, _) = SecretKey::generate().map_err(|e| KeyError::KeyFile {
                path: "(memory)".into(),
                error: format!("no random bytes: {e}"),
            })?;
            tracing::info!(
                key.id = key.id(),
                "in-memory database: webhook secrets are sealed with a key made for this process only"
            );
            Ok(Some(KeyRing::single(key)))
        }
        (Backend::Postgres, _) => {
            let (secrets, undelivered) = db::webhooks::webhook_state(db).await?;
            if secrets > 0 || undelivered > 0 {
                return Err(KeyError::Required {
                    secrets,
                    undelivered,
                });
            }
            tracing::warn!(
                "webhooks are off: no secret key given (set {KEY_SETTINGS}); submits naming a \
                 webhook and the webhook secret endpoints answer 503, and this process delivers none"
            );
            Ok(None)
        }
    }
}

/// Reads the key file beside a SQLite database, or makes it (mode 0600) on first start.
async fn key_file_beside(db: &Db, database: &Path) -> Result<KeyRing, KeyError> {
    let mut path = database.as_os_str().to_owned();
    path.push(".key");
    let path = PathBuf::from(path);
    let shown = path.display().to_string();
    if !path.exists() {
        let sealed_by = db::webhooks::sealing_key_ids(db).await?;
        if !sealed_by.is_empty() {
            return Err(KeyError::KeyFileMissing {
                path: shown,
                ids: sealed_by.join(", "),
            });
        }
        let (key, text) = SecretKey::generate().map_err(|e| KeyError::KeyFile {
            path: shown.clone(),
            error: format!("no random bytes: {e}"),
        })?;
        match create_private(&path, &text) {
            Ok(()) => {
                tracing::info!(
                    path = %shown,
                    key.id = key.id(),
                    "made the secret key that seals webhook secrets; back it up with the database \
                     (without it they cannot be read)"
                );
                return Ok(KeyRing::single(key));
            }
            // Another process starting beside this one made it first: use that one.
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(error) => {
                return Err(KeyError::KeyFile {
                    path: shown,
                    error: error.to_string(),
                });
            }
        }
    }
    let keys = read_key_file(&path)?;
    tracing::info!(
        path = %shown,
        key.id = keys.sealing().id(),
        "webhook secrets are sealed with the key in this file; back it up with the database"
    );
    Ok(keys)
}

/// Writes `text` to a new file only its owner may read (refusing to replace one).
fn create_private(path: &Path, text: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(format!("{text}\n").as_bytes())?;
    file.sync_all()
}

/// Reads a key file (one base64 key per line, the sealing one first), warning when others
/// than its owner may read it.
pub fn read_key_file(path: &Path) -> Result<KeyRing, KeyError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| KeyError::KeyFile {
        path: shown.clone(),
        error: e.to_string(),
    })?;
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %shown, "the secret key file is readable by others than its owner: chmod 600 it");
        }
    }
    Ok(KeyRing::parse_lines(&text, &shown)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_in_memory_database_gets_a_key_of_its_own_and_given_keys_win() {
        let db = Db::connect("sqlite::memory:", 1).await.unwrap();
        let made = keys_at_start(&db, None).await.unwrap().expect("a key");
        let again = keys_at_start(&db, None).await.unwrap().expect("a key");
        assert_ne!(
            made.sealing().id(),
            again.sealing().id(),
            "one per process start"
        );
        let given = KeyRing::single(SecretKey::from_bytes(&[3; 32]));
        let kept = keys_at_start(&db, Some(given.clone())).await.unwrap();
        assert_eq!(kept.unwrap().sealing().id(), given.sealing().id());
    }

    #[tokio::test]
    async fn a_key_file_is_made_private_once_and_read_after() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.db");
        let url = format!("sqlite://{}?mode=rwc", file.display());
        let db = Db::connect(&url, 2).await.unwrap();
        db.migrate().await.unwrap();
        let made = keys_at_start(&db, None).await.unwrap().unwrap();
        let key_file = dir.path().join("x.db.key");
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let read = keys_at_start(&db, None).await.unwrap().unwrap();
        assert_eq!(made.sealing().id(), read.sealing().id());
        db.close().await;
    }
}
