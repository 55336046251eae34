//! Integration tests against a real PostgreSQL, Prometheus and Alertmanager.

mod collector;
mod dashboards;
mod foundation;
mod support;
