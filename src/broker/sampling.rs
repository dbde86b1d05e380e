//! The device groups of the bulk statistics (`net.*`, `block.*` of
//! `virConnectGetAllDomainStats`), whose counters live in the helpers.
//!
//! One call (a round) asks every running guest it covers at once
//! (`DiskStats`, `NetStats`, through each helper's queue of questions,
//! `helper_asks.rs`, never waiting) and is answered when all of them have
//! reported or at [`DEADLINE`], whichever comes first: a guest that did not
//! answer in time is left without its counters (its names, paths and sizes
//! are still there), and nothing waits on a helper, neither the call nor
//! the broker's loop. A read already out to a helper (a `domblkstat`'s, an
//! earlier round's) serves the round too.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::calls::{Answer, Caller};
use super::helper_asks::{Kind, Question, Reply, Waiter};
use super::state::Ctx;
use super::stats::{Record, group};
use crate::domain::Uuid;
use crate::privsep::helper::{DiskCounters, NicCounters};
use crate::privsep::{CallError, CallValue};

/// How long a bulk call waits for the helpers' counters.
pub const DEADLINE: Duration = Duration::from_millis(500);

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
    /// Its number, by which the helpers' queues name it.
    round: u64,
    conn: u64,
    reply_to: u32,
    groups: u32,
    /// The records as the broker alone could fill them.
    records: Vec<Record>,
    disks: HashMap<Uuid, Vec<DiskCounters>>,
    nics: HashMap<Uuid, Vec<NicCounters>>,
    /// The helpers still to answer.
    waiting: Vec<(Uuid, Kind)>,
    /// The guests whose counters will not come (their helper ended, skipped
    /// the question, or let its deadline pass): their records are not whole,
    /// so no snapshot may stand for them.
    missed: Vec<Uuid>,
    deadline: Instant,
}

/// The bulk calls waiting for counters.
#[derive(Debug, Default)]
pub struct Samples {
    open: Vec<Sample>,
    /// The number of the next round.
    next: u64,
}

impl Sample {
    /// Takes `counters` from guest `uuid` if this call waits for them;
    /// whether it did.
    fn take(&mut self, uuid: &Uuid, counters: &Counters) -> bool {
        if !self.forget(uuid, counters.kind()) {
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

    /// Stops waiting for guest `uuid`'s counters of `kind`; whether it did.
    fn forget(&mut self, uuid: &Uuid, kind: Kind) -> bool {
        let before = self.waiting.len();
        self.waiting.retain(|w| *w != (*uuid, kind));
        self.waiting.len() != before
    }

    /// Stops waiting for counters that will not come, and remembers whose
    /// record they leave short.
    fn give_up(&mut self, uuid: &Uuid, kind: Kind) {
        if self.forget(uuid, kind) {
            self.missed.push(*uuid);
        }
    }

    /// The guests whose records lack counters the call asked for.
    fn unanswered(&self) -> Vec<Uuid> {
        self.waiting.iter().map(|w| w.0).chain(self.missed.iter().copied()).collect()
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
    if groups & group::BALLOON != 0 {
        // Fresh balloon figures for the next call (this one has the last ones).
        let uuids: Vec<Uuid> = records.iter().map(|(d, _)| d.uuid).collect();
        for uuid in &uuids {
            super::balloon::refresh(ctx, uuid);
        }
    }
    let round = ctx.samples.next;
    ctx.samples.next += 1;
    let mut sample = Sample {
        round,
        conn: caller.conn,
        reply_to: caller.request,
        groups,
        records,
        disks: HashMap::new(),
        nics: HashMap::new(),
        waiting: Vec::new(),
        missed: Vec::new(),
        deadline: Instant::now() + DEADLINE,
    };
    if groups & group::DEVICES != 0 {
        for (dom, _) in &sample.records {
            sample.waiting.extend(ask(ctx, round, &dom.uuid, groups, sample.deadline));
        }
    }
    if sample.waiting.is_empty() {
        return Answer::Now(Ok(finish(ctx, sample)));
    }
    ctx.samples.open.push(sample);
    Answer::Later
}

/// Asks running guest `uuid`'s helper, for round `round`, for the counters
/// `groups` need; the questions out. A helper that cannot be asked is left
/// out.
fn ask(ctx: &mut Ctx, round: u64, uuid: &Uuid, groups: u32, deadline: Instant) -> Vec<(Uuid, Kind)> {
    let Ok(e) = ctx.domains.by_uuid(uuid) else { return Vec::new() };
    if e.id.is_none() || !ctx.guests.contains_key(uuid) {
        return Vec::new();
    }
    let mut wanted = Vec::new();
    if groups & group::BLOCK != 0 && !e.def.disks.is_empty() {
        wanted.push(Question::DiskStats);
    }
    if groups & group::INTERFACE != 0 && !e.def.interfaces.is_empty() {
        wanted.push(Question::NetStats);
    }
    wanted
        .into_iter()
        .filter_map(|q| {
            let kind = q.kind();
            super::helper_asks::ask(ctx, uuid, q, Some(Waiter::Round(round)), deadline).ok().map(|()| (*uuid, kind))
        })
        .collect()
}

/// The records with the device groups added from the counters that came
/// (and left as the domains' statistics snapshots).
fn finish(ctx: &mut Ctx, sample: Sample) -> CallValue {
    let unanswered = sample.unanswered();
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

/// Guest `uuid`'s helper reported `counters` for round `round`: the round
/// answered if that was all it waited for.
pub fn arrived(ctx: &mut Ctx, round: u64, uuid: &Uuid, counters: Counters) -> Vec<Reply> {
    let Some(s) = ctx.samples.open.iter_mut().find(|s| s.round == round) else { return Vec::new() };
    s.take(uuid, &counters);
    settle(ctx, |s| s.waiting.is_empty())
}

/// Guest `uuid`'s helper will not report its counters of `kind` for round
/// `round` (it ended, or skipped the question): the round answered if
/// they were all it waited for.
pub fn given_up(ctx: &mut Ctx, round: u64, uuid: &Uuid, kind: Kind) -> Vec<Reply> {
    let Some(s) = ctx.samples.open.iter_mut().find(|s| s.round == round) else { return Vec::new() };
    s.give_up(uuid, kind);
    settle(ctx, |s| s.waiting.is_empty())
}

/// The bulk calls whose deadline passed, answered with what came.
pub fn overdue(ctx: &mut Ctx, now: Instant) -> Vec<Reply> {
    settle(ctx, |s| s.due(now))
}

/// Answers and forgets the bulk calls `done` picks.
fn settle(ctx: &mut Ctx, done: impl Fn(&Sample) -> bool) -> Vec<Reply> {
    let (finished, waiting): (Vec<Sample>, Vec<Sample>) =
        std::mem::take(&mut ctx.samples.open).into_iter().partition(done);
    ctx.samples.open = waiting;
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
    ctx.samples.open.iter().map(|s| s.deadline).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_waits_only_for_the_helpers_it_asked_and_never_past_its_deadline() {
        let (a, b) = (Uuid([1; 16]), Uuid([2; 16]));
        let now = Instant::now();
        let mut s = Sample {
            round: 1,
            conn: 1,
            reply_to: 2,
            groups: group::DEVICES,
            records: Vec::new(),
            disks: HashMap::new(),
            nics: HashMap::new(),
            waiting: vec![(a, Kind::Disks), (a, Kind::Nics), (b, Kind::Disks)],
            missed: Vec::new(),
            deadline: now + DEADLINE,
        };
        let disks =
            Counters::Disks(vec![DiskCounters { alias: "virtio-disk0".into(), rd_reqs: 3, ..Default::default() }]);
        // Counters not asked for are not taken.
        assert!(!s.take(&b, &Counters::Nics(Vec::new())));
        assert!(s.take(&a, &disks));
        assert!(!s.take(&a, &disks), "taken once");
        assert_eq!(s.disks[&a][0].rd_reqs, 3);
        assert!(s.take(&a, &Counters::Nics(vec![NicCounters { alias: "net0".into(), ..Default::default() }])));
        assert!(!s.due(now), "b has not answered");
        assert!(s.due(now + DEADLINE), "but the deadline passes");
        assert_eq!(s.unanswered(), [b], "at the deadline b's record is short");
        // A helper that will not answer (its guest stopped) is not waited
        // for, and its record is still known to be short (no snapshot of it).
        s.give_up(&b, Kind::Disks);
        assert!(s.due(now));
        assert!(!s.disks.contains_key(&b));
        assert_eq!(s.unanswered(), [b]);
    }
}
