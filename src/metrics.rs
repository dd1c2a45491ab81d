//! Prometheus metrics: one registry per process, owned by the app and passed down (no global
//! recorder). Counters and histograms are updated where things happen; the state gauges (jobs
//! and images by state, registered workers by state) are set from a [`Snapshot`] that the
//! `/metrics` handler reads from the database at each scrape, so they are right across every
//! process sharing the database. Label values come from small fixed sets
//! (matched routes, outcome and error kinds), never from URLs or ids.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::domain::WorkerState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// succeeded | failed
    pub outcome: String,
    /// An `ErrorKind` name, or `none`.
    pub error_kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub error_kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// delivered | retried | failed
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    /// jobs | images | webhook_deliveries
    pub table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<RouteLabels, Histogram>,
    pub images_finished: Family<OutcomeLabels, Counter>,
    pub retries: Family<KindLabels, Counter>,
    pub download_bytes: Histogram,
    pub download_seconds: Histogram,
    pub processing_seconds: Histogram,
    pub worker_slots: Gauge,
    pub worker_slots_busy: Gauge,
    pub webhook_deliveries: Family<DeliveryLabels, Counter>,
    pub fetch_origin_waits: Counter,
    pub fetch_breaker_deferrals: Counter,
    pub fetch_breaker_opened: Counter,
    pub fetch_breakers_open: Gauge,
    pub late_results_refused: Counter,
    pub pruned: Family<TableLabels, Counter>,
    jobs_by_state: Family<StateLabels, Gauge>,
    images_by_state: Family<StateLabels, Gauge>,
    workers_by_state: Family<StateLabels, Gauge>,
}

fn seconds_histogram() -> Histogram {
    // 1 ms … ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("retail_pulse");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by matched route, method and status",
            http_requests.clone(),
        );
        let http_duration = Family::<RouteLabels, Histogram>::new_with_constructor(
            seconds_histogram as fn() -> Histogram,
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            http_duration.clone(),
        );
        let images_finished = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "images_finished",
            "Images finished by this process, by outcome and error kind",
            images_finished.clone(),
        );
        let retries = Family::<KindLabels, Counter>::default();
        registry.register(
            "image_retries",
            "Transient image failures put back in the queue",
            retries.clone(),
        );
        let download_bytes = Histogram::new(exponential_buckets(1024.0, 4.0, 10)); // 1 KiB … 256 MiB
        registry.register(
            "download_bytes",
            "Size of downloaded image bodies",
            download_bytes.clone(),
        );
        let download_seconds = seconds_histogram();
        registry.register(
            "download_duration_seconds",
            "Time to download an image",
            download_seconds.clone(),
        );
        let processing_seconds = seconds_histogram();
        registry.register(
            "image_processing_seconds",
            "Time from starting an image to its outcome (download, measure, processing delay)",
            processing_seconds.clone(),
        );
        let worker_slots = Gauge::default();
        registry.register(
            "worker_slots",
            "Images this process may have in flight",
            worker_slots.clone(),
        );
        let worker_slots_busy = Gauge::default();
        registry.register(
            "worker_slots_busy",
            "Images this process has in flight",
            worker_slots_busy.clone(),
        );
        let webhook_deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook attempts made by this process, by outcome",
            webhook_deliveries.clone(),
        );
        let fetch_origin_waits = Counter::default();
        registry.register(
            "fetch_origin_waits",
            "Images that could not start because their origin had its most downloads in flight (parked without a slot, or deferred)",
            fetch_origin_waits.clone(),
        );
        let fetch_breaker_deferrals = Counter::default();
        registry.register(
            "fetch_breaker_deferrals",
            "Images handed back to the queue, no attempt spent, because their origin's circuit breaker was open",
            fetch_breaker_deferrals.clone(),
        );
        let fetch_breaker_opened = Counter::default();
        registry.register(
            "fetch_breaker_open",
            "Times an origin's circuit breaker opened (or a failed probe opened it again)",
            fetch_breaker_opened.clone(),
        );
        let fetch_breakers_open = Gauge::default();
        registry.register(
            "fetch_breakers_open",
            "Origins whose circuit breaker is open in this process",
            fetch_breakers_open.clone(),
        );
        let late_results_refused = Counter::default();
        registry.register(
            "late_results_refused",
            "Outcomes this process could not record because it had lost the image's lease (it was cut off past the lease, the image was taken over) or the job was cancelled",
            late_results_refused.clone(),
        );
        let pruned = Family::<TableLabels, Counter>::default();
        registry.register(
            "pruned",
            "Rows deleted by retention in this process, by table",
            pruned.clone(),
        );
        let jobs_by_state = Family::<StateLabels, Gauge>::default();
        registry.register(
            "jobs",
            "Jobs by state (read from the database when scraped)",
            jobs_by_state.clone(),
        );
        let images_by_state = Family::<StateLabels, Gauge>::default();
        registry.register(
            "images",
            "Images by state (read from the database when scraped)",
            images_by_state.clone(),
        );
        let workers_by_state = Family::<StateLabels, Gauge>::default();
        registry.register(
            "workers",
            "Worker processes in the registry by state: alive, stale (not seen for 3 heartbeats), stopped (read from the database when scraped)",
            workers_by_state.clone(),
        );
        Self {
            registry,
            http_requests,
            http_duration,
            images_finished,
            retries,
            download_bytes,
            download_seconds,
            processing_seconds,
            worker_slots,
            worker_slots_busy,
            webhook_deliveries,
            fetch_origin_waits,
            fetch_breaker_deferrals,
            fetch_breaker_opened,
            fetch_breakers_open,
            late_results_refused,
            pruned,
            jobs_by_state,
            images_by_state,
            workers_by_state,
        }
    }

    /// The text exposition, with the state gauges set from `snapshot` (read by the caller
    /// from the database just before, so they are right across every process sharing it).
    pub fn render(&self, snapshot: &Snapshot) -> String {
        for (state, n) in &snapshot.jobs {
            self.jobs_by_state
                .get_or_create(&StateLabels {
                    state: state.clone(),
                })
                .set(*n);
        }
        for (state, n) in &snapshot.images {
            self.images_by_state
                .get_or_create(&StateLabels {
                    state: state.clone(),
                })
                .set(*n);
        }
        for state in WorkerState::ALL {
            let n = snapshot.workers.iter().filter(|s| **s == state).count();
            self.workers_by_state
                .get_or_create(&StateLabels {
                    state: state.as_str().into(),
                })
                .set(n as i64);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// What the state gauges show, counted across every process that shares the database.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Jobs by state word (`ongoing`, `completed`, …), with their counts.
    pub jobs: Vec<(String, i64)>,
    /// Images by state word, with their counts.
    pub images: Vec<(String, i64)>,
    /// The state of each registered worker process.
    pub workers: Vec<WorkerState>,
}
