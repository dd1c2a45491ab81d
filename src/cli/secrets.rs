//! The secret key that seals webhook signing secrets in the database: the flags `serve` and
//! `worker` take ([`SecretKeyArgs`]), and `retail-pulse secrets new-key`, which prints a fresh
//! key, alone, on stdout (`RP_SECRET_KEY=$(retail-pulse secrets new-key)`).

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Subcommand};

use crate::webhooks::keys::read_key_file;
use crate::webhooks::sealing::{KeyRing, SecretKey};

/// Text that holds key material: kept out of `Debug` (and so out of every log).
#[derive(Clone)]
pub struct KeyText(String);

impl std::fmt::Debug for KeyText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyText(<redacted>)")
    }
}

/// Never fails: a malformed key is refused later, in words that do not quote it (clap's own
/// error would print the value).
fn key_text(text: &str) -> Result<KeyText, std::convert::Infallible> {
    Ok(KeyText(text.to_string()))
}

#[derive(Debug, Args, Clone)]
pub struct SecretKeyArgs {
    /// Keys that seal the webhook signing secrets in the database: base64 of 32 bytes
    /// (`retail-pulse secrets new-key`), comma-separated; the first seals, the others only
    /// open what they sealed (to retire a key). Unset: on SQLite, a key file beside the
    /// database (`<file>.key`); on PostgreSQL, webhooks are off.
    #[arg(long, env = "RP_SECRET_KEY", hide_env_values = true, value_parser = key_text)]
    pub secret_key: Option<KeyText>,
    /// A file of keys instead of --secret-key: one base64 key per line, the sealing one first.
    #[arg(long, env = "RP_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,
}

impl SecretKeyArgs {
    /// The keys given, or `None` (the start-up decides: see `webhooks::keys`).
    pub fn to_keys(&self) -> anyhow::Result<Option<KeyRing>> {
        // An empty value is no value (a variable set to "" in a compose file or a test).
        let text = self.secret_key.as_ref().filter(|k| !k.0.trim().is_empty());
        let file = self
            .secret_key_file
            .as_ref()
            .filter(|p| !p.as_os_str().is_empty());
        match (text, file) {
            (Some(_), Some(_)) => {
                bail!("secret-key: give RP_SECRET_KEY or RP_SECRET_KEY_FILE, not both")
            }
            (Some(text), None) => Ok(Some(KeyRing::parse_list(&text.0, "RP_SECRET_KEY")?)),
            (None, Some(path)) => Ok(Some(read_key_file(path)?)),
            (None, None) => Ok(None),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Print a new secret key (base64 of 32 random bytes), alone, on stdout: for
    /// RP_SECRET_KEY or a line of RP_SECRET_KEY_FILE.
    NewKey,
}

pub fn run(command: SecretsCommand) -> anyhow::Result<()> {
    match command {
        SecretsCommand::NewKey => {
            let (key, text) = SecretKey::generate()?;
            println!("{text}");
            eprintln!("key id {} (rows sealed by it name it)", key.id());
        }
    }
    Ok(())
}
