//! okr-exporter: Prometheus-native analytics for the Follow-Up product.
//!
//! The crate holds every component behind the `okr-exporter` binary: the
//! request-latency middleware ([`http_metrics`]), the PostgreSQL collector
//! ([`collector`]), the exporter HTTP server ([`server`]) and the embedded
//! PostgreSQL used by the demo and the tests ([`embedded_pg`]).

pub mod http_metrics;
