//! One client connection: transport, identity, buffers and protocol state.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Instant;

use mio::event::Source;
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};
use nix::sys::socket::{getsockopt, sockopt};

use std::sync::mpsc::Sender;

use super::dispatch::Session;
use super::handshakes::Job;
use crate::privsep::{ConnId, ListenerKind, PeerIdentity};
use crate::rpc::frame::MAX_PACKET;

/// Most bytes buffered from a client: one packet of the largest size, plus
/// whatever follows it in the same read.
pub const MAX_INBUF: usize = 2 * MAX_PACKET;
/// What every client may buffer whatever the others hold: room for any
/// ordinary call. Beyond it, a client's input comes out of [`INPUT_BUDGET`].
pub const SMALL_INBUF: usize = 64 * 1024;
/// Input buffered beyond [`SMALL_INBUF`] by all the clients of one frontend
/// together. A client that would go beyond it is not read until others
/// have been served (or cut off), so a crowd of clients holding partial
/// frames costs this much memory and no more.
pub const INPUT_BUDGET: usize = 24 * 1024 * 1024;
/// How long a frame may take to arrive whole, from its first byte. A client
/// that holds a partial frame longer is cut off, so it cannot hold its share
/// of [`INPUT_BUDGET`] for ever.
pub const FRAME_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Reply bytes queued for a client above which its next calls wait: a
/// client that does not read stops being served before it costs more.
pub const OUT_PAUSE: usize = 1024 * 1024;
/// Reply bytes queued for all the clients of one frontend together above
/// which no client with output pending is served a new call, and one that
/// is behind and gets more is cut off.
pub const OUTPUT_BUDGET: usize = 16 * 1024 * 1024;
/// How long a client may leave its replies unread (no byte taken by its
/// socket while some wait) before it is cut off.
pub const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a client may take to be admitted (for TLS, to finish its
/// handshake and pass its certificate check); until then it holds one of
/// the `max_anonymous_clients` places.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Most reply bytes queued for a client that does not read.
pub const MAX_OUTBUF: usize = 16 * 1024 * 1024;

/// A client's transport.
#[derive(Debug)]
pub enum Stream {
    /// Local client.
    Unix(UnixStream),
    /// Remote client.
    Tcp(TcpStream),
    /// Remote client over TLS.
    Tls(Box<TlsStream>),
}

/// A TLS session over a TCP connection, driven without blocking: while
/// its handshake has records to process (which may wait on the broker's
/// signature) the session is on the handshake thread
/// ([`super::handshakes`]), and the connection reads as blocked until it
/// comes back.
#[derive(Debug)]
pub struct TlsStream {
    tcp: TcpStream,
    /// The rustls session; `None` while the handshake thread has it.
    session: Option<Box<rustls::ServerConnection>>,
    /// Where handshake records go to be processed, and this client's key
    /// there; `None` until the broker has admitted the client.
    handshakes: Option<(Sender<Job>, (Token, ConnId))>,
    /// Why the handshake failed, for the audit record.
    pub failure: Option<String>,
}

impl TlsStream {
    /// A session for a client just accepted.
    pub fn new(tcp: TcpStream, config: std::sync::Arc<rustls::ServerConfig>) -> Result<TlsStream, rustls::Error> {
        let session = Some(Box::new(rustls::ServerConnection::new(config)?));
        Ok(TlsStream { tcp, session, handshakes: None, failure: None })
    }

    /// Sends this client's handshake records to the handshake thread from
    /// now on, under `key`.
    pub fn hand_off_to(&mut self, jobs: Sender<Job>, key: (Token, ConnId)) {
        self.handshakes = Some((jobs, key));
    }

    /// The session, unless the handshake thread has it.
    pub fn session(&self) -> Option<&rustls::ServerConnection> {
        self.session.as_deref()
    }

    /// Still handshaking (or the handshake thread has the session).
    pub fn handshaking(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.is_handshaking())
    }

    /// The handshake thread handed the session back: write what it
    /// produced; a failed handshake is an error (with the alert rustls
    /// queued sent, best effort).
    pub fn resume(
        &mut self,
        session: Box<rustls::ServerConnection>,
        result: Result<(), rustls::Error>,
    ) -> io::Result<()> {
        self.session = Some(session);
        if let Err(e) = result {
            self.failure = Some(e.to_string());
            let _ = self.push();
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        self.push()
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // At the handshake thread: read on when it comes back.
            let Some(session) = self.session.as_mut() else { return Err(io::ErrorKind::WouldBlock.into()) };
            match session.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if session.read_tls(&mut self.tcp)? == 0 {
                return Ok(0);
            }
            if session.is_handshaking()
                && let Some((jobs, key)) = &self.handshakes
                && let Some(session) = self.session.take()
            {
                // Processing these records may sign: not on the event loop.
                if let Err(e) = jobs.send(Job { key: *key, session }) {
                    self.session = Some(e.0.session);
                    self.failure = Some("the TLS handshake thread is gone".into());
                    return Err(io::Error::other("the TLS handshake thread is gone"));
                }
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let Some(session) = self.session.as_mut() else { return Err(io::ErrorKind::WouldBlock.into()) };
            if let Err(e) = session.process_new_packets() {
                self.failure = Some(e.to_string());
                // Tell the client why (the alert rustls queued), best effort.
                let _ = self.push();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            self.push()?;
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(session) = self.session.as_mut() else { return Err(io::ErrorKind::WouldBlock.into()) };
        let n = session.writer().write(buf)?;
        self.push()?;
        if n == 0 && !buf.is_empty() {
            // rustls's plaintext buffer is full until the socket drains.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    /// Writes the TLS records rustls has ready, as far as the socket takes them.
    fn push(&mut self) -> io::Result<()> {
        let Some(session) = self.session.as_mut() else { return Ok(()) };
        while session.wants_write() {
            match session.write_tls(&mut self.tcp) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Stream {
    /// The kernel's word on who connected: SO_PEERCRED for Unix, the address for TCP.
    pub fn identity(&self, socket: ListenerKind) -> PeerIdentity {
        match self {
            Stream::Unix(s) => {
                let cred = getsockopt(&s.as_fd(), sockopt::PeerCredentials).ok();
                PeerIdentity {
                    socket,
                    uid: cred.map(|c| c.uid()),
                    gid: cred.map(|c| c.gid()),
                    pid: cred.map(|c| c.pid()),
                    addr: None,
                    dn: None,
                }
            }
            Stream::Tcp(s) => PeerIdentity {
                socket,
                uid: None,
                gid: None,
                pid: None,
                addr: s.peer_addr().ok().map(|a| a.to_string()),
                dn: None,
            },
            Stream::Tls(t) => PeerIdentity {
                socket,
                uid: None,
                gid: None,
                pid: None,
                addr: t.tcp.peer_addr().ok().map(|a| a.to_string()),
                dn: None,
            },
        }
    }

    /// The connection's socket, which the broker reads the peer's
    /// credentials from.
    pub fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Unix(s) => s.as_fd(),
            Stream::Tcp(s) => s.as_fd(),
            Stream::Tls(t) => t.tcp.as_fd(),
        }
    }

    /// Encrypted bytes wait to be written (a TLS handshake in progress).
    pub fn wants_write(&self) -> bool {
        matches!(self, Stream::Tls(t) if t.session().is_some_and(|s| s.wants_write()))
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
            Stream::Tls(t) => t.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
            Stream::Tls(t) => t.write(buf),
        }
    }
}

impl Source for Stream {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.register(r, t, i),
            Stream::Tcp(s) => s.register(r, t, i),
            Stream::Tls(s) => s.tcp.register(r, t, i),
        }
    }
    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.reregister(r, t, i),
            Stream::Tcp(s) => s.reregister(r, t, i),
            Stream::Tls(s) => s.tcp.reregister(r, t, i),
        }
    }
    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.deregister(r),
            Stream::Tcp(s) => s.deregister(r),
            Stream::Tls(s) => s.tcp.deregister(r),
        }
    }
}

/// Where a connection stands with the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// `ClientOpened` sent, no answer yet.
    Pending,
    /// A TLS client the broker let in, in its handshake.
    Handshaking,
    /// A TLS client whose handshake ended; the broker is checking its DN.
    Authenticating,
    /// The broker accepted it.
    Admitted,
}

/// One connected client.
#[derive(Debug)]
pub struct Client {
    /// Our number for it, shared with the broker.
    pub conn: ConnId,
    /// Its transport.
    pub stream: Stream,
    /// Who it is.
    pub peer: PeerIdentity,
    /// The broker's answer so far.
    pub admission: Admission,
    /// No more requests are read; the connection closes once its replies are
    /// flushed and its calls answered (CONNECT_CLOSE).
    pub closing: bool,
    /// The transport is dead or the client broke the rules: drop it now.
    pub gone: bool,
    /// Bytes received and not yet consumed.
    pub inbuf: Vec<u8>,
    /// Bytes to send.
    pub outbuf: Vec<u8>,
    /// Protocol state.
    pub session: Session,
    /// Calls forwarded to the broker and not yet answered.
    pub in_flight: u32,
    /// Last time anything arrived (keepalive).
    pub last_rx: Instant,
    /// When it connected: it has [`HANDSHAKE_TIMEOUT`] to be admitted.
    pub accepted: Instant,
    /// Keepalive pings sent since then.
    pub pings: u32,
    /// The stream this client has open (a guest console), if any.
    pub relay: Option<super::streams::Relay>,
    /// Its stream's far side was not read to the end, for want of room.
    pub relay_starved: bool,
    /// Streams a newer one replaced (a client relays one at a time), sent
    /// end of file: the client's finish or abort of one is still answered,
    /// as it would otherwise wait for that answer for ever. Bounded by
    /// [`super::streams::RETIRED_MAX`].
    pub retired: Vec<super::streams::Relay>,
    /// When the incomplete frame at the head of `inbuf` began to arrive.
    pub frame_since: Option<Instant>,
    /// When its socket last took bytes (or output began to wait).
    pub last_tx: Instant,
    /// It was not read to the end because the input budget was spent; it
    /// is read again when there is room.
    pub stalled: bool,
}

/// What a read left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Everything available was read.
    Drained,
    /// Reading stopped at the limit; more may wait in the socket.
    AtLimit,
    /// The client went away or overfilled its buffer.
    Gone,
}

impl Client {
    /// Marks the client for dropping at once, discarding queued output.
    pub fn kill(&mut self) {
        self.gone = true;
        self.closing = true;
        self.outbuf.clear();
    }

    /// Reads what is available, until `inbuf` holds `limit` bytes.
    pub fn read_available(&mut self, limit: usize) -> ReadOutcome {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            if self.inbuf.len() >= limit {
                return ReadOutcome::AtLimit;
            }
            let room = (limit - self.inbuf.len()).min(chunk.len());
            match self.stream.read(&mut chunk[..room]) {
                Ok(0) => return ReadOutcome::Gone,
                Ok(n) if self.inbuf.len() + n > MAX_INBUF => return ReadOutcome::Gone,
                Ok(n) => {
                    if self.inbuf.is_empty() {
                        self.frame_since = Some(Instant::now());
                    }
                    self.reserve_frame(&chunk[..n], limit);
                    self.inbuf.extend_from_slice(&chunk[..n]);
                    self.last_rx = Instant::now();
                    self.pings = 0;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return ReadOutcome::Gone,
            }
        }
    }

    /// Grows `inbuf` once to the size its frame announces (within `limit`),
    /// instead of doubling as bytes arrive: every doubling copies, and the
    /// allocator keeps the copies' pages, so a crowd of growing frames would
    /// cost several times what they hold.
    fn reserve_frame(&mut self, incoming: &[u8], limit: usize) {
        // The length word, from what is buffered and what just came.
        let mut word = [0u8; 4];
        let have = self.inbuf.len().min(4);
        let more = (4 - have).min(incoming.len());
        if have + more < 4 {
            return;
        }
        word[..have].copy_from_slice(&self.inbuf[..have]);
        word[have..].copy_from_slice(&incoming[..more]);
        let needed = self.inbuf.len() + incoming.len();
        let want = (u32::from_be_bytes(word) as usize).min(limit).max(needed);
        if want > self.inbuf.capacity() {
            self.inbuf.reserve_exact(want - self.inbuf.len());
        }
    }

    /// When this client is to be cut off for holding a partial frame or
    /// leaving its replies unread, if it is.
    pub fn stall_deadline(&self) -> Option<Instant> {
        // Only a frame still arriving counts; whole ones wait for their turn.
        let partial = matches!(crate::rpc::frame::split(&self.inbuf), Ok(None)) && !self.inbuf.is_empty();
        let frame = self.frame_since.filter(|_| partial).map(|t| t + FRAME_TIMEOUT);
        let write = (!self.outbuf.is_empty()).then_some(self.last_tx + WRITE_TIMEOUT);
        [frame, write].into_iter().flatten().min()
    }

    /// Queues bytes; false if the client has stopped reading and is too far behind.
    pub fn queue(&mut self, bytes: &[u8]) -> bool {
        if self.outbuf.len() + bytes.len() > MAX_OUTBUF {
            return false;
        }
        if self.outbuf.is_empty() {
            self.last_tx = Instant::now();
        }
        self.outbuf.extend_from_slice(bytes);
        true
    }

    /// Writes what the socket takes. Returns false on a broken connection.
    pub fn flush(&mut self) -> bool {
        if let Stream::Tls(t) = &mut self.stream
            && t.push().is_err()
        {
            return false;
        }
        while !self.outbuf.is_empty() {
            match self.stream.write(&self.outbuf) {
                Ok(0) => return false,
                Ok(n) => {
                    self.outbuf.drain(..n);
                    self.last_tx = Instant::now();
                    if self.outbuf.is_empty() && self.outbuf.capacity() > SMALL_INBUF {
                        // A large reply's buffer goes back once it is sent.
                        self.outbuf = Vec::new();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        true
    }
}
