//! The table of open connections: how many there are, which one has waited
//! for its next request the longest, and the eviction that makes room for a
//! new connection when the table is full (as nginx reuses idle keep-alive
//! connections when it runs out of them).
//!
//! A connection is *idle* while it waits for request headers: fresh, between
//! keep-alive requests, or sending its headers slowly. It is *busy* from the
//! moment its request reaches the router until the response body has been
//! handed to hyper and written out; a busy connection is never evicted.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Every open connection of one server, with its cap.
pub(crate) struct OpenConnections {
    cap: usize,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<OpenConnection>>>,
    /// Signalled when a connection closes or becomes idle, so an accept loop
    /// waiting for room looks again.
    changed: Arc<Notify>,
}

/// What [`OpenConnections::admit`] did.
pub(crate) enum Admission {
    /// There was room.
    Admitted(Arc<OpenConnection>),
    /// There was room once the longest-idle connection was evicted.
    AdmittedByEviction(Arc<OpenConnection>),
    /// No room: every connection is busy, or one evicted earlier has not
    /// closed yet. Wait for [`OpenConnections::changed`].
    Full,
}

impl OpenConnections {
    /// An empty table holding at most `cap` connections (at least one).
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
            changed: Arc::new(Notify::new()),
        }
    }

    /// The cap.
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// Number of open connections, evicted ones included until their
    /// socket is closed.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<OpenConnection>>> {
        // The critical sections only insert, remove and read plain fields:
        // a panic elsewhere cannot leave the map inconsistent.
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a newly accepted connection, evicting the longest-idle one
    /// when the table is full.
    ///
    /// An evicted connection keeps its entry (and its file descriptor) until
    /// its task has closed it, and a full table evicts again only once the
    /// previous eviction has closed: however far the accept loop runs ahead
    /// of the connection tasks (a busy machine), open sockets stay within
    /// the cap plus one, so the descriptor reserve is never eaten into.
    pub(crate) fn admit(&self) -> Admission {
        let mut conns = self.lock();
        let mut evicted = false;
        if conns.len() >= self.cap {
            if Self::closing(&conns) || !Self::evict_longest_idle_locked(&conns) {
                return Admission::Full;
            }
            evicted = true;
        }
        let conn = Arc::new(OpenConnection {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            activity: Mutex::new(Activity {
                in_flight: 0,
                idle_since: Instant::now(),
                evicted: false,
                body_unread: false,
            }),
            write_blocked: AtomicBool::new(false),
            eviction: Notify::new(),
            changed: Arc::clone(&self.changed),
        });
        conns.insert(conn.id, Arc::clone(&conn));
        if evicted {
            Admission::AdmittedByEviction(conn)
        } else {
            Admission::Admitted(conn)
        }
    }

    /// Makes sure a descriptor is about to be freed: true when a connection
    /// evicted earlier is still closing, or the one that has waited for
    /// request headers the longest was just evicted; false when every
    /// connection is busy. An evicted connection leaves the table when its
    /// task has closed it ([`remove`](Self::remove)).
    pub(crate) fn evict_longest_idle(&self) -> bool {
        let conns = self.lock();
        Self::closing(&conns) || Self::evict_longest_idle_locked(&conns)
    }

    /// Whether an evicted connection's socket is still open.
    fn closing(conns: &HashMap<u64, Arc<OpenConnection>>) -> bool {
        conns.values().any(|c| c.activity().evicted)
    }

    fn evict_longest_idle_locked(conns: &HashMap<u64, Arc<OpenConnection>>) -> bool {
        // Linear in the number of connections (at most the cap, ~1000), and
        // only run when the table is full.
        let mut idle: Vec<(Instant, u64)> = conns
            .values()
            .filter_map(|c| c.idle_since().map(|t| (t, c.id)))
            .collect();
        idle.sort_unstable();
        // A candidate may have become busy since it was looked at: then it
        // stays and the next one is tried.
        idle.into_iter()
            .any(|(_, id)| conns.get(&id).is_some_and(|c| c.mark_evicted()))
    }

    /// Forgets a connection whose task ended (its socket is closed).
    pub(crate) fn remove(&self, conn: &OpenConnection) {
        self.lock().remove(&conn.id);
        self.changed.notify_one();
    }

    /// Closes every connection, busy or not (shutdown took too long).
    pub(crate) fn close_all(&self) {
        let conns = std::mem::take(&mut *self.lock());
        for conn in conns.values() {
            conn.activity().evicted = true;
            conn.eviction.notify_one();
        }
    }

    /// Completes after a connection closed or became idle (or at once if
    /// that happened since the last call).
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// One open connection's state, shared by its task, its service and its IO.
pub(crate) struct OpenConnection {
    id: u64,
    activity: Mutex<Activity>,
    /// True while a write to the client is stalled (the response is still
    /// being sent): such a connection is busy even with no request in flight.
    write_blocked: AtomicBool,
    eviction: Notify,
    changed: Arc<Notify>,
}

struct Activity {
    in_flight: u32,
    idle_since: Instant,
    evicted: bool,
    /// The last request ended before its body was fully received: the client
    /// may still be sending it.
    body_unread: bool,
}

impl OpenConnection {
    fn activity(&self) -> MutexGuard<'_, Activity> {
        self.activity.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When it started waiting for request headers; `None` while busy or
    /// already evicted.
    fn idle_since(&self) -> Option<Instant> {
        let a = self.activity();
        let idle = a.in_flight == 0 && !a.evicted && !self.write_blocked.load(Ordering::Acquire);
        idle.then_some(a.idle_since)
    }

    /// Marks an idle connection evicted and wakes its task; false if it is
    /// busy.
    fn mark_evicted(&self) -> bool {
        let mut a = self.activity();
        if a.in_flight > 0 || a.evicted || self.write_blocked.load(Ordering::Acquire) {
            return false;
        }
        a.evicted = true;
        drop(a);
        self.eviction.notify_one();
        true
    }

    /// Completes once the connection has been evicted.
    pub(crate) async fn evicted(&self) {
        self.eviction.notified().await;
    }

    /// Marks a request as started; `None` when the connection was evicted
    /// (the request arrived as it was being closed).
    pub(crate) fn begin_request(
        self: &Arc<Self>,
        body_received: Option<Arc<AtomicBool>>,
    ) -> Option<RequestGuard> {
        let mut a = self.activity();
        if a.evicted {
            return None;
        }
        a.in_flight += 1;
        a.body_unread = false;
        Some(RequestGuard {
            conn: Arc::clone(self),
            body_received,
        })
    }

    /// Whether the client may still be sending the body of a request that
    /// was answered without reading it all.
    pub(crate) fn body_unread(&self) -> bool {
        self.activity().body_unread
    }

    /// Records whether writes to the client are stalled.
    pub(crate) fn set_write_blocked(&self, blocked: bool) {
        let was = self.write_blocked.swap(blocked, Ordering::AcqRel);
        if was && !blocked {
            self.changed.notify_one();
        }
    }
}

/// Keeps its connection busy until dropped (with the response body).
pub(crate) struct RequestGuard {
    conn: Arc<OpenConnection>,
    body_received: Option<Arc<AtomicBool>>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut a = self.conn.activity();
        a.in_flight = a.in_flight.saturating_sub(1);
        if a.in_flight == 0 {
            a.idle_since = Instant::now();
        }
        a.body_unread = self
            .body_received
            .as_ref()
            .is_some_and(|r| !r.load(Ordering::Acquire));
        drop(a);
        self.conn.changed.notify_one();
    }
}

pin_project! {
    /// A response body that keeps its connection busy until it has been
    /// sent (or dropped).
    pub(crate) struct TrackedBody<B> {
        #[pin]
        inner: B,
        guard: Option<RequestGuard>,
    }
}

impl<B> TrackedBody<B> {
    /// Wraps `inner`; `guard` is released when the body is dropped.
    pub(crate) fn new(inner: B, guard: Option<RequestGuard>) -> Self {
        Self { inner, guard }
    }
}

impl<B: Body<Data = Bytes>> Body for TrackedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// A request body that records when it has been received in full.
    pub(crate) struct WatchedBody<B> {
        #[pin]
        inner: B,
        received: Option<Arc<AtomicBool>>,
    }
}

impl<B: Body> WatchedBody<B> {
    /// Wraps `inner`; returns the flag set once it is received in full
    /// (`None` when it is empty from the start).
    pub(crate) fn new(inner: B) -> (Self, Option<Arc<AtomicBool>>) {
        let received = (!inner.is_end_stream()).then(|| Arc::new(AtomicBool::new(false)));
        let body = Self {
            inner,
            received: received.clone(),
        };
        (body, received)
    }
}

impl<B: Body<Data = Bytes>> Body for WatchedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        let done = match &frame {
            None => true,
            Some(Ok(_)) => this.inner.is_end_stream(),
            Some(Err(_)) => false,
        };
        if done && let Some(r) = this.received {
            r.store(true, Ordering::Release);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(a: Admission) -> Arc<OpenConnection> {
        match a {
            Admission::Admitted(c) => c,
            Admission::AdmittedByEviction(_) => panic!("evicted while there was room"),
            Admission::Full => panic!("full while there was room"),
        }
    }

    #[test]
    fn a_full_table_evicts_the_longest_idle_connection_and_never_a_busy_one() {
        let table = OpenConnections::new(3);
        let first = admitted(table.admit());
        std::thread::sleep(std::time::Duration::from_millis(5));
        let second = admitted(table.admit());
        std::thread::sleep(std::time::Duration::from_millis(5));
        let third = admitted(table.admit());
        // The oldest is busy: the second (idle longer than the third) goes.
        let busy = first.begin_request(None).expect("not evicted");
        let Admission::AdmittedByEviction(fourth) = table.admit() else {
            panic!("expected an eviction");
        };
        assert!(second.activity().evicted);
        assert!(!first.activity().evicted && !third.activity().evicted);
        // An evicted connection refuses new requests.
        assert!(second.begin_request(None).is_none());
        // Its socket is open until its task ends: it still counts, and no
        // further eviction happens meanwhile.
        assert_eq!(table.len(), 4);
        assert!(matches!(table.admit(), Admission::Full));
        table.remove(&second);
        assert_eq!(table.len(), 3);
        // A stalled write keeps the third busy too; the fourth goes next.
        third.set_write_blocked(true);
        assert!(matches!(table.admit(), Admission::AdmittedByEviction(_)));
        assert!(fourth.activity().evicted);
        table.remove(&fourth);
        // Only busy ones and the newest are left; the newest goes, then the
        // table is full of busy connections.
        let fifth = table.lock().values().max_by_key(|c| c.id).cloned().unwrap();
        assert!(matches!(table.admit(), Admission::AdmittedByEviction(_)));
        assert!(fifth.activity().evicted);
        table.remove(&fifth);
        let sixth_busy = {
            let conns = table.lock();
            let newest = conns.values().max_by_key(|c| c.id).cloned().unwrap();
            drop(conns);
            newest.begin_request(None).unwrap()
        };
        assert!(matches!(table.admit(), Admission::Full));
        // When a request ends, its connection is idle and can go.
        drop(busy);
        assert!(matches!(table.admit(), Admission::AdmittedByEviction(_)));
        assert!(first.activity().evicted);
        drop(sixth_busy);
    }

    /// However many connections arrive before the evicted ones' tasks run,
    /// open sockets stay within the cap plus one.
    #[test]
    fn evictions_wait_for_the_previous_one_to_close() {
        let table = OpenConnections::new(2);
        let _a = admitted(table.admit());
        let _b = admitted(table.admit());
        assert!(matches!(table.admit(), Admission::AdmittedByEviction(_)));
        for _ in 0..10 {
            assert!(matches!(table.admit(), Admission::Full));
        }
        assert_eq!(table.len(), 3);
        let evicted = |table: &OpenConnections| -> Vec<Arc<OpenConnection>> {
            let conns = table.lock();
            conns
                .values()
                .filter(|c| c.activity().evicted)
                .cloned()
                .collect()
        };
        let closing = evicted(&table);
        assert_eq!(closing.len(), 1);
        // Out of descriptors: a connection closing already will free one,
        // so no other is evicted.
        assert!(table.evict_longest_idle());
        assert_eq!(evicted(&table).len(), 1);
        table.remove(&closing[0]);
        assert_eq!(table.len(), 2);
        // Once it has closed, the next eviction may happen.
        assert!(table.evict_longest_idle());
        let next = evicted(&table);
        assert_eq!(next.len(), 1);
        assert!(!Arc::ptr_eq(&next[0], &closing[0]));
    }

    #[test]
    fn a_request_ended_before_its_body_was_read_is_remembered() {
        let table = OpenConnections::new(2);
        let conn = admitted(table.admit());
        let received = Arc::new(AtomicBool::new(false));
        drop(conn.begin_request(Some(Arc::clone(&received))));
        assert!(conn.body_unread());
        received.store(true, Ordering::Release);
        drop(conn.begin_request(Some(received)));
        assert!(!conn.body_unread());
        table.remove(&conn);
        assert_eq!(table.len(), 0);
    }
}
