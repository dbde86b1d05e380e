//! What the tests that drive a helper directly (no daemon) share: the
//! control listener it is started with, reading its next event, and
//! reading the guest's console up to a needle.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use libvirtd::privsep::Channel;
use libvirtd::privsep::helper::HelperEvent;

/// A listening socket at `path` (a stale one is replaced), as the broker
/// gives each helper for a restarted broker to reconnect on. It must
/// really listen: the helper watches it, and stops watching one whose
/// `accept` keeps failing.
pub fn control_listener(path: &Path) -> OwnedFd {
    use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket};
    let _ = std::fs::remove_file(path);
    let fd = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).unwrap();
    bind(fd.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
    listen(&fd, Backlog::new(4).unwrap()).unwrap();
    fd
}

/// The helper's next event, waiting at most `timeout`.
pub fn event(channel: &Channel, timeout: Duration) -> HelperEvent {
    let (e, _) = channel
        .recv_blocking::<HelperEvent>(timeout.as_millis() as u16, HelperEvent::fd_count)
        .expect("no event from the helper");
    e
}

/// Reads `console` into `output` until `needle` appears; returns what came
/// up to and including it and keeps the rest in `output` for the next call.
pub fn expect(console: &mut UnixStream, output: &mut String, needle: &str, timeout: Duration) -> String {
    let end = Instant::now() + timeout;
    console.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(i) = output.find(needle) {
            let upto = output[..i + needle.len()].to_owned();
            output.drain(..i + needle.len());
            return upto;
        }
        assert!(Instant::now() < end, "no {needle:?} on the console; got {output:?}");
        if let Ok(n) = console.read(&mut buf) {
            output.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
}
