//! The statistics snapshots the broker publishes to the frontends
//! (`privsep::snapshot`), and which of them each frontend still lacks.
//!
//! Snapshots are refreshed on request only: a bulk statistics call that
//! reached the broker leaves, when its sampling round ends (`sampling.rs`),
//! every domain's record and `virDomainGetInfo` figures (and, for a guest
//! without a balloon, its `virDomainMemoryStats`); a `dominfo` or
//! `dommemstat` the broker answered leaves its answer. Nothing samples guests periodically, so idle guests cost nothing
//! when nobody asks, and a scraper polling faster than the frontends'
//! freshness bound is answered by them, without the broker or a helper.
//!
//! A call that changes something (it mutates) drops every snapshot, and
//! the frontends hear of it before its reply: a client never reads, from a
//! snapshot, figures older than a change it was told of. Lifecycle changes
//! the guests make themselves show in the domain table, and a frontend
//! ignores a snapshot taken while the table said otherwise.

use std::collections::HashMap;
use std::time::Instant;

#[cfg(test)]
use super::domains::Entry;
use super::state::Ctx;
use super::stats::Record as StatsRecord;
use crate::domain::Uuid;
use crate::privsep::admin::ParamValue;
use crate::privsep::domstats::{group, keep};
use crate::privsep::snapshot::{self, PER_MESSAGE, Record, Snapshot, Update};
use crate::privsep::{CallError, CallValue, Query};

/// The snapshots, each with the generation that last changed it.
#[derive(Debug, Default)]
pub struct Snapshots {
    entries: HashMap<Uuid, (u64, Snapshot)>,
    generation: u64,
    /// The generation of the last clear.
    cleared: u64,
    /// Per frontend slot, the generation it has (`None`: it needs all of
    /// them, from an empty copy).
    sent: Vec<Option<u64>>,
}

impl Snapshots {
    /// Drops every snapshot (something changed).
    pub fn clear(&mut self) {
        if !self.entries.is_empty() {
            self.entries.clear();
            self.generation += 1;
            self.cleared = self.generation;
        }
    }

    /// Domain `e`'s snapshot, to be changed: its current one if it was
    /// taken in the state `e` is in, else an empty one.
    #[cfg(test)]
    fn of(&mut self, e: &Entry) -> &mut Snapshot {
        self.stamped(e.def.uuid, e.id.unwrap_or(-1), e.state.to_libvirt())
    }

    /// Domain `uuid`'s snapshot as [`Snapshots::of`], the domain being at `id` and `state`.
    fn stamped(&mut self, uuid: Uuid, id: i32, state: (i32, i32)) -> &mut Snapshot {
        self.generation += 1;
        let fresh = || Snapshot { uuid, id, state, record: None, info: None, memory: None };
        let slot = self.entries.entry(uuid).or_insert_with(|| (0, fresh()));
        if (slot.1.id, slot.1.state) != (id, state) {
            slot.1 = fresh();
        }
        slot.0 = self.generation;
        &mut slot.1
    }

    /// Frontend slot `slot` starts from an empty copy.
    pub fn owe_all(&mut self, slot: usize) {
        if self.sent.len() <= slot {
            self.sent.resize(slot + 1, None);
        }
        self.sent[slot] = None;
    }

    /// What slot `slot` lacks, in messages of at most [`PER_MESSAGE`]
    /// snapshots (none: it has everything).
    pub fn owed(&self, slot: usize) -> Vec<Update> {
        if self.sent.get(slot).copied().flatten() == Some(self.generation) {
            return Vec::new();
        }
        let has = self.sent.get(slot).copied().flatten().filter(|g| *g >= self.cleared);
        let clear = has.is_none();
        let since = has.unwrap_or(0);
        let changed: Vec<&Snapshot> = self.entries.values().filter(|(g, _)| *g > since).map(|(_, s)| s).collect();
        if changed.is_empty() {
            return if clear { vec![Update { clear, snapshots: Vec::new() }] } else { Vec::new() };
        }
        changed
            .chunks(PER_MESSAGE)
            .enumerate()
            .map(|(i, c)| Update { clear: clear && i == 0, snapshots: c.iter().map(|s| (*s).clone()).collect() })
            .collect()
    }

    /// Slot `slot` got what it lacked, or needs it no more.
    pub fn settled(&mut self, slot: usize) {
        if self.sent.len() <= slot {
            self.sent.resize(slot + 1, None);
        }
        self.sent[slot] = Some(self.generation);
    }
}

/// A sampling round that began at `began` for `groups` ended with
/// `records`; the domains in `unanswered` lack their device counters.
/// Each record becomes its domain's snapshot, with its `dominfo` figures
/// (from the record when it holds them, else read now) and (without a
/// balloon) its `dommemstat` figures, unless the domain changed state
/// while its helpers were asked.
pub fn sampled(ctx: &mut Ctx, groups: u32, records: &[StatsRecord], unanswered: &[Uuid], began: Instant) {
    let sampled = snapshot::ns_at(began);
    for (dom, params) in records {
        let Ok(e) = ctx.domains.by_uuid(&dom.uuid) else { continue };
        let (state, reason) = e.state.to_libvirt();
        let int = |field: &str| params.iter().find(|p| p.field == field).map(|p| p.value.clone());
        let moved = dom.id != e.id.unwrap_or(-1)
            || int("state.state").is_some_and(|v| v != ParamValue::Int(state))
            || int("state.reason").is_some_and(|v| v != ParamValue::Int(reason));
        if moved {
            continue;
        }
        let held = if unanswered.contains(&dom.uuid) { groups & !group::DEVICES } else { groups };
        let record = Record { sampled, groups: held, params: keep(params, held) };
        // Its `dominfo` figures are in the record too, when it has the
        // groups that hold them; else they are read now.
        let derived = super::stats::info_of_record(e, params);
        let info = if derived.is_none() { read(ctx, &dom.uuid, Query::Info) } else { None };
        // A running guest's `dommemstat` figures are in its record's balloon
        // group, unless it has a balloon (whose guest figures are not: only
        // a `dommemstat` refreshes those).
        let memory = (e.id.is_some() && !super::balloon::has_balloon(&e.def))
            .then(|| super::stats::memory_stats_of_record(params))
            .flatten();
        let s = ctx.snapshots.stamped(dom.uuid, dom.id, (state, reason));
        s.record = Some(record);
        if let Some(i) = derived {
            s.info = Some((sampled, i));
        } else if let Some(v) = info {
            answered_into(s, &Query::Info, &v);
        }
        if let Some(m) = memory {
            s.memory = Some((sampled, m));
        }
    }
}

/// The broker's answer to `query` on domain `uuid` now, when it has one.
fn read(ctx: &Ctx, uuid: &Uuid, query: Query) -> Option<CallValue> {
    super::query::query_domain(ctx, uuid, query, true).ok()
}

/// The per-domain read `query` the broker answered with `result`: its
/// snapshot's part, if it is one the frontends answer from.
pub fn answered(ctx: &mut Ctx, uuid: &Uuid, query: &Query, result: &Result<CallValue, CallError>) {
    let Ok(value) = result else { return };
    if !matches!(query, Query::Info | Query::MemoryStats { .. }) {
        return;
    }
    let Ok(e) = ctx.domains.by_uuid(uuid) else { return };
    let (id, state) = (e.id.unwrap_or(-1), e.state.to_libvirt());
    answered_into(ctx.snapshots.stamped(*uuid, id, state), query, value);
}

fn answered_into(s: &mut Snapshot, query: &Query, value: &CallValue) {
    let now = snapshot::now_ns();
    match (query, value) {
        (Query::Info, CallValue::DomainInfo(i)) => s.info = Some((now, i.clone())),
        // Only an answer with room left over holds every figure.
        (Query::MemoryStats { max, flags: 0 }, CallValue::MemoryStats(m)) if *max as usize > m.len() => {
            s.memory = Some((now, m.clone()))
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8, running: bool) -> Entry {
        let xml = format!(
            "<domain type='kvm'><name>s{n}</name><uuid>00000000-0000-4000-8000-0000000000{n:02x}</uuid>\
             <memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type>hvm</type><kernel>/k</kernel></os></domain>"
        );
        let (def, _) = crate::domain::parse(&xml, false).unwrap();
        Entry {
            def,
            persistent: true,
            autostart: false,
            id: running.then_some(n.into()),
            pid: None,
            state: if running {
                crate::broker::lifecycle::DomainState::Running(crate::broker::lifecycle::RunningReason::Booted)
            } else {
                crate::broker::lifecycle::DomainState::DEFINED
            },
        }
    }

    fn info() -> CallValue {
        CallValue::DomainInfo(crate::rpc::remote::DomainInfoRet {
            state: 1,
            max_mem: 65536,
            memory: 65536,
            nr_virt_cpu: 1,
            cpu_time: 7,
        })
    }

    #[test]
    fn each_frontend_gets_what_changed_once_and_everything_after_a_clear() {
        let mut s = Snapshots::default();
        let (a, b) = (entry(1, true), entry(2, false));
        answered_into(s.of(&a), &Query::Info, &info());
        // A new frontend gets everything, from an empty copy.
        let u = s.owed(0);
        assert_eq!(u.len(), 1);
        assert!(u[0].clear);
        assert_eq!(u[0].snapshots[0].info.as_ref().unwrap().1.cpu_time, 7);
        s.settled(0);
        assert!(s.owed(0).is_empty(), "nothing changed");
        answered_into(s.of(&b), &Query::Info, &info());
        let u = s.owed(0);
        assert_eq!((u.len(), u[0].clear, u[0].snapshots.len()), (1, false, 1), "only b changed");
        assert_eq!(u[0].snapshots[0].uuid, b.def.uuid);
        s.settled(0);
        // A memory answer cut short by the caller's room is not every figure.
        let m = CallValue::MemoryStats(vec![(6, 65536), (7, 100)]);
        answered_into(s.of(&a), &Query::MemoryStats { max: 2, flags: 0 }, &m);
        assert_eq!(s.entries[&a.def.uuid].1.memory, None);
        answered_into(s.of(&a), &Query::MemoryStats { max: 13, flags: 0 }, &m);
        assert_eq!(s.entries[&a.def.uuid].1.memory.as_ref().unwrap().1.len(), 2);
        assert!(s.entries[&a.def.uuid].1.info.is_some(), "the same state: parts add up");
        // Another state starts the domain's snapshot afresh.
        let stopped = Entry { id: None, state: crate::broker::lifecycle::DomainState::DEFINED, ..a.clone() };
        s.of(&stopped);
        assert_eq!(s.entries[&a.def.uuid].1.info, None);
        s.settled(0);
        s.clear();
        let u = s.owed(0);
        assert_eq!((u.len(), u[0].clear, u[0].snapshots.len()), (1, true, 0));
        s.settled(0);
        assert!(s.owed(0).is_empty());
        s.clear();
        assert!(s.owed(0).is_empty(), "nothing to clear");
    }

    #[test]
    fn many_snapshots_go_in_bounded_messages() {
        let mut s = Snapshots::default();
        for n in 0..(PER_MESSAGE as u8 * 2 + 3) {
            s.of(&entry(n, false));
        }
        let u = s.owed(1);
        assert_eq!(u.iter().map(|u| u.snapshots.len()).collect::<Vec<_>>(), [PER_MESSAGE, PER_MESSAGE, 3]);
        assert_eq!(u.iter().filter(|u| u.clear).count(), 1);
        assert!(u[0].clear);
    }
}
