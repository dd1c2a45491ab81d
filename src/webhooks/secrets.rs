//! The tenants' signing secrets, sealed at rest ([`super::sealing`]): made on first use, read
//! for the API and for signing, rotated, and — at start-up — every row still in clear, or
//! sealed by a key other than the first, resealed with the first ([`WebhookSecrets::seal_all`]).
//!
//! Every write is conditional on the row being as it was read (see
//! [`crate::db::webhooks::reseal`]), so any number of processes may read, rotate and reseal at
//! once: a process that loses a race reads the row again, or leaves it to the winner.

use std::time::Duration;

use super::sealing::{KeyRing, SealError, Slot};
use crate::db::webhooks::{self as rows, Sealed, StoredSecrets};
use crate::db::{Db, DbError};

/// The secrets a tenant's deliveries are signed with right now.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecrets {
    pub current: String,
    /// The secret before the last rotation, while it is still within its overlap.
    pub previous: Option<String>,
}

impl std::fmt::Debug for SigningSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never reach a log by accident.
        f.debug_struct("SigningSecrets")
            .field("previous", &self.previous.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("tenant {tenant}'s webhook secret: {why}")]
    Seal { tenant: String, why: SealError },
    #[error("no random bytes for a webhook secret: {0}")]
    Random(String),
    #[error("tenant {0}'s webhook secret kept changing while it was being written")]
    Contended(String),
}

impl SecretsError {
    /// Whether waiting and trying again may succeed (the database is away or busy, or the
    /// row was changing under this process).
    pub fn is_transient(&self) -> bool {
        match self {
            SecretsError::Db(error) => error.is_transient(),
            SecretsError::Contended(_) => true,
            SecretsError::Seal { .. } | SecretsError::Random(_) => false,
        }
    }
}

/// What [`WebhookSecrets::seal_all`] did at start-up.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SealReport {
    /// Rows written: sealed at last, or resealed with the first key.
    pub resealed: u64,
    /// Rows that do not open with their key (altered, or moved from another tenant's row):
    /// left as they are, their tenant's deliveries cannot be signed.
    pub unreadable: Vec<String>,
}

/// The tenants' secrets, sealed by the first key of `keys`.
#[derive(Debug)]
pub struct WebhookSecrets {
    db: Db,
    keys: KeyRing,
}

/// Tries of a conditional write before giving up on a row other writers keep changing.
const TRIES: usize = 5;

impl WebhookSecrets {
    pub fn new(db: Db, keys: KeyRing) -> Self {
        Self { db, keys }
    }

    /// The id of the key that seals.
    pub fn key_id(&self) -> &str {
        self.keys.sealing().id()
    }

    /// The tenant's current secret, made (and stored) when it has none yet.
    pub async fn current(&self, tenant: &str) -> Result<String, SecretsError> {
        Ok(self.signing(tenant).await?.current)
    }

    /// The secrets to sign a tenant's delivery with; the tenant's secret is made when it has
    /// none yet. Two callers racing to make one both end up with the one stored first. A row
    /// found in clear (an older version wrote it) is sealed on the way.
    pub async fn signing(&self, tenant: &str) -> Result<SigningSecrets, SecretsError> {
        for _ in 0..TRIES {
            let Some(row) = rows::stored_secrets(&self.db, tenant).await? else {
                let fresh = fresh()?;
                let sealed = self.seal(tenant, Slot::Current, &fresh)?;
                let stored = Sealed {
                    current: &sealed,
                    previous: None,
                    key_id: self.key_id(),
                };
                if rows::insert_sealed(&self.db, tenant, &stored).await? {
                    return Ok(SigningSecrets {
                        current: fresh,
                        previous: None,
                    });
                }
                continue;
            };
            let secrets = self.open(&row)?;
            if self.wants_resealing(&row) {
                // Best effort: the next reader or the next start tries again.
                if let Err(error) = self.reseal(&row, &secrets).await {
                    tracing::warn!(%error, tenant, "could not seal a webhook secret found in clear");
                }
            }
            return Ok(secrets);
        }
        Err(SecretsError::Contended(tenant.to_string()))
    }

    /// Makes a new secret the tenant's current one; the one it replaces keeps signing, beside
    /// it, for `overlap`. Returns the new secret and until when (epoch ms) the previous one
    /// signs, or `None` when the tenant had no secret before.
    pub async fn rotate(
        &self,
        tenant: &str,
        overlap: Duration,
    ) -> Result<(String, Option<i64>), SecretsError> {
        let fresh = fresh()?;
        let sealed_new = self.seal(tenant, Slot::Current, &fresh)?;
        for _ in 0..TRIES {
            let Some(row) = rows::stored_secrets(&self.db, tenant).await? else {
                let stored = Sealed {
                    current: &sealed_new,
                    previous: None,
                    key_id: self.key_id(),
                };
                if rows::insert_sealed(&self.db, tenant, &stored).await? {
                    return Ok((fresh, None));
                }
                continue;
            };
            // A secret that does not open (altered) signs nothing: rotating replaces it.
            let replaced = match self.open(&row) {
                Ok(secrets) => Some(secrets.current),
                Err(SecretsError::Seal {
                    why: SealError::DoesNotOpen,
                    ..
                }) => None,
                Err(other) => return Err(other),
            };
            let sealed_previous = replaced
                .as_deref()
                .map(|r| self.seal(tenant, Slot::Previous, r))
                .transpose()?;
            let stored = Sealed {
                current: &sealed_new,
                previous: sealed_previous.as_deref(),
                key_id: self.key_id(),
            };
            if let Some(until) = rows::rotate_sealed(&self.db, &row, &stored, overlap).await? {
                return Ok((fresh, replaced.map(|_| until)));
            }
        }
        Err(SecretsError::Contended(tenant.to_string()))
    }

    /// Seals every row still in clear and reseals every row sealed by another key with the
    /// first one (a previous secret past its overlap is dropped from the rows it writes; the
    /// workers' upkeep erases it from the others). Idempotent; safe
    /// when several processes start at once (each write is conditional: the loser of a race
    /// leaves the row to the winner). A row sealed by a key not given is an error: retiring
    /// that key was too early.
    pub async fn seal_all(&self) -> Result<SealReport, SecretsError> {
        let mut report = SealReport::default();
        for row in rows::secrets_to_reseal(&self.db, self.key_id()).await? {
            let secrets = match self.open(&row) {
                Ok(secrets) => secrets,
                Err(SecretsError::Seal {
                    tenant,
                    why: SealError::DoesNotOpen,
                }) => {
                    report.unreadable.push(tenant);
                    continue;
                }
                Err(other) => return Err(other),
            };
            if self.reseal(&row, &secrets).await? {
                report.resealed += 1;
            }
        }
        Ok(report)
    }

    /// Whether a row read for use should be written back sealed by the first key.
    fn wants_resealing(&self, row: &StoredSecrets) -> bool {
        row.in_clear() || row.key_id.as_deref() != Some(self.key_id())
    }

    /// Writes `secrets` back into `row`, sealed by the first key, if the row has not changed.
    async fn reseal(
        &self,
        row: &StoredSecrets,
        secrets: &SigningSecrets,
    ) -> Result<bool, SecretsError> {
        let current = self.seal(&row.tenant, Slot::Current, &secrets.current)?;
        let previous = secrets
            .previous
            .as_deref()
            .map(|p| self.seal(&row.tenant, Slot::Previous, p))
            .transpose()?;
        let stored = Sealed {
            current: &current,
            previous: previous.as_deref(),
            key_id: self.key_id(),
        };
        Ok(rows::reseal(&self.db, row, &stored).await?)
    }

    /// The secrets a row holds: its clear columns where an older version wrote them (they are
    /// then the newer truth), otherwise its sealed ones. A previous secret past its overlap is
    /// left out.
    fn open(&self, row: &StoredSecrets) -> Result<SigningSecrets, SecretsError> {
        let live = row.previous_live != 0;
        let opened = |slot, sealed: &str| -> Result<String, SecretsError> {
            let key_id = row.key_id.as_deref().unwrap_or_default();
            self.keys
                .open(key_id, &row.tenant, slot, sealed)
                .map_err(|why| SecretsError::Seal {
                    tenant: row.tenant.clone(),
                    why,
                })
        };
        if let Some(current) = &row.secret {
            // An older version rotated away from the sealed secret: that one is the previous.
            let previous = match (&row.previous_secret, &row.secret_sealed) {
                _ if !live => None,
                (Some(clear), _) => Some(clear.clone()),
                (None, Some(sealed)) => Some(opened(Slot::Current, sealed)?),
                (None, None) => None,
            };
            return Ok(SigningSecrets {
                current: current.clone(),
                previous,
            });
        }
        let Some(sealed) = &row.secret_sealed else {
            return Err(DbError::Encoding(format!(
                "tenant {}'s webhook secret row holds no secret",
                row.tenant
            ))
            .into());
        };
        let previous = match (&row.previous_sealed, live) {
            (Some(sealed), true) => Some(opened(Slot::Previous, sealed)?),
            _ => None,
        };
        Ok(SigningSecrets {
            current: opened(Slot::Current, sealed)?,
            previous,
        })
    }

    fn seal(&self, tenant: &str, slot: Slot, secret: &str) -> Result<String, SecretsError> {
        self.keys
            .sealing()
            .seal(tenant, slot, secret)
            .map_err(|why| SecretsError::Seal {
                tenant: tenant.to_string(),
                why,
            })
    }
}

fn fresh() -> Result<String, SecretsError> {
    super::generate_secret().map_err(|e| SecretsError::Random(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhooks::sealing::SecretKey;

    async fn database(dir: &tempfile::TempDir) -> Db {
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let db = Db::connect(&url, 4).await.unwrap();
        db.migrate().await.unwrap();
        db
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn processes_sealing_at_once_write_each_row_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(&dir).await;
        let mut clear = Vec::new();
        for i in 0..20 {
            let secret = fresh().unwrap();
            sqlx::query(
                "INSERT INTO webhook_secrets (tenant, secret, created_at) VALUES ($1, $2, 0)",
            )
            .bind(format!("t{i}"))
            .bind(&secret)
            .execute(db.pool())
            .await
            .unwrap();
            clear.push(secret);
        }
        let keys = KeyRing::single(SecretKey::from_bytes(&[5; 32]));
        // Three processes: three pools on the same file, each its own writer queue.
        let mut processes = Vec::new();
        for _ in 0..3 {
            let secrets = WebhookSecrets::new(database(&dir).await, keys.clone());
            processes.push(tokio::spawn(
                async move { secrets.seal_all().await.unwrap() },
            ));
        }
        let mut resealed = 0;
        for p in processes {
            resealed += p.await.unwrap().resealed;
        }
        assert_eq!(resealed, 20, "each row written once");
        let secrets = WebhookSecrets::new(db.clone(), keys);
        assert_eq!(secrets.seal_all().await.unwrap(), SealReport::default());
        for (i, secret) in clear.iter().enumerate() {
            let row = rows::stored_secrets(&db, &format!("t{i}"))
                .await
                .unwrap()
                .unwrap();
            assert!(!row.in_clear(), "{row:?}");
            assert_eq!(&secrets.current(&format!("t{i}")).await.unwrap(), secret);
        }
    }

    #[tokio::test]
    async fn a_rotation_keeps_the_replaced_secret_signing_for_the_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = WebhookSecrets::new(
            database(&dir).await,
            KeyRing::single(SecretKey::from_bytes(&[6; 32])),
        );
        let (first, until) = secrets.rotate("t", Duration::from_secs(60)).await.unwrap();
        assert_eq!(until, None, "nothing replaced");
        let (second, until) = secrets.rotate("t", Duration::from_secs(60)).await.unwrap();
        assert!(until.is_some());
        let signing = secrets.signing("t").await.unwrap();
        assert_eq!(signing.current, second);
        assert_eq!(signing.previous.as_deref(), Some(first.as_str()));
        let (third, _) = secrets.rotate("t", Duration::ZERO).await.unwrap();
        let signing = secrets.signing("t").await.unwrap();
        assert_eq!((signing.current, signing.previous), (third, None));
    }
}
