//! The one place where failures become libvirt errors: (code, domain, message).
//!
//! Every failure a client can see is an [`RpcError`]; [`to_remote`] is the
//! single `match` that picks its `virErrorNumber`, `virErrorDomain` and text,
//! built the way libvirt builds them (a template, with the detail for `%s`).

use super::remote::{ApiFamily, RemoteError};
use crate::privsep::CallError;

/// `virErrorNumber` values used here.
mod code {
    pub const INTERNAL_ERROR: i32 = 1;
    pub const NO_SUPPORT: i32 = 3;
    pub const AUTH_FAILED: i32 = 45;
    pub const INVALID_ARG: i32 = 8;
    pub const OPERATION_FAILED: i32 = 9;
    pub const XML_ERROR: i32 = 27;
    pub const OPERATION_DENIED: i32 = 29;
    pub const XML_DETAIL: i32 = 35;
    pub const RPC: i32 = 39;
    pub const NO_DOMAIN: i32 = 42;
    pub const NO_NETWORK: i32 = 43;
    pub const OPERATION_INVALID: i32 = 55;
    pub const CONFIG_UNSUPPORTED: i32 = 67;
    pub const ARGUMENT_UNSUPPORTED: i32 = 74;
    pub const NO_DOMAIN_METADATA: i32 = 80;
    pub const OPERATION_UNSUPPORTED: i32 = 84;
    pub const CPU_INCOMPATIBLE: i32 = 91;
    pub const XML_INVALID_SCHEMA: i32 = 92;
    pub const NO_SERVER: i32 = 95;
    pub const NO_CLIENT: i32 = 96;
    pub const SYSTEM_ERROR: i32 = 38;
    pub const NO_STORAGE_POOL: i32 = 49;
    pub const NO_STORAGE_VOL: i32 = 50;
    pub const STORAGE_VOL_EXIST: i32 = 90;
    pub const DEVICE_MISSING: i32 = 99;
}

/// `virErrorDomain` values used here.
mod from {
    pub const NONE: i32 = 0;
    pub const XML: i32 = 5;
    pub const RPC: i32 = 7;
    pub const QEMU: i32 = 10;
    pub const STORAGE: i32 = 18;
    pub const NETWORK: i32 = 19;
    pub const DOMAIN: i32 = 20;
    pub const NODEDEV: i32 = 22;
    pub const INTERFACE: i32 = 26;
    pub const SECRET: i32 = 30;
    pub const CPU: i32 = 31;
    pub const NWFILTER: i32 = 33;
    pub const DOMAIN_SNAPSHOT: i32 = 35;
    pub const ADMIN: i32 = 62;
    pub const DOMAIN_CHECKPOINT: i32 = 69;
}

/// The error domain of an API's own checks: its source file's `VIR_FROM_THIS`
/// (`libvirt-host.c` uses `VIR_FROM_DOMAIN`, `libvirt.c` none).
fn domain_of(family: ApiFamily) -> i32 {
    match family {
        ApiFamily::Domain | ApiFamily::Host => from::DOMAIN,
        ApiFamily::Storage => from::STORAGE,
        ApiFamily::Network => from::NETWORK,
        ApiFamily::Nodedev => from::NODEDEV,
        ApiFamily::Interface => from::INTERFACE,
        ApiFamily::Snapshot => from::DOMAIN_SNAPSHOT,
        ApiFamily::Nwfilter => from::NWFILTER,
        ApiFamily::Secret => from::SECRET,
        ApiFamily::Checkpoint => from::DOMAIN_CHECKPOINT,
        ApiFamily::Libvirt => from::NONE,
        ApiFamily::Daemon => from::RPC,
    }
}

/// Everything that can go wrong with one call, as the client will see it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// The broker refused or failed the call.
    #[error(transparent)]
    Call(#[from] CallError),
    /// No such procedure here (clients read this as "not supported").
    #[error("unknown procedure: {0}")]
    UnknownProcedure(i32),
    /// No such program or version on this socket.
    #[error("Cannot find program {prog} version {vers}")]
    UnknownProgram {
        /// Program number.
        prog: u32,
        /// Version.
        vers: u32,
    },
    /// A call's status word was not OK.
    #[error("Unexpected message status {0}")]
    UnexpectedStatus(i32),
    /// The arguments did not decode.
    #[error("Unable to decode message payload")]
    Decode,
    /// A mutating call on a read-only connection.
    #[error("read only access prevents {api}")]
    ReadOnly {
        /// The public API refused.
        api: &'static str,
        /// Where it lives (the error domain).
        family: ApiFamily,
    },
    /// A procedure of libvirt's that this daemon does not implement, said
    /// as libvirt's drivers say it so that clients fall back.
    #[error("{api}")]
    NoSupport {
        /// The public API, as libvirt names it.
        api: &'static str,
        /// Where it lives (the error domain).
        family: ApiFamily,
    },
    /// A SASL or polkit step on a connection that authenticates with none.
    #[error("authentication failed")]
    AuthFailed,
    /// `virDomainGetXMLDesc` with SECURE/MIGRATABLE on a read-only connection.
    #[error("virDomainGetXMLDesc with secure flag")]
    SecureXmlReadOnly,
    /// A hypervisor call before CONNECT_OPEN.
    #[error("hypervisor connection not open")]
    NotOpen,
    /// A second CONNECT_OPEN.
    #[error("connection already open")]
    AlreadyOpen,
    /// CONNECT_OPEN for a URI this daemon does not serve.
    #[error("no connection driver available for {0}")]
    NoDriver(String),
    /// Flags a frontend-answered call does not know.
    #[error("unsupported flags (0x{flags:x}) in function {function}")]
    UnsupportedFlags {
        /// The flags.
        flags: u32,
        /// Our function.
        function: &'static str,
    },
    /// Deregistering an event callback that is not registered.
    #[error("domain event callback {0} not registered")]
    NoCallback(i32),
    /// A connection registering more event callbacks than allowed.
    #[error("too many event callbacks (at most {0} per connection)")]
    TooManyCallbacks(usize),
    /// The broker did not answer (restarting, or a violation).
    #[error("the daemon's privileged process is unavailable")]
    BrokerUnavailable,
    /// A result of the wrong shape came back: a bug, not the client's fault.
    #[error("unexpected result for {0}")]
    Internal(&'static str),
    /// The reply would exceed libvirt's largest message.
    #[error("the reply of {0} bytes is larger than the {max}-byte message limit", max = crate::rpc::frame::MAX_REPLY)]
    ReplyTooLarge(usize),
}

/// The longest error message (and detail) a client is sent, in bytes.
///
/// libvirt formatted its messages into a buffer of this size for most of its
/// history, and still cuts the QEMU log excerpts it quotes in errors to fit
/// `VIR_ERROR_MAX_LENGTH` (1024); clients and their logs expect messages of
/// about this size. Messages often quote what the client sent (a name, a
/// type, a URI, a line of XML), so without a cap a client controls the size
/// of its own error reply (issue 11: a 64 KiB type string).
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// What ends a message that was cut short.
const ELLIPSIS: &str = "...";

/// `s` cut to at most `max` bytes on a char boundary, with "..." at the end
/// when anything was cut; borrowed when it already fits.
///
/// Also for code that quotes client input in an error before it reaches this
/// module (the broker, whose replies to the frontend have a size limit).
pub fn clip(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return std::borrow::Cow::Borrowed(s);
    }
    // Too small a budget for the ellipsis gets the bare cut.
    let tail = if max >= ELLIPSIS.len() { ELLIPSIS } else { "" };
    let mut end = max - tail.len();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}{tail}", &s[..end]))
}

fn err(code: i32, domain: i32, template: &str, detail: Option<String>) -> RemoteError {
    let detail = detail.map(|d| clip(&d, MAX_MESSAGE_BYTES).into_owned());
    let message = match &detail {
        Some(d) => template.replace("%s", d),
        None => template.trim_end_matches(": %s").trim_end_matches(" %s").to_owned(),
    };
    RemoteError {
        code,
        domain,
        message: Some(clip(&message, MAX_MESSAGE_BYTES).into_owned()),
        level: 2,
        dom: None,
        str1: Some(template.to_owned()),
        str2: detail,
        str3: None,
        int1: -1,
        int2: -1,
        net: None,
    }
}

/// The libvirt error for `e`.
pub fn to_remote(e: &RpcError) -> RemoteError {
    let detail = Some(e.to_string());
    match e {
        RpcError::Call(c) => {
            let detail = Some(c.to_string());
            match c {
                CallError::NoDomainName(_) | CallError::NoDomainUuid(_) | CallError::NoDomainId(_) => {
                    err(code::NO_DOMAIN, from::QEMU, "Domain not found: %s", detail)
                }
                CallError::NameTaken { .. } | CallError::UuidTaken { .. } | CallError::OperationFailed(_) => {
                    err(code::OPERATION_FAILED, from::DOMAIN, "operation failed: %s", detail)
                }
                CallError::XmlSyntax { .. } => err(code::XML_DETAIL, from::DOMAIN, "%s", detail),
                CallError::XmlInvalid(_) => err(code::XML_ERROR, from::DOMAIN, "XML error: %s", detail),
                CallError::XmlSchema(_) => err(
                    code::XML_INVALID_SCHEMA,
                    from::XML,
                    "XML document failed to validate against schema: %s",
                    detail,
                ),
                CallError::ConfigUnsupported(_) => {
                    err(code::CONFIG_UNSUPPORTED, from::DOMAIN, "unsupported configuration: %s", detail)
                }
                CallError::InvalidArg(_) => err(code::INVALID_ARG, from::DOMAIN, "invalid argument: %s", detail),
                CallError::UnsupportedFlags { .. } => {
                    err(code::INVALID_ARG, from::QEMU, "invalid argument: %s", detail)
                }
                CallError::OperationInvalid(_) => {
                    err(code::OPERATION_INVALID, from::QEMU, "Requested operation is not valid: %s", detail)
                }
                CallError::ReadOnly(_) => err(code::OPERATION_DENIED, from::DOMAIN, "operation forbidden: %s", detail),
                CallError::NotRunning => {
                    err(code::OPERATION_INVALID, from::DOMAIN, "Requested operation is not valid: %s", detail)
                }
                CallError::Internal(_) => err(code::INTERNAL_ERROR, from::QEMU, "internal error: %s", detail),
                CallError::CpuIncompatible(_) => {
                    err(code::CPU_INCOMPATIBLE, from::CPU, "the CPU is incompatible with host CPU: %s", detail)
                }
                CallError::NoServer(_) => err(code::NO_SERVER, from::ADMIN, "Server not found: %s", detail),
                CallError::NoClient(_) => err(code::NO_CLIENT, from::RPC, "Client not found: %s", detail),
                CallError::ArgumentUnsupported(_) => {
                    err(code::ARGUMENT_UNSUPPORTED, from::QEMU, "argument unsupported: %s", detail)
                }
                CallError::OperationUnsupported(_) => {
                    err(code::OPERATION_UNSUPPORTED, from::QEMU, "Operation not supported: %s", detail)
                }
                CallError::NoMetadata(_) => {
                    err(code::NO_DOMAIN_METADATA, from::DOMAIN, "metadata not found: %s", detail)
                }
                CallError::MetadataSyntax { .. } => err(code::XML_DETAIL, from::DOMAIN, "%s", detail),
                CallError::Storage(s) => storage_error(s, detail),
                CallError::DeviceMissing(_) => err(code::DEVICE_MISSING, from::QEMU, "device not found: %s", detail),
                CallError::Network(n) => {
                    use crate::privsep::network::NetError as N;
                    let (code, template) = match n {
                        N::NoName(_) | N::NoUuid(_) => (code::NO_NETWORK, "Network not found: %s"),
                        N::Xml(_) => (code::XML_ERROR, "XML error: %s"),
                        N::Unsupported(_) => (code::CONFIG_UNSUPPORTED, "unsupported configuration: %s"),
                        N::Invalid(_) => (code::OPERATION_INVALID, "Requested operation is not valid: %s"),
                        N::Failed(_) => (code::OPERATION_FAILED, "operation failed: %s"),
                        N::InvalidArg(_) | N::Flags { .. } => (code::INVALID_ARG, "invalid argument: %s"),
                        N::Internal(_) => (code::INTERNAL_ERROR, "internal error: %s"),
                        N::ReadOnly(_) => (code::OPERATION_DENIED, "operation forbidden: %s"),
                    };
                    err(code, from::NETWORK, template, detail)
                }
                CallError::Unsupported(_) => err(
                    code::NO_SUPPORT,
                    from::ADMIN,
                    "this function is not supported by the connection driver: %s",
                    detail,
                ),
            }
        }
        RpcError::UnknownProcedure(_)
        | RpcError::UnknownProgram { .. }
        | RpcError::UnexpectedStatus(_)
        | RpcError::Decode
        | RpcError::ReplyTooLarge(_) => err(code::RPC, from::RPC, "%s", detail),
        RpcError::ReadOnly { family, .. } => {
            err(code::OPERATION_DENIED, domain_of(*family), "operation forbidden: %s", detail)
        }
        RpcError::SecureXmlReadOnly => err(code::OPERATION_DENIED, from::DOMAIN, "operation forbidden: %s", detail),
        RpcError::NoSupport { family, .. } => err(
            code::NO_SUPPORT,
            domain_of(*family),
            "this function is not supported by the connection driver: %s",
            detail,
        ),
        RpcError::AuthFailed => err(code::AUTH_FAILED, from::RPC, "authentication failed: %s", detail),
        RpcError::NotOpen
        | RpcError::AlreadyOpen
        | RpcError::BrokerUnavailable
        | RpcError::Internal(_)
        | RpcError::NoCallback(_)
        | RpcError::TooManyCallbacks(_) => err(code::INTERNAL_ERROR, from::RPC, "internal error: %s", detail),
        RpcError::NoDriver(_) => err(5, from::RPC, "no connection driver available for %s", Some(detail_of_uri(e))),
        RpcError::UnsupportedFlags { .. } => err(code::INVALID_ARG, from::RPC, "invalid argument: %s", detail),
    }
}

/// libvirt's storage driver errors (`VIR_FROM_STORAGE`).
fn storage_error(e: &crate::privsep::storage::StorageError, detail: Option<String>) -> RemoteError {
    use crate::privsep::storage::StorageError as S;
    let (code, template) = match e {
        S::NoPool(_) => (code::NO_STORAGE_POOL, "Storage pool not found: %s"),
        S::NoVol(_) => (code::NO_STORAGE_VOL, "Storage volume not found: %s"),
        S::VolExists(_) => (code::STORAGE_VOL_EXIST, "storage volume already exists: %s"),
        S::Failed(_) => (code::OPERATION_FAILED, "operation failed: %s"),
        S::Invalid(_) => (code::OPERATION_INVALID, "Requested operation is not valid: %s"),
        S::InvalidArg(_) | S::Flags { .. } => (code::INVALID_ARG, "invalid argument: %s"),
        S::Xml(_) => (code::XML_ERROR, "XML error: %s"),
        S::XmlSyntax(_) => (code::XML_DETAIL, "%s"),
        S::Internal(_) => (code::INTERNAL_ERROR, "internal error: %s"),
        S::System(_) => (code::SYSTEM_ERROR, "%s"),
        S::NoSupport(_) => (code::NO_SUPPORT, "this function is not supported by the connection driver: %s"),
    };
    err(code, from::STORAGE, template, detail)
}

fn detail_of_uri(e: &RpcError) -> String {
    match e {
        RpcError::NoDriver(uri) => uri.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn triple(e: RpcError) -> (i32, i32, String) {
        let r = to_remote(&e);
        (r.code, r.domain, r.message.unwrap())
    }

    #[test]
    fn observed_libvirt_errors_are_reproduced() {
        assert_eq!(
            triple(RpcError::ReadOnly { api: "virDomainDefineXML", family: ApiFamily::Domain }),
            (29, 20, "operation forbidden: read only access prevents virDomainDefineXML".into())
        );
        assert_eq!(
            triple(RpcError::NoSupport { api: "virConnectDomainXMLFromNative", family: ApiFamily::Domain }),
            (3, 20, "this function is not supported by the connection driver: virConnectDomainXMLFromNative".into())
        );
        // Each API's own source file decides the domain, as VIR_FROM_THIS does.
        assert_eq!(triple(RpcError::NoSupport { api: "virNetworkDefineXML", family: ApiFamily::Network }).1, 19);
        assert_eq!(triple(RpcError::ReadOnly { api: "virSecretSetValue", family: ApiFamily::Secret }).1, 30);
        assert_eq!(triple(RpcError::AuthFailed), (45, 7, "authentication failed: authentication failed".into()));
        assert_eq!(
            triple(CallError::NoDomainName("base-missing".into()).into()),
            (42, 10, "Domain not found: no domain with matching name 'base-missing'".into())
        );
        assert_eq!(
            triple(CallError::ConfigUnsupported("invalid domain type bogus".into()).into()),
            (67, 20, "unsupported configuration: invalid domain type bogus".into())
        );
        assert_eq!(
            triple(CallError::NameTaken { name: "base-foo".into(), uuid: "d4".into() }.into()),
            (9, 20, "operation failed: domain 'base-foo' already exists with uuid d4".into())
        );
        assert_eq!(triple(RpcError::UnknownProcedure(999)), (39, 7, "unknown procedure: 999".into()));
        assert_eq!(
            triple(CallError::XmlSyntax { line: 4, detail: "unexpected end of stream".into() }.into()),
            (35, 20, "(domain_definition):4: unexpected end of stream".into())
        );
    }

    #[test]
    fn clip_keeps_short_text_and_cuts_long_text_on_a_char_boundary() {
        assert!(matches!(clip("kvm", 8), std::borrow::Cow::Borrowed("kvm")));
        assert_eq!(clip("abcdefghij", 8), "abcde...");
        // 'é' is two bytes: a cut inside it moves back to its start.
        let cut = clip("ééééé", 8);
        assert_eq!(cut, "éé...");
        assert!(cut.len() <= 8);
        assert_eq!(clip("abc", 2), "ab");
    }

    #[test]
    fn messages_echoing_client_input_are_bounded() {
        let long = "\u{e9}".repeat(40_000);
        for e in [
            RpcError::from(CallError::InvalidArg(format!("unknown type '{long}'"))),
            RpcError::from(CallError::NoDomainName(long.clone())),
            RpcError::NoDriver(long.clone()),
            RpcError::from(CallError::XmlSyntax { line: 1, detail: long.clone() }),
        ] {
            let r = to_remote(&e);
            let message = r.message.unwrap();
            assert!(message.len() <= MAX_MESSAGE_BYTES, "{} bytes", message.len());
            assert!(message.ends_with("..."));
            assert!(r.str2.is_some_and(|d| d.len() <= MAX_MESSAGE_BYTES));
        }
        let kept = to_remote(&CallError::NoDomainName("vm1".into()).into());
        assert_eq!(kept.message.as_deref(), Some("Domain not found: no domain with matching name 'vm1'"));
    }

    #[test]
    fn error_replies_carry_template_and_detail_as_libvirtd_does() {
        let r = to_remote(&CallError::NoDomainName("vm2".into()).into());
        assert_eq!(r.str1.as_deref(), Some("Domain not found: %s"));
        assert_eq!(r.str2.as_deref(), Some("no domain with matching name 'vm2'"));
        assert_eq!((r.level, r.int1, r.int2), (2, -1, -1));
    }
}
