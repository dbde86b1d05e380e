//! The helper's end of its broker channel. The guest outlives any broker:
//! when the channel closes, fails, or carries something this helper cannot
//! read (a broker of another protocol version), the link is dropped and
//! the guest runs on, until a broker connects to the control listener.
//! Every connection starts with the helper's greeting, `Hello` with its
//! protocol version: a broker reads nothing else from it first.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

use libvirtd::privsep::helper::{HELPER_PROTOCOL_VERSION, HelperCommand, HelperEvent};
use libvirtd::privsep::{Channel, ChannelError};
use vmm_sys_util::epoll::EventSet;

use crate::events::Ops;

/// The broker link, when there is one.
pub struct Link {
    channel: Option<Channel>,
    /// The control listener while it is not watched: its `accept` failed
    /// in a way that waiting again would not cure (out of fds, not a
    /// listening socket), so epoll would report it ready forever and the
    /// control loop would spin a core. It is watched again when the link
    /// drops, the moment a restarted broker needs it.
    unwatched: Option<RawFd>,
}

/// Sends the greeting every connection starts with.
pub fn greet(channel: &Channel) -> Result<(), ChannelError> {
    channel.send_wait(&HelperEvent::Hello { version: HELPER_PROTOCOL_VERSION }, &[])
}

impl Link {
    /// The link to the broker that started the helper (already greeted).
    pub fn new(channel: Channel) -> Link {
        Link { channel: Some(channel), unwatched: None }
    }

    /// The channel's fd, for the event loop.
    pub fn fd(&self) -> Option<RawFd> {
        self.channel.as_ref().map(Channel::raw_fd)
    }

    /// Drops the link (unregistering it first if `ops` is given).
    fn drop_link(&mut self, why: &dyn std::fmt::Display, ops: Option<&mut Ops<'_>>) {
        if let Some(c) = self.channel.take() {
            eprintln!("libvirt-helper: broker link dropped ({why}); the guest runs on");
            if let Some(ops) = ops {
                ops.remove(c.raw_fd());
                if let Some(fd) = self.unwatched.take()
                    && let Err(e) = ops.add(fd, EventSet::IN)
                {
                    eprintln!("libvirt-helper: cannot watch the control listener again: {e}");
                }
            }
        }
    }

    /// Sends `event` if a broker is there; a broker that does not take it
    /// is dropped.
    pub fn send(&mut self, event: &HelperEvent, ops: &mut Ops<'_>) {
        if let Some(Err(e)) = self.channel.as_ref().map(|c| c.send_wait(event, &[])) {
            self.drop_link(&e, Some(ops));
        }
    }

    /// The next command, if one has arrived whole. A broker that closed,
    /// failed or sent what does not decode is dropped.
    pub fn recv(&mut self, ops: &mut Ops<'_>) -> Option<(HelperCommand, Vec<OwnedFd>)> {
        match self.channel.as_ref()?.recv::<HelperCommand>(HelperCommand::fd_count) {
            Ok(m) => Some(m),
            Err(ChannelError::WouldBlock) => None,
            Err(ChannelError::Closed) => {
                // The daemon went away: guests outlive it.
                self.drop_link(&"the broker closed it", Some(ops));
                None
            }
            Err(e) => {
                self.drop_link(&e, Some(ops));
                None
            }
        }
    }

    /// Accepts a (re)started broker on `listener` and greets it; it
    /// replaces whatever link there was.
    pub fn accept(&mut self, listener: &OwnedFd, ops: &mut Ops<'_>) {
        let channel = match accept(listener) {
            Ok(Some(channel)) => channel,
            Ok(None) => return,
            Err(e) => {
                eprintln!("libvirt-helper: the control listener fails ({e}); not watched until the broker link drops");
                ops.remove(listener.as_raw_fd());
                self.unwatched = Some(listener.as_raw_fd());
                return;
            }
        };
        if let Err(e) = greet(&channel) {
            eprintln!("libvirt-helper: a connecting broker did not take the greeting: {e}");
            return;
        }
        self.drop_link(&"a new broker connected", Some(ops));
        if let Err(e) = ops.add(channel.raw_fd(), EventSet::IN) {
            eprintln!("libvirt-helper: cannot watch the new broker link: {e}");
            return;
        }
        self.channel = Some(channel);
    }

    /// Sends the last event of a guest that has stopped. With `listener`,
    /// waits as long as it takes for a broker to connect and take it, so
    /// that a restarted broker learns how the guest ended; without, only
    /// the broker there now hears it.
    pub fn last_word(mut self, listener: Option<&OwnedFd>, event: &HelperEvent) {
        loop {
            if let Some(c) = self.channel.take()
                && c.send_wait(event, &[]).is_ok()
            {
                return;
            }
            let Some(c) = listener.and_then(wait_for_broker) else { return };
            if greet(&c).is_ok() {
                self.channel = Some(c);
            }
        }
    }
}

/// Accepts one broker connection on the control listener: `None` when
/// there was none after all (or it went away before we took it), an error
/// when trying again at once would fail again.
fn accept(listener: &OwnedFd) -> Result<Option<Channel>, Errno> {
    use nix::sys::socket::{SockFlag, accept4};
    match accept4(listener.as_fd(), SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK) {
        Ok(fd) => Ok(Some(Channel::from_nonblocking_fd(fd))),
        Err(Errno::EAGAIN | Errno::EINTR | Errno::ECONNABORTED | Errno::EPROTO) => Ok(None),
        Err(e) => Err(e),
    }
}

/// How long the last word waits before it tries a failing listener again.
const RETRY_FAILING_LISTENER: std::time::Duration = std::time::Duration::from_millis(200);

/// Blocks until a broker connects; `None` if the listener fails.
fn wait_for_broker(listener: &OwnedFd) -> Option<Channel> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    loop {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => match accept(listener) {
                Ok(Some(c)) => return Some(c),
                Ok(None) => {}
                // Not a listener at all: no broker can ever connect.
                Err(Errno::EINVAL | Errno::ENOTSOCK | Errno::EBADF) => return None,
                // Out of fds or memory: the connection waits in the queue.
                Err(_) => std::thread::sleep(RETRY_FAILING_LISTENER),
            },
            Err(Errno::EINTR) => {}
            Err(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventLoop;

    /// What the control loop would be handed for `fd` right now.
    fn ready(lp: &mut EventLoop, fd: RawFd) -> bool {
        lp.wait(Some(0)).unwrap().iter().any(|r| r.fd == fd)
    }

    #[test]
    fn a_listener_that_fails_is_unwatched_until_the_broker_link_drops() {
        // One end of a pair whose peer is gone: epoll reports it hung up
        // forever and accept4 fails with EINVAL, as a broken listener would.
        let (listener, peer) = Channel::pair().unwrap();
        drop(peer);
        let listener = listener.fd().try_clone_to_owned().unwrap();
        let (broker, broker_peer) = Channel::pair().unwrap();
        let mut link = Link::new(broker);
        let mut lp = EventLoop::new().unwrap();
        lp.control().add(listener.as_raw_fd(), EventSet::IN).unwrap();
        assert!(ready(&mut lp, listener.as_raw_fd()));

        link.accept(&listener, &mut lp.control());
        for _ in 0..3 {
            assert!(
                !ready(&mut lp, listener.as_raw_fd()),
                "the failing listener is still watched: the loop would spin"
            );
        }
        assert!(link.fd().is_some(), "the broker link is kept");

        // The broker goes away: a restarted one must be able to connect.
        drop(broker_peer);
        assert!(link.recv(&mut lp.control()).is_none());
        assert!(link.fd().is_none());
        assert!(ready(&mut lp, listener.as_raw_fd()), "the listener is watched again once the link dropped");
    }

    #[test]
    fn the_last_word_gives_up_on_what_is_no_listener() {
        let (listener, peer) = Channel::pair().unwrap();
        drop(peer);
        let listener = listener.fd().try_clone_to_owned().unwrap();
        assert!(wait_for_broker(&listener).is_none());
    }
}
