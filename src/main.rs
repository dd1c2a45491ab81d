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

/// glibc's malloc gives each thread that contends for it an arena of its own (up to 8 per
/// core) and keeps freed blocks in them: with thousands of downloads in flight, their HTTP
/// read buffers (up to ~400 KB each) ended up spread over many arenas. Two arenas held P8's
/// peak (2,000 slots) at 209–221 MB against 233 MB, at the same speed. A fixed mmap threshold
/// (256 KB) held it at 175–200 MB but cost every new buffer a fresh mapping: 2–3× the CPU per
/// image with 32 slots, so it was not kept.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
