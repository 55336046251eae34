//! `timestamptz` values as PostgreSQL stores them, for large results.

use chrono::{DateTime, Utc};
use sqlx::Postgres;

use super::CollectContext;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgTypeInfo, PgValueFormat, PgValueRef};

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01 UTC).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A `timestamptz` as PostgreSQL's own integer: microseconds since
/// 2000-01-01 UTC (`±infinity` as the extreme integers, which order
/// correctly). Decoding is a byte swap; a chrono `DateTime` decode does
/// calendar arithmetic per value, ~10 % of the decoding time of the 34k–41k
/// rows engagement and adoption read each run at 1M follow-ups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct PgMicros(i64);

impl PgMicros {
    pub(crate) fn from_datetime(t: DateTime<Utc>) -> Self {
        Self(t.timestamp_micros().saturating_sub(PG_EPOCH_MICROS))
    }

    /// The start of every window of `ctx`, in window order.
    pub(crate) fn window_starts(ctx: &CollectContext) -> Vec<Self> {
        ctx.window_starts()
            .into_iter()
            .map(Self::from_datetime)
            .collect()
    }
}

impl sqlx::Type<Postgres> for PgMicros {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as sqlx::Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <DateTime<Utc> as sqlx::Type<Postgres>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, Postgres> for PgMicros {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        match value.format() {
            PgValueFormat::Binary => {
                let bytes: [u8; 8] = value.as_bytes()?.try_into()?;
                Ok(Self(i64::from_be_bytes(bytes)))
            }
            PgValueFormat::Text => {
                let t = <DateTime<Utc> as sqlx::Decode<'r, Postgres>>::decode(value)?;
                Ok(Self::from_datetime(t))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_epoch_is_zero() {
        let epoch = DateTime::parse_from_rfc3339("2000-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(PgMicros::from_datetime(epoch), PgMicros(0));
        let later = epoch + chrono::Duration::microseconds(1);
        assert!(PgMicros::from_datetime(later) > PgMicros(0));
    }
}
