//! The frontend's copy of the broker's domain table (`privsep::replica`)
//! and statistics snapshots (`privsep::snapshot`), and the read-only calls
//! answered from them without a round trip to the broker: listing, counting
//! and looking up domains and asking their state, persistence and
//! autostart, and, on read-only connections, bulk statistics, `dominfo` and
//! `dommemstat` while their snapshot is younger than [`FRESH`]: the calls
//! monitoring tools repeat most. The broker alone writes the copy; it sends
//! changes before any reply or event that follows them, and the server
//! reads its channel before a client's bytes, so a client never gets an
//! answer older than something it has already been told.

use crate::domain::Uuid;
use crate::privsep::domstats;
use crate::privsep::replica::{DomainRow, DomainTable};
use crate::privsep::snapshot::{FRESH, Snapshot, Update};
use crate::privsep::{Call, CallError, CallValue, Query};
use std::collections::HashMap;

/// The copy; empty until the broker sends one (calls then go to the broker).
#[derive(Debug, Default)]
pub struct Replica {
    table: Option<DomainTable>,
    snapshots: HashMap<Uuid, Snapshot>,
}

impl Replica {
    /// The broker's new table replaces the copy; snapshots of domains that
    /// are gone go with them.
    pub fn update(&mut self, table: DomainTable) {
        self.snapshots.retain(|u, _| table.rows.iter().any(|r| &r.uuid == u));
        self.table = Some(table);
    }

    /// The broker's new snapshots.
    pub fn update_stats(&mut self, update: Update) {
        if update.clear {
            self.snapshots.clear();
        }
        for s in update.snapshots {
            self.snapshots.insert(s.uuid, s);
        }
    }

    /// The answer to `call` from the copy, for the calls it can answer,
    /// exactly as the broker would give it; statistics only for a
    /// `readonly` client, from snapshots younger than [`FRESH`] at `now`
    /// (`CLOCK_MONOTONIC` ns).
    pub fn answer(&self, call: &Call, readonly: bool, now: u64) -> Option<Result<CallValue, CallError>> {
        let t = self.table.as_ref()?;
        let result = match call {
            Call::DomainStats { doms, stats, flags } if readonly => self.domain_stats(t, doms, *stats, *flags, now)?,
            Call::Query { uuid, query: query @ (Query::Info | Query::MemoryStats { .. }) } if readonly => {
                let snapshot = self.current(t, uuid)?;
                let young = |at: u64| now.saturating_sub(at) < FRESH.as_nanos() as u64;
                match (query, snapshot) {
                    (Query::Info, Snapshot { info: Some((at, info)), .. }) if young(*at) => {
                        Ok(CallValue::DomainInfo(info.clone()))
                    }
                    // Limits and flags are the broker's to judge.
                    (Query::MemoryStats { max, flags: 0 }, Snapshot { memory: Some((at, m)), .. })
                        if young(*at) && *max >= 1 && *max <= crate::rpc::stats::DOMAIN_MEMORY_STATS_MAX =>
                    {
                        Ok(CallValue::MemoryStats(m.iter().take(*max as usize).copied().collect()))
                    }
                    _ => return None,
                }
            }
            Call::DomainStats { .. } => return None,
            Call::ListAll { flags, need_results } => t.list(*flags).map(|list| {
                let count = list.len() as u32;
                CallValue::Domains { list: if *need_results { list } else { Vec::new() }, count }
            }),
            Call::NumOfDomains => t.list(1).map(|l| CallValue::Int(l.len() as i64)),
            Call::LookupById(id) => t.by_id(*id).map(|r| CallValue::Domain(r.handle())),
            Call::LookupByName(name) => t.by_name(name).map(|r| CallValue::Domain(r.handle())),
            Call::LookupByUuid(uuid) => t.by_uuid(uuid).map(|r| CallValue::Domain(r.handle())),
            // Flags, and every other question, are the broker's to judge.
            Call::Query {
                uuid,
                query: query @ (Query::State { flags: 0 } | Query::IsActive | Query::IsPersistent | Query::Autostart),
            } => t.by_uuid(uuid).map(|r| match query {
                Query::State { .. } => CallValue::State { state: r.state.0, reason: r.state.1 },
                Query::IsActive => CallValue::Int((r.id >= 0).into()),
                Query::IsPersistent => CallValue::Int(r.persistent.into()),
                _ => CallValue::Int(r.autostart.into()),
            }),
            _ => return None,
        };
        Some(result.map_err(CallError::clipped))
    }

    /// Domain `uuid`'s snapshot, if it was taken in the state the table
    /// shows it in.
    fn current(&self, t: &DomainTable, uuid: &Uuid) -> Option<&Snapshot> {
        let row: &DomainRow = t.by_uuid(uuid).ok()?;
        self.snapshots.get(uuid).filter(|s| s.id == row.id && s.state == row.state)
    }

    /// `virConnectGetAllDomainStats` / `virDomainListGetStats` from the
    /// snapshots, when every domain picked has a young one holding the
    /// groups asked for; the broker's rules (`privsep::domstats`) pick the
    /// groups, the domains and the fields.
    fn domain_stats(
        &self,
        t: &DomainTable,
        doms: &[Uuid],
        stats: u32,
        flags: u32,
        now: u64,
    ) -> Option<Result<CallValue, CallError>> {
        let groups = match domstats::plan(stats, flags, doms.len()) {
            Ok(g) => g,
            Err(e) => return Some(Err(e)),
        };
        let matching = match t.list(flags & domstats::FILTERS) {
            Ok(m) => m,
            Err(e) => return Some(Err(e)),
        };
        let mut records = Vec::new();
        for d in domstats::pick(&matching, doms) {
            let r = self.current(t, &d.uuid)?.record.as_ref()?;
            let young = now.saturating_sub(r.sampled) < FRESH.as_nanos() as u64;
            if !young || r.groups & groups != groups {
                return None;
            }
            records.push((d.clone(), domstats::keep(&r.params, groups)));
        }
        Some(Ok(CallValue::DomainStats(records)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privsep::replica::DomainRow;

    fn row(name: &str, n: u8, id: i32) -> DomainRow {
        let state = if id >= 0 { (1, 1) } else { (5, 0) };
        DomainRow {
            name: name.into(),
            uuid: crate::domain::Uuid([n; 16]),
            id,
            state,
            persistent: true,
            autostart: false,
        }
    }

    #[test]
    fn reads_are_answered_from_the_copy_once_there_is_one() {
        let mut r = Replica::default();
        assert_eq!(r.answer(&Call::NumOfDomains, false, 0), None, "no copy yet: the broker answers");
        r.update(DomainTable { rows: vec![row("a", 1, 3), row("b", 2, -1)] });
        let names = |flags| match r.answer(&Call::ListAll { flags, need_results: true }, false, 0) {
            Some(Ok(CallValue::Domains { list, count })) => {
                assert_eq!(list.len(), count as usize);
                list.into_iter().map(|d| d.name).collect::<Vec<_>>()
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(names(0), ["a", "b"]);
        assert_eq!(names(1), ["a"]);
        assert_eq!(names(2), ["b"]);
        assert_eq!(r.answer(&Call::NumOfDomains, false, 0), Some(Ok(CallValue::Int(1))));
        assert!(matches!(r.answer(&Call::LookupById(3), false, 0), Some(Ok(CallValue::Domain(d))) if d.name == "a"));
        assert_eq!(r.answer(&Call::LookupById(-1), false, 0), Some(Err(CallError::NoDomainId(-1))));
        assert_eq!(r.answer(&Call::LookupByName("c".into()), false, 0), Some(Err(CallError::NoDomainName("c".into()))));
        assert!(
            matches!(r.answer(&Call::LookupByUuid(crate::domain::Uuid([2; 16])), false, 0), Some(Ok(CallValue::Domain(d))) if d.id == -1)
        );
        assert!(matches!(
            r.answer(&Call::ListAll { flags: 1 << 20, need_results: true }, false, 0),
            Some(Err(CallError::UnsupportedFlags { .. }))
        ));
        assert_eq!(r.answer(&Call::GetHostname, false, 0), None, "not a replica call");
        let ask = |uuid, query| r.answer(&Call::Query { uuid: crate::domain::Uuid(uuid), query }, false, 0);
        assert_eq!(ask([1; 16], Query::State { flags: 0 }), Some(Ok(CallValue::State { state: 1, reason: 1 })));
        assert_eq!(ask([2; 16], Query::IsActive), Some(Ok(CallValue::Int(0))));
        assert_eq!(ask([2; 16], Query::IsPersistent), Some(Ok(CallValue::Int(1))));
        assert!(matches!(ask([9; 16], Query::IsActive), Some(Err(CallError::NoDomainUuid(_)))));
        assert_eq!(ask([1; 16], Query::State { flags: 1 }), None, "flags are the broker's to refuse");
        assert_eq!(ask([1; 16], Query::Info), None);
    }

    fn param(field: &str, v: u64) -> crate::privsep::admin::Param {
        crate::privsep::admin::Param { field: field.into(), value: crate::privsep::admin::ParamValue::ULLong(v) }
    }

    /// Domain `n`'s snapshot, taken at `at` in `row`'s state, holding `groups`.
    fn snapshot(row: &DomainRow, at: u64, groups: u32) -> Snapshot {
        let all =
            vec![param("state.state", 1), param("cpu.time", 5), param("balloon.current", 64), param("block.count", 0)];
        Snapshot {
            uuid: row.uuid,
            id: row.id,
            state: row.state,
            record: Some(crate::privsep::snapshot::Record {
                sampled: at,
                groups,
                params: domstats::keep(&all, groups),
            }),
            info: Some((
                at,
                crate::rpc::remote::DomainInfoRet { state: 1, max_mem: 64, memory: 64, nr_virt_cpu: 1, cpu_time: 5 },
            )),
            memory: Some((at, vec![(6, 64), (7, 9)])),
        }
    }

    #[test]
    fn statistics_are_answered_from_young_snapshots_on_read_only_connections_only() {
        use domstats::group;
        let fresh = FRESH.as_nanos() as u64;
        let (a, b) = (row("a", 1, 3), row("b", 2, -1));
        let mut r = Replica::default();
        r.update(DomainTable { rows: vec![a.clone(), b.clone()] });
        let all = Call::DomainStats { doms: Vec::new(), stats: 0, flags: 0 };
        assert_eq!(r.answer(&all, true, 10), None, "no snapshots yet");
        r.update_stats(Update { clear: false, snapshots: vec![snapshot(&a, 10, group::SUPPORTED)] });
        assert_eq!(r.answer(&all, true, 11), None, "b has none");
        r.update_stats(Update { clear: false, snapshots: vec![snapshot(&b, 20, group::SUPPORTED & !group::DEVICES)] });
        assert_eq!(r.answer(&all, true, 21), None, "b lacks its device groups");
        let cpu = Call::DomainStats { doms: Vec::new(), stats: group::STATE | group::CPU_TOTAL, flags: 0 };
        let Some(Ok(CallValue::DomainStats(recs))) = r.answer(&cpu, true, 21) else { panic!() };
        let fields: Vec<(String, Vec<String>)> =
            recs.into_iter().map(|(d, p)| (d.name, p.into_iter().map(|p| p.field).collect())).collect();
        assert_eq!(
            fields,
            [
                ("a".into(), vec!["state.state".into(), "cpu.time".into()]),
                ("b".into(), vec!["state.state".into(), "cpu.time".into()])
            ]
        );
        assert_eq!(r.answer(&cpu, false, 21), None, "read-write connections get fresh figures");
        assert_eq!(r.answer(&cpu, true, 10 + fresh), None, "a's is too old");
        // The broker's rules: list filters, domains named, enforce.
        let active = Call::DomainStats { doms: Vec::new(), stats: group::STATE, flags: 1 };
        assert!(
            matches!(r.answer(&active, true, 21), Some(Ok(CallValue::DomainStats(v))) if v.len() == 1 && v[0].0.name == "a")
        );
        let named = Call::DomainStats { doms: vec![b.uuid, Uuid([9; 16])], stats: group::BALLOON, flags: 0 };
        assert!(
            matches!(r.answer(&named, true, 21), Some(Ok(CallValue::DomainStats(v))) if v.len() == 1 && v[0].1 == [param("balloon.current", 64)])
        );
        let enforced = Call::DomainStats { doms: Vec::new(), stats: 64, flags: 1 << 31 };
        assert!(matches!(r.answer(&enforced, true, 21), Some(Err(CallError::ArgumentUnsupported(_)))));
        // Per domain.
        let ask = |r: &Replica, query, now| r.answer(&Call::Query { uuid: a.uuid, query }, true, now);
        assert!(matches!(ask(&r, Query::Info, 11), Some(Ok(CallValue::DomainInfo(i))) if i.cpu_time == 5));
        assert_eq!(
            ask(&r, Query::MemoryStats { max: 1, flags: 0 }, 11),
            Some(Ok(CallValue::MemoryStats(vec![(6, 64)])))
        );
        assert_eq!(
            ask(&r, Query::MemoryStats { max: 13, flags: 0 }, 11),
            Some(Ok(CallValue::MemoryStats(vec![(6, 64), (7, 9)])))
        );
        assert_eq!(ask(&r, Query::MemoryStats { max: 13, flags: 1 }, 11), None, "flags are the broker's to refuse");
        assert_eq!(ask(&r, Query::MemoryStats { max: 0, flags: 0 }, 11), None);
        assert_eq!(ask(&r, Query::Info, 10 + fresh), None);
        // A domain that changed state since its snapshot is the broker's again.
        let paused = DomainRow { state: (3, 1), ..a.clone() };
        r.update(DomainTable { rows: vec![paused, b.clone()] });
        assert_eq!(ask(&r, Query::Info, 11), None);
        assert_eq!(r.answer(&cpu, true, 21), None);
        // A domain that is gone takes its snapshot with it; a clear takes all.
        r.update(DomainTable { rows: vec![b.clone()] });
        assert_eq!(r.snapshots.len(), 1);
        r.update_stats(Update { clear: true, snapshots: Vec::new() });
        assert!(r.snapshots.is_empty());
    }
}
