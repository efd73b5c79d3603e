//! Prometheus metrics (the `prometheus-client` crate): what an operator and the benchmark need
//! to see — request counts and latency by route and status, records per fsync, fsync latency,
//! log bytes, rejections, active holds, products.

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

/// The label for a matched route (a fixed set; anything else is "other").
pub fn route_label(route: &str) -> &'static str {
    const ROUTES: [&str; 19] = [
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
    ];
    ROUTES.into_iter().find(|r| *r == route).unwrap_or("other")
}

pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<RequestLabels, Counter>,
    pub http_request_seconds: Family<RequestLabels, Histogram>,
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

    pub fn observe_request(
        &self,
        method: &'static str,
        route: &'static str,
        status: u16,
        took: Duration,
    ) {
        let labels = RequestLabels {
            method,
            route,
            status,
        };
        self.http_request_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        self.http_requests.get_or_create(&labels).inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
