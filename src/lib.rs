//! okr-exporter: Prometheus-native analytics for the Follow-Up product.
//!
//! The crate holds every component behind the `okr-exporter` binary: the
//! request-latency middleware ([`http_metrics`]), the PostgreSQL collector
//! ([`collector`]), the exporter HTTP server ([`server`]), the demo
//! ([`demo`]) and the embedded PostgreSQL used by the demo and the tests
//! ([`embedded_pg`]).

#![deny(unsafe_code)]

pub mod api_error;
pub mod auth;
pub mod backfill;
pub mod backoff;
pub mod check;
pub mod collector;
pub mod config;
pub mod db;
pub mod db_availability;
pub mod demo;
pub mod embedded_pg;
pub mod exposition;
pub mod health;
pub mod http_metrics;
pub mod ingest;
pub mod landing;
pub mod report;
pub mod request_log;
pub mod scrape;
pub mod serve;
pub mod server;
pub mod state;
