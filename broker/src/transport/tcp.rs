//! TCP streams of accepted connections: [`TcpConn`], which reads through
//! the shard's readiness set, and [`SharedTcpStream`], which two tasks may
//! write to.
//!
//! A glommio `TcpStream` keeps one waker per direction, and the last task
//! that polled it replaces the waker of the one before. The connection
//! handler reads in one task and writes in another, and over TLS or
//! WebSocket the reading task writes too: TLS records that rustls queues
//! while decrypting, and WebSocket pongs and close frames. Without this
//! wrapper, a writer that waits for the socket to drain can lose its
//! wake-up to the reader and stall for good.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use super::readiness::Registration;

/// An accepted TCP connection. Reads wait for the shard's readiness set
/// (see [`super::readiness`]), and writes go through glommio.
pub struct TcpConn {
    // Declared first so that it drops first, because the socket must
    // leave the readiness set while its descriptor is still open.
    registration: Option<Registration>,
    stream: TcpStream,
}

impl TcpConn {
    pub fn new(stream: TcpStream) -> Self {
        TcpConn {
            registration: Registration::new(stream.as_raw_fd()),
            stream,
        }
    }

    /// Returns the glommio stream, for socket options.
    pub fn get_ref(&self) -> &TcpStream {
        &self.stream
    }

    /// Returns the socket's place in the shard's readiness set, if it has
    /// one.
    pub fn registration(&self) -> Option<&Registration> {
        self.registration.as_ref()
    }
}

impl AsRawFd for TcpConn {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

impl AsyncRead for TcpConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match &this.registration {
            Some(registration) => registration.poll_recv(cx, buf),
            None => Pin::new(&mut this.stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for TcpConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_close(cx)
    }
}

/// A TCP connection whose write readiness wakes every task that waits for
/// it.
pub struct SharedTcpStream {
    stream: TcpConn,
    write_waiters: Arc<WriteWaiters>,
}

/// Wakers of the tasks that wait until the socket accepts more bytes.
#[derive(Default)]
struct WriteWaiters {
    // The executor is single-threaded, but `Wake` requires `Send + Sync`.
    wakers: Mutex<Vec<Waker>>,
}

impl WriteWaiters {
    fn add(&self, waker: &Waker) {
        let mut wakers = self.wakers.lock().expect("waker list is never poisoned");
        if !wakers.iter().any(|known| known.will_wake(waker)) {
            wakers.push(waker.clone());
        }
    }

    /// Wakes every waiting task except the one that `current` wakes.
    fn wake_others(&self, current: Option<&Waker>) {
        let wakers = {
            let mut wakers = self.wakers.lock().expect("waker list is never poisoned");
            if wakers.is_empty() {
                return;
            }
            std::mem::take(&mut *wakers)
        };
        for waker in wakers {
            if !current.is_some_and(|current| waker.will_wake(current)) {
                waker.wake();
            }
        }
    }
}

impl Wake for WriteWaiters {
    fn wake(self: Arc<Self>) {
        self.wake_others(None);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_others(None);
    }
}

impl SharedTcpStream {
    pub fn new(stream: TcpConn) -> Self {
        SharedTcpStream {
            stream,
            write_waiters: Arc::default(),
        }
    }

    /// Returns the glommio stream, for socket options.
    pub fn get_ref(&self) -> &TcpStream {
        self.stream.get_ref()
    }
}

impl AsRawFd for SharedTcpStream {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

impl AsyncRead for SharedTcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for SharedTcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let shared_waker = Waker::from(this.write_waiters.clone());
        let mut shared_cx = Context::from_waker(&shared_waker);
        let result = Pin::new(&mut this.stream).poll_write(&mut shared_cx, buf);
        if result.is_pending() {
            // The executor is single-threaded, so readiness cannot arrive
            // between the poll above and this registration.
            this.write_waiters.add(cx.waker());
        } else {
            // A completed write drops glommio's pending readiness poll, so
            // any other task that waited on it must poll again. A spurious
            // wake-up only costs that task one poll.
            this.write_waiters.wake_others(Some(cx.waker()));
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_close(cx)
    }
}
