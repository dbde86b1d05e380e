//! The unprivileged process that talks to clients; holds no privilege and opens no file.
//!
//! Life of a frontend: exec'd by the broker with the channel on fd 3; says
//! `Hello`; receives its configuration, the listening sockets and the log fds;
//! builds its poller; confines itself ([`crate::sandbox::confine`]) and checks
//! the confinement ([`crate::sandbox::verify`]); reports `Ready`; only then
//! reads a byte from any client. If anything in that list fails, it exits
//! without serving.

mod admin;
mod conn;
pub mod dispatch;
mod handshakes;
mod network;
mod packets;
mod replica;
mod server;
mod session;
mod storage;
mod streams;
mod uri;

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;

use crate::logging::{self, LogState};
use crate::privsep::{BrokerReply, Channel, Envelope, FrontendRequest, PROTOCOL_VERSION};
use crate::sandbox::{self, Profile};

/// The hidden first argument that makes the binary a frontend.
pub const FRONTEND_ARG: &str = "--frontend-process";
/// Where the broker puts the channel in the frontend's fd table.
pub const CHANNEL_FD: i32 = 3;
/// How long the frontend waits for the broker's answer to `Hello`, in ms.
const WELCOME_TIMEOUT_MS: u16 = 10_000;

/// Why a frontend could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// The channel to the broker failed.
    #[error("broker channel: {0}")]
    Channel(#[from] crate::privsep::ChannelError),
    /// The broker answered something other than `Welcome`.
    #[error("unexpected first message from the broker")]
    Handshake,
    /// The log fds did not match their description.
    #[error("log outputs: {0}")]
    Log(String),
    /// Confinement failed or does not hold.
    #[error(transparent)]
    Sandbox(#[from] sandbox::SandboxError),
    /// Building the poller or registering sockets failed.
    #[error("event loop set-up: {0}")]
    Setup(std::io::Error),
}

/// Entry point of the frontend process.
pub fn main() -> ExitCode {
    logging::install_bootstrap();
    match start() {
        Ok(mut server) => server.run(),
        Err(e) => {
            log::error!("frontend cannot serve: {e}");
            ExitCode::FAILURE
        }
    }
}

fn start() -> Result<server::Server, FrontendError> {
    // SAFETY: the broker's spawn placed our end of the channel on fd 3 and
    // nothing else in this freshly exec'd process has claimed it.
    let fd = unsafe { OwnedFd::from_raw_fd(CHANNEL_FD) };
    let channel = Channel::from_fd(fd).map_err(|e| FrontendError::Channel(e.into()))?;
    channel.send_wait(&Envelope { id: 1, body: FrontendRequest::Hello { version: PROTOCOL_VERSION } }, &[])?;
    let (welcome, mut fds) =
        channel.recv_blocking::<Envelope<BrokerReply>>(WELCOME_TIMEOUT_MS, |e| e.body.fd_count())?;
    let BrokerReply::Welcome { broker_pid, config, listeners, sign_channel } = welcome.body else {
        return Err(FrontendError::Handshake);
    };
    // The fds: listeners, log outputs, then the sign channel.
    let sign = match sign_channel {
        true => Some(
            Channel::from_fd(fds.pop().ok_or(FrontendError::Handshake)?)
                .map_err(|e| FrontendError::Channel(e.into()))?,
        ),
        false => None,
    };
    let log_fds = fds.split_off(listeners.len());
    let state =
        LogState::from_handoff(config.log.clone(), config.log_sinks.clone(), log_fds).map_err(FrontendError::Log)?;
    logging::install(state);

    let ids = config.uid.zip(config.gid);
    let profile = Profile::frontend(ids, Some(nix::unistd::Pid::from_raw(broker_pid)));
    // Everything that needs a syscall outside the seccomp policy happens before confine.
    let mut server = server::Server::new(channel, listeners.into_iter().zip(fds).collect(), config, sign)
        .map_err(FrontendError::Setup)?;
    // Everything but the event loop's filter, then the TLS handshake thread
    // (it inherits the rest and puts its own filter on first), then the
    // event loop's filter, which allows no new thread.
    sandbox::confine(&Profile { seccomp: None, ..profile.clone() })?;
    server.start_handshakes()?;
    if let Some(thread) = profile.seccomp {
        sandbox::seccomp::apply(thread)?;
    }
    sandbox::verify(&profile)?;
    server.send_ready()?;
    log::debug!("frontend confined (uid {:?}) and serving", ids.map(|(u, _)| u));
    Ok(server)
}
