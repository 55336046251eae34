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
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder};
use prometheus_client::metrics::MetricType;

use super::labels::{LabelPairs, LabelSet, WindowLabels};

/// One gauge sample: its typed labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<L> {
    /// The labels; values are escaped by the encoder.
    pub labels: L,
    /// The value.
    pub value: f64,
}

/// A gauge family produced by one collector, its label set typed by `L`.
#[derive(Debug, Clone, PartialEq)]
pub struct Family<L> {
    /// Metric name.
    pub name: &'static str,
    /// What it measures and its SQL source, in a few words.
    pub help: &'static str,
    /// Samples; an empty family is not written at all.
    pub samples: Vec<Sample<L>>,
}

impl<L: LabelSet> Family<L> {
    /// An empty family.
    pub fn new(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            samples: Vec::new(),
        }
    }

    /// Adds a sample.
    pub fn push(&mut self, labels: L, value: f64) {
        self.samples.push(Sample { labels, value });
    }

    /// The family as the store and the reconciliation hold it.
    pub fn boxed(self) -> Box<dyn GaugeFamily> {
        Box::new(self)
    }
}

impl Family<WindowLabels> {
    /// Adds a sample labelled with a window only.
    pub fn push_window(&mut self, window: &str, value: f64) {
        self.push(WindowLabels::new(window), value);
    }
}

/// The families of one collector run, each typed by its label set.
pub type Families = Vec<Box<dyn GaugeFamily>>;

/// A gauge family of any label set, as the [`SnapshotStore`] serves it.
pub trait GaugeFamily: std::fmt::Debug + Send + Sync {
    /// Metric name.
    fn name(&self) -> &'static str;
    /// What it measures and its SQL source, in a few words.
    fn help(&self) -> &'static str;
    /// Whether it has no sample.
    fn is_empty(&self) -> bool;
    /// Every sample: its label pairs (in exposition order) and value.
    fn series(&self) -> Vec<(LabelPairs<'_>, f64)>;
    /// The value of the sample whose labels are exactly `labels`, if any.
    fn get(&self, labels: &[(&str, &str)]) -> Option<f64>;
    /// Encodes every sample as a gauge of the metric being written.
    fn encode_samples(&self, metric: &mut MetricEncoder<'_>) -> Result<(), std::fmt::Error>;
}

impl<L: LabelSet> GaugeFamily for Family<L> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn help(&self) -> &'static str {
        self.help
    }

    fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    fn series(&self) -> Vec<(LabelPairs<'_>, f64)> {
        self.samples
            .iter()
            .map(|s| (s.labels.pairs(), s.value))
            .collect()
    }

    fn get(&self, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.labels.matches(labels))
            .map(|s| s.value)
    }

    fn encode_samples(&self, metric: &mut MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        for sample in &self.samples {
            metric
                .encode_family(&sample.labels)?
                .encode_gauge(&sample.value)?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Snapshot {
    families: Arc<Families>,
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
        families: Families,
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
    pub fn fresh(&self) -> Vec<(Arc<Families>, Duration)> {
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
            .filter(|f| f.name() == name)
            .find_map(|f| f.get(labels))
    }
}

impl Collector for SnapshotStore {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (families, interval) in self.fresh() {
            let every = humantime::format_duration(interval);
            for family in families.iter().filter(|f| !f.is_empty()) {
                let help = format!(
                    "{} Refreshed every {every} by background collection.",
                    family.help()
                );
                let mut metric =
                    encoder.encode_descriptor(family.name(), &help, None, MetricType::Gauge)?;
                family.encode_samples(&mut metric)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::labels::WindowCompany;
    use prometheus_client::registry::Registry;

    #[test]
    fn serves_fresh_snapshots_and_drops_stale_ones() {
        let store = Arc::new(SnapshotStore::default());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Arc::clone(&store)));
        let mut fam = Family::new("okr_test_ratio", "A test ratio.");
        fam.push_window("7d", 0.5);
        let mut by_company = Family::new("okr_test_by_company_ratio", "A test ratio.");
        by_company.push(WindowCompany::new("7d", "A \"quoted\"\nname"), 0.25);
        store.publish(
            "t",
            vec![fam.boxed(), by_company.boxed()],
            Duration::from_secs(60),
            Duration::from_secs(60),
        );
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(out.contains("okr_test_ratio{window=\"7d\"} 0.5"), "{out}");
        assert!(
            out.contains(
                r#"okr_test_by_company_ratio{window="7d",company="A \"quoted\"\nname"} 0.25"#
            ),
            "{out}"
        );
        assert_eq!(
            store.value("okr_test_ratio", &[("window", "7d")]),
            Some(0.5)
        );
        assert_eq!(
            store.value(
                "okr_test_by_company_ratio",
                &[("company", "A \"quoted\"\nname"), ("window", "7d")]
            ),
            Some(0.25)
        );
        assert_eq!(store.value("okr_test_ratio", &[("window", "1d")]), None);
        assert!(out.contains("Refreshed every 1m"), "{out}");

        store.publish("t", vec![], Duration::from_secs(60), Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(!out.contains("okr_test_ratio"), "{out}");
    }

    #[test]
    fn typed_labels_encode_as_their_label_pairs() {
        use crate::collector::labels::*;
        use prometheus_client::encoding::text::encode;
        use prometheus_client::metrics::family::Family as ClientFamily;
        use prometheus_client::metrics::gauge::Gauge;

        /// The exposition of one gauge family under `labels`, typed and as
        /// the plain label pairs it had before the label sets were typed.
        fn both<L: LabelSet>(labels: L) -> (String, String) {
            let store = Arc::new(SnapshotStore::default());
            let mut typed = Registry::default();
            typed.register_collector(Box::new(Arc::clone(&store)));
            let mut fam = Family::new("okr_x", "X.");
            fam.push(labels.clone(), 0.5);
            store.publish(
                "t",
                vec![fam.boxed()],
                Duration::from_secs(60),
                Duration::from_secs(60),
            );
            let pairs: Vec<(String, String)> = labels
                .pairs()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            let plain_family = ClientFamily::<
                Vec<(String, String)>,
                Gauge<f64, std::sync::atomic::AtomicU64>,
            >::default();
            plain_family.get_or_create(&pairs).set(0.5);
            let mut plain = Registry::default();
            plain.register(
                "okr_x",
                "X. Refreshed every 1m by background collection",
                plain_family,
            );
            let (mut a, mut b) = (String::new(), String::new());
            encode(&mut a, &typed).unwrap_or_default();
            encode(&mut b, &plain).unwrap_or_default();
            (a, b)
        }
        let odd = "a \"b\"\nc\\d";
        for (a, b) in [
            both(WindowLabels::new("7d")),
            both(WindowQuantile::new("7d", "0.8")),
            both(WindowOutcome::new("1d", "open")),
            both(WindowDevice::new("30d", "mobile")),
            both(WindowMeetingType::new("7d", odd)),
            both(WindowCreatorRegion::new("7d", odd)),
            both(WindowCompany::new("7d", odd)),
            both(StatusLabels::new("draft")),
            both(NoLabels),
        ] {
            assert_eq!(a, b);
            assert!(a.contains("okr_x"), "{a}");
        }
    }
}
