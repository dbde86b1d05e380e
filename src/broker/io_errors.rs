//! libvirt's I/O error events from a helper's unsolicited `IoError`: the
//! helper's disk thread reports a backend failure (the first, then at most
//! one a second per disk) without anyone asking, and the broker raises
//! `VIR_DOMAIN_EVENT_ID_IO_ERROR` and `IO_ERROR_REASON` on both sockets.
//!
//! The guest always gets the error status and runs on: the helper has no
//! `<driver error_policy>` other than libvirt's `report`, so the action is
//! always `VIR_DOMAIN_EVENT_IO_ERROR_REPORT` and nothing pauses the guest.
//! `virsh domblkerror` reads the same error from the disk's counters.

use super::state::Ctx;
use crate::domain::{DomainDef, Uuid};
use crate::privsep::{DomainEvent, EventKind};
use crate::rpc::events::IO_ERROR_REPORT;

/// Longest error text passed on (the helper's, but a client's event is bounded).
const MAX_DETAIL: usize = 256;

/// The two events for disk `alias` of `def`, or none when the guest has no
/// such disk (a helper naming something else is ignored, not trusted).
pub fn events_for(def: &DomainDef, dom: &crate::privsep::DomainRef, alias: &str, detail: &str) -> Vec<DomainEvent> {
    let Some(disk) = def.disks.iter().find(|d| d.alias() == alias) else { return Vec::new() };
    let mut reason = detail.to_owned();
    if reason.len() > MAX_DETAIL {
        let mut end = MAX_DETAIL;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    [None, Some(reason)]
        .into_iter()
        .map(|reason| DomainEvent {
            dom: dom.clone(),
            kind: EventKind::IoError {
                path: disk.path.clone(),
                alias: alias.to_owned(),
                action: IO_ERROR_REPORT,
                reason,
            },
        })
        .collect()
}

/// Guest `uuid`'s helper reported a backend error on disk `alias`: queues
/// the events (sent with the loop's next flush).
pub fn raise(ctx: &mut Ctx, uuid: &Uuid, alias: &str, detail: &str) {
    let Ok(e) = ctx.domains.by_uuid(uuid) else { return };
    if e.id.is_none() {
        return;
    }
    let events = events_for(&e.def, &e.handle(), alias, detail);
    if events.is_empty() {
        log::warn!("guest '{}': its helper reported an I/O error on unknown disk {alias:?}", e.def.name);
    }
    ctx.guests.events.extend(events);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_disk_gets_both_events_with_the_report_action() {
        let xml = "<domain type='kvm'><name>b</name><memory>65536</memory><os><type>hvm</type><kernel>/k</kernel>\
                   </os><devices><disk><source file='/a'/><target dev='vda'/></disk>\
                   <disk><source file='/b'/><target dev='vdb'/></disk></devices></domain>";
        let def = crate::domain::parse(xml, false).unwrap().0;
        let dom = crate::privsep::DomainRef { name: "b".into(), uuid: def.uuid, id: 3 };
        let events = events_for(&def, &dom, "virtio-disk1", "No space left on device (os error 28)");
        let kinds: Vec<&EventKind> = events.iter().map(|e| &e.kind).collect();
        assert_eq!(
            kinds,
            [
                &EventKind::IoError { path: "/b".into(), alias: "virtio-disk1".into(), action: 2, reason: None },
                &EventKind::IoError {
                    path: "/b".into(),
                    alias: "virtio-disk1".into(),
                    action: 2,
                    reason: Some("No space left on device (os error 28)".into())
                },
            ]
        );
        assert!(events_for(&def, &dom, "virtio-disk7", "x").is_empty());
        let long = "é".repeat(300);
        let events = events_for(&def, &dom, "virtio-disk0", &long);
        let EventKind::IoError { reason: Some(r), .. } = &events[1].kind else { panic!() };
        assert!(r.len() <= MAX_DETAIL && long.starts_with(r.as_str()));
    }
}
