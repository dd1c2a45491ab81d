use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = retail_pulse::cli::Cli::parse();
    cli.init_telemetry();
    retail_pulse::cli::run(cli).await
}
