//! The events a monitor subscribes to about a guest beyond its lifecycle
//! and metadata: a reboot (the guest reset and runs on, as QEMU's RESET
//! makes libvirt send `VIR_DOMAIN_EVENT_ID_REBOOT`) and a control error (the
//! daemon lost control of the guest's helper: it died without reporting a
//! stop, broke its channel, or speaks no protocol of this build; libvirt
//! sends `VIR_DOMAIN_EVENT_ID_CONTROL_ERROR` when it loses QEMU's monitor).
//!
//! I/O errors are raised where disk counters arrive (`io_errors.rs`), RTC
//! changes where the helper reports the guest setting its CMOS clock
//! (`rtc.rs`, `VIR_DOMAIN_EVENT_ID_RTC_CHANGE`). Of the other events a
//! monitor may register for, none has a source here yet, so none is sent:
//! watchdog (no watchdog device), device added/removed (no hotplug), job
//! completed (no jobs).

use super::state::Ctx;
use crate::domain::Uuid;
use crate::privsep::{DomainEvent, EventKind};

impl Ctx {
    /// Queues `kind` about domain `uuid` as it is now (with its id while it runs).
    fn emit_about(&mut self, uuid: &Uuid, kind: EventKind) {
        if let Ok(e) = self.domains.by_uuid(uuid) {
            let dom = e.handle();
            self.guests.events.push(DomainEvent { dom, kind });
        }
    }

    /// The guest `uuid` reset and was restarted in place.
    pub fn emit_reboot(&mut self, uuid: &Uuid) {
        self.emit_about(uuid, EventKind::Reboot);
    }

    /// The daemon lost control of guest `uuid`'s helper.
    pub fn emit_control_error(&mut self, uuid: &Uuid) {
        self.emit_about(uuid, EventKind::ControlError);
    }
}
