//! Optional request log (`--request-log`): one `performance_metrics` row per
//! request of a service instrumented with [`HttpMetricsLayer`].
//!
//! The middleware hands each finished request to [`RequestLog`] (a
//! [`RequestSink`]), which only moves it into a bounded lock-free queue of
//! the recording thread's shard (threads do not contend on one queue's
//! tail): a full queue drops the row and counts it
//! (`okr_exporter_request_log_dropped_total`) instead of slowing requests.
//! Everything else happens in the writer task, off the request path: it
//! drains the queues every `flush_every` (a cross-thread wake per request
//! cost ~1.3 µs in the router benchmark, more than the whole middleware),
//! converts and inserts rows in batches, deletes rows older than the
//! retention, and drains what is queued on shutdown.
//!
//! [`HttpMetricsLayer`]: crate::http_metrics::HttpMetricsLayer

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use crossbeam_queue::ArrayQueue;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::http_metrics::{RequestRecord, RequestSink, ThreadSharded};

/// Default queue capacity (rows waiting to be written).
pub const DEFAULT_CAPACITY: usize = 10_000;
/// Default rows per INSERT.
pub const DEFAULT_BATCH: usize = 500;

const INSERT_SQL: &str = "
INSERT INTO performance_metrics (\"timestamp\", endpoint, method, response_time_ms, status_code, user_id)
SELECT * FROM UNNEST($1::timestamptz[], $2::text[], $3::text[], $4::float8[], $5::int4[], $6::text[])";

/// Per-thread queues of finished requests, sharded as the middleware's
/// counters are.
#[derive(Debug)]
struct Queues(ThreadSharded<Shard>);

/// One thread shard's queue and its drop count, on cache lines of its own:
/// a count shared by all threads cost ~40 ns per request with two threads
/// in the saturating layer benchmark (BENCHMARKS.md), where most pushes
/// find the queue full.
#[derive(Debug)]
#[repr(align(128))]
struct Shard {
    queue: ArrayQueue<RequestRecord>,
    dropped: AtomicU64,
}

impl Queues {
    /// `capacity` rows in all, split between the shards.
    fn new(capacity: usize) -> Self {
        let shards = ThreadSharded::<Shard>::shard_count();
        let each = capacity.div_ceil(shards).max(1);
        Self(ThreadSharded::new(|| Shard {
            queue: ArrayQueue::new(each),
            dropped: AtomicU64::new(0),
        }))
    }

    /// Rows dropped since the last call.
    fn take_dropped(&self) -> u64 {
        self.0
            .iter()
            .map(|s| s.dropped.swap(0, Ordering::Relaxed))
            .sum()
    }
}

/// The sink the middleware feeds.
#[derive(Debug)]
pub struct RequestLog {
    queues: Arc<Queues>,
}

impl RequestLog {
    #[inline]
    fn shard(&self) -> &Shard {
        self.queues.0.current()
    }
}

impl RequestSink for RequestLog {
    #[inline]
    fn accepts(&self) -> bool {
        let shard = self.shard();
        if shard.queue.is_full() {
            // Counted into okr_exporter_request_log_dropped_total by the
            // writer, at its next drain.
            shard.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    #[inline]
    fn record(&self, record: RequestRecord) {
        let shard = self.shard();
        if shard.queue.push(record).is_err() {
            shard.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Settings of the request log.
#[derive(Debug, Clone, Copy)]
pub struct RequestLogOptions {
    /// Queue capacity (rows in all; split between per-thread queues).
    pub capacity: usize,
    /// Rows per INSERT.
    pub batch: usize,
    /// How often the writer drains the queue.
    pub flush_every: Duration,
    /// Rows older than this are deleted.
    pub retention: Duration,
    /// How often old rows are deleted.
    pub prune_every: Duration,
}

impl Default for RequestLogOptions {
    fn default() -> Self {
        Self {
            capacity: DEFAULT_CAPACITY,
            batch: DEFAULT_BATCH,
            flush_every: Duration::from_millis(250),
            retention: Duration::from_secs(30 * 86_400),
            prune_every: Duration::from_secs(600),
        }
    }
}

/// The writer task; [`shutdown`](Self::shutdown) flushes and stops it.
#[derive(Debug)]
pub struct RequestLogWriter {
    stop: Arc<Notify>,
    task: JoinHandle<()>,
}

impl RequestLogWriter {
    /// Writes what is queued, then stops.
    pub async fn shutdown(self) {
        self.stop.notify_one();
        let _ = self.task.await;
    }
}

/// Starts the writer and returns the sink for the middleware. Registers
/// `okr_exporter_request_log_dropped_total` and
/// `okr_exporter_request_log_rows_total` in `registry`.
pub fn start(
    pool: PgPool,
    registry: &mut Registry,
    options: RequestLogOptions,
) -> (Arc<RequestLog>, RequestLogWriter) {
    let dropped = Counter::default();
    let written = Counter::default();
    registry.register(
        "okr_exporter_request_log_dropped",
        "Request-log rows dropped because the queue was full or the insert failed.",
        dropped.clone(),
    );
    registry.register(
        "okr_exporter_request_log_rows",
        "Request-log rows written to performance_metrics.",
        written.clone(),
    );
    let queues = Arc::new(Queues::new(options.capacity));
    let stop = Arc::new(Notify::new());
    let task = tokio::spawn(write_loop(
        pool,
        Arc::clone(&queues),
        Arc::clone(&stop),
        options,
        dropped,
        written,
    ));
    (
        Arc::new(RequestLog { queues }),
        RequestLogWriter { stop, task },
    )
}

async fn write_loop(
    pool: PgPool,
    queues: Arc<Queues>,
    stop: Arc<Notify>,
    options: RequestLogOptions,
    dropped: Counter,
    written: Counter,
) {
    let batch = options.batch.max(1);
    let mut buf: Vec<RequestRecord> = Vec::with_capacity(batch);
    let mut last_prune: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(options.flush_every.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            () = stop.notified() => true,
        };
        dropped.inc_by(queues.take_dropped());
        if last_prune.is_none_or(|t| t.elapsed() >= options.prune_every) {
            prune(&pool, options.retention).await;
            last_prune = Some(tokio::time::Instant::now());
        }
        // Drain what each queue holds now (rows arriving meanwhile wait for
        // the next tick, so a busy service cannot keep the writer here, nor
        // one busy thread's queue starve the others).
        let budgets: Vec<usize> = queues.0.iter().map(|s| s.queue.len()).collect();
        for (shard, budget) in queues.0.iter().zip(budgets) {
            for _ in 0..budget {
                let Some(row) = shard.queue.pop() else { break };
                buf.push(row);
                if buf.len() >= batch {
                    insert(&pool, &mut buf, &dropped, &written).await;
                }
            }
        }
        insert(&pool, &mut buf, &dropped, &written).await;
        if stopping {
            break;
        }
    }
}

async fn insert(pool: &PgPool, buf: &mut Vec<RequestRecord>, dropped: &Counter, written: &Counter) {
    if buf.is_empty() {
        return;
    }
    let n = buf.len() as u64;
    let mut at = Vec::with_capacity(buf.len());
    let mut route = Vec::with_capacity(buf.len());
    let mut method = Vec::with_capacity(buf.len());
    let mut ms = Vec::with_capacity(buf.len());
    let mut status = Vec::with_capacity(buf.len());
    let mut user = Vec::with_capacity(buf.len());
    for r in buf.drain(..) {
        at.push(DateTime::<Utc>::from(r.started_at));
        route.push(r.route.to_string());
        method.push(r.method.as_str().to_owned());
        ms.push(r.duration.as_secs_f64() * 1000.0);
        status.push(i32::from(r.status));
        user.push(r.user_id);
    }
    let result = sqlx::query(INSERT_SQL)
        .bind(at)
        .bind(route)
        .bind(method)
        .bind(ms)
        .bind(status)
        .bind(user)
        .execute(pool)
        .await;
    match result {
        Ok(_) => {
            written.inc_by(n);
        }
        Err(e) => {
            dropped.inc_by(n);
            // The batch is lost rather than retried: a failing database must
            // not grow the queue without bound.
            tracing::warn!(error = %e, rows = n, "request log insert failed; rows dropped");
        }
    }
}

async fn prune(pool: &PgPool, retention: Duration) {
    let cutoff = SystemTime::now()
        .checked_sub(retention)
        .map(DateTime::<Utc>::from)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    if let Err(e) = sqlx::query("DELETE FROM performance_metrics WHERE \"timestamp\" < $1")
        .bind(cutoff)
        .execute(pool)
        .await
    {
        tracing::debug!(error = %e, "request log retention delete failed");
    }
}
