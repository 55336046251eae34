//! Verification of the incremental collectors' state (DESIGN §7).
//!
//! `engagement` and `mobile` update their state from the sessions above an
//! id watermark ([`watermark`](super::watermark)). That misses rows the data
//! contract allows: sessions inserted with ids below the watermark (cached
//! sequences, imports with explicit ids), updated sessions (a device type
//! fixed in place) and deleted ones (privacy erasure). So the state is never
//! trusted for long: every `--reconcile-interval` (and as soon as the
//! statistics views record an update or delete on `analytics_sessions`) a
//! run recomputes everything, serves the full result, and counts the series
//! the incremental state had wrong.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::Families;

/// When a collector last recomputed fully, and what the statistics views
/// said then.
#[derive(Debug, Clone, Default)]
pub struct ReconcileClock {
    last_full: Option<DateTime<Utc>>,
    modifications: Option<i64>,
}

/// Why a run recomputes fully.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullReason {
    /// No usable incremental state (first run, no watermark, clock went back).
    NoState,
    /// `--reconcile-interval` is zero: every run is full.
    Always,
    /// The reconcile interval has passed since the last full run.
    Due,
    /// The statistics views recorded updates or deletes since the last run.
    Modified,
}

impl FullReason {
    /// Whether the run has an incremental result to verify.
    pub fn verifies(self) -> bool {
        matches!(self, Self::Due | Self::Modified)
    }
}

impl ReconcileClock {
    /// Whether the run at `now` must recompute fully, and why; `None` when
    /// the incremental path may serve it. `has_state` says whether an
    /// incremental update is possible at all; `modifications` is the
    /// statistics views' count of updated and deleted sessions, if known.
    pub fn full_reason(
        &self,
        now: DateTime<Utc>,
        interval: Duration,
        has_state: bool,
        modifications: Option<i64>,
    ) -> Option<FullReason> {
        if interval.is_zero() {
            return Some(FullReason::Always);
        }
        let Some(last) = self.last_full.filter(|_| has_state) else {
            return Some(FullReason::NoState);
        };
        if now < last {
            return Some(FullReason::NoState);
        }
        if let (Some(before), Some(seen)) = (self.modifications, modifications)
            && seen != before
        {
            return Some(FullReason::Modified);
        }
        let elapsed = (now - last).to_std().unwrap_or(Duration::ZERO);
        (elapsed >= interval).then_some(FullReason::Due)
    }

    /// Records a successful run (`full`: it recomputed everything).
    pub fn record(&mut self, now: DateTime<Utc>, full: bool, modifications: Option<i64>) {
        if full {
            self.last_full = Some(now);
        }
        self.modifications = modifications;
    }
}

/// The number of series that differ between two results of one collector:
/// present in one only, or with another value.
pub fn corrections(incremental: &Families, full: &Families) -> u64 {
    /// A series: metric name and sorted label pairs.
    type Key<'a> = (&'a str, Vec<(&'a str, &'a str)>);
    fn index(families: &Families) -> HashMap<Key<'_>, f64> {
        let mut m = HashMap::new();
        for f in families {
            for (mut labels, value) in f.series() {
                labels.sort_unstable();
                m.insert((f.name(), labels), value);
            }
        }
        m
    }
    let (a, b) = (index(incremental), index(full));
    let changed = a
        .iter()
        .filter(|(k, v)| b.get(*k).is_none_or(|w| w != *v))
        .count();
    let added = b.keys().filter(|k| !a.contains_key(*k)).count();
    (changed + added) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::Family;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap_or_default()
    }

    #[test]
    fn full_runs_come_when_due_modified_or_without_state() {
        let five = Duration::from_secs(300);
        let mut c = ReconcileClock::default();
        assert_eq!(
            c.full_reason(at(0), five, true, Some(0)),
            Some(FullReason::NoState)
        );
        c.record(at(0), true, Some(0));
        assert_eq!(c.full_reason(at(60), five, true, Some(0)), None);
        assert_eq!(
            c.full_reason(at(60), five, false, Some(0)),
            Some(FullReason::NoState)
        );
        assert_eq!(
            c.full_reason(at(60), five, true, Some(3)),
            Some(FullReason::Modified)
        );
        // Statistics unavailable: only the interval decides.
        assert_eq!(c.full_reason(at(60), five, true, None), None);
        assert_eq!(
            c.full_reason(at(300), five, true, Some(0)),
            Some(FullReason::Due)
        );
        assert_eq!(
            c.full_reason(at(-1), five, true, Some(0)),
            Some(FullReason::NoState)
        );
        assert_eq!(
            c.full_reason(at(60), Duration::ZERO, true, Some(0)),
            Some(FullReason::Always)
        );
        c.record(at(60), false, Some(3));
        assert_eq!(c.full_reason(at(120), five, true, Some(3)), None);
        assert!(FullReason::Due.verifies() && FullReason::Modified.verifies());
        assert!(!FullReason::Always.verifies() && !FullReason::NoState.verifies());
    }

    #[test]
    fn corrections_count_changed_missing_and_extra_series() {
        let fam = |samples: &[(&str, f64)]| {
            let mut f = Family::new("okr_views", "");
            for (w, v) in samples {
                f.push_window(w, *v);
            }
            vec![f.boxed()]
        };
        let inc = fam(&[("1d", 1.0), ("7d", 2.0), ("30d", 3.0)]);
        assert_eq!(corrections(&inc, &inc), 0);
        assert_eq!(corrections(&inc, &fam(&[("1d", 1.0), ("7d", 2.5)])), 2);
        assert_eq!(
            corrections(&fam(&[("1d", 1.0)]), &fam(&[("1d", 1.0), ("7d", 0.0)])),
            1
        );
    }
}
