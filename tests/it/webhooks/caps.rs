//! The attempt cap of a webhook delivery (`MAX_ATTEMPTS`): a receiver that never answers 2xx
//! gets exactly that many requests, and a delivery claimed that often without an outcome
//! recorded (its worker died with it each time) fails without another request.

use std::time::Duration;

use retail_pulse::webhooks::MAX_ATTEMPTS;

use super::{Receiver, Reply, config, unknown_store_job, wait_webhook};
use crate::common::{Backend, TestApp, TestDb, on_both_backends};

/// Retries milliseconds apart, claims every 20 ms: fifty attempts in a second or two.
fn fast(db: &TestDb) -> retail_pulse::config::Config {
    let mut config = config(db);
    config.webhooks.retry_base = Duration::from_millis(5);
    config.webhooks.retry_max = Duration::from_millis(10);
    config.worker.poll_interval = Duration::from_millis(20);
    config
}

async fn a_receiver_that_always_fails_gets_the_capped_number_of_attempts(backend: Backend) {
    let db = TestDb::new(backend).await;
    let receiver = Receiver::start(&[Reply::Status(500); 2 * MAX_ATTEMPTS as usize]).await;
    let app = TestApp::start(fast(&db)).await;
    let id = app
        .submit_ok(&unknown_store_job(&receiver.url("/down")))
        .await;
    let failed = wait_webhook(&app, id, "failed").await;
    assert_eq!(failed["webhook"]["attempts"], MAX_ATTEMPTS, "{failed}");
    let error = failed["webhook"]["last_error"].as_str().unwrap();
    assert!(
        error.contains("HTTP 500")
            && error.contains(&format!("gave up after {MAX_ATTEMPTS} attempts")),
        "{error}"
    );
    // Many retry intervals later, no more requests than attempts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), MAX_ATTEMPTS as usize);
    app.stop().await;
}

async fn a_delivery_claimed_past_the_cap_fails_without_another_request(backend: Backend) {
    let db = TestDb::new(backend).await;
    let receiver = Receiver::start(&[Reply::Status(500)]).await;
    let mut config = fast(&db);
    // The first failure is retried only after a minute: the test moves it on by hand.
    config.webhooks.retry_base = Duration::from_secs(60);
    config.webhooks.retry_max = Duration::from_secs(60);
    let app = TestApp::start(config).await;
    let id = app
        .submit_ok(&unknown_store_job(&receiver.url("/once")))
        .await;
    receiver.wait_for(1, Duration::from_secs(30)).await;
    let pending = wait_webhook(&app, id, "pending").await;
    assert_eq!(pending["webhook"]["attempts"], 1, "{pending}");
    // As if it had been claimed and lost with its worker until the cap: due now, at the cap.
    let handle = retail_pulse::db::Db::connect(&db.url, 1).await.unwrap();
    let moved = sqlx::query(
        "UPDATE webhook_deliveries SET attempts = $1, available_at = 0 WHERE job_id = $2",
    )
    .bind(MAX_ATTEMPTS)
    .bind(id)
    .execute(handle.pool())
    .await
    .unwrap();
    assert_eq!(moved.rows_affected(), 1);
    handle.close().await;
    let failed = wait_webhook(&app, id, "failed").await;
    assert_eq!(failed["webhook"]["attempts"], MAX_ATTEMPTS + 1, "{failed}");
    let error = failed["webhook"]["last_error"].as_str().unwrap();
    assert!(
        error.contains(&format!("gave up after {MAX_ATTEMPTS} attempts")),
        "{error}"
    );
    assert_eq!(
        receiver.received().len(),
        1,
        "no request for the claim past the cap"
    );
    app.stop().await;
}

on_both_backends!(
    a_receiver_that_always_fails_gets_the_capped_number_of_attempts,
    a_delivery_claimed_past_the_cap_fails_without_another_request,
);
