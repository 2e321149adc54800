//! Read and write halves of one stream for two tasks of the same shard.
//!
//! `futures_lite::io::split` guards the stream with a mutex, so that the
//! halves may live on different threads. A connection's reader and writer
//! both run on the shard that owns it, so here the halves share the stream
//! through a `RefCell`: no locked instruction per read or write. Each poll
//! borrows the stream only while it runs. A borrow would fail, and panic,
//! only if a poll of one half started a poll of the other, and no
//! transport does that.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};

/// The reading half of a stream split by [`split`].
#[derive(Debug)]
pub struct ReadHalf<T>(Rc<RefCell<T>>);

/// The writing half of a stream split by [`split`].
#[derive(Debug)]
pub struct WriteHalf<T>(Rc<RefCell<T>>);

/// Splits `stream` into halves that stay on this thread.
pub fn split<T>(stream: T) -> (ReadHalf<T>, WriteHalf<T>) {
    let shared = Rc::new(RefCell::new(stream));
    (ReadHalf(shared.clone()), WriteHalf(shared))
}

impl<T> ReadHalf<T> {
    /// Calls `f` with the stream, which must not be polled meanwhile.
    pub fn with_stream<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.0.borrow())
    }
}

impl<T> WriteHalf<T> {
    /// Calls `f` with the stream, which must not be polled meanwhile.
    pub fn with_stream<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.0.borrow())
    }
}

impl<T: AsyncRead + Unpin> ReadHalf<T> {
    /// Reads like [`AsyncRead::poll_read`], through a shared reference.
    pub fn poll_read_shared(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadHalf<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteHalf<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::io::{AsyncReadExt, AsyncWriteExt, Cursor};

    #[test]
    fn halves_share_one_stream() {
        futures_lite::future::block_on(async {
            let (mut reader, mut writer) = split(Cursor::new(vec![0u8; 8]));
            writer.write_all(b"abcd").await.unwrap();
            // The cursor is shared: the read starts after the write.
            let mut rest = [0u8; 8];
            let n = reader.read(&mut rest).await.unwrap();
            assert_eq!(n, 4);
            assert_eq!(&rest[..n], &[0, 0, 0, 0]);
            writer.close().await.unwrap();
            assert_eq!(reader.0.borrow().get_ref()[..4], *b"abcd");
        });
    }
}
