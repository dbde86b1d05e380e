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

/// What a stream relays, and so what the broker hears when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// A guest's serial console.
    Console {
        /// The domain.
        uuid: crate::domain::Uuid,
    },
}

impl StreamKind {
    /// The message that gives the fd's far side back to the broker.
    pub fn closed(self, conn: ConnId) -> FrontendRequest {
        match self {
            StreamKind::Console { uuid } => FrontendRequest::ConsoleClosed { conn, uuid },
        }
    }
}

/// One client stream and the fd it is joined to.
#[derive(Debug)]
pub struct Relay {
    /// The far side; `None` once it ended and the client was sent end of file.
    pub fd: Option<mio::net::UnixStream>,
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

    /// Client data for the far side. What it cannot take now (or, after
    /// end of file, at all) is dropped: console input is typed and small.
    pub fn write_in(&mut self, data: &[u8]) {
        if let Some(fd) = self.fd.as_mut() {
            let _ = fd.write(data);
        }
    }

    /// Reads what the far side has, as stream packets, up to `budget` bytes
    /// of data (the rest waits in the socket until the client catches up).
    pub fn pump_out(&mut self, budget: usize) -> Pumped {
        let mut out = Pumped::default();
        let Some(fd) = self.fd.as_mut() else { return out };
        let mut buf = [0u8; CHUNK];
        let mut taken = 0;
        while taken < budget {
            let want = (budget - taken).min(CHUNK);
            match fd.read(&mut buf[..want]) {
                Ok(0) => {
                    out.ended = true;
                    break;
                }
                Ok(n) => {
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
        let fd = Some(mio::net::UnixStream::from_std(ours));
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
        assert_eq!(r.kind.closed(4), FrontendRequest::ConsoleClosed { conn: 4, uuid: crate::domain::Uuid([7; 16]) });
    }
}
