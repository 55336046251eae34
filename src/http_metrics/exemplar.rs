//! Exemplars: the trace id of the latest request seen in each classic bucket
//! of a series, taken from the request's W3C `traceparent` header or from a
//! header the application names (`x-request-id`, …).
//!
//! Costs: a request without an id pays one header lookup and allocates
//! nothing; the id is copied into a fixed array in the request's guard. A
//! series allocates its exemplar slots (one per classic bucket) once, on its
//! first request with an id; after that, keeping an exemplar is a `try_lock`
//! and a copy — a slot being written by another thread is skipped rather
//! than waited for, so "latest" is up to requests finishing in the same
//! instant.

use std::sync::{Arc, Mutex, TryLockError};
use std::time::SystemTime;

use http::{HeaderMap, HeaderName};

/// Longest id kept, in bytes. OpenMetrics limits an exemplar's labels to
/// 128 characters; `trace_id` and 64 bytes stay well inside, and cover
/// W3C trace ids (32 hex digits) and UUIDs (36).
pub const MAX_TRACE_ID_LEN: usize = 64;

/// Where a request's trace id comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TraceIdSource {
    /// The trace id of a W3C `traceparent` header.
    TraceParent,
    /// The whole value of this header.
    Header(HeaderName),
}

/// `traceparent`, built once: a lookup by `&str` would parse the name on
/// every request.
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

impl TraceIdSource {
    /// Reads the request's id, if it has a valid one.
    #[inline]
    pub(crate) fn read(&self, headers: &HeaderMap) -> Option<TraceId> {
        if headers.is_empty() {
            return None;
        }
        match self {
            Self::TraceParent => headers
                .get(&TRACEPARENT)
                .and_then(|value| parse_traceparent(value.as_bytes())),
            Self::Header(name) => headers
                .get(name)
                .and_then(|value| TraceId::text(value.as_bytes())),
        }
    }
}

/// A trace id, stored inline so that carrying it allocates nothing: a W3C
/// trace id as its 128-bit number, any other id as its bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum TraceId {
    /// A W3C trace id, written as 32 lowercase hex digits.
    W3c(u128),
    /// 1 to [`MAX_TRACE_ID_LEN`] printable ASCII bytes.
    Text {
        len: u8,
        bytes: [u8; MAX_TRACE_ID_LEN],
    },
}

impl TraceId {
    /// `bytes` if they are 1 to [`MAX_TRACE_ID_LEN`] printable ASCII
    /// characters other than `"` and `\` (so that no exposition format needs
    /// to escape them).
    #[inline]
    fn text(bytes: &[u8]) -> Option<Self> {
        let printable = |b: &u8| (0x21..=0x7e).contains(b) && *b != b'"' && *b != b'\\';
        if bytes.is_empty() || bytes.len() > MAX_TRACE_ID_LEN || !bytes.iter().all(printable) {
            return None;
        }
        let mut stored = [0; MAX_TRACE_ID_LEN];
        stored[..bytes.len()].copy_from_slice(bytes);
        Some(Self::Text {
            len: bytes.len() as u8,
            bytes: stored,
        })
    }

    /// The id as the exemplar's `trace_id` label value.
    pub(crate) fn to_label(self) -> String {
        match self {
            Self::W3c(id) => format!("{id:032x}"),
            Self::Text { len, bytes } => {
                // Only printable ASCII is ever stored.
                String::from_utf8_lossy(&bytes[..usize::from(len)]).into_owned()
            }
        }
    }
}

impl std::fmt::Debug for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TraceId").field(&self.to_label()).finish()
    }
}

/// The value of a lowercase hex digit.
#[inline]
fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Lowercase hex digits as a number (at most 32 of them).
#[inline]
fn hex_number(digits: &[u8]) -> Option<u128> {
    digits
        .iter()
        .try_fold(0u128, |n, &b| Some(n << 4 | u128::from(hex_digit(b)?)))
}

/// The trace id of a W3C trace context `traceparent` value
/// (`version-traceid-parentid-flags`, <https://www.w3.org/TR/trace-context/>):
/// 32 lowercase hex digits, not all zero, under a parent id that is not all
/// zero either. Version `ff` is invalid; later versions may append fields
/// after a `-`.
#[inline]
fn parse_traceparent(value: &[u8]) -> Option<TraceId> {
    let well_formed_length = match value.len() {
        55 => true,
        n => n > 55 && value.get(55) == Some(&b'-') && value.get(..2) != Some(b"00"),
    };
    if !well_formed_length || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let version = hex_number(&value[0..2])?;
    let trace_id = hex_number(&value[3..35])?;
    let parent_id = hex_number(&value[36..52])?;
    hex_number(&value[53..55])?;
    (version != 0xff && trace_id != 0 && parent_id != 0).then_some(TraceId::W3c(trace_id))
}

/// One kept exemplar.
#[derive(Clone, Copy)]
struct Kept {
    id: TraceId,
    nanos: u64,
    /// When the request finished, in nanoseconds since the Unix epoch (from
    /// the latency clock's reading and the cached offset to the system
    /// clock: no system clock read per request).
    at: u64,
}

/// A series' exemplars, one slot per classic bucket.
pub(crate) struct ExemplarSlots {
    slots: Box<[Mutex<Option<Kept>>]>,
}

impl ExemplarSlots {
    pub(crate) fn new(bucket_count: usize) -> Self {
        Self {
            slots: (0..bucket_count).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// Keeps `id` as the exemplar of `bucket`, replacing the one before;
    /// `at` is when the request finished, in Unix nanoseconds.
    pub(crate) fn record(&self, bucket: usize, id: &TraceId, nanos: u64, at: u64) {
        let Some(slot) = self.slots.get(bucket) else {
            return;
        };
        let mut kept = match slot.try_lock() {
            Ok(kept) => kept,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        *kept = Some(Kept { id: *id, nanos, at });
    }

    /// `(bucket index, trace id, latency in nanoseconds, Unix nanoseconds
    /// of the end)` of every kept exemplar.
    pub(crate) fn snapshot(&self) -> Vec<(usize, String, u64, u64)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(bucket, slot)| {
                let kept = *slot.lock().unwrap_or_else(|p| p.into_inner());
                kept.map(|k| (bucket, k.id.to_label(), k.nanos, k.at))
            })
            .collect()
    }
}

/// One exemplar of `http_server_request_duration_seconds`: the latest request
/// with a trace id whose latency fell in a classic bucket of a series.
#[derive(Clone, Debug, PartialEq)]
pub struct BucketExemplar {
    /// `http_request_method` of the series.
    pub method: &'static str,
    /// `http_route` of the series.
    pub route: Arc<str>,
    /// `http_response_status_code` of the series.
    pub status: u16,
    /// The classic bucket's upper bound (`le`) in seconds; `f64::INFINITY`
    /// for `+Inf`.
    pub upper_bound: f64,
    /// The exemplar's `trace_id` label.
    pub trace_id: String,
    /// The request's latency in seconds.
    pub seconds: f64,
    /// When the request finished.
    pub timestamp: SystemTime,
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn read(source: &TraceIdSource, name: &'static str, value: &str) -> Option<String> {
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_str(value).unwrap(),
        );
        source.read(&headers).map(TraceId::to_label)
    }

    #[test]
    fn trace_ids_come_from_valid_traceparent_headers_only() {
        let tp = TraceIdSource::TraceParent;
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let ok = format!("00-{id}-00f067aa0ba902b7-01");
        assert_eq!(read(&tp, "traceparent", &ok).as_deref(), Some(id));
        // A later version may carry more fields.
        let v1 = format!("01-{id}-00f067aa0ba902b7-01-extra");
        assert_eq!(read(&tp, "traceparent", &v1).as_deref(), Some(id));
        for bad in [
            format!("00-{id}-00f067aa0ba902b7-01-extra"),
            format!("ff-{id}-00f067aa0ba902b7-01"),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_owned(),
            format!("00-{id}-0000000000000000-01"),
            format!("00-{}-00f067aa0ba902b7-01", id.to_uppercase()),
            format!("00-{id}-00f067aa0ba902b7"),
            format!("00_{id}-00f067aa0ba902b7-01"),
            String::new(),
            "garbage".to_owned(),
        ] {
            assert_eq!(read(&tp, "traceparent", &bad), None, "{bad:?}");
        }
        assert_eq!(read(&tp, "x-request-id", "abc"), None, "other headers");
    }

    #[test]
    fn a_named_header_gives_its_whole_printable_value() {
        let source = TraceIdSource::Header(HeaderName::from_static("x-request-id"));
        let uuid = "0f8fad5b-d9cb-469f-a165-70867728950e";
        assert_eq!(read(&source, "x-request-id", uuid).as_deref(), Some(uuid));
        let longest = "a".repeat(MAX_TRACE_ID_LEN);
        assert_eq!(
            read(&source, "x-request-id", &longest).as_deref(),
            Some(&*longest)
        );
        for bad in [
            "a".repeat(MAX_TRACE_ID_LEN + 1),
            "with space".to_owned(),
            "quote\"d".to_owned(),
            "back\\slash".to_owned(),
        ] {
            assert_eq!(read(&source, "x-request-id", &bad), None, "{bad:?}");
        }
        assert_eq!(read(&source, "traceparent", uuid), None);
    }

    #[test]
    fn a_slot_keeps_the_latest_exemplar_of_its_bucket() {
        let slots = ExemplarSlots::new(3);
        let a = TraceId::text(b"a").unwrap();
        let b = TraceId::W3c(0xb);
        slots.record(1, &a, 10, 1);
        slots.record(1, &b, 20, 2);
        slots.record(2, &a, 30, 3);
        slots.record(7, &a, 40, 4); // no such bucket: ignored
        let kept: Vec<(usize, String, u64)> = slots
            .snapshot()
            .into_iter()
            .map(|(bucket, id, nanos, _)| (bucket, id, nanos))
            .collect();
        assert_eq!(
            kept,
            vec![
                (1, "0000000000000000000000000000000b".into(), 20),
                (2, "a".into(), 30)
            ]
        );
    }
}
