//! The frontend's copy of the broker's domain table (`privsep::replica`),
//! and the read-only calls answered from it without a round trip to the
//! broker: listing, counting and looking up domains and asking their state,
//! persistence and autostart, the calls monitoring tools repeat most. The broker alone writes the table; it sends a new one
//! before any reply or event that follows a change, and the server reads
//! its channel before a client's bytes, so a client never gets an answer
//! older than something it has already been told.

use crate::privsep::replica::DomainTable;
use crate::privsep::{Call, CallError, CallValue, Query};

/// The copy; empty until the broker sends one (calls then go to the broker).
#[derive(Debug, Default)]
pub struct Replica {
    table: Option<DomainTable>,
}

impl Replica {
    /// The broker's new table replaces the copy.
    pub fn update(&mut self, table: DomainTable) {
        self.table = Some(table);
    }

    /// The answer to `call` from the copy, for the calls it can answer,
    /// exactly as the broker would give it.
    pub fn answer(&self, call: &Call) -> Option<Result<CallValue, CallError>> {
        let t = self.table.as_ref()?;
        let result = match call {
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
        assert_eq!(r.answer(&Call::NumOfDomains), None, "no copy yet: the broker answers");
        r.update(DomainTable { rows: vec![row("a", 1, 3), row("b", 2, -1)] });
        let names = |flags| match r.answer(&Call::ListAll { flags, need_results: true }) {
            Some(Ok(CallValue::Domains { list, count })) => {
                assert_eq!(list.len(), count as usize);
                list.into_iter().map(|d| d.name).collect::<Vec<_>>()
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(names(0), ["a", "b"]);
        assert_eq!(names(1), ["a"]);
        assert_eq!(names(2), ["b"]);
        assert_eq!(r.answer(&Call::NumOfDomains), Some(Ok(CallValue::Int(1))));
        assert!(matches!(r.answer(&Call::LookupById(3)), Some(Ok(CallValue::Domain(d))) if d.name == "a"));
        assert_eq!(r.answer(&Call::LookupById(-1)), Some(Err(CallError::NoDomainId(-1))));
        assert_eq!(r.answer(&Call::LookupByName("c".into())), Some(Err(CallError::NoDomainName("c".into()))));
        assert!(
            matches!(r.answer(&Call::LookupByUuid(crate::domain::Uuid([2; 16]))), Some(Ok(CallValue::Domain(d))) if d.id == -1)
        );
        assert!(matches!(
            r.answer(&Call::ListAll { flags: 1 << 20, need_results: true }),
            Some(Err(CallError::UnsupportedFlags { .. }))
        ));
        assert_eq!(r.answer(&Call::GetHostname), None, "not a replica call");
        let ask = |uuid, query| r.answer(&Call::Query { uuid: crate::domain::Uuid(uuid), query });
        assert_eq!(ask([1; 16], Query::State { flags: 0 }), Some(Ok(CallValue::State { state: 1, reason: 1 })));
        assert_eq!(ask([2; 16], Query::IsActive), Some(Ok(CallValue::Int(0))));
        assert_eq!(ask([2; 16], Query::IsPersistent), Some(Ok(CallValue::Int(1))));
        assert!(matches!(ask([9; 16], Query::IsActive), Some(Err(CallError::NoDomainUuid(_)))));
        assert_eq!(ask([1; 16], Query::State { flags: 1 }), None, "flags are the broker's to refuse");
        assert_eq!(ask([1; 16], Query::Info), None);
    }
}
