//! The OKR collector: polls PostgreSQL in the background and turns the
//! product's tables into gauges (DESIGN §4, §7).
//!
//! One file per OKR family, each a small type implementing [`OkrCollector`]
//! and listed once in [`registry::COLLECTORS`], where it can be turned off
//! (`--no-collector.NAME`). The [`Scheduler`] (`scheduler.rs`) runs each
//! enabled one on its own interval (first run jittered, never two runs of
//! one collector at once), inside a transaction with its own statement
//! timeout (`transaction.rs`), so one slow or failing query never blanks or
//! delays the others. A run's result replaces that collector's
//! [`SnapshotStore`] entry; a failure is counted ([`CollectorMetrics`]) and
//! never stored as a value, and values older than the staleness limit are
//! dropped.

mod adoption;
mod creation_time;
mod decode;
mod drafts;
mod engagement;
pub mod history;
mod intern;
mod inventory;
pub mod labels;
mod mobile;
mod next_action;
mod pg_time;
pub mod reconcile;
pub mod registry;
mod rollups;
mod scheduler;
mod self_metrics;
mod snapshot;
mod targets;
mod transaction;
pub mod watermark;

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use futures_util::future::BoxFuture;
use sqlx::PgConnection;

pub use adoption::AdoptionCollector;
pub use creation_time::CreationTimeCollector;
pub(crate) use decode::RowDecoder;
pub(crate) use drafts::DraftCounts;
pub use drafts::DraftsCollector;
pub use engagement::EngagementCollector;
pub(crate) use engagement::Tally;
pub use inventory::InventoryCollector;
pub use mobile::MobileCollector;
pub(crate) use mobile::mobile_share;
pub use next_action::NextActionCollector;
pub use registry::all_collectors;
pub use rollups::{ROLLUP_LOCK_KEY, RollupCollector, rollup_start};
pub use scheduler::{CollectError, Scheduler};
pub use self_metrics::{CollectorLabel, CollectorMetrics};
pub use snapshot::{Families, Family, GaugeFamily, Sample, SnapshotStore};
pub use targets::register_targets;

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
#[derive(Debug, Default)]
pub struct Collected {
    /// The gauge families to serve, each typed by its label set.
    pub families: Families,
    /// Series a reconciliation found wrong in the incremental state (and
    /// served from the full computation instead).
    pub corrections: u64,
}

impl From<Families> for Collected {
    fn from(families: Families) -> Self {
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

/// Ratio `num / den`, or `None` (an absent series) when `den` is zero.
pub fn ratio(num: i64, den: i64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}
