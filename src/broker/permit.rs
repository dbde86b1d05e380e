//! Which frontend request is permitted when: the broker's one permit table.
//!
//! In the spirit of OpenSSH's monitor: the frontend is untrusted, so every
//! request is checked against the link's phase (and, as procedures arrive,
//! the connection's access class) *before* any handler runs. The match is
//! exhaustive, so a new request kind does not compile until someone decides
//! here when it is allowed. A violation is fatal for that frontend.

use crate::privsep::FrontendRequest;

/// Where a frontend is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Just started: may only say hello (once).
    AwaitHello,
    /// Has its configuration: may only report that it is confined (once).
    AwaitReady,
    /// Confined and checked: serves clients.
    Serving,
}

/// Whether `req` is permitted in `phase`.
pub fn permitted(phase: Phase, req: &FrontendRequest) -> bool {
    match req {
        FrontendRequest::Hello { .. } => phase == Phase::AwaitHello,
        FrontendRequest::Ready => phase == Phase::AwaitReady,
        FrontendRequest::ClientOpened => phase == Phase::Serving,
        FrontendRequest::ClientClosed { .. } => phase == Phase::Serving,
        FrontendRequest::ReadOnly { .. } => phase == Phase::Serving,
        FrontendRequest::Call { .. } => phase == Phase::Serving,
        FrontendRequest::Denied { .. } => phase == Phase::Serving,
        FrontendRequest::ConsoleClosed { .. } => phase == Phase::Serving,
        FrontendRequest::Authenticated { .. } => phase == Phase::Serving,
        FrontendRequest::AuthFailed { .. } => phase == Phase::Serving,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHASES: [Phase; 3] = [Phase::AwaitHello, Phase::AwaitReady, Phase::Serving];

    #[test]
    fn hello_and_ready_are_each_allowed_in_one_phase_only() {
        let hello = FrontendRequest::Hello { version: 1 };
        let allowed: Vec<_> = PHASES.iter().filter(|p| permitted(**p, &hello)).collect();
        assert_eq!(allowed, [&Phase::AwaitHello]);
        let allowed: Vec<_> = PHASES.iter().filter(|p| permitted(**p, &FrontendRequest::Ready)).collect();
        assert_eq!(allowed, [&Phase::AwaitReady]);
    }

    #[test]
    fn clients_are_refused_before_the_frontend_is_confined() {
        let req = FrontendRequest::ClientClosed { conn: 1 };
        assert!(!permitted(Phase::AwaitHello, &req));
        assert!(!permitted(Phase::AwaitReady, &req));
        assert!(permitted(Phase::Serving, &req));
    }
}
