//! `coremq-relay`: the least work a broker can do for a QoS 0 load, to put
//! a floor under the bench's figures.
//!
//! It replies to CONNECT, SUBSCRIBE and PINGREQ, and copies each PUBLISH it
//! reads, byte for byte, to every client that has subscribed, whatever the
//! topic. So it can replace a broker only on loads where each subscriber
//! takes every message: `fanin`, and `fanout` on one topic. It keeps no
//! sessions, checks nothing and matches no topics.
//!
//! The relay is one thread around one edge-triggered epoll set. Each
//! readable socket is read once: a read that returns less than the buffer
//! emptied the socket, and data that arrives later raises a new edge.
//! After each `epoll_wait`, each subscriber gets what the pass produced in
//! one `send`. The CPU time it uses per message is the kernel's part of
//! the load (reads, the ACKs they cause, sends) plus little else. Run it
//! as a broker in `coremq-bench compare`. A second argument, in
//! microseconds, pauses the relay after each pass, so that more data waits
//! in each socket for its read: the trade of latency for fewer reads that
//! a broker could make.
//!
//! ```text
//! coremq-bench compare --scenario "fanin -P 1000 -S 1 --rate 100" -- \
//!     "relay=coremq-relay 127.0.0.1:{port}"
//! ```

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::ExitCode;
use std::time::Duration;

/// Largest read. A read that fills it may have left data in the socket.
const READ_BUFFER: usize = 64 * 1024;

/// Output kept for a subscriber that does not read. Past this, its
/// messages are dropped, as a broker drops QoS 0 to a congested client.
const MAX_OUTPUT: usize = 8 << 20;

/// Output kept for all clients together, past which messages are dropped.
const MAX_TOTAL_OUTPUT: usize = 64 << 20;

/// Largest packet read. A client that announces a larger one is closed.
const MAX_PACKET: usize = 1 << 20;

/// Pause after a failed `accept`, such as when descriptors ran out. The
/// listening socket stays readable, so without it the relay would spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);

/// Token of the listening socket in the epoll set.
const LISTENER: u64 = u64::MAX;

const CONNECT: u8 = 1;
const PUBLISH: u8 = 3;
const SUBSCRIBE: u8 = 8;
const PINGREQ: u8 = 12;
const DISCONNECT: u8 = 14;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(address), pause, None) = (args.next(), args.next(), args.next()) else {
        return usage();
    };
    if address.starts_with('-') {
        return usage();
    }
    let pause = match pause.as_deref().map(|text| (text, text.parse::<u64>())) {
        None => Duration::ZERO,
        Some((_, Ok(micros))) => Duration::from_micros(micros),
        Some((text, Err(error))) => {
            eprintln!(
                "coremq-relay: invalid pause {text:?} ({error}); give whole microseconds, such as 2000"
            );
            return ExitCode::from(2);
        }
    };
    let address: SocketAddr = match address.parse() {
        Ok(address) => address,
        Err(error) => {
            eprintln!("coremq-relay: invalid address {address:?} ({error}); give ADDRESS:PORT, such as 127.0.0.1:1883");
            return ExitCode::from(2);
        }
    };
    match run(address, pause) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("coremq-relay: {error}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: coremq-relay ADDRESS:PORT [PAUSE_US] (for example 127.0.0.1:1883 2000)");
    ExitCode::from(2)
}

/// One accepted connection.
struct Client {
    stream: TcpStream,
    /// Bytes read that do not yet make a whole packet.
    input: Vec<u8>,
    /// Bytes waiting to be sent.
    output: Vec<u8>,
    /// Protocol level from CONNECT: 4 for 3.1.1, 5 for 5.0.
    level: u8,
    subscribed: bool,
    /// The socket may accept more output: no send has stopped short
    /// since the last writable edge.
    writable: bool,
    /// The client is in the list of clients to send to after this pass.
    queued: bool,
}

fn run(address: SocketAddr, pause: Duration) -> io::Result<()> {
    let listener = TcpListener::bind(address).map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("failed to listen on {address}: {error}; choose a free port"),
        )
    })?;
    listener.set_nonblocking(true)?;
    // SAFETY: epoll_create1 takes no pointers and returns a new descriptor
    // or -1.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created and nothing else owns it.
    let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
    add(&epoll, listener.as_raw_fd(), libc::EPOLLIN as u32, LISTENER)?;
    eprintln!("coremq-relay: listening on {}", listener.local_addr()?);

    let mut clients: HashMap<u64, Client> = HashMap::new();
    let mut subscribers: Vec<u64> = Vec::new();
    let mut next_token = 0u64;
    let mut buffer = vec![0u8; READ_BUFFER];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut closed = Vec::new();
    let mut queued = Vec::new();
    // Bytes waiting in all clients' output.
    let mut total_output = 0usize;
    loop {
        // SAFETY: `events` is valid for its length, which fits an i32.
        let count = unsafe {
            libc::epoll_wait(
                epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                -1,
            )
        };
        if count < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        for event in &events[..count as usize] {
            let (token, flags) = (event.u64, event.events);
            if token == LISTENER {
                accept_all(&listener, &epoll, &mut clients, &mut next_token)?;
                continue;
            }
            let Some(client) = clients.get_mut(&token) else {
                continue;
            };
            if flags & libc::EPOLLOUT as u32 != 0 {
                client.writable = true;
                queue(client, token, &mut queued);
            }
            if flags & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32
                == 0
            {
                continue;
            }
            let read = match client.stream.read(&mut buffer) {
                Ok(0) => Err(ErrorKind::UnexpectedEof.into()),
                Ok(n) => Ok(n),
                Err(error) if error.kind() == ErrorKind::WouldBlock => Ok(0),
                Err(error) => Err(error),
            };
            let Ok(n) = read else {
                closed.push(token);
                continue;
            };
            // A full read may have left data behind, and no new edge
            // comes for it: ask for another pass.
            let more = n == buffer.len();
            client.input.extend_from_slice(&buffer[..n]);
            let mut publishes = Vec::new();
            let replies_before = client.output.len();
            let keep = handle_input(client, &mut publishes);
            total_output += client.output.len() - replies_before;
            // A peer that hung up is done once its last bytes are handled.
            let hung_up = flags & (libc::EPOLLRDHUP | libc::EPOLLHUP) as u32 != 0;
            if !keep || hung_up {
                closed.push(token);
            } else if client.subscribed && !subscribers.contains(&token) {
                subscribers.push(token);
            }
            queue(client, token, &mut queued);
            if !publishes.is_empty() {
                for subscriber in &subscribers {
                    if let Some(target) = clients.get_mut(subscriber) {
                        if target.output.len() + publishes.len() <= MAX_OUTPUT
                            && total_output + publishes.len() <= MAX_TOTAL_OUTPUT
                        {
                            total_output += publishes.len();
                            target.output.extend_from_slice(&publishes);
                            queue(target, *subscriber, &mut queued);
                        }
                    }
                }
            }
            if more {
                rearm(&epoll, &clients[&token].stream, token)?;
            }
        }
        for token in queued.drain(..) {
            let Some(client) = clients.get_mut(&token) else {
                continue;
            };
            client.queued = false;
            if !client.output.is_empty() && client.writable {
                let before = client.output.len();
                if flush(client).is_err() {
                    closed.push(token);
                }
                total_output -= before - client.output.len();
            }
        }
        for token in closed.drain(..) {
            if let Some(client) = clients.remove(&token) {
                remove(&epoll, client.stream.as_raw_fd());
                total_output -= client.output.len();
            }
            subscribers.retain(|subscriber| *subscriber != token);
        }
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
}

/// Puts `client` in the list of clients to send to after this pass.
fn queue(client: &mut Client, token: u64, queued: &mut Vec<u64>) {
    if !client.queued {
        client.queued = true;
        queued.push(token);
    }
}

/// Accepts every waiting connection and adds it to the set.
fn accept_all(
    listener: &TcpListener,
    epoll: &OwnedFd,
    clients: &mut HashMap<u64, Client>,
    next_token: &mut u64,
) -> io::Result<()> {
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(()),
            // The client gave up before it was accepted, or descriptors ran
            // out: pause, and try again on the next pass.
            Err(error) => {
                eprintln!("coremq-relay: accept failed: {error}; retrying in {ACCEPT_RETRY:?}");
                std::thread::sleep(ACCEPT_RETRY);
                return Ok(());
            }
        };
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        let token = *next_token;
        *next_token += 1;
        let flags = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
        add(epoll, stream.as_raw_fd(), flags, token)?;
        clients.insert(
            token,
            Client {
                stream,
                input: Vec::new(),
                output: Vec::new(),
                level: 4,
                subscribed: false,
                writable: true,
                queued: false,
            },
        );
    }
}

/// Handles each whole packet in the client's input: replies go to its
/// output, PUBLISH packets to `publishes`. Returns false when the client
/// must be closed.
fn handle_input(client: &mut Client, publishes: &mut Vec<u8>) -> bool {
    let mut start = 0;
    let keep = loop {
        let (header, length) = match packet_bounds(&client.input[start..]) {
            Bounds::Whole(header, length) => (header, length),
            Bounds::Partial => break true,
            Bounds::Invalid => break false,
        };
        let packet = &client.input[start..start + header + length];
        let body = &packet[header..];
        match packet[0] >> 4 {
            CONNECT => {
                // Protocol name (2-byte length and "MQTT"), then the level.
                let Some(level) = body.get(6) else {
                    break false;
                };
                client.level = *level;
                if client.level == 5 {
                    client.output.extend_from_slice(&[0x20, 3, 0, 0, 0]);
                } else {
                    client.output.extend_from_slice(&[0x20, 2, 0, 0]);
                }
            }
            PUBLISH if packet[0] & 0x06 == 0 => publishes.extend_from_slice(packet),
            SUBSCRIBE => {
                if body.len() < 2 {
                    break false;
                }
                client.subscribed = true;
                let filters = count_filters(body, client.level);
                let properties = usize::from(client.level == 5);
                let length = 2 + properties + filters;
                // The relay writes SUBACK with a one-byte length, so a
                // SUBSCRIBE of more than about 124 filters closes the client.
                if length > 127 {
                    break false;
                }
                client
                    .output
                    .extend_from_slice(&[0x90, length as u8, body[0], body[1]]);
                client.output.resize(client.output.len() + properties, 0);
                client.output.resize(client.output.len() + filters, 0);
            }
            PINGREQ => client.output.extend_from_slice(&[0xD0, 0]),
            DISCONNECT => break false,
            // QoS 1 and 2 and everything else are not relayed.
            _ => {}
        }
        start += header + length;
    };
    client.input.drain(..start);
    keep
}

/// The state of the packet at the start of a client's input.
enum Bounds {
    /// A whole packet: the length of its fixed header and of the rest.
    Whole(usize, usize),
    /// The start of a packet that is still arriving.
    Partial,
    /// A remaining length of more than four bytes or above [`MAX_PACKET`].
    Invalid,
}

fn packet_bounds(bytes: &[u8]) -> Bounds {
    let mut length = 0usize;
    for (i, byte) in bytes.iter().skip(1).enumerate() {
        if i == 4 {
            return Bounds::Invalid;
        }
        length |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            let header = 2 + i;
            if length > MAX_PACKET {
                return Bounds::Invalid;
            }
            if bytes.len() >= header + length {
                return Bounds::Whole(header, length);
            }
            return Bounds::Partial;
        }
    }
    Bounds::Partial
}

/// Number of topic filters in a SUBSCRIBE body (packet id onwards).
fn count_filters(body: &[u8], level: u8) -> usize {
    let mut at = 2;
    if level == 5 {
        // Properties: a variable byte integer length, then the properties.
        let mut length = 0usize;
        for (i, byte) in body.iter().skip(at).take(4).enumerate() {
            length |= usize::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                at += i + 1 + length;
                break;
            }
        }
    }
    let mut filters = 0;
    while at + 2 <= body.len() {
        let length = usize::from(u16::from_be_bytes([body[at], body[at + 1]]));
        at += 2 + length + 1;
        filters += 1;
    }
    filters
}

/// Sends the client's output until it is empty or the socket is full.
fn flush(client: &mut Client) -> io::Result<()> {
    let mut sent = 0;
    while sent < client.output.len() {
        match client.stream.write(&client.output[sent..]) {
            Ok(n) => sent += n,
            Err(error) if error.kind() == ErrorKind::WouldBlock => {
                client.writable = false;
                break;
            }
            Err(error) => return Err(error),
        }
    }
    client.output.drain(..sent);
    Ok(())
}

fn add(epoll: &OwnedFd, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut event = libc::epoll_event { events, u64: token };
    // SAFETY: both descriptors are open and `event` outlives the call.
    let added = unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
    if added < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Raises a new edge for a socket that may still hold data.
fn rearm(epoll: &OwnedFd, stream: &TcpStream, token: u64) -> io::Result<()> {
    let mut event = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
        u64: token,
    };
    // SAFETY: both descriptors are open and `event` outlives the call.
    let modified = unsafe {
        libc::epoll_ctl(
            epoll.as_raw_fd(),
            libc::EPOLL_CTL_MOD,
            stream.as_raw_fd(),
            &mut event,
        )
    };
    if modified < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn remove(epoll: &OwnedFd, fd: RawFd) {
    // SAFETY: both descriptors are open; EPOLL_CTL_DEL ignores the event
    // pointer.
    unsafe {
        libc::epoll_ctl(
            epoll.as_raw_fd(),
            libc::EPOLL_CTL_DEL,
            fd,
            std::ptr::null_mut(),
        );
    }
}
