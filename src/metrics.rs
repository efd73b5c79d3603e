//! Prometheus metrics (the `prometheus-client` crate): what an operator and the benchmark need
//! to see — request counts and latency by route and status, records per fsync, fsync latency,
//! log bytes, rejections, active holds, products.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

// Labels are static strings: counting a request allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: &'static str,
    pub route: &'static str,
    pub status: u16,
}

/// The routes, as labels: every route the router has, then the two that are not one.
const ROUTES: [&str; 20] = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/v1/products",
    "/v1/products/{sku}",
    "/v1/products/{sku}/restock",
    "/v1/products/{sku}/adjust",
    "/v1/products/{sku}/returns",
    "/v1/products/{sku}/history",
    "/v1/availability",
    "/v1/reservations",
    "/v1/reservations/{id}",
    "/v1/reservations/{id}/complete",
    "/v1/reservations/{id}/cancel",
    "/v1/reservations/{id}/extend",
    "/v1/sales",
    "/v1/sales/{id}",
    "unmatched",
    "other",
];

const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "other",
];

/// The statuses stockd answers with. Each (method, route, status) among these has a cell in
/// [`Metrics::request_cells`]; a request with any other status is counted through the
/// families' maps.
const STATUSES: [u16; 14] = [
    200, 201, 400, 401, 403, 404, 405, 408, 409, 412, 413, 415, 500, 503,
];

/// A request's route: a matched route's path (a fixed set; any other is "other"), or
/// "unmatched" for a path no route has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route(usize);

impl Route {
    pub const UNMATCHED: Route = Route(ROUTES.len() - 2);
    const OTHER: Route = Route(ROUTES.len() - 1);

    /// The route of a matched path.
    pub fn of(matched_path: &str) -> Route {
        ROUTES[..ROUTES.len() - 2]
            .iter()
            .position(|r| *r == matched_path)
            .map_or(Route::OTHER, Route)
    }

    pub fn label(self) -> &'static str {
        ROUTES[self.0]
    }
}

/// The label for a matched route (a fixed set; anything else is "other").
pub fn route_label(route: &str) -> &'static str {
    Route::of(route).label()
}

fn method_index(method: &axum::http::Method) -> usize {
    use axum::http::Method;
    match *method {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::DELETE => 3,
        Method::PATCH => 4,
        Method::HEAD => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<RequestLabels, Counter>,
    pub http_request_seconds: Family<RequestLabels, Histogram>,
    /// The two families' metrics for each (method, route, status in [`STATUSES`]), found
    /// once: counting a request is then an index, not two lookups in the families' maps
    /// (SipHash of the labels, twice, was ~1,000 of the ~38,000 instructions a request).
    request_cells: Box<[OnceLock<(Counter, Histogram)>]>,
    pub records_per_fsync: Histogram,
    pub fsync_seconds: Histogram,
    pub log_bytes: Counter,
    pub mailbox_rejections: Counter,
    pub log_queue_rejections: Counter,
    pub active_reservations: Gauge,
    pub products: Gauge,
    pub live_actors: Gauge,
    pub passive_products: Gauge,
    pub expiry_alarms: Gauge,
    pub http_connections: Gauge,
    pub http_connections_refused: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("stockd");
        let http_requests = Family::<RequestLabels, Counter>::default();
        let http_request_seconds = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            // 50 µs .. ~1.6 s
            Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
        });
        let records_per_fsync = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        let fsync_seconds = Histogram::new(exponential_buckets(0.000_025, 2.0, 16));
        let log_bytes = Counter::default();
        let mailbox_rejections = Counter::default();
        let log_queue_rejections = Counter::default();
        let active_reservations = Gauge::default();
        let products = Gauge::default();
        let live_actors = Gauge::default();
        let passive_products = Gauge::default();
        let expiry_alarms = Gauge::default();
        let http_connections = Gauge::default();
        let http_connections_refused = Counter::default();
        registry.register(
            "http_requests",
            "HTTP requests by method, route and status",
            http_requests.clone(),
        );
        registry.register(
            "http_request_seconds",
            "HTTP request latency by method, route and status",
            http_request_seconds.clone(),
        );
        registry.register(
            "log_records_per_fsync",
            "Records made durable by one fdatasync (group commit)",
            records_per_fsync.clone(),
        );
        registry.register(
            "log_fsync_seconds",
            "Latency of one log write + fdatasync",
            fsync_seconds.clone(),
        );
        registry.register(
            "log_written_bytes",
            "Bytes appended to the log",
            log_bytes.clone(),
        );
        registry.register(
            "mailbox_rejections",
            "Requests refused because a product actor's mailbox was full",
            mailbox_rejections.clone(),
        );
        registry.register(
            "log_queue_rejections",
            "Changes refused because the log writer's queue was full",
            log_queue_rejections.clone(),
        );
        registry.register(
            "active_reservations",
            "Reservations holding stock (durable)",
            active_reservations.clone(),
        );
        registry.register(
            "products",
            "Products in the catalog (durable)",
            products.clone(),
        );
        registry.register(
            "live_actors",
            "Product actors running (the rest are passive)",
            live_actors.clone(),
        );
        registry.register(
            "passive_products",
            "Products whose idle actor passivated",
            passive_products.clone(),
        );
        registry.register(
            "expiry_alarms",
            "Alarms pending to revive passive products when a hold homed there expires",
            expiry_alarms.clone(),
        );
        registry.register(
            "http_connections",
            "Client connections open (refused ones not included)",
            http_connections.clone(),
        );
        registry.register(
            "http_connections_refused",
            "Connections refused because --max-connections were open (answered 503 unless 256 refusals were already under way)",
            http_connections_refused.clone(),
        );
        Metrics {
            registry,
            http_requests,
            http_request_seconds,
            request_cells: (0..ROUTES.len() * METHODS.len() * STATUSES.len())
                .map(|_| OnceLock::new())
                .collect(),
            records_per_fsync,
            fsync_seconds,
            log_bytes,
            mailbox_rejections,
            log_queue_rejections,
            active_reservations,
            products,
            live_actors,
            passive_products,
            expiry_alarms,
            http_connections,
            http_connections_refused,
        }
    }

    /// Called by the log writer after each group commit.
    pub fn batch_synced(&self, records: usize, bytes: usize, took: Duration) {
        self.records_per_fsync.observe(records as f64);
        self.fsync_seconds.observe(took.as_secs_f64());
        self.log_bytes.inc_by(bytes as u64);
    }

    /// Counts one answer and its latency, by method, route and status.
    pub fn observe_request(
        &self,
        method: &axum::http::Method,
        route: Route,
        status: u16,
        took: Duration,
    ) {
        let method = method_index(method);
        let labels = || RequestLabels {
            method: METHODS[method],
            route: route.label(),
            status,
        };
        let seconds = took.as_secs_f64();
        let Some(status_index) = STATUSES.iter().position(|s| *s == status) else {
            self.http_request_seconds
                .get_or_create(&labels())
                .observe(seconds);
            self.http_requests.get_or_create(&labels()).inc();
            return;
        };
        let cell = (route.0 * METHODS.len() + method) * STATUSES.len() + status_index;
        let (count, latency) = self.request_cells[cell].get_or_init(|| {
            let labels = labels();
            (
                self.http_requests.get_or_create_owned(&labels),
                self.http_request_seconds.get_or_create_owned(&labels),
            )
        });
        latency.observe(seconds);
        count.inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use axum::http::Method;

    use super::*;

    /// The value of the exposition line that starts with `series`.
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
    }

    /// Counted through a cell of the table or through the families' maps (a status outside
    /// the table's), a request lands in the one series its labels name.
    #[test]
    fn each_request_is_counted_once_in_its_own_series() {
        let metrics = Metrics::new();
        let reservations = Route::of("/v1/reservations");
        let took = Duration::from_micros(300);
        for _ in 0..3 {
            metrics.observe_request(&Method::POST, reservations, 201, took);
        }
        metrics.observe_request(&Method::POST, reservations, 409, took);
        metrics.observe_request(&Method::PUT, reservations, 201, took);
        metrics.observe_request(&Method::GET, reservations, 418, took);
        metrics.observe_request(&Method::GET, reservations, 418, took);
        metrics.observe_request(&Method::GET, Route::of("/v1/new"), 200, took);
        metrics.observe_request(&Method::GET, Route::UNMATCHED, 404, took);
        let text = metrics.encode();
        let requests =
            |labels: &str| value(&text, &format!("stockd_http_requests_total{{{labels}}}"));
        let latencies = |labels: &str| {
            value(
                &text,
                &format!("stockd_http_request_seconds_count{{{labels}}}"),
            )
        };
        for (labels, count) in [
            (
                r#"method="POST",route="/v1/reservations",status="201""#,
                3.0,
            ),
            (
                r#"method="POST",route="/v1/reservations",status="409""#,
                1.0,
            ),
            (r#"method="GET",route="/v1/reservations",status="418""#, 2.0),
            (r#"method="GET",route="other",status="200""#, 1.0),
            (r#"method="GET",route="unmatched",status="404""#, 1.0),
        ] {
            assert_eq!(requests(labels), Some(count), "{labels}\n{text}");
            assert_eq!(latencies(labels), Some(count), "{labels}\n{text}");
        }
        assert_eq!(
            text.matches("stockd_http_requests_total{").count(),
            6,
            "{text}"
        );
    }
}
