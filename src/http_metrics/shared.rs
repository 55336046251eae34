//! [`Shared`]: shared ownership of the layer's state whose reference count
//! is split by thread shard, so that the clone axum makes of a route's
//! service for every request writes only the calling thread's cache line.
//!
//! With a plain `Arc`, every clone and drop writes the one count all threads
//! share; two threads serving the same route then bounced that line between
//! cores and paid 2–3.7× the single-thread cost (`BENCHMARKS.md`, "Shared
//! state"). Here each shard has its own count, on its own 128-byte block,
//! and a central count says how many shards hold any reference.
//!
//! A handle holds one reference on each shard of a set (a bit mask): one
//! shard when made, and a shard more each time it is cloned on a thread of a
//! shard it does not hold yet. So a long-lived handle — the service a router
//! keeps for a route — soon holds every shard its threads run on, and a
//! clone made from it (axum's per-request clone, the request's guard) adds
//! one to a count that is already above zero, on the cloning thread's own
//! shard: nothing else is written, and the long-lived handle is only read.
//!
//! A shard's count going from 0 to 1 adds the shard to the central count,
//! from 1 to 0 removes it; whoever takes the central count to 0 frees the
//! state. Why that is never early: a clone is made from a live handle
//! (borrowed, so it cannot be dropped meanwhile), which holds at least one
//! shard. If the clone's shard is one it holds, that count is above zero and
//! there is no transition; otherwise the source's own shards stay counted
//! centrally for the whole clone. A shard's count can only return to 0 by
//! dropping a handle that a finished clone returned, after that clone's
//! central increment. A handle made while another thread's 0→1 is still
//! pending is covered by that pending clone's borrowed source, made
//! earlier; following sources back ends at a shard counted centrally. So
//! the central count is above zero while any handle is alive. (SeqCst is
//! stronger than this needs; release/acquire would do. A count wrapping
//! around can only leak, as a forgotten handle does.) The algorithm was
//! model-checked with loom, including the race of two threads extending
//! one handle to the same shard.

use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering, fence};

use super::shard::{shard_count, thread_shard};

/// One shard's reference count, alone on its cache lines.
#[repr(align(128))]
struct ShardCount(AtomicUsize);

struct Inner<T> {
    /// References per shard; the length is a power of two, at most 32.
    counts: Box<[ShardCount]>,
    /// Shards whose count is above zero.
    live_shards: AtomicUsize,
    value: T,
}

/// Shared ownership of a `T`, freed when the last handle is dropped; see
/// the module documentation.
pub(crate) struct Shared<T: Send + Sync> {
    inner: NonNull<Inner<T>>,
    /// The shards this handle holds one reference on (bit `k`: shard `k`).
    held: AtomicU32,
    _owns: PhantomData<Inner<T>>,
}

// SAFETY: a `Shared<T>` hands out only `&T` (never `&mut T`) and drops the
// `T` on whichever thread releases the last handle, exactly as `Arc<T>`;
// so, as for `Arc<T>`, it may move and be shared between threads when `T`
// is `Send + Sync` (required by the struct).
#[allow(unsafe_code)]
unsafe impl<T: Send + Sync> Send for Shared<T> {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl<T: Send + Sync> Sync for Shared<T> {}

impl<T: Send + Sync> Shared<T> {
    /// `value` behind a handle holding the calling thread's shard.
    pub(crate) fn new(value: T) -> Self {
        let shards = shard_count().min(u32::BITS as usize);
        let shard = thread_shard() & (shards - 1);
        let inner = Box::new(Inner {
            counts: (0..shards)
                .map(|k| ShardCount(AtomicUsize::new(usize::from(k == shard))))
                .collect(),
            live_shards: AtomicUsize::new(1),
            value,
        });
        Self {
            inner: NonNull::from(Box::leak(inner)),
            held: AtomicU32::new(1 << shard),
            _owns: PhantomData,
        }
    }

    #[inline]
    fn inner(&self) -> &Inner<T> {
        // SAFETY: `inner` came from `Box::leak` in `new` and is freed only by
        // the drop that takes `live_shards` to 0, which cannot happen while
        // this handle is alive (module documentation).
        #[allow(unsafe_code)]
        unsafe {
            self.inner.as_ref()
        }
    }

    #[inline]
    fn acquire(inner: &Inner<T>, shard: usize) {
        if let Some(count) = inner.counts.get(shard) {
            // SeqCst on the counts and the central count: the argument in
            // the module documentation is about one order of all of them.
            // On x86 every locked read-modify-write is that strong anyway.
            if count.0.fetch_add(1, Ordering::SeqCst) == 0 {
                inner.live_shards.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// Releases one reference on a shard's `count`; true when it was the
    /// last of all. Takes the two atomics, not `&Inner<T>`: another thread
    /// may free the state as soon as `count` is decremented, and a reference
    /// argument to `Inner<T>` (whose `counts` pointer and `value` are not
    /// interior-mutable) must stay valid until the function returns.
    #[inline]
    fn release(count: &AtomicUsize, live_shards: &AtomicUsize) -> bool {
        count.fetch_sub(1, Ordering::SeqCst) == 1 && live_shards.fetch_sub(1, Ordering::SeqCst) == 1
    }
}

impl<T: Send + Sync> Clone for Shared<T> {
    /// A handle holding the calling thread's shard; `self` first takes that
    /// shard too if it does not hold it yet.
    #[inline]
    fn clone(&self) -> Self {
        let inner = self.inner();
        let shard = thread_shard() & (inner.counts.len() - 1);
        let bit = 1u32 << shard;
        if self.held.load(Ordering::Relaxed) & bit == 0 {
            self.extend(shard, bit);
        }
        Self::acquire(inner, shard);
        Self {
            inner: self.inner,
            held: AtomicU32::new(bit),
            _owns: PhantomData,
        }
    }
}

impl<T: Send + Sync> Shared<T> {
    /// Makes `self` hold `shard` too (once, whichever thread sets the bit).
    #[cold]
    #[inline(never)]
    fn extend(&self, shard: usize, bit: u32) {
        if self.held.fetch_or(bit, Ordering::Relaxed) & bit == 0 {
            Self::acquire(self.inner(), shard);
        }
    }
}

impl<T: Send + Sync> std::ops::Deref for Shared<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.inner().value
    }
}

impl<T: Send + Sync> Drop for Shared<T> {
    #[inline]
    fn drop(&mut self) {
        let mut held = *self.held.get_mut();
        let inner = self.inner();
        let (counts, live_shards) = (&*inner.counts, &inner.live_shards);
        let mut last = false;
        while held != 0 {
            let shard = held.trailing_zeros() as usize;
            held &= held - 1;
            if let Some(count) = counts.get(shard) {
                last |= Self::release(&count.0, live_shards);
            }
        }
        if last {
            // Pairs with the releases of all other handles (as `Arc` does).
            fence(Ordering::Acquire);
            // SAFETY: the central count reached 0, so this is the last
            // handle (module documentation); `inner` came from `Box::leak`
            // in `new` and nothing refers to it any more.
            #[allow(unsafe_code)]
            drop(unsafe { Box::from_raw(self.inner.as_ptr()) });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    /// Counts its drops and fails if used after one.
    struct Tracked {
        dropped: Arc<AtomicUsize>,
        alive: AtomicBool,
    }

    impl Tracked {
        fn check(&self) {
            assert!(self.alive.load(Ordering::SeqCst), "used after drop");
        }
    }

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.alive.store(false, Ordering::SeqCst);
            self.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn tracked() -> (Shared<Tracked>, Arc<AtomicUsize>) {
        let dropped = Arc::new(AtomicUsize::new(0));
        let value = Tracked {
            dropped: Arc::clone(&dropped),
            alive: AtomicBool::new(true),
        };
        (Shared::new(value), dropped)
    }

    #[test]
    fn the_value_is_dropped_once_with_the_last_handle() {
        let (first, dropped) = tracked();
        let narrow = first.clone();
        // Cloned on another thread: both `narrow` and the clone hold that
        // thread's shard too.
        let other = std::thread::scope(|scope| scope.spawn(|| narrow.clone()).join().unwrap());
        drop(first);
        narrow.check();
        drop(other);
        assert_eq!(dropped.load(Ordering::SeqCst), 0, "a handle is left");
        let last = narrow.clone();
        drop(narrow);
        assert_eq!(dropped.load(Ordering::SeqCst), 0);
        last.check();
        drop(last);
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
    }

    /// Threads clone handles (extending their sources to new shards), hand
    /// them to each other, and the original is dropped early: the value is
    /// used only while alive and dropped exactly once, after the last
    /// handle.
    #[test]
    fn handles_cloned_and_dropped_across_threads_free_once_at_the_end() {
        for round in 0..50 {
            let (first, dropped) = tracked();
            let (sender, receiver) = std::sync::mpsc::channel::<Shared<Tracked>>();
            let receiver = std::sync::Mutex::new(receiver);
            std::thread::scope(|scope| {
                for _ in 0..6 {
                    let source = first.clone();
                    let sender = sender.clone();
                    let receiver = &receiver;
                    scope.spawn(move || {
                        for i in 0..2_000 {
                            let narrow = source.clone();
                            narrow.check();
                            if i % 7 == 0 {
                                let _ = sender.send(source.clone());
                            }
                            if i % 50 == 0
                                && let Ok(handed) = receiver.lock().unwrap().try_recv()
                            {
                                handed.clone().check();
                            }
                        }
                    });
                }
                if round % 2 == 0 {
                    drop(first);
                } else {
                    let again = first.clone();
                    drop(first);
                    again.check();
                }
            });
            drop(sender);
            assert_eq!(
                dropped.load(Ordering::SeqCst),
                0,
                "handles are still queued"
            );
            for handed in receiver.into_inner().unwrap().try_iter() {
                handed.check();
            }
            assert_eq!(dropped.load(Ordering::SeqCst), 1, "round {round}");
        }
    }
}
