//! The list of collectors: the one place a new OKR family is registered.
//!
//! As in node_exporter, each collector lives in its own file and is listed
//! here once, with its name (the `collector` label, the configuration key
//! and the `--collector.NAME` / `--no-collector.NAME` flags), how to build
//! it, its history sweep for `backfill` and whether it runs when the
//! configuration says nothing. Adding an OKR family means adding its file
//! and one entry to [`COLLECTORS`].

use std::sync::Arc;

use super::history::Sweep;
use super::{
    AdoptionCollector, CreationTimeCollector, DraftsCollector, EngagementCollector,
    InventoryCollector, MobileCollector, NextActionCollector, OkrCollector, RollupCollector,
    adoption, creation_time, drafts, engagement, inventory, mobile, next_action,
};

/// One registered collector.
#[derive(Debug, Clone, Copy)]
pub struct Registration {
    /// The collector's name, as its [`OkrCollector::name`] returns it.
    pub name: &'static str,
    /// Whether it runs unless the configuration turns it off.
    pub enabled_by_default: bool,
    /// Builds a fresh collector (with empty incremental state).
    pub build: fn() -> Arc<dyn OkrCollector>,
    /// Its families' history for `backfill`, if it has one.
    pub history: Option<Sweep>,
}

/// Every collector, in the order they are listed on `/metrics`.
pub const COLLECTORS: [Registration; 8] = [
    register("creation_time", || Arc::new(CreationTimeCollector))
        .history(|c, h| Box::pin(creation_time::history(c, h))),
    register("drafts", || Arc::new(DraftsCollector))
        .history(|c, h| Box::pin(drafts::history(c, h))),
    register("engagement", || Arc::new(EngagementCollector::default()))
        .history(|c, h| Box::pin(engagement::history(c, h))),
    register("next_action", || Arc::new(NextActionCollector))
        .history(|c, h| Box::pin(next_action::history(c, h))),
    register("mobile", || Arc::new(MobileCollector::default()))
        .history(|c, h| Box::pin(mobile::history(c, h))),
    register("adoption", || Arc::new(AdoptionCollector))
        .history(|c, h| Box::pin(adoption::history(c, h))),
    register("inventory", || Arc::new(InventoryCollector))
        .history(|c, h| Box::pin(inventory::history(c, h))),
    // Writes the daily rollups: nothing of its own to backfill.
    register("rollups", || Arc::new(RollupCollector)),
];

/// A collector that runs by default and has no history (a collector off by
/// default: `Registration { enabled_by_default: false, ..register(…) }`).
const fn register(name: &'static str, build: fn() -> Arc<dyn OkrCollector>) -> Registration {
    Registration {
        name,
        enabled_by_default: true,
        build,
        history: None,
    }
}

impl Registration {
    /// The same collector, with its history sweep.
    const fn history(self, sweep: Sweep) -> Self {
        Self {
            history: Some(sweep),
            ..self
        }
    }
}

/// A fresh instance of every registered collector, enabled or not.
pub fn all_collectors() -> Vec<Arc<dyn OkrCollector>> {
    COLLECTORS.iter().map(|r| (r.build)()).collect()
}

/// The registered collector called `name`.
pub fn find(name: &str) -> Option<&'static Registration> {
    COLLECTORS.iter().find(|r| r.name == name)
}

/// The registered names, comma-separated (for error messages).
pub fn known_names() -> String {
    COLLECTORS
        .iter()
        .map(|r| r.name)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_registration_builds_the_collector_it_names() {
        for r in COLLECTORS {
            assert_eq!((r.build)().name(), r.name);
        }
        let mut names: Vec<_> = COLLECTORS.iter().map(|r| r.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), COLLECTORS.len(), "a name is registered twice");
    }
}
