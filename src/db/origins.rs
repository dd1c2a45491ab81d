//! The per-origin state every worker process shares (`origin_breakers`, `origin_shares`): each
//! origin's circuit breaker, and the shares of its download budget the processes hold.
//!
//! One transaction per sync of one process ([`sync`]). It locks the breaker rows of the
//! origins it touches, in origin order, so two processes' syncs of one origin take turns: a
//! process raises its share only under that lock, and only to what the budget leaves after the
//! shares the others hold, so the shares together never exceed the budget. A share lapses
//! with its lease when its process stops syncing (it died: its downloads died with it).

use sqlx::{AnyConnection, AssertSqlSafe};

use super::{Backend, Db, DbError, err};

/// One origin's demand from one process, as [`sync`] takes it.
#[derive(Debug, Clone)]
pub struct Want {
    pub origin: String,
    pub in_flight: i64,
    pub permits: i64,
    pub starved: bool,
    /// (reachable, was the probe), in order.
    pub events: Vec<(bool, bool)>,
}

/// What [`sync`] grants one origin's entry.
#[derive(Debug, Clone)]
pub struct Granted {
    pub origin: String,
    pub permits: i64,
    /// Milliseconds the breaker stays open (`None`: closed).
    pub open_for_ms: Option<i64>,
    pub failed_probes: i64,
    pub probe: bool,
    /// The breaker's row was locked (another process mid-sync, or one that vanished holding
    /// it): the share was only renewed as it was, and the breaker fields say nothing.
    pub stale: bool,
}

/// How the processes share: each origin's budget, the breaker's threshold and cool-down, and
/// how long a share and a probe right last.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub budget: i64,
    pub breaker_failures: i64,
    pub cooldown_ms: i64,
    pub lease_ms: i64,
    pub probe_ms: i64,
}

struct Breaker {
    failures: i64,
    open_until: Option<i64>,
    failed_probes: i64,
    probe_owner: Option<String>,
    probe_until: Option<i64>,
}

super::from_row!(Breaker {
    failures: i64,
    open_until: Option<i64>,
    failed_probes: i64,
    probe_owner: Option<String>,
    probe_until: Option<i64>,
});

struct Share {
    permits: i64,
    wanted: i64,
}

super::from_row!(Share {
    permits: i64,
    wanted: i64,
});

/// Water filling: `budget` split over `wanted`, each getting at most what it wants and what
/// one cannot use going to the others; returns the share of `wanted[me]`.
fn fair_share(budget: i64, wanted: &[i64], me: usize) -> i64 {
    let mut left = budget.max(0);
    let mut order: Vec<usize> = (0..wanted.len()).collect();
    order.sort_by_key(|&i| wanted[i]);
    let mut shares = vec![0; wanted.len()];
    for (k, &i) in order.iter().enumerate() {
        let even = left / (order.len() - k) as i64;
        shares[i] = wanted[i].min(even);
        left -= shares[i];
    }
    shares[me]
}

/// Syncs `owner`'s view of these origins with the shared state: its breaker events applied
/// (opening a breaker once its failures reach the threshold, closing it on an answer), its
/// share set (raised toward a fair split of the budget among the processes that want some,
/// never above what the others leave; lowered to what it has in flight when it wants no
/// more), the right to probe handed to it when the cool-down is over and nobody probes.
pub async fn sync(
    db: &Db,
    owner: &str,
    rules: Rules,
    wants: &[Want],
) -> Result<Vec<Granted>, DbError> {
    if wants.is_empty() {
        return Ok(Vec::new());
    }
    let mut wants = wants.to_vec();
    wants.sort_by(|a, b| a.origin.cmp(&b.origin));
    // A row another session holds is skipped, not waited for: a process that vanished in the
    // middle of its sync may hold it until the server ends its session, and the others must
    // go on meanwhile with the shares they have.
    let lock = match db.backend() {
        Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    };
    let _turn = db.write_turn().await;
    db.timed(async |conn| {
        let mut tx = sqlx::Connection::begin(&mut *conn).await.map_err(err)?;
        let now: i64 = sqlx::query_scalar(AssertSqlSafe(db.with_clock("SELECT {now}")))
            .fetch_one(&mut *tx)
            .await
            .map_err(err)?;
        let mut granted = Vec::with_capacity(wants.len());
        for want in &wants {
            granted.push(sync_one(&mut tx, owner, rules, want, now, lock).await?);
        }
        tx.commit().await.map_err(err)?;
        Ok(granted)
    })
    .await
}

async fn sync_one(
    conn: &mut AnyConnection,
    owner: &str,
    rules: Rules,
    want: &Want,
    now: i64,
    lock: &str,
) -> Result<Granted, DbError> {
    sqlx::query(
        "INSERT INTO origin_breakers (origin, failures, failed_probes, updated_at) \
         VALUES ($1, 0, 0, $2) ON CONFLICT (origin) DO NOTHING",
    )
    .bind(&want.origin)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(err)?;
    let locked: Option<Breaker> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT failures, open_until, failed_probes, probe_owner, probe_until \
         FROM origin_breakers WHERE origin = $1{lock}"
    )))
    .bind(&want.origin)
    .fetch_optional(&mut *conn)
    .await
    .map_err(err)?;
    let Some(mut b) = locked else {
        // Keep the share as it is (renewing it changes no total).
        sqlx::query("UPDATE origin_shares SET expires_at = $3 WHERE origin = $1 AND owner = $2")
            .bind(&want.origin)
            .bind(owner)
            .bind(now + rules.lease_ms)
            .execute(&mut *conn)
            .await
            .map_err(err)?;
        return Ok(Granted {
            origin: want.origin.clone(),
            permits: want.permits.max(want.in_flight),
            open_for_ms: None,
            failed_probes: 0,
            probe: false,
            stale: true,
        });
    };
    // A probe right that lapsed (its process died mid-probe) is free again.
    if b.probe_until.is_some_and(|until| until < now) {
        b.probe_owner = None;
        b.probe_until = None;
    }
    for &(reachable, probe) in &want.events {
        if probe && b.probe_owner.as_deref() == Some(owner) {
            b.probe_owner = None;
            b.probe_until = None;
        }
        if reachable {
            b.failures = 0;
            b.failed_probes = 0;
            b.open_until = None;
            continue;
        }
        b.failures += 1;
        if rules.breaker_failures == 0 {
            continue;
        }
        match b.open_until {
            // A failed probe opens it again; downloads started before it opened change nothing.
            Some(_) if probe => {
                b.failed_probes += 1;
                b.open_until = Some(now + rules.cooldown_ms);
            }
            Some(_) => {}
            None if b.failures >= rules.breaker_failures => {
                b.open_until = Some(now + rules.cooldown_ms);
            }
            None => {}
        }
    }
    // The probe: once the cool-down is over, to the first process that wants it.
    let mut probe = b.probe_owner.as_deref() == Some(owner);
    if b.open_until.is_some_and(|until| until <= now) && b.probe_owner.is_none() && want.starved {
        b.probe_owner = Some(owner.to_string());
        b.probe_until = Some(now + rules.probe_ms);
        probe = true;
    }
    sqlx::query(
        "UPDATE origin_breakers SET failures = $2, open_until = $3, failed_probes = $4, \
         probe_owner = $5, probe_until = $6, updated_at = $7 WHERE origin = $1",
    )
    .bind(&want.origin)
    .bind(b.failures)
    .bind(b.open_until)
    .bind(b.failed_probes)
    .bind(b.probe_owner.as_deref())
    .bind(b.probe_until)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(err)?;

    // The share.
    let others: Vec<Share> = sqlx::query_as(
        "SELECT permits, wanted FROM origin_shares \
         WHERE origin = $1 AND owner <> $2 AND expires_at > $3",
    )
    .bind(&want.origin)
    .bind(owner)
    .bind(now)
    .fetch_all(&mut *conn)
    .await
    .map_err(err)?;
    let held: i64 = others.iter().map(|s| s.permits).sum();
    // A process with downloads of the origin in flight, or waiting, wants the whole budget:
    // the processes that want some split it evenly. An idle one gives its share back.
    let wanted = if want.starved || want.in_flight > 0 {
        rules.budget
    } else {
        0
    };
    let mut all: Vec<i64> = others.iter().map(|s| s.wanted).collect();
    all.push(wanted);
    let fair = fair_share(rules.budget, &all, all.len() - 1);
    // Toward the fair split; never above what the others leave (so the shares together
    // never exceed the budget), never below what it has in flight.
    let target = fair;
    let permits = target.min(rules.budget - held).max(want.in_flight).max(0);
    // Until the process applies a lower share it may still start downloads up to the one it
    // holds: the database keeps the higher of the two until its next sync.
    let recorded = permits.max(want.permits);
    if recorded == 0 && wanted == 0 {
        sqlx::query("DELETE FROM origin_shares WHERE origin = $1 AND owner = $2")
            .bind(&want.origin)
            .bind(owner)
            .execute(&mut *conn)
            .await
            .map_err(err)?;
    } else {
        sqlx::query(
            "INSERT INTO origin_shares (origin, owner, permits, wanted, expires_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (origin, owner) DO UPDATE SET \
             permits = excluded.permits, wanted = excluded.wanted, expires_at = excluded.expires_at",
        )
        .bind(&want.origin)
        .bind(owner)
        .bind(recorded)
        .bind(wanted)
        .bind(now + rules.lease_ms)
        .execute(&mut *conn)
        .await
        .map_err(err)?;
    }
    Ok(Granted {
        origin: want.origin.clone(),
        permits,
        open_for_ms: b.open_until.map(|until| (until - now).max(0)),
        failed_probes: b.failed_probes,
        probe,
        stale: false,
    })
}

/// Gives back what `owner` holds of the shared state as it stops, its downloads over: its
/// shares of the origins' budgets and any right to probe, so the processes that go on (or the
/// one that replaces it) need not wait for them to lapse.
pub async fn release(db: &Db, owner: &str) -> Result<(), DbError> {
    let _turn = db.write_turn().await;
    db.timed(async |conn| {
        let mut tx = sqlx::Connection::begin(&mut *conn).await.map_err(err)?;
        sqlx::query("DELETE FROM origin_shares WHERE owner = $1")
            .bind(owner)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        sqlx::query(
            "UPDATE origin_breakers SET probe_owner = NULL, probe_until = NULL \
             WHERE probe_owner = $1",
        )
        .bind(owner)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)
    })
    .await
}

/// Deletes shares long lapsed and breakers closed and unused for an hour.
pub async fn sweep(db: &Db) -> Result<u64, DbError> {
    let _turn = db.write_turn().await;
    let shares = sqlx::query(AssertSqlSafe(
        db.with_clock("DELETE FROM origin_shares WHERE expires_at < {now} - 60000"),
    ))
    .execute(db.pool())
    .await
    .map_err(err)?
    .rows_affected();
    let breakers = sqlx::query(AssertSqlSafe(db.with_clock(
        "DELETE FROM origin_breakers WHERE open_until IS NULL AND failures = 0 \
         AND updated_at < {now} - 3600000 \
         AND origin NOT IN (SELECT origin FROM origin_shares)",
    )))
    .execute(db.pool())
    .await
    .map_err(err)?
    .rows_affected();
    Ok(shares + breakers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(origin: &str, events: Vec<(bool, bool)>) -> Want {
        Want {
            origin: origin.to_string(),
            in_flight: 1,
            permits: 0,
            starved: true,
            events,
        }
    }

    #[tokio::test]
    async fn a_stopping_process_gives_back_its_share_and_its_probe() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("o.db").display());
        let db = Db::connect(&url, 4).await.unwrap();
        db.migrate().await.unwrap();
        let rules = Rules {
            budget: 8,
            breaker_failures: 1,
            cooldown_ms: 0,
            lease_ms: 60_000,
            probe_ms: 60_000,
        };
        let origin = "http://a:80";
        // A's failure opens the breaker, already cooled down: A gets the probe.
        let a = sync(&db, "a", rules, &[want(origin, vec![(false, false)])])
            .await
            .unwrap();
        assert!(a[0].probe, "{a:?}");
        let b = sync(&db, "b", rules, &[want(origin, vec![])])
            .await
            .unwrap();
        assert!(!b[0].probe && b[0].permits < 8, "{b:?}");
        release(&db, "a").await.unwrap();
        // B need not wait a minute for A's rights to lapse.
        let b = sync(&db, "b", rules, &[want(origin, vec![])])
            .await
            .unwrap();
        assert!(b[0].probe, "{b:?}");
        assert_eq!(b[0].permits, 8, "{b:?}");
    }

    #[test]
    fn the_budget_goes_to_who_wants_it_evenly() {
        let three: Vec<i64> = (0..3).map(|i| fair_share(8, &[8, 8, 8], i)).collect();
        assert_eq!(three.iter().sum::<i64>(), 8, "{three:?}");
        assert!(three.iter().all(|s| (2..=3).contains(s)), "{three:?}");
        assert_eq!(fair_share(8, &[8, 8], 0), 4);
        assert_eq!(fair_share(8, &[1, 8], 1), 7);
        assert_eq!(fair_share(8, &[0, 0, 8], 2), 8);
        assert_eq!(fair_share(8, &[3], 0), 3);
    }
}
