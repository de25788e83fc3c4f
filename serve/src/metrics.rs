//! The server's Prometheus metrics: requests by route and status, latency, queue time and
//! batch-size histograms, tokens in and out, requests in flight.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Route {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    /// embed, classify, forward, prefill or decode.
    pub kind: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RouteStatus, Counter>,
    /// Seconds until the response head (a stream's first byte, not its end).
    pub latency: HistogramFamily<Route>,
    /// Seconds a request waited before the engine took it up.
    pub queue_time: Histogram,
    /// Sequences in one engine call.
    pub batch_size: HistogramFamily<Kind>,
    /// Seconds per engine call by kind (a decode step's time, whatever its batch).
    pub call_time: HistogramFamily<Kind>,
    pub tokens_in: Counter,
    pub tokens_out: Counter,
    pub in_flight: Gauge,
}

fn latency_buckets() -> Histogram {
    // 0.5 ms .. 33 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

fn batch_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 9))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("cranformer");
        let requests = Family::<RouteStatus, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        let latency: HistogramFamily<Route> = Family::new_with_constructor(latency_buckets);
        registry.register(
            "http_request_duration_seconds",
            "Time to the response head by route",
            latency.clone(),
        );
        let queue_time = latency_buckets();
        registry.register(
            "queue_time_seconds",
            "Time a request waited for the engine",
            queue_time.clone(),
        );
        let batch_size: HistogramFamily<Kind> = Family::new_with_constructor(batch_buckets);
        registry.register(
            "batch_size",
            "Sequences per engine call by kind",
            batch_size.clone(),
        );
        let call_time: HistogramFamily<Kind> = Family::new_with_constructor(latency_buckets);
        registry.register(
            "engine_call_seconds",
            "Seconds per engine call by kind",
            call_time.clone(),
        );
        let tokens_in = Counter::default();
        registry.register("tokens_in", "Tokens read by the model", tokens_in.clone());
        let tokens_out = Counter::default();
        registry.register("tokens_out", "Tokens generated", tokens_out.clone());
        let in_flight = Gauge::default();
        registry.register(
            "requests_in_flight",
            "Requests being answered",
            in_flight.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            queue_time,
            batch_size,
            call_time,
            tokens_in,
            tokens_out,
            in_flight,
        }
    }

    pub fn batch(&self, kind: &str, sequences: usize) {
        self.batch_size
            .get_or_create(&Kind { kind: kind.into() })
            .observe(sequences as f64);
    }

    pub fn call(&self, kind: &str, seconds: f64) {
        self.call_time
            .get_or_create(&Kind { kind: kind.into() })
            .observe(seconds);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
