//! Integration tests against a real PostgreSQL, Prometheus and Alertmanager.

mod alerting_e2e;
mod alerting_rules;
mod api;
mod backfill;
mod check;
mod collector;
mod connections;
mod dashboards;
mod demo;
mod faults;
mod foundation;
mod hostile_input;
mod http_metrics;
mod incremental;
mod ingest_outage;
mod landing;
mod native_histograms;
mod promql;
mod reference;
mod rollup_days;
mod source_changes;
mod support;
