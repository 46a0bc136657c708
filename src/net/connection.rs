//! One connection to one server of a network store: a TCP or Unix socket,
//! plain or TLS, whose every exchange ends by a deadline, with a read
//! buffer and a request buffer. What goes over it is the store's protocol.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use rustls::{ClientConnection, StreamOwned};
use socket2::{Domain, SockAddr, Socket as Socket2, Type};

use super::address::Address;
use super::spin::SpinWait;
use super::tls::TlsTarget;

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
    fn connect(address: &Address, deadline: Instant) -> io::Result<Socket> {
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
            Err(error) if error.raw_os_error() == Some(libc::EAGAIN) || error.kind() == io::ErrorKind::Interrupted => {}
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

/// A socket whose blocking reads and writes end by a deadline: before
/// each one its timeouts are cut to what is left, so a server that
/// trickles its bytes cannot stretch an exchange (nor, under TLS, a
/// record at a time).
struct Timed {
    socket: Socket,
    /// The current exchange's deadline (`None`: the socket's timeouts as set).
    deadline: Option<Instant>,
    /// The socket's read and write timeouts as last set.
    timeout_set: Duration,
}

impl Timed {
    /// Before a blocking call: the socket's timeouts cut to what is left of
    /// the deadline (set again only when they differ by more than a
    /// millisecond, so a reply in one piece costs no system call).
    fn fit_timeout(&mut self) -> io::Result<()> {
        let Some(deadline) = self.deadline else {
            return Ok(());
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(timed_out("the exchange's deadline passed"));
        }
        if remaining + Duration::from_millis(1) < self.timeout_set || remaining > self.timeout_set {
            self.socket.set_timeouts(remaining)?;
            self.timeout_set = remaining;
        }
        Ok(())
    }

    /// Run a blocking read or write by the deadline. A signal that cuts
    /// the wait short (a Python signal handler, a profiler's timer, a
    /// debugger attaching) is not the server's doing: it waits again, for
    /// what is left. A socket with a timeout is interrupted by every
    /// caught signal, with or without `SA_RESTART` (signal(7)).
    fn by_deadline(&mut self, mut io: impl FnMut(&mut Socket) -> io::Result<usize>) -> io::Result<usize> {
        loop {
            self.fit_timeout()?;
            match io(&mut self.socket) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                done => return done,
            }
        }
    }
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.by_deadline(|socket| match socket {
            Socket::Tcp(s) => s.read(buf),
            Socket::Unix(s) => s.read(buf),
        })
    }
}

impl Write for Timed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.by_deadline(|socket| match socket {
            Socket::Tcp(s) => s.write(buf),
            Socket::Unix(s) => s.write(buf),
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The socket's own `read_now`, as a `Read` rustls can take records from.
struct DontWait<'a>(&'a Socket);

impl Read for DontWait<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read_now(buf)
    }
}

type TlsStream = StreamOwned<ClientConnection, Timed>;

/// Plain text, or TLS over the same timed socket (boxed: rustls's state is
/// large, and plain connections should not carry its size).
enum Channel {
    Plain(Timed),
    Tls(Box<TlsStream>),
}

impl Channel {
    fn timed(&mut self) -> &mut Timed {
        match self {
            Channel::Plain(timed) => timed,
            Channel::Tls(tls) => &mut tls.sock,
        }
    }

    fn socket(&self) -> &Socket {
        match self {
            Channel::Plain(timed) => &timed.socket,
            Channel::Tls(tls) => &tls.sock.socket,
        }
    }

    /// Read what already arrived, without blocking (`WouldBlock` if nothing
    /// did). Under TLS, records that arrived are decrypted; a record only
    /// partly there is `WouldBlock` too.
    fn read_now(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Channel::Plain(timed) => timed.socket.read_now(buf),
            Channel::Tls(tls) => {
                match tls.conn.reader().read(buf) {
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    done => return done,
                }
                tls.conn.read_tls(&mut DontWait(&tls.sock.socket))?;
                tls.conn
                    .process_new_packets()
                    .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
                tls.conn.reader().read(buf)
            }
        }
    }
}

impl Read for Channel {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Channel::Plain(timed) => timed.read(buf),
            Channel::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Channel {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Channel::Plain(timed) => timed.write(buf),
            Channel::Tls(tls) => tls.write(buf),
        }
    }

    /// Under TLS, until every record is on the wire: rustls may still hold
    /// some after `write`.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Channel::Plain(_) => Ok(()),
            Channel::Tls(tls) => tls.flush(),
        }
    }
}

/// A channel that spins briefly for a reply before blocking, and times
/// replies for the spin estimate. Each exchange (a request and its whole
/// reply) has one deadline, `IO_TIMEOUT` after it starts (see `Timed`).
pub(crate) struct Stream {
    channel: Channel,
    spin: Arc<SpinWait>,
    /// Set by `send`: when the request left, and how long to spin.
    sent_at: Option<Instant>,
    spin_until: Option<Instant>,
    io_timeout: Duration,
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(until) = self.spin_until.take() {
            loop {
                match self.channel.read_now(buf) {
                    Ok(n) => return Ok(self.first_bytes(n)),
                    Err(error) if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
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
        let n = self.channel.read(buf)?;
        Ok(self.first_bytes(n))
    }
}

impl Stream {
    fn first_bytes(&mut self, n: usize) -> usize {
        if let Some(sent) = self.sent_at.take() {
            self.spin.record(sent.elapsed());
        }
        n
    }
}

/// A connection with a read buffer and a request buffer. Requests are
/// built in `out` and written with one `write` call per exchange.
pub(crate) struct Connection {
    reader: BufReader<Stream>,
    pub(crate) out: Vec<u8>,
    line: Vec<u8>,
    /// A plain TCP connection that has not had a reply yet: if the server
    /// drops it at the first request, the error says it may want TLS.
    awaits_first_reply: bool,
}

/// Why a new connection could not be opened. Each store turns it into
/// its own error (memcached: `Error::Connect` and `Error::Tls`).
#[derive(Debug)]
pub(crate) enum OpenError {
    /// The server could not be reached (refused, unreachable, resolve
    /// failed), or the opening did not finish within CONNECT_TIMEOUT.
    Connect { server: String, source: io::Error },
    /// The TLS handshake failed: the server's certificate was rejected,
    /// the server refused ours, or it does not speak TLS.
    Tls { server: String, detail: String },
}

/// What opening a connection to one server needs, apart from the round
/// trip with which the store's protocol confirms it.
pub(crate) struct Opening<'a> {
    pub(crate) address: &'a Address,
    /// How errors name the server ("127.0.0.1:11211").
    pub(crate) server: &'a str,
    /// TLS towards the server (`None`: plain text).
    pub(crate) tls: Option<&'a TlsTarget>,
    /// Limit on the whole opening: connect, TLS handshake and confirmation.
    pub(crate) connect_timeout: Duration,
    /// Each exchange's deadline once open, from its `send` (zero: none).
    pub(crate) io_timeout: Duration,
    /// The server's reply-time estimate, shared by its connections.
    pub(crate) spin: &'a Arc<SpinWait>,
    /// What a TLS error for a server that did not answer in TLS tells the
    /// user to check (memcached: "is it started with -Z, on this port?");
    /// see `opening_failed`.
    pub(crate) tls_hint: &'static str,
}

/// A store's round trip that confirms a new connection before its first
/// request (a login, or a probe that makes a TLS 1.3 server's late refusal
/// show). Its I/O errors should go through `opening_failed`.
pub(crate) type Confirm<'c, E> = &'c mut dyn FnMut(&mut Connection) -> Result<(), E>;

impl Connection {
    /// Connect to `opening.address`, shake hands if TLS, and run `confirm`
    /// if given, all within `connect_timeout`: while TLS or `confirm` is
    /// under way the connect deadline is on the socket (see `Timed`), and
    /// it is cleared once the connection is open. Without either, only
    /// the connect itself is bounded by it.
    pub(crate) fn open<E: From<OpenError>>(
        opening: &Opening<'_>,
        confirm: Option<Confirm<'_, E>>,
    ) -> Result<Connection, E> {
        let Opening {
            address,
            server,
            tls,
            connect_timeout,
            io_timeout,
            spin,
            tls_hint,
        } = *opening;
        let deadline = Instant::now() + connect_timeout;
        let connect_error = |source| OpenError::Connect {
            server: server.to_owned(),
            source,
        };
        let socket = Socket::connect(address, deadline).map_err(connect_error)?;
        let plain_tcp = matches!(socket, Socket::Tcp(_)) && tls.is_none();
        socket.set_timeouts(io_timeout).map_err(connect_error)?;
        let mut timed = Timed {
            socket,
            deadline: None,
            timeout_set: io_timeout,
        };
        let by_deadline = tls.is_some() || confirm.is_some();
        if by_deadline {
            timed.deadline = Some(deadline);
        }
        let channel = match tls {
            None => Channel::Plain(timed),
            Some(target) => Channel::Tls(Box::new(shake_hands(target, timed, server, tls_hint)?)),
        };
        let stream = Stream {
            channel,
            spin: Arc::clone(spin),
            sent_at: None,
            spin_until: None,
            io_timeout,
        };
        let mut conn = Connection {
            reader: BufReader::with_capacity(64 * 1024, stream),
            out: Vec::with_capacity(1024),
            line: Vec::with_capacity(128),
            awaits_first_reply: plain_tcp,
        };
        if let Some(confirm) = confirm {
            confirm(&mut conn)?;
        }
        if by_deadline {
            conn.reader.get_mut().channel.timed().deadline = None;
        }
        Ok(conn)
    }

    /// Write `request` whole, by the deadline set (opening: CONNECT_TIMEOUT's;
    /// else the current exchange's, which it joins).
    pub(crate) fn write_now(&mut self, request: &[u8]) -> io::Result<()> {
        let channel = &mut self.reader.get_mut().channel;
        channel.write_all(request)?;
        channel.flush()
    }

    /// Whether an idle connection can carry a new request: nothing may be
    /// waiting to be read (an EOF from a restarted server, or bytes that
    /// belong to nobody) and no buffered reply may be left over. A TLS
    /// connection first takes in the records that arrived while it was
    /// idle: ones that carry no data (TLS 1.3 session tickets, key
    /// updates) leave it reusable.
    pub(crate) fn is_reusable(&mut self) -> bool {
        if !self.reader.buffer().is_empty() {
            return false;
        }
        let channel = &mut self.reader.get_mut().channel;
        let mut poll = libc::pollfd {
            fd: channel.socket().raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ready = loop {
            // SAFETY: one valid pollfd, zero timeout; the fd is owned by self.
            let ready = unsafe { libc::poll(&mut poll, 1, 0) };
            if ready >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break ready;
            }
        };
        match channel {
            Channel::Plain(_) => ready == 0,
            Channel::Tls(tls) => takes_in_idle_records(tls, ready != 0),
        }
    }

    /// Write the request built in `out`; its exchange's deadline starts.
    pub(crate) fn send(&mut self) -> io::Result<()> {
        let stream = self.reader.get_mut();
        let io_timeout = stream.io_timeout;
        stream.channel.timed().deadline = Some(Instant::now() + io_timeout).filter(|_| !io_timeout.is_zero());
        let result = stream
            .channel
            .write_all(&self.out)
            .and_then(|()| stream.channel.flush());
        self.out.clear();
        if self.out.capacity() > MAX_KEPT_BUFFER {
            self.out = Vec::with_capacity(1024);
        }
        let now = Instant::now();
        stream.sent_at = Some(now);
        stream.spin_until = stream.spin.budget().map(|budget| now + budget);
        result
    }

    pub(crate) fn is_tls(&self) -> bool {
        matches!(self.reader.get_ref().channel, Channel::Tls(_))
    }

    /// Read one reply line, without its CRLF.
    pub(crate) fn read_line(&mut self) -> io::Result<&[u8]> {
        self.line.clear();
        loop {
            let available = match self.reader.fill_buf() {
                Ok([]) => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection",
                )),
                other => other,
            };
            let available = match available {
                Ok(available) => available,
                Err(error) if self.awaits_first_reply => return Err(dropped_at_first_request(error)),
                Err(error) => return Err(error),
            };
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
        self.awaits_first_reply = false;
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

/// A TLS handshake on `timed`, by its deadline.
fn shake_hands(target: &TlsTarget, timed: Timed, server: &str, tls_hint: &str) -> Result<TlsStream, OpenError> {
    let conn =
        ClientConnection::new(Arc::clone(&target.config), target.name.clone()).map_err(|error| OpenError::Tls {
            server: server.to_owned(),
            detail: crate::tls::describe(&error),
        })?;
    let mut tls = StreamOwned::new(conn, timed);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|error| opening_failed(server, error, tls_hint))?;
    }
    Ok(tls)
}

/// The error for a new connection that failed before its first request
/// (in its TLS handshake, or in the store's confirming round trip): what
/// TLS said, if it was TLS; a timeout is CONNECT_TIMEOUT's. `tls_hint` is
/// `Opening::tls_hint`.
pub(crate) fn opening_failed(server: &str, error: io::Error, tls_hint: &str) -> OpenError {
    if let Some(tls) = error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        let mut detail = crate::tls::describe(tls);
        match tls {
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired) => {
                detail.push_str(": it requires a client certificate (TLS CERT_FILE and KEY_FILE)");
            }
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature,
            ) => {
                detail.push_str(" (not issued by a CA that TLS CA_FILE, or the system, trusts)");
            }
            rustls::Error::InvalidMessage(_) => {
                detail.push_str(": the server did not answer in TLS; ");
                detail.push_str(tls_hint);
            }
            _ => {}
        }
        return OpenError::Tls {
            server: server.to_owned(),
            detail,
        };
    }
    let source = match error.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
            timed_out("no TLS handshake and login within CONNECT_TIMEOUT")
        }
        _ => error,
    };
    OpenError::Connect {
        server: server.to_owned(),
        source,
    }
}

/// `error` for a plain connection the server dropped at its first
/// request: what a TLS-only port does to a plain-text client.
#[cold]
fn dropped_at_first_request(error: io::Error) -> io::Error {
    io::Error::new(
        error.kind(),
        format!(
            "{error}; the server dropped a new connection at its first request \
             (a TLS-only port does that: then set OPTIONS TLS)"
        ),
    )
}

/// Take in what arrived on an idle TLS connection (if the socket is
/// `readable`), without blocking: whether it held only records that carry
/// no data (session tickets, key updates). Application data (also any
/// rustls still holds), a close_notify, EOF or a bad record make the
/// connection unfit.
fn takes_in_idle_records(tls: &mut TlsStream, readable: bool) -> bool {
    let mut more = readable;
    loop {
        if more {
            match tls.conn.read_tls(&mut DontWait(&tls.sock.socket)) {
                Ok(0) => return false,
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => more = false,
                Err(_) => return false,
            }
        }
        match tls.conn.process_new_packets() {
            Ok(state) if state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed() => {}
            _ => return false,
        }
        if !more {
            return true;
        }
    }
}
