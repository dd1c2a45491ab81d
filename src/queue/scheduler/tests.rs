//! The scheduler's shares and turns, and its cursor, against cached windows.

use super::*;

/// A scheduler over an empty, migrated SQLite file whose cached windows are `windows`
/// (fresh, so `plan` does not read the database).
async fn scheduler_with(windows: &[(&str, Vec<Candidate>)]) -> (tempfile::TempDir, Scheduler) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display());
    let db = Db::connect(&url, 4).await.unwrap();
    db.migrate().await.unwrap();
    let scheduler = Scheduler::new(db);
    {
        let mut state = scheduler.state.lock().unwrap();
        state.windows = windows
            .iter()
            .map(|(t, w)| (t.to_string(), w.clone()))
            .collect();
        state.read_at = Some(Instant::now());
    }
    (dir, scheduler)
}

#[tokio::test]
async fn a_claim_starts_after_the_cursor_and_rewinds_once_when_it_comes_up_short() {
    let (_dir, s) = scheduler_with(&[("t", jobs(&[(1, 10)]))]).await;
    let (plan, _) = s.plan(4, false).await.unwrap();
    assert_eq!(plan[0].after, -1, "nothing claimed yet: from the start");
    let got = HashMap::from([(
        1,
        Got {
            count: 4,
            max_seq: 3,
        },
    )]);
    assert!(!s.served(&plan, &got));
    let (plan, _) = s.plan(4, false).await.unwrap();
    assert_eq!((plan[0].job_id, plan[0].after), (1, 3), "after the cursor");
    // Nothing after the cursor (images put back behind it): asked again from the start.
    assert!(s.served(&plan, &HashMap::new()), "rewound");
    let (plan, _) = s.plan(4, false).await.unwrap();
    assert_eq!((plan[0].job_id, plan[0].after), (1, -1));
    // Short from the start too: nothing claimable now, the job leaves the window.
    assert!(!s.served(&plan, &HashMap::new()));
    let (plan, _) = s.plan(4, false).await.unwrap();
    assert!(plan.is_empty(), "{plan:?}");
}

#[tokio::test]
async fn a_job_that_just_gave_images_counts_as_ongoing_without_a_query() {
    let (_dir, s) = scheduler_with(&[("t", jobs(&[(7, 10)]))]).await;
    let (plan, _) = s.plan(2, false).await.unwrap();
    s.served(
        &plan,
        &HashMap::from([(
            7,
            Got {
                count: 2,
                max_seq: 1,
            },
        )]),
    );
    // Job 7 is in no table: asking the database would say "not ongoing".
    assert!(s.may_be_ongoing(7).await);
    assert!(!s.may_be_ongoing(8).await);
}

fn jobs(list: &[(i64, i64)]) -> Vec<Candidate> {
    list.iter()
        .map(|&(job_id, remaining)| Candidate {
            job_id,
            remaining,
            used: 0,
        })
        .collect()
}

fn takes(plan: &[Take]) -> Vec<(i64, i64)> {
    plan.iter().map(|t| (t.job_id, t.take)).collect()
}

#[test]
fn water_fill_gives_what_one_cannot_use_to_the_others() {
    assert_eq!(water_fill(32, &[5, 5000]), vec![5, 27]);
    assert_eq!(water_fill(10, &[100, 100, 100]), vec![4, 3, 3]);
    assert_eq!(water_fill(2, &[100, 100, 100]), vec![1, 1, 0]);
    assert_eq!(water_fill(10, &[0, 3, 0]), vec![0, 3, 0]);
    assert_eq!(water_fill(0, &[3]), vec![0]);
}

#[test]
fn a_small_tenant_gets_half_of_a_claim_beside_a_tenant_with_many_jobs() {
    let busy: Vec<(i64, i64)> = (1..=400).map(|id| (id, 10)).collect();
    let plan = split(32, &[jobs(&busy), jobs(&[(401, 5)])]);
    let small: i64 = plan
        .iter()
        .filter(|t| t.job_id == 401)
        .map(|t| t.take)
        .sum();
    assert_eq!(small, 5, "the 5-image job is claimed whole");
    assert_eq!(plan.iter().map(|t| t.take).sum::<i64>(), 32);
    // The busy tenant's 27: its next jobs' turns, one after another.
    assert_eq!(takes(&plan)[..3], [(1, 10), (2, 10), (3, 7)]);
}

#[test]
fn turns_go_on_where_the_last_one_stopped_then_round_after_round() {
    let job = |remaining, used| Candidate {
        job_id: 0,
        remaining,
        used,
    };
    assert_eq!(turns(8, &[job(100, 0), job(100, 0)]), [8, 0]);
    // The first job has 5 left of its turn; the second a whole turn; then round two.
    assert_eq!(turns(30, &[job(100, 15), job(100, 0)]), [10, 20]);
    assert_eq!(turns(50, &[job(3, 0), job(4, 0)]), [3, 4], "all there is");
    assert_eq!(turns(5, &[job(0, 0), job(9, 0)]), [0, 5]);
}

#[tokio::test]
async fn a_turn_spans_claims_until_it_is_used_up() {
    let (_dir, s) = scheduler_with(&[("t", jobs(&[(1, 10), (2, 30), (3, 10)]))]).await;
    let claim = async |n: usize| {
        let (plan, _) = s.plan(n, false).await.unwrap();
        let got: HashMap<i64, Got> = plan
            .iter()
            .map(|t| {
                (
                    t.job_id,
                    Got {
                        count: t.take,
                        max_seq: 100,
                    },
                )
            })
            .collect();
        s.served(&plan, &got);
        takes(&plan)
    };
    assert_eq!(claim(8).await, [(1, 8)]);
    assert_eq!(
        claim(8).await,
        [(1, 2), (2, 6)],
        "job 1 finishes its turn first"
    );
    assert_eq!(claim(8).await, [(2, 8)]);
    assert_eq!(
        claim(8).await,
        [(2, 6), (3, 2)],
        "job 2's turn of 20 is used up"
    );
    assert_eq!(claim(8).await, [(3, 8)]);
    assert_eq!(claim(8).await, [(2, 8)], "job 2's second turn");
}

#[tokio::test]
async fn after_a_claim_that_wraps_around_the_tenants_the_next_starts_where_it_stopped() {
    let (_dir, s) = scheduler_with(&[
        ("a", jobs(&[(1, 100)])),
        ("b", jobs(&[(2, 100)])),
        ("c", jobs(&[(3, 100)])),
    ])
    .await;
    s.state.lock().unwrap().tenant_cursor = Some("b".into());
    let (plan, _) = s.plan(2 * MIN_SHARE as usize, false).await.unwrap();
    assert_eq!(takes(&plan), [(3, MIN_SHARE), (1, MIN_SHARE)], "c, then a");
    let got = plan
        .iter()
        .map(|t| {
            (
                t.job_id,
                Got {
                    count: MIN_SHARE,
                    max_seq: MIN_SHARE - 1,
                },
            )
        })
        .collect();
    s.served(&plan, &got);
    let (plan, _) = s.plan(1, false).await.unwrap();
    assert_eq!(takes(&plan), [(2, 1)], "b's turn, not a's again");
}

#[test]
fn within_a_tenant_a_small_job_beside_a_large_one_is_claimed_at_once() {
    let plan = split(32, &[jobs(&[(1, 5000), (2, 5)])]);
    assert_eq!(takes(&plan), vec![(1, 27), (2, 5)]);
}

#[test]
fn a_claim_never_asks_for_more_than_n_or_than_remains() {
    let plan = split(256, &[jobs(&[(1, 3)]), jobs(&[(2, 4), (3, 1)])]);
    assert_eq!(takes(&plan), vec![(1, 3), (2, 4), (3, 1)]);
    let plan = split(
        3,
        &[
            jobs(&[(1, 10)]),
            jobs(&[(2, 10)]),
            jobs(&[(3, 10)]),
            jobs(&[(4, 10)]),
        ],
    );
    assert_eq!(plan.iter().map(|t| t.take).sum::<i64>(), 3);
}

#[test]
fn a_claim_serves_a_few_tenants_each_a_share_rather_than_one_image_to_each_of_many() {
    let many: Vec<Vec<Candidate>> = (1..=500).map(|id| jobs(&[(id, 40)])).collect();
    let plan = split(32, &many);
    assert_eq!(takes(&plan), [(1, 8), (2, 8), (3, 8), (4, 8)]);
    // A claim smaller than a share goes to one tenant.
    assert_eq!(takes(&split(3, &many)), [(1, 3)]);
    // Tenants that cannot use their share bring in the next ones.
    let small: Vec<Vec<Candidate>> = (1..=10).map(|id| jobs(&[(id, 2)])).collect();
    assert_eq!(split(16, &small).iter().map(|t| t.take).sum::<i64>(), 16);
    assert_eq!(takers(16, [0, 0, 5, 100, 100].into_iter()), 4);
    assert_eq!(takers(16, [1, 1].into_iter()), 2);
}

#[tokio::test]
async fn claims_smaller_than_the_tenants_serve_every_tenant_in_turn() {
    let windows: Vec<(String, Vec<Candidate>)> = (0..50)
        .map(|t| (format!("t{t:02}"), jobs(&[(t + 1, 1000)])))
        .collect();
    let named: Vec<(&str, Vec<Candidate>)> = windows
        .iter()
        .map(|(t, w)| (t.as_str(), w.clone()))
        .collect();
    let (_dir, s) = scheduler_with(&named).await;
    let mut served = std::collections::BTreeMap::new();
    for _ in 0..25 {
        // The cached windows stay fresh however slow the machine (no read of the database).
        s.state.lock().unwrap().read_at = Some(Instant::now());
        let (plan, _) = s.plan(16, false).await.unwrap();
        let got = plan
            .iter()
            .map(|t| {
                let g = Got {
                    count: t.take,
                    max_seq: t.after + t.take,
                };
                (t.job_id, g)
            })
            .collect();
        s.served(&plan, &got);
        for t in &plan {
            *served.entry(t.job_id).or_insert(0) += t.take;
        }
    }
    // 25 claims of 16 at 8 a tenant: each of the 50 tenants served once, 8 images.
    assert_eq!(served.len(), 50, "{served:?}");
    assert!(served.values().all(|&n| n == 8), "{served:?}");
}

#[tokio::test]
async fn announcements_of_new_work_are_read_at_most_once_per_debounce_interval() {
    let (_dir, s) = scheduler_with(&[("a", jobs(&[(1, 100)]))]).await;
    let read_at = || s.state.lock().unwrap().read_at.unwrap();
    // Just read: a notice waits out the rest of the interval, and plans meanwhile use the
    // cache. (Checked only while the interval lasts: a slow machine may pass its end.)
    let at = read_at();
    let wait = s.forget();
    assert!(
        wait > Duration::ZERO && wait <= REREAD_AFTER_NOTICE,
        "{wait:?}"
    );
    for _ in 0..5 {
        s.forget();
        let (_, cached) = s.plan(4, false).await.unwrap();
        if at.elapsed() < REREAD_AFTER_NOTICE {
            assert!(
                cached,
                "a burst of notices costs no read before the interval ends"
            );
        }
    }
    tokio::time::sleep(wait + Duration::from_millis(5)).await;
    let (_, cached) = s.plan(4, false).await.unwrap();
    assert!(
        !cached,
        "the noticed work is read once the interval has passed"
    );
    let at = read_at();
    let (_, cached) = s.plan(4, false).await.unwrap();
    if at.elapsed() < WINDOW_TTL {
        assert!(cached, "and only once");
    }
    // A notice long after the last read is read by the very next plan.
    s.state.lock().unwrap().read_at = Some(Instant::now() - REREAD_AFTER_NOTICE * 2);
    assert_eq!(s.forget(), Duration::ZERO);
    let (_, cached) = s.plan(4, false).await.unwrap();
    assert!(!cached);
}
