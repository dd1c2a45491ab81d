use std::process::ExitCode;

use clap::Parser;

fn main() -> anyhow::Result<ExitCode> {
    tune_allocator();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<ExitCode> {
    let cli = retail_pulse::cli::Cli::parse();
    cli.init_telemetry();
    retail_pulse::cli::run(cli).await
}

/// glibc's malloc raises its mmap threshold each time a large block is freed, after which
/// large blocks (an HTTP connection's read buffer grows to ~400 KB) come from the arenas and
/// their memory stays with the process once freed. A fixed threshold keeps every block of
/// 256 KB and more in its own mapping, given back to the system when it is freed (P8, 2,000
/// slots: see docs/BENCHMARKS.md).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}
