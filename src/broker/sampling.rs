//! The device groups of the bulk statistics (`net.*`, `block.*` of
//! `virConnectGetAllDomainStats`), whose counters live in the helpers.
//!
//! One call asks every running guest it covers at once (`DiskStats`,
//! `NetStats`, sent without waiting) and is answered when all of them have
//! reported or at [`DEADLINE`], whichever comes first: a guest that did not
//! answer in time is left without its counters (its names, paths and sizes
//! are still there), and nothing waits on a helper, neither the call nor
//! the broker's loop. A guest with a `domblkstat` question out is not asked
//! again: its answer serves both.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::blockinfo::Reply;
use super::calls::{Answer, Caller};
use super::state::Ctx;
use super::stats::{Record, group};
use crate::domain::Uuid;
use crate::privsep::helper::{DiskCounters, HelperCommand, NicCounters};
use crate::privsep::{CallError, CallValue};

/// How long a bulk call waits for the helpers' counters.
pub const DEADLINE: Duration = Duration::from_millis(500);

/// Which counters a helper was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `DiskStats`.
    Disks,
    /// `NetStats`.
    Nics,
}

/// What a helper reported.
#[derive(Debug, Clone)]
pub enum Counters {
    /// Its disks'.
    Disks(Vec<DiskCounters>),
    /// Its interfaces'.
    Nics(Vec<NicCounters>),
}

impl Counters {
    fn kind(&self) -> Kind {
        match self {
            Counters::Disks(_) => Kind::Disks,
            Counters::Nics(_) => Kind::Nics,
        }
    }
}

/// One bulk call waiting for counters.
#[derive(Debug)]
pub struct Sample {
    conn: u64,
    reply_to: u32,
    groups: u32,
    /// The records as the broker alone could fill them.
    records: Vec<Record>,
    disks: HashMap<Uuid, Vec<DiskCounters>>,
    nics: HashMap<Uuid, Vec<NicCounters>>,
    /// The helpers still to answer.
    waiting: Vec<(Uuid, Pid, Kind)>,
    deadline: Instant,
}

/// The bulk calls waiting for counters.
pub type Samples = Vec<Sample>;

impl Sample {
    /// Takes `counters` from helper `pid` of guest `uuid` if this call
    /// waits for them; whether it did.
    fn take(&mut self, uuid: &Uuid, pid: Pid, counters: &Counters) -> bool {
        let before = self.waiting.len();
        self.waiting.retain(|w| *w != (*uuid, pid, counters.kind()));
        if self.waiting.len() == before {
            return false;
        }
        match counters {
            Counters::Disks(c) => {
                self.disks.insert(*uuid, c.clone());
            }
            Counters::Nics(c) => {
                self.nics.insert(*uuid, c.clone());
            }
        }
        true
    }

    /// Stops waiting for helpers that `alive` says are gone.
    fn forget_gone(&mut self, alive: impl Fn(&Uuid, Pid) -> bool) {
        self.waiting.retain(|(u, pid, _)| alive(u, *pid));
    }

    /// Whether the call is answered now: nothing left to wait for, or its time is up.
    fn due(&self, now: Instant) -> bool {
        self.waiting.is_empty() || self.deadline <= now
    }
}

/// `virConnectGetAllDomainStats` / `virDomainListGetStats`: answered now
/// when no running guest in it has devices to count, else once their
/// helpers reported (or [`DEADLINE`] passed).
pub fn handle(ctx: &mut Ctx, caller: &Caller, doms: &[Uuid], stats: u32, flags: u32) -> Answer {
    let (groups, records) = match super::stats::domain_stats(ctx, doms, stats, flags) {
        Ok(v) => v,
        Err(e) => return Answer::Now(Err(e)),
    };
    let mut sample = Sample {
        conn: caller.conn,
        reply_to: caller.request,
        groups,
        records,
        disks: HashMap::new(),
        nics: HashMap::new(),
        waiting: Vec::new(),
        deadline: Instant::now() + DEADLINE,
    };
    if groups & group::DEVICES != 0 {
        for (dom, _) in &sample.records {
            sample.waiting.extend(ask(ctx, &dom.uuid, groups));
        }
    }
    if sample.waiting.is_empty() {
        return Answer::Now(Ok(finish(ctx, sample)));
    }
    ctx.samples.push(sample);
    Answer::Later
}

/// Asks running guest `uuid`'s helper for the counters `groups` need; the
/// questions out. A helper that cannot be asked is left out.
fn ask(ctx: &Ctx, uuid: &Uuid, groups: u32) -> Vec<(Uuid, Pid, Kind)> {
    let Ok(e) = ctx.domains.by_uuid(uuid) else { return Vec::new() };
    let Some(running) = ctx.guests.get(uuid).filter(|_| e.id.is_some()) else { return Vec::new() };
    if running.manageable(&e.def.name).is_err() {
        return Vec::new();
    }
    let mut out = Vec::new();
    if groups & group::BLOCK != 0 && !e.def.disks.is_empty() {
        let out_already = super::blockinfo::asked(ctx, uuid, running.pid);
        if out_already || running.channel.send(&HelperCommand::DiskStats, &[]).is_ok() {
            out.push((*uuid, running.pid, Kind::Disks));
        }
    }
    if groups & group::INTERFACE != 0
        && !e.def.interfaces.is_empty()
        && running.channel.send(&HelperCommand::NetStats, &[]).is_ok()
    {
        out.push((*uuid, running.pid, Kind::Nics));
    }
    out
}

/// The records with the device groups added from the counters that came
/// (and left as the domains' statistics snapshots).
fn finish(ctx: &mut Ctx, sample: Sample) -> CallValue {
    let unanswered: Vec<Uuid> = sample.waiting.iter().map(|w| w.0).collect();
    let began = sample.deadline - DEADLINE;
    let Sample { groups, mut records, disks, nics, .. } = sample;
    for (dom, params) in &mut records {
        let Ok(e) = ctx.domains.by_uuid(&dom.uuid) else { continue };
        let running = ctx.guests.get(&dom.uuid).filter(|_| e.id.is_some());
        // libvirt's order: interfaces, then disks.
        if groups & group::INTERFACE != 0 && running.is_some() {
            // The taps the broker made, by the names the host sees.
            let taps: Vec<String> =
                running.map(|r| r.nics.iter().map(|n| n.live.tap.clone()).collect()).unwrap_or_default();
            params.extend(super::ifstats::stats_group(&e.def, &taps, nics.get(&dom.uuid).map(Vec::as_slice)));
        }
        if groups & group::BLOCK != 0 {
            let live: Option<Vec<crate::domain::LiveDisk>> =
                running.map(|r| r.disks.iter().map(|d| d.live.clone()).collect());
            let counters = disks.get(&dom.uuid).map(Vec::as_slice);
            params.extend(super::blockinfo::stats_group(&e.def, live.as_deref(), counters));
        }
    }
    super::snapshots::sampled(ctx, groups, &records, &unanswered, began);
    CallValue::DomainStats(records)
}

/// Guest `uuid`'s helper `pid` reported `counters`: the bulk calls that
/// now have everything they waited for, answered.
pub fn arrived(ctx: &mut Ctx, uuid: &Uuid, pid: Pid, counters: &Counters) -> Vec<Reply> {
    for s in ctx.samples.iter_mut() {
        s.take(uuid, pid, counters);
    }
    settle(ctx, |s| s.waiting.is_empty())
}

/// The bulk calls whose deadline passed, or whose remaining helpers are
/// gone (their guests stopped), answered with what came.
pub fn overdue(ctx: &mut Ctx, now: Instant) -> Vec<Reply> {
    let guests = &ctx.guests;
    for s in ctx.samples.iter_mut() {
        s.forget_gone(|u, pid| guests.get(u).is_some_and(|r| r.pid == pid));
    }
    settle(ctx, |s| s.due(now))
}

/// Answers and forgets the bulk calls `done` picks.
fn settle(ctx: &mut Ctx, done: impl Fn(&Sample) -> bool) -> Vec<Reply> {
    let (finished, waiting): (Vec<Sample>, Vec<Sample>) = std::mem::take(&mut ctx.samples).into_iter().partition(done);
    ctx.samples = waiting;
    finished
        .into_iter()
        .map(|s| {
            let (conn, id) = (s.conn, s.reply_to);
            let value: Result<CallValue, CallError> = Ok(finish(ctx, s));
            (conn, id, value)
        })
        .collect()
}

/// The earliest deadline of a bulk call waiting for counters.
pub fn next_deadline(ctx: &Ctx) -> Option<Instant> {
    ctx.samples.iter().map(|s| s.deadline).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_waits_only_for_the_helpers_it_asked_and_never_past_its_deadline() {
        let (a, b) = (Uuid([1; 16]), Uuid([2; 16]));
        let (pa, pb) = (Pid::from_raw(100), Pid::from_raw(200));
        let now = Instant::now();
        let mut s = Sample {
            conn: 1,
            reply_to: 2,
            groups: group::DEVICES,
            records: Vec::new(),
            disks: HashMap::new(),
            nics: HashMap::new(),
            waiting: vec![(a, pa, Kind::Disks), (a, pa, Kind::Nics), (b, pb, Kind::Disks)],
            deadline: now + DEADLINE,
        };
        let disks =
            Counters::Disks(vec![DiskCounters { alias: "virtio-disk0".into(), rd_reqs: 3, ..Default::default() }]);
        // Another helper of the same guest (restarted), or counters not asked for, are not taken.
        assert!(!s.take(&a, Pid::from_raw(101), &disks));
        assert!(!s.take(&b, pb, &Counters::Nics(Vec::new())));
        assert!(s.take(&a, pa, &disks));
        assert!(!s.take(&a, pa, &disks), "taken once");
        assert_eq!(s.disks[&a][0].rd_reqs, 3);
        assert!(s.take(&a, pa, &Counters::Nics(vec![NicCounters { alias: "net0".into(), ..Default::default() }])));
        assert!(!s.due(now), "b has not answered");
        assert!(s.due(now + DEADLINE), "but the deadline passes");
        // A guest that stopped is not waited for.
        s.forget_gone(|u, _| *u != b);
        assert!(s.due(now));
        assert!(!s.disks.contains_key(&b));
    }
}
