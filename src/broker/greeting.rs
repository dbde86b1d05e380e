//! What a reconnected helper's first words say of the protocol it speaks
//! (see `privsep::helper`): the greeting a broker must read before it
//! parses anything else a helper sends, and the one question every build
//! answers alike, for the builds from before the greeting.

use crate::privsep::helper::{HelperCommand, HelperEvent, ProtocolMismatch, StopReason, check_version};
use crate::privsep::{Channel, ChannelError};

/// What a helper's first words said.
#[derive(Debug, PartialEq, Eq)]
pub enum Greeting {
    /// It speaks this build's protocol.
    Spoken,
    /// It speaks another, or none this build can tell.
    Mismatch(ProtocolMismatch),
    /// A build from before the greeting whose guest stopped, for this reason.
    Stopped(StopReason),
    /// It closed or failed.
    Gone,
}

/// Reads a reconnected helper's greeting, waiting `grace_ms` for it. A
/// helper that says nothing in time is asked for `Stats`, the one command
/// every version reads alike: a build from before the greeting answers it
/// without greeting; a slow one greets first.
pub fn read(channel: &Channel, grace_ms: u16) -> Greeting {
    let first = match channel.recv_blocking::<HelperEvent>(grace_ms, HelperEvent::fd_count) {
        Err(ChannelError::Stuck(_)) => {
            if channel.send(&HelperCommand::Stats, &[]).is_err() {
                return Greeting::Gone;
            }
            match channel.recv_blocking::<HelperEvent>(grace_ms, HelperEvent::fd_count) {
                Err(ChannelError::Stuck(_)) => {
                    return Greeting::Mismatch(ProtocolMismatch::Silent(2 * u64::from(grace_ms)));
                }
                Ok((HelperEvent::Stats(_), _)) => return Greeting::Mismatch(ProtocolMismatch::Unversioned),
                other => other,
            }
        }
        other => other,
    };
    match first {
        Ok((HelperEvent::Hello { version }, _)) => match check_version(version) {
            Ok(()) => Greeting::Spoken,
            Err(why) => Greeting::Mismatch(why),
        },
        // Only a build from before the greeting speaks before it; its
        // `Stopped` reads alike in every version, and it ends after sending it.
        Ok((HelperEvent::Stopped { reason, .. }, _)) => Greeting::Stopped(reason),
        Ok(_) | Err(ChannelError::Decode(_) | ChannelError::FdCount { .. } | ChannelError::Oversized) => {
            Greeting::Mismatch(ProtocolMismatch::Garbled)
        }
        Err(_) => Greeting::Gone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privsep::helper::{GuestStats, HELPER_PROTOCOL_VERSION};

    const GRACE: u16 = 100;

    fn said(event: HelperEvent) -> Greeting {
        let (broker, helper) = Channel::pair().unwrap();
        helper.send(&event, &[]).unwrap();
        read(&broker, GRACE)
    }

    #[test]
    fn a_greeting_in_this_version_is_spoken_to_and_any_other_is_not() {
        assert_eq!(said(HelperEvent::Hello { version: HELPER_PROTOCOL_VERSION }), Greeting::Spoken);
        let newer = said(HelperEvent::Hello { version: HELPER_PROTOCOL_VERSION + 1 });
        assert_eq!(newer, Greeting::Mismatch(ProtocolMismatch::Version(HELPER_PROTOCOL_VERSION + 1)));
    }

    #[test]
    fn a_build_before_the_greeting_is_told_by_its_answer_to_stats() {
        let (broker, helper) = Channel::pair().unwrap();
        let old = std::thread::spawn(move || {
            let (asked, _) = helper.recv_blocking::<HelperCommand>(5000, HelperCommand::fd_count).unwrap();
            assert_eq!(asked, HelperCommand::Stats);
            let stats = GuestStats { paused: false, vcpu_time_ns: vec![], memory_mib: 1, rss_kib: 1 };
            helper.send(&HelperEvent::Stats(stats), &[]).unwrap();
            helper
        });
        assert_eq!(read(&broker, GRACE), Greeting::Mismatch(ProtocolMismatch::Unversioned));
        drop(old.join().unwrap());
    }

    #[test]
    fn silence_garbage_and_an_early_stop_are_each_told_apart() {
        let (broker, _helper) = Channel::pair().unwrap();
        assert_eq!(read(&broker, GRACE), Greeting::Mismatch(ProtocolMismatch::Silent(2 * u64::from(GRACE))));
        let (broker, helper) = Channel::pair().unwrap();
        helper.send(&vec![0xffu8; 9], &[]).unwrap();
        assert_eq!(read(&broker, GRACE), Greeting::Mismatch(ProtocolMismatch::Garbled));
        let stopped = HelperEvent::Stopped { reason: StopReason::PowerOff, detail: String::new() };
        assert_eq!(said(stopped), Greeting::Stopped(StopReason::PowerOff));
        let (broker, helper) = Channel::pair().unwrap();
        drop(helper);
        assert_eq!(read(&broker, GRACE), Greeting::Gone);
    }
}
