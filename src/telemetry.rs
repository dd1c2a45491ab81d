//! Logging set-up: human-readable lines by default, JSON with `RP_LOG_FORMAT=json`;
//! verbosity from `RUST_LOG`.
//!
//! The service (`serve`, `worker`, …) logs to stdout at `info`, with the database driver kept
//! quiet: a container's stdout is where its logs are collected. The client commands (`submit`,
//! `status`) print their results on stdout, so their logs go to stderr and default to `warn`:
//! `retail-pulse submit --json … | jq` must see nothing but the result.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Logging for the service commands.
/// The message of a caught panic, for the log line that reports it.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

pub fn init() {
    install("info,sqlx=warn,hyper=warn,reqwest=warn", std::io::stdout);
}

/// Logging for the client commands: stderr, warnings unless `RUST_LOG` asks for more.
pub fn init_client() {
    install("warn", std::io::stderr);
}

fn install<W>(default_filter: &str, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = std::env::var("RP_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_writer(writer);
    // A second init (tests building several apps) is harmless: keep the first subscriber.
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
