//! The shard's side of one network connection.
//!
//! Sessions write encoded packets into a [`Conn`]'s output buffer; the
//! connection's writer task (in the broker crate) drains the whole buffer in
//! one write per wake-up, so deliveries that arrive together leave together.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use coremq_codec::{encode, encoded_len, Packet, Protocol, ReasonCode};
use tracing::debug;

/// Identifier of a connection, unique within its shard.
pub type ConnId = u64;

/// Why the broker is closing a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseRequest {
    /// Reason code of the DISCONNECT sent first (MQTT 5.0 only), or `None`
    /// to close without one.
    pub reason: Option<ReasonCode>,
}

/// Output size of one write from which the connection keeps a buffer of
/// that capacity for the next batch.
const KEEP_OUTPUT_CAPACITY_FROM: usize = 4096;

/// Largest buffer kept for the next batch. A connection whose output once
/// grew to megabytes must not hold that much memory for good, beyond what
/// the shard's output budget counts.
const KEEP_OUTPUT_CAPACITY_UP_TO: usize = 16 * 1024;

/// Bytes a connection may hold while its shard is over its output budget,
/// when its share of the budget is smaller. Beyond them, QoS 0 messages to
/// it are dropped until the shard drains.
const OVER_BUDGET_OUTPUT: usize = 4 * 1024;

/// Time without write progress after which a connection's output no longer
/// counts toward its shard's budget. A client that stopped reading is then
/// bound by its own `max-output-buffer`, by the stalled connections' pool
/// (see [`STALLED_POOL_DIVISOR`]), and cut off as a slow consumer, so it does not
/// make the shard drop messages to the clients that do read.
// NOTE: until then a stalled socket counts in the active pool, so when many
// stall at once, sockets that read can lose QoS 0 messages for that second.
const STALLED_AFTER: Duration = Duration::from_secs(1);

/// Output of the stalled connections of a shard, as the budget divided by
/// this. Past it, QoS 0 messages to stalled connections that have 4 KiB
/// queued are dropped, so that many clients that stop reading at once
/// cannot each hold `max-output-buffer`. A connection brings what it holds
/// when it moves here, so the pool can hold more than its limit.
// NOTE: the broker's memory can grow past what the two pools count. With a
// 4 MiB budget, 200 sockets that stopped reading and 16 KB messages at
// 2,000/s, the pools counted 9-14 MB while anonymous memory grew by 35 MB.
// Where the rest goes was not found.
const STALLED_POOL_DIVISOR: usize = 2;

/// Memory of the output buffers of one shard's connections (their
/// capacity, not only the bytes waiting in them), against the shard's
/// output budget (`max-shard-output`).
///
/// A publisher faster than its subscribers fills every subscriber's buffer
/// to its own limit, so without a shard-wide bound memory grows with the
/// number of subscribers. Over the budget, connections that hold more than
/// their share of it (at least [`OVER_BUDGET_OUTPUT`]) take no more QoS 0
/// messages until the shard drains. Stalled connections count in a pool of their own, of
/// half the budget (see [`STALLED_POOL_DIVISOR`]).
pub struct OutputBudget {
    /// Memory of the connections that drain, and its limit.
    active: Pool,
    /// Memory of the stalled connections, and its limit.
    stalled: Pool,
    /// Open connections of the shard, among which the budget is shared.
    conns: Cell<usize>,
    /// [`OutputBudget::share`] for the current number of connections,
    /// kept so that the check on each message does not divide.
    share: Cell<usize>,
}

/// Bytes charged to one part of a shard's output budget.
struct Pool {
    limit: usize,
    used: Cell<usize>,
}

impl Pool {
    fn new(limit: usize) -> Pool {
        Pool {
            limit,
            used: Cell::new(0),
        }
    }

    fn is_over(&self) -> bool {
        self.used.get() >= self.limit
    }

    fn add(&self, bytes: usize) {
        self.used.set(self.used.get() + bytes);
    }

    fn release(&self, bytes: usize) {
        self.used.set(self.used.get().saturating_sub(bytes));
    }
}

impl OutputBudget {
    /// Creates a budget of `limit` bytes for the connections that drain,
    /// and of a part of it for the stalled ones (see [`STALLED_POOL_DIVISOR`]).
    pub fn new(limit: usize) -> Rc<OutputBudget> {
        Rc::new(OutputBudget {
            active: Pool::new(limit),
            stalled: Pool::new(limit / STALLED_POOL_DIVISOR),
            conns: Cell::new(0),
            share: Cell::new(OVER_BUDGET_OUTPUT.max(limit / 2)),
        })
    }

    /// Returns a connection's share of the budget: half the budget divided
    /// among the shard's connections, and at least [`OVER_BUDGET_OUTPUT`].
    /// Over the budget, only connections that hold more than their share
    /// lose QoS 0 messages, so a client that reads keeps its messages while
    /// clients that fell behind hold the memory. The half keeps the output
    /// of the shard's connections under 1.5 times the budget.
    pub fn share(&self) -> usize {
        self.share.get()
    }

    /// Counts a connection opened (`1`) or closed (`-1`) and updates the
    /// share.
    fn count_conn(&self, change: isize) {
        let conns = self.conns.get().saturating_add_signed(change);
        self.conns.set(conns);
        self.share
            .set((self.active.limit / 2 / conns.max(1)).max(OVER_BUDGET_OUTPUT));
    }

    /// Returns true when the output buffers of the connections that drain
    /// take at least the budget.
    pub fn is_over(&self) -> bool {
        self.active.is_over()
    }

    /// Returns true when the stalled connections' buffers take at least
    /// their pool's limit.
    pub fn stalled_over(&self) -> bool {
        self.stalled.is_over()
    }

    fn pool(&self, counted: bool) -> &Pool {
        if counted {
            &self.active
        } else {
            &self.stalled
        }
    }
}

/// Sends a prefix of `bytes` on the socket `fd` without waiting, and
/// without SIGPIPE when the peer has gone.
fn send_now(fd: RawFd, bytes: &[u8]) -> std::io::Result<usize> {
    loop {
        // SAFETY: `bytes` is valid for its length, and the broker keeps `fd`
        // open while it is installed (see `Conn::set_direct_write`).
        let sent = unsafe {
            libc::send(
                fd,
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if sent >= 0 {
            return Ok(sent as usize);
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Output side and negotiated limits of one connection.
pub struct Conn {
    pub id: ConnId,
    pub protocol: Protocol,
    pub peer: SocketAddr,
    /// Largest packet the client accepts (its Maximum Packet Size).
    pub max_packet_size: u32,
    /// Highest Topic Alias the client accepts; 0 when it takes none.
    pub topic_alias_max: u16,
    output: RefCell<BytesMut>,
    waker: Cell<Option<Waker>>,
    /// Tasks waiting in [`Conn::closed`]: the reader and the writer both do.
    close_wakers: RefCell<Vec<Waker>>,
    close: Cell<Option<CloseRequest>>,
    /// Aliases the broker assigned to topics on this connection.
    outbound_aliases: RefCell<HashMap<String, u16>>,
    /// Bytes buffered beyond which QoS 0 messages to this connection are
    /// dropped rather than queued.
    output_limit: usize,
    dropped: Cell<u64>,
    /// When the writer last made progress on a write that is still going
    /// on, or `None` while the writer is idle.
    write_progress: Cell<Option<Instant>>,
    /// True when the buffered output contains a reply the client may be
    /// waiting for (CONNACK, PUBACK, SUBACK, PINGRESP...), which the
    /// writer must not hold back to batch it with later deliveries.
    urgent: Cell<bool>,
    /// True when the client sent a PUBLISH since the last write that no
    /// reply forced. A client that publishes, such as a request waiting for
    /// its response, may be waiting for its deliveries, so they are not
    /// held. The reply to its PUBLISH does not end that. Acknowledgements
    /// of deliveries do not count, so a QoS 1 subscriber that only reads
    /// still gets its deliveries batched.
    published: Cell<bool>,
    /// Bytes taken by the writer whose write has not finished. They count
    /// toward `output_limit` like buffered ones.
    writing: Cell<usize>,
    /// Writer waiting in [`Conn::urgent`], woken only by urgent output.
    urgent_waker: Cell<Option<Waker>>,
    /// The shard's budget, charged for the memory of `output` and of the
    /// buffer being written: to its active pool while `counted` is true,
    /// to its stalled pool otherwise.
    budget: Rc<OutputBudget>,
    /// False while the writer is stalled (see [`STALLED_AFTER`]).
    counted: Cell<bool>,
    /// Capacity of the buffer the writer took, until its write finishes.
    writing_capacity: Cell<usize>,
    /// Bytes this connection has charged to the budget.
    charged: Cell<usize>,
    /// Slot of this connection's session at the shard's last lookup.
    pub(crate) session_hint: Cell<crate::engine::sessions::SessionHint>,
    /// Whether `charged` is in the active pool rather than the stalled one.
    charged_active: Cell<bool>,
    /// True when the session keeps QoS 1 and 2 messages back until the
    /// output drains (see [`Conn::take_held_back`]).
    held_back: Cell<bool>,
    /// Socket for direct writes (see [`Conn::write_through`]), or -1 when
    /// the transport needs its writer task.
    direct_fd: Cell<RawFd>,
    /// True after a direct write found the socket full, until the writer
    /// task takes output or finishes a write. Until then no direct write is
    /// tried, which would cost a failing system call per message.
    direct_blocked: Cell<bool>,
}

impl Conn {
    pub fn new(
        id: ConnId,
        protocol: Protocol,
        peer: SocketAddr,
        max_packet_size: u32,
        topic_alias_max: u16,
        output_limit: usize,
        budget: Rc<OutputBudget>,
    ) -> Conn {
        budget.count_conn(1);
        Conn {
            id,
            protocol,
            peer,
            max_packet_size,
            topic_alias_max,
            output: RefCell::new(BytesMut::new()),
            waker: Cell::new(None),
            close_wakers: RefCell::new(Vec::new()),
            close: Cell::new(None),
            outbound_aliases: RefCell::new(HashMap::new()),
            output_limit,
            dropped: Cell::new(0),
            write_progress: Cell::new(None),
            urgent: Cell::new(false),
            published: Cell::new(false),
            urgent_waker: Cell::new(None),
            writing: Cell::new(0),
            budget,
            counted: Cell::new(true),
            writing_capacity: Cell::new(0),
            charged: Cell::new(0),
            session_hint: Cell::default(),
            charged_active: Cell::new(true),
            held_back: Cell::new(false),
            direct_fd: Cell::new(-1),
            direct_blocked: Cell::new(false),
        }
    }

    /// Installs or removes the plain TCP socket that [`Conn::write_through`]
    /// writes to. The broker removes it before the socket closes.
    pub fn set_direct_write(&self, fd: Option<RawFd>) {
        self.direct_fd.set(fd.unwrap_or(-1));
    }

    /// Writes the buffered output to the socket now, when the writer task
    /// has no write in progress. Under load that task may wait behind every
    /// other task of the shard, so the shard calls this before it drops or
    /// holds back a message for a full buffer.
    ///
    /// Returns true when some bytes went out.
    pub fn write_through(&self) -> bool {
        if self.writing.get() != 0 || self.direct_blocked.get() || self.close.get().is_some() {
            return false;
        }
        // NOTE: over the shard's budget, messages are dropped as before.
        // Writing through there too raised the peak RSS of a 1 -> 1,000
        // fan-out from 44-88 MiB to 56-165 MiB, for a reason not found yet.
        if self.budget.is_over() {
            return false;
        }
        let fd = self.direct_fd.get();
        if fd < 0 {
            return false;
        }

        let mut output = self.output.borrow_mut();
        if output.is_empty() {
            return false;
        }
        // An error other than a full socket shows again on the writer's
        // next write, which closes the connection.
        let written = send_now(fd, &output).unwrap_or(0);
        if written == 0 {
            self.direct_blocked.set(true);
            return false;
        }

        // The buffer keeps its place in memory: the budget counts
        // `capacity()`, which would leave out written bytes left in front
        // of the cursor. A large buffer is given up, as `take_output` does.
        if written == output.len() {
            if output.capacity() > KEEP_OUTPUT_CAPACITY_UP_TO {
                *output = BytesMut::with_capacity(KEEP_OUTPUT_CAPACITY_UP_TO);
            } else {
                output.clear();
            }
        } else {
            let rest = &output[written..];
            let mut fresh = BytesMut::with_capacity(rest.len().next_power_of_two());
            fresh.extend_from_slice(rest);
            *output = fresh;
        }
        drop(output);

        // The client reads, so its output counts as draining again.
        self.counted.set(true);
        self.recharge();
        true
    }

    /// Encodes `packet` into the output buffer and wakes the writer.
    /// Returns false, writing nothing, when the packet is larger than the
    /// client's Maximum Packet Size.
    pub fn send(&self, packet: &Packet) -> bool {
        if self.close.get().is_some() {
            return false;
        }
        if encoded_len(packet, self.protocol) > self.max_packet_size as usize {
            return false;
        }
        self.append(|output| encode(packet, self.protocol, output));
        if !matches!(packet, Packet::Publish(_)) {
            self.urgent.set(true);
            if let Some(waker) = self.urgent_waker.take() {
                waker.wake();
            }
        }
        self.wake();
        true
    }

    /// Appends an already encoded PUBLISH `frame`, writing `packet_id` at
    /// `packet_id_offset` in the copy. Returns false, writing nothing, when
    /// the frame is larger than the client's Maximum Packet Size.
    pub fn send_frame(
        &self,
        frame: &[u8],
        packet_id: Option<u16>,
        packet_id_offset: Option<usize>,
    ) -> bool {
        if self.close.get().is_some() || frame.len() > self.max_packet_size as usize {
            return false;
        }
        self.append(|output| {
            let start = output.len();
            output.extend_from_slice(frame);
            if let (Some(packet_id), Some(offset)) = (packet_id, packet_id_offset) {
                output[start + offset..start + offset + 2]
                    .copy_from_slice(&packet_id.to_be_bytes());
            }
        });
        self.wake();
        true
    }

    /// Appends PUBLISH frames without packet ids, laid end to end, the
    /// caller having checked each against the client's Maximum Packet Size.
    /// Returns false, writing nothing, once a close was requested.
    pub fn send_frames(&self, frames: &[u8]) -> bool {
        if self.close.get().is_some() {
            return false;
        }
        self.append(|output| {
            // Growing to powers of two, as appending frame by frame does,
            // keeps the allocator's size classes few.
            let needed = output.len() + frames.len();
            if needed > output.capacity() {
                output.reserve(needed.next_power_of_two() - output.len());
            }
            output.extend_from_slice(frames);
        });
        self.wake();
        true
    }

    /// Runs `write` on the output buffer and charges what it added to the
    /// shard's budget.
    fn append(&self, write: impl FnOnce(&mut BytesMut)) {
        write(&mut self.output.borrow_mut());
        self.recharge();
    }

    /// Brings this connection's charge on the shard's budget up to date:
    /// the capacity of its buffers, which is the memory they take, in the
    /// pool for its state (draining or stalled).
    fn recharge(&self) {
        let memory = self.output.borrow().capacity() + self.writing_capacity.get();
        let active = self.counted.get();
        let charged = self.charged.replace(memory);
        if self.charged_active.replace(active) != active {
            self.budget.pool(!active).release(charged);
            self.budget.pool(active).add(memory);
        } else if memory >= charged {
            self.budget.pool(active).add(memory - charged);
        } else {
            self.budget.pool(active).release(charged - memory);
        }
    }

    fn held(&self) -> usize {
        self.output.borrow().len() + self.writing.get()
    }

    /// Returns true when a QoS 0 message should be dropped instead of
    /// buffered: the connection has reached its own limit, or the shard is
    /// over its budget and the connection has more than its share (see
    /// [`OutputBudget::share`]). A stalled connection with 4 KiB or more
    /// queued also takes no more once the stalled pool is full.
    pub fn is_congested(&self) -> bool {
        let held = self.held();
        if held >= self.output_limit {
            return true;
        }
        if held < OVER_BUDGET_OUTPUT {
            return false;
        }
        (self.budget.is_over() && held >= self.budget.share())
            || (!self.counted.get() && self.budget.stalled_over())
    }

    /// Bytes of QoS 0 output that may still be buffered before
    /// [`Conn::is_congested`] turns true, with the budget as it is now: 0 when
    /// it is true already.
    pub fn qos0_room(&self) -> usize {
        if self.is_congested() {
            return 0;
        }
        let mut limit = self.output_limit;
        if self.budget.is_over() {
            limit = limit.min(self.budget.share().max(OVER_BUDGET_OUTPUT));
        }
        if !self.counted.get() && self.budget.stalled_over() {
            limit = limit.min(OVER_BUDGET_OUTPUT);
        }
        limit.saturating_sub(self.held())
    }

    /// Returns true when QoS 1 and 2 messages should wait in the session
    /// rather than be written: the connection has reached its own limit,
    /// or it is stalled with 4 KiB or more queued and the stalled pool is
    /// full. Unlike [`Conn::is_congested`], the shard's budget does not
    /// count: those messages are not dropped, so holding them back for a
    /// busy shard would only delay them.
    pub fn is_full(&self) -> bool {
        let held = self.held();
        held >= self.output_limit
            || (!self.counted.get() && held >= OVER_BUDGET_OUTPUT && self.budget.stalled_over())
    }

    /// Records that the session keeps messages back because the output is
    /// full.
    pub fn note_held_back(&self) {
        self.held_back.set(true);
    }

    /// Returns whether the session held messages back since the last call,
    /// and clears the mark. The writer calls it after each write, and then
    /// has the shard pump the session.
    pub fn take_held_back(&self) -> bool {
        self.held_back.replace(false)
    }

    /// Counts one message dropped for this connection.
    pub fn count_dropped(&self) {
        self.count_dropped_by(1);
    }

    /// Counts `messages` dropped QoS 0 messages.
    pub fn count_dropped_by(&self, messages: u64) {
        self.dropped.set(self.dropped.get() + messages);
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// Records that the writer started a write or wrote some bytes of it.
    /// The writer calls this after every partial write.
    pub fn note_write_progress(&self, now: Instant) {
        self.write_progress.set(Some(now));
        if !self.counted.get() {
            self.counted.set(true);
            self.recharge();
        }
    }

    /// Records that the writer finished its write and is waiting for output.
    pub fn note_write_idle(&self) {
        self.write_progress.set(None);
        self.direct_blocked.set(false);
        self.writing.set(0);
        self.writing_capacity.set(0);
        self.recharge();
    }

    /// Stops counting this connection's output toward the shard's budget
    /// when its writer has made no progress for [`STALLED_AFTER`]. Called
    /// when a message to it is dropped. Write progress counts it again.
    pub fn note_dropped_while_stalled(&self, now: Instant) {
        if self.counted.get() && self.write_stalled_for(now) >= STALLED_AFTER {
            debug!(conn = self.id, peer = %self.peer, held = self.held(), "socket stalled; its output now counts in the stalled pool");
            self.counted.set(false);
            self.recharge();
        }
    }

    /// Returns how long the current write has made no progress, which is
    /// how long the peer has not drained its socket. Zero while the writer
    /// is idle.
    pub fn write_stalled_for(&self, now: Instant) -> Duration {
        self.write_progress
            .get()
            .map_or(Duration::ZERO, |last| now.saturating_duration_since(last))
    }

    /// Looks up or assigns the outbound Topic Alias for `topic`. Returns the
    /// alias and whether it is new (so the topic must be sent with it).
    pub fn outbound_alias(&self, topic: &str) -> Option<(u16, bool)> {
        if self.topic_alias_max == 0 {
            return None;
        }
        let mut aliases = self.outbound_aliases.borrow_mut();
        if let Some(alias) = aliases.get(topic) {
            return Some((*alias, false));
        }
        let next = aliases.len() + 1;
        if next > usize::from(self.topic_alias_max) {
            return None;
        }
        let alias = next as u16;
        aliases.insert(topic.to_owned(), alias);
        Some((alias, true))
    }

    /// Asks the writer to flush what is buffered, send a DISCONNECT if the
    /// request has a reason, and close. Later sends are discarded.
    pub fn request_close(&self, request: CloseRequest) {
        if self.close.get().is_none() {
            if let (Some(reason), Protocol::V5) = (request.reason, self.protocol) {
                let packet = Packet::Disconnect(coremq_codec::Disconnect {
                    reason,
                    properties: Default::default(),
                });
                self.append(|output| encode(&packet, self.protocol, output));
            }
            self.close.set(Some(request));
        }
        self.wake();
        if let Some(waker) = self.urgent_waker.take() {
            waker.wake();
        }
        let close_wakers = std::mem::take(&mut *self.close_wakers.borrow_mut());
        for waker in close_wakers {
            waker.wake();
        }
    }

    /// Waits until a close is requested.
    pub fn closed(self: &Rc<Self>) -> CloseRequested {
        CloseRequested { conn: self.clone() }
    }

    /// Returns true when nothing is buffered for the socket.
    pub fn output_is_empty(&self) -> bool {
        self.output.borrow().is_empty()
    }

    /// Bytes buffered for the socket.
    pub fn output_len(&self) -> usize {
        self.output.borrow().len()
    }

    /// Returns true when the buffered output must leave without delay: it
    /// contains a reply, the client published since the last write, or a
    /// close was requested.
    pub fn is_urgent(&self) -> bool {
        self.urgent.get() || self.published.get() || self.close.get().is_some()
    }

    /// Records that a PUBLISH arrived from the client, which makes the
    /// output urgent until a write that no reply forced (see
    /// [`Conn::is_urgent`]).
    pub fn note_publish_received(&self) {
        if !self.published.replace(true) {
            if let Some(waker) = self.urgent_waker.take() {
                waker.wake();
            }
        }
    }

    /// The close request, once one was made.
    pub fn close_requested(&self) -> Option<CloseRequest> {
        self.close.get()
    }

    /// Takes everything buffered for the socket.
    pub fn take_output(&self) -> BytesMut {
        let mut output = self.output.borrow_mut();
        // A busy connection keeps a buffer of the size it needed, so the
        // next batch does not regrow it. A quiet one keeps none, which
        // matters when many connections are idle.
        let capacity = if output.len() >= KEEP_OUTPUT_CAPACITY_FROM {
            output.capacity().min(KEEP_OUTPUT_CAPACITY_UP_TO)
        } else {
            0
        };
        // A PUBACK to a request must not use up the urgency that the
        // response after it needs.
        if !self.urgent.replace(false) {
            self.published.set(false);
        }
        self.direct_blocked.set(false);
        self.writing.set(output.len());
        self.writing_capacity.set(output.capacity());
        let batch = std::mem::replace(&mut *output, BytesMut::with_capacity(capacity));
        drop(output);
        self.recharge();
        batch
    }

    /// Waits until there is output to write or a close was requested.
    pub fn ready(self: &Rc<Self>) -> OutputReady {
        OutputReady {
            conn: self.clone(),
            urgent_only: false,
        }
    }

    /// Waits until the output becomes urgent (see [`Conn::is_urgent`]), for
    /// a writer that holds back deliveries to batch them.
    pub fn urgent(self: &Rc<Self>) -> OutputReady {
        OutputReady {
            conn: self.clone(),
            urgent_only: true,
        }
    }

    fn wake(&self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let charged = self.charged.replace(0);
        self.budget.pool(self.charged_active.get()).release(charged);
        self.budget.count_conn(-1);
    }
}

/// Future returned by [`Conn::ready`] and [`Conn::urgent`].
pub struct OutputReady {
    conn: Rc<Conn>,
    urgent_only: bool,
}

impl Future for OutputReady {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let conn = &self.conn;
        let ready = if self.urgent_only {
            conn.is_urgent()
        } else {
            !conn.output.borrow().is_empty() || conn.close.get().is_some()
        };
        if ready {
            return Poll::Ready(());
        }
        let slot = if self.urgent_only {
            &conn.urgent_waker
        } else {
            &conn.waker
        };
        slot.set(Some(cx.waker().clone()));
        Poll::Pending
    }
}

/// Future returned by [`Conn::closed`].
pub struct CloseRequested {
    conn: Rc<Conn>,
}

impl Future for CloseRequested {
    type Output = CloseRequest;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<CloseRequest> {
        match self.conn.close.get() {
            Some(request) => Poll::Ready(request),
            None => {
                let mut wakers = self.conn.close_wakers.borrow_mut();
                if !wakers.iter().any(|waker| waker.will_wake(cx.waker())) {
                    wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: usize = 8 * 1024;

    fn conn(id: ConnId, budget: &Rc<OutputBudget>) -> Conn {
        let peer: SocketAddr = "127.0.0.1:1883".parse().unwrap();
        Conn::new(id, Protocol::V5, peer, u32::MAX, 0, 1 << 20, budget.clone())
    }

    /// Appends 1 KiB frames to `conn` until it is congested and returns
    /// how many it took.
    fn fill(conn: &Conn) -> usize {
        let frame = [0u8; 1024];
        let mut frames = 0;
        while !conn.is_congested() {
            assert!(conn.send_frame(&frame, None, None));
            frames += 1;
            assert!(frames < 1024, "connection never became congested");
        }
        frames
    }

    /// Returns a connection whose direct write goes to one end of a socket
    /// pair, and both ends.
    fn conn_with_socket(
        budget: &Rc<OutputBudget>,
    ) -> (
        Conn,
        std::os::unix::net::UnixStream,
        std::os::unix::net::UnixStream,
    ) {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socket pair");
        theirs.set_nonblocking(true).expect("non-blocking socket");
        let peer: SocketAddr = "127.0.0.1:1883".parse().unwrap();
        let conn = Conn::new(
            1,
            Protocol::V5,
            peer,
            u32::MAX,
            0,
            16 * 1024,
            budget.clone(),
        );
        conn.set_direct_write(Some(std::os::fd::AsRawFd::as_raw_fd(&ours)));
        (conn, ours, theirs)
    }

    /// Reads the bytes waiting in the socket now.
    fn read_all(socket: &std::os::unix::net::UnixStream) -> Vec<u8> {
        let mut received = Vec::new();
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match std::io::Read::read(&mut &*socket, &mut chunk) {
                Ok(0) => return received,
                Ok(read) => received.extend_from_slice(&chunk[..read]),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return received,
                Err(error) => panic!("read failed: {error}"),
            }
        }
    }

    #[test]
    fn write_through_drains_congested_output() {
        let budget = OutputBudget::new(usize::MAX / 4);
        let (conn, _ours, peer) = conn_with_socket(&budget);
        let frames = fill(&conn);
        assert!(conn.write_through());
        assert!(!conn.is_congested());
        assert_eq!(conn.held(), 0);
        assert_eq!(read_all(&peer).len(), frames * 1024);
    }

    #[test]
    fn write_through_waits_for_writer() {
        let budget = OutputBudget::new(usize::MAX / 4);
        let (conn, _ours, peer) = conn_with_socket(&budget);
        fill(&conn);
        // The writer took the output and its write is in progress: bytes
        // written now would overtake it.
        let batch = conn.take_output();
        assert!(conn.send_frame(&[0u8; 1024], None, None));
        assert!(!conn.write_through());
        assert!(read_all(&peer).is_empty());

        conn.note_write_idle();
        drop(batch);
        assert!(conn.write_through());
        assert_eq!(read_all(&peer).len(), 1024);
    }

    #[test]
    fn write_through_skips_over_budget() {
        let budget = OutputBudget::new(BUDGET);
        let (conn, _ours, peer) = conn_with_socket(&budget);
        fill(&conn);
        assert!(budget.is_over());
        assert!(!conn.write_through());
        assert!(read_all(&peer).is_empty());
    }

    #[test]
    fn full_socket_waits_for_writer() {
        let budget = OutputBudget::new(usize::MAX / 4);
        let (conn, _ours, peer) = conn_with_socket(&budget);
        // Fill the socket until it takes nothing more.
        while {
            fill(&conn);
            conn.write_through()
        } {}
        assert!(conn.is_congested());
        // Once the socket was full, the next try waits for the writer,
        // even after the peer read: no system call per dropped message.
        assert!(!read_all(&peer).is_empty());
        assert!(!conn.write_through());
        conn.note_write_idle();
        assert!(conn.write_through());
    }

    #[test]
    fn publish_from_client_makes_output_urgent() {
        let budget = OutputBudget::new(BUDGET);
        let conn = conn(1, &budget);
        assert!(conn.send_frame(&[0u8; 16], None, None));
        assert!(!conn.is_urgent());
        conn.note_publish_received();
        assert!(conn.is_urgent());
        // A write of a reply keeps the urgency for the deliveries after it.
        conn.send(&Packet::PingResp);
        conn.take_output();
        assert!(conn.is_urgent());
        // A write of deliveries alone ends it.
        assert!(conn.send_frame(&[0u8; 16], None, None));
        conn.take_output();
        assert!(!conn.is_urgent());
    }

    #[test]
    fn stalled_output_has_bounded_pool() {
        let budget = OutputBudget::new(BUDGET);
        let start = Instant::now();
        let stalled: Vec<Conn> = (0..4).map(|id| conn(id, &budget)).collect();
        let mut taken_while_stalled = 0;
        for conn in &stalled {
            // A write starts and makes no progress from then on.
            conn.note_write_progress(start);
            fill(conn);
            // A drop two seconds later moves it to the stalled pool, where
            // it takes more only until the pool is full.
            conn.note_dropped_while_stalled(start + Duration::from_secs(2));
            taken_while_stalled += fill(conn) * 1024;
        }
        assert!(budget.stalled_over());
        // The first connection's move alone fills the pool of half the
        // budget. A pool of four times the budget took 12 KiB more here.
        assert!(
            taken_while_stalled <= BUDGET / STALLED_POOL_DIVISOR,
            "stalled connections took {taken_while_stalled} more bytes"
        );

        // The stalled bytes left the active pool: a connection that drains
        // takes messages until the budget is used again.
        assert!(!budget.is_over());
        let draining = conn(10, &budget);
        assert!(fill(&draining) >= 4);

        drop(stalled);
        drop(draining);
        assert_eq!(budget.active.used.get(), 0);
        assert_eq!(budget.stalled.used.get(), 0);
        assert_eq!(budget.conns.get(), 0);
    }

    #[test]
    fn over_budget_spares_small_outputs() {
        // Four connections share half of 128 KiB: 16 KiB each.
        let budget = OutputBudget::new(128 * 1024);
        let conns: Vec<Conn> = (0..4).map(|id| conn(id, &budget)).collect();
        assert_eq!(budget.share(), 16 * 1024);
        // One client falls behind and takes the whole budget.
        fill(&conns[0]);
        assert!(budget.is_over());
        assert!(conns[0].is_congested());

        // A client that reads has 6 KiB queued between writes: above 4 KiB,
        // but within its share, so it still gets its messages.
        let frame = [0u8; 1024];
        for _ in 0..6 {
            assert!(conns[1].send_frame(&frame, None, None));
        }
        assert!(!conns[1].is_congested());
        // Past its share it loses them too.
        fill(&conns[1]);
        assert!(conns[1].held() >= budget.share());
    }

    /// Appends 100-byte frames and checks at each step that
    /// [`Conn::qos0_room`] is what the next frames may take before
    /// [`Conn::is_congested`] turns true.
    fn check_room(conn: &Conn, frames: usize) {
        let frame = [0u8; 100];
        for step in 0..frames {
            let room = conn.qos0_room();
            assert_eq!(room > 0, !conn.is_congested(), "step {step}: room {room}");
            if room > 0 && room <= frame.len() {
                assert!(conn.send_frame(&frame, None, None));
                assert!(conn.is_congested(), "step {step}: {room} bytes of room");
                return;
            }
            assert!(conn.send_frame(&frame, None, None));
        }
    }

    #[test]
    fn qos0_room_ends_where_congestion_starts() {
        // The connection's own limit.
        let budget = OutputBudget::new(1 << 30);
        let peer: SocketAddr = "127.0.0.1:1883".parse().unwrap();
        let own = Conn::new(1, Protocol::V5, peer, u32::MAX, 0, 8 * 1024, budget.clone());
        assert_eq!(own.qos0_room(), 8 * 1024);
        check_room(&own, 200);
        assert!(own.is_congested());
        assert_eq!(own.qos0_room(), 0);

        // The share of a shard over its budget.
        let budget = OutputBudget::new(128 * 1024);
        let conns: Vec<Conn> = (0..4).map(|id| conn(id, &budget)).collect();
        fill(&conns[0]);
        assert!(budget.is_over());
        assert_eq!(conns[1].qos0_room(), budget.share());
        check_room(&conns[1], 1000);
        assert!(conns[1].is_congested());

        // A stalled connection once the stalled pool is full.
        let budget = OutputBudget::new(BUDGET);
        let start = Instant::now();
        let stalled: Vec<Conn> = (0..4).map(|id| conn(id, &budget)).collect();
        for conn in &stalled {
            conn.note_write_progress(start);
            conn.note_dropped_while_stalled(start + Duration::from_secs(2));
        }
        fill(&stalled[0]);
        fill(&stalled[1]);
        assert!(budget.stalled_over());
        assert_eq!(stalled[2].qos0_room(), OVER_BUDGET_OUTPUT);
        check_room(&stalled[2], 1000);
        assert!(stalled[2].is_congested());
    }

    #[test]
    fn send_frames_grows_to_powers_of_two() {
        let budget = OutputBudget::new(BUDGET);
        let conn = conn(1, &budget);
        for frames in [1000, 70_000, 3, 200_000] {
            assert!(conn.send_frames(&vec![0u8; frames]));
            let capacity = conn.output.borrow().capacity();
            assert!(
                capacity.is_power_of_two(),
                "capacity {capacity} after {frames} more bytes"
            );
        }
        assert_eq!(conn.output_len(), 271_003);
    }
}
