//! How the demo's sellers and prospects behave: the distributions shared by
//! the backfilled history and the live traffic, tuned so every OKR sits
//! near its target (creation P80 ≈ 570 s, ~84 % of drafts published,
//! ~0.47 unique visitors per follow-up, ~44 % mobile sessions).

use rand::Rng;

/// Sales regions of the creators; `None` is a creator without one.
pub const REGIONS: [(Option<&str>, f64); 5] = [
    (Some("EMEA"), 0.35),
    (Some("NA"), 0.30),
    (Some("APAC"), 0.18),
    (Some("LATAM"), 0.10),
    (None, 0.07),
];

/// Meeting types with their share of follow-ups and their engagement
/// multiplier (a negotiation recap is read more than a discovery note).
/// `None` and `""` are follow-ups whose type was never set.
pub const MEETING_TYPES: [(Option<&str>, f64, f64); 6] = [
    (Some("discovery"), 0.35, 0.80),
    (Some("demo"), 0.30, 1.10),
    (Some("negotiation"), 0.15, 1.35),
    (Some("renewal"), 0.12, 0.95),
    (None, 0.05, 0.90),
    (Some(""), 0.03, 0.90),
];

/// Prospect companies, most frequent first (their share falls off like a
/// Zipf law, see [`company`]).
pub const COMPANIES: [&str; 25] = [
    "Acme Corp",
    "Globex",
    "Initech",
    "Umbrella",
    "Stark Industries",
    "Wayne Enterprises",
    "Hooli",
    "Pied Piper",
    "Vandelay Industries",
    "Soylent",
    "Tyrell",
    "Cyberdyne",
    "Wonka Industries",
    "Oscorp",
    "Aperture Science",
    "Black Mesa",
    "Massive Dynamic",
    "Nakatomi Trading",
    "Dunder Mifflin",
    "Sterling Cooper",
    "Blue Sun",
    "Weyland-Yutani",
    "Prestige Worldwide",
    "Gringotts",
    "Monsters Inc",
];

/// Number of creators (sellers) in the demo.
pub const CREATORS: usize = 40;

/// Device types of prospect browsers with their shares; the last one is
/// outside the three known types and counts as `other`.
pub const DEVICES: [(&str, f64); 6] = [
    ("mobile", 0.44),
    ("tablet", 0.08),
    ("desktop", 0.46),
    ("smart-tv", 0.01),
    ("console", 0.005),
    ("unknown", 0.005),
];

/// What becomes of a new draft.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Published (about 82 %).
    Published,
    /// Published, then deleted later (about 2 %).
    PublishedThenDeleted,
    /// Deleted as a draft (about 6 %).
    Deleted,
    /// Left open (about 10 %).
    Abandoned,
}

/// Draws a draft's outcome.
pub fn outcome(rng: &mut impl Rng) -> Outcome {
    let u: f64 = rng.random();
    if u < 0.82 {
        Outcome::Published
    } else if u < 0.84 {
        Outcome::PublishedThenDeleted
    } else if u < 0.90 {
        Outcome::Deleted
    } else {
        Outcome::Abandoned
    }
}

/// Picks an index of `weights` with probability proportional to its weight.
pub fn weighted_index(rng: &mut impl Rng, weights: impl IntoIterator<Item = f64> + Clone) -> usize {
    let total: f64 = weights.clone().into_iter().sum();
    let mut x = rng.random::<f64>() * total;
    let mut last = 0;
    for (i, w) in weights.into_iter().enumerate() {
        if x < w {
            return i;
        }
        x -= w;
        last = i;
    }
    last
}

/// A standard normal variate (Box–Muller).
pub fn std_normal(rng: &mut impl Rng) -> f64 {
    let u1 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// An exponential variate with the given mean.
pub fn exponential(rng: &mut impl Rng, mean: f64) -> f64 {
    let u = rng.random::<f64>().max(f64::MIN_POSITIVE);
    -mean * u.ln()
}

/// Seconds from "Create Follow-Up" to "Publish": log-normal around a median
/// of 6 min 40 s, so about one in six takes longer than 10 minutes and the
/// P80 (≈ 570 s) sits under the 600 s target. Clamped to 1 minute – 3 hours.
pub fn creation_seconds(rng: &mut impl Rng) -> f64 {
    let median: f64 = 400.0;
    (median.ln() + 0.42 * std_normal(rng))
        .exp()
        .clamp(60.0, 3.0 * 3600.0)
}

/// Number of distinct prospects who will open a follow-up of a meeting
/// type with engagement multiplier `multiplier`: 0–3, mean ≈ 0.47 × it.
pub fn visitor_count(rng: &mut impl Rng, multiplier: f64) -> usize {
    let u: f64 = rng.random();
    let (p1, p2, p3) = (0.24 * multiplier, 0.07 * multiplier, 0.03 * multiplier);
    if u < p3 {
        3
    } else if u < p3 + p2 {
        2
    } else if u < p3 + p2 + p1 {
        1
    } else {
        0
    }
}

/// Sessions one prospect opens on a follow-up: 1–3.
pub fn sessions_per_visitor(rng: &mut impl Rng) -> usize {
    1 + weighted_index(rng, [0.60, 0.28, 0.12])
}

/// A prospect browser's device type.
pub fn device(rng: &mut impl Rng) -> &'static str {
    DEVICES[weighted_index(rng, DEVICES.iter().map(|d| d.1))].0
}

/// A company (or none, for 4 % of follow-ups), skewed towards the first ones.
pub fn company(rng: &mut impl Rng) -> Option<&'static str> {
    if rng.random_bool(0.04) {
        return None;
    }
    let i = weighted_index(rng, (0..COMPANIES.len()).map(|i| 1.0 / (i as f64 + 1.0)));
    Some(COMPANIES[i])
}

/// A meeting type and its engagement multiplier.
pub fn meeting_type(rng: &mut impl Rng) -> (Option<&'static str>, f64) {
    let (t, _, m) = MEETING_TYPES[weighted_index(rng, MEETING_TYPES.iter().map(|t| t.1))];
    (t, m)
}

/// Days from publishing to the seller's next action: 1–10, skewed early
/// (mean ≈ 4.5 days, under the 7-day target).
pub fn days_to_next_action(rng: &mut impl Rng) -> f64 {
    1.0 + 9.0 * rng.random::<f64>().powf(1.6)
}

/// An anonymous visitor id, stable per prospect browser.
pub fn visitor_id(rng: &mut impl Rng) -> String {
    format!("v-{:016x}", rng.random::<u64>())
}

/// One demo seller: id, region and how active they are.
#[derive(Debug, Clone, PartialEq)]
pub struct Creator {
    /// `creator_id` value.
    pub id: String,
    /// `creator_region` value.
    pub region: Option<&'static str>,
    /// Relative number of follow-ups they create.
    pub activity: f64,
}

/// The demo's sellers: [`CREATORS`] of them, a few far more active than
/// the rest.
pub fn creators(rng: &mut impl Rng) -> Vec<Creator> {
    (0..CREATORS)
        .map(|i| Creator {
            id: format!("seller-{:02}", i + 1),
            region: REGIONS[weighted_index(rng, REGIONS.iter().map(|r| r.1))].0,
            activity: (0.8 * std_normal(rng)).exp(),
        })
        .collect()
}

/// Picks a creator by activity.
pub fn pick_creator<'a>(rng: &mut impl Rng, creators: &'a [Creator]) -> &'a Creator {
    &creators[weighted_index(rng, creators.iter().map(|c| c.activity))]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn distributions_are_near_their_targets() {
        let mut rng = StdRng::seed_from_u64(7);
        let n = 200_000;
        let mut creation: Vec<f64> = (0..n).map(|_| creation_seconds(&mut rng)).collect();
        creation.sort_by(f64::total_cmp);
        // 400 s × e^(0.42 × 0.8416) ≈ 570 s
        let p80 = creation[n * 8 / 10];
        assert!((555.0..585.0).contains(&p80), "P80 {p80}");
        let median = creation[n / 2];
        assert!((390.0..410.0).contains(&median), "median {median}");
        let slow = creation.iter().filter(|s| **s > 600.0).count() as f64 / n as f64;
        assert!((0.14..0.20).contains(&slow), "share over 10 min {slow}");

        let visitors: usize = (0..n).map(|_| visitor_count(&mut rng, 1.0)).sum();
        let mean = visitors as f64 / n as f64;
        // 0.24 + 2 × 0.07 + 3 × 0.03 = 0.47
        assert!((mean - 0.47).abs() < 0.01, "mean visitors {mean}");

        let mobile = (0..n).filter(|_| device(&mut rng) == "mobile").count();
        let share = mobile as f64 / n as f64;
        assert!((share - 0.44).abs() < 0.01, "mobile {share}");

        let published = (0..n)
            .filter(|_| {
                matches!(
                    outcome(&mut rng),
                    Outcome::Published | Outcome::PublishedThenDeleted
                )
            })
            .count();
        let share = published as f64 / n as f64;
        assert!((share - 0.84).abs() < 0.01, "published {share}");
    }

    #[test]
    fn weighted_index_stays_in_range() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..1000 {
            assert!(weighted_index(&mut rng, [0.0, 1.0, 0.0]) == 1);
            assert!(weighted_index(&mut rng, [1.0, 2.0]) < 2);
        }
    }
}
