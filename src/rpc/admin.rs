//! The ADMIN program (`virt-admin`): procedure numbers and the argument and
//! return structs, as `admin_protocol.x` lays them out.

use serde::{Deserialize, Serialize};

include!(concat!(env!("OUT_DIR"), "/admin_procedures.rs"));

/// `ADMIN_SERVER_LIST_MAX`.
pub const SERVER_LIST_MAX: usize = 16_384;
/// `ADMIN_CLIENT_LIST_MAX`.
pub const CLIENT_LIST_MAX: usize = 16_384;
/// `ADMIN_SERVER_CLIENT_LIMITS_MAX` and `ADMIN_SERVER_THREADPOOL_PARAMETERS_MAX`.
pub const SERVER_PARAMS_MAX: usize = 32;

/// `admin_nonnull_server`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    /// Its name ("libvirtd" or "admin").
    pub name: String,
}

/// `admin_nonnull_client`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Client {
    /// The server it is connected to.
    pub srv: Server,
    /// Its id, unique while the daemon runs.
    pub id: u64,
    /// When it connected, in seconds since the epoch.
    pub timestamp: i64,
    /// 0 unix, 1 tcp, 2 tls.
    pub transport: u32,
}

/// `admin_typed_param_value`: a discriminated union whose arms are numbered
/// from 1, so arm 0 exists only to keep serde's variant index equal to the
/// wire discriminant (decoding it is an error further up).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum ParamValue {
    Invalid,
    Int(i32),
    UInt(u32),
    LLong(i64),
    ULLong(u64),
    Double(f64),
    Boolean(i32),
    String(String),
}

/// `admin_typed_param`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TypedParam {
    /// Field name.
    pub field: String,
    /// Value.
    pub value: ParamValue,
}

/// Arguments that are only flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlagsArgs {
    /// Flags.
    pub flags: u32,
}

/// `admin_connect_list_servers_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListServersArgs {
    /// Whether to return the list or only its length.
    pub need_results: u32,
    /// Flags.
    pub flags: u32,
}

/// `admin_connect_list_servers_ret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListServersRet {
    /// The servers.
    pub servers: Vec<Server>,
    /// How many there are.
    pub ret: u32,
}

/// `admin_connect_lookup_server_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupServerArgs {
    /// Its name.
    pub name: String,
    /// Flags.
    pub flags: u32,
}

/// Arguments naming a server: threadpool and client-limit getters, TLS update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerArgs {
    /// The server.
    pub srv: Server,
    /// Flags.
    pub flags: u32,
}

/// Setters of a server's typed parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerSetArgs {
    /// The server.
    pub srv: Server,
    /// New values.
    pub params: Vec<TypedParam>,
    /// Flags.
    pub flags: u32,
}

/// Returns that are a list of typed parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamsRet {
    /// The parameters.
    pub params: Vec<TypedParam>,
}

/// `admin_server_list_clients_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListClientsArgs {
    /// The server.
    pub srv: Server,
    /// Whether to return the list or only its length.
    pub need_results: u32,
    /// Flags.
    pub flags: u32,
}

/// `admin_server_list_clients_ret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListClientsRet {
    /// The clients.
    pub clients: Vec<Client>,
    /// How many there are.
    pub ret: u32,
}

/// `admin_server_lookup_client_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupClientArgs {
    /// The server.
    pub srv: Server,
    /// The client's id.
    pub id: u64,
    /// Flags.
    pub flags: u32,
}

/// Arguments naming a client: `client-info`, `client-disconnect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientArgs {
    /// The client.
    pub clnt: Client,
    /// Flags.
    pub flags: u32,
}

/// `admin_connect_get_logging_outputs_ret` and `..._filters_ret` (whose
/// string may be absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggingRet {
    /// The definitions, space separated.
    pub value: Option<String>,
    /// How many there are.
    pub count: u32,
}

/// `admin_connect_get_logging_outputs_ret`: the same, never absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggingOutputsRet {
    /// The definitions, space separated.
    pub value: String,
    /// How many there are.
    pub count: u32,
}

/// `admin_connect_set_logging_{outputs,filters}_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetLoggingArgs {
    /// The definitions; absent or empty resets to the default.
    pub value: Option<String>,
    /// Flags.
    pub flags: u32,
}

/// `admin_connect_set_daemon_timeout_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetTimeoutArgs {
    /// Seconds; 0 disables.
    pub timeout: u32,
    /// Flags.
    pub flags: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::xdr;

    #[test]
    fn typed_param_arms_carry_libvirts_discriminants() {
        let p = TypedParam { field: "nclients".into(), value: ParamValue::UInt(7) };
        let bytes = xdr::to_bytes(&p).unwrap();
        assert_eq!(bytes, [0, 0, 0, 8, b'n', b'c', b'l', b'i', b'e', b'n', b't', b's', 0, 0, 0, 2, 0, 0, 0, 7]);
        let s = xdr::to_bytes(&ParamValue::String("x".into())).unwrap();
        assert_eq!(&s[..4], &[0, 0, 0, 7]);
        assert_eq!(xdr::from_bytes::<ParamValue>(&[0, 0, 0, 6, 0, 0, 0, 1]).unwrap(), ParamValue::Boolean(1));
    }

    #[test]
    fn procedure_numbers_round_trip() {
        for p in AdminProc::ALL {
            assert_eq!(AdminProc::from_number(p as i32), Some(p));
        }
        assert_eq!(AdminProc::from_number(20), None);
    }
}
