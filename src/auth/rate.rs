//! Rates that hold for the service as a whole: token buckets kept in the database
//! ([`crate::db::rates`]) on its clock, so the configured number is the same however many API
//! processes answer. Used for each tenant's submits and for the dashboard's failed sign-ins per
//! client address.
//!
//! A key allowed N a minute has a bucket of N tokens that refills at N per minute; each use
//! takes one. A quiet key can therefore make a burst of N at once, and then N a minute.

use std::time::Duration;

use crate::db::{self, Db, DbError};

#[derive(Debug, Clone)]
pub struct Buckets {
    db: Db,
}

impl Buckets {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Takes one token from `key`'s bucket, for a rate of `per_minute`; when the bucket is
    /// empty, `Err` says how long until it holds one again. `now` (epoch ms) replaces the
    /// database's clock (tests).
    pub async fn take(
        &self,
        key: &str,
        per_minute: u32,
        now: Option<i64>,
    ) -> Result<Result<(), Duration>, DbError> {
        self.use_bucket(key, per_minute, 1.0, now).await
    }

    /// Whether `key`'s bucket holds a token, without taking it. (The dashboard's sign-in
    /// checks first and takes a token only for a failed attempt.)
    pub async fn check(
        &self,
        key: &str,
        per_minute: u32,
        now: Option<i64>,
    ) -> Result<Result<(), Duration>, DbError> {
        self.use_bucket(key, per_minute, 0.0, now).await
    }

    async fn use_bucket(
        &self,
        key: &str,
        per_minute: u32,
        cost: f64,
        now: Option<i64>,
    ) -> Result<Result<(), Duration>, DbError> {
        let capacity = f64::from(per_minute.max(1));
        let per_ms = capacity / 60_000.0;
        Ok(
            match db::rates::take(&self.db, key, capacity, per_ms, cost, now).await? {
                None => Ok(()),
                Some(wait_ms) => Err(Duration::from_millis(wait_ms.max(0) as u64)),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn buckets() -> (tempfile::TempDir, Buckets) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("r.db").display());
        let db = Db::connect(&url, 2).await.unwrap();
        db.migrate().await.unwrap();
        (dir, Buckets::new(db))
    }

    const START: i64 = 1_800_000_000_000;

    #[tokio::test]
    async fn a_burst_of_the_rate_passes_then_one_token_per_interval() {
        let (_dir, rate) = buckets().await;
        let at = |secs: i64| Some(START + secs * 1000);
        for i in 0..6 {
            assert!(
                rate.take("a", 6, at(0)).await.unwrap().is_ok(),
                "submit {i} of the burst"
            );
        }
        let wait = rate.take("a", 6, at(0)).await.unwrap().unwrap_err();
        assert_eq!(wait.as_secs(), 10, "6 a minute: one every 10 s");
        // Half the interval later, still empty, and the wait has halved.
        let wait = rate.take("a", 6, at(5)).await.unwrap().unwrap_err();
        assert_eq!(wait.as_secs(), 5);
        assert!(rate.take("a", 6, at(10)).await.unwrap().is_ok());
        assert!(rate.take("a", 6, at(10)).await.unwrap().is_err());
    }

    #[tokio::test]
    async fn a_check_takes_nothing() {
        let (_dir, rate) = buckets().await;
        for _ in 0..5 {
            assert!(rate.check("a", 1, Some(START)).await.unwrap().is_ok());
        }
        assert!(rate.take("a", 1, Some(START)).await.unwrap().is_ok());
        assert!(rate.check("a", 1, Some(START)).await.unwrap().is_err());
    }

    #[tokio::test]
    async fn keys_have_their_own_buckets() {
        let (_dir, rate) = buckets().await;
        assert!(rate.take("a", 1, Some(START)).await.unwrap().is_ok());
        assert!(rate.take("a", 1, Some(START)).await.unwrap().is_err());
        assert!(rate.take("b", 1, Some(START)).await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_quiet_bucket_refills_only_to_its_capacity() {
        let (_dir, rate) = buckets().await;
        assert!(rate.take("a", 2, Some(START)).await.unwrap().is_ok());
        let later = Some(START + 3_600_000);
        assert!(rate.take("a", 2, later).await.unwrap().is_ok());
        assert!(rate.take("a", 2, later).await.unwrap().is_ok());
        assert!(rate.take("a", 2, later).await.unwrap().is_err());
    }

    #[tokio::test]
    async fn idle_buckets_are_swept() {
        let (_dir, rate) = buckets().await;
        assert!(rate.take("old", 1, Some(1_000)).await.unwrap().is_ok());
        assert!(rate.take("new", 1, None).await.unwrap().is_ok());
        assert_eq!(db::rates::sweep(&rate.db).await.unwrap(), 1);
    }
}
