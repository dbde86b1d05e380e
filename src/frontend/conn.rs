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
/// Most reply bytes queued for a client that does not read.
pub const MAX_OUTBUF: usize = 16 * 1024 * 1024;

/// A client's transport.
#[derive(Debug)]
pub enum Stream {
    /// Local client.
    Unix(UnixStream),
    /// Remote client.
    Tcp(TcpStream),
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
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
}

impl Source for Stream {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.register(r, t, i),
            Stream::Tcp(s) => s.register(r, t, i),
        }
    }
    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.reregister(r, t, i),
            Stream::Tcp(s) => s.reregister(r, t, i),
        }
    }
    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.deregister(r),
            Stream::Tcp(s) => s.deregister(r),
        }
    }
}

/// Where a connection stands with the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// `ClientOpened` sent, no answer yet.
    Pending,
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
