//! Request-latency middleware for axum services (work in progress).
