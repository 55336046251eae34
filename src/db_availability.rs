//! What the exporter knows about its database being reachable, so that
//! ingestion answers 503 at once during an outage instead of making every
//! client wait for a pool connection (DESIGN §7).
//!
//! The database counts as down when ingestion's last use of it failed to
//! connect, or when the collector's last poll could not reach it
//! (`okr_exporter_up` 0 after a failed run) and no ingestion succeeded
//! since. While it is down, one request per [`PROBE_INTERVAL`] (and only
//! one at a time) goes through as a probe and every other is refused at
//! once; a probe that succeeds ends the outage, so ingestion recovers as
//! soon as the database does, without waiting for the collector's next
//! poll or a restart.
//!
//! ```
//! use std::sync::Arc;
//! use okr_exporter::db_availability::DatabaseAvailability;
//!
//! let db = Arc::new(DatabaseAvailability::new(None));
//! let ticket = db.admit().expect("nothing is known to be down yet");
//! // … use the pool, then report what happened:
//! ticket.observe(&Ok::<(), sqlx::Error>(()));
//! ```

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::api_error::ApiError;
use crate::collector::{CollectorLabel, CollectorMetrics};

/// While the database is down, at most one probe request per interval.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// The `Retry-After` a refused client is given.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// The collector's view of the database: its `okr_exporter_up` gauge and
/// error counters.
pub struct CollectorHealth {
    up: Gauge<i64, AtomicI64>,
    errors: Family<CollectorLabel, Counter>,
    labels: Vec<CollectorLabel>,
    has_failed: AtomicBool,
}

impl CollectorHealth {
    /// Watches the self-metrics of the collectors named `collectors`.
    pub fn new<'a>(
        metrics: &CollectorMetrics,
        collectors: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        Self {
            up: metrics.up.clone(),
            errors: metrics.errors.clone(),
            labels: collectors
                .into_iter()
                .map(|c| CollectorLabel {
                    collector: c.to_owned(),
                })
                .collect(),
            has_failed: AtomicBool::new(false),
        }
    }

    /// True when the collector's last poll could not reach the database.
    ///
    /// `okr_exporter_up` also reads 0 before the first poll, so it counts
    /// only once some run has failed: every finished run sets the gauge (0
    /// only when the database was unreachable) and a failed one counts its
    /// error after that, so "0 and an error counted" never describes a
    /// collector that has not polled yet.
    fn says_down(&self) -> bool {
        if self.up.get() != 0 {
            return false;
        }
        if !self.has_failed.load(Ordering::Relaxed) {
            let failed = self
                .labels
                .iter()
                .any(|l| self.errors.get(l).is_some_and(|c| c.get() > 0));
            if !failed {
                return false;
            }
            self.has_failed.store(true, Ordering::Relaxed);
        }
        true
    }
}

#[derive(Debug, Default)]
struct State {
    /// Ingestion's last use of the database failed to reach it.
    failed: bool,
    /// An ingestion request reached the database after the collector's
    /// flag went to 0: the flag is older news. Cleared when it reads 1.
    outlived_collector: bool,
    /// When this outage was first known here.
    known_since: Option<Instant>,
    /// When the last probe was let through.
    last_probe: Option<Instant>,
    /// A probe is in flight.
    probing: bool,
}

/// Whether ingestion may use the database now; see the module docs.
pub struct DatabaseAvailability {
    collector: Option<CollectorHealth>,
    state: Mutex<State>,
}

/// The database is known to be down; retry after the given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable {
    /// How long the client should wait before retrying.
    pub retry_after: Duration,
}

/// 503 with `Retry-After`: what a client refused during an outage is told.
impl From<Unavailable> for ApiError {
    fn from(e: Unavailable) -> Self {
        Self::Unavailable {
            message: "database unavailable; retry later".into(),
            field: None,
            retry_after: Some(e.retry_after),
        }
    }
}

/// Leave to use the database; report the outcome with
/// [`observe`](Self::observe). Dropping it ends a probe.
pub struct Ticket {
    gate: Arc<DatabaseAvailability>,
    probe: bool,
}

impl DatabaseAvailability {
    /// Knows about outages from ingestion's own failures and, when given,
    /// from the collector (only when it polls the same database).
    pub fn new(collector: Option<CollectorHealth>) -> Self {
        Self {
            collector,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The critical sections cannot panic; a poisoned lock still holds
        // consistent flags.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leave to use the database, or [`Unavailable`] at once when it is
    /// known to be down and this request is not the probe.
    pub fn admit(self: &Arc<Self>) -> Result<Ticket, Unavailable> {
        self.admit_at(Instant::now())
    }

    fn admit_at(self: &Arc<Self>, now: Instant) -> Result<Ticket, Unavailable> {
        let collector_down = self.collector.as_ref().map(CollectorHealth::says_down);
        let mut st = self.state();
        if collector_down == Some(false) {
            st.outlived_collector = false;
        }
        let down = st.failed || (collector_down == Some(true) && !st.outlived_collector);
        if !down {
            st.known_since = None;
            return Ok(Ticket {
                gate: Arc::clone(self),
                probe: false,
            });
        }
        let since = *st.known_since.get_or_insert(now);
        let due = st.last_probe.map_or(since, |p| p.max(since)) + PROBE_INTERVAL;
        if !st.probing && now >= due {
            st.probing = true;
            st.last_probe = Some(now);
            return Ok(Ticket {
                gate: Arc::clone(self),
                probe: true,
            });
        }
        Err(Unavailable {
            retry_after: RETRY_AFTER,
        })
    }

    /// True while the database is known to be down (for tests and logs).
    pub fn known_down(&self) -> bool {
        let collector_down = self
            .collector
            .as_ref()
            .is_some_and(CollectorHealth::says_down);
        let st = self.state();
        st.failed || (collector_down && !st.outlived_collector)
    }

    fn record_success(&self) {
        let collector_down = self
            .collector
            .as_ref()
            .is_some_and(CollectorHealth::says_down);
        let mut st = self.state();
        if st.failed || st.known_since.is_some() {
            tracing::info!("ingestion reached the database again");
        }
        st.failed = false;
        st.known_since = None;
        if collector_down {
            st.outlived_collector = true;
        }
    }

    fn record_failure_at(&self, now: Instant) {
        let mut st = self.state();
        if !st.failed {
            tracing::warn!(
                "ingestion could not reach the database: refusing at once, probing every {PROBE_INTERVAL:?}"
            );
        }
        st.failed = true;
        st.known_since.get_or_insert(now);
    }
}

impl Ticket {
    /// True when this request is the one probe let through during an outage.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Records what using the database gave: a success ends an outage, a
    /// failure to reach the server starts one, other errors (a constraint,
    /// a bad statement) say nothing about reachability.
    pub fn observe<T>(&self, result: &Result<T, sqlx::Error>) {
        self.observe_at(result, Instant::now());
    }

    fn observe_at<T>(&self, result: &Result<T, sqlx::Error>, now: Instant) {
        match result {
            Ok(_) => self.gate.record_success(),
            Err(e) if is_connection_error(e) => self.gate.record_failure_at(now),
            Err(_) => {}
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.probe {
            self.gate.state().probing = false;
        }
    }
}

/// True for errors that mean the server could not be reached or dropped
/// the connection: no pool connection in time, I/O and protocol failures,
/// SQLSTATE class 08 (connection exception) and 57P01–57P03 (the server is
/// shutting down, crashed or not yet accepting connections).
pub fn is_connection_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(collector: Option<CollectorHealth>) -> Arc<DatabaseAvailability> {
        Arc::new(DatabaseAvailability::new(collector))
    }

    fn refused(g: &Arc<DatabaseAvailability>, at: Instant) -> bool {
        g.admit_at(at).is_err()
    }

    #[test]
    fn a_connection_failure_refuses_at_once_and_probes_once_per_interval() {
        let g = gate(None);
        let t0 = Instant::now();
        let first = g.admit_at(t0).expect("nothing known yet");
        assert!(!first.is_probe());
        first.observe_at(&Err::<(), _>(sqlx::Error::PoolTimedOut), t0);
        drop(first);
        assert!(g.known_down());
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // Refused at once until a probe is due, one interval later.
        assert!(refused(&g, ms(1)));
        assert!(refused(&g, ms(999)));
        let probe = g.admit_at(ms(1000)).expect("probe due");
        assert!(probe.is_probe());
        // One probe at a time, however long it takes.
        assert!(refused(&g, ms(1001)));
        assert!(refused(&g, ms(5000)));
        probe.observe_at(&Err::<(), _>(sqlx::Error::PoolTimedOut), ms(5000));
        drop(probe);
        // The next probe may start at once: the last one began long ago.
        let probe = g.admit_at(ms(5001)).expect("probe due");
        assert!(refused(&g, ms(5002)));
        probe.observe(&Ok::<_, sqlx::Error>(()));
        drop(probe);
        assert!(!g.known_down());
        for i in 0..3 {
            assert!(!g.admit_at(ms(5003 + i)).expect("up again").is_probe());
        }
    }

    #[test]
    fn a_cancelled_probe_frees_the_slot_and_other_errors_change_nothing() {
        let g = gate(None);
        let t0 = Instant::now();
        g.admit_at(t0)
            .unwrap()
            .observe_at(&Err::<(), _>(sqlx::Error::PoolClosed), t0);
        let probe = g.admit_at(t0 + PROBE_INTERVAL).unwrap();
        drop(probe); // the client went away before the database answered
        assert!(g.known_down(), "a cancelled probe proves nothing");
        let again = g.admit_at(t0 + PROBE_INTERVAL * 2).unwrap();
        assert!(again.is_probe());
        again.observe(&Err::<(), _>(sqlx::Error::RowNotFound));
        drop(again);
        assert!(
            g.known_down(),
            "a query error says nothing about the server"
        );

        let up = gate(None);
        up.admit_at(t0)
            .unwrap()
            .observe(&Err::<(), _>(sqlx::Error::RowNotFound));
        assert!(!up.known_down());
    }

    #[test]
    fn the_collector_flag_counts_after_a_failed_poll_until_ingestion_outlives_it() {
        let metrics = CollectorMetrics::default();
        let label = CollectorLabel {
            collector: "drafts".to_owned(),
        };
        let _ = metrics.errors.get_or_create(&label);
        let g = gate(Some(CollectorHealth::new(&metrics, ["drafts"])));
        let t0 = Instant::now();
        // Before any poll the gauge reads 0: that is not an outage.
        assert!(!g.known_down());
        assert!(!g.admit_at(t0).unwrap().is_probe());
        // A successful poll, then one that cannot reach the database.
        metrics.up.set(1);
        metrics.up.set(0);
        metrics.errors.get_or_create(&label).inc();
        assert!(g.known_down());
        assert!(refused(&g, t0), "known from the collector: refused at once");
        let probe = g.admit_at(t0 + PROBE_INTERVAL).unwrap();
        assert!(probe.is_probe());
        // The database is back before the collector polls again.
        probe.observe(&Ok::<_, sqlx::Error>(()));
        drop(probe);
        assert!(!g.known_down());
        assert!(!g.admit_at(t0 + PROBE_INTERVAL).unwrap().is_probe());
        // The collector catches up, then fails again: that is news.
        metrics.up.set(1);
        assert!(!g.known_down());
        assert!(g.admit_at(t0 + PROBE_INTERVAL).is_ok());
        metrics.up.set(0);
        assert!(g.known_down());
    }

    #[test]
    fn connection_errors_are_told_apart() {
        assert!(is_connection_error(&sqlx::Error::PoolTimedOut));
        assert!(is_connection_error(&sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset
        ))));
        assert!(!is_connection_error(&sqlx::Error::RowNotFound));
        assert!(!is_connection_error(&sqlx::Error::ColumnNotFound(
            "x".to_owned()
        )));
    }
}
