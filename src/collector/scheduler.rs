//! Runs each collector on its own interval and publishes its snapshots.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::Rng;
use sqlx::PgPool;

use super::transaction::collect_in_tx;
use super::{CollectContext, Collected, CollectorMetrics, OkrCollector, SnapshotStore};
use crate::backoff::Backoff;
use crate::config::Settings;

/// Why one collector run failed.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The database could not be reached.
    #[error("database unreachable: {0}")]
    Unreachable(sqlx::Error),
    /// A query failed (including its statement timeout).
    #[error("query failed: {0}")]
    Query(sqlx::Error),
    /// The run exceeded its deadline.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The run's task panicked or was cancelled.
    #[error("collector task failed: {0}")]
    Task(String),
}

impl CollectError {
    pub(crate) fn from_sqlx(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Protocol(_) => Self::Unreachable(e),
            other => Self::Query(other),
        }
    }
}

/// Runs the collectors on their intervals and publishes their snapshots.
#[derive(Clone)]
pub struct Scheduler {
    collectors: Vec<Arc<dyn OkrCollector>>,
    read_pool: PgPool,
    write_pool: PgPool,
    settings: Arc<Settings>,
    store: Arc<SnapshotStore>,
    metrics: CollectorMetrics,
}

impl Scheduler {
    /// A scheduler over those of `collectors` that `settings` enables
    /// ([`Settings::collector_enabled`]); reads go to `read_pool`, rollup
    /// writes to `write_pool`. A disabled collector never runs and has no
    /// series, its self-metrics included.
    pub fn new(
        collectors: Vec<Arc<dyn OkrCollector>>,
        read_pool: PgPool,
        write_pool: PgPool,
        settings: Arc<Settings>,
        store: Arc<SnapshotStore>,
        metrics: CollectorMetrics,
    ) -> Self {
        let collectors = collectors
            .into_iter()
            .filter(|c| settings.collector_enabled(c.name()))
            .collect();
        let me = Self {
            collectors,
            read_pool,
            write_pool,
            settings,
            store,
            metrics,
        };
        for c in &me.collectors {
            let label = CollectorMetrics::label(c.name());
            // Counters exist at 0 from the start, so rates and "no errors"
            // read 0 rather than no data.
            let _ = me.metrics.runs.get_or_create(&label);
            let _ = me.metrics.errors.get_or_create(&label);
            if c.reconciles() {
                let _ = me.metrics.corrections.get_or_create(&label);
            }
            me.metrics
                .interval
                .get_or_create(&label)
                .set(me.interval_of(c.as_ref()).as_secs_f64());
            me.metrics
                .max_staleness
                .get_or_create(&label)
                .set(me.max_age_of(c.as_ref()).as_secs_f64());
        }
        me
    }

    /// The collectors this scheduler runs (their state persists across runs).
    pub fn collectors(&self) -> &[Arc<dyn OkrCollector>] {
        &self.collectors
    }

    /// Interval of one collector: configuration override, else the
    /// collector's own default, else the global interval.
    pub fn interval_of(&self, c: &dyn OkrCollector) -> Duration {
        self.settings
            .collector_intervals
            .get(c.name())
            .copied()
            .or_else(|| {
                c.default_interval()
                    .map(|d| d.max(self.settings.collect_interval))
            })
            .unwrap_or(self.settings.collect_interval)
    }

    /// How long one collector's last good values are served: the staleness
    /// limit, stretched for collectors that run less often than that.
    pub fn max_age_of(&self, c: &dyn OkrCollector) -> Duration {
        self.settings.max_staleness.max(self.interval_of(c) * 3)
    }

    /// Runs every collector forever, each in its own loop on its own task:
    /// one collector decoding a large result (tens of milliseconds at 1M
    /// follow-ups) neither delays the others' polling nor keeps them all on
    /// one worker thread. Dropping or aborting this future stops them all.
    pub async fn run(self) {
        let mut loops = tokio::task::JoinSet::new();
        let mut by_task = HashMap::new();
        for c in self.collectors.clone() {
            self.spawn_loop(&mut loops, &mut by_task, c);
        }
        while let Some(ended) = loops.join_next_with_id().await {
            // A loop only ends by panicking (a bug): log it and start that
            // collector again rather than leave its gauges to go stale.
            let Err(e) = ended else { continue };
            if let Some(c) = by_task.remove(&e.id()) {
                tracing::error!(collector = c.name(), error = %e, "collector loop stopped; restarting it");
                self.spawn_loop(&mut loops, &mut by_task, c);
            }
        }
    }

    fn spawn_loop(
        &self,
        loops: &mut tokio::task::JoinSet<()>,
        by_task: &mut HashMap<tokio::task::Id, Arc<dyn OkrCollector>>,
        c: Arc<dyn OkrCollector>,
    ) {
        let me = self.clone();
        let looped = Arc::clone(&c);
        let id = loops.spawn(async move { me.run_loop(looped).await }).id();
        by_task.insert(id, c);
    }

    async fn run_loop(&self, c: Arc<dyn OkrCollector>) {
        let interval = self.interval_of(c.as_ref());
        // Jitter the first poll so replicas (and collectors) do not hit the
        // database in lockstep.
        let max_jitter = (interval / 10).min(Duration::from_secs(2));
        let jitter = rand::rng().random_range(0..=max_jitter.as_millis() as u64);
        tokio::time::sleep(Duration::from_millis(jitter)).await;
        // Retries after a failure are jittered too (and capped at the
        // interval), so replicas do not all hit a recovering database at the
        // same instant.
        let mut backoff = Backoff::new(Duration::from_secs(1), interval);
        loop {
            let started = Instant::now();
            let result = self.run_one(c.as_ref(), Utc::now()).await;
            let wait = match result {
                Err(CollectError::Unreachable(_)) | Err(CollectError::Timeout(_)) => {
                    backoff.next_delay()
                }
                _ => {
                    backoff.reset();
                    interval
                }
            };
            tokio::time::sleep(wait.saturating_sub(started.elapsed())).await;
        }
    }

    /// Runs every collector once, concurrently, at `now` (tests, start-up).
    pub async fn run_all_once(
        &self,
        now: DateTime<Utc>,
    ) -> Vec<(&'static str, Result<(), CollectError>)> {
        self.run_concurrently(&self.collectors, now).await
    }

    /// Runs `collectors` once, concurrently, each on its own task as
    /// [`run`](Self::run) does, and returns their outcomes in order.
    pub async fn run_concurrently(
        &self,
        collectors: &[Arc<dyn OkrCollector>],
        now: DateTime<Utc>,
    ) -> Vec<(&'static str, Result<(), CollectError>)> {
        // A JoinSet: dropping this future (a caller's timeout) aborts the
        // runs instead of leaving them holding connections.
        let mut runs = tokio::task::JoinSet::new();
        let mut position = HashMap::new();
        for (i, c) in collectors.iter().enumerate() {
            let (me, c) = (self.clone(), Arc::clone(c));
            let id = runs
                .spawn(async move { me.run_one(c.as_ref(), now).await.map(|_| ()) })
                .id();
            position.insert(id, i);
        }
        let mut out: Vec<_> = collectors
            .iter()
            .map(|c| (c.name(), Err(CollectError::Task("not run".to_owned()))))
            .collect();
        while let Some(ended) = runs.join_next_with_id().await {
            let (id, result) = match ended {
                Ok((id, result)) => (id, result),
                Err(e) => (e.id(), Err(CollectError::Task(e.to_string()))),
            };
            if let Some(slot) = position.get(&id).and_then(|&i| out.get_mut(i)) {
                slot.1 = result;
            }
        }
        out
    }

    /// Runs one collector once and records the outcome.
    pub async fn run_one(
        &self,
        c: &dyn OkrCollector,
        now: DateTime<Utc>,
    ) -> Result<usize, CollectError> {
        let label = CollectorMetrics::label(c.name());
        let started = Instant::now();
        let ctx = CollectContext::new(now, &self.settings);
        let pool = if c.writes() {
            &self.write_pool
        } else {
            &self.read_pool
        };
        let timeout = self.settings.query_timeout;
        // The statement timeout cancels a slow query in the server; this
        // deadline also covers connecting and a server that does not answer.
        let deadline = timeout + timeout / 2 + Duration::from_secs(1);
        let result =
            match tokio::time::timeout(deadline, collect_in_tx(c, pool, &ctx, timeout)).await {
                Ok(r) => r,
                Err(_) => Err(CollectError::Timeout(deadline)),
            };
        self.metrics.runs.get_or_create(&label).inc();
        self.metrics
            .duration
            .get_or_create(&label)
            .set(started.elapsed().as_secs_f64());
        match result {
            Ok(Collected {
                families,
                corrections,
            }) => {
                let n = families.len();
                if corrections > 0 {
                    self.metrics
                        .corrections
                        .get_or_create(&label)
                        .inc_by(corrections);
                    tracing::warn!(
                        collector = c.name(),
                        series = corrections,
                        "reconciliation corrected incremental state"
                    );
                }
                self.metrics.up.set(1);
                self.metrics
                    .last_success
                    .get_or_create(&label)
                    .set(Utc::now().timestamp_micros() as f64 / 1e6);
                self.store
                    .publish(c.name(), families, self.interval_of(c), self.max_age_of(c));
                Ok(n)
            }
            Err(e) => {
                // A run that timed out as a whole got no answer from the
                // server: the poll did not reach the database.
                if matches!(e, CollectError::Unreachable(_) | CollectError::Timeout(_)) {
                    self.metrics.up.set(0);
                } else {
                    self.metrics.up.set(1);
                }
                self.metrics.errors.get_or_create(&label).inc();
                tracing::warn!(collector = c.name(), error = %e, "collection failed");
                Err(e)
            }
        }
    }
}
