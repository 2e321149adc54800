//! Target and source addresses, and opening sockets to the broker.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;

use glommio::net::TcpStream;
use socket2::{Domain, Protocol, Socket, Type};

use crate::error::BenchError;

/// Largest number of source addresses a range may expand to.
const MAX_SOURCE_ADDRS: u32 = 65_536;

/// Resolves the broker address and rejects a non-loopback one unless
/// `allow_remote` is set, so that a typo cannot flood a real network.
pub fn resolve_target(host: &str, port: u16, allow_remote: bool) -> Result<SocketAddr, BenchError> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|err| BenchError::InvalidArgument(format!("cannot resolve --host {host}: {err}")))?
        .collect();
    let Some(first) = addrs.first().copied() else {
        return Err(BenchError::InvalidArgument(format!(
            "--host {host} resolves to no address"
        )));
    };
    if !allow_remote {
        if let Some(remote) = addrs.iter().find(|addr| !addr.ip().is_loopback()) {
            return Err(BenchError::InvalidArgument(format!(
                "--host {host} resolves to {}, which is not a loopback address; \
                 pass --allow-remote to load a broker over the network",
                remote.ip()
            )));
        }
    }
    Ok(first)
}

/// Parses `--source-addrs`: one address, an IPv4 range `A-B` (inclusive), or a
/// comma-separated list of either.
pub fn parse_source_addrs(spec: &str, allow_remote: bool) -> Result<Vec<IpAddr>, BenchError> {
    let mut addrs = Vec::new();
    for part in spec
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        match part.split_once('-') {
            Some((start, end)) => addrs.extend(parse_ipv4_range(start, end)?),
            None => addrs.push(parse_ip(part)?),
        }
    }
    if addrs.is_empty() {
        return Err(BenchError::InvalidArgument(format!(
            "--source-addrs {spec:?} names no address"
        )));
    }
    if !allow_remote {
        if let Some(addr) = addrs.iter().find(|addr| !addr.is_loopback()) {
            return Err(BenchError::InvalidArgument(format!(
                "source address {addr} is not a loopback address; pass --allow-remote to use it"
            )));
        }
    }
    Ok(addrs)
}

fn parse_ip(text: &str) -> Result<IpAddr, BenchError> {
    text.trim()
        .parse()
        .map_err(|_| BenchError::InvalidArgument(format!("invalid IP address {text:?}")))
}

fn parse_ipv4_range(start: &str, end: &str) -> Result<Vec<IpAddr>, BenchError> {
    let (IpAddr::V4(first), IpAddr::V4(last)) = (parse_ip(start)?, parse_ip(end)?) else {
        return Err(BenchError::InvalidArgument(format!(
            "invalid address range {start}-{end}: ranges take IPv4 addresses only"
        )));
    };
    let (first, last) = (u32::from(first), u32::from(last));
    if last < first || last - first >= MAX_SOURCE_ADDRS {
        return Err(BenchError::InvalidArgument(format!(
            "invalid address range {start}-{end}: expected a start no greater than the end \
             and at most {MAX_SOURCE_ADDRS} addresses"
        )));
    }
    Ok((first..=last)
        .map(|n| IpAddr::V4(Ipv4Addr::from(n)))
        .collect())
}

/// Starts a non-blocking TCP connect to `target`, bound to `source` first when
/// given, and returns the socket as a glommio stream.
///
/// The connect completes in the background: the first write waits for it, and
/// a refused or failed connect surfaces as that write's error. This keeps
/// source binding, which glommio's own connect does not offer, off any thread
/// pool.
pub fn start_connect(target: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    if let Some(source) = source {
        if source.is_ipv4() {
            set_bind_address_no_port(&socket)?;
        }
        socket.bind(&SocketAddr::new(source, 0).into())?;
    }
    match socket.connect(&target.into()) {
        Ok(()) => {}
        Err(err) if err.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(err) => return Err(err),
    }
    Ok(TcpStream::from(socket))
}

/// Defers the choice of the source port from `bind` to `connect`, so the kernel
/// may reuse a port towards different destinations. Without it, every bound
/// socket takes one port of the source address's ephemeral range.
fn set_bind_address_no_port(socket: &Socket) -> io::Result<()> {
    let enable: libc::c_int = 1;
    // SAFETY: the fd is a live socket owned by `socket`, and the option value
    // points to a c_int that outlives the call, with its size passed alongside.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&enable as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_target_accepted() {
        let addr = resolve_target("127.0.0.1", 1883, false).expect("loopback is allowed");
        assert_eq!(addr, "127.0.0.1:1883".parse().unwrap());
        let addr = resolve_target("::1", 1883, false).expect("IPv6 loopback is allowed");
        assert!(addr.ip().is_loopback());
    }

    #[test]
    fn remote_target_rejected() {
        let err = resolve_target("192.0.2.1", 1883, false).unwrap_err();
        assert!(err.to_string().contains("--allow-remote"), "{err}");
        let addr = resolve_target("192.0.2.1", 1883, true).expect("allowed with the flag");
        assert_eq!(addr.ip(), "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn source_range_expands() {
        let addrs = parse_source_addrs("127.0.0.1-127.0.0.8", false).unwrap();
        assert_eq!(addrs.len(), 8);
        assert_eq!(addrs[0], "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(addrs[7], "127.0.0.8".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn source_list_and_single() {
        let addrs = parse_source_addrs("127.0.0.2, 127.0.0.5-127.0.0.6", false).unwrap();
        assert_eq!(addrs.len(), 3);
        assert_eq!(parse_source_addrs("127.0.0.9", false).unwrap().len(), 1);
    }

    #[test]
    fn source_invalid_rejected() {
        assert!(parse_source_addrs("127.0.0.8-127.0.0.1", false).is_err());
        assert!(parse_source_addrs("127.0.0.1-::1", false).is_err());
        assert!(parse_source_addrs("not-an-address", false).is_err());
        assert!(parse_source_addrs("", false).is_err());
        assert!(parse_source_addrs("10.0.0.1", false).is_err());
    }
}
