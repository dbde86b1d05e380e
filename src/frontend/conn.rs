//! One client connection: transport, identity, buffers and protocol state.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::time::Instant;

use mio::event::Source;
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};
use nix::sys::socket::{getsockopt, sockopt};

use super::dispatch::Session;
use crate::privsep::{ConnId, ListenerKind, PeerIdentity};
use crate::rpc::frame::MAX_PACKET;

/// Most bytes buffered from a client: one packet of the largest size, plus
/// whatever follows it in the same read.
pub const MAX_INBUF: usize = 2 * MAX_PACKET;
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

/// A TLS session over a TCP connection, driven without blocking.
#[derive(Debug)]
pub struct TlsStream {
    tcp: TcpStream,
    /// The rustls session.
    pub session: rustls::ServerConnection,
    /// Why the handshake failed, for the audit record.
    pub failure: Option<String>,
}

impl TlsStream {
    /// A session for a client just accepted.
    pub fn new(tcp: TcpStream, config: std::sync::Arc<rustls::ServerConfig>) -> Result<TlsStream, rustls::Error> {
        Ok(TlsStream { tcp, session: rustls::ServerConnection::new(config)?, failure: None })
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.session.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if self.session.read_tls(&mut self.tcp)? == 0 {
                return Ok(0);
            }
            if let Err(e) = self.session.process_new_packets() {
                self.failure = Some(e.to_string());
                // Tell the client why (the alert rustls queued), best effort.
                let _ = self.push();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            self.push()?;
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.session.writer().write(buf)?;
        self.push()?;
        if n == 0 && !buf.is_empty() {
            // rustls's plaintext buffer is full until the socket drains.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    /// Writes the TLS records rustls has ready, as far as the socket takes them.
    fn push(&mut self) -> io::Result<()> {
        while self.session.wants_write() {
            match self.session.write_tls(&mut self.tcp) {
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

    /// Encrypted bytes wait to be written (a TLS handshake in progress).
    pub fn wants_write(&self) -> bool {
        matches!(self, Stream::Tls(t) if t.session.wants_write())
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
    /// The guest console this client has open, if any.
    pub console: Option<super::server::Console>,
}

impl Client {
    /// Marks the client for dropping at once, discarding queued output.
    pub fn kill(&mut self) {
        self.gone = true;
        self.closing = true;
        self.outbuf.clear();
    }

    /// Reads what is available. Returns false once the client has gone or
    /// overfilled its buffer.
    pub fn read_available(&mut self) -> bool {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) if self.inbuf.len() + n > MAX_INBUF => return false,
                Ok(n) => {
                    self.inbuf.extend_from_slice(&chunk[..n]);
                    self.last_rx = Instant::now();
                    self.pings = 0;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
    }

    /// Queues bytes; false if the client has stopped reading and is too far behind.
    pub fn queue(&mut self, bytes: &[u8]) -> bool {
        if self.outbuf.len() + bytes.len() > MAX_OUTBUF {
            return false;
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
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        true
    }
}
