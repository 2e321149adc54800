//! The byte stream under an MQTT connection, whatever the listener's
//! transport, and what a shard needs to hand it over to another shard.

use std::any::Any;
use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

/// A connection's byte stream.
pub enum Transport {
    Tcp(TcpStream),
}

/// Transport state that travels with a connection handed to another shard,
/// beside the socket itself.
pub enum TransportState {
    Tcp,
}

impl Transport {
    /// Takes the stream apart for a handoff: a duplicate of the socket's
    /// descriptor (the caller's copy closes when the stream drops) and the
    /// transport's state.
    ///
    /// # Errors
    ///
    /// Returns the OS error when the descriptor cannot be duplicated.
    pub fn into_handoff(self) -> io::Result<(RawFd, Box<dyn Any + Send>)> {
        let (fd, state) = match &self {
            Transport::Tcp(stream) => (stream.as_raw_fd(), TransportState::Tcp),
        };
        // SAFETY: `fd` is the open descriptor of the stream we still own;
        // dup returns a new descriptor for the same socket or -1.
        let duplicate = unsafe { libc::dup(fd) };
        if duplicate < 0 {
            return Err(io::Error::last_os_error());
        }
        drop(self);
        Ok((duplicate, Box::new(state)))
    }

    /// Rebuilds a stream handed over by another shard.
    ///
    /// # Safety
    ///
    /// `fd` must be an open socket descriptor that nothing else owns.
    pub unsafe fn from_handoff(fd: RawFd, state: Option<Box<dyn Any + Send>>) -> Transport {
        // SAFETY: the caller guarantees `fd` is an open socket we own.
        let stream = unsafe { TcpStream::from_raw_fd(fd) };
        match state
            .and_then(|state| state.downcast::<TransportState>().ok())
            .map(|state| *state)
        {
            Some(TransportState::Tcp) | None => Transport::Tcp(stream),
        }
    }

    /// Disables Nagle's algorithm: the writer already batches per wake-up.
    pub fn set_nodelay(&self) {
        match self {
            Transport::Tcp(stream) => {
                let _ = stream.set_nodelay(true);
            }
        }
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(stream) => Pin::new(stream).poll_close(cx),
        }
    }
}
