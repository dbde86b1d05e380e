//! One client connection and who is on the other end.

use std::io::{self, Read};
use std::os::fd::AsFd;

use mio::event::Source;
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};
use nix::sys::socket::{getsockopt, sockopt};

use crate::privsep::{ConnId, ListenerKind, PeerIdentity};

/// Most bytes buffered from a client before it is read further.
pub const MAX_BUFFERED: usize = 4 * 1024 * 1024;

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
                }
            }
            Stream::Tcp(s) => PeerIdentity {
                socket,
                uid: None,
                gid: None,
                pid: None,
                addr: s.peer_addr().ok().map(|a| a.to_string()),
            },
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
    /// The client hung up while its admission was pending.
    pub hung_up: bool,
    /// Bytes received and not yet consumed.
    pub inbuf: Vec<u8>,
}

impl Client {
    /// Reads what is available. Returns false once the client has gone.
    pub fn read_available(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let r = match &mut self.stream {
                Stream::Unix(s) => s.read(&mut chunk),
                Stream::Tcp(s) => s.read(&mut chunk),
            };
            match r {
                Ok(0) => return false,
                Ok(n) if self.inbuf.len() + n > MAX_BUFFERED => return false,
                Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
    }
}
