//! Domain event messages that carry nothing but the domain (libvirt's
//! `remote_domain_event_callback_reboot_msg` and
//! `remote_domain_event_callback_control_error_msg` share this shape), and
//! the event ids and MESSAGE procedures of the events this daemon sends.

use serde::{Deserialize, Serialize};

use super::remote::NonnullDomain;

/// `VIR_DOMAIN_EVENT_ID_LIFECYCLE`.
pub const ID_LIFECYCLE: i32 = 0;
/// `VIR_DOMAIN_EVENT_ID_REBOOT`.
pub const ID_REBOOT: i32 = 1;
/// `VIR_DOMAIN_EVENT_ID_RTC_CHANGE`.
pub const ID_RTC_CHANGE: i32 = 2;
/// `VIR_DOMAIN_EVENT_ID_IO_ERROR`.
pub const ID_IO_ERROR: i32 = 4;
/// `VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON`.
pub const ID_IO_ERROR_REASON: i32 = 6;
/// `VIR_DOMAIN_EVENT_ID_CONTROL_ERROR`.
pub const ID_CONTROL_ERROR: i32 = 7;
/// `VIR_DOMAIN_EVENT_ID_METADATA_CHANGE`.
pub const ID_METADATA_CHANGE: i32 = 23;

/// `REMOTE_PROC_DOMAIN_EVENT_CALLBACK_REBOOT`.
pub const CALLBACK_REBOOT: i32 = 319;
/// `REMOTE_PROC_DOMAIN_EVENT_CALLBACK_RTC_CHANGE`.
pub const CALLBACK_RTC_CHANGE: i32 = 320;
/// `REMOTE_PROC_DOMAIN_EVENT_CALLBACK_IO_ERROR`.
pub const CALLBACK_IO_ERROR: i32 = 322;
/// `REMOTE_PROC_DOMAIN_EVENT_CALLBACK_IO_ERROR_REASON`.
pub const CALLBACK_IO_ERROR_REASON: i32 = 324;
/// `VIR_DOMAIN_EVENT_IO_ERROR_REPORT`: the error went to the guest, which runs on.
pub const IO_ERROR_REPORT: i32 = 2;
/// `REMOTE_PROC_DOMAIN_EVENT_CALLBACK_CONTROL_ERROR`.
pub const CALLBACK_CONTROL_ERROR: i32 = 325;

/// A callback event about a domain and nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainOnlyEventMsg {
    /// The client's registration.
    pub callback_id: i32,
    /// The domain.
    pub dom: NonnullDomain,
}

/// `remote_domain_event_callback_io_error_msg` (its inner message flattened,
/// as XDR lays it out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoErrorEventMsg {
    /// The client's registration.
    pub callback_id: i32,
    /// The domain.
    pub dom: NonnullDomain,
    /// The disk's source path.
    pub src_path: String,
    /// The disk's alias.
    pub dev_alias: String,
    /// `virDomainEventIOErrorAction`.
    pub action: i32,
}

/// `remote_domain_event_callback_io_error_reason_msg`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoErrorReasonEventMsg {
    /// The client's registration.
    pub callback_id: i32,
    /// The domain.
    pub dom: NonnullDomain,
    /// The disk's source path.
    pub src_path: String,
    /// The disk's alias.
    pub dev_alias: String,
    /// `virDomainEventIOErrorAction`.
    pub action: i32,
    /// Why.
    pub reason: String,
}

/// `remote_domain_event_callback_rtc_change_msg` (its inner message
/// flattened, as XDR lays it out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RtcChangeEventMsg {
    /// The client's registration.
    pub callback_id: i32,
    /// The domain.
    pub dom: NonnullDomain,
    /// Seconds (`hyper`).
    pub offset: i64,
}
