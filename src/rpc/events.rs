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
/// `VIR_DOMAIN_EVENT_ID_CONTROL_ERROR`.
pub const ID_CONTROL_ERROR: i32 = 7;
/// `VIR_DOMAIN_EVENT_ID_METADATA_CHANGE`.
pub const ID_METADATA_CHANGE: i32 = 23;

/// `REMOTE_PROC_DOMAIN_EVENT_CALLBACK_REBOOT`.
pub const CALLBACK_REBOOT: i32 = 319;
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
