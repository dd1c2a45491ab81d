//! The service across a real network: each part on its own host (a network namespace), so a
//! link can be cut without closing any connection, and a clock can be set apart.
//!
//! The hosts: a PostgreSQL server this test starts itself (`initdb` into a temporary
//! directory), the API (`serve --no-workers`), worker processes, and an image host's address
//! (the image servers run in this test process, in the root namespace). The namespaces reach
//! each other through the root namespace, which routes 198.18.0.0/15 between their links. A
//! link is cut with blackhole routes: packets vanish, nothing is refused or closed, exactly
//! like a partition.
//!
//! Needs root (see [`common::netns`]): elsewhere each test prints SKIPPED, and with
//! `RP_REQUIRE_NETNS=1` (CI) it fails instead. The scenarios take turns ([`SERIAL`]), since
//! their timings matter.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::Row;

use crate::common;
use crate::common::binary::BINARY;
use crate::common::images::raw_server_on;
use crate::common::netns::NetNs;
use crate::common::{ImageServer, STORE_A, payload};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every namespace routes this range through the root namespace.
const RANGE: &str = "198.18.0.0/15";
const API_PORT: u16 = 8080;
const METRICS_PORT: u16 = 9100;

/// Runs `cmd`, failing with its output.
fn must(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) {
    must(Command::new("ip").args(args));
}

/// A child process whose output goes to a log file; killed on drop, with its process group:
/// `faketime` runs the worker as a child of its own, which killing `faketime` alone left
/// running after the test (seen: two workers still polling an hour later).
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    /// For PostgreSQL (started through runuser): its postmaster.pid.
    pid_file: Option<PathBuf>,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.to_string(),
            child,
            log,
            pid_file: None,
        }
    }

    fn lines(&self) -> Vec<String> {
        std::fs::File::open(&self.log)
            .map(|f| BufReader::new(f).lines().map_while(Result::ok).collect())
            .unwrap_or_default()
    }

    /// The last lines of its log, for a failing test's message.
    fn tail(&self, n: usize) -> String {
        let lines = self.lines();
        let from = lines.len().saturating_sub(n);
        format!(
            "--- {} (last {} lines of {})\n{}\n",
            self.name,
            lines.len() - from,
            self.log.display(),
            lines[from..].join("\n")
        )
    }

    /// SIGTERM, then waits up to `within` for it to exit.
    fn terminate(&mut self, within: Duration) {
        // SAFETY: kill has no memory preconditions; the group is our child's (see `spawn`).
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGTERM) };
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(pid) = self
            .pid_file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
        {
            // SAFETY: as above; the postmaster this test started.
            unsafe { libc::kill(pid, libc::SIGQUIT) };
        }
        // SAFETY: as above; the child's own process group.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a worker process is started with, beside the cluster's defaults.
#[derive(Clone, Default)]
struct WorkerSpec {
    /// `faketime` offset, e.g. `+5m`.
    clock: Option<&'static str>,
    env: Vec<(&'static str, String)>,
}

/// The hosts of one scenario. Dropping it stops every process and removes the namespaces;
/// when the test is failing, it prints the end of every process's log first.
struct Cluster {
    dir: tempfile::TempDir,
    pg: NetNs,
    api_ns: NetNs,
    worker_ns: Vec<NetNs>,
    /// Only an address: the image servers listen in the root namespace on every address,
    /// and the job's URLs name this one.
    img: NetNs,
    postgres: Option<Proc>,
    api: Option<Proc>,
    workers: Vec<Proc>,
    db_url: String,
    http: reqwest::Client,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut report = String::new();
            for p in self
                .api
                .iter()
                .chain(self.workers.iter())
                .chain(self.postgres.iter())
            {
                report.push_str(&p.tail(40));
            }
            eprintln!("{report}");
        }
        self.workers.clear();
        self.api = None;
        self.postgres = None;
    }
}

fn postgres_bin(name: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found
        .pop()
        .unwrap_or_else(|| panic!("no {name} under /usr/lib/postgresql"))
}

impl Cluster {
    /// The namespaces, PostgreSQL and the API; `None` (after SKIPPED) without namespaces.
    async fn start(test: &str, workers: usize) -> Option<Cluster> {
        let pg = NetNs::for_test(test)?;
        let make = || NetNs::create().expect("another namespace");
        let api_ns = make();
        let worker_ns: Vec<NetNs> = (0..workers).map(|_| make()).collect();
        let img = make();
        // The root namespace routes between the links.
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("enable IPv4 forwarding");
        for ns in [&pg, &api_ns, &img].into_iter().chain(worker_ns.iter()) {
            ip(&[
                "-n",
                &ns.name,
                "route",
                "add",
                RANGE,
                "via",
                &ns.host_addr.to_string(),
            ]);
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cluster = Cluster {
            db_url: String::new(),
            dir,
            pg,
            api_ns,
            worker_ns,
            img,
            postgres: None,
            api: None,
            workers: Vec::new(),
            http: common::client(),
        };
        cluster.start_postgres().await;
        cluster.start_api().await;
        Some(cluster)
    }

    async fn start_postgres(&mut self) {
        let data = self.dir.path().join("pgdata");
        // initdb refuses root: the data directory belongs to `postgres`.
        std::fs::create_dir(&data).unwrap();
        must(Command::new("chmod").arg("755").arg(self.dir.path()));
        must(Command::new("chown").arg("postgres:").arg(&data));
        must(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(postgres_bin("initdb"))
                .args([
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                    "-E",
                    "UTF8",
                    "-D",
                ])
                .arg(&data),
        );
        let hba = data.join("pg_hba.conf");
        let mut rules = std::fs::read_to_string(&hba).unwrap();
        rules.push_str(&format!("host all all {RANGE} trust\n"));
        std::fs::write(&hba, rules).unwrap();
        let addr = self.pg.ns_addr.to_string();
        let mut cmd = self.pg.command("runuser");
        cmd.args(["-u", "postgres", "--"])
            .arg(postgres_bin("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-c", &format!("listen_addresses={addr}")])
            .args(["-c", "port=5432"])
            .args(["-c", &format!("unix_socket_directories={}", data.display())])
            .args(["-c", "fsync=off", "-c", "max_connections=300"]);
        let mut proc = Proc::spawn("postgres", cmd, self.dir.path());
        proc.pid_file = Some(data.join("postmaster.pid"));
        self.postgres = Some(proc);
        let admin = format!("postgres://postgres@{addr}:5432/postgres");
        let deadline = Instant::now() + Duration::from_secs(30);
        let pool = loop {
            match sqlx::postgres::PgPool::connect(&admin).await {
                Ok(pool) => break pool,
                Err(e) if Instant::now() > deadline => panic!("PostgreSQL did not start: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        sqlx::query("CREATE DATABASE rp")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        self.db_url = format!("postgres://postgres@{addr}:5432/rp");
        let migrated = common::binary::run(&["migrate"], &[("DATABASE_URL", &self.db_url)]).await;
        assert_eq!(migrated.code, 0, "migrate: {migrated}");
    }

    fn service_env(&self, cmd: &mut Command) {
        cmd.env("DATABASE_URL", &self.db_url)
            .env("RP_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env_remove("RP_SERVER")
            .env_remove("RP_API_KEY");
    }

    async fn start_api(&mut self) {
        let mut cmd = self.api_ns.command(BINARY);
        cmd.args(["serve", "--no-workers"]);
        self.service_env(&mut cmd);
        cmd.env("RP_BIND", format!("{}:{API_PORT}", self.api_ns.ns_addr))
            .env("RP_AUTH", "off");
        self.api = Some(Proc::spawn("api", cmd, self.dir.path()));
        let url = format!("{}/healthz", self.api_base());
        self.wait_up(&url, "the API").await;
    }

    fn api_base(&self) -> String {
        format!("http://{}:{API_PORT}", self.api_ns.ns_addr)
    }

    fn metrics_url(&self, worker: usize) -> String {
        format!(
            "http://{}:{METRICS_PORT}/metrics",
            self.worker_ns[worker].ns_addr
        )
    }

    async fn wait_up(&self, url: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(res) = self.http.get(url).send().await
                && res.status().is_success()
            {
                return;
            }
            assert!(Instant::now() < deadline, "{what} did not come up at {url}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts worker `i` in its namespace; returns its worker id.
    async fn start_worker(&mut self, i: usize, spec: &WorkerSpec) -> String {
        let ns = &self.worker_ns[i];
        let mut cmd = match spec.clock {
            Some(offset) => {
                let mut cmd = ns.command("faketime");
                cmd.args(["-f", offset, BINARY]);
                // Only the wall clock is off, as on a host with a wrong date.
                cmd.env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
                cmd
            }
            None => ns.command(BINARY),
        };
        cmd.arg("worker");
        self.service_env(&mut cmd);
        cmd.env("RP_METRICS_BIND", format!("{}:{METRICS_PORT}", ns.ns_addr))
            .env("RP_ALLOW_PRIVATE_NETWORKS", "true")
            .env("RP_WORKERS", "4")
            .env("RP_POLL_INTERVAL_MS", "200")
            .env("RP_RETRY_BASE_MS", "200")
            .env("RP_SHUTDOWN_GRACE_SECS", "1")
            .env("RP_DB_OPERATION_TIMEOUT_SECS", "2")
            .env("RP_DB_KEEPALIVE_SECS", "2")
            .env("RP_FETCH_BREAKER_COOLDOWN_SECS", "2");
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        let name = format!("worker{i}");
        let proc = Proc::spawn(&name, cmd, self.dir.path());
        if self.workers.len() <= i {
            self.workers.push(proc);
        } else {
            self.workers[i] = proc;
        }
        let url = self.metrics_url(i).replace("/metrics", "/healthz");
        self.wait_up(&url, &name).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let id = self.workers[i]
                .lines()
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| v["message"] == "worker pool started")
                .and_then(|v| v["worker.id"].as_str().map(str::to_string));
            if let Some(id) = id {
                return id;
            }
            assert!(Instant::now() < deadline, "{name} logged no worker id");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn submit(&self, urls: Vec<String>) -> i64 {
        let res = self
            .http
            .post(format!("{}/api/submit/", self.api_base()))
            .header("content-type", "application/json")
            .body(payload(&[(STORE_A, urls)]).to_string())
            .send()
            .await
            .expect("submit");
        assert_eq!(res.status().as_u16(), 201);
        let body: Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
        body["job_id"].as_i64().unwrap()
    }

    async fn job(&self, id: i64) -> Value {
        let text = self
            .http
            .get(format!("{}/api/jobs/{id}", self.api_base()))
            .send()
            .await
            .expect("job")
            .text()
            .await
            .expect("job body");
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("job {id}: not JSON: {text}"))
    }

    async fn wait_finished(&self, id: i64, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let job = self.job(id).await;
            if job["status"] != "ongoing" {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} not finished within {within:?}: {job}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn db(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPool::connect(&self.db_url)
            .await
            .expect("test's own connection")
    }

    /// A counter or gauge of worker `i`'s metrics (0 when absent).
    async fn metric(&self, worker: usize, name: &str) -> f64 {
        let text = self
            .http
            .get(self.metrics_url(worker))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Cuts every link of `ns` (packets dropped, connections left open).
    fn cut_off(&self, ns: &NetNs) {
        ip(&["-n", &ns.name, "route", "replace", "blackhole", RANGE]);
        let peer = format!("{}/32", ns.ns_addr);
        ip(&["-n", &self.pg.name, "route", "add", "blackhole", &peer]);
    }

    fn reconnect(&self, ns: &NetNs) {
        let gateway = ns.host_addr.to_string();
        ip(&["-n", &ns.name, "route", "replace", RANGE, "via", &gateway]);
        let peer = format!("{}/32", ns.ns_addr);
        ip(&["-n", &self.pg.name, "route", "del", "blackhole", &peer]);
    }

    /// Cuts the link between `ns` and the database only.
    fn cut_from_db(&self, ns: &NetNs) {
        let pg = format!("{}/32", self.pg.ns_addr);
        let peer = format!("{}/32", ns.ns_addr);
        ip(&["-n", &ns.name, "route", "add", "blackhole", &pg]);
        ip(&["-n", &self.pg.name, "route", "add", "blackhole", &peer]);
    }

    fn reconnect_to_db(&self, ns: &NetNs) {
        let pg = format!("{}/32", self.pg.ns_addr);
        let peer = format!("{}/32", ns.ns_addr);
        ip(&["-n", &ns.name, "route", "del", "blackhole", &pg]);
        ip(&["-n", &self.pg.name, "route", "del", "blackhole", &peer]);
    }

    /// The image host's address as the workers reach it.
    fn image_host(&self) -> Ipv4Addr {
        self.img.host_addr
    }
}

/// `n` URLs of distinct images on `images`, as the workers reach it.
fn image_urls(cluster: &Cluster, images: &ImageServer, n: usize, size: u32) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "http://{}:{}/img/{}x{}.png",
                cluster.image_host(),
                images.addr.port(),
                size + i as u32,
                size
            )
        })
        .collect()
}

/// Every image of the job succeeded exactly once: the rows, and the job's counters (which a
/// result recorded twice would push past the total).
async fn assert_each_image_recorded_once(cluster: &Cluster, job: i64, n: i64) {
    let db = cluster.db().await;
    let row = sqlx::query(
        "SELECT total, succeeded, failed, \
           (SELECT COUNT(*) FROM images WHERE job_id = $1 AND status = 'succeeded') AS rows_ok \
         FROM jobs WHERE id = $1",
    )
    .bind(job)
    .fetch_one(&db)
    .await
    .unwrap();
    let (total, succeeded, failed, rows_ok): (i64, i64, i64, i64) = (
        row.get("total"),
        row.get("succeeded"),
        row.get("failed"),
        row.get("rows_ok"),
    );
    assert_eq!(
        (total, succeeded, failed, rows_ok),
        (n, n, 0, n),
        "job {job}: (total, succeeded, failed, succeeded rows)"
    );
    db.close().await;
}

/// A worker cut off from everything for longer than its lease, mid-job: its images are taken
/// over by the other worker, its late results are refused (and counted), nothing is lost or
/// recorded twice, and once the link is back it works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_past_its_lease_loses_nothing_and_works_again() {
    let _turn = SERIAL.lock().await;
    let Some(mut cluster) = Cluster::start(
        "a_worker_cut_off_past_its_lease_loses_nothing_and_works_again",
        2,
    )
    .await
    else {
        return;
    };
    let images = ImageServer::start_on("0.0.0.0:0").await;
    // Each image takes 6 s after its download: the cut worker's images end after the link is
    // back, so their results arrive late, past a 2 s lease.
    let spec = WorkerSpec {
        clock: None,
        env: vec![
            ("RP_LEASE_SECS", "2".into()),
            ("RP_PROCESSING_DELAY_MS", "6000".into()),
        ],
    };
    let cut_id = cluster.start_worker(0, &spec).await;
    let job = cluster.submit(image_urls(&cluster, &images, 8, 20)).await;
    // The cut worker starts first and holds images when the link goes.
    let db = cluster.db().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let held: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM images WHERE lease_owner = $1 AND status = 'running'",
        )
        .bind(&cut_id)
        .fetch_one(&db)
        .await
        .unwrap();
        if held >= 4 {
            break;
        }
        assert!(Instant::now() < deadline, "the worker never claimed images");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.start_worker(1, &spec).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cut_ns = &cluster.worker_ns[0];
    cluster.cut_off(cut_ns);
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.reconnect(cut_ns);
    let finished = cluster.wait_finished(job, Duration::from_secs(60)).await;
    assert_eq!(finished["status"], "completed", "{finished}");
    assert_each_image_recorded_once(&cluster, job, 8).await;
    // Its results for the images taken over were refused, and counted.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let refused = cluster
            .metric(0, "retail_pulse_late_results_refused_total")
            .await;
        if refused >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cut worker's late results were not counted as refused"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // It works again: alone now, it does a whole new job.
    cluster.workers[1].terminate(Duration::from_secs(10));
    let again = cluster.submit(image_urls(&cluster, &images, 4, 40)).await;
    let finished = cluster.wait_finished(again, Duration::from_secs(40)).await;
    assert_eq!(finished["status"], "completed", "{finished}");
    assert_each_image_recorded_once(&cluster, again, 4).await;
    let others: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM images WHERE job_id = $1 AND processed_by <> $2")
            .bind(again)
            .bind(&cut_id)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(others, 0, "the second job was done by the healed worker");
}

/// The API cut off from the database answers 503 within 2 s, and serves again by itself once
/// the link is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_cut_off_from_the_database_answers_503_quickly_and_recovers() {
    let _turn = SERIAL.lock().await;
    let Some(cluster) = Cluster::start(
        "the_api_cut_off_from_the_database_answers_503_quickly_and_recovers",
        0,
    )
    .await
    else {
        return;
    };
    let job = cluster
        .submit(vec!["http://images.invalid/a.png".into()])
        .await;
    let status = format!("{}/api/status?jobid={job}", cluster.api_base());
    let get = |url: String| {
        let http = cluster.http.clone();
        async move {
            let started = Instant::now();
            let code = match http.get(&url).timeout(Duration::from_secs(10)).send().await {
                Ok(res) => res.status().as_u16(),
                Err(e) => panic!("{url}: no answer: {e}"),
            };
            (code, started.elapsed())
        }
    };
    // Warm: the pool holds open connections, which the cut leaves open but dead.
    for _ in 0..3 {
        assert_eq!(get(status.clone()).await.0, 200);
    }
    cluster.cut_from_db(&cluster.api_ns);
    for path in [
        status.clone(),
        status.clone(),
        format!("{}/api/jobs/{job}", cluster.api_base()),
        format!("{}/readyz", cluster.api_base()),
        status.clone(),
    ] {
        let (code, took) = get(path.clone()).await;
        assert_eq!(code, 503, "{path} while cut from the database");
        assert!(
            took < Duration::from_secs(2),
            "{path} answered 503 after {took:?}"
        );
    }
    cluster.reconnect_to_db(&cluster.api_ns);
    let healed = Instant::now();
    loop {
        let (code, _) = get(status.clone()).await;
        if code == 200 {
            break;
        }
        assert!(
            healed.elapsed() < Duration::from_secs(15),
            "the API still answers {code} 15 s after the link came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Workers whose clocks are 5 minutes ahead and behind, beside a correct one: leases and
/// retries run on the database's clock, so no lease is taken early (every image is claimed
/// once) and every image succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_with_clocks_five_minutes_off_take_no_lease_early() {
    let _turn = SERIAL.lock().await;
    if Command::new("faketime").arg("--version").output().is_err() {
        let why = "faketime is not installed (apt-get install faketime; scripts/test does)";
        if std::env::var(common::netns::REQUIRE_ENV).is_ok_and(|v| v == "1") {
            panic!("{why}");
        }
        eprintln!("SKIPPED workers_with_clocks_five_minutes_off_take_no_lease_early: {why}");
        return;
    }
    let Some(mut cluster) = Cluster::start(
        "workers_with_clocks_five_minutes_off_take_no_lease_early",
        3,
    )
    .await
    else {
        return;
    };
    let images = ImageServer::start_on("0.0.0.0:0").await;
    let env = vec![
        ("RP_LEASE_SECS", "3".to_string()),
        ("RP_PROCESSING_DELAY_MS", "1500".to_string()),
    ];
    let mut ids = Vec::new();
    for (i, clock) in [Some("+5m"), Some("-5m"), None].into_iter().enumerate() {
        let spec = WorkerSpec {
            clock,
            env: env.clone(),
        };
        ids.push(cluster.start_worker(i, &spec).await);
    }
    // The offsets are real: the fast worker's log is stamped 5 minutes ahead.
    let job = cluster.submit(image_urls(&cluster, &images, 48, 20)).await;
    let finished = cluster.wait_finished(job, Duration::from_secs(60)).await;
    assert_eq!(finished["status"], "completed", "{finished}");
    assert_each_image_recorded_once(&cluster, job, 48).await;
    let db = cluster.db().await;
    let claimed_again: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM images WHERE job_id = $1 AND attempts <> 1")
            .bind(job)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(claimed_again, 0, "some lease was taken before it expired");
    for id in &ids {
        let done: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM images WHERE job_id = $1 AND processed_by = $2",
        )
        .bind(job)
        .bind(id)
        .fetch_one(&db)
        .await
        .unwrap();
        assert!(done > 0, "worker {id} did no image");
    }
}

/// One origin accepts connections and never answers; the same job's images on a good origin
/// finish in about their own time, because the hanging one may hold only part of the slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_origin_does_not_hold_up_a_good_one() {
    let _turn = SERIAL.lock().await;
    let Some(mut cluster) = Cluster::start("a_hanging_origin_does_not_hold_up_a_good_one", 2).await
    else {
        return;
    };
    let images = ImageServer::start_on("0.0.0.0:0").await;
    let hang = raw_server_on("hang", "0.0.0.0:0").await;
    let spec = WorkerSpec {
        clock: None,
        env: vec![("RP_PROCESSING_DELAY_MS", "100".into())],
    };
    for i in 0..2 {
        cluster.start_worker(i, &spec).await;
    }
    let hanging: Vec<String> = (0..30)
        .map(|i| format!("http://{}:{}/{i}.png", cluster.image_host(), hang.port()))
        .collect();
    let good = image_urls(&cluster, &images, 30, 20);
    let mut urls = hanging;
    urls.extend(good);
    let submitted = Instant::now();
    let job = cluster.submit(urls).await;
    // Alone, the 30 good images take about 30 × 0.1 s / 4 slots; the hanging host stalls
    // for 10 s per attempt, so a slot it holds frees only after that.
    let db = cluster.db().await;
    loop {
        let good_done: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM images WHERE job_id = $1 AND seq >= 30 AND status = 'succeeded'",
        )
        .bind(job)
        .fetch_one(&db)
        .await
        .unwrap();
        if good_done == 30 {
            eprintln!(
                "the 30 good images finished {:?} after the submit",
                submitted.elapsed()
            );
            break;
        }
        assert!(
            submitted.elapsed() < Duration::from_secs(8),
            "only {good_done} of the 30 good images done after {:?}",
            submitted.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let waits = cluster
        .metric(0, "retail_pulse_fetch_origin_waits_total")
        .await
        + cluster
            .metric(1, "retail_pulse_fetch_origin_waits_total")
            .await;
    assert!(waits > 0.0, "the hanging origin's images waited for it");
}
