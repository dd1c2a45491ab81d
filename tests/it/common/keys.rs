//! API keys for tests, made the way an operator makes them: the real binary's
//! `retail-pulse keys …` against the test's database.

use super::binary::{Run, run};

/// Runs `retail-pulse keys ARGS` with `DATABASE_URL=db_url` to its end.
pub async fn keys(db_url: &str, args: &[&str]) -> Run {
    let mut argv = vec!["keys"];
    argv.extend_from_slice(args);
    run(&argv, &[("DATABASE_URL", db_url)]).await
}

/// `keys create --name NAME EXTRA…`, asserting success; returns the key it printed.
pub async fn create_key(db_url: &str, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["create", "--name", name];
    args.extend_from_slice(extra);
    let run = keys(db_url, &args).await;
    assert_eq!(run.code, 0, "keys create {name}: {run}");
    run.stdout.trim().to_string()
}

/// `keys revoke NAME`, asserting success.
pub async fn revoke_key(db_url: &str, name: &str) {
    let run = keys(db_url, &["revoke", name]).await;
    assert_eq!(run.code, 0, "keys revoke {name}: {run}");
}
