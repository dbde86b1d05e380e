//! The helper's end of its broker channel. The guest outlives any broker:
//! when the channel closes, fails, or carries something this helper cannot
//! read (a broker of another protocol version), the link is dropped and
//! the guest runs on, until a broker connects to the control listener.
//! Every connection starts with the helper's greeting, `Hello` with its
//! protocol version: a broker reads nothing else from it first.

use std::os::fd::{AsFd, OwnedFd, RawFd};

use libvirtd::privsep::helper::{HELPER_PROTOCOL_VERSION, HelperCommand, HelperEvent};
use libvirtd::privsep::{Channel, ChannelError};
use vmm_sys_util::epoll::EventSet;

use crate::events::Ops;

/// The broker link, when there is one.
pub struct Link {
    channel: Option<Channel>,
}

/// Sends the greeting every connection starts with.
pub fn greet(channel: &Channel) -> Result<(), ChannelError> {
    channel.send_wait(&HelperEvent::Hello { version: HELPER_PROTOCOL_VERSION }, &[])
}

impl Link {
    /// The link to the broker that started the helper (already greeted).
    pub fn new(channel: Channel) -> Link {
        Link { channel: Some(channel) }
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
        let Some(channel) = accept(listener) else { return };
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

/// Accepts one broker connection on the control listener.
fn accept(listener: &OwnedFd) -> Option<Channel> {
    use nix::sys::socket::{SockFlag, accept4};
    let fd = accept4(listener.as_fd(), SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK).ok()?;
    Some(Channel::from_nonblocking_fd(fd))
}

/// Blocks until a broker connects; `None` if the listener fails.
fn wait_for_broker(listener: &OwnedFd) -> Option<Channel> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    loop {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {
                if let Some(c) = accept(listener) {
                    return Some(c);
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return None,
        }
    }
}
