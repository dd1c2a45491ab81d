use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = retail_pulse::cli::Cli::parse();
    retail_pulse::telemetry::init();
    retail_pulse::cli::run(cli).await
}
