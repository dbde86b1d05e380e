//! Which frontend request is permitted, from whom, when: the broker's one
//! permit function.
//!
//! In the spirit of OpenSSH's monitor: a frontend is untrusted, so every
//! request is checked here *before* any handler runs, against three facts
//! the broker holds itself: the frontend's phase, its trust class (which
//! listener its clients came through), and the client the request names
//! (which must be one of that frontend's own, admitted and, for TLS,
//! authenticated). The matches are exhaustive, so a new request kind does
//! not compile until someone decides here when it is allowed. A violation
//! is fatal for that frontend; handlers then re-check content (names,
//! sizes, state, the read-only rule per call), as `mm_answer_sign()` does.

use crate::privsep::{Call, ConnId, FrontendRequest, ListenerKind};

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

/// What the broker knows of the client a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Named {
    /// The client has proved who it is (a TLS client: its certificate).
    pub authenticated: bool,
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

/// The client a request names, if it names one.
pub fn names(req: &FrontendRequest) -> Option<ConnId> {
    match req {
        FrontendRequest::Hello { .. } | FrontendRequest::Ready | FrontendRequest::ClientOpened => None,
        FrontendRequest::ClientClosed { conn }
        | FrontendRequest::ReadOnly { conn }
        | FrontendRequest::Call { conn, .. }
        | FrontendRequest::Denied { conn, .. }
        | FrontendRequest::ConsoleClosed { conn, .. }
        | FrontendRequest::Authenticated { conn, .. }
        | FrontendRequest::AuthFailed { conn, .. } => Some(*conn),
    }
}

/// The one check: `Ok` when a frontend of `class` in `phase` may send
/// `req`, where `named` is what the broker knows of the client the request
/// names among that frontend's own clients (`None`: not one of them).
/// `Err` says why not.
pub fn permit(phase: Phase, class: ListenerKind, req: &FrontendRequest, named: Option<Named>) -> Result<(), String> {
    if !permitted(phase, req) {
        return Err(format!("'{}' is not permitted while {phase:?}", req.name()));
    }
    let Some(conn) = names(req) else { return Ok(()) };
    let Some(client) = named else {
        return Err(format!("connection {conn} is not open"));
    };
    match req {
        FrontendRequest::Call { call, .. } => {
            if !client.authenticated {
                return Err(format!("call on connection {conn}, which has not authenticated"));
            }
            match (class == ListenerKind::Admin, matches!(call, Call::Admin(_))) {
                (false, true) => Err(format!("admin call from connection {conn}, not an admin client")),
                (true, false) => Err(format!("hypervisor call from admin connection {conn}")),
                _ => Ok(()),
            }
        }
        FrontendRequest::Authenticated { .. } if class != ListenerKind::Tls || client.authenticated => {
            Err(format!("connection {conn} cannot authenticate now"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privsep::admin::AdminCall;

    const PHASES: [Phase; 3] = [Phase::AwaitHello, Phase::AwaitReady, Phase::Serving];
    const IN: Option<Named> = Some(Named { authenticated: true });

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

    #[test]
    fn a_request_naming_another_frontends_client_is_a_violation() {
        let req = FrontendRequest::Call { conn: 7, call: Call::GetHostname };
        assert!(permit(Phase::Serving, ListenerKind::ReadOnly, &req, None).is_err());
        assert!(permit(Phase::Serving, ListenerKind::ReadOnly, &req, IN).is_ok());
        assert!(permit(Phase::Serving, ListenerKind::ReadOnly, &FrontendRequest::ClientOpened, None).is_ok());
    }

    #[test]
    fn admin_calls_come_only_from_the_admin_class_and_hypervisor_calls_never_do() {
        let admin = FrontendRequest::Call { conn: 1, call: Call::Admin(AdminCall::LogOutputs) };
        let hyper = FrontendRequest::Call { conn: 1, call: Call::GetHostname };
        for class in [ListenerKind::ReadWrite, ListenerKind::ReadOnly, ListenerKind::Tcp, ListenerKind::Tls] {
            assert!(permit(Phase::Serving, class, &admin, IN).is_err(), "{class:?}");
            assert!(permit(Phase::Serving, class, &hyper, IN).is_ok(), "{class:?}");
        }
        assert!(permit(Phase::Serving, ListenerKind::Admin, &admin, IN).is_ok());
        assert!(permit(Phase::Serving, ListenerKind::Admin, &hyper, IN).is_err());
    }

    #[test]
    fn calls_wait_for_authentication_which_only_tls_clients_do_once() {
        let call = FrontendRequest::Call { conn: 2, call: Call::GetHostname };
        let pending = Some(Named { authenticated: false });
        assert!(permit(Phase::Serving, ListenerKind::Tls, &call, pending).is_err());
        let auth = FrontendRequest::Authenticated { conn: 2, dn: None };
        assert!(permit(Phase::Serving, ListenerKind::Tls, &auth, pending).is_ok());
        assert!(permit(Phase::Serving, ListenerKind::Tls, &auth, IN).is_err(), "authenticated twice");
        assert!(permit(Phase::Serving, ListenerKind::ReadWrite, &auth, pending).is_err());
    }
}
