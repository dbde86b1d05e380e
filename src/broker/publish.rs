//! What the broker publishes to the frontends so that they answer read-only
//! calls from a copy (`privsep::replica`): the domain table, sent whole
//! whenever it differs from what was sent last. The broker stays its only
//! writer; the event loop calls [`Published::changed`] before each reply and
//! each event leaves, so no client hears of a change its frontend's copy
//! lacks.

use super::domains::{Domains, Entry};
use crate::privsep::replica::{DomainRow, DomainTable};

/// A domain's row.
pub fn row(e: &Entry) -> DomainRow {
    DomainRow {
        name: e.def.name.clone(),
        uuid: e.def.uuid,
        id: e.id.unwrap_or(-1),
        state: e.state.to_libvirt(),
        persistent: e.persistent,
        autostart: e.autostart,
    }
}

/// Whether `r` is still `e`'s row (compared without building one).
fn same(r: &DomainRow, e: &Entry) -> bool {
    r.name == e.def.name
        && r.uuid == e.def.uuid
        && r.id == e.id.unwrap_or(-1)
        && r.state == e.state.to_libvirt()
        && r.persistent == e.persistent
        && r.autostart == e.autostart
}

/// The table as last built, and which frontend slots still lack it (one
/// that stopped reading gets it once it reads again, not a queue of them).
#[derive(Debug, Default)]
pub struct Published {
    table: DomainTable,
    built: bool,
    owed: Vec<bool>,
}

impl Published {
    /// Rebuilds the table from `domains` if it changed; every one of
    /// `slots` frontends is then owed it.
    pub fn refresh(&mut self, domains: &Domains, slots: usize) {
        let same_table = self.built
            && self.table.rows.len() == domains.entries().len()
            && self.table.rows.iter().zip(domains.entries()).all(|(r, e)| same(r, e));
        if !same_table {
            self.table = DomainTable { rows: domains.entries().iter().map(row).collect() };
            self.built = true;
            self.owed = vec![true; slots];
        }
    }

    /// Slot `slot` is owed the table (it just started serving).
    pub fn owe(&mut self, slot: usize) {
        if self.owed.len() <= slot {
            self.owed.resize(slot + 1, false);
        }
        self.owed[slot] = true;
    }

    /// The slots owed the table.
    pub fn owed(&self) -> Vec<usize> {
        self.owed.iter().enumerate().filter(|(_, o)| **o).map(|(i, _)| i).collect()
    }

    /// Slot `slot` got the table, or needs it no more.
    pub fn settled(&mut self, slot: usize) {
        if let Some(o) = self.owed.get_mut(slot) {
            *o = false;
        }
    }

    /// The table.
    pub fn table(&self) -> &DomainTable {
        &self.table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_owed_to_every_slot_once_per_change() {
        let dir = tempfile::tempdir().unwrap();
        let mut domains = Domains::load(super::super::store::Store::open(dir.path()).unwrap());
        let mut p = Published::default();
        p.refresh(&domains, 2);
        assert_eq!(p.owed(), [0, 1]);
        p.settled(0);
        p.settled(1);
        p.refresh(&domains, 2);
        assert!(p.owed().is_empty(), "nothing changed");
        let xml = "<domain type='kvm'><name>r</name><uuid>00000000-0000-4000-8000-000000000001</uuid>\
                   <memory>65536</memory><vcpu>1</vcpu><os><type>hvm</type><kernel>/k</kernel></os></domain>";
        domains.define(xml, 0).unwrap();
        p.refresh(&domains, 2);
        assert_eq!(p.owed(), [0, 1]);
        assert_eq!(p.table().rows.len(), 1);
        assert_eq!(p.table().list(0).unwrap()[0].name, "r");
        p.owe(3);
        assert_eq!(p.owed(), [0, 1, 3]);
    }
}
