//! Native histogram buckets: Prometheus's exponential schema 3, where bucket
//! `k` holds the latencies in `(2^((k-1)/8), 2^(k/8)]` seconds.
//!
//! Schema 3 grows each bucket by `2^(1/8)` ≈ 1.09, so a quantile estimated
//! inside one bucket is off by at most ≈ 4.4 % from the bucket's middle
//! (≈ 9 % from an edge). The range is fixed, which bounds the bucket count:
//! the zero bucket holds latencies of 0 ns (threshold `2^-30` s, just under
//! 1 ns), buckets run from `k = -239` (1 ns lies in it) to `k = 136`, whose
//! upper edge is `2^17` s (about 36 h). Longer requests — only long-lived
//! streams get there — are counted in that last bucket; their exact
//! duration stays in the sum and the classic `+Inf` bucket. So a series
//! never has more than [`SLOTS`] buckets, needs no reset and no schema
//! reduction, and counters for the buckets are allocated 16 at a time on
//! first use, per thread shard.

/// The schema: bucket boundaries are powers of `2^(2^-SCHEMA)`.
pub(crate) const SCHEMA: i32 = 3;

/// Upper edge of the zero bucket, in seconds: `2^-30`, just under 1 ns.
pub(crate) const ZERO_THRESHOLD: f64 = 1.0 / (1u64 << 30) as f64;

/// Index of the first bucket above the zero bucket; 1 ns falls in it.
pub(crate) const MIN_INDEX: i32 = -239;

/// Index of the last bucket, `(2^(135/8), 2^17]` s; longer latencies are
/// counted in it.
pub(crate) const MAX_INDEX: i32 = 136;

/// Counter slots per series: the zero bucket, then `MIN_INDEX..=MAX_INDEX`.
pub(crate) const SLOTS: usize = 1 + (MAX_INDEX - MIN_INDEX + 1) as usize;

/// Mantissa bits (the 52 stored fraction bits) of `2^(j/8)` for `j` in
/// `0..8`; `native_histogram_boundaries_are_the_powers_of_two_eighths` checks
/// them against `powf`.
const BOUNDARIES: [u64; 8] = [
    0x0,
    0x1_72b8_3c7d_517b,
    0x3_06fe_0a31_b715,
    0x4_bfda_d536_2a27,
    0x6_a09e_667f_3bcd,
    0x8_ace5_422a_a0db,
    0xa_e89f_995a_d3ad,
    0xd_5818_dcfb_a487,
];

const FRACTION_MASK: u64 = (1 << 52) - 1;

/// The counter slot of a latency in nanoseconds: 0 for the zero bucket,
/// `1 + k - MIN_INDEX` for bucket `k`.
///
/// With `x = m · 2^e` (`1 ≤ m < 2`, read from the float's bits), the bucket
/// is `8e + j` where `j` counts the boundaries `2^(i/8)`, `i < 8`, that `m`
/// exceeds: eight integer comparisons, no logarithm — the approach of the
/// Go client (frexp and a search in the boundary table), without the search.
#[inline]
pub(crate) fn slot(nanos: u64) -> usize {
    if nanos == 0 {
        return 0;
    }
    let seconds = nanos as f64 * 1e-9;
    let bits = seconds.to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as i32 - 1023;
    let fraction = bits & FRACTION_MASK;
    let above = BOUNDARIES.iter().filter(|&&b| fraction > b).count() as i32;
    let index = (8 * exponent + above).clamp(MIN_INDEX, MAX_INDEX);
    (1 + index - MIN_INDEX) as usize
}

/// Sparse form of a series' bucket counts, as the protobuf exposition wants
/// it: spans of consecutive bucket indexes (`(offset from the previous
/// span's end, length)`, the first offset absolute) and each bucket's count
/// as the difference from the bucket before it. Gaps of up to two empty
/// buckets are written as zeros inside a span, which is shorter than a new
/// span (the Go client does the same).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Sparse {
    pub(crate) spans: Vec<(i32, u32)>,
    pub(crate) deltas: Vec<i64>,
}

/// `counts` as returned by the store: slot 0 is the zero bucket (left out
/// here), slot `s` bucket `s - 1 + MIN_INDEX`.
pub(crate) fn sparse(counts: &[u64]) -> Sparse {
    let mut out = Sparse::default();
    let mut previous_count: i64 = 0;
    // Index just past the last bucket written, for span offsets and gaps.
    let mut next_index: Option<i32> = None;
    for (slot, &count) in counts.iter().enumerate().skip(1) {
        if count == 0 {
            continue;
        }
        let index = slot as i32 - 1 + MIN_INDEX;
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        match (next_index, out.spans.last_mut()) {
            (Some(next), Some(span)) if index - next <= 2 => {
                for _ in next..index {
                    out.deltas.push(-previous_count);
                    previous_count = 0;
                }
                span.1 += (index - next) as u32 + 1;
            }
            (Some(next), _) => out.spans.push((index - next, 1)),
            (None, _) => out.spans.push((index, 1)),
        }
        out.deltas.push(count - previous_count);
        previous_count = count;
        next_index = Some(index + 1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bucket a latency falls in, computed independently with a
    /// logarithm: the least `k` with `seconds <= 2^(k/8)`.
    fn reference_index(nanos: u64) -> i32 {
        let seconds = nanos as f64 * 1e-9;
        let mut k = (8.0 * seconds.log2()).ceil() as i32;
        // Correct the float rounding of log2 at the edges.
        while seconds <= 2f64.powf(f64::from(k - 1) / 8.0) {
            k -= 1;
        }
        while seconds > 2f64.powf(f64::from(k) / 8.0) {
            k += 1;
        }
        k
    }

    #[test]
    fn native_histogram_boundaries_are_the_powers_of_two_eighths() {
        for (j, &bits) in BOUNDARIES.iter().enumerate() {
            let expected = 2f64.powf(j as f64 / 8.0).to_bits() & FRACTION_MASK;
            assert_eq!(bits, expected, "2^({j}/8)");
        }
    }

    #[test]
    fn a_latency_lands_in_the_schema_3_bucket_prometheus_would_pick() {
        let mut probes: Vec<u64> = vec![1, 2, 3, 999, 1_000, 1_001, 20_000_000, 300_000_000];
        for k in -200..=130 {
            // Latencies on and next to every boundary in range.
            let edge = 2f64.powf(f64::from(k) / 8.0) * 1e9;
            probes.extend([edge.floor() as u64, edge.ceil() as u64, edge as u64 + 1]);
        }
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            probes.push(x >> (x % 30 + 20));
        }
        for nanos in probes.into_iter().filter(|&n| n > 0) {
            let expected = reference_index(nanos).clamp(MIN_INDEX, MAX_INDEX);
            assert_eq!(slot(nanos) as i32 - 1 + MIN_INDEX, expected, "{nanos} ns");
        }
    }

    #[test]
    fn the_range_is_bounded_at_both_ends() {
        assert_eq!(slot(0), 0, "zero bucket");
        assert_eq!(slot(1), 1, "1 ns is in the first bucket");
        assert!(ZERO_THRESHOLD < 1e-9 && 2f64.powf(f64::from(MIN_INDEX) / 8.0) >= 1e-9);
        assert_eq!(slot(u64::MAX), SLOTS - 1, "clamped to the last bucket");
        let last_edge = 2f64.powf(f64::from(MAX_INDEX) / 8.0);
        assert_eq!(last_edge, 131_072.0);
        assert_eq!(slot(131_072 * 1_000_000_000), SLOTS - 1);
        assert_eq!(SLOTS, 377);
    }

    #[test]
    fn sparse_buckets_are_spans_and_deltas() {
        let at = |k: i32| (1 + k - MIN_INDEX) as usize;
        let mut counts = vec![0u64; SLOTS];
        assert_eq!(sparse(&counts), Sparse::default());
        counts[0] = 7; // zero bucket: not a positive bucket
        counts[at(-10)] = 2;
        counts[at(-9)] = 5;
        counts[at(-6)] = 1; // gap of two: same span
        counts[at(0)] = 4; // gap of five: new span
        let out = sparse(&counts);
        assert_eq!(out.spans, vec![(-10, 5), (5, 1)]);
        assert_eq!(out.deltas, vec![2, 3, -5, 0, 1, 3]);
        // Expanding the deltas gives the counts back.
        let mut running = 0;
        let expanded: Vec<i64> = out
            .deltas
            .iter()
            .map(|d| {
                running += d;
                running
            })
            .collect();
        assert_eq!(expanded, vec![2, 5, 0, 0, 1, 4]);
    }
}
