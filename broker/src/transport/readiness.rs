//! Read readiness of a shard's TCP sockets, from one epoll set per shard.
//!
//! On its own, glommio waits for a socket with an io_uring poll per socket,
//! armed after every read that empties it. Each poll's completion reaches
//! the shard's thread as task work with an interrupt. With many clients
//! that each send a little (1,000 publishers at 100 messages/s), that is
//! one poll and one interrupt per message.
//!
//! Here every TCP socket of a shard joins one edge-triggered epoll set,
//! and the shard waits for the set instead. While the shard is busy,
//! sockets that become readable queue up in the set without waking
//! anything, and one `epoll_wait` picks them all up.
//!
//! A connection may also give its socket a [`ReadHook`]: while its reader
//! waits, the readiness task then reads and handles the socket's data
//! itself, and wakes the reader only for what the hook leaves to it. With
//! 1,000 publishers that each send a message every 10 ms, that saves a
//! task wake-up and poll per message.
//!
//! Writes still go through glommio: they rarely wait.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_lite::AsyncReadExt;
use tracing::warn;

/// Events that report the peer's end of the stream or an error.
const HANG_UP_EVENTS: u32 = (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;

/// Events taken from the set per `epoll_wait` call.
const EVENTS_PER_CALL: usize = 256;

/// Sockets a pass must find readable for the shard to pause before the
/// next pass (see [`set_read_pause`]).
const BUSY_PASS: usize = 4;

/// Pause of the shard's readiness task after the set could not be waited
/// for, so that an error (such as running out of descriptors) does not
/// spin the shard.
const RETRY_AFTER_ERROR: Duration = Duration::from_millis(1);

thread_local! {
    /// The set of the shard that runs on this thread, created on first
    /// use. `None` when the kernel could not create one, and glommio then
    /// polls each socket on its own.
    static SHARD_SET: Option<Rc<ReadinessSet>> = ReadinessSet::new()
        .inspect_err(|error| {
            warn!(%error, "failed to create the epoll set for socket readiness; polling each socket through io_uring");
        })
        .ok();
}

/// Sets how long the readiness set of this thread's shard waits after a
/// pass that found at least [`BUSY_PASS`] readable sockets, before it
/// looks for more. While many clients each send a little, one pass then
/// reads many sockets, and the shard goes idle and wakes once per pause
/// instead of once per few messages. Zero looks again as soon as the
/// shard is idle.
pub fn set_read_pause(pause: Duration) {
    SHARD_SET.with(|set| {
        if let Some(set) = set {
            set.pause.set(pause);
        }
    });
}

/// Reading done by the readiness task for a socket whose reader waits.
///
/// A pass over the set first calls [`ReadHook::read`] for every reported
/// socket and then [`ReadHook::handle`] for each. With many sockets that
/// each bring one small message, the kernel's receive path and the
/// shard's handling then each run over the whole pass, instead of
/// evicting each other's code and data from the CPU caches once per
/// socket.
pub trait ReadHook {
    /// Reads the socket `fd` for its waiting reader, when the set reports
    /// it readable ([`recv`] reads it). Returns true when the hook keeps
    /// what it read for [`ReadHook::handle`], and false when the reader
    /// must run instead.
    fn read(&self, fd: RawFd) -> bool;

    /// Handles what [`ReadHook::read`] read. Returns true when the reader
    /// must run: the socket may still hold data, or the hook left work to
    /// the reader. Returns false when the hook read the socket empty and
    /// handled all of it.
    fn handle(self: Rc<Self>) -> bool;
}

/// One shard's epoll set and the state of each socket in it.
struct ReadinessSet {
    epoll: OwnedFd,
    slots: RefCell<Slots>,
    /// Time to wait after a busy pass before the next one.
    pause: Cell<Duration>,
    /// Hooks to call in the current pass, kept to reuse its memory.
    hooked: RefCell<Vec<HookCall>>,
    /// The executor whose task waits for the set. Another executor that
    /// runs on this thread later starts its own.
    waiting: Cell<Option<usize>>,
}

/// A hook to call for a reported socket, with the slot it was found in.
struct HookCall {
    index: u32,
    generation: u32,
    fd: RawFd,
    hook: Rc<dyn ReadHook>,
    /// Result of the read step: whether the socket was still in the set,
    /// and whether the hook kept data to handle.
    outcome: ReadOutcome,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ReadOutcome {
    /// Not read yet, or the socket left the set before its read.
    Skipped,
    /// The reader must run.
    WakeReader,
    /// The hook read data to handle.
    Handle,
}

/// Sockets of the set, by index. The epoll event of a socket carries its
/// index and the slot's generation, so an event for a socket that left
/// the set does not wake the socket that took its slot.
#[derive(Default)]
struct Slots {
    entries: Vec<Slot>,
    free: Vec<u32>,
}

#[derive(Default)]
struct Slot {
    generation: u32,
    fd: RawFd,
    /// Data may be waiting: the socket has not been read empty since the
    /// set last reported it.
    ready: bool,
    /// The set reported the peer's end of the stream (or an error). No
    /// later event comes for it, so a read that does not fill its buffer
    /// does not mean the socket is empty: the next read returns the end.
    hung_up: bool,
    /// The task that waits for the socket to become readable.
    waker: Option<Waker>,
    /// Reads for the waiting task, if the connection set one.
    hook: Option<Rc<dyn ReadHook>>,
}

impl ReadinessSet {
    fn new() -> io::Result<Rc<ReadinessSet>> {
        // SAFETY: epoll_create1 takes no pointers and returns a new
        // descriptor or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Rc::new(ReadinessSet {
            // SAFETY: `fd` was just created and nothing else owns it.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            slots: RefCell::default(),
            pause: Cell::new(Duration::ZERO),
            hooked: RefCell::default(),
            waiting: Cell::new(None),
        }))
    }

    /// Adds `fd` to the set and returns its token.
    fn add(self: &Rc<Self>, fd: RawFd) -> io::Result<(u32, u32)> {
        let (index, generation) = {
            let mut slots = self.slots.borrow_mut();
            let index = match slots.free.pop() {
                Some(index) => index,
                None => {
                    slots.entries.push(Slot::default());
                    u32::try_from(slots.entries.len() - 1).map_err(|_| {
                        io::Error::new(io::ErrorKind::OutOfMemory, "readiness set is full")
                    })?
                }
            };
            let slot = &mut slots.entries[index as usize];
            slot.generation = slot.generation.wrapping_add(1);
            // A new socket may already hold data: read before waiting.
            slot.fd = fd;
            slot.ready = true;
            slot.hung_up = false;
            slot.waker = None;
            slot.hook = None;
            (index, slot.generation)
        };
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: token(index, generation),
        };
        // SAFETY: both descriptors are open and `event` outlives the call.
        let added =
            unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
        if added < 0 {
            let error = io::Error::last_os_error();
            self.slots.borrow_mut().free.push(index);
            return Err(error);
        }
        self.start_waiting();
        Ok((index, generation))
    }

    /// Removes `fd` from the set. It must still be open: the kernel keeps
    /// a closed descriptor in the set for as long as a duplicate of it is
    /// open, as after a handoff to another shard.
    fn remove(&self, fd: RawFd, index: u32) {
        // SAFETY: both descriptors are open; EPOLL_CTL_DEL ignores the
        // event pointer.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            );
        }
        let mut slots = self.slots.borrow_mut();
        let slot = &mut slots.entries[index as usize];
        slot.ready = false;
        slot.waker = None;
        slot.hook = None;
        slots.free.push(index);
    }

    fn start_waiting(self: &Rc<Self>) {
        let executor = glommio::executor().id();
        if self.waiting.replace(Some(executor)) == Some(executor) {
            return;
        }
        let set = self.clone();
        glommio::spawn_local(async move { set.wait_loop().await }).detach();
    }

    /// Waits for the set to report sockets and wakes their readers, for as
    /// long as the shard runs.
    async fn wait_loop(self: Rc<Self>) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_CALL];
        // Whether the last pass found enough sockets to pause before the
        // next one.
        let mut busy = false;
        loop {
            if busy {
                glommio::timer::sleep(self.pause.get()).await;
            } else if let Err(error) = self.readable().await {
                warn!(%error, "waiting for socket readiness failed; retrying");
                glommio::timer::sleep(RETRY_AFTER_ERROR).await;
            }
            let mut reported = 0;
            loop {
                // SAFETY: `events` has room for `EVENTS_PER_CALL` entries,
                // and a zero timeout makes the call return at once.
                let count = unsafe {
                    libc::epoll_wait(
                        self.epoll.as_raw_fd(),
                        events.as_mut_ptr(),
                        EVENTS_PER_CALL as libc::c_int,
                        0,
                    )
                };
                if count < 0 {
                    let error = io::Error::last_os_error();
                    if error.kind() != io::ErrorKind::Interrupted {
                        warn!(%error, "epoll_wait failed");
                        break;
                    }
                    continue;
                }
                let count = count as usize;
                reported += count;
                self.wake(&events[..count]);
                if count < EVENTS_PER_CALL {
                    break;
                }
            }
            busy = reported >= BUSY_PASS && !self.pause.get().is_zero();
        }
    }

    /// Waits until the set has a socket to report.
    ///
    /// glommio 0.9 has no public way to wait for an arbitrary descriptor,
    /// but a stream made from a descriptor arms a read poll on it at once.
    /// A duplicate of the epoll descriptor made into a stream therefore
    /// waits for the set. Once the poll fires, the stream's read tries
    /// `recv`, which an epoll descriptor fails with `ENOTSOCK`: that
    /// failure is the signal. Dropping the stream closes the duplicate.
    async fn readable(&self) -> io::Result<()> {
        // SAFETY: the epoll descriptor is open; F_DUPFD_CLOEXEC returns a
        // new descriptor or -1.
        let duplicate = unsafe { libc::fcntl(self.epoll.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if duplicate < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `duplicate` is open and owned by nothing else.
        let mut stream = unsafe { glommio::net::TcpStream::from_raw_fd(duplicate) };
        let mut byte = [0u8; 1];
        match stream.read(&mut byte).await {
            Err(error) if error.raw_os_error() == Some(libc::ENOTSOCK) => Ok(()),
            Err(error) => Err(error),
            Ok(_) => Ok(()),
        }
    }

    /// Marks the reported sockets readable. A socket whose reader waits
    /// and that has a hook is handed to the hook; other readers wake.
    fn wake(&self, events: &[libc::epoll_event]) {
        let mut hooked = std::mem::take(&mut *self.hooked.borrow_mut());
        {
            let mut slots = self.slots.borrow_mut();
            for event in events {
                let (index, generation) = split_token(event.u64);
                let Some(slot) = slots.entries.get_mut(index as usize) else {
                    continue;
                };
                if slot.generation != generation {
                    continue;
                }
                slot.ready = true;
                if event.events & HANG_UP_EVENTS != 0 {
                    slot.hung_up = true;
                }
                match &slot.hook {
                    Some(hook) if slot.waker.is_some() => {
                        hooked.push(HookCall {
                            index,
                            generation,
                            fd: slot.fd,
                            hook: hook.clone(),
                            outcome: ReadOutcome::Skipped,
                        });
                    }
                    _ => {
                        if let Some(waker) = slot.waker.take() {
                            waker.wake();
                        }
                    }
                }
            }
        }
        // Hooks run with the slots released: handling a socket's data may
        // open or close other sockets of the set. A socket that left the
        // set meanwhile is skipped, as its descriptor may now be another's.
        // Every socket is read before any is handled (see `ReadHook`).
        for call in hooked.iter_mut() {
            if !self.holds(call.index, call.generation) {
                continue;
            }
            call.outcome = if call.hook.read(call.fd) {
                ReadOutcome::Handle
            } else {
                ReadOutcome::WakeReader
            };
        }
        for HookCall {
            index,
            generation,
            hook,
            outcome,
            ..
        } in hooked.drain(..)
        {
            if outcome == ReadOutcome::Skipped || !self.holds(index, generation) {
                continue;
            }
            let wake_reader = outcome == ReadOutcome::WakeReader || hook.handle();
            let mut slots = self.slots.borrow_mut();
            let Some(slot) = slots.entries.get_mut(index as usize) else {
                continue;
            };
            if slot.generation != generation {
                continue;
            }
            // After a hang-up the reader must read on to the end of the
            // stream, even when the hook read the socket's data.
            slot.ready = wake_reader || slot.hung_up;
            if slot.ready {
                if let Some(waker) = slot.waker.take() {
                    waker.wake();
                }
            }
        }
        *self.hooked.borrow_mut() = hooked;
    }

    /// Returns whether the socket of this slot and generation is still in
    /// the set with its hook.
    fn holds(&self, index: u32, generation: u32) -> bool {
        let slots = self.slots.borrow();
        slots
            .entries
            .get(index as usize)
            .is_some_and(|slot| slot.generation == generation && slot.hook.is_some())
    }
}

fn token(index: u32, generation: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(index)
}

fn split_token(token: u64) -> (u32, u32) {
    ((token & u64::from(u32::MAX)) as u32, (token >> 32) as u32)
}

/// A socket's place in its shard's readiness set. Dropping it removes the
/// socket from the set, so it must drop before the socket closes.
pub struct Registration {
    set: Rc<ReadinessSet>,
    fd: RawFd,
    index: u32,
    generation: u32,
}

impl Registration {
    /// Adds the socket `fd` to the readiness set of the shard on this
    /// thread. Returns `None` when there is no set or the kernel rejected
    /// the socket, and the caller then reads through glommio.
    pub fn new(fd: RawFd) -> Option<Registration> {
        let set = SHARD_SET.with(Clone::clone)?;
        match set.add(fd) {
            Ok((index, generation)) => Some(Registration {
                set,
                fd,
                index,
                generation,
            }),
            Err(error) => {
                warn!(%error, fd, "failed to add the socket to the readiness set; polling it through io_uring");
                None
            }
        }
    }

    /// Lets the shard's readiness task read for the socket's reader while
    /// the reader waits (see [`ReadHook`]), or stops it with `None`.
    pub fn set_hook(&self, hook: Option<Rc<dyn ReadHook>>) {
        let mut slots = self.set.slots.borrow_mut();
        let slot = &mut slots.entries[self.index as usize];
        debug_assert_eq!(slot.generation, self.generation);
        slot.hook = hook;
    }

    /// Reads from the socket into `buf` once it has data, without
    /// blocking the thread.
    pub fn poll_recv(&self, cx: &Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        if !self.take_ready(cx) {
            return Poll::Pending;
        }
        match recv(self.fd, buf) {
            Ok(read) => {
                // A read that did not fill `buf` emptied the socket. With
                // an edge-triggered set, data that arrives after it is
                // reported again, so the next read can wait for that. The
                // end of the stream is not reported again once it was.
                if read < buf.len() && read > 0 && !self.hung_up() {
                    self.set_ready(false);
                }
                Poll::Ready(Ok(read))
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                self.set_ready(false);
                // Not ready now, so this stores the task's waker.
                self.take_ready(cx);
                Poll::Pending
            }
            Err(error) => Poll::Ready(Err(error)),
        }
    }

    /// Returns whether the socket may hold data, and otherwise keeps the
    /// task's waker for the set to wake.
    fn take_ready(&self, cx: &Context<'_>) -> bool {
        let mut slots = self.set.slots.borrow_mut();
        let slot = &mut slots.entries[self.index as usize];
        debug_assert_eq!(slot.generation, self.generation);
        if slot.ready {
            return true;
        }
        store_waker(&mut slot.waker, cx.waker());
        false
    }

    /// Returns whether the set reported the end of the stream.
    fn hung_up(&self) -> bool {
        self.set.slots.borrow().entries[self.index as usize].hung_up
    }

    /// Sets whether the socket may hold data. After `false`, the next
    /// read waits for the set to report the socket.
    fn set_ready(&self, ready: bool) {
        self.set.slots.borrow_mut().entries[self.index as usize].ready = ready;
    }
}

/// Reads the data waiting on socket `fd` into `buf` without blocking.
/// Returns `Ok(0)` at the end of the stream and `WouldBlock` when no data
/// is waiting.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for `buf.len()` bytes; the caller keeps
        // `fd` open.
        let read =
            unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if read >= 0 {
            return Ok(read as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

fn store_waker(stored: &mut Option<Waker>, waker: &Waker) {
    match stored {
        Some(known) if known.will_wake(waker) => {}
        _ => *stored = Some(waker.clone()),
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.set.remove(self.fd, self.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn run<F: std::future::Future<Output = ()>>(test: impl FnOnce() -> F + Send + 'static) {
        glommio::LocalExecutorBuilder::default()
            .make()
            .expect("glommio executor starts")
            .run(async move { test().await });
    }

    /// A registered non-blocking socket, its peer, and a waker that counts
    /// its wake-ups.
    struct Registered {
        registration: Registration,
        peer: UnixStream,
        counter: Arc<CountingWaker>,
        waker: Waker,
        /// The registered socket, kept open for as long as the registration.
        _ours: UnixStream,
    }

    fn registered_pair() -> Registered {
        let (ours, peer) = UnixStream::pair().expect("socket pair");
        ours.set_nonblocking(true).expect("non-blocking");
        let registration = Registration::new(ours.as_raw_fd()).expect("registered");
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        Registered {
            registration,
            peer,
            counter,
            waker,
            _ours: ours,
        }
    }

    /// Waits up to a second for `counter` to pass `seen`.
    async fn wait_for_wake(counter: &CountingWaker, seen: usize) -> usize {
        for _ in 0..200 {
            let now = counter.0.load(Ordering::SeqCst);
            if now > seen {
                return now;
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        counter.0.load(Ordering::SeqCst)
    }

    #[test]
    fn reader_wakes_and_reads_data() {
        run(|| async {
            let mut socket = registered_pair();
            let cx = Context::from_waker(&socket.waker);
            let mut buf = [0u8; 16];

            // Empty socket: the read waits.
            assert!(socket.registration.poll_recv(&cx, &mut buf).is_pending());
            socket.peer.write_all(b"abc").expect("write");
            assert_eq!(
                wait_for_wake(&socket.counter, 0).await,
                1,
                "set woke the reader"
            );
            match socket.registration.poll_recv(&cx, &mut buf) {
                Poll::Ready(Ok(3)) => assert_eq!(&buf[..3], b"abc"),
                other => panic!("expected 3 bytes, got {other:?}"),
            }
            // Read empty: the next read waits without a system call.
            assert!(socket.registration.poll_recv(&cx, &mut buf).is_pending());

            // Data that arrives after that is reported again.
            socket.peer.write_all(b"de").expect("write");
            assert_eq!(wait_for_wake(&socket.counter, 1).await, 2);
            assert!(matches!(
                socket.registration.poll_recv(&cx, &mut buf),
                Poll::Ready(Ok(2))
            ));

            // End of stream wakes the reader and reads as zero bytes.
            assert!(socket.registration.poll_recv(&cx, &mut buf).is_pending());
            drop(socket.peer);
            assert_eq!(wait_for_wake(&socket.counter, 2).await, 3);
            assert!(matches!(
                socket.registration.poll_recv(&cx, &mut buf),
                Poll::Ready(Ok(0))
            ));
        });
    }

    #[test]
    fn end_behind_data_reads_as_zero() {
        run(|| async {
            let mut socket = registered_pair();
            let cx = Context::from_waker(&socket.waker);
            let mut buf = [0u8; 16];
            assert!(socket.registration.poll_recv(&cx, &mut buf).is_pending());

            // Data and the end of the stream arrive before the set is
            // waited for, so one event reports both.
            socket.peer.write_all(b"abc").expect("write");
            drop(socket.peer);
            assert_eq!(wait_for_wake(&socket.counter, 0).await, 1);
            assert!(matches!(
                socket.registration.poll_recv(&cx, &mut buf),
                Poll::Ready(Ok(3))
            ));
            // The short read did not empty the socket: the end is next.
            assert!(matches!(
                socket.registration.poll_recv(&cx, &mut buf),
                Poll::Ready(Ok(0))
            ));
        });
    }

    /// Hook that reads its socket empty into `bytes`, counts its calls,
    /// and wakes the reader when `wake_reader` is set.
    #[derive(Default)]
    struct TestHook {
        calls: Cell<usize>,
        wake_reader: Cell<bool>,
        bytes: RefCell<Vec<u8>>,
    }

    impl ReadHook for TestHook {
        fn read(&self, fd: RawFd) -> bool {
            self.calls.set(self.calls.get() + 1);
            let mut buf = [0u8; 64];
            loop {
                match recv(fd, &mut buf) {
                    Ok(0) => return false,
                    Ok(read) => self.bytes.borrow_mut().extend_from_slice(&buf[..read]),
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => return true,
                    Err(_) => return false,
                }
            }
        }

        fn handle(self: Rc<Self>) -> bool {
            self.wake_reader.get()
        }
    }

    /// Waits up to two seconds for `hook` to have been called `calls`
    /// times.
    async fn wait_for_calls(hook: &TestHook, calls: usize) {
        for _ in 0..400 {
            if hook.calls.get() >= calls {
                return;
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        panic!("hook called {} times, expected {calls}", hook.calls.get());
    }

    #[test]
    fn hook_reads_for_a_waiting_reader() {
        run(|| async {
            let mut socket = registered_pair();
            let hook = Rc::new(TestHook::default());
            socket.registration.set_hook(Some(hook.clone()));
            let cx = Context::from_waker(&socket.waker);
            let mut buf = [0u8; 16];

            // The reader waits; the hook reads and handles it all.
            assert!(socket.registration.poll_recv(&cx, &mut buf).is_pending());
            socket.peer.write_all(b"abc").expect("write");
            wait_for_calls(&hook, 1).await;
            assert_eq!(hook.calls.get(), 1, "hook called once");
            assert_eq!(&hook.bytes.borrow()[..], b"abc");
            assert_eq!(socket.counter.0.load(Ordering::SeqCst), 0, "reader slept");
            assert!(socket.registration.poll_recv(&cx, &mut buf).is_pending());

            // A hook that leaves work wakes the reader.
            hook.wake_reader.set(true);
            socket.peer.write_all(b"d").expect("write");
            assert_eq!(wait_for_wake(&socket.counter, 0).await, 1);
            assert_eq!(hook.calls.get(), 2);
            assert_eq!(&hook.bytes.borrow()[..], b"abcd");

            // Without the hook, the reader reads for itself again.
            socket.registration.set_hook(None);
            assert!(socket.registration.poll_recv(&cx, &mut buf).is_pending());
            socket.peer.write_all(b"e").expect("write");
            assert_eq!(wait_for_wake(&socket.counter, 1).await, 2);
            assert!(matches!(
                socket.registration.poll_recv(&cx, &mut buf),
                Poll::Ready(Ok(1))
            ));
            assert_eq!(buf[0], b'e');
            assert_eq!(hook.calls.get(), 2, "hook no longer called");
        });
    }

    /// Hook that reads its socket empty and logs its calls under `name`.
    struct LoggingHook {
        name: &'static str,
        log: Rc<RefCell<Vec<String>>>,
    }

    impl ReadHook for LoggingHook {
        fn read(&self, fd: RawFd) -> bool {
            let mut buf = [0u8; 64];
            while matches!(recv(fd, &mut buf), Ok(read) if read > 0) {}
            self.log.borrow_mut().push(format!("read {}", self.name));
            true
        }

        fn handle(self: Rc<Self>) -> bool {
            self.log.borrow_mut().push(format!("handle {}", self.name));
            false
        }
    }

    #[test]
    fn pass_reads_all_before_handling() {
        run(|| async {
            let log = Rc::new(RefCell::new(Vec::new()));
            let mut sockets = [registered_pair(), registered_pair()];
            let mut buf = [0u8; 4];
            for (socket, name) in sockets.iter().zip(["a", "b"]) {
                let hook = LoggingHook {
                    name,
                    log: log.clone(),
                };
                socket.registration.set_hook(Some(Rc::new(hook)));
                let cx = Context::from_waker(&socket.waker);
                assert!(socket.registration.poll_recv(&cx, &mut buf).is_pending());
            }

            // Both writes land before the readiness task runs, so one pass
            // reports both sockets.
            for socket in &mut sockets {
                socket.peer.write_all(b"x").expect("write");
            }
            for _ in 0..400 {
                if log.borrow().len() >= 4 {
                    break;
                }
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }

            let log = log.borrow();
            assert_eq!(log.len(), 4, "{log:?}");
            let mut reads = log[..2].to_vec();
            reads.sort();
            assert_eq!(reads, ["read a", "read b"], "{log:?}");
            let mut handles = log[2..].to_vec();
            handles.sort();
            assert_eq!(handles, ["handle a", "handle b"], "{log:?}");
        });
    }

    #[test]
    fn busy_pass_pauses_before_the_next() {
        const PAUSE: Duration = Duration::from_millis(200);
        run(|| async {
            set_read_pause(PAUSE);
            let hook = Rc::new(TestHook::default());
            let mut sockets: Vec<Registered> = (0..BUSY_PASS).map(|_| registered_pair()).collect();
            let mut buf = [0u8; 4];
            for socket in &sockets {
                socket.registration.set_hook(Some(hook.clone()));
                let cx = Context::from_waker(&socket.waker);
                assert!(socket.registration.poll_recv(&cx, &mut buf).is_pending());
            }

            // One socket alone makes a quiet pass: the next pass follows
            // as soon as data arrives.
            sockets[0].peer.write_all(b"a").expect("write");
            wait_for_calls(&hook, 1).await;
            let started = std::time::Instant::now();
            sockets[0].peer.write_all(b"b").expect("write");
            wait_for_calls(&hook, 2).await;
            let quiet = started.elapsed();

            // All of them at once make a busy pass: the set waits out the
            // pause before it reports the next write.
            for socket in &mut sockets {
                socket.peer.write_all(b"c").expect("write");
            }
            wait_for_calls(&hook, 2 + BUSY_PASS).await;
            let started = std::time::Instant::now();
            sockets[1].peer.write_all(b"d").expect("write");
            wait_for_calls(&hook, 3 + BUSY_PASS).await;
            let after_busy = started.elapsed();

            assert!(quiet < PAUSE * 3 / 4, "quiet pass waited {quiet:?}");
            assert!(
                after_busy >= PAUSE * 3 / 4,
                "busy pass waited only {after_busy:?}"
            );
            set_read_pause(Duration::ZERO);
        });
    }

    #[test]
    fn second_executor_wakes_readers() {
        // The set outlives an executor on its thread, and its waiting task
        // does not: the next executor must start the task again.
        std::thread::spawn(|| {
            for round in 0..2 {
                let executor = glommio::LocalExecutorBuilder::default()
                    .make()
                    .expect("glommio executor starts");
                executor.run(async move {
                    let mut socket = registered_pair();
                    let cx = Context::from_waker(&socket.waker);
                    let mut buf = [0u8; 4];
                    assert!(socket.registration.poll_recv(&cx, &mut buf).is_pending());
                    socket.peer.write_all(b"x").expect("write");
                    assert_eq!(
                        wait_for_wake(&socket.counter, 0).await,
                        1,
                        "reader not woken on executor {round}"
                    );
                });
            }
        })
        .join()
        .expect("test thread");
    }

    #[test]
    fn reused_slot_ignores_old_events() {
        run(|| async {
            let (first, mut first_peer) = UnixStream::pair().expect("socket pair");
            let first_registration = Registration::new(first.as_raw_fd()).expect("registered");
            let (index, generation) = (first_registration.index, first_registration.generation);
            drop(first_registration);

            let (second, _second_peer) = UnixStream::pair().expect("socket pair");
            second.set_nonblocking(true).expect("non-blocking");
            let second_registration = Registration::new(second.as_raw_fd()).expect("registered");
            assert_eq!(second_registration.index, index, "slot reused");
            assert_ne!(second_registration.generation, generation);

            let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
            let waker = Waker::from(counter.clone());
            let cx = Context::from_waker(&waker);
            let mut buf = [0u8; 4];
            assert!(second_registration.poll_recv(&cx, &mut buf).is_pending());

            // An event with the old token, as if the first socket had been
            // reported late, must not wake the second socket's reader.
            first_peer.write_all(b"x").expect("write");
            second_registration.set.wake(&[libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: token(index, generation),
            }]);
            assert_eq!(counter.0.load(Ordering::SeqCst), 0);
            assert!(second_registration.poll_recv(&cx, &mut buf).is_pending());
        });
    }
}
