//! Client streams joined to an fd the broker passed: bytes flow between the
//! client's stream packets and that fd, never through the broker.
//!
//! A stream opens with a call (`DOMAIN_OPEN_CONSOLE` today; volume upload
//! and download and tunnelled migration are the same shape): the broker
//! answers it with an fd, and the frontend relays. When the fd's side ends
//! the client gets a zero-length CONTINUE, libvirt's end of file, and the
//! stream stays until the client finishes or aborts it, which is then
//! answered: an unsolicited "finished" packet would be a reply to a call the
//! client never made, and costs it the connection. What a kind of stream
//! adds is only [`StreamKind`]: what the broker is told when the stream ends.

use std::io::{self, Read, Write};

use mio::Token;

use super::dispatch;
use crate::privsep::{ConnId, FrontendRequest};
use crate::rpc::frame::{Header, Status};

/// Most bytes read from a relay's fd in one go.
const CHUNK: usize = 16 * 1024;

/// Most replaced streams a client keeps awaiting its finish or abort
/// (each is a header and no fd): one that opens stream after stream
/// without finishing them costs no more.
pub const RETIRED_MAX: usize = 8;

/// What a stream relays, and so what the broker hears when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// A guest's serial console.
    Console {
        /// The domain.
        uuid: crate::domain::Uuid,
    },
    /// A storage volume's file (`vol-upload`, `vol-download`), positioned
    /// by the broker at the offset asked for.
    Volume {
        /// Client bytes go into the file (else file bytes go to the client).
        upload: bool,
        /// Bytes left to relay; `None`: to the end.
        remaining: Option<u64>,
    },
}

impl StreamKind {
    /// The message that gives the fd's far side back to the broker, if it wants it back.
    pub fn closed(self, conn: ConnId) -> Option<FrontendRequest> {
        match self {
            StreamKind::Console { uuid } => Some(FrontendRequest::ConsoleClosed { conn, uuid }),
            StreamKind::Volume { .. } => None,
        }
    }
}

/// The far side of a relay: a socket the event loop polls, or a regular
/// file, which is always ready and which epoll refuses to watch.
#[derive(Debug)]
pub enum RelayFd {
    /// A console's socket.
    Socket(mio::net::UnixStream),
    /// A volume's file.
    File(std::fs::File),
}

impl RelayFd {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            RelayFd::Socket(s) => s.read(buf),
            RelayFd::File(f) => f.read(buf),
        }
    }
}

impl mio::event::Source for RelayFd {
    fn register(&mut self, r: &mio::Registry, t: Token, i: mio::Interest) -> io::Result<()> {
        match self {
            RelayFd::Socket(s) => s.register(r, t, i),
            RelayFd::File(_) => Ok(()),
        }
    }

    fn reregister(&mut self, r: &mio::Registry, t: Token, i: mio::Interest) -> io::Result<()> {
        match self {
            RelayFd::Socket(s) => s.reregister(r, t, i),
            RelayFd::File(_) => Ok(()),
        }
    }

    fn deregister(&mut self, r: &mio::Registry) -> io::Result<()> {
        match self {
            RelayFd::Socket(s) => s.deregister(r),
            RelayFd::File(_) => Ok(()),
        }
    }
}

/// One client stream and the fd it is joined to.
#[derive(Debug)]
pub struct Relay {
    /// The far side; `None` once it ended and the client was sent end of file.
    pub fd: Option<RelayFd>,
    /// The opening call's header: stream packets echo its serial and proc.
    pub call: Header,
    /// What it relays.
    pub kind: StreamKind,
    /// The fd's poll token.
    pub token: Token,
}

/// What a read of the far side gave.
#[derive(Debug, Default)]
pub struct Pumped {
    /// Stream packets for the client.
    pub packets: Vec<u8>,
    /// The far side ended (end of file or an error).
    pub ended: bool,
    /// Reading stopped at the budget: more may wait, and no readiness
    /// event will say so (it is edge-triggered).
    pub starved: bool,
}

impl Relay {
    /// Whether a client's stream packet belongs to this stream.
    pub fn is_for(&self, h: &Header) -> bool {
        self.call.serial == h.serial && self.call.proc_ == h.proc_
    }

    /// Client data for the far side. What a console cannot take now (or,
    /// after end of file, at all) is dropped: console input is typed and
    /// small. A volume's file takes it all, up to the length asked for; a
    /// write that fails is an error for the stream.
    pub fn write_in(&mut self, data: &[u8]) -> io::Result<()> {
        match (self.fd.as_mut(), &mut self.kind) {
            (Some(RelayFd::Socket(s)), _) => {
                let _ = s.write(data);
                Ok(())
            }
            (Some(RelayFd::File(f)), StreamKind::Volume { upload: true, remaining }) => {
                let take = remaining.map_or(data.len(), |r| data.len().min(usize::try_from(r).unwrap_or(usize::MAX)));
                f.write_all(&data[..take])?;
                if let Some(r) = remaining {
                    *r -= take as u64;
                }
                Ok(())
            }
            (Some(RelayFd::File(_)), _) => Err(io::Error::other("this stream is read-only")),
            (None, _) => Ok(()),
        }
    }

    /// Reads what the far side has, as stream packets, up to `budget` bytes
    /// of data (the rest waits in the socket until the client catches up).
    pub fn pump_out(&mut self, budget: usize) -> Pumped {
        let mut out = Pumped::default();
        // An upload's file has nothing for the client.
        if matches!(self.kind, StreamKind::Volume { upload: true, .. }) {
            return out;
        }
        let Some(fd) = self.fd.as_mut() else { return out };
        let mut buf = [0u8; CHUNK];
        let mut taken = 0;
        while taken < budget {
            let mut want = (budget - taken).min(CHUNK);
            if let StreamKind::Volume { remaining: Some(r), .. } = self.kind {
                want = want.min(usize::try_from(r).unwrap_or(usize::MAX));
                if want == 0 {
                    out.ended = true;
                    break;
                }
            }
            match fd.read(&mut buf[..want]) {
                Ok(0) => {
                    out.ended = true;
                    break;
                }
                Ok(n) => {
                    if let StreamKind::Volume { remaining: Some(r), .. } = &mut self.kind {
                        *r -= n as u64;
                    }
                    taken += n;
                    out.packets.extend(dispatch::stream_packet(&self.call, Status::Continue, &buf[..n]));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    out.ended = true;
                    break;
                }
            }
        }
        out.starved = !out.ended && taken >= budget;
        out
    }

    /// libvirt's end of file: a zero-length CONTINUE.
    pub fn eof_packet(&self) -> Vec<u8> {
        dispatch::stream_packet(&self.call, Status::Continue, &[])
    }

    /// The answer to the client's finish or abort: an empty OK, as libvirtd sends for both.
    pub fn finish_packet(&self) -> Vec<u8> {
        dispatch::stream_packet(&self.call, Status::Ok, &[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::frame::{self, MessageType};

    fn relay() -> (Relay, std::os::unix::net::UnixStream) {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let call = Header {
            prog: frame::REMOTE_PROGRAM,
            vers: 1,
            proc_: 201,
            kind: MessageType::Call,
            serial: 9,
            status: Status::Ok as i32,
        };
        let fd = Some(RelayFd::Socket(mio::net::UnixStream::from_std(ours)));
        (Relay { fd, call, kind: StreamKind::Console { uuid: crate::domain::Uuid([7; 16]) }, token: Token(1) }, theirs)
    }

    #[test]
    fn far_side_bytes_become_stream_packets_of_the_opening_call_within_the_budget() {
        let (mut r, mut far) = relay();
        far.write_all(&[b'x'; 100]).unwrap();
        let out = r.pump_out(60);
        let (h, payload, len) = frame::split(&out.packets).unwrap().unwrap();
        assert_eq!((h.serial, h.proc_, h.kind), (9, 201, MessageType::Stream));
        assert_eq!(h.status, Status::Continue as i32);
        assert_eq!(payload.len(), 60);
        assert_eq!(len, out.packets.len());
        assert!(!out.ended && out.starved);
        // The rest waited in the socket.
        assert_eq!(r.pump_out(1000).packets.len(), frame::HEADER_LEN + 40);
        drop(far);
        assert!(r.pump_out(1000).ended);
    }

    #[test]
    fn only_packets_of_its_own_call_belong_to_it_and_end_of_file_is_an_empty_continue() {
        let (r, _far) = relay();
        assert!(r.is_for(&r.call));
        assert!(!r.is_for(&Header { serial: 10, ..r.call }));
        let (h, payload, _) = frame::split(&r.eof_packet()).unwrap().unwrap();
        assert_eq!((h.status, payload.len()), (Status::Continue as i32, 0));
        let (h, _, _) = frame::split(&r.finish_packet()).unwrap().unwrap();
        assert_eq!(h.status, Status::Ok as i32);
        assert_eq!(
            r.kind.closed(4),
            Some(FrontendRequest::ConsoleClosed { conn: 4, uuid: crate::domain::Uuid([7; 16]) })
        );
    }

    #[test]
    fn a_download_stops_at_its_length_and_an_upload_writes_what_it_may() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vol");
        std::fs::write(&path, vec![b'v'; 100]).unwrap();
        let call = Header { proc_: 209, ..relay().0.call };
        let file = std::fs::File::open(&path).unwrap();
        let kind = StreamKind::Volume { upload: false, remaining: Some(30) };
        let mut r = Relay { fd: Some(RelayFd::File(file)), call, kind, token: Token(2) };
        let out = r.pump_out(1000);
        let (_, payload, _) = frame::split(&out.packets).unwrap().unwrap();
        assert_eq!((payload.len(), out.ended), (30, true));
        assert_eq!(r.kind.closed(1), None);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let kind = StreamKind::Volume { upload: true, remaining: Some(4) };
        let mut w = Relay { fd: Some(RelayFd::File(file)), call, kind, token: Token(3) };
        assert!(w.pump_out(1000).packets.is_empty());
        w.write_in(b"abcdef").unwrap();
        assert_eq!(&std::fs::read(&path).unwrap()[..6], b"abcdvv");
    }
}
