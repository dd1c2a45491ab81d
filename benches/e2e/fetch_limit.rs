//! The ceiling every throughput figure is compared with: the workers' own HTTP client and
//! concurrency, fetching and measuring with no database at all.

use std::sync::Arc;
use std::time::Instant;

use super::image_host::ImageHost;

/// Images per second the workers' HTTP client reaches alone.
pub async fn fetch_limit(host: &ImageHost, n: usize, concurrency: usize) -> f64 {
    let config = retail_pulse::fetch::FetchConfig {
        allow_private_networks: true,
        ..Default::default()
    };
    let fetcher = retail_pulse::fetch::Fetcher::new(&config).unwrap();
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = slots.clone().acquire_owned().await.unwrap();
        let fetcher = fetcher.clone();
        let (url, _) = host.url(i);
        tasks.spawn(async move {
            // Exactly what a worker does with an image, minus the database.
            let download = fetcher
                .download(&url, retail_pulse::measure::is_readable)
                .await
                .expect("fetch");
            retail_pulse::measure::measure(&download.head).expect("measure");
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    n as f64 / started.elapsed().as_secs_f64()
}
