//! Integration tests against a real PostgreSQL, Prometheus and Alertmanager.

mod alerting_e2e;
mod alerting_rules;
mod api;
mod backfill;
mod check;
mod collector;
mod dashboards;
mod demo;
mod faults;
mod foundation;
mod http_metrics;
mod incremental;
mod landing;
mod reference;
mod rollup_days;
mod source_changes;
mod support;
