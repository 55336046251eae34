//! The label sets of the OKR gauge families: one client_rust
//! `#[derive(EncodeLabelSet)]` struct per shape, so a family's type says
//! which labels it has (`Family<WindowQuantile>`), and the exposition's
//! label order is the fields' order (`window` first).

use std::fmt::Debug;
use std::hash::Hash;

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};

/// Label name/value pairs, in exposition order.
pub type LabelPairs<'a> = Vec<(&'static str, &'a str)>;

/// A typed label set of an OKR family: encoded by client_rust, and readable
/// as name/value pairs (in exposition order) for lookups, reconciliation and
/// the backfill writer.
pub trait LabelSet:
    EncodeLabelSet + Clone + Debug + Hash + Eq + Ord + Send + Sync + 'static
{
    /// The label name/value pairs, in exposition order.
    fn pairs(&self) -> LabelPairs<'_>;

    /// Whether the labels are exactly `labels` (in any order).
    fn matches(&self, labels: &[(&str, &str)]) -> bool {
        let own = self.pairs();
        own.len() == labels.len() && labels.iter().all(|l| own.contains(l))
    }
}

/// Declares a label-set struct of `String` fields, its derives and its
/// [`LabelSet`] impl, with a constructor taking the fields in order.
macro_rules! label_set {
    ($(#[$doc:meta])* $name:ident { $($field:ident),+ }) => {
        $(#[$doc])*
        #[derive(
            Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord,
            prometheus_client::encoding::EncodeLabelSet,
        )]
        pub struct $name {
            $(
                #[doc = concat!("The `", stringify!($field), "` label.")]
                pub $field: String,
            )+
        }

        impl $name {
            /// The label set with these values.
            pub fn new($($field: impl Into<String>),+) -> Self {
                Self { $($field: $field.into()),+ }
            }
        }

        impl LabelSet for $name {
            fn pairs(&self) -> LabelPairs<'_> {
                vec![$((stringify!($field), self.$field.as_str())),+]
            }
        }
    };
}

label_set!(
    /// `{window}`: a value over one rolling window.
    WindowLabels { window }
);
label_set!(
    /// `{window, quantile}`: a quantile over one window.
    WindowQuantile { window, quantile }
);
label_set!(
    /// `{window, outcome}`: drafts of one window by outcome.
    WindowOutcome { window, outcome }
);
label_set!(
    /// `{window, device_type}`: sessions of one window by device class.
    WindowDevice { window, device_type }
);
label_set!(
    /// `{window, meeting_type}`: engagement of one window by meeting type.
    WindowMeetingType { window, meeting_type }
);
label_set!(
    /// `{window, creator_region}`: engagement of one window by creator region.
    WindowCreatorRegion { window, creator_region }
);
label_set!(
    /// `{window, company}`: engagement of one window by company (top N and
    /// `__other__`, so bounded).
    WindowCompany { window, company }
);
label_set!(
    /// `{status}`: all-time follow-ups by status.
    StatusLabels { status }
);

/// No label at all (the target and alert-floor gauges).
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct NoLabels;

impl EncodeLabelSet for NoLabels {
    fn encode(&self, _encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        Ok(())
    }
}

impl LabelSet for NoLabels {
    fn pairs(&self) -> LabelPairs<'_> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_follow_field_order_and_match_in_any_order() {
        let l = WindowDevice::new("7d", "mobile");
        assert_eq!(l.pairs(), [("window", "7d"), ("device_type", "mobile")]);
        assert!(l.matches(&[("device_type", "mobile"), ("window", "7d")]));
        assert!(!l.matches(&[("window", "7d")]));
        assert!(!l.matches(&[("window", "7d"), ("device_type", "desktop")]));
        assert!(NoLabels.matches(&[]));
    }
}
