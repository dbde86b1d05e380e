//! The daemon-administration calls (`virt-admin`) the frontend forwards from
//! admin-socket clients, and their results. The broker owns everything they
//! touch (the client table, limits, logging, TLS files) and re-checks that
//! each one came from an admin-socket client.

use serde::{Deserialize, Serialize};

/// The servers a libvirtd exposes: the main RPC server and the admin server.
pub const SERVERS: [&str; 2] = [MAIN_SERVER, ADMIN_SERVER];
/// The main RPC server's name (unix, tcp and tls clients).
pub const MAIN_SERVER: &str = "libvirtd";
/// The admin server's name (admin-socket clients).
pub const ADMIN_SERVER: &str = "admin";

/// A typed parameter's value (no doubles: no admin parameter is one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParamValue {
    /// `VIR_TYPED_PARAM_INT`.
    Int(i32),
    /// `VIR_TYPED_PARAM_UINT`.
    UInt(u32),
    /// `VIR_TYPED_PARAM_LLONG`.
    LLong(i64),
    /// `VIR_TYPED_PARAM_ULLONG`.
    ULLong(u64),
    /// `VIR_TYPED_PARAM_BOOLEAN`.
    Bool(bool),
    /// `VIR_TYPED_PARAM_STRING`.
    Text(String),
}

impl std::fmt::Display for ParamValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamValue::Int(v) => v.fmt(f),
            ParamValue::UInt(v) => v.fmt(f),
            ParamValue::LLong(v) => v.fmt(f),
            ParamValue::ULLong(v) => v.fmt(f),
            ParamValue::Bool(v) => v.fmt(f),
            ParamValue::Text(v) => v.fmt(f),
        }
    }
}

/// A named, typed parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Param {
    /// Its name.
    pub field: String,
    /// Its value.
    pub value: ParamValue,
}

/// A connected client as `srv-clients-list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSummary {
    /// The server it is connected to.
    pub server: String,
    /// Its id (the frontend's connection number).
    pub id: u64,
    /// When it connected, seconds since the epoch.
    pub since: i64,
    /// 0 unix, 1 tcp, 2 tls.
    pub transport: u32,
}

/// One administration request. `server` is a server's name as the client
/// gave it; the broker checks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminCall {
    /// `virAdmServerGetThreadPoolParameters`.
    Threadpool {
        /// Server.
        server: String,
    },
    /// `virAdmServerSetThreadPoolParameters`.
    SetThreadpool {
        /// Server.
        server: String,
        /// New values.
        params: Vec<Param>,
    },
    /// `virAdmServerListClients`.
    ListClients {
        /// Server.
        server: String,
        /// Whether to return the list or only count it.
        need_results: bool,
    },
    /// `virAdmServerLookupClient`.
    LookupClient {
        /// Server.
        server: String,
        /// Client id.
        id: u64,
    },
    /// `virAdmClientGetInfo`.
    ClientInfo {
        /// Server.
        server: String,
        /// Client id.
        id: u64,
    },
    /// `virAdmClientClose`.
    CloseClient {
        /// Server.
        server: String,
        /// Client id.
        id: u64,
    },
    /// `virAdmServerGetClientLimits`.
    ClientLimits {
        /// Server.
        server: String,
    },
    /// `virAdmServerSetClientLimits`.
    SetClientLimits {
        /// Server.
        server: String,
        /// New values.
        params: Vec<Param>,
    },
    /// `virAdmConnectGetLoggingOutputs`.
    LogOutputs,
    /// `virAdmConnectGetLoggingFilters`.
    LogFilters,
    /// `virAdmConnectSetLoggingOutputs`; `None` or empty: the default.
    SetLogOutputs(Option<String>),
    /// `virAdmConnectSetLoggingFilters`; `None` or empty: none.
    SetLogFilters(Option<String>),
    /// `virAdmServerUpdateTlsFiles`.
    UpdateTls {
        /// Server.
        server: String,
    },
    /// `virAdmConnectSetDaemonTimeout`; 0 disables.
    SetTimeout(u32),
}

impl AdminCall {
    /// Short name for audit records.
    pub fn op(&self) -> &'static str {
        match self {
            AdminCall::Threadpool { .. } => "admin-threadpool-info",
            AdminCall::SetThreadpool { .. } => "admin-threadpool-set",
            AdminCall::ListClients { .. } => "admin-clients-list",
            AdminCall::LookupClient { .. } => "admin-client-lookup",
            AdminCall::ClientInfo { .. } => "admin-client-info",
            AdminCall::CloseClient { .. } => "admin-client-disconnect",
            AdminCall::ClientLimits { .. } => "admin-clients-info",
            AdminCall::SetClientLimits { .. } => "admin-clients-set",
            AdminCall::LogOutputs => "admin-log-outputs",
            AdminCall::LogFilters => "admin-log-filters",
            AdminCall::SetLogOutputs(_) => "admin-set-log-outputs",
            AdminCall::SetLogFilters(_) => "admin-set-log-filters",
            AdminCall::UpdateTls { .. } => "admin-update-tls",
            AdminCall::SetTimeout(_) => "admin-set-timeout",
        }
    }
}

/// An administration call's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminValue {
    /// Done, nothing to return.
    Unit,
    /// Clients of a server (the list empty if not asked for).
    Clients {
        /// The clients.
        list: Vec<ClientSummary>,
        /// How many there are.
        count: u32,
    },
    /// One client.
    Client(ClientSummary),
    /// Typed parameters.
    Params(Vec<Param>),
    /// Log outputs or filters: the definitions and how many.
    Logging {
        /// Space-separated definitions.
        value: String,
        /// How many.
        count: u32,
    },
}
