//! OKR targets and alert floors from the configuration, exported once so
//! alert rules and dashboards compare against series, never literals.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::config::Targets;

/// Registers the `okr_target_*` and `okr_alert_floor_*` gauges.
pub fn register_targets(registry: &mut Registry, t: &Targets) {
    for (name, help, value) in target_gauges(t) {
        let g: Gauge<f64, AtomicU64> = Gauge::default();
        g.set(value);
        registry.register(name, help, g);
    }
}

/// Name, HELP and value of every target and alert-floor gauge.
pub(crate) fn target_gauges(t: &Targets) -> [(&'static str, &'static str, f64); 6] {
    [
        (
            "okr_target_creation_time_p80_seconds",
            "Target for the P80 follow-up creation time, seconds (configuration).",
            t.creation_time_p80_seconds,
        ),
        (
            "okr_target_draft_completion_ratio",
            "Target share of drafts that get published (configuration).",
            t.draft_completion_ratio,
        ),
        (
            "okr_alert_floor_draft_completion_ratio",
            "Draft completion ratio below which the alert fires (configuration).",
            t.draft_completion_alert_floor_ratio,
        ),
        (
            "okr_target_engagement_ratio",
            "Target unique visitors per published follow-up (configuration).",
            t.engagement_ratio,
        ),
        (
            "okr_target_mobile_views_ratio",
            "Target share of sessions on mobile devices (configuration).",
            t.mobile_views_ratio,
        ),
        (
            "okr_target_time_to_next_action_avg_seconds",
            "Target mean time from publish to next action, seconds (configuration).",
            t.time_to_next_action_avg_seconds,
        ),
    ]
}
