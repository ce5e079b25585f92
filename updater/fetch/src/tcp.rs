//! The fetcher's TCP connections: ureq's own connector chain (CONNECT proxy,
//! TCP, TLS) with a TCP step of ours, which can bound the socket's receive
//! buffer (`SO_RCVBUF`) before it connects.
//!
//! Why: what the kernel has received but the agent has not yet read and
//! written to the `.partial` is lost when the agent is killed, and a
//! restart pays for it again. A capped agent reads slower than the link
//! could deliver, so an autotuned buffer stays full: hundreds of KiB per
//! kill on loopback. Bounded before connect, the window the agent advertises
//! (and its scale, fixed in the SYN) matches the buffer, so the sender never
//! has more than that in flight. ureq's own TCP connector opens the socket
//! and connects in one call, leaving no place to set the option before.

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{sockopt, AddressFamily, SocketFlags, SocketType};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, ShutdownHandle,
    Transport,
};

/// ureq's agent with our TCP step: with a bandwidth cap (`cap`, bytes/s)
/// every connection's receive buffer is bounded to what the cap needs
/// (`None`: the kernel autotunes it).
pub(crate) fn agent(config: ureq::config::Config, cap: Option<u64>) -> ureq::Agent {
    let chain =
        ().chain(ureq::unversioned::transport::ConnectProxyConnector::default())
            .chain(BoundedTcp {
                cap,
                rtt_us: AtomicU64::new(0),
            });
    #[cfg(feature = "tls")]
    let chain = chain.chain(ureq::unversioned::transport::RustlsConnector::default());
    ureq::Agent::with_parts(
        config,
        chain,
        ureq::unversioned::resolver::DefaultResolver::default(),
    )
}

/// Opens plain TCP connections, their receive buffer bounded for `cap`.
#[derive(Debug)]
struct BoundedTcp {
    cap: Option<u64>,
    /// The last connect's round trip in microseconds (0: none yet).
    rtt_us: AtomicU64,
}

impl BoundedTcp {
    /// The receive buffer of the next connection (kernel bytes; `None`:
    /// autotuned): with a cap, what it needs over the last connect's round
    /// trip, or the most it could need before the first.
    fn receive_buffer(&self) -> Option<u64> {
        self.cap
            .map(|rate| match self.rtt_us.load(Ordering::Relaxed) {
                0 => atomup_link::rate::receive_buffer_max(rate),
                rtt => atomup_link::rate::receive_buffer(rate, rtt),
            })
    }
}

impl<In: Transport> Connector<In> for BoundedTcp {
    type Out = Either<In, TcpTransport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        // A connection already made (through a proxy) is used as it is.
        if let Some(c) = chained {
            return Ok(Some(Either::A(c)));
        }
        let timeout = details.timeout;
        let deadline = timeout.not_zero().map(|t| Instant::now() + *t);
        let mut last: Option<ureq::Error> = None;
        for addr in details.addrs.iter() {
            let left = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Err(ureq::Error::Timeout(timeout.reason)),
                },
                None => None,
            };
            match connect(*addr, self.receive_buffer(), left) {
                Ok((stream, rtt)) => {
                    let rtt_us = rtt.as_micros().clamp(1, u64::MAX as u128) as u64;
                    self.rtt_us.store(rtt_us, Ordering::Relaxed);
                    if details.config.no_delay() {
                        stream.set_nodelay(true)?;
                    }
                    let stream = Arc::new(stream);
                    (details.register_shutdown)(
                        Arc::downgrade(&stream) as Weak<dyn ShutdownHandle>
                    )?;
                    let buffers = LazyBuffers::new(
                        details.config.input_buffer_size(),
                        details.config.output_buffer_size(),
                    );
                    return Ok(Some(Either::B(TcpTransport {
                        stream,
                        buffers,
                        read_timeout: None,
                        write_timeout: None,
                    })));
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    last = Some(ureq::Error::Timeout(timeout.reason))
                }
                // The next address may work (no IPv6 route, refused here).
                Err(e) => last = Some(ureq::Error::Io(e)),
            }
        }
        Err(last.unwrap_or_else(|| {
            ureq::Error::Io(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "no address to connect to",
            ))
        }))
    }
}

/// `SO_RCVBUF` for a receive buffer of `bytes` in the kernel's accounting
/// (Linux doubles the value set).
fn set_receive_buffer(fd: &OwnedFd, bytes: u64) -> io::Result<()> {
    Ok(sockopt::set_socket_recv_buffer_size(
        fd,
        (bytes / 2) as usize,
    )?)
}

/// A TCP socket to `addr` connected within `timeout`, and how long the
/// connect took (one round trip). `rcvbuf` (kernel bytes) bounds its
/// receive buffer before the SYN goes out, so the window scale the SYN
/// offers fits the buffer. With a bandwidth cap it is what the cap needs
/// over the previous connect's round trip (`atomup_link::rate`; the most it
/// could need before the first): set once, never shrunk under a window
/// already offered.
fn connect(
    addr: SocketAddr,
    rcvbuf: Option<u64>,
    timeout: Option<Duration>,
) -> io::Result<(TcpStream, Duration)> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let fd = rustix::net::socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    if let Some(bytes) = rcvbuf {
        set_receive_buffer(&fd, bytes)?;
    }
    let started = Instant::now();
    match rustix::net::connect(&fd, &addr) {
        Ok(()) => {}
        Err(rustix::io::Errno::INPROGRESS) => {
            let end = timeout.map(|t| Instant::now() + t);
            loop {
                let left = match end {
                    Some(end) => {
                        let left = end.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            return Err(io::ErrorKind::TimedOut.into());
                        }
                        Some(Timespec::try_from(left).map_err(io::Error::other)?)
                    }
                    None => None,
                };
                let mut fds = [PollFd::new(&fd, PollFlags::OUT)];
                match rustix::event::poll(&mut fds, left.as_ref()) {
                    Ok(0) => return Err(io::ErrorKind::TimedOut.into()),
                    Ok(_) => break,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            sockopt::socket_error(&fd)??;
        }
        Err(e) => return Err(e.into()),
    }
    let rtt = started.elapsed();
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok((stream, rtt))
}

/// A plain TCP connection as ureq's transport: its buffers, the socket, and
/// the read/write timeouts last set on it (a syscall only when they change).
struct TcpTransport {
    /// Shared (weakly) with the agent's shutdown handle.
    stream: Arc<TcpStream>,
    buffers: LazyBuffers,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

impl fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpTransport")
            .field("peer", &self.stream.peer_addr().ok())
            .finish()
    }
}

/// `timeout` as a socket timeout, or the timeout error if it has run out.
fn remaining(timeout: NextTimeout) -> Result<Option<Duration>, ureq::Error> {
    if timeout.after.is_zero() {
        return Err(ureq::Error::Timeout(timeout.reason));
    }
    Ok(timeout.not_zero().map(|t| *t))
}

fn io_to_ureq(e: io::Error, timeout: NextTimeout) -> ureq::Error {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ureq::Error::Timeout(timeout.reason),
        _ => ureq::Error::Io(e),
    }
}

impl Transport for TcpTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        let timeout = timeout.for_write();
        let t = remaining(timeout)?;
        if t != self.write_timeout {
            self.stream.set_write_timeout(t)?;
            self.write_timeout = t;
        }
        let output = &self.buffers.output()[..amount];
        (&*self.stream)
            .write_all(output)
            .map_err(|e| io_to_ureq(e, timeout))
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        let timeout = timeout.for_read();
        let t = remaining(timeout)?;
        if t != self.read_timeout {
            self.stream.set_read_timeout(t)?;
            self.read_timeout = t;
        }
        let started = Instant::now();
        let input = self.buffers.input_append_buf();
        let amount = loop {
            match (&*self.stream).read(input) {
                // A signal (the daemon's SIGTERM) interrupts a read with a
                // timeout (Linux does not restart those): read again for what
                // is left of the timeout; the fetcher looks at its cancel flag
                // between reads. Without a timeout the caller sees it.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    let Some(t) = t else {
                        return Err(ureq::Error::Io(e));
                    };
                    let left = t.saturating_sub(started.elapsed());
                    if left.is_zero() {
                        return Err(ureq::Error::Timeout(timeout.reason));
                    }
                    self.stream.set_read_timeout(Some(left))?;
                    self.read_timeout = Some(left);
                }
                Err(e) => return Err(io_to_ureq(e, timeout)),
                Ok(n) => break n,
            }
        };
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        // Open and idle: a non-blocking read finds nothing waiting. Bytes
        // the server sent unasked, or an end of stream, mean it is not.
        let probe = || -> io::Result<bool> {
            self.stream.set_nonblocking(true)?;
            let open = matches!(
                (&*self.stream).read(&mut [0u8; 1]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            );
            self.stream.set_nonblocking(false)?;
            Ok(open)
        };
        probe().unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A capped connector bounds the receive buffer: before any connect to
    /// the most the cap could need, after one to what the cap needs over
    /// the round trip measured; an uncapped one leaves it to the kernel.
    #[test]
    fn capped_connector_bounds_the_receive_buffer_by_the_measured_rtt() {
        let rate = 2 << 20;
        let capped = BoundedTcp {
            cap: Some(rate),
            rtt_us: AtomicU64::new(0),
        };
        let max = atomup_link::rate::receive_buffer_max(rate);
        assert_eq!(capped.receive_buffer(), Some(max));
        capped.rtt_us.store(50_000, Ordering::Relaxed);
        assert_eq!(
            capped.receive_buffer(),
            Some(atomup_link::rate::receive_buffer(rate, 50_000))
        );
        assert!(capped.receive_buffer() < Some(max));
        let uncapped = BoundedTcp {
            cap: None,
            rtt_us: AtomicU64::new(50_000),
        };
        assert_eq!(uncapped.receive_buffer(), None);
    }

    /// `connect` sets the receive buffer asked for on the socket before it
    /// connects: the kernel reports exactly that size back (what it holds,
    /// twice the `SO_RCVBUF` value set), not its autotuned default; without
    /// a bound the default stays.
    #[test]
    fn connect_sets_the_receive_buffer_before_connecting() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let wanted = 24 * 1024;
        let (s, rtt) = connect(addr, Some(wanted), Some(Duration::from_secs(5))).unwrap();
        assert_eq!(sockopt::socket_recv_buffer_size(&s).unwrap() as u64, wanted);
        assert!(rtt < Duration::from_secs(5));
        // The socket works: what the server writes arrives.
        let (mut server, _) = listener.accept().unwrap();
        server.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        (&s).read_exact(&mut one).unwrap();
        assert_eq!(&one, b"x");
        let (s, _) = connect(addr, None, Some(Duration::from_secs(5))).unwrap();
        assert_ne!(sockopt::socket_recv_buffer_size(&s).unwrap() as u64, wanted);
    }
}
