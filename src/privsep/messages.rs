//! The closed set of messages on the frontend/broker channel.

use serde::{Deserialize, Serialize};

use super::calls::{Call, CallError, CallValue, DomainEvent};
use crate::logging::{LogConfig, SinkSpec};

/// Bumped whenever a message changes shape; frontend and broker are the same
/// binary, so a mismatch means a half-upgraded install.
pub const PROTOCOL_VERSION: u32 = 1;

/// The broker's number for one client connection, unique across all
/// frontends while the daemon runs (what `virt-admin` shows as its id).
pub type ConnId = u64;

/// Which listening socket a client came through. It decides what the client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ListenerKind {
    /// `libvirt-sock`: full access.
    ReadWrite,
    /// `libvirt-sock-ro`: monitoring only.
    ReadOnly,
    /// `libvirt-admin-sock`: the daemon's own administration.
    Admin,
    /// Plain TCP (`--listen`, `listen_tcp`).
    Tcp,
    /// TLS (`--listen`, `listen_tls`).
    Tls,
}

impl ListenerKind {
    /// The admin server a client of this socket belongs to: each server has
    /// its own client limit (`virt-admin srv-list`).
    pub fn server(self) -> &'static str {
        match self {
            ListenerKind::Admin => super::admin::ADMIN_SERVER,
            _ => super::admin::MAIN_SERVER,
        }
    }

    /// Short name used in audit records and logs.
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::ReadWrite => "rw",
            ListenerKind::ReadOnly => "ro",
            ListenerKind::Admin => "admin",
            ListenerKind::Tcp => "tcp",
            ListenerKind::Tls => "tls",
        }
    }
}

/// Who is on the other end of a client connection, as the kernel reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerIdentity {
    /// The socket the client connected through.
    pub socket: ListenerKind,
    /// SO_PEERCRED uid (Unix sockets).
    pub uid: Option<u32>,
    /// SO_PEERCRED gid.
    pub gid: Option<u32>,
    /// SO_PEERCRED pid.
    pub pid: Option<i32>,
    /// Remote address (TCP and TLS).
    pub addr: Option<String>,
    /// The distinguished name of a TLS client's certificate.
    pub dn: Option<String>,
}

/// Request and reply numbers pair up; 0 marks a message nobody asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Request number, echoed by the reply; 0 for unsolicited broker messages.
    pub id: u32,
    /// The message.
    pub body: T,
}

/// Everything the frontend may ask of the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrontendRequest {
    /// First message of a new frontend: asks for its configuration and sockets.
    Hello {
        /// The frontend's [`PROTOCOL_VERSION`].
        version: u32,
    },
    /// The frontend has confined itself and checked that the confinement holds.
    Ready,
    /// A client connected; its connection's fd comes with this message,
    /// once, so that the broker reads its credentials (`SO_PEERCRED`, the
    /// peer address) and the listener it came through for itself. The
    /// broker answers [`BrokerReply::Admitted`] with the client's number.
    ClientOpened,
    /// A client went away.
    ClientClosed {
        /// The frontend's number for it.
        conn: ConnId,
    },
    /// A client opened its connection read-only (`VIR_CONNECT_RO`) on a
    /// read-write socket; from now on it may only read.
    ReadOnly {
        /// The frontend's number for it.
        conn: ConnId,
    },
    /// The frontend refused a client's call (read-only access); the broker
    /// only audits it.
    Denied {
        /// The frontend's number for the client.
        conn: ConnId,
        /// The REMOTE procedure number refused.
        procedure: i32,
    },
    /// A client's console stream on domain `uuid` ended.
    ConsoleClosed {
        /// The frontend's number for the client.
        conn: ConnId,
        /// The domain.
        uuid: crate::domain::Uuid,
    },
    /// A TLS client finished its handshake with a certificate the CA
    /// signed (or none was required); the broker checks its DN again and
    /// admits it or not.
    Authenticated {
        /// The frontend's number for it.
        conn: ConnId,
        /// Its certificate's subject DN.
        dn: Option<String>,
    },
    /// A TLS client failed its handshake or its DN check; the broker audits it.
    AuthFailed {
        /// The frontend's number for it.
        conn: ConnId,
        /// Why.
        reason: String,
    },
    /// A client's hypervisor call.
    Call {
        /// The frontend's number for the client.
        conn: ConnId,
        /// The decoded call.
        call: Call,
    },
}

impl FrontendRequest {
    /// Short name for logs and audit records.
    pub fn name(&self) -> &'static str {
        match self {
            FrontendRequest::Hello { .. } => "hello",
            FrontendRequest::Ready => "ready",
            FrontendRequest::ClientOpened => "client-opened",
            FrontendRequest::ClientClosed { .. } => "client-closed",
            FrontendRequest::ReadOnly { .. } => "read-only",
            FrontendRequest::Call { .. } => "call",
            FrontendRequest::Denied { .. } => "denied",
            FrontendRequest::ConsoleClosed { .. } => "console-closed",
            FrontendRequest::Authenticated { .. } => "authenticated",
            FrontendRequest::AuthFailed { .. } => "auth-failed",
        }
    }
}

/// The kind of the TLS server key, for rustls's certificate selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyKind {
    /// RSA.
    Rsa,
    /// ECDSA.
    Ecdsa,
    /// Ed25519.
    Ed25519,
}

/// What the frontend needs to run TLS: public material only. The private
/// key stays in the broker, which signs handshakes on request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsMaterial {
    /// The server certificate chain, DER, leaf first.
    pub cert_chain: Vec<Vec<u8>>,
    /// CA certificates that sign client certificates, DER.
    pub ca: Vec<Vec<u8>>,
    /// Certificate revocation lists, DER.
    pub crls: Vec<Vec<u8>>,
    /// Clients must present a certificate the CA signed (not
    /// `tls_no_verify_certificate`).
    pub verify_clients: bool,
    /// `tls_allowed_dn_list` (empty: every verified client).
    pub allowed_dns: Vec<String>,
    /// The key's kind.
    pub key_kind: KeyKind,
    /// The TLS signature schemes (`SignatureScheme` values) the key can sign with.
    pub schemes: Vec<u16>,
}

/// A handshake signature the frontend asks of the broker, on the sign channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignRequest {
    /// Matches the reply to the request.
    pub id: u32,
    /// The `SignatureScheme`.
    pub scheme: u16,
    /// What to sign (a TLS 1.3 server CertificateVerify content).
    pub message: Vec<u8>,
}

/// The broker's answer to a [`SignRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignReply {
    /// The request's id.
    pub id: u32,
    /// The signature, or why there is none.
    pub signature: Result<Vec<u8>, String>,
}

/// Values the frontend needs from the configuration. It never sees the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontendConfig {
    /// Uid to run as; `None` in session mode (no uid change).
    pub uid: Option<u32>,
    /// Gid to run as.
    pub gid: Option<u32>,
    /// Most clients at once on the main sockets.
    pub max_clients: u32,
    /// Most clients at once on the admin socket.
    pub admin_max_clients: u32,
    /// Most unauthenticated clients at once.
    pub max_anonymous_clients: u32,
    /// Most calls in progress per client.
    pub max_client_requests: u32,
    /// Keepalive ping interval in seconds; -1 disables.
    pub keepalive_interval: i32,
    /// Unanswered pings before a client is dropped.
    pub keepalive_count: u32,
    /// The URI this daemon answers to (`qemu:///system` or `qemu:///session`).
    pub uri: String,
    /// Log settings; the sinks' fds follow the listeners' fds.
    pub log: LogConfig,
    /// One entry per log fd, in order.
    pub log_sinks: Vec<SinkSpec>,
    /// TLS, when a TLS socket listens.
    pub tls: Option<TlsMaterial>,
}

impl FrontendConfig {
    /// How many fds accompany a message carrying this configuration.
    pub fn fd_count(&self) -> usize {
        self.log_sinks.iter().filter(|s| !matches!(s, SinkSpec::Stderr { .. })).count()
    }
}

/// Why the broker refused a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum BrokerError {
    /// The request is not allowed in this state or for this identity.
    #[error("operation forbidden: {0}")]
    Forbidden(String),
    /// The daemon is at a configured limit.
    #[error("limit reached: {0}")]
    Limit(String),
    /// The request was malformed.
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// Everything the broker sends the frontend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BrokerReply {
    /// Answer to `Hello`: the configuration, then one fd per listener, then the log fds.
    Welcome {
        /// The broker's pid: the frontend dies with it, and checks it is still its parent.
        broker_pid: i32,
        /// Configuration values.
        config: FrontendConfig,
        /// The listening sockets, one fd each, in this order.
        listeners: Vec<ListenerKind>,
        /// The sign channel's fd follows the log fds (when TLS listens).
        sign_channel: bool,
    },
    /// The request was carried out.
    Ok,
    /// Answer to `ClientOpened`: the client may speak, under this number.
    Admitted(ConnId),
    /// The request was refused.
    Refused(BrokerError),
    /// The outcome of a [`FrontendRequest::Call`].
    Value(Result<CallValue, CallError>),
    /// Unsolicited: the configuration was reloaded (SIGHUP); log fds follow.
    Reconfigure(FrontendConfig),
    /// Unsolicited: a domain lifecycle event for registered clients.
    Event(DomainEvent),
    /// Unsolicited: a storage pool event for registered clients.
    PoolEvent(super::storage::PoolEvent),
    /// A network lifecycle event, for clients that registered for it.
    NetEvent(super::network::NetEvent),
    /// Unsolicited: another client took the console of `uuid` (FORCE); end
    /// the streams on it.
    ConsoleTaken(crate::domain::Uuid),
    /// Unsolicited: close this client's connection (`virt-admin client-disconnect`).
    Disconnect(ConnId),
    /// Unsolicited: the domain table changed; read-only calls are answered
    /// from this copy from now on (`privsep::replica`).
    Replica(super::replica::DomainTable),
    /// Unsolicited: statistics snapshots changed (`privsep::snapshot`);
    /// read-only statistics calls are answered from them while they are young.
    Stats(super::snapshot::Update),
}

impl BrokerReply {
    /// How many fds must accompany this message.
    pub fn fd_count(&self) -> usize {
        match self {
            BrokerReply::Welcome { config, listeners, sign_channel, .. } => {
                listeners.len() + config.fd_count() + usize::from(*sign_channel)
            }
            BrokerReply::Reconfigure(config) => config.fd_count(),
            BrokerReply::Value(Ok(v)) if v.carries_fd() => 1,
            BrokerReply::Ok
            | BrokerReply::Admitted(_)
            | BrokerReply::Refused(_)
            | BrokerReply::Value(_)
            | BrokerReply::Event(_)
            | BrokerReply::PoolEvent(_)
            | BrokerReply::NetEvent(_)
            | BrokerReply::ConsoleTaken(_)
            | BrokerReply::Disconnect(_)
            | BrokerReply::Replica(_)
            | BrokerReply::Stats(_) => 0,
        }
    }
}

impl FrontendRequest {
    /// How many fds must accompany this message: a new client's connection.
    pub fn fd_count(&self) -> usize {
        match self {
            FrontendRequest::ClientOpened => 1,
            _ => 0,
        }
    }
}
