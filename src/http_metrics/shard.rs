//! Per-thread shards: the middleware's counters, and any [`RequestSink`]
//! that wants the same layout, keep one copy of their hot data per shard so
//! that threads serving requests at the same time do not write the same
//! cache line.
//!
//! [`RequestSink`]: super::RequestSink

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bounds on the number of shards. The floor matters because the detected
/// parallelism can understate the threads that really run at once (it
/// follows the calling thread's CPU affinity and the cgroup CPU quota).
const MIN_SHARDS: usize = 4;
const MAX_SHARDS: usize = 16;

/// Number of shards: the machine's parallelism rounded up to a power of two
/// (so a shard is picked with a mask), within the bounds above.
pub(crate) fn shard_count() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .next_power_of_two()
        .clamp(MIN_SHARDS, MAX_SHARDS)
}

thread_local! {
    static THREAD_SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

static NEXT_THREAD_SHARD: AtomicUsize = AtomicUsize::new(0);

/// This thread's shard number, before masking: threads are numbered in the
/// order they first ask, so a runtime's worker threads get distinct shards.
#[inline]
pub(crate) fn thread_shard() -> usize {
    THREAD_SHARD
        .try_with(|shard| {
            let mut value = shard.get();
            if value == usize::MAX {
                value = NEXT_THREAD_SHARD.fetch_add(1, Ordering::Relaxed);
                shard.set(value);
            }
            value
        })
        .unwrap_or(0)
}

/// One `T` per thread shard, laid out as the middleware's own counters are:
/// [`current`](Self::current) returns the calling thread's value, from the
/// shard the middleware writes on that thread.
///
/// Give `T` an alignment of 128 bytes (`#[repr(align(128))]`) if it is
/// written on the hot path, so that neighbouring shards do not share a cache
/// line.
#[derive(Debug)]
pub struct ThreadSharded<T> {
    shards: Box<[T]>,
}

impl<T> ThreadSharded<T> {
    /// The number of shards [`new`](Self::new) makes: the machine's
    /// parallelism rounded up to a power of two, between 4 and 16.
    pub fn shard_count() -> usize {
        shard_count()
    }

    /// One value per shard, each made by `make`.
    pub fn new(make: impl FnMut() -> T) -> Self {
        Self {
            shards: std::iter::repeat_with(make).take(shard_count()).collect(),
        }
    }

    /// The calling thread's value.
    #[inline]
    pub fn current(&self) -> &T {
        // The shard count is a power of two.
        &self.shards[thread_shard() & (self.shards.len() - 1)]
    }

    /// Every shard's value.
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.shards.iter()
    }

    /// Number of shards.
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    /// Always `false`: there is at least one shard.
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_keeps_its_shard_and_each_thread_gets_its_own_number() {
        let sharded = ThreadSharded::new(|| AtomicUsize::new(0));
        assert!(sharded.len().is_power_of_two() && sharded.len() >= MIN_SHARDS);
        assert_eq!(sharded.len(), ThreadSharded::<()>::shard_count());
        assert!(std::ptr::eq(sharded.current(), sharded.current()));
        // Shards repeat only modulo the count.
        let numbers: Vec<usize> = (0..3)
            .map(|_| std::thread::spawn(thread_shard).join().unwrap())
            .collect();
        assert!(numbers[0] != numbers[1] && numbers[1] != numbers[2] && numbers[0] != numbers[2]);
    }
}
