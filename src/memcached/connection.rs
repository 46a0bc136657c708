//! One connection to one memcached server.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket as Socket2, Type};

use super::address::Address;
use super::spin::SpinWait;

/// Longest reply line accepted; a longer one means garbage on the stream.
const MAX_LINE: usize = 8 * 1024;
/// A request buffer that grew past this (a batch of large values) is
/// dropped after use instead of kept for the connection's life; also the
/// most a value's buffer is given before its bytes arrive.
const MAX_KEPT_BUFFER: usize = 1024 * 1024;

enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Socket {
    fn connect(address: &Address, connect_timeout: Duration) -> io::Result<Socket> {
        let deadline = Instant::now() + connect_timeout;
        match address {
            Address::Unix(path) => connect_unix(path, deadline).map(Socket::Unix),
            Address::Tcp { host, port } => {
                let mut last_error = None;
                for addr in resolve(host, *port, deadline)? {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if remaining.is_zero() {
                        break;
                    }
                    match TcpStream::connect_timeout(&addr, remaining) {
                        Ok(stream) => {
                            stream.set_nodelay(true)?;
                            return Ok(Socket::Tcp(stream));
                        }
                        Err(error) => last_error = Some(error),
                    }
                }
                Err(last_error
                    .unwrap_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "no address answered in time")))
            }
        }
    }

    fn set_timeouts(&self, timeout: Duration) -> io::Result<()> {
        let timeout = Some(timeout).filter(|t| !t.is_zero());
        match self {
            Socket::Tcp(s) => {
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)
            }
            Socket::Unix(s) => {
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)
            }
        }
    }

    fn raw_fd(&self) -> RawFd {
        match self {
            Socket::Tcp(s) => s.as_raw_fd(),
            Socket::Unix(s) => s.as_raw_fd(),
        }
    }

    /// Read what is already there, without blocking.
    fn read_now(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for buf.len() bytes; the fd is owned by self.
        let n = unsafe { libc::recv(self.raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_owned())
}

/// The addresses of `host`, resolved within the deadline: getaddrinfo has
/// no timeout of its own, so a name is looked up on a thread of its own
/// that is left to finish alone if it takes too long.
fn resolve(host: &str, port: u16, deadline: Instant) -> io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let (sender, receiver) = mpsc::channel();
    let name = host.to_owned();
    std::thread::Builder::new()
        .name("racefree-resolve".into())
        .spawn(move || {
            let _ = sender.send((name.as_str(), port).to_socket_addrs().map(Vec::from_iter));
        })?;
    match receiver.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(addresses) => addresses,
        Err(_) => Err(timed_out("the server's name was not resolved within CONNECT_TIMEOUT")),
    }
}

/// Connect to a Unix socket within the deadline: a listener whose backlog
/// is full makes a blocking connect wait for ever, and a non-blocking one
/// fail at once with EAGAIN, so that is retried until the deadline.
fn connect_unix(path: &Path, deadline: Instant) -> io::Result<UnixStream> {
    let address = SockAddr::unix(path)?;
    let mut pause = Duration::from_micros(100);
    loop {
        let socket = Socket2::new(Domain::UNIX, Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        match socket.connect(&address) {
            Ok(()) => {
                socket.set_nonblocking(false)?;
                return Ok(UnixStream::from(OwnedFd::from(socket)));
            }
            Err(error) if error.raw_os_error() == Some(libc::EAGAIN) => {}
            Err(error) => return Err(error),
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(timed_out(
                "the server's socket accepted no connection within CONNECT_TIMEOUT",
            ));
        }
        std::thread::sleep(pause.min(remaining));
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

/// A socket that spins briefly for a reply before blocking, and times
/// replies for the spin estimate. Each exchange (a request and its whole
/// reply) has one deadline, `IO_TIMEOUT` after it starts: the socket's
/// timeouts are cut to what is left of it before each blocking call, so a
/// server that trickles its reply cannot stretch a call.
pub(crate) struct Stream {
    socket: Socket,
    spin: Arc<SpinWait>,
    /// Set by `send`: when the request left, and how long to spin.
    sent_at: Option<Instant>,
    spin_until: Option<Instant>,
    io_timeout: Duration,
    /// The current exchange's deadline.
    deadline: Option<Instant>,
    /// The socket's read and write timeouts as last set.
    timeout_set: Duration,
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(until) = self.spin_until.take() {
            loop {
                match self.socket.read_now(buf) {
                    Ok(n) => return Ok(self.first_bytes(n)),
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    Err(error) => return Err(error),
                }
                // Stop once others wait too: their replies, and the server,
                // need the CPU this loop would take.
                if Instant::now() >= until || super::spin::crowded() {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        self.fit_timeout()?;
        let n = match &mut self.socket {
            Socket::Tcp(s) => s.read(buf)?,
            Socket::Unix(s) => s.read(buf)?,
        };
        Ok(self.first_bytes(n))
    }
}

impl Stream {
    /// Before a blocking call: the socket's timeouts cut to what is left of
    /// the exchange's deadline (set again only when they differ by more
    /// than a millisecond, so a reply in one piece costs no system call).
    fn fit_timeout(&mut self) -> io::Result<()> {
        let Some(deadline) = self.deadline else {
            return Ok(());
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(timed_out("no complete reply within IO_TIMEOUT"));
        }
        if remaining + Duration::from_millis(1) < self.timeout_set || remaining > self.timeout_set {
            self.socket.set_timeouts(remaining)?;
            self.timeout_set = remaining;
        }
        Ok(())
    }

    fn first_bytes(&mut self, n: usize) -> usize {
        if let Some(sent) = self.sent_at.take() {
            self.spin.record(sent.elapsed());
        }
        n
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.fit_timeout()?;
        match &mut self.socket {
            Socket::Tcp(s) => s.write(buf),
            Socket::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A connection with a read buffer and a request buffer. Requests are
/// built in `out` and written with one `write` call per exchange.
pub(crate) struct Connection {
    reader: BufReader<Stream>,
    pub(crate) out: Vec<u8>,
    line: Vec<u8>,
    next_opaque: u32,
}

impl Connection {
    pub(crate) fn open(
        address: &Address,
        connect_timeout: Duration,
        io_timeout: Duration,
        spin: Arc<SpinWait>,
    ) -> io::Result<Connection> {
        let socket = Socket::connect(address, connect_timeout)?;
        socket.set_timeouts(io_timeout)?;
        let stream = Stream {
            socket,
            spin,
            sent_at: None,
            spin_until: None,
            io_timeout,
            deadline: None,
            timeout_set: io_timeout,
        };
        Ok(Connection {
            reader: BufReader::with_capacity(64 * 1024, stream),
            out: Vec::with_capacity(1024),
            line: Vec::with_capacity(128),
            next_opaque: 0,
        })
    }

    /// A fresh opaque token for the next request.
    pub(crate) fn opaque(&mut self) -> u32 {
        self.next_opaque = self.next_opaque.wrapping_add(1);
        self.next_opaque
    }

    /// Whether an idle connection can carry a new request: nothing may be
    /// waiting to be read (an EOF from a restarted server, or bytes that
    /// belong to nobody) and no buffered reply may be left over.
    pub(crate) fn is_reusable(&self) -> bool {
        if !self.reader.buffer().is_empty() {
            return false;
        }
        let mut poll = libc::pollfd {
            fd: self.reader.get_ref().socket.raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout; the fd is owned by self.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        ready == 0
    }

    /// Write the request built in `out`; its exchange's deadline starts.
    pub(crate) fn send(&mut self) -> io::Result<()> {
        let stream = self.reader.get_mut();
        stream.deadline = Some(Instant::now() + stream.io_timeout).filter(|_| !stream.io_timeout.is_zero());
        let result = stream.write_all(&self.out);
        self.out.clear();
        if self.out.capacity() > MAX_KEPT_BUFFER {
            self.out = Vec::with_capacity(1024);
        }
        let now = Instant::now();
        stream.sent_at = Some(now);
        stream.spin_until = stream.spin.budget().map(|budget| now + budget);
        result
    }

    /// Read one reply line, without its CRLF.
    pub(crate) fn read_line(&mut self) -> io::Result<&[u8]> {
        self.line.clear();
        loop {
            let available = self.reader.fill_buf()?;
            if available.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection",
                ));
            }
            match available.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    self.line.extend_from_slice(&available[..end]);
                    self.reader.consume(end + 1);
                    break;
                }
                None => {
                    let n = available.len();
                    self.line.extend_from_slice(available);
                    self.reader.consume(n);
                }
            }
            if self.line.len() > MAX_LINE {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "reply line too long"));
            }
        }
        if self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
        Ok(&self.line)
    }

    /// Read a value block of `size` bytes and its CRLF. Memory grows with
    /// the bytes that arrive, not with the size the server announced.
    pub(crate) fn read_value(&mut self, size: usize) -> io::Result<Vec<u8>> {
        let wanted = size + 2;
        let mut value = Vec::with_capacity(wanted.min(MAX_KEPT_BUFFER));
        (&mut self.reader).take(wanted as u64).read_to_end(&mut value)?;
        if value.len() < wanted {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection mid-value",
            ));
        }
        if !value.ends_with(b"\r\n") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "value block not terminated by CRLF",
            ));
        }
        value.truncate(size);
        Ok(value)
    }
}
