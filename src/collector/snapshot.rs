//! The values a collector produced in its last successful run, and the
//! prometheus-client [`Collector`] that serves them until they go stale.
//!
//! A run replaces its collector's snapshot as a whole, so a scrape never sees
//! half of one run and half of another, a series that a run no longer
//! produces (an empty window) disappears at once, and a failed run leaves the
//! last good snapshot in place until it is older than the staleness limit.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

/// One gauge sample: label pairs and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Label name/value pairs; values are escaped by the encoder.
    pub labels: Vec<(&'static str, String)>,
    /// The value.
    pub value: f64,
}

/// A gauge family produced by one collector.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// Metric name.
    pub name: &'static str,
    /// What it measures and its SQL source, in a few words.
    pub help: &'static str,
    /// Samples; an empty family is not written at all.
    pub samples: Vec<Sample>,
}

impl Family {
    /// An empty family.
    pub fn new(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            samples: Vec::new(),
        }
    }

    /// Adds a sample.
    pub fn push(&mut self, labels: Vec<(&'static str, String)>, value: f64) {
        self.samples.push(Sample { labels, value });
    }

    /// Adds a sample labelled with a window only.
    pub fn push_window(&mut self, window: &str, value: f64) {
        self.push(vec![("window", window.to_owned())], value);
    }

    /// The value of the sample whose labels are exactly `labels`, if any.
    pub fn get(&self, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|s| s.value)
    }
}

#[derive(Debug)]
struct Snapshot {
    families: Arc<Vec<Family>>,
    taken_at: Instant,
    max_age: Duration,
    interval: Duration,
}

/// Last good snapshot of every collector; registered in the registry as a
/// prometheus-client [`Collector`].
#[derive(Debug, Default)]
pub struct SnapshotStore {
    snapshots: RwLock<BTreeMap<&'static str, Snapshot>>,
}

impl SnapshotStore {
    /// Replaces `collector`'s snapshot; it is served until `max_age` old.
    pub fn publish(
        &self,
        collector: &'static str,
        families: Vec<Family>,
        interval: Duration,
        max_age: Duration,
    ) {
        let snap = Snapshot {
            families: Arc::new(families),
            taken_at: Instant::now(),
            max_age,
            interval,
        };
        if let Ok(mut map) = self.snapshots.write() {
            map.insert(collector, snap);
        }
    }

    /// The fresh families of every collector, in collector order.
    pub fn fresh(&self) -> Vec<(Arc<Vec<Family>>, Duration)> {
        let Ok(map) = self.snapshots.read() else {
            return Vec::new();
        };
        map.values()
            .filter(|s| s.taken_at.elapsed() <= s.max_age)
            .map(|s| (Arc::clone(&s.families), s.interval))
            .collect()
    }

    /// The value of one fresh series, if present.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.fresh()
            .iter()
            .flat_map(|(fams, _)| fams.iter())
            .filter(|f| f.name == name)
            .find_map(|f| f.get(labels))
    }
}

impl Collector for SnapshotStore {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (families, interval) in self.fresh() {
            let every = humantime::format_duration(interval);
            for family in families.iter().filter(|f| !f.samples.is_empty()) {
                let help = format!(
                    "{} Refreshed every {every} by background collection.",
                    family.help
                );
                let mut metric =
                    encoder.encode_descriptor(family.name, &help, None, MetricType::Gauge)?;
                for sample in &family.samples {
                    let labels: &[(&'static str, String)] = &sample.labels;
                    metric.encode_family(&labels)?.encode_gauge(&sample.value)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn serves_fresh_snapshots_and_drops_stale_ones() {
        let store = Arc::new(SnapshotStore::default());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Arc::clone(&store)));
        let mut fam = Family::new("okr_test_ratio", "A test ratio.");
        fam.push_window("7d", 0.5);
        fam.push(
            vec![
                ("window", "7d".into()),
                ("company", "A \"quoted\"\nname".into()),
            ],
            0.25,
        );
        store.publish(
            "t",
            vec![fam],
            Duration::from_secs(60),
            Duration::from_secs(60),
        );
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(out.contains("okr_test_ratio{window=\"7d\"} 0.5"), "{out}");
        assert!(out.contains(r#"company="A \"quoted\"\nname""#), "{out}");
        assert!(out.contains("Refreshed every 1m"), "{out}");

        store.publish("t", vec![], Duration::from_secs(60), Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(!out.contains("okr_test_ratio"), "{out}");
    }
}
