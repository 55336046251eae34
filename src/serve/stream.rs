//! An accepted TCP connection with a send timeout and nginx's lingering
//! close.
//!
//! When the server answers before reading a whole request body (413 for an
//! oversized body, 408, 401 …) and closes the socket while the client is
//! still sending, the kernel answers the unread data with a reset, and a
//! client that writes its whole body before reading never sees the answer
//! (it gets "broken pipe" or "connection reset"). Closing *lingeringly* —
//! shut down the write side (the client reads the answer and end of
//! stream), then read and discard what the client still sends, bounded in
//! bytes and time, then close — lets the answer arrive.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::connections::OpenConnection;

/// Bounds of the lingering close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LingerOptions {
    /// Most bytes read and discarded after the answer.
    pub max_bytes: u64,
    /// Longest time spent reading them.
    pub max_time: Duration,
    /// Longest wait for the next bytes from the client.
    pub idle_time: Duration,
}

impl Default for LingerOptions {
    fn default() -> Self {
        Self {
            max_bytes: super::DEFAULT_LINGER_MAX_BYTES,
            max_time: super::DEFAULT_LINGER_MAX_TIME,
            idle_time: super::DEFAULT_LINGER_IDLE_TIME,
        }
    }
}

/// An accepted connection as hyper sees it.
pub(crate) struct AcceptedStream {
    inner: TcpStream,
    conn: Arc<OpenConnection>,
    send_timeout: Duration,
    /// Armed while a write is stalled.
    send_deadline: Option<Pin<Box<Sleep>>>,
    linger: LingerOptions,
    closing: Closing,
}

enum Closing {
    /// Not asked to close yet.
    Open,
    /// Write side shut down; discarding what the client still sends.
    Draining {
        discarded: u64,
        deadline: Instant,
        idle: Pin<Box<Sleep>>,
    },
    /// Closed (or nothing left to wait for).
    Done,
}

impl AcceptedStream {
    pub(crate) fn new(
        inner: TcpStream,
        conn: Arc<OpenConnection>,
        send_timeout: Duration,
        linger: LingerOptions,
    ) -> Self {
        Self {
            inner,
            conn,
            send_timeout,
            send_deadline: None,
            linger,
            closing: Closing::Open,
        }
    }

    /// After a write returned `Pending`: fails once the write has been
    /// stalled for the send timeout.
    fn poll_send_deadline<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timeout = self.send_timeout;
        let deadline = self.send_deadline.get_or_insert_with(|| {
            self.conn.set_write_blocked(true);
            Box::pin(tokio::time::sleep(timeout))
        });
        ready!(deadline.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client read nothing for {timeout:?}"),
        )))
    }

    fn write_progressed(&mut self) {
        if self.send_deadline.take().is_some() {
            self.conn.set_write_blocked(false);
        }
    }

    fn after_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Pending => self.poll_send_deadline(cx),
            ready => {
                self.write_progressed();
                ready
            }
        }
    }

    /// Discards what the client sends until it closes, or a bound is hit.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut scratch = [0u8; 8192];
        loop {
            let Closing::Draining {
                discarded,
                deadline,
                idle,
            } = &mut self.closing
            else {
                return Poll::Ready(Ok(()));
            };
            if Instant::now() >= *deadline || *discarded >= self.linger.max_bytes {
                self.closing = Closing::Done;
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    *discarded += buf.filled().len() as u64;
                    let next = (Instant::now() + self.linger.idle_time).min(*deadline);
                    idle.as_mut().reset(next);
                }
                // End of stream (the client closed) or an error: done.
                Poll::Ready(_) => {
                    self.closing = Closing::Done;
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending => {
                    ready!(idle.as_mut().poll(cx));
                    self.closing = Closing::Done;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }

    /// Whether the client has sent bytes nobody read (a read would not
    /// block); `false` on end of stream or an error.
    fn has_unread_bytes(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.inner.try_read(&mut probe), Ok(1..))
    }
}

impl AsyncRead for AcceptedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for AcceptedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.after_write(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.after_write(cx, polled)
    }

    /// Shuts down the write side, then lingers (see the module docs) when
    /// the client may still be sending: the last request's body was not
    /// read in full, or unread bytes are waiting.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Closing::Open = this.closing {
            let shut = ready!(Pin::new(&mut this.inner).poll_shutdown(cx));
            this.write_progressed();
            let probed = this.has_unread_bytes();
            if shut.is_err() || !(probed || this.conn.body_unread()) {
                this.closing = Closing::Done;
                return Poll::Ready(Ok(()));
            }
            let now = Instant::now();
            let deadline = now + this.linger.max_time;
            this.closing = Closing::Draining {
                discarded: u64::from(probed),
                deadline,
                idle: Box::pin(tokio::time::sleep_until(
                    (now + this.linger.idle_time).min(deadline),
                )),
            };
        }
        this.poll_drain(cx)
    }
}
