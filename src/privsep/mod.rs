//! The messages between frontend and broker, and the channel that carries them.
//!
//! One `SOCK_SEQPACKET` socketpair joins the two processes: each record is one
//! postcard-encoded [`Envelope`], with any fds beside it (SCM_RIGHTS). The
//! message says how many fds it carries, and the receiver checks that it got
//! exactly that many. Both ends import these types; nothing else crosses.

pub mod admin;
mod calls;
mod channel;
pub mod domstats;
pub mod helper;
mod messages;
pub mod network;
mod procedure;
pub mod replica;
pub mod snapshot;
pub mod storage;

pub use calls::{
    Call, CallError, CallValue, CpuTarget, DomainEvent, DomainRef, EventKind, IfaceAddrs, Query, TuneKind, VcpuInfo,
};
pub use channel::{Channel, ChannelError, MAX_FDS, MAX_MESSAGE};
pub use messages::{
    BrokerError, BrokerReply, ConnId, Envelope, FrontendConfig, FrontendRequest, KeyKind, ListenerKind,
    PROTOCOL_VERSION, PeerIdentity, SignReply, SignRequest, TlsMaterial,
};
