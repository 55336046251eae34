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

impl TraceIdSource {
    /// Reads the request's id, if it has a valid one.
    #[inline]
    pub(crate) fn read(&self, headers: &HeaderMap) -> Option<TraceId> {
        match self {
            Self::TraceParent => headers
                .get("traceparent")
                .and_then(|value| parse_traceparent(value.as_bytes())),
            Self::Header(name) => headers
                .get(name)
                .and_then(|value| TraceId::new(value.as_bytes())),
        }
    }
}

/// A trace id, stored inline so that carrying it allocates nothing.
#[derive(Clone, Copy)]
pub(crate) struct TraceId {
    len: u8,
    bytes: [u8; MAX_TRACE_ID_LEN],
}

impl TraceId {
    /// `bytes` if they are 1 to [`MAX_TRACE_ID_LEN`] printable ASCII
    /// characters other than `"` and `\` (so that no exposition format needs
    /// to escape them).
    #[inline]
    fn new(bytes: &[u8]) -> Option<Self> {
        let printable = |b: &u8| (0x21..=0x7e).contains(b) && *b != b'"' && *b != b'\\';
        if bytes.is_empty() || bytes.len() > MAX_TRACE_ID_LEN || !bytes.iter().all(printable) {
            return None;
        }
        let mut id = Self {
            len: bytes.len() as u8,
            bytes: [0; MAX_TRACE_ID_LEN],
        };
        id.bytes[..bytes.len()].copy_from_slice(bytes);
        Some(id)
    }

    fn as_str(&self) -> &str {
        // Only printable ASCII is ever stored.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl std::fmt::Debug for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TraceId").field(&self.as_str()).finish()
    }
}

/// The trace id of a W3C trace context `traceparent` value
/// (`version-traceid-parentid-flags`, <https://www.w3.org/TR/trace-context/>):
/// 32 lowercase hex digits, not all zero, under a parent id that is not all
/// zero either. Version `ff` is invalid; later versions may append fields
/// after a `-`.
fn parse_traceparent(value: &[u8]) -> Option<TraceId> {
    let hex = |s: &[u8]| {
        s.iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    let nonzero = |s: &[u8]| s.iter().any(|&b| b != b'0');
    let version = value.get(0..2)?;
    let trace_id = value.get(3..35)?;
    let parent_id = value.get(36..52)?;
    let flags = value.get(53..55)?;
    let well_formed = hex(version)
        && version != b"ff"
        && value.get(2) == Some(&b'-')
        && value.get(35) == Some(&b'-')
        && value.get(52) == Some(&b'-')
        && hex(trace_id)
        && hex(parent_id)
        && hex(flags)
        && nonzero(trace_id)
        && nonzero(parent_id)
        && match value.len() {
            55 => true,
            _ => version != b"00" && value.get(55) == Some(&b'-'),
        };
    if well_formed {
        TraceId::new(trace_id)
    } else {
        None
    }
}

/// One kept exemplar.
#[derive(Clone, Copy)]
struct Kept {
    id: TraceId,
    nanos: u64,
    at: SystemTime,
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

    /// Keeps `id` as the exemplar of `bucket`, replacing the one before.
    pub(crate) fn record(&self, bucket: usize, id: &TraceId, nanos: u64) {
        let Some(slot) = self.slots.get(bucket) else {
            return;
        };
        let mut kept = match slot.try_lock() {
            Ok(kept) => kept,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        *kept = Some(Kept {
            id: *id,
            nanos,
            at: SystemTime::now(),
        });
    }

    /// `(bucket index, trace id, latency in nanoseconds, when)` of every
    /// kept exemplar.
    pub(crate) fn snapshot(&self) -> Vec<(usize, String, u64, SystemTime)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(bucket, slot)| {
                let kept = *slot.lock().unwrap_or_else(|p| p.into_inner());
                kept.map(|k| (bucket, k.id.as_str().to_owned(), k.nanos, k.at))
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
        source.read(&headers).map(|id| id.as_str().to_owned())
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
        let a = TraceId::new(b"a").unwrap();
        let b = TraceId::new(b"b").unwrap();
        slots.record(1, &a, 10);
        slots.record(1, &b, 20);
        slots.record(2, &a, 30);
        slots.record(7, &a, 40); // no such bucket: ignored
        let kept: Vec<(usize, String, u64)> = slots
            .snapshot()
            .into_iter()
            .map(|(bucket, id, nanos, _)| (bucket, id, nanos))
            .collect();
        assert_eq!(kept, vec![(1, "b".into(), 20), (2, "a".into(), 30)]);
    }
}
