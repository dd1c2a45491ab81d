//! The command-line client (`retail-pulse submit | status | results`) as a user runs it: the
//! real binary against the real app started in this process (SQLite), checked by exit code and
//! output.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common;
use crate::common::{ImageServer, STORE_A, STORE_B, TestApp, TestDb, payload, test_config};

const BINARY: &str = env!("CARGO_BIN_EXE_retail-pulse");

/// What one run of the binary left behind.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `retail-pulse ARGS` to its end (killed after a minute, so a hang fails the test
/// instead of stalling the suite). Off the async runtime: the app under test runs on it.
async fn run(args: &[&str]) -> Run {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(BINARY)
            .args(&args)
            .env_remove("RP_SERVER")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start retail-pulse");
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().expect("try_wait").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("retail-pulse {args:?} still running after 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("output");
        Run {
            code: out.status.code().expect("exited, not killed by a signal"),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .expect("runner thread")
}

/// A job file in a directory that lives as long as the returned guard.
fn job_file(body: &Value) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("job.json");
    std::fs::write(&path, serde_json::to_vec_pretty(body).unwrap()).expect("write job file");
    (dir, path)
}

async fn setup() -> (TestDb, TestApp, ImageServer) {
    let db = TestDb::new(common::Backend::Sqlite).await;
    let images = ImageServer::start().await;
    let app = TestApp::start(test_config(&db)).await;
    (db, app, images)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_exits_0_when_the_job_completes() {
    let (_db, app, images) = setup().await;
    let (_dir, file) = job_file(&payload(&[
        (
            STORE_A,
            vec![
                images.image(30, 20, "png"),
                images.url("/slow/300/40x10.png"),
            ],
        ),
        (STORE_B, vec![images.image(5, 5, "jpg")]),
    ]));
    let out = run(&[
        "submit",
        file.to_str().unwrap(),
        "--wait",
        "--server",
        &app.base,
    ])
    .await;
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout
            .contains("completed: 3 images, 3 succeeded, 0 failed"),
        "{out}"
    );
    // Not a terminal: no progress line, no control characters, no logs.
    assert!(
        !out.stdout.contains('\r') && !out.stdout.contains("ETA"),
        "{out}"
    );
    assert!(!out.stdout.contains("INFO"), "{out}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_exits_1_and_names_the_failed_store() {
    let (_db, app, images) = setup().await;
    let (_dir, file) = job_file(&payload(&[
        (STORE_A, vec![images.image(10, 10, "png")]),
        ("S_NOT_A_STORE", vec![images.image(10, 10, "png")]),
    ]));
    let out = run(&[
        "submit",
        file.to_str().unwrap(),
        "--wait",
        "--server",
        &app.base,
    ])
    .await;
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stdout.contains("failed: 2 images"), "{out}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("S_NOT_A_STORE"))
        .unwrap_or_else(|| panic!("no line for the store: {out}"));
    assert!(line.contains("unknown store_id"), "{out}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_json_prints_the_final_job_as_one_document() {
    let (_db, app, images) = setup().await;
    let (_dir, file) = job_file(&payload(&[(
        STORE_A,
        vec![images.image(10, 10, "png"), images.image(20, 10, "gif")],
    )]));
    let out = run(&[
        "submit",
        file.to_str().unwrap(),
        "--wait",
        "--json",
        "--server",
        &app.base,
    ])
    .await;
    assert_eq!(out.code, 0, "{out}");
    let job: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {out}"));
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["images"]["total"], 2, "{job}");
    assert_eq!(job["images"]["succeeded"], 2, "{job}");
    // The document is the server's own /api/jobs/{id}.
    let (code, server) = app.get(&format!("/api/jobs/{}", job["job_id"])).await;
    assert_eq!(code, 200);
    assert_eq!(job, server);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_without_wait_prints_the_job_id() {
    let (_db, app, images) = setup().await;
    let (_dir, file) = job_file(&payload(&[(STORE_A, vec![images.image(10, 10, "png")])]));
    let path = file.to_str().unwrap();
    let piped = run(&["submit", path, "--server", &app.base]).await;
    assert_eq!(piped.code, 0, "{piped}");
    let id: i64 = piped
        .stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("piped output is the bare id: {piped}"));
    let json = run(&["submit", path, "--json", "--server", &app.base]).await;
    assert_eq!(json.code, 0, "{json}");
    let body: Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(body, serde_json::json!({ "job_id": id + 1 }));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_refused_by_the_server_exits_2_with_its_message() {
    let (_db, app, images) = setup().await;
    let mut body = payload(&[(STORE_A, vec![images.image(10, 10, "png")])]);
    body["count"] = 5.into();
    let (_dir, file) = job_file(&body);
    let out = run(&[
        "submit",
        file.to_str().unwrap(),
        "--wait",
        "--server",
        &app.base,
    ])
    .await;
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("HTTP 400"), "{out}");
    assert!(
        out.stderr.contains("count: is 5 but visits has 1 entries"),
        "{out}"
    );
    assert!(out.stdout.is_empty(), "{out}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_to_a_server_that_is_not_listening_exits_2() {
    // A port that was free a moment ago and is closed now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_dir, file) = job_file(&payload(&[(STORE_A, vec!["http://x.test/a.png".into()])]));
    let server = format!("http://127.0.0.1:{port}");
    let out = run(&[
        "submit",
        file.to_str().unwrap(),
        "--wait",
        "--server",
        &server,
    ])
    .await;
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("cannot reach the server"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_of_an_unreadable_file_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.json");
    let out = run(&["submit", missing.to_str().unwrap()]).await;
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("cannot read"), "{out}");
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{\"count\": 1, \"visits\": [").unwrap();
    let out = run(&["submit", broken.to_str().unwrap()]).await;
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("is not JSON"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_one_job_and_exits_2_for_an_unknown_one() {
    let (_db, app, images) = setup().await;
    let job_id = app
        .submit_ok(&payload(&[(STORE_A, vec![images.image(10, 10, "png")])]))
        .await;
    app.wait_finished(job_id, Duration::from_secs(30)).await;
    let id = job_id.to_string();

    let json = run(&["status", &id, "--json", "--server", &app.base]).await;
    assert_eq!(json.code, 0, "{json}");
    let body: Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(body["job_id"], job_id);
    assert_eq!(body["status"], "completed");

    let text = run(&["status", &id, "--server", &app.base]).await;
    assert_eq!(text.code, 0, "{text}");
    assert!(
        text.stdout
            .starts_with(&format!("job {job_id} completed: 1 images")),
        "{text}"
    );
    assert!(text.stdout.contains("finished"), "{text}");

    let unknown = run(&["status", "999999", "--server", &app.base]).await;
    assert_eq!(unknown.code, 2, "{unknown}");
    assert!(unknown.stderr.contains("no job 999999"), "{unknown}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_prints_json_lines_or_the_csv_and_exits_2_for_an_unknown_job() {
    let (_db, app, images) = setup().await;
    let job_id = app
        .submit_ok(&payload(&[
            (
                STORE_A,
                vec![images.image(10, 20, "png"), images.image(3, 4, "gif")],
            ),
            (STORE_B, vec![images.url("/status/404")]),
        ]))
        .await;
    app.wait_finished(job_id, Duration::from_secs(30)).await;
    let id = job_id.to_string();
    let api = app.all_images(job_id, 1000).await;

    let lines = run(&["results", &id, "--server", &app.base]).await;
    assert_eq!(lines.code, 0, "{lines}");
    let printed: Vec<Value> = lines
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(printed, api);

    let csv = run(&["results", &id, "--csv", "--server", &app.base]).await;
    assert_eq!(csv.code, 0, "{csv}");
    let served = app
        .client
        .get(format!("{}/api/jobs/{id}/results.csv", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(csv.stdout, served);
    assert_eq!(csv.stdout.lines().count(), 4, "{csv}");

    for args in [
        vec!["results", "999999"],
        vec!["results", "999999", "--csv"],
    ] {
        let mut args = args;
        args.extend(["--server", &app.base]);
        let unknown = run(&args).await;
        assert_eq!(unknown.code, 2, "{unknown}");
        assert!(unknown.stderr.contains("no job 999999"), "{unknown}");
        assert!(unknown.stdout.is_empty(), "{unknown}");
    }
    app.stop().await;
}

/// Every subcommand that opens the database takes the same flags and honours them, `keys` as
/// much as `serve`: against a server that accepts connections and never answers, each gives
/// up after `--db-acquire-timeout-secs` (0.3 s here), not after the default 1.5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_database_subcommand_honours_the_database_flags() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("postgres://u@{}/x", silent.local_addr().unwrap());
    let flags = [
        "--database-url",
        url.as_str(),
        "--db-acquire-timeout-secs",
        "0.3",
    ];
    for command in [
        &["keys", "list"][..],
        &["keys", "revoke", "someone"],
        &["keys", "create", "--name", "someone"],
        &["migrate"],
        &["prune", "--older-than", "30d"],
    ] {
        let args: Vec<&str> = command.iter().chain(flags.iter()).copied().collect();
        let started = Instant::now();
        let out = run(&args).await;
        let took = started.elapsed();
        assert_ne!(out.code, 0, "{command:?}: {out}");
        assert!(
            out.stderr.contains("database unavailable"),
            "{command:?}: {out}"
        );
        assert!(
            took < Duration::from_millis(1200),
            "{command:?} took {took:?}: it ignored --db-acquire-timeout-secs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_comes_from_rp_server_when_not_given() {
    let (_db, app, images) = setup().await;
    let job_id = app
        .submit_ok(&payload(&[(STORE_A, vec![images.image(10, 10, "png")])]))
        .await;
    let base = app.base.clone();
    let id = job_id.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BINARY)
            .args(["status", &id, "--json"])
            .env("RP_SERVER", &base)
            .output()
            .expect("run")
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    app.stop().await;
}

// --- Containers: Docker cannot run here, so the files are checked against the binary. ---

mod containers {
    use std::collections::BTreeSet;

    use clap::{CommandFactory, Parser};
    use retail_pulse::cli::{Cli, Command as Sub};
    use serde_json::Value;

    use super::*;

    /// Variables the binary reads that are not flags (logging).
    const NON_FLAG_ENV: [&str; 2] = ["RUST_LOG", "RP_LOG_FORMAT"];
    /// The services built from this repository's Dockerfile (the rest are stock images).
    const OURS: [&str; 3] = ["migrate", "api", "worker"];

    fn repo_file(name: &str) -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/").to_string() + name;
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// docker-compose.yml with its `<<:` merge keys applied, as Compose reads it.
    fn compose() -> Value {
        let mut yaml: serde_norway::Value =
            serde_norway::from_str(&repo_file("docker-compose.yml")).expect("compose parses");
        yaml.apply_merge().expect("merge keys apply");
        serde_json::to_value(yaml).expect("compose as JSON")
    }

    /// A Compose string-or-list field as a list of words.
    fn words(value: &Value) -> Vec<String> {
        match value {
            Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
            Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().expect("string item").to_string())
                .collect(),
            other => panic!("expected a string or a list, not {other}"),
        }
    }

    /// A Compose `environment` (map, or list of `KEY=value`) as pairs.
    fn environment(service: &Value) -> Vec<(String, String)> {
        match &service["environment"] {
            Value::Null => Vec::new(),
            Value::Object(map) => map
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect(),
            Value::Array(items) => items
                .iter()
                .map(|i| {
                    let (k, v) = i.as_str().unwrap().split_once('=').expect("KEY=value");
                    (k.to_string(), v.to_string())
                })
                .collect(),
            other => panic!("environment: {other}"),
        }
    }

    /// The long flag that subcommand `sub` reads from environment variable `name`.
    fn flag_for_env(sub: &str, name: &str) -> Option<String> {
        let cli = Cli::command();
        let sub = cli.find_subcommand(sub)?;
        sub.get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == name))
            .map(|a| a.get_long().expect("env args have a long flag").to_string())
    }

    /// Every environment variable any command of the binary reads.
    fn all_env() -> BTreeSet<String> {
        fn walk(cmd: &clap::Command, out: &mut BTreeSet<String>) {
            for arg in cmd.get_arguments() {
                if let Some(env) = arg.get_env() {
                    out.insert(env.to_string_lossy().into_owned());
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, out);
            }
        }
        let mut out: BTreeSet<String> = NON_FLAG_ENV.iter().map(|s| s.to_string()).collect();
        walk(&Cli::command(), &mut out);
        out
    }

    /// Parses `retail-pulse ARGS` as the binary would, and insists on a service command.
    fn parse_service_command(args: &[String], what: &str) -> Cli {
        let argv = std::iter::once("retail-pulse".to_string()).chain(args.iter().cloned());
        let cli = Cli::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("{what}: `{}` does not parse: {e}", args.join(" ")));
        assert!(
            matches!(
                cli.command,
                Some(Sub::Serve(_) | Sub::Worker(_) | Sub::Migrate(_))
            ),
            "{what}: `{}` is not serve, worker or migrate",
            args.join(" ")
        );
        cli
    }

    #[test]
    fn compose_services_run_real_subcommands_with_variables_the_binary_reads() {
        let compose = compose();
        let services = compose["services"].as_object().expect("services");
        let known = all_env();
        for name in OURS {
            let service = &services[name];
            assert_eq!(service["image"], "retail-pulse", "{name}: our image");
            assert_eq!(service["build"], ".", "{name}: built from the Dockerfile");
            let command = words(&service["command"]);
            let sub = command.first().expect("a command").clone();
            assert!(
                Cli::command().find_subcommand(&sub).is_some(),
                "{name}: `{sub}` is not a subcommand of retail-pulse"
            );
            // Each variable is read by the binary, and by this very subcommand: the value
            // must also parse, as the flag it stands for.
            let mut argv = command.clone();
            for (key, value) in environment(service) {
                assert!(known.contains(&key), "{name}: {key} is read by no command");
                if NON_FLAG_ENV.contains(&key.as_str()) {
                    continue;
                }
                let flag = flag_for_env(&sub, &key)
                    .unwrap_or_else(|| panic!("{name}: `{sub}` does not read {key}"));
                argv.push(format!("--{flag}={value}"));
            }
            parse_service_command(&argv, name);
            for dependency in service["depends_on"].as_object().into_iter().flatten() {
                assert!(
                    services.contains_key(dependency.0),
                    "{name} depends on a missing service {}",
                    dependency.0
                );
            }
        }
        assert!(
            services["postgres"]["image"]
                .as_str()
                .unwrap()
                .starts_with("postgres:"),
            "postgres service"
        );
        assert!(
            words(&services["postgres"]["healthcheck"]["test"])
                .join(" ")
                .contains("pg_isready")
        );
        assert_eq!(
            words(&services["api"]["command"]),
            ["serve", "--no-workers"]
        );
        assert_eq!(words(&services["worker"]["command"]), ["worker"]);
        // A scalable service cannot publish a fixed host port or take a fixed name.
        assert!(services["worker"]["ports"].is_null());
        assert!(services["worker"]["container_name"].is_null());
    }

    #[test]
    fn compose_publishes_the_port_the_api_binds() {
        let compose = compose();
        let api = &compose["services"]["api"];
        let bind = environment(api)
            .into_iter()
            .find(|(k, _)| k == "RP_BIND")
            .map(|(_, v)| v)
            .expect("api sets RP_BIND");
        let port = bind.rsplit(':').next().unwrap();
        let published = words(&api["ports"]);
        assert!(
            published.iter().any(|p| p.ends_with(&format!(":{port}"))),
            "api binds {bind} but publishes {published:?}"
        );
        let check = words(&api["healthcheck"]["test"]).join(" ");
        assert!(check.contains(&format!("/{port} ")), "{check}");
        assert!(check.contains("/readyz"), "{check}");
    }

    /// The healthcheck is a bash one-liner (the image has no curl): run it, with the test
    /// app's port, to prove it passes on a ready server and fails where nothing listens.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compose_api_healthcheck_passes_only_on_a_ready_server() {
        let test = words(&compose()["services"]["api"]["healthcheck"]["test"]);
        assert_eq!(test[..3], ["CMD", "bash", "-c"], "{test:?}");
        let script = test[3].clone();
        let (_db, app, _images) = setup().await;
        let port = app.base.rsplit(':').next().unwrap().to_string();
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
            .to_string();
        let outcome = |port: String| {
            let script = script.replace("/8080", &format!("/{port}"));
            tokio::task::spawn_blocking(move || {
                Command::new("bash")
                    .args(["-c", &script])
                    .stderr(Stdio::null())
                    .status()
                    .expect("bash")
                    .success()
            })
        };
        assert!(
            outcome(port).await.unwrap(),
            "healthcheck fails on a ready server"
        );
        assert!(
            !outcome(closed).await.unwrap(),
            "healthcheck passes with no server"
        );
        app.stop().await;
    }

    /// `ENTRYPOINT`/`CMD` in exec form: a JSON array after the instruction.
    fn instruction(dockerfile: &str, name: &str) -> Vec<String> {
        let line = dockerfile
            .lines()
            .rfind(|l| l.trim_start().starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("Dockerfile has no {name}"));
        let json = line.trim_start()[name.len()..].trim();
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{name} in exec form: {e}"))
    }

    /// The configuration reference's table (docs/CONFIGURATION.md, its "Configuration"
    /// section) names every variable the binary reads, and nothing it does not: the reference
    /// stays true when a flag is added or renamed. The README's short table of the settings
    /// people change most is a selection and is not checked here.
    #[test]
    fn configuration_reference_lists_exactly_the_variables_the_binary_reads() {
        let reference = repo_file("docs/CONFIGURATION.md");
        let start = reference
            .find("## Configuration")
            .expect("a Configuration section");
        let end = reference[start..]
            .find("\n## ")
            .map_or(reference.len(), |e| start + e);
        let table: BTreeSet<String> = reference[start..end]
            .lines()
            .filter(|l| l.starts_with('|'))
            .filter_map(|l| l.split('|').nth(2))
            .flat_map(|cell| {
                cell.split('`')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .filter(|name| name.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
            .collect();
        let mut expected = all_env();
        expected.remove("RP_SERVER"); // the client's, documented with the client
        assert_eq!(
            table, expected,
            "docs/CONFIGURATION.md table vs the binary's variables"
        );
    }

    /// The default each row of docs/CONFIGURATION.md states is the one the binary has: a
    /// single value in backticks is compared with the flag's default (numbers as numbers),
    /// `empty` with an empty default, and a word (none, off, …) stands for a flag without one.
    /// One source for each default, the area's `Default`; this keeps the reference on it.
    #[test]
    fn configuration_reference_states_the_defaults_the_binary_has() {
        let reference = repo_file("docs/CONFIGURATION.md");
        let start = reference
            .find("## Configuration")
            .expect("a Configuration section");
        let end = reference[start..]
            .find("\n## ")
            .map_or(reference.len(), |e| start + e);
        let cli = Cli::command();
        let default_of = |env: &str| -> Option<Option<String>> {
            fn find(cmd: &clap::Command, env: &str) -> Option<Option<String>> {
                for arg in cmd.get_arguments() {
                    if arg.get_env().is_some_and(|e| e == env) {
                        return Some(
                            arg.get_default_values()
                                .first()
                                .map(|v| v.to_string_lossy().into_owned()),
                        );
                    }
                }
                cmd.get_subcommands().find_map(|sub| find(sub, env))
            }
            find(&cli, env)
        };
        let same = |a: &str, b: &str| match (a.parse::<f64>(), b.parse::<f64>()) {
            (Ok(x), Ok(y)) => x == y,
            _ => a == b,
        };
        let mut checked = 0;
        for line in reference[start..end].lines().filter(|l| l.starts_with('|')) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let (Some(env), Some(stated)) = (cells.get(2), cells.get(3)) else {
                continue;
            };
            let env = env.trim_matches('`');
            if NON_FLAG_ENV.contains(&env) || !env.starts_with("RP_") && env != "DATABASE_URL" {
                continue;
            }
            let binary = default_of(env).unwrap_or_else(|| panic!("{env}: read by no command"));
            let single = stated
                .strip_prefix('`')
                .and_then(|v| v.strip_suffix('`'))
                .filter(|v| !v.contains('`'));
            match (single, binary.as_deref()) {
                (Some(value), Some(default)) => assert!(
                    same(value, default),
                    "{env}: the reference says `{value}`, the binary's default is `{default}`"
                ),
                (Some(value), None) => {
                    panic!("{env}: the reference says `{value}`, the flag has no default")
                }
                (None, Some("")) => assert_eq!(*stated, "empty", "{env}"),
                (None, Some(default)) => panic!(
                    "{env}: the binary's default is `{default}`, the reference says {stated:?}"
                ),
                (None, None) => {}
            }
            checked += 1;
        }
        assert!(
            checked > 40,
            "only {checked} rows read: is the table still there?"
        );
    }

    #[test]
    fn dockerfile_runs_the_binary_with_a_real_subcommand() {
        let dockerfile = repo_file("Dockerfile");
        let entrypoint = instruction(&dockerfile, "ENTRYPOINT");
        assert_eq!(entrypoint, [Cli::command().get_name()], "the binary");
        let cmd = instruction(&dockerfile, "CMD");
        let cli = parse_service_command(&cmd, "Dockerfile CMD");
        // The port the image documents is the one `serve` binds by default.
        if let Some(Sub::Serve(args)) = cli.command {
            let expose = format!("EXPOSE {}", args.bind.port());
            assert!(
                dockerfile.lines().any(|l| l.trim() == expose),
                "Dockerfile lacks `{expose}`"
            );
        }
        assert!(
            dockerfile.contains("--release --locked"),
            "reproducible build"
        );
        assert!(
            dockerfile.lines().any(|l| l.starts_with("USER ")),
            "runs as a non-root user"
        );
    }
}
