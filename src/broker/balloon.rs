//! The live side of `<memballoon model='virtio'>`: `virsh setmem --live`
//! sets the balloon's target through the guest's helper
//! (`HelperCommand::SetBalloon`, through its queue of questions,
//! `helper_asks.rs`, without waiting, as QEMU's balloon command answers
//! before the guest has moved), and `dommemstat` shows the balloon's
//! figures. The helper's answers (`HelperEvent::Balloon`) come through the
//! event loop into a per-guest cache ([`Balloons`]); every `dommemstat`
//! answers from it and asks the helper for fresh figures ([`refresh`]), so
//! what it shows is at most one question old and the broker never waits
//! on a helper. Guests without a balloon keep libvirt's no-balloon error.

use std::collections::HashMap;
use std::time::Instant;

use nix::unistd::Pid;

use super::domains::{AFFECT_CONFIG, AFFECT_LIVE, Entry};
use super::helper_asks::{self, ASK_TIMEOUT, Question};
use super::state::Ctx;
use crate::domain::{DomainDef, Uuid};
use crate::privsep::admin::{Param, ParamValue};
use crate::privsep::helper::BalloonFigures;
use crate::privsep::{CallError, CallValue};

/// `virDomainMemoryStatTags` this module fills.
mod tag {
    pub const SWAP_IN: i32 = 0;
    pub const SWAP_OUT: i32 = 1;
    pub const MAJOR_FAULT: i32 = 2;
    pub const MINOR_FAULT: i32 = 3;
    pub const UNUSED: i32 = 4;
    pub const AVAILABLE: i32 = 5;
    pub const ACTUAL: i32 = 6;
    pub const RSS: i32 = 7;
    pub const DISK_CACHES: i32 = 10;
    pub const HUGETLB_PGALLOC: i32 = 11;
    pub const HUGETLB_PGFAIL: i32 = 12;
    pub const NR: u32 = 13;
}

/// The last figures each running guest's helper reported, by the helper's pid.
pub type Balloons = HashMap<Uuid, (Pid, BalloonFigures)>;

/// The definition's balloon, when it is a running virtio one.
pub fn has_balloon(def: &DomainDef) -> bool {
    crate::domain::balloon::of(def).is_some_and(|b| b.pci_slot.is_some())
}

/// `virDomainSetMemoryFlags` on a running guest with a balloon: the
/// target goes to its helper, and with `--config` the definition changes
/// too. `None` where the balloon has no part (the caller goes on as before).
pub fn set_memory(ctx: &mut Ctx, uuid: &Uuid, kib: u64, flags: u32) -> Option<Result<String, CallError>> {
    let e = ctx.domains.by_uuid(uuid).ok()?;
    if flags & super::memsize::MEM_MAXIMUM != 0 || !has_balloon(&e.def) {
        return None;
    }
    let (live, config) = match e.impact(flags, false) {
        Ok(v) => v,
        Err(err) => return Some(Err(err)),
    };
    if !live {
        return None;
    }
    Some(set_live(ctx, uuid, kib).and_then(|()| {
        if config {
            let def = super::memsize::set(ctx.domains.by_uuid(uuid)?, kib, flags & !AFFECT_LIVE | AFFECT_CONFIG)?;
            return ctx.domains.replace_def(uuid, def);
        }
        Ok(ctx.domains.by_uuid(uuid)?.def.name.clone())
    }))
}

fn set_live(ctx: &mut Ctx, uuid: &Uuid, kib: u64) -> Result<(), CallError> {
    let e = ctx.domains.by_uuid(uuid)?;
    if kib == 0 {
        return Err(CallError::InvalidArg("memory size must be greater than zero".into()));
    }
    if kib > e.def.memory_kib {
        return Err(CallError::InvalidArg("cannot set memory higher than max memory".into()));
    }
    // Nobody waits: the answer refreshes the figures kept.
    helper_asks::ask(ctx, uuid, Question::SetBalloon { target_mib: kib / 1024 }, None, Instant::now() + ASK_TIMEOUT)
}

/// `virDomainSetMemoryStatsPeriod` (`virsh dommemstat --period`): how
/// often the guest's balloon statistics are collected, for the running
/// guest (its helper asks the guest on that period,
/// `HelperCommand::SetBalloonPeriod`) and in the definition. The daemon
/// keeps one definition per domain, so live and config both change it.
/// Checked as libvirt's QEMU driver checks it.
pub fn set_period(ctx: &mut Ctx, uuid: &Uuid, period: i32, flags: u32) -> Result<String, CallError> {
    if flags & !(AFFECT_LIVE | AFFECT_CONFIG) != 0 {
        return Err(CallError::UnsupportedFlags { flags, function: "qemuDomainSetMemoryStatsPeriod".into() });
    }
    let e = ctx.domains.by_uuid(uuid)?;
    let (live, _) = e.impact(flags, false)?;
    let seconds =
        u32::try_from(period).map_err(|_| CallError::InvalidArg("invalid value for collection period".into()))?;
    let mut def = e.def.clone();
    let found =
        crate::domain::balloon::set_period(&mut def, seconds).map_err(|err| CallError::InvalidArg(err.to_string()))?;
    if !found {
        return Err(CallError::OperationInvalid(
            "No memory balloon device configured, can not set the collection period".into(),
        ));
    }
    if live {
        let deadline = Instant::now() + ASK_TIMEOUT;
        helper_asks::ask(ctx, uuid, Question::SetBalloonPeriod { seconds }, None, deadline)?;
    }
    let name = ctx.domains.replace_def(uuid, def)?;
    if ctx.guests.contains_key(uuid) {
        ctx.record(uuid);
    }
    Ok(name)
}

/// The helper `pid` of guest `uuid` reported its balloon.
pub fn answered(ctx: &mut Ctx, uuid: &Uuid, pid: Pid, figures: Option<BalloonFigures>) {
    match figures {
        Some(f) => {
            ctx.balloons.insert(*uuid, (pid, f));
        }
        None => {
            ctx.balloons.remove(uuid);
        }
    }
}

/// Asks running guest `uuid`'s helper for fresh balloon figures, if it has
/// a balloon (one question out at a time serves every caller).
pub fn refresh(ctx: &mut Ctx, uuid: &Uuid) {
    let Ok(e) = ctx.domains.by_uuid(uuid) else { return };
    if e.id.is_none() || !has_balloon(&e.def) {
        return;
    }
    // Best effort: a helper that cannot be asked only delays the refresh.
    let _ = helper_asks::ask(ctx, uuid, Question::BalloonStats, None, Instant::now() + ASK_TIMEOUT);
}

/// The figures of a running guest's balloon from its current helper, as
/// last reported (see [`refresh`]); `None` without a balloon.
pub fn figures(ctx: &Ctx, e: &Entry) -> Option<BalloonFigures> {
    if !has_balloon(&e.def) {
        return None;
    }
    let running = ctx.guests.get(&e.def.uuid).filter(|_| e.id.is_some())?;
    let cached = ctx.balloons.get(&e.def.uuid).filter(|(pid, _)| *pid == running.pid).map(|(_, f)| f.clone());
    // Before the first answer the guest has what it started with.
    Some(cached.unwrap_or_else(|| BalloonFigures {
        target_kib: e.def.memory_kib,
        actual_kib: e.def.memory_kib,
        ..Default::default()
    }))
}

/// `virDomainMemoryStats` of a guest with a balloon: `actual` from the
/// balloon, the guest's statistics where it sent them, and the helper's
/// resident set; `None` without a balloon.
/// Calls the plain path answers (an error, or nothing asked) are left to it.
pub fn memory_stats(ctx: &Ctx, e: &Entry, max: u32, flags: u32) -> Option<CallValue> {
    if flags != 0 || max == 0 || max > crate::rpc::stats::DOMAIN_MEMORY_STATS_MAX {
        return None;
    }
    let f = figures(ctx, e)?;
    // The guest's own figures only while they are collected (a stats
    // period), as libvirt shows them.
    let collected = crate::domain::balloon::of(&e.def).is_some_and(|b| b.stats_period > 0);
    let mut stats = if collected { guest_stats(&f) } else { Vec::new() };
    stats.push((tag::ACTUAL, f.actual_kib));
    if let Some(s) = e.pid.and_then(super::procfs::process_stat) {
        stats.push((tag::RSS, s.rss_kib));
    }
    stats.sort_by_key(|(t, _)| *t);
    stats.truncate(max.min(tag::NR) as usize);
    Some(CallValue::MemoryStats(stats))
}

/// `domstats --balloon`: `balloon.current` of a guest with a balloon is
/// what the balloon leaves it.
pub fn patch_record(ctx: &Ctx, e: &Entry, record: &mut [Param]) {
    let Some(f) = record.iter().any(|p| p.field == "balloon.current").then(|| figures(ctx, e)).flatten() else {
        return;
    };
    for p in record.iter_mut().filter(|p| p.field == "balloon.current") {
        p.value = ParamValue::ULLong(f.actual_kib);
    }
}

/// The guest's virtio statistics as libvirt's tags, memory in KiB.
fn guest_stats(f: &BalloonFigures) -> Vec<(i32, u64)> {
    f.guest_stats
        .iter()
        .filter_map(|&(virtio, v)| {
            let kib = v / 1024;
            Some(match virtio {
                0 => (tag::SWAP_IN, kib),
                1 => (tag::SWAP_OUT, kib),
                2 => (tag::MAJOR_FAULT, v),
                3 => (tag::MINOR_FAULT, v),
                4 => (tag::UNUSED, kib),
                5 => (tag::AVAILABLE, kib),
                6 => (tag::DISK_CACHES, kib),
                7 => (tag::HUGETLB_PGALLOC, v),
                8 => (tag::HUGETLB_PGFAIL, v),
                _ => return None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_statistics_map_to_libvirt_tags_in_kib() {
        let f =
            BalloonFigures { guest_stats: vec![(4, 8 << 20), (5, 16 << 20), (2, 3), (99, 1)], ..Default::default() };
        assert_eq!(guest_stats(&f), [(tag::UNUSED, 8192), (tag::AVAILABLE, 16384), (tag::MAJOR_FAULT, 3)]);
    }
}
