//! Integration tests against a real PostgreSQL, Prometheus and Alertmanager.
