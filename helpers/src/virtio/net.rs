//! virtio-net (virtio 1.2, 5.1): one receive and one transmit queue over a
//! tap the broker made, served by the interface's own thread ([`Worker`],
//! `helper-net<N>`, under the `net` filter), never a vCPU thread.
//!
//! Offered: VERSION_1, MAC (the domain XML's), MRG_RXBUF, STATUS (link state the host
//! sets with [`Control::set_link`]; a change raises a configuration
//! interrupt), MTU when the domain sets one, EVENT_IDX, and the checksum
//! and TSO offloads only when the tap takes them all (TUNSETOFFLOAD), else
//! none.
//!
//! **Notifications.** Where every kick and interrupt is a VM exit, their
//! number sets the rate. With EVENT_IDX a pass serves all that is there,
//! then asks for the next kick (avail_event) and looks once more, so the
//! driver does not kick a busy device and no chain added meanwhile is left
//! behind; each queue gets at most one interrupt per pass, and only if the
//! driver's used_event lies in what the pass used. A wake-up that was only
//! a transmit kick does not read the tap (poll says whether it has frames).
//! The tap carries the same 12-byte `virtio_net_hdr_v1` as the queues, so
//! a frame's header passes through once checked ([`datapath`]). With the
//! link down, frames both ways are consumed and counted as dropped.

pub mod datapath;

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use libvirtd::privsep::helper::{NicConfig, NicCounters};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use self::datapath::{Counters, Datapath, OFFLOADS, Pass, Tap};
use super::{ActivateError, F_EVENT_IDX, VirtioDevice, VirtioInterrupt};

/// virtio device type.
pub const DEVICE_TYPE: u16 = 1;
/// Each queue's largest size.
pub const QUEUE_SIZE: u16 = 256;
/// VIRTIO_NET_F_MTU.
pub const F_MTU: u64 = 1 << 3;
/// VIRTIO_NET_F_MAC.
pub const F_MAC: u64 = 1 << 5;
/// VIRTIO_NET_F_STATUS.
pub const F_STATUS: u64 = 1 << 16;
/// VIRTIO_NET_S_LINK_UP in the configuration's `status`.
pub const S_LINK_UP: u16 = 1;
/// The smallest MTU a device may offer (virtio 1.2, 5.1.4.1).
pub const MIN_MTU: u16 = 68;
const RX: usize = 0;
const TX: usize = 1;

/// What the device, its thread and the control thread share.
#[derive(Debug)]
struct Shared {
    link_up: AtomicBool,
    counters: Arc<Counters>,
}

/// What the thread serves once the driver is ready.
struct Active {
    rx: Queue,
    tx: Queue,
    memory: GuestMemoryMmap,
    interrupt: Arc<dyn VirtioInterrupt>,
    features: u64,
    /// The tap's offloads are set for these features.
    offloads_set: bool,
}

type Slot = Arc<Mutex<Option<Active>>>;

/// The device side the transport sees.
pub struct Net {
    mac: [u8; 6],
    mtu: Option<u16>,
    features: u64,
    events: [Arc<EventFd>; 2],
    shared: Arc<Shared>,
    active: Slot,
    wake: Arc<EventFd>,
}

/// The interface's thread side, before it runs.
pub struct Worker {
    datapath: Datapath,
    events: [Arc<EventFd>; 2],
    shared: Arc<Shared>,
    active: Slot,
    wake: Arc<EventFd>,
    /// The link state the driver was last told of.
    told_up: bool,
    /// The guest has no receive buffer: the tap waits for its kick.
    starved: bool,
}

/// The control thread's handle: counters and link state.
pub struct Control {
    alias: String,
    shared: Arc<Shared>,
    wake: Arc<EventFd>,
}

impl Control {
    /// The interface's alias.
    pub fn alias(&self) -> &str {
        &self.alias
    }

    /// Sets the link state the guest sees; its thread tells the driver.
    pub fn set_link(&self, up: bool) {
        if self.shared.link_up.swap(up, Ordering::SeqCst) != up {
            let _ = self.wake.write(1);
        }
    }

    /// The counters and link state, as `NetStats` carries them.
    pub fn counters(&self) -> NicCounters {
        self.shared.counters.snapshot(&self.alias, self.shared.link_up.load(Ordering::SeqCst))
    }
}

impl Net {
    /// The device `config` describes over `tap`, its thread's side and the
    /// control thread's handle. Probes the tap's offloads (run before the
    /// process is confined).
    pub fn new(config: &NicConfig, tap: Tap) -> std::io::Result<(Net, Worker, Control)> {
        let events = [Arc::new(EventFd::new(libc::EFD_NONBLOCK)?), Arc::new(EventFd::new(libc::EFD_NONBLOCK)?)];
        let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared { link_up: AtomicBool::new(config.link_up), counters: counters.clone() });
        let mut features = F_MAC | F_STATUS | datapath::F_MRG_RXBUF | F_EVENT_IDX;
        if config.mtu.is_some() {
            features |= F_MTU;
        }
        if tap.probe_offloads() {
            features |= OFFLOADS;
        }
        let active: Slot = Arc::default();
        let net = Net {
            mac: config.mac,
            mtu: config.mtu,
            features,
            events: events.clone(),
            shared: shared.clone(),
            active: active.clone(),
            wake: wake.clone(),
        };
        let worker = Worker {
            datapath: Datapath::new(tap, counters),
            events,
            shared: shared.clone(),
            active,
            wake: wake.clone(),
            told_up: config.link_up,
            starved: false,
        };
        Ok((net, worker, Control { alias: config.alias.clone(), shared, wake }))
    }

    /// The configuration space: mac, status, max_virtqueue_pairs, mtu.
    fn config(&self) -> [u8; 12] {
        let mut c = [0u8; 12];
        c[0..6].copy_from_slice(&self.mac);
        let status = if self.shared.link_up.load(Ordering::SeqCst) { S_LINK_UP } else { 0 };
        c[6..8].copy_from_slice(&status.to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c[10..12].copy_from_slice(&self.mtu.unwrap_or(0).to_le_bytes());
        c
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn queue_events(&self) -> Vec<Arc<EventFd>> {
        self.events.to_vec()
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset).ok().and_then(|o| config.get(o + i)).copied().unwrap_or(0);
        }
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        features: u64,
        queues: Vec<Queue>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        let mut queues = queues.into_iter().filter(|q| q.ready());
        let (Some(rx), Some(tx)) = (queues.next(), queues.next()) else {
            return Err(ActivateError("the receive and transmit queues are not both enabled".into()));
        };
        let active = Active { rx, tx, memory, interrupt, features, offloads_set: false };
        *self.active.lock().unwrap_or_else(|p| p.into_inner()) = Some(active);
        // Frames queued before DRIVER_OK are sent now.
        let _ = self.wake.write(1);
        Ok(())
    }

    fn reset(&mut self) {
        // Waits for the pass in flight, if any: a reset completes after it.
        *self.active.lock().unwrap_or_else(|p| p.into_inner()) = None;
        // The thread looks at the tap again (a starved one had stopped), to drop what comes.
        let _ = self.wake.write(1);
    }
}

impl Worker {
    /// Starts the thread, which runs `confine` (its seccomp filter) before anything else.
    pub fn spawn(
        self,
        name: String,
        confine: impl FnOnce() -> Result<(), String> + Send + 'static,
    ) -> std::io::Result<super::worker::WorkerHandle> {
        super::worker::spawn(name, "network", confine, move |stop| self.run(stop))
    }

    fn run(mut self, stop: &EventFd) {
        loop {
            let tap_events = if self.starved { 0 } else { libc::POLLIN };
            let mut fds = [
                libc::pollfd { fd: stop.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: self.datapath.tap().raw(), events: tap_events, revents: 0 },
                libc::pollfd { fd: self.events[RX].as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: self.events[TX].as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: self.wake.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            ];
            // SAFETY: `fds` is a live array of five pollfds.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if n < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            }
            if fds[0].revents != 0 {
                return;
            }
            for (fd, event) in fds[2..].iter().zip([&self.events[RX], &self.events[TX], &self.wake]) {
                if fd.revents != 0 {
                    let _ = event.read();
                }
            }
            // Only a transmit kick: the tap has nothing (poll would say), and
            // a starved receive queue still waits for its own kick.
            let receive = fds[1].revents != 0 || fds[2].revents != 0 || fds[4].revents != 0;
            self.pass(receive);
        }
    }

    /// One pass over everything: the link state, transmit, receive.
    #[cfg(test)]
    pub fn serve(&mut self) {
        self.pass(true);
    }

    /// One pass: the link state, then transmit, then receive if `receive`
    /// (the tap, the receive queue or a wake-up had something).
    fn pass(&mut self, receive: bool) {
        let mut slot = self.active.lock().unwrap_or_else(|p| p.into_inner());
        let up = self.shared.link_up.load(Ordering::SeqCst);
        let Some(a) = slot.as_mut() else {
            // No driver: what arrives is dropped.
            self.starved = false;
            self.datapath.discard();
            return;
        };
        if !a.offloads_set {
            // Only what the driver takes; a tap that refused the probe was offered none.
            let _ = self.datapath.tap().set_offload(datapath::tap_offloads(a.features));
            a.offloads_set = true;
        }
        if up != self.told_up {
            self.told_up = up;
            a.interrupt.config();
        }
        let tx = self.datapath.transmit(&a.memory, &mut a.tx, a.features, up);
        let rx = if !receive {
            Ok(Pass { starved: self.starved, ..Pass::default() })
        } else if up {
            self.datapath.receive(&a.memory, &mut a.rx, a.features)
        } else {
            let more = self.datapath.discard();
            Ok(Pass { more, ..Pass::default() })
        };
        let (Ok(tx), Ok(rx)) = (tx, rx) else {
            a.interrupt.broken();
            *slot = None;
            self.starved = false;
            return;
        };
        if tx.used && a.tx.needs_notification(&a.memory).unwrap_or(true) {
            a.interrupt.queue(TX as u16);
        }
        if rx.used && a.rx.needs_notification(&a.memory).unwrap_or(true) {
            a.interrupt.queue(RX as u16);
        }
        self.starved = rx.starved;
        // Work left over: come back after a look at the other fds.
        if tx.more {
            let _ = self.events[TX].write(1);
        }
        if rx.more {
            let _ = self.wake.write(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;
    use std::sync::atomic::AtomicU32;

    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use vm_memory::{Bytes, GuestAddress};

    use super::datapath::{F_CSUM, F_MRG_RXBUF, HDR_LEN};
    use super::*;

    const WRITE: u16 = 2;
    const NEXT: u16 = 1;
    const SIZE: u16 = 16;
    /// Each queue's rings: descriptors, avail, used.
    const RINGS: [[u64; 3]; 2] = [[0x1000, 0x2000, 0x3000], [0x4000, 0x5000, 0x6000]];

    #[derive(Default)]
    struct Irq {
        queue: [AtomicU32; 2],
        config: AtomicU32,
        broken: AtomicU32,
    }
    impl VirtioInterrupt for Irq {
        fn queue(&self, index: u16) {
            self.queue[usize::from(index)].fetch_add(1, Ordering::SeqCst);
        }
        fn broken(&self) {
            self.broken.fetch_add(1, Ordering::SeqCst);
        }
        fn config(&self) {
            self.config.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct Rig {
        mem: GuestMemoryMmap,
        net: Net,
        worker: Worker,
        control: Control,
        irq: Arc<Irq>,
        /// The far end of the "tap": one frame per message.
        peer: OwnedFd,
        next_desc: [u16; 2],
    }

    fn nic() -> NicConfig {
        NicConfig { alias: "net0".into(), mac: [0x52, 0x54, 0, 1, 2, 3], pci_slot: 3, link_up: true, mtu: None }
    }

    /// A device over one end of a seqpacket socketpair, activated with
    /// `features` and both queues of 16 in 4 MiB of test memory.
    fn rig(config: NicConfig, features: u64) -> Rig {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let (ours, peer) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_NONBLOCK).unwrap();
        let (mut net, worker, control) = Net::new(&config, Tap::new(ours).unwrap()).unwrap();
        let queues = RINGS
            .iter()
            .map(|[d, a, u]| {
                let mut q = Queue::new(SIZE).unwrap();
                q.set_size(SIZE);
                q.set_desc_table_address(Some(*d as u32), Some(0));
                q.set_avail_ring_address(Some(*a as u32), Some(0));
                q.set_used_ring_address(Some(*u as u32), Some(0));
                q.set_ready(true);
                // As the transport does when the driver took EVENT_IDX.
                q.set_event_idx(features & F_EVENT_IDX != 0);
                q
            })
            .collect();
        let irq = Arc::new(Irq::default());
        net.activate(mem.clone(), features, queues, irq.clone()).unwrap();
        Rig { mem, net, worker, control, irq, peer, next_desc: [0; 2] }
    }

    impl Rig {
        /// One chain of `descs` (addr, len, flags; NEXT added but on the
        /// last) made available on queue `q`.
        fn submit(&mut self, q: usize, descs: &[(u64, u32, u16)]) {
            let [table, avail, _] = RINGS[q];
            let head = self.next_desc[q];
            for (i, &(addr, len, flags)) in descs.iter().enumerate() {
                let at = (head + i as u16) % SIZE;
                let last = i + 1 == descs.len();
                let (flags, next) = if last { (flags, 0) } else { (flags | NEXT, (at + 1) % SIZE) };
                let d = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
                self.mem.write_obj(d, GuestAddress(table + 16 * u64::from(at))).unwrap();
            }
            self.next_desc[q] = (head + descs.len() as u16) % SIZE;
            let idx: u16 = self.mem.read_obj(GuestAddress(avail + 2)).unwrap();
            self.mem.write_obj(head, GuestAddress(avail + 4 + 2 * u64::from(idx % SIZE))).unwrap();
            self.mem.write_obj(idx.wrapping_add(1), GuestAddress(avail + 2)).unwrap();
        }

        /// Every used entry of queue `q` so far: (head, len).
        fn used(&self, q: usize) -> Vec<(u32, u32)> {
            let used = RINGS[q][2];
            let idx: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
            (0..idx)
                .map(|i| {
                    let at = GuestAddress(used + 4 + 8 * u64::from(i % SIZE));
                    (self.mem.read_obj(at).unwrap(), self.mem.read_obj(GuestAddress(at.0 + 4)).unwrap())
                })
                .collect()
        }

        /// What the tap's far end received, one frame per entry.
        fn sent(&self) -> Vec<Vec<u8>> {
            let mut out = Vec::new();
            let mut buf = vec![0u8; 70_000];
            while let Ok(n) = nix::unistd::read(&self.peer, &mut buf) {
                out.push(buf[..n].to_vec());
            }
            out
        }

        fn inject(&self, frame: &[u8]) {
            assert_eq!(nix::unistd::write(&self.peer, frame).unwrap(), frame.len());
        }

        fn counters(&self) -> NicCounters {
            self.control.counters()
        }

        /// The driver's used_event on queue `q`: an interrupt when the used
        /// index passes it.
        fn set_used_event(&self, q: usize, at: u16) {
            self.mem.write_obj(at, GuestAddress(RINGS[q][1] + 4 + 2 * u64::from(SIZE))).unwrap();
        }

        /// The device's avail_event on queue `q`: the available index whose
        /// publication the driver kicks for.
        fn avail_event(&self, q: usize) -> u16 {
            self.mem.read_obj(GuestAddress(RINGS[q][2] + 4 + 8 * u64::from(SIZE))).unwrap()
        }

        fn avail_idx(&self, q: usize) -> u16 {
            self.mem.read_obj(GuestAddress(RINGS[q][1] + 2)).unwrap()
        }

        fn irqs(&self, q: usize) -> u32 {
            self.irq.queue[q].load(Ordering::SeqCst)
        }
    }

    /// Whether a driver that moved its available index from `old` to `new`
    /// kicks (virtio 1.2, 2.7.10: vring_need_event).
    fn kicks(avail_event: u16, new: u16, old: u16) -> bool {
        new.wrapping_sub(avail_event).wrapping_sub(1) < new.wrapping_sub(old)
    }

    /// A header (all zero) and a 60-byte Ethernet frame whose bytes say `tag`.
    fn frame(tag: u8) -> Vec<u8> {
        let mut f = vec![0u8; HDR_LEN];
        f.extend((0..60).map(|i| tag ^ i as u8));
        f
    }

    #[test]
    fn a_guest_frame_reaches_the_tap_and_a_tap_frame_the_guest() {
        let mut r = rig(nic(), 0);
        let f = frame(7);
        r.mem.write_slice(&f, GuestAddress(0x10000)).unwrap();
        // Header and frame in separate descriptors, as Linux sends them.
        r.submit(TX, &[(0x10000, HDR_LEN as u32, 0), (0x10000 + HDR_LEN as u64, 60, 0)]);
        r.worker.serve();
        assert_eq!(r.sent(), [f]);
        assert_eq!(r.used(TX), [(0, 0)]);
        assert_eq!(r.irq.queue[TX].load(Ordering::SeqCst), 1);

        let mut incoming = frame(9);
        incoming[10] = 0xee; // num_buffers from the tap is not passed on
        r.inject(&incoming);
        r.submit(RX, &[(0x20000, 1526, WRITE)]);
        r.worker.serve();
        assert_eq!(r.used(RX), [(0, 72)]);
        let mut got = vec![0u8; 72];
        r.mem.read_slice(&mut got, GuestAddress(0x20000)).unwrap();
        assert_eq!(&got[10..12], &[1, 0], "num_buffers is 1");
        assert_eq!(got[12..], incoming[12..]);
        let c = r.counters();
        assert_eq!((c.tx_packets, c.tx_bytes, c.rx_packets, c.rx_bytes), (1, 60, 1, 60), "{c:?}");
        assert_eq!((c.tx_errs, c.tx_drop, c.rx_errs, c.rx_drop), (0, 0, 0, 0), "{c:?}");
        assert!(c.link_up);
    }

    #[test]
    fn malformed_transmit_chains_are_dropped_and_counted_and_the_device_goes_on() {
        let mut r = rig(nic(), 0);
        r.mem.write_slice(&frame(1), GuestAddress(0x10000)).unwrap();
        let hdr = HDR_LEN as u32;
        let bad: Vec<Vec<(u64, u32, u16)>> = vec![
            // A frame outside guest RAM, and one straddling its end.
            vec![(0x10000, hdr, 0), (0xf000_0000, 60, 0)],
            vec![(0x10000, hdr, 0), ((4 << 20) - 30, 60, 0)],
            // A descriptor of length 0.
            vec![(0x10000, hdr, 0), (0x10000, 0, 0), (0x1000c, 60, 0)],
            // Shorter than a header, and a header with a frame shorter than Ethernet's.
            vec![(0x10000, 10, 0)],
            vec![(0x10000, hdr + 13, 0)],
            // A device-writable descriptor in a transmit chain.
            vec![(0x10000, hdr, 0), (0x1000c, 60, WRITE)],
            // Larger than the largest frame.
            vec![(0x10000, hdr, 0), (0x20000, 65551, 0)],
        ];
        for chain in &bad {
            r.submit(TX, chain);
        }
        // A chain that loops: one descriptor pointing at itself.
        let at = r.next_desc[TX];
        r.submit(TX, &[(0x10000, 72, 0)]);
        let d = RawDescriptor::from(SplitDescriptor::new(0x10000, 72, NEXT, at));
        r.mem.write_obj(d, GuestAddress(RINGS[TX][0] + 16 * u64::from(at))).unwrap();
        // A checksum request the driver did not negotiate.
        let mut csum = frame(2);
        csum[0] = 1;
        r.mem.write_slice(&csum, GuestAddress(0x30000)).unwrap();
        r.submit(TX, &[(0x30000, 72, 0)]);
        r.worker.serve();
        assert!(r.sent().is_empty(), "nothing malformed reaches the tap");
        let c = r.counters();
        assert_eq!((c.tx_errs, c.tx_packets), (bad.len() as u64 + 2, 0), "{c:?}");
        assert_eq!(r.used(TX).len(), bad.len() + 2, "every chain is given back");
        assert_eq!(r.irq.broken.load(Ordering::SeqCst), 0, "the device goes on");
        r.submit(TX, &[(0x10000, 72, 0)]);
        r.worker.serve();
        assert_eq!(r.sent(), [frame(1)]);
    }

    #[test]
    fn an_avail_index_past_the_ring_breaks_the_device_without_spinning() {
        let mut r = rig(nic(), 0);
        r.mem.write_obj(1000u16, GuestAddress(RINGS[TX][1] + 2)).unwrap();
        r.worker.serve();
        assert_eq!(r.irq.broken.load(Ordering::SeqCst), 1);
        assert!(r.worker.active.lock().unwrap().is_none(), "it stops until reset");
        r.worker.serve();
        assert_eq!(r.irq.broken.load(Ordering::SeqCst), 1, "and stays quiet");
    }

    #[test]
    fn a_checksum_request_passes_when_negotiated_and_its_offsets_are_checked() {
        let mut r = rig(nic(), F_CSUM);
        let mut f = frame(3);
        f[0] = 1;
        f[6..8].copy_from_slice(&34u16.to_le_bytes());
        f[8..10].copy_from_slice(&16u16.to_le_bytes());
        r.mem.write_slice(&f, GuestAddress(0x10000)).unwrap();
        r.submit(TX, &[(0x10000, 72, 0)]);
        // csum_start + csum_offset past the frame's end.
        f[8..10].copy_from_slice(&30u16.to_le_bytes());
        r.mem.write_slice(&f, GuestAddress(0x11000)).unwrap();
        r.submit(TX, &[(0x11000, 72, 0)]);
        r.worker.serve();
        assert_eq!(r.sent().len(), 1);
        assert_eq!(r.counters().tx_errs, 1);
    }

    #[test]
    fn receive_buffers_that_are_too_short_or_readable_are_counted() {
        let mut r = rig(nic(), 0);
        r.inject(&frame(4));
        r.submit(RX, &[(0x20000, 40, WRITE)]);
        r.worker.serve();
        r.inject(&frame(5));
        r.submit(RX, &[(0x20000, 100, 0)]);
        r.worker.serve();
        assert_eq!(r.used(RX), [(0, 0), (1, 0)]);
        let c = r.counters();
        assert_eq!((c.rx_errs, c.rx_packets), (2, 0), "{c:?}");
        // Two descriptors that together hold it are fine.
        r.inject(&frame(6));
        r.submit(RX, &[(0x20000, 30, WRITE), (0x21000, 60, WRITE)]);
        r.worker.serve();
        assert_eq!(r.used(RX)[2].1, 72);
        let mut tail = [0u8; 42];
        r.mem.read_slice(&mut tail, GuestAddress(0x21000)).unwrap();
        assert_eq!(tail[..], frame(6)[30..]);
    }

    #[test]
    fn a_merged_frame_spans_buffers_and_waits_until_there_are_enough() {
        let mut r = rig(nic(), F_MRG_RXBUF);
        r.inject(&frame(11));
        r.submit(RX, &[(0x20000, 30, WRITE)]);
        r.submit(RX, &[(0x21000, 30, WRITE)]);
        r.worker.serve();
        assert!(r.used(RX).is_empty(), "two buffers of 30 cannot hold 72 bytes: nothing taken");
        assert!(r.worker.starved);
        r.submit(RX, &[(0x22000, 30, WRITE)]);
        r.worker.serve();
        assert_eq!(r.used(RX), [(0, 30), (1, 30), (2, 12)]);
        let mut got = [0u8; 90];
        for (i, at) in [0x20000u64, 0x21000, 0x22000].iter().enumerate() {
            r.mem.read_slice(&mut got[i * 30..(i + 1) * 30], GuestAddress(*at)).unwrap();
        }
        assert_eq!(&got[10..12], &[3, 0], "num_buffers");
        assert_eq!(got[12..72], frame(11)[12..]);
        // One buffer that holds it all: num_buffers 1.
        r.inject(&frame(12));
        r.submit(RX, &[(0x30000, 1526, WRITE)]);
        r.worker.serve();
        assert_eq!(r.used(RX)[3], (3, 72));
        let mut hdr = [0u8; 12];
        r.mem.read_slice(&mut hdr, GuestAddress(0x30000)).unwrap();
        assert_eq!(&hdr[10..12], &[1, 0]);
        // A readable buffer among them: the frame is counted, the chains given back empty.
        r.inject(&frame(13));
        r.submit(RX, &[(0x20000, 30, WRITE)]);
        r.submit(RX, &[(0x21000, 60, 0)]);
        r.worker.serve();
        assert_eq!(r.used(RX)[4..], [(4, 0), (5, 0)]);
        let c = r.counters();
        assert_eq!((c.rx_packets, c.rx_bytes, c.rx_errs, c.rx_drop), (2, 120, 1, 0), "{c:?}");
    }

    #[test]
    fn a_frame_waits_in_the_tap_until_the_guest_gives_a_buffer() {
        let mut r = rig(nic(), 0);
        r.inject(&frame(8));
        r.worker.serve();
        assert!(r.worker.starved, "no buffer: the tap is left alone");
        assert_eq!(r.counters().rx_drop, 0, "and nothing is lost");
        r.submit(RX, &[(0x20000, 1526, WRITE)]);
        r.worker.serve();
        assert_eq!(r.used(RX), [(0, 72)]);
        assert_eq!(r.counters().rx_packets, 1);
    }

    #[test]
    fn with_the_link_down_frames_are_dropped_both_ways_and_the_driver_is_told() {
        let mut r = rig(nic(), 0);
        let status = |net: &Net| {
            let mut s = [0u8; 2];
            net.read_config(6, &mut s);
            u16::from_le_bytes(s)
        };
        assert_eq!(status(&r.net), S_LINK_UP);
        r.control.set_link(false);
        assert_eq!(status(&r.net), 0);
        r.worker.serve();
        assert_eq!(r.irq.config.load(Ordering::SeqCst), 1, "a configuration interrupt");
        r.mem.write_slice(&frame(1), GuestAddress(0x10000)).unwrap();
        r.submit(TX, &[(0x10000, 72, 0)]);
        r.submit(RX, &[(0x20000, 1526, WRITE)]);
        r.inject(&frame(2));
        r.worker.serve();
        assert!(r.sent().is_empty());
        assert!(r.used(RX).is_empty(), "the guest's buffer stays empty");
        let c = r.counters();
        assert_eq!((c.tx_drop, c.rx_drop, c.tx_packets, c.rx_packets, c.link_up), (1, 1, 0, 0, false), "{c:?}");
        r.control.set_link(true);
        r.worker.serve();
        assert_eq!(r.irq.config.load(Ordering::SeqCst), 2);
        r.inject(&frame(3));
        r.worker.serve();
        assert_eq!(r.used(RX), [(0, 72)], "the buffer kept while the link was down");
    }

    #[test]
    fn the_configuration_shows_mac_and_mtu_and_a_socket_gets_no_offloads() {
        let r = rig(NicConfig { mtu: Some(9000), ..nic() }, 0);
        assert_eq!(
            r.net.features(),
            F_MAC | F_STATUS | F_MTU | F_MRG_RXBUF | F_EVENT_IDX,
            "a non-tap takes no offloads"
        );
        let mut c = [0u8; 12];
        r.net.read_config(0, &mut c);
        assert_eq!(&c[..6], &[0x52, 0x54, 0, 1, 2, 3]);
        assert_eq!(u16::from_le_bytes([c[8], c[9]]), 1, "one queue pair");
        assert_eq!(u16::from_le_bytes([c[10], c[11]]), 9000);
        let mut past = [0xffu8; 4];
        r.net.read_config(0x100, &mut past);
        assert_eq!(past, [0; 4]);
    }

    #[test]
    fn with_event_idx_a_transmit_batch_is_one_interrupt_and_the_driver_kicks_only_an_idle_device() {
        let mut r = rig(nic(), F_EVENT_IDX);
        for i in 0..3u64 {
            r.mem.write_slice(&frame(i as u8), GuestAddress(0x10000 + 0x1000 * i)).unwrap();
            r.submit(TX, &[(0x10000 + 0x1000 * i, 72, 0)]);
        }
        // The driver wants an interrupt at the first completion (used_event 0).
        r.set_used_event(TX, 0);
        r.worker.serve();
        assert_eq!(r.sent().len(), 3);
        assert_eq!(r.irqs(TX), 1, "three completions, one interrupt");
        assert_eq!(r.avail_event(TX), 3, "idle again: a kick for the next chain");
        assert!(kicks(r.avail_event(TX), 4, 3));
        // A driver that polls its completions (used_event far behind): none.
        r.set_used_event(TX, 100);
        r.submit(TX, &[(0x10000, 72, 0)]);
        r.worker.serve();
        assert_eq!((r.used(TX).len(), r.irqs(TX)), (4, 1), "no interrupt asked for, none raised");
        // It asks again at the next completion: that one is not lost.
        r.set_used_event(TX, 4);
        r.submit(TX, &[(0x10000, 72, 0)]);
        r.worker.serve();
        assert_eq!((r.used(TX).len(), r.irqs(TX)), (5, 2));
        assert_eq!(r.counters().tx_packets, 5);
    }

    #[test]
    fn with_event_idx_a_chain_added_while_the_device_is_busy_needs_no_kick_and_is_not_lost() {
        let mut r = rig(nic(), F_EVENT_IDX);
        r.mem.write_slice(&frame(1), GuestAddress(0x10000)).unwrap();
        r.submit(TX, &[(0x10000, 72, 0)]);
        r.worker.serve();
        let idle = r.avail_event(TX);
        assert_eq!(idle, 1);
        // Busy: the driver adds two; the first crosses avail_event (a kick), the
        // second does not.
        r.submit(TX, &[(0x10000, 72, 0)]);
        assert!(kicks(idle, r.avail_idx(TX), 1));
        r.submit(TX, &[(0x10000, 72, 0)]);
        assert!(!kicks(r.avail_event(TX), r.avail_idx(TX), 2), "no kick while the device has not caught up");
        // The one kick serves both.
        r.worker.serve();
        assert_eq!(r.sent().len(), 3, "the chain added without a kick went too");
        assert_eq!(r.avail_event(TX), 3);
    }

    #[test]
    fn with_event_idx_received_frames_are_one_interrupt_per_batch_and_a_starved_queue_asks_for_its_kick() {
        let mut r = rig(nic(), F_EVENT_IDX);
        for tag in 0..3 {
            r.inject(&frame(20 + tag));
        }
        r.worker.serve();
        assert!(r.worker.starved);
        assert_eq!(r.avail_event(RX), 0, "the guest's first buffer is kicked for");
        assert!(kicks(r.avail_event(RX), 1, 0));
        r.set_used_event(RX, 0);
        for i in 0..4u64 {
            r.submit(RX, &[(0x20000 + 0x1000 * i, 1526, WRITE)]);
        }
        r.worker.serve();
        assert_eq!(r.used(RX).len(), 3);
        assert_eq!(r.irqs(RX), 1, "three frames, one interrupt");
        assert!(!r.worker.starved, "a buffer left: the tap is watched");
        // The driver re-arms at the next used entry before it sleeps; the next
        // frame must wake it.
        r.set_used_event(RX, 3);
        r.inject(&frame(30));
        r.worker.serve();
        assert_eq!((r.used(RX).len(), r.irqs(RX)), (4, 2), "the interrupt asked for is raised");
        // Out of buffers again: the frame waits, and the next buffer is kicked for.
        r.inject(&frame(31));
        r.worker.serve();
        assert_eq!(r.used(RX).len(), 4);
        assert_eq!(r.avail_event(RX), 4);
        assert!(kicks(r.avail_event(RX), 5, 4));
        assert_eq!(r.counters().rx_drop, 0);
    }

    /// Waits (up to 5 s) for `done`.
    fn eventually(mut done: impl FnMut() -> bool) -> bool {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < end {
            if done() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn the_thread_wakes_for_each_kick_and_for_the_tap_and_loses_no_frame() {
        let mut r = rig(nic(), F_EVENT_IDX);
        let spare = rig(nic(), 0).worker;
        let worker = std::mem::replace(&mut r.worker, spare);
        let _thread = worker.spawn("test-net".into(), || Ok(())).unwrap();
        let kick = |r: &Rig, q: usize| r.net.events[q].write(1).unwrap();
        r.set_used_event(RX, 0);
        r.submit(RX, &[(0x20000, 1526, WRITE)]);
        r.submit(RX, &[(0x21000, 1526, WRITE)]);
        kick(&r, RX);
        r.inject(&frame(1));
        assert!(eventually(|| r.used(RX).len() == 1), "a frame from the tap");
        assert!(eventually(|| r.irqs(RX) == 1));
        // A transmit kick alone.
        r.mem.write_slice(&frame(2), GuestAddress(0x10000)).unwrap();
        r.submit(TX, &[(0x10000, 72, 0)]);
        kick(&r, TX);
        let mut sent = Vec::new();
        assert!(eventually(|| {
            sent.extend(r.sent());
            !sent.is_empty()
        }));
        assert_eq!(sent, [frame(2)]);
        // The tap again, after the transmit-only wake-up: still watched.
        r.set_used_event(RX, 1);
        r.inject(&frame(3));
        assert!(eventually(|| r.used(RX).len() == 2), "the second frame is not lost");
        assert!(eventually(|| r.irqs(RX) == 2), "nor its interrupt");
        // Starved: a new buffer's kick brings the waiting frame.
        r.inject(&frame(4));
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(r.used(RX).len(), 2, "no buffer: it waits");
        r.set_used_event(RX, 2);
        r.submit(RX, &[(0x22000, 1526, WRITE)]);
        assert!(kicks(r.avail_event(RX), 3, 2), "the device asked for this kick");
        kick(&r, RX);
        assert!(eventually(|| r.used(RX).len() == 3));
        assert!(eventually(|| r.irqs(RX) == 3));
        assert_eq!(r.counters().rx_packets, 3);
    }
}
