//! A `SOCK_SEQPACKET` end carrying postcard records and SCM_RIGHTS fds.
//!
//! `passfd` sends one fd beside a dummy byte; a seqpacket record must carry the
//! message and its fds together so that a reader can never pair fds with the
//! wrong message, so this uses `sendmsg`/`recvmsg` directly.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::cmsg_space;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, sendmsg, socketpair,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest record accepted, in bytes; larger ones are a protocol violation.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Most fds accepted beside one record.
pub const MAX_FDS: usize = 16;
/// How long a send may wait for room before the peer counts as stuck, in ms.
const SEND_TIMEOUT_MS: u16 = 5000;

/// Why a message could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The peer closed its end.
    #[error("peer closed the channel")]
    Closed,
    /// Nothing to read right now.
    #[error("no message waiting")]
    WouldBlock,
    /// The socket failed.
    #[error("channel I/O: {0}")]
    Io(#[from] Errno),
    /// The peer did not make room within the send timeout.
    #[error("peer did not read within {SEND_TIMEOUT_MS} ms")]
    Stuck,
    /// A record was larger than [`MAX_MESSAGE`] or carried more than [`MAX_FDS`] fds.
    #[error("oversized record")]
    Oversized,
    /// A record did not decode as the expected message type.
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

/// One end of the frontend/broker channel.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    /// A connected pair, both close-on-exec and non-blocking.
    pub fn pair() -> Result<(Channel, Channel), Errno> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )?;
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    /// Wraps an inherited end (the frontend's fd 3).
    pub fn from_fd(fd: OwnedFd) -> Result<Channel, Errno> {
        let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        Ok(Channel { fd })
    }

    /// Wraps a socket that is already non-blocking (one accepted with
    /// `SOCK_NONBLOCK`), without the `fcntl` a confined process may not make.
    pub fn from_nonblocking_fd(fd: OwnedFd) -> Channel {
        Channel { fd }
    }

    /// The raw fd, for registering with a poller.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Borrow the fd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Sends `msg` with `fds`, waiting up to the send timeout for room.
    pub fn send<T: Serialize>(&self, msg: &T, fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        let bytes = postcard::to_allocvec(msg).map_err(ChannelError::Decode)?;
        if bytes.len() > MAX_MESSAGE || fds.len() > MAX_FDS {
            return Err(ChannelError::Oversized);
        }
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let cmsgs = if raw.is_empty() { vec![] } else { vec![ControlMessage::ScmRights(&raw)] };
        loop {
            let iov = [IoSlice::new(&bytes)];
            match sendmsg::<()>(self.raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => self.wait(PollFlags::POLLOUT)?,
                Err(Errno::EPIPE | Errno::ECONNRESET) => return Err(ChannelError::Closed),
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn wait(&self, flags: PollFlags) -> Result<(), ChannelError> {
        let mut pfd = [PollFd::new(self.fd.as_fd(), flags)];
        match poll(&mut pfd, PollTimeout::from(SEND_TIMEOUT_MS)) {
            Ok(0) => Err(ChannelError::Stuck),
            Ok(_) => Ok(()),
            Err(Errno::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits (up to `timeout_ms`) for a record and receives it.
    pub fn recv_blocking<T: DeserializeOwned>(
        &self,
        timeout_ms: u16,
        fd_count: impl Fn(&T) -> usize,
    ) -> Result<(T, Vec<OwnedFd>), ChannelError> {
        let mut pfd = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut pfd, PollTimeout::from(timeout_ms)) {
            Ok(0) => return Err(ChannelError::Stuck),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        self.recv(fd_count)
    }

    /// Receives one record without waiting. `fd_count` says how many fds the
    /// decoded message must carry; any mismatch is an error and the fds are closed.
    pub fn recv<T: DeserializeOwned>(&self, fd_count: impl Fn(&T) -> usize) -> Result<(T, Vec<OwnedFd>), ChannelError> {
        let mut buf = vec![0u8; MAX_MESSAGE + 1];
        let mut cmsg = cmsg_space!([RawFd; MAX_FDS]);
        let (len, fds, truncated) = loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(self.raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
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
                    break (msg.bytes, fds, truncated);
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Err(ChannelError::WouldBlock),
                Err(Errno::ECONNRESET) => return Err(ChannelError::Closed),
                Err(e) => return Err(e.into()),
            }
        };
        if len == 0 && fds.is_empty() {
            return Err(ChannelError::Closed);
        }
        if truncated || len > MAX_MESSAGE {
            return Err(ChannelError::Oversized);
        }
        let msg: T = postcard::from_bytes(&buf[..len]).map_err(ChannelError::Decode)?;
        let expected = fd_count(&msg);
        if expected != fds.len() {
            return Err(ChannelError::FdCount { expected, got: fds.len() });
        }
        Ok((msg, fds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privsep::{Envelope, FrontendRequest};

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
        let iov = [IoSlice::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x0f, 9, 9])];
        sendmsg::<()>(a.raw_fd(), &iov, &[], MsgFlags::empty(), None).unwrap();
        let err = b.recv::<Envelope<FrontendRequest>>(|_| 0).unwrap_err();
        assert!(matches!(err, ChannelError::Decode(_)), "{err:?}");
    }

    #[test]
    fn oversized_records_are_refused() {
        let (a, b) = Channel::pair().unwrap();
        let big = vec![0u8; MAX_MESSAGE + 100];
        let iov = [IoSlice::new(&big)];
        sendmsg::<()>(a.raw_fd(), &iov, &[], MsgFlags::empty(), None).unwrap();
        let err = b.recv::<Envelope<FrontendRequest>>(|_| 0).unwrap_err();
        assert!(matches!(err, ChannelError::Oversized), "{err:?}");
    }

    #[test]
    fn a_closed_peer_is_reported() {
        let (a, b) = Channel::pair().unwrap();
        drop(a);
        assert!(matches!(b.recv::<Envelope<FrontendRequest>>(|_| 0), Err(ChannelError::Closed)));
    }
}
