//! A function's MSI-X vectors wired to the guest: each vector has a GSI
//! of its own, whose route (owned VM-wide by an [`MsiRoutes`]) follows
//! the message the guest wrote in the table, and an eventfd KVM injects
//! that GSI from (an irqfd). Raising an unmasked vector is one eventfd
//! write from whatever thread completed the work, and no vCPU leaves the
//! guest for it; a masked vector sets its pending bit instead and is
//! written when the guest unmasks it.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::msix::{MsiMessage, Msix, Signal, Update};

/// The VM-wide GSI routing table, as far as MSI vectors go.
pub trait MsiRoutes: Send + Sync {
    /// Points `gsi` at `message`, or at nothing (`None`: a vector that is
    /// disabled or whose message is not one a local APIC accepts).
    fn route(&self, gsi: u32, message: Option<MsiMessage>);
}

/// One vector's GSI and the eventfd that injects it.
#[derive(Clone)]
pub struct Vector {
    /// Its GSI.
    pub gsi: u32,
    /// The irqfd KVM listens on for it.
    pub fd: Arc<EventFd>,
}

/// A function's MSI-X state and the vectors it drives.
pub struct MsixIrq {
    state: Mutex<Msix>,
    vectors: Vec<Vector>,
    routes: Arc<dyn MsiRoutes>,
}

impl MsixIrq {
    /// A table of `vectors.len()` vectors (at most [`super::msix::MAX_VECTORS`]).
    pub fn new(vectors: Vec<Vector>, routes: Arc<dyn MsiRoutes>) -> MsixIrq {
        let state = Msix::new(vectors.len() as u16);
        let mut vectors = vectors;
        vectors.truncate(usize::from(state.vectors()));
        MsixIrq { state: Mutex::new(state), vectors, routes }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Msix> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Vectors in the table.
    pub fn vectors(&self) -> u16 {
        self.vectors.len() as u16
    }

    /// The capability body (see [`Msix::capability`]).
    pub fn capability(&self, bar: u8, table_offset: u32, pba_offset: u32) -> [u8; 10] {
        self.lock().capability(bar, table_offset, pba_offset)
    }

    /// The table's and the PBA's sizes in bytes.
    pub fn lens(&self) -> (u64, u64) {
        let s = self.lock();
        (s.table_len(), s.pba_len())
    }

    /// Raises `vector` if MSI-X is on: `false` when it is off, so the
    /// caller uses INTx. An unknown vector (NO_VECTOR among them) raises
    /// nothing.
    pub fn signal(&self, vector: u16) -> bool {
        let mut s = self.lock();
        if !s.enabled() {
            return false;
        }
        if s.signal(vector) == Signal::Deliver {
            self.fire(vector);
        }
        true
    }

    fn fire(&self, vector: u16) {
        if let Some(v) = self.vectors.get(usize::from(vector)) {
            // Fails only when the counter would overflow: one is pending anyway.
            let _ = v.fd.write(1);
        }
    }

    fn apply(&self, s: &Msix, updates: Vec<Update>) {
        for u in updates {
            match u {
                Update::Message(v) if s.enabled() => {
                    if let Some(vec) = self.vectors.get(usize::from(v)) {
                        self.routes.route(vec.gsi, s.message(v).filter(lapic_message));
                    }
                }
                Update::Message(_) => {}
                Update::Fire(v) => self.fire(v),
            }
        }
    }

    /// The guest wrote the message control register.
    pub fn set_control(&self, control: u16) {
        let mut s = self.lock();
        let was = s.enabled();
        let updates = s.set_control(control);
        if was && !s.enabled() {
            for v in &self.vectors {
                self.routes.route(v.gsi, None);
            }
        }
        self.apply(&s, updates);
    }

    /// A guest read of the table.
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        self.lock().table_read(offset, data);
    }

    /// A guest write to the table.
    pub fn table_write(&self, offset: u64, data: &[u8]) {
        let mut s = self.lock();
        let updates = s.table_write(offset, data);
        self.apply(&s, updates);
    }

    /// A guest read of the PBA.
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        self.lock().pba_read(offset, data);
    }
}

/// Whether `m` is an interrupt message to a local APIC (0xFEEx_xxxx, no
/// high address bits): anything else is not routed, so a guest's garbage
/// never reaches (and never fails) the VM-wide routing table.
fn lapic_message(m: &MsiMessage) -> bool {
    m.address >> 20 == 0xfee
}

#[cfg(test)]
pub mod testing {
    //! A routing table that records what it was told.

    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::{MsiMessage, MsiRoutes};

    /// GSI to message, as last routed.
    #[derive(Default)]
    pub struct RecordedRoutes(pub Mutex<BTreeMap<u32, Option<MsiMessage>>>);

    impl MsiRoutes for RecordedRoutes {
        fn route(&self, gsi: u32, message: Option<MsiMessage>) {
            self.0.lock().unwrap().insert(gsi, message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::RecordedRoutes;
    use super::*;
    use crate::pci::msix::{CONTROL_ENABLE, CONTROL_FUNCTION_MASK};

    fn irq(n: u32) -> (MsixIrq, Arc<RecordedRoutes>, Vec<Arc<EventFd>>) {
        let routes = Arc::new(RecordedRoutes::default());
        let fds: Vec<_> = (0..n).map(|_| Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())).collect();
        let vectors = fds.iter().enumerate().map(|(i, fd)| Vector { gsi: 24 + i as u32, fd: fd.clone() }).collect();
        (MsixIrq::new(vectors, routes.clone()), routes, fds)
    }

    #[test]
    fn routes_follow_the_table_and_only_lapic_messages_are_routed() {
        let (m, routes, _) = irq(2);
        m.table_write(0, &0xfee0_1000u32.to_le_bytes());
        m.table_write(8, &0x45u32.to_le_bytes());
        assert!(routes.0.lock().unwrap().is_empty(), "nothing routed while disabled");
        m.set_control(CONTROL_ENABLE);
        let want = MsiMessage { address: 0xfee0_1000, data: 0x45 };
        assert_eq!(routes.0.lock().unwrap()[&24], Some(want));
        assert_eq!(routes.0.lock().unwrap()[&25], None, "an unprogrammed vector routes nowhere");
        m.table_write(16, &0x1234_0000u32.to_le_bytes());
        m.table_write(24, &0x46u32.to_le_bytes());
        assert_eq!(routes.0.lock().unwrap()[&25], None, "not a local APIC address");
        m.set_control(0);
        assert_eq!(routes.0.lock().unwrap()[&24], None, "disabling unroutes");
    }

    #[test]
    fn masked_vectors_pend_and_fire_on_unmask_and_disabled_means_intx() {
        let (m, _, fds) = irq(2);
        assert!(!m.signal(0), "MSI-X off: the caller uses INTx");
        m.set_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        m.table_write(12, &0u32.to_le_bytes());
        assert!(m.signal(0));
        assert!(fds[0].read().is_err(), "masked: nothing written");
        let mut pba = [0u8; 8];
        m.pba_read(0, &mut pba);
        assert_eq!(pba[0], 1);
        m.set_control(CONTROL_ENABLE);
        assert_eq!(fds[0].read().unwrap(), 1, "fired on unmask");
        assert!(m.signal(0));
        assert_eq!(fds[0].read().unwrap(), 1, "unmasked: straight to the irqfd");
        assert!(m.signal(0xffff), "NO_VECTOR: nothing raised, and no INTx either");
        assert!(fds.iter().all(|f| f.read().is_err()));
    }
}
