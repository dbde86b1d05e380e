//! A `SOCK_SEQPACKET` end carrying postcard messages and SCM_RIGHTS fds,
//! without ever making its sender wait for its peer.
//!
//! `passfd` sends one fd beside a dummy byte; a seqpacket record must carry the
//! message and its fds together so that a reader can never pair fds with the
//! wrong message, so this uses `sendmsg`/`recvmsg` directly.
//!
//! **Records and messages.** A message larger than one record (a list of
//! 16,384 domains, a 1 MiB domain XML escaped) is cut into records of at
//! most [`RECORD_PAYLOAD`] bytes, each led by one flag byte saying whether
//! more follow; the fds ride on the first record. The receiver joins them up
//! to [`MAX_MESSAGE`] bytes, so a reply that libvirt's limits allow always
//! fits, and a peer cannot make the receiver hold more than that.
//!
//! **No blocking.** [`Channel::send`] writes what the socket takes now and
//! queues the rest (the queue owns duplicates of the fds); the owner's event
//! loop calls [`Channel::flush`] when the socket is writable, and reads
//! [`Channel::queued`] to apply back-pressure: it stops taking new work from
//! whoever feeds the queue, instead of killing a peer that is merely slow.
//! Only start-up and the helper process use [`Channel::send_wait`], which
//! waits a bounded time.

use std::collections::VecDeque;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::cmsg_space;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, sendmsg, socketpair,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest message, in bytes, once its records are joined: libvirt's
/// largest RPC message (32 MiB) plus room for our own framing. Larger ones
/// are a protocol violation on receipt, and refused before sending.
pub const MAX_MESSAGE: usize = 33 * 1024 * 1024;
/// Most message bytes in one record; with its flag byte a record stays far
/// below the socket's default send buffer.
pub const RECORD_PAYLOAD: usize = 64 * 1024 - 1;
/// Most fds accepted beside one message.
pub const MAX_FDS: usize = 16;
/// How long [`Channel::send_wait`] waits for room by default, in ms.
const SEND_TIMEOUT_MS: u64 = 5000;
/// Flag byte: this record ends its message.
const LAST: u8 = 0;
/// Flag byte: more records of this message follow.
const MORE: u8 = 1;

/// Why a message could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The peer closed its end.
    #[error("peer closed the channel")]
    Closed,
    /// Nothing (or only part of a message) to read right now.
    #[error("no message waiting")]
    WouldBlock,
    /// The socket failed.
    #[error("channel I/O: {0}")]
    Io(#[from] Errno),
    /// The peer did not make room (or answer) within the time allowed.
    #[error("peer did not read within {0} ms")]
    Stuck(u64),
    /// A message was larger than [`MAX_MESSAGE`], a record was malformed,
    /// or more than [`MAX_FDS`] fds came with one message.
    #[error("oversized or malformed record")]
    Oversized,
    /// A message did not encode, or a record did not decode as the expected type.
    #[error("undecodable record: {0}")]
    Decode(postcard::Error),
    /// A message said it carried a different number of fds than arrived.
    #[error("message announced {expected} fds, {got} arrived")]
    FdCount {
        /// What the message said.
        expected: usize,
        /// What arrived.
        got: usize,
    },
}

/// One record waiting for room in the socket.
#[derive(Debug)]
struct Record {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// A message whose first records arrived and whose last has not, and the
/// buffer records are received into (kept, not zeroed anew per record).
#[derive(Debug, Default)]
struct Partial {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
    scratch: Vec<u8>,
}

/// One end of a frontend/broker, sign or helper channel.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
    out: Mutex<Outgoing>,
    partial: Mutex<Partial>,
}

#[derive(Debug, Default)]
struct Outgoing {
    records: VecDeque<Record>,
    bytes: usize,
    /// A message went out in part: the peer would join the next one to it,
    /// so nothing more may be sent.
    broken: bool,
}

impl Channel {
    fn wrap(fd: OwnedFd) -> Channel {
        Channel { fd, out: Mutex::default(), partial: Mutex::default() }
    }

    /// A connected pair, both close-on-exec and non-blocking.
    pub fn pair() -> Result<(Channel, Channel), Errno> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )?;
        Ok((Channel::wrap(a), Channel::wrap(b)))
    }

    /// Wraps an inherited end (the frontend's fd 3).
    pub fn from_fd(fd: OwnedFd) -> Result<Channel, Errno> {
        let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        Ok(Channel::wrap(fd))
    }

    /// Wraps a socket that is already non-blocking (one accepted with
    /// `SOCK_NONBLOCK`), without the `fcntl` a confined process may not make.
    pub fn from_nonblocking_fd(fd: OwnedFd) -> Channel {
        Channel::wrap(fd)
    }

    /// The raw fd, for registering with a poller.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Borrow the fd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn outgoing(&self) -> MutexGuard<'_, Outgoing> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes queued and not yet taken by the socket: the owner's measure
    /// for back-pressure.
    pub fn queued(&self) -> usize {
        self.outgoing().bytes
    }

    /// Sends `msg` with `fds`: writes what the socket takes now and queues
    /// the rest for [`Channel::flush`]. Never waits.
    pub fn send<T: Serialize>(&self, msg: &T, fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        let bytes = postcard::to_allocvec(msg).map_err(ChannelError::Decode)?;
        if bytes.len() > MAX_MESSAGE || fds.len() > MAX_FDS {
            return Err(ChannelError::Oversized);
        }
        // Whatever waits goes first, as far as the socket takes it now.
        self.flush()?;
        let mut out = self.outgoing();
        if out.broken {
            return Err(ChannelError::Closed);
        }
        let count = bytes.len().div_ceil(RECORD_PAYLOAD).max(1);
        let mut chunks = bytes.chunks(RECORD_PAYLOAD);
        for i in 0..count {
            let chunk = chunks.next().unwrap_or_default();
            let flag = if i + 1 == count { LAST } else { MORE };
            let first = i == 0;
            // While nothing waits ahead of it, a record goes straight out
            // with borrowed fds; only a record that must wait owns copies.
            if out.records.is_empty() {
                let raw: Vec<RawFd> = if first { fds.iter().map(|f| f.as_raw_fd()).collect() } else { Vec::new() };
                match send_record(self.raw_fd(), flag, chunk, &raw) {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => {
                        out.broken |= i > 0;
                        return Err(e);
                    }
                }
            }
            let owned = match first {
                true => fds.iter().map(|f| f.try_clone_to_owned()).collect::<Result<Vec<_>, _>>().map_err(io_errno)?,
                false => Vec::new(),
            };
            let mut record = Vec::with_capacity(chunk.len() + 1);
            record.push(flag);
            record.extend_from_slice(chunk);
            out.bytes += record.len();
            out.records.push_back(Record { bytes: record, fds: owned });
        }
        Ok(())
    }

    /// Writes queued records while the socket takes them. Returns whether
    /// the queue is now empty.
    pub fn flush(&self) -> Result<bool, ChannelError> {
        let mut out = self.outgoing();
        if out.broken {
            return Err(ChannelError::Closed);
        }
        while let Some(record) = out.records.front() {
            let raw: Vec<RawFd> = record.fds.iter().map(|f| f.as_raw_fd()).collect();
            let (flag, body) = record.bytes.split_first().ok_or(ChannelError::Oversized)?;
            // Records of queued messages may already have gone: any failure
            // here leaves the peer with half a message.
            let sent = send_record(self.raw_fd(), *flag, body, &raw).inspect_err(|_| out.broken = true)?;
            if !sent {
                return Ok(false);
            }
            if let Some(sent) = out.records.pop_front() {
                out.bytes -= sent.bytes.len();
            }
        }
        Ok(true)
    }

    /// Sends `msg` and waits (a bounded time) until the socket took all of
    /// it: for start-up, before an event loop exists, and for the helper,
    /// whose only peer is the broker.
    pub fn send_wait<T: Serialize>(&self, msg: &T, fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        self.send(msg, fds)?;
        let deadline = Instant::now() + Duration::from_millis(SEND_TIMEOUT_MS);
        while !self.flush()? {
            self.wait(PollFlags::POLLOUT, deadline, SEND_TIMEOUT_MS)?;
        }
        Ok(())
    }

    fn wait(&self, flags: PollFlags, deadline: Instant, total_ms: u64) -> Result<(), ChannelError> {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        if ms == 0 {
            return Err(ChannelError::Stuck(total_ms));
        }
        let mut pfd = [PollFd::new(self.fd.as_fd(), flags)];
        match poll(&mut pfd, PollTimeout::from(ms)) {
            Ok(0) => Err(ChannelError::Stuck(total_ms)),
            Ok(_) | Err(Errno::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits (up to `timeout_ms`) for a whole message and receives it.
    pub fn recv_blocking<T: DeserializeOwned>(
        &self,
        timeout_ms: u16,
        fd_count: impl Fn(&T) -> usize,
    ) -> Result<(T, Vec<OwnedFd>), ChannelError> {
        let total = u64::from(timeout_ms);
        let deadline = Instant::now() + Duration::from_millis(total);
        loop {
            self.wait(PollFlags::POLLIN, deadline, total)?;
            match self.recv(&fd_count) {
                Err(ChannelError::WouldBlock) => continue,
                other => return other,
            }
        }
    }

    /// Receives one message without waiting. `fd_count` says how many fds the
    /// decoded message must carry; any mismatch is an error and the fds are
    /// closed. Part of a message that has arrived is kept for the next call.
    pub fn recv<T: DeserializeOwned>(&self, fd_count: impl Fn(&T) -> usize) -> Result<(T, Vec<OwnedFd>), ChannelError> {
        let mut partial = self.partial.lock().unwrap_or_else(|p| p.into_inner());
        let mut buf = std::mem::take(&mut partial.scratch);
        buf.resize(RECORD_PAYLOAD + 2, 0);
        let outcome = receive_into(&mut partial, &mut buf, self.raw_fd());
        partial.scratch = buf;
        if let Err(e) = outcome {
            // Half a message is worth nothing once a record went wrong.
            if !matches!(e, ChannelError::WouldBlock) {
                partial.bytes = Vec::new();
                partial.fds.clear();
            }
            return Err(e);
        }
        let (bytes, fds) = (std::mem::take(&mut partial.bytes), std::mem::take(&mut partial.fds));
        drop(partial);
        let msg: T = postcard::from_bytes(&bytes).map_err(ChannelError::Decode)?;
        let expected = fd_count(&msg);
        if expected != fds.len() {
            return Err(ChannelError::FdCount { expected, got: fds.len() });
        }
        Ok((msg, fds))
    }
}

impl Channel {
    /// Reads and drops one record without decoding it (its fds close): for
    /// a peer whose messages this end must not parse, such as a helper of
    /// another protocol version, that is still watched for its end.
    /// `Closed` once the peer has gone.
    pub fn skip(&self) -> Result<(), ChannelError> {
        let mut buf = vec![0u8; RECORD_PAYLOAD + 2];
        match recv_record(self.raw_fd(), &mut buf)? {
            (0, fds) if fds.is_empty() => Err(ChannelError::Closed),
            _ => Ok(()),
        }
    }
}

/// Receives records into `partial` until one ends the message.
fn receive_into(partial: &mut Partial, buf: &mut [u8], fd: RawFd) -> Result<(), ChannelError> {
    loop {
        let (len, fds) = recv_record(fd, buf)?;
        if len == 0 && fds.is_empty() {
            return Err(ChannelError::Closed);
        }
        let first = partial.bytes.is_empty() && partial.fds.is_empty();
        let Some((&flag, body)) = buf[..len].split_first() else {
            return Err(ChannelError::Oversized);
        };
        // Fds come only with a message's first record.
        let too_big = partial.bytes.len() + body.len() > MAX_MESSAGE || partial.fds.len() + fds.len() > MAX_FDS;
        if flag > MORE || too_big || (!first && !fds.is_empty()) {
            return Err(ChannelError::Oversized);
        }
        partial.bytes.extend_from_slice(body);
        partial.fds.extend(fds);
        if flag == LAST {
            return Ok(());
        }
    }
}

fn io_errno(e: std::io::Error) -> ChannelError {
    ChannelError::Io(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
}

/// Sends one record; `Ok(false)` when the socket has no room now.
fn send_record(fd: RawFd, flag: u8, body: &[u8], fds: &[RawFd]) -> Result<bool, ChannelError> {
    let cmsgs = if fds.is_empty() { vec![] } else { vec![ControlMessage::ScmRights(fds)] };
    let flag = [flag];
    loop {
        let iov = [IoSlice::new(&flag), IoSlice::new(body)];
        match sendmsg::<()>(fd, &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT, None) {
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Ok(false),
            Err(Errno::EPIPE | Errno::ECONNRESET) => return Err(ChannelError::Closed),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one record into `buf`; a record larger than a flag byte plus
/// [`RECORD_PAYLOAD`] is refused.
fn recv_record(fd: RawFd, buf: &mut [u8]) -> Result<(usize, Vec<OwnedFd>), ChannelError> {
    let mut cmsg = cmsg_space!([RawFd; MAX_FDS]);
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        match recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT) {
            Ok(msg) => {
                let mut fds = Vec::new();
                for c in msg.cmsgs().map_err(ChannelError::Io)? {
                    if let ControlMessageOwned::ScmRights(list) = c {
                        // SAFETY: the kernel just installed these fds in our table
                        // for this message; nothing else owns them.
                        fds.extend(list.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                    }
                }
                let truncated = msg.flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
                if truncated || msg.bytes > RECORD_PAYLOAD + 1 {
                    return Err(ChannelError::Oversized);
                }
                return Ok((msg.bytes, fds));
            }
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Err(ChannelError::WouldBlock),
            Err(Errno::ECONNRESET) => return Err(ChannelError::Closed),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privsep::{Envelope, FrontendRequest};

    fn recv_all<T: DeserializeOwned>(c: &Channel, fds: usize) -> (T, Vec<OwnedFd>) {
        c.recv_blocking::<T>(2000, |_| fds).unwrap()
    }

    #[test]
    fn messages_and_fds_arrive_together() {
        let (a, b) = Channel::pair().unwrap();
        let (r, _w) = nix::unistd::pipe().unwrap();
        let msg = Envelope { id: 7, body: FrontendRequest::Hello { version: 1 } };
        a.send(&msg, &[r.as_fd()]).unwrap();
        let (got, fds): (Envelope<FrontendRequest>, _) = b.recv(|_| 1).unwrap();
        assert_eq!(got, msg);
        assert_eq!(fds.len(), 1);
    }

    #[test]
    fn a_wrong_fd_count_is_refused() {
        let (a, b) = Channel::pair().unwrap();
        a.send(&Envelope { id: 1, body: FrontendRequest::Ready }, &[]).unwrap();
        let err = b.recv::<Envelope<FrontendRequest>>(|_| 2).unwrap_err();
        assert!(matches!(err, ChannelError::FdCount { expected: 2, got: 0 }));
    }

    #[test]
    fn garbage_is_a_decode_error_not_a_panic() {
        let (a, b) = Channel::pair().unwrap();
        let iov = [IoSlice::new(&[LAST, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f, 9, 9])];
        sendmsg::<()>(a.raw_fd(), &iov, &[], MsgFlags::empty(), None).unwrap();
        let err = b.recv::<Envelope<FrontendRequest>>(|_| 0).unwrap_err();
        assert!(matches!(err, ChannelError::Decode(_)), "{err:?}");
    }

    #[test]
    fn oversized_records_are_refused() {
        let (a, b) = Channel::pair().unwrap();
        let big = vec![0u8; RECORD_PAYLOAD + 100];
        let iov = [IoSlice::new(&big)];
        sendmsg::<()>(a.raw_fd(), &iov, &[], MsgFlags::empty(), None).unwrap();
        let err = b.recv::<Envelope<FrontendRequest>>(|_| 0).unwrap_err();
        assert!(matches!(err, ChannelError::Oversized), "{err:?}");
    }

    #[test]
    fn a_bad_flag_byte_is_refused() {
        let (a, b) = Channel::pair().unwrap();
        let iov = [IoSlice::new(&[7, 1, 2])];
        sendmsg::<()>(a.raw_fd(), &iov, &[], MsgFlags::empty(), None).unwrap();
        assert!(matches!(b.recv::<Vec<u8>>(|_| 0), Err(ChannelError::Oversized)));
    }

    #[test]
    fn a_closed_peer_is_reported() {
        let (a, b) = Channel::pair().unwrap();
        drop(a);
        assert!(matches!(b.recv::<Envelope<FrontendRequest>>(|_| 0), Err(ChannelError::Closed)));
    }

    #[test]
    fn messages_larger_than_a_record_arrive_whole_with_their_fds() {
        let (a, b) = Channel::pair().unwrap();
        let (r, _w) = nix::unistd::pipe().unwrap();
        let big: Vec<u8> = (0..3 * RECORD_PAYLOAD + 17).map(|i| (i % 251) as u8).collect();
        a.send(&big, &[r.as_fd()]).unwrap();
        let (got, fds): (Vec<u8>, _) = recv_all(&b, 1);
        assert_eq!(got, big);
        assert_eq!(fds.len(), 1);
    }

    #[test]
    fn a_full_socket_queues_instead_of_waiting_and_flush_delivers_in_order() {
        let (a, b) = Channel::pair().unwrap();
        let (r, _w) = nix::unistd::pipe().unwrap();
        let msg: Vec<u8> = vec![5; 200_000];
        // Far more than the socket buffer holds; every send returns at once.
        let started = Instant::now();
        for i in 0..40u8 {
            let mut m = msg.clone();
            m[0] = i;
            let fds = if i == 39 { vec![r.as_fd()] } else { vec![] };
            a.send(&m, &fds).unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(a.queued() > 1_000_000, "queued {}", a.queued());
        // The queue owns a copy of the fd: closing ours loses nothing.
        drop(r);
        for i in 0..40u8 {
            a.flush().unwrap();
            let want = if i == 39 { 1 } else { 0 };
            let (got, fds): (Vec<u8>, _) = loop {
                match b.recv(|_| want) {
                    Ok(m) => break m,
                    Err(ChannelError::WouldBlock) => {
                        a.flush().unwrap();
                    }
                    Err(e) => panic!("{e}"),
                }
            };
            assert_eq!(got[0], i);
            assert_eq!(got.len(), msg.len());
            assert_eq!(fds.len(), want);
        }
        assert!(a.flush().unwrap());
        assert_eq!(a.queued(), 0);
    }

    #[test]
    fn a_message_over_the_limit_is_refused_before_sending() {
        let (a, b) = Channel::pair().unwrap();
        let huge = vec![0u8; MAX_MESSAGE + 1];
        assert!(matches!(a.send(&huge, &[]), Err(ChannelError::Oversized)));
        assert_eq!(a.queued(), 0);
        assert!(matches!(b.recv::<Vec<u8>>(|_| 0), Err(ChannelError::WouldBlock)));
    }

    #[test]
    fn skip_drops_records_unread_and_reports_the_end() {
        let (a, b) = Channel::pair().unwrap();
        a.send(&vec![1u8, 2, 3], &[]).unwrap();
        assert!(b.skip().is_ok());
        assert!(matches!(b.skip(), Err(ChannelError::WouldBlock)));
        drop(a);
        assert!(matches!(b.skip(), Err(ChannelError::Closed)));
    }

    #[test]
    fn a_bad_record_mid_message_drops_the_half_message_and_the_next_arrives_clean() {
        let (a, b) = Channel::pair().unwrap();
        send_record(a.raw_fd(), MORE, &[0xde, 0xad], &[]).unwrap();
        let big = vec![0u8; RECORD_PAYLOAD + 100];
        sendmsg::<()>(a.raw_fd(), &[IoSlice::new(&big)], &[], MsgFlags::empty(), None).unwrap();
        assert!(matches!(b.recv::<Vec<u8>>(|_| 0), Err(ChannelError::Oversized)));
        a.send(&vec![1u8, 2, 3], &[]).unwrap();
        let (got, _): (Vec<u8>, _) = b.recv(|_| 0).unwrap();
        assert_eq!(got, [1, 2, 3]);
    }

    #[test]
    fn fds_on_a_later_record_are_refused() {
        let (a, b) = Channel::pair().unwrap();
        let (r, _w) = nix::unistd::pipe().unwrap();
        send_record(a.raw_fd(), MORE, &[1], &[]).unwrap();
        send_record(a.raw_fd(), LAST, &[2], &[r.as_raw_fd()]).unwrap();
        assert!(matches!(b.recv::<Vec<u8>>(|_| 0), Err(ChannelError::Oversized)));
    }
}
