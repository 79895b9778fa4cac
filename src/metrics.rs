//! The service's Prometheus metrics: one registry per process, handed to whoever counts, and
//! rendered as OpenMetrics text (which Prometheus scrapes natively) at `GET /metrics`.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Request latency buckets, in seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: HistogramFamily<RouteLabel>,
    pub numbers_issued: Counter,
    pub pool_serials: Gauge,
    pub leases: Counter,
    pub lease_errors: Counter,
    pub lease_seconds: Histogram,
    pub storage_errors: Family<OperationLabel, Counter>,
    pub rate_limited: Counter,
    pub unauthorized: Family<ReasonLabel, Counter>,
    pub idempotent_replays: Counter,
    pub skipped_collisions: Counter,
    pub open_connections: Gauge,
    pub refused_connections: Counter,
    pub corrupt_records: Counter,
    pub disk_free_bytes: Gauge,
    pub storage_ready: Gauge,
    pub import_rows: Family<OutcomeLabel, Counter>,
    pub import_jobs: Family<StateLabel, Counter>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("tracknum");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route, method and status",
            requests.clone(),
        );
        let request_seconds: HistogramFamily<RouteLabel> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "http_request_duration",
            "Time from a request's head to its response, by route",
            Unit::Seconds,
            request_seconds.clone(),
        );
        let numbers_issued = Counter::default();
        registry.register(
            "numbers_issued",
            "Tracking numbers handed out (single and batch)",
            numbers_issued.clone(),
        );
        let pool_serials = Gauge::default();
        registry.register(
            "pool_serials",
            "Serials leased and not yet handed out, in this process",
            pool_serials.clone(),
        );
        let leases = Counter::default();
        registry.register(
            "block_leases",
            "Block leases from the shared counter that succeeded",
            leases.clone(),
        );
        let lease_errors = Counter::default();
        registry.register(
            "block_lease_errors",
            "Block leases from the shared counter that failed",
            lease_errors.clone(),
        );
        let lease_seconds = Histogram::new(LATENCY_BUCKETS);
        registry.register_with_unit(
            "block_lease_duration",
            "Time a block lease took",
            Unit::Seconds,
            lease_seconds.clone(),
        );
        let storage_errors = Family::<OperationLabel, Counter>::default();
        registry.register(
            "storage_errors",
            "Storage calls that failed, by operation",
            storage_errors.clone(),
        );
        let rate_limited = Counter::default();
        registry.register(
            "rate_limited",
            "Requests refused by the rate limit (429)",
            rate_limited.clone(),
        );
        let unauthorized = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "unauthorized",
            "Requests refused for a missing or wrong API key (401)",
            unauthorized.clone(),
        );
        let idempotent_replays = Counter::default();
        registry.register(
            "idempotent_replays",
            "Replies replayed for a repeated Idempotency-Key",
            idempotent_replays.clone(),
        );
        let skipped_collisions = Counter::default();
        registry.register(
            "skipped_collisions",
            "Fresh numbers skipped because a record already held them (should stay 0)",
            skipped_collisions.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Client connections open now",
            open_connections.clone(),
        );
        let refused_connections = Counter::default();
        registry.register(
            "refused_connections",
            "Connections refused because --max-connections were open",
            refused_connections.clone(),
        );
        let corrupt_records = Counter::default();
        registry.register(
            "corrupt_records",
            "Stored records refused because they failed their checksum or did not parse",
            corrupt_records.clone(),
        );
        let disk_free_bytes = Gauge::default();
        registry.register_with_unit(
            "disk_free",
            "Free space on the embedded store's disk (-1 on Redis)",
            Unit::Bytes,
            disk_free_bytes.clone(),
        );
        let storage_ready = Gauge::default();
        registry.register(
            "storage_ready",
            "1 when storage takes new records (the disk has room and answers), else 0",
            storage_ready.clone(),
        );
        let import_rows = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "import_rows",
            "Import rows processed by this instance: issued, valid (a dry run) or rejected",
            import_rows.clone(),
        );
        let import_jobs = Family::<StateLabel, Counter>::default();
        registry.register(
            "import_jobs",
            "Import jobs that reached each state on this instance (queued, running, done, \
             failed, cancelled)",
            import_jobs.clone(),
        );
        Arc::new(Metrics {
            registry,
            requests,
            request_seconds,
            numbers_issued,
            pool_serials,
            leases,
            lease_errors,
            lease_seconds,
            storage_errors,
            rate_limited,
            unauthorized,
            idempotent_replays,
            skipped_collisions,
            open_connections,
            refused_connections,
            corrupt_records,
            disk_free_bytes,
            storage_ready,
            import_rows,
            import_jobs,
        })
    }

    /// Counts one answered request.
    pub fn observe_request(
        &self,
        route: &'static str,
        method: &'static str,
        status: u16,
        took: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method,
                status,
            })
            .inc();
        self.request_seconds
            .get_or_create(&RouteLabel { route })
            .observe(took.as_secs_f64());
    }

    pub fn storage_error(&self, operation: &'static str) {
        self.storage_errors
            .get_or_create(&OperationLabel { operation })
            .inc();
    }

    pub fn unauthorized_request(&self, reason: &'static str) {
        self.unauthorized
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts a chunk of import rows: issued, valid in a dry run, rejected.
    pub fn import_rows(&self, issued: u64, valid: u64, rejected: u64) {
        for (outcome, rows) in [("issued", issued), ("valid", valid), ("rejected", rejected)] {
            if rows > 0 {
                self.import_rows
                    .get_or_create(&OutcomeLabel { outcome })
                    .inc_by(rows);
            }
        }
    }

    /// Counts an import job reaching `state`.
    pub fn import_job(&self, state: &'static str) {
        self.import_jobs.get_or_create(&StateLabel { state }).inc();
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut text = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value_of(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
            .and_then(|line| line.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn renders_counters_with_labels_and_histograms() {
        let metrics = Metrics::new();
        metrics.observe_request("/healthz", "GET", 200, Duration::from_millis(2));
        metrics.observe_request("/healthz", "GET", 200, Duration::from_millis(3));
        metrics.numbers_issued.inc_by(5);
        metrics.storage_error("lease");
        let text = metrics.render();
        assert_eq!(
            value_of(
                &text,
                r#"tracknum_http_requests_total{route="/healthz",method="GET",status="200"}"#
            ),
            Some(2.0),
            "{text}"
        );
        assert_eq!(value_of(&text, "tracknum_numbers_issued_total"), Some(5.0));
        assert_eq!(
            value_of(&text, r#"tracknum_storage_errors_total{operation="lease"}"#),
            Some(1.0)
        );
        assert_eq!(
            value_of(
                &text,
                r#"tracknum_http_request_duration_seconds_count{route="/healthz"}"#
            ),
            Some(2.0),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
