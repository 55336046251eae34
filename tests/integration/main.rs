//! Integration tests against a real PostgreSQL, Prometheus and Alertmanager.

mod dashboards;
mod foundation;
mod support;
