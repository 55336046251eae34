//! The OKR collector: polls PostgreSQL in the background and turns the
//! product's tables into gauges (DESIGN §4, §7).
//!
//! One file per OKR family, each a small type implementing [`OkrCollector`]
//! and listed once in [`all_collectors`]. The [`Scheduler`] runs each on its
//! own interval (first run jittered, never two runs of one collector at
//! once), inside a read-only transaction with its own statement timeout, so
//! one slow or failing query never blanks or delays the others. A run's
//! result replaces that collector's [`SnapshotStore`] entry; a failure is
//! counted and never stored as a value, and values older than the staleness
//! limit are dropped.

mod adoption;
mod creation_time;
mod drafts;
mod engagement;
pub mod history;
mod intern;
mod inventory;
mod mobile;
mod next_action;
mod pg_time;
pub mod reconcile;
mod rollups;
mod snapshot;
mod targets;
pub mod watermark;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use futures_util::future::BoxFuture;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family as MetricFamily;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rand::Rng;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Postgres, Row};

pub use adoption::AdoptionCollector;
pub use creation_time::CreationTimeCollector;
pub(crate) use drafts::DraftCounts;
pub use drafts::DraftsCollector;
pub use engagement::EngagementCollector;
pub(crate) use engagement::Tally;
pub use inventory::InventoryCollector;
pub use mobile::MobileCollector;
pub(crate) use mobile::mobile_share;
pub use next_action::NextActionCollector;
pub use rollups::{ROLLUP_LOCK_KEY, RollupCollector, rollup_start};
pub use snapshot::{Family, Sample, SnapshotStore};
pub use targets::register_targets;

use crate::backoff::Backoff;
use crate::config::{Settings, Targets, Windows};

/// What a collector run needs besides its connection.
#[derive(Debug, Clone)]
pub struct CollectContext {
    /// "Now", taken once per run (microsecond precision, as PostgreSQL).
    pub now: DateTime<Utc>,
    /// Rolling windows.
    pub windows: Windows,
    /// Targets (for the within-target ratio).
    pub targets: Targets,
    /// Companies broken out in the engagement breakdown.
    pub company_top_n: usize,
    /// How often incremental collectors recompute fully (zero: every run).
    pub reconcile_interval: Duration,
}

impl CollectContext {
    /// A context for `now` (truncated to microseconds) and `settings`.
    pub fn new(now: DateTime<Utc>, settings: &Settings) -> Self {
        Self {
            now: now.trunc_subsecs(6),
            windows: settings.windows.clone(),
            targets: settings.targets.clone(),
            company_top_n: settings.company_top_n,
            reconcile_interval: settings.reconcile_interval,
        }
    }

    /// `now − length`: a time t is in the window when start < t ≤ now.
    pub fn start_of(&self, length: Duration) -> DateTime<Utc> {
        chrono::Duration::from_std(length).map_or(DateTime::<Utc>::MIN_UTC, |d| self.now - d)
    }

    /// The start of every window, in window order.
    pub fn window_starts(&self) -> Vec<DateTime<Utc>> {
        self.windows
            .0
            .iter()
            .map(|w| self.start_of(w.duration))
            .collect()
    }

    /// Window labels and lengths in seconds, as SQL array parameters.
    pub fn window_params(&self) -> (Vec<String>, Vec<f64>) {
        self.windows
            .0
            .iter()
            .map(|w| (w.label.clone(), w.duration.as_secs_f64()))
            .unzip()
    }
}

/// What one collector run produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Collected {
    /// The gauge families to serve.
    pub families: Vec<Family>,
    /// Series a reconciliation found wrong in the incremental state (and
    /// served from the full computation instead).
    pub corrections: u64,
}

impl From<Vec<Family>> for Collected {
    fn from(families: Vec<Family>) -> Self {
        Self {
            families,
            corrections: 0,
        }
    }
}

/// One OKR family's collector.
pub trait OkrCollector: Send + Sync + 'static {
    /// The `collector` label value and configuration key.
    fn name(&self) -> &'static str;

    /// Default interval when the configuration has no override (None: the
    /// global collection interval).
    fn default_interval(&self) -> Option<Duration> {
        None
    }

    /// Whether the collector writes (runs on the primary, not the read replica).
    fn writes(&self) -> bool {
        false
    }

    /// Whether the collector keeps incremental state that reconciliation
    /// verifies (it then reports [`Collected::corrections`]).
    fn reconciles(&self) -> bool {
        false
    }

    /// Runs the collector's queries on `conn` (inside a transaction whose
    /// statement timeout is already set) and returns its gauge families.
    fn collect<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        ctx: &'a CollectContext,
    ) -> BoxFuture<'a, Result<Collected, sqlx::Error>>;
}

/// Every collector, in the order they are listed on `/metrics`.
pub fn all_collectors() -> Vec<Arc<dyn OkrCollector>> {
    vec![
        Arc::new(CreationTimeCollector),
        Arc::new(DraftsCollector),
        Arc::new(EngagementCollector::default()),
        Arc::new(NextActionCollector),
        Arc::new(MobileCollector::default()),
        Arc::new(AdoptionCollector),
        Arc::new(InventoryCollector),
        Arc::new(RollupCollector),
    ]
}

/// Label set `{collector}` of the exporter's own metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CollectorLabel {
    /// Collector name.
    pub collector: String,
}

/// The exporter's self-metrics about collection (`okr_exporter_*`).
#[derive(Debug, Clone, Default)]
pub struct CollectorMetrics {
    /// Duration of the last run.
    pub duration: MetricFamily<CollectorLabel, Gauge<f64, AtomicU64>>,
    /// Runs.
    pub runs: MetricFamily<CollectorLabel, Counter>,
    /// Failed runs.
    pub errors: MetricFamily<CollectorLabel, Counter>,
    /// Unix time of the last success.
    pub last_success: MetricFamily<CollectorLabel, Gauge<f64, AtomicU64>>,
    /// 1 if the last poll reached the database.
    pub up: Gauge<i64, AtomicI64>,
    /// Configured interval of each collector.
    pub interval: MetricFamily<CollectorLabel, Gauge<f64, AtomicU64>>,
    /// Age after which a collector's last good values are dropped.
    pub max_staleness: MetricFamily<CollectorLabel, Gauge<f64, AtomicU64>>,
    /// Series a reconciliation corrected in an incremental collector's state.
    pub corrections: MetricFamily<CollectorLabel, Counter>,
}

impl CollectorMetrics {
    /// Registers the self-metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "okr_exporter_collection_duration_seconds",
            "Duration of the collector's last run, in seconds.",
            m.duration.clone(),
        );
        registry.register(
            "okr_exporter_collections",
            "Collector runs since start.",
            m.runs.clone(),
        );
        registry.register(
            "okr_exporter_collection_errors",
            "Collector runs that failed since start (the failure is never served as a value).",
            m.errors.clone(),
        );
        registry.register(
            "okr_exporter_last_success_timestamp_seconds",
            "Unix time of the collector's last successful run.",
            m.last_success.clone(),
        );
        registry.register(
            "okr_exporter_collection_interval_seconds",
            "Configured interval between two runs of the collector, in seconds.",
            m.interval.clone(),
        );
        registry.register(
            "okr_exporter_max_staleness_seconds",
            "Age in seconds after which the collector's last good values are dropped from /metrics.",
            m.max_staleness.clone(),
        );
        registry.register(
            "okr_exporter_reconcile_corrections",
            "Series an incremental collector had wrong and a full recomputation corrected \
             (rows the incremental reads cannot see: low ids, updates, deletes).",
            m.corrections.clone(),
        );
        registry.register(
            "okr_exporter_up",
            "1 if the last poll reached the database, 0 otherwise.",
            m.up.clone(),
        );
        m
    }

    fn label(name: &str) -> CollectorLabel {
        CollectorLabel {
            collector: name.to_owned(),
        }
    }
}

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
    fn from_sqlx(e: sqlx::Error) -> Self {
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
    /// A scheduler over `collectors`; reads go to `read_pool`, rollup writes
    /// to `write_pool`.
    pub fn new(
        collectors: Vec<Arc<dyn OkrCollector>>,
        read_pool: PgPool,
        write_pool: PgPool,
        settings: Arc<Settings>,
        store: Arc<SnapshotStore>,
        metrics: CollectorMetrics,
    ) -> Self {
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
        let mut by_task = std::collections::HashMap::new();
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
        by_task: &mut std::collections::HashMap<tokio::task::Id, Arc<dyn OkrCollector>>,
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
        let mut position = std::collections::HashMap::new();
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

async fn collect_in_tx(
    c: &dyn OkrCollector,
    pool: &PgPool,
    ctx: &CollectContext,
    timeout: Duration,
) -> Result<Collected, CollectError> {
    // A stopped server refuses connections at once, but the pool keeps
    // retrying until its own acquire timeout: bound the wait by the query
    // timeout so an outage shows within one interval.
    let mut conn = match tokio::time::timeout(timeout, pool.acquire()).await {
        Ok(conn) => conn.map_err(CollectError::from_sqlx)?,
        Err(_) => return Err(CollectError::Unreachable(sqlx::Error::PoolTimedOut)),
    };
    // Readers see one snapshot across their statements; the rollup writer
    // reads committed rows after taking its lock, so it never trips over a
    // row another replica wrote just before.
    let mode = if c.writes() {
        "READ COMMITTED, READ WRITE"
    } else {
        "REPEATABLE READ, READ ONLY"
    };
    // Only our own constants and an integer are formatted in. JIT is off:
    // compiling these short range queries costs more than running them
    // (measured: ~150 ms of a 365 ms engagement query at 100k follow-ups).
    // A larger work_mem keeps the distinct-visitor aggregation in memory
    // (4 MB spilled ~17 MB to disk at 1M follow-ups). Custom plans: a
    // generic plan cannot tell `id > $1` (a few new rows) from a scan of
    // the whole table, and chose the latter.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "BEGIN ISOLATION LEVEL {mode}; SET LOCAL statement_timeout = {}; SET LOCAL jit = off; SET LOCAL work_mem = '64MB'; SET LOCAL plan_cache_mode = force_custom_plan",
        timeout.as_millis().max(1)
    )))
    .execute(&mut *conn)
    .await
    .map_err(CollectError::from_sqlx)?;
    match c.collect(&mut conn, ctx).await {
        Ok(families) => {
            sqlx::query("COMMIT")
                .execute(&mut *conn)
                .await
                .map_err(CollectError::from_sqlx)?;
            Ok(families)
        }
        Err(e) => {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            Err(CollectError::from_sqlx(e))
        }
    }
}

/// Ratio `num / den`, or `None` (an absent series) when `den` is zero.
pub fn ratio(num: i64, den: i64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// Decodes the columns of a large result, checking their types against the
/// Rust types on the first row only: every row of a result has the same
/// column types, and the per-value check was ~20 % of decoding the 34k rows
/// of engagement's F at 1M follow-ups (29 → 22 ms of CPU). The first row's
/// check reads the column's declared type, so a NULL there still checks it.
#[derive(Debug, Default)]
pub(crate) struct RowDecoder {
    checked: bool,
}

impl RowDecoder {
    /// Column `index` of `row` as `T`.
    pub(crate) fn get<'r, T>(&self, row: &'r PgRow, index: usize) -> Result<T, sqlx::Error>
    where
        T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
    {
        if self.checked {
            return row.try_get_unchecked(index);
        }
        if let Some(column) = row.columns().get(index) {
            let ty = sqlx::Column::type_info(column);
            if !T::compatible(ty) {
                return Err(sqlx::Error::ColumnDecode {
                    index: index.to_string(),
                    source: format!(
                        "mismatched types: the column is {ty}, {} was expected",
                        T::type_info()
                    )
                    .into(),
                });
            }
        }
        row.try_get(index)
    }

    /// Marks the first row as decoded: its column types matched.
    pub(crate) fn row_done(&mut self) {
        self.checked = true;
    }
}
