//! virtio-balloon (virtio 1.2, 5.5): the inflate, deflate and statistics
//! queues, served by the balloon's own thread ([`Worker`], under the I/O
//! threads' filter), never a vCPU thread.
//!
//! The host sets the target (`num_pages`, [`Control::set_target`], from
//! the control thread); the guest posts page frame numbers on the inflate
//! queue and writes how many it holds to `actual`. Every inflated page
//! that lies inside guest RAM goes back to the host:
//! - anonymous guest memory (the default): `madvise(MADV_DONTNEED)` frees
//!   its host page; a later guest access gets a fresh zero page;
//! - memory the broker made (a memfd, `<source type='memfd'/>` or shared
//!   access): DONTNEED would only drop this mapping's view of a shared page,
//!   which the memfd keeps, so the page is cut out of the memfd with
//!   `fallocate(PUNCH_HOLE|KEEP_SIZE)`, which frees it;
//! - huge pages (a hugetlb memfd of 2 MiB or 1 GiB pages): a host page can
//!   only go back whole, so the worker keeps, per huge page, a bitmap of
//!   its 4 KiB pages in the balloon; once every one of them is, the whole
//!   huge page is punched out. A deflated page leaves the bitmap again. The
//!   bitmaps are bounded by guest RAM (one bit per 4 KiB page of a huge
//!   page that is partly inflated).
//!
//! A page number outside guest RAM is counted and ignored. Deflating needs
//! nothing of the host. At most [`MAX_PFNS`] numbers are read per buffer.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use libvirtd::privsep::helper::BalloonFigures;
use virtio_queue::{DescriptorChain, Queue, QueueT, Reader};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::{ActivateError, VirtioDevice, VirtioInterrupt};

/// virtio device type.
pub const DEVICE_TYPE: u16 = 5;
/// Each queue's largest size.
pub const QUEUE_SIZE: u16 = 128;
/// VIRTIO_BALLOON_F_STATS_VQ.
pub const F_STATS_VQ: u64 = 1 << 1;
/// Most page numbers read from one buffer (Linux sends at most 256).
pub const MAX_PFNS: usize = 4096;
/// Most statistics kept (virtio 1.2 defines 11 tags).
pub const MAX_STATS: usize = 16;
/// The balloon's page size, whatever the guest's.
const PAGE: u64 = 4096;
const INFLATE: usize = 0;
const DEFLATE: usize = 1;
const STATS: usize = 2;

/// What the device, its thread and the control thread share.
#[derive(Debug, Default)]
pub struct Shared {
    /// `num_pages`: pages the host wants in the balloon.
    target_pages: AtomicU32,
    /// `actual`: pages the guest says are in it.
    actual_pages: AtomicU32,
    released: AtomicU64,
    ignored: AtomicU64,
    guest_stats: Mutex<Vec<(u16, u64)>>,
    /// How often the guest is asked for fresh statistics, in seconds (0: only when the host asks).
    period_s: AtomicU32,
    /// Guest RAM in pages.
    ram_pages: u64,
}

struct Active {
    queues: Vec<Queue>,
    memory: GuestMemoryMmap,
    interrupt: Arc<dyn VirtioInterrupt>,
    /// The statistics buffer the guest gave, held until the host wants fresh figures.
    stats_head: Option<u16>,
}

type Slot = Arc<Mutex<Option<Active>>>;

/// The device side the transport sees.
pub struct Balloon {
    shared: Arc<Shared>,
    features: u64,
    events: Vec<Arc<EventFd>>,
    active: Slot,
}

/// The balloon's thread, before it runs.
pub struct Worker {
    shared: Arc<Shared>,
    events: Vec<Arc<EventFd>>,
    active: Slot,
    /// Huge pages partly in the balloon.
    partial: Partial,
}

/// Which 4 KiB pages of each partly inflated huge page are in the balloon,
/// by the huge page's index in the memfd; empty for 4 KiB backing.
#[derive(Debug)]
struct Partial {
    /// The backing's page size in bytes (4096, or the huge page size).
    host_page: u64,
    pages: HashMap<u64, Vec<u64>>,
}

impl Partial {
    /// Marks (`inflated`) or clears the 4 KiB page at memfd offset `off`;
    /// returns the huge page's offset once all of it is in the balloon
    /// (and forgets it: it is about to be punched out).
    fn mark(&mut self, off: u64, inflated: bool) -> Option<u64> {
        let (index, sub) = (off / self.host_page, (off % self.host_page) / PAGE);
        let words = (self.host_page / PAGE).div_ceil(64) as usize;
        let (word, bit) = ((sub / 64) as usize, 1u64 << (sub % 64));
        if !inflated {
            if let Some(b) = self.pages.get_mut(&index) {
                b[word] &= !bit;
                if b.iter().all(|w| *w == 0) {
                    self.pages.remove(&index);
                }
            }
            return None;
        }
        let b = self.pages.entry(index).or_insert_with(|| vec![0; words]);
        b[word] |= bit;
        let per = self.host_page / PAGE;
        let full = b.iter().enumerate().all(|(i, w)| {
            let bits = (per - 64 * i as u64).min(64);
            *w == if bits == 64 { u64::MAX } else { (1u64 << bits) - 1 }
        });
        if full {
            self.pages.remove(&index);
            return Some(index * self.host_page);
        }
        None
    }
}

/// The control thread's handle on the balloon.
#[derive(Clone)]
pub struct Control {
    shared: Arc<Shared>,
    active: Slot,
    /// Wakes the balloon's thread (the statistics queue's eventfd).
    wake: Option<Arc<EventFd>>,
}

impl Balloon {
    /// A balloon for a guest of `ram_bytes` whose memory has pages of
    /// `host_page` bytes (4096, or a huge page size), asking the guest for
    /// statistics every `period_s` seconds (0: never on its own). The
    /// statistics queue is always offered, as QEMU offers it, so that a
    /// period set live (`virsh dommemstat --period`) finds it negotiated.
    pub fn new(ram_bytes: u64, period_s: u32, host_page: u64) -> std::io::Result<(Balloon, Worker, Control)> {
        let shared =
            Arc::new(Shared { ram_pages: ram_bytes / PAGE, period_s: AtomicU32::new(period_s), ..Shared::default() });
        let stats = true;
        let queues = if stats { 3 } else { 2 };
        let events =
            (0..queues).map(|_| EventFd::new(libc::EFD_NONBLOCK).map(Arc::new)).collect::<Result<Vec<_>, _>>()?;
        let active: Slot = Arc::default();
        let features = if stats { F_STATS_VQ } else { 0 };
        let balloon = Balloon { shared: shared.clone(), features, events: events.clone(), active: active.clone() };
        let partial = Partial { host_page: host_page.max(PAGE), pages: HashMap::new() };
        let wake = events.get(STATS).cloned();
        let worker = Worker { shared: shared.clone(), events, active: active.clone(), partial };
        Ok((balloon, worker, Control { shared, active, wake }))
    }

    fn config(&self) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0..4].copy_from_slice(&self.shared.target_pages.load(Ordering::SeqCst).to_le_bytes());
        c[4..8].copy_from_slice(&self.shared.actual_pages.load(Ordering::SeqCst).to_le_bytes());
        c
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE][..self.events.len()]
    }

    fn queue_events(&self) -> Vec<Arc<EventFd>> {
        self.events.clone()
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = self.config();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset).ok().and_then(|o| c.get(o + i)).copied().unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` (bytes 4..8) is the driver's, written whole.
        if offset == 4 && data.len() == 4 {
            let mut b = [0u8; 4];
            b.copy_from_slice(data);
            self.shared.actual_pages.store(u32::from_le_bytes(b), Ordering::SeqCst);
        }
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        features: u64,
        queues: Vec<Queue>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        let wanted = if features & F_STATS_VQ != 0 { 3 } else { 2 };
        if queues.len() < wanted || queues.iter().take(2).any(|q| !q.ready()) {
            return Err(ActivateError("the inflate and deflate queues are not enabled".into()));
        }
        let queues = queues.into_iter().take(wanted).collect();
        *self.active.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Active { queues, memory, interrupt, stats_head: None });
        for e in &self.events {
            let _ = e.write(1);
        }
        Ok(())
    }

    fn reset(&mut self) {
        *self.active.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.shared.actual_pages.store(0, Ordering::SeqCst);
    }
}

impl Control {
    /// Sets the target so that the guest keeps `keep_mib` of its memory,
    /// and tells a running driver its configuration changed.
    pub fn set_target(&self, keep_mib: u64) {
        let keep = (keep_mib << 20) / PAGE;
        let pages = self.shared.ram_pages.saturating_sub(keep);
        self.shared.target_pages.store(u32::try_from(pages).unwrap_or(u32::MAX), Ordering::SeqCst);
        if let Some(a) = self.active.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            a.interrupt.config();
        }
    }

    /// Sets how often the guest is asked for statistics, and wakes the
    /// balloon's thread to wait by the new period.
    pub fn set_period(&self, seconds: u32) {
        self.shared.period_s.store(seconds, Ordering::SeqCst);
        if let Some(e) = self.wake.as_ref() {
            let _ = e.write(1);
        }
    }

    /// The figures, and a request to the guest for fresh statistics (its
    /// held buffer handed back).
    pub fn figures(&self) -> BalloonFigures {
        let s = &self.shared;
        let kib = |pages: u64| pages * (PAGE >> 10);
        let f = BalloonFigures {
            target_kib: kib(s.ram_pages.saturating_sub(u64::from(s.target_pages.load(Ordering::SeqCst)))),
            actual_kib: kib(s.ram_pages.saturating_sub(u64::from(s.actual_pages.load(Ordering::SeqCst)))),
            released_pages: s.released.load(Ordering::Relaxed),
            ignored_pfns: s.ignored.load(Ordering::Relaxed),
            guest_stats: s.guest_stats.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        };
        refresh(&self.active);
        f
    }
}

/// Hands the guest its held statistics buffer back, which asks it for
/// fresh figures (virtio 1.2, 5.5.6.3).
fn refresh(active: &Slot) {
    let mut slot = active.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(a) = slot.as_mut()
        && let Some(head) = a.stats_head.take()
        && let Some(q) = a.queues.get_mut(STATS)
        && q.add_used(&a.memory, head, 0).is_ok()
    {
        a.interrupt.queue(STATS as u16);
    }
}

impl Worker {
    /// Starts the thread, which runs `confine` (its seccomp filter) before anything else.
    pub fn spawn(
        self,
        name: String,
        confine: impl FnOnce() -> Result<(), String> + Send + 'static,
    ) -> std::io::Result<super::worker::WorkerHandle> {
        super::worker::spawn(name, "balloon", confine, move |stop| self.run(stop))
    }

    fn run(mut self, stop: &EventFd) {
        // When the guest is next asked for statistics (with a period).
        let mut due: Option<std::time::Instant> = None;
        loop {
            let mut fds: Vec<libc::pollfd> = self
                .events
                .iter()
                .map(|e| e.as_raw_fd())
                .chain(std::iter::once(stop.as_raw_fd()))
                .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
                .collect();
            // With a period, the wait ends when the guest is due to be asked
            // for statistics again.
            let period = u64::from(self.shared.period_s.load(Ordering::SeqCst));
            let now = std::time::Instant::now();
            let timeout = match (period, due) {
                (0, _) => -1,
                (_, Some(at)) if at > now => i32::try_from((at - now).as_millis()).unwrap_or(i32::MAX).max(1),
                _ => {
                    refresh(&self.active);
                    due = Some(now + std::time::Duration::from_secs(period));
                    i32::try_from(period * 1000).unwrap_or(i32::MAX)
                }
            };
            if period == 0 {
                due = None;
            }
            // SAFETY: `fds` is a live array of `fds.len()` pollfds.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n == 0 {
                continue;
            }
            if n < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            }
            if fds.last().is_some_and(|f| f.revents != 0) {
                return;
            }
            for (i, f) in fds.iter().take(self.events.len()).enumerate() {
                if f.revents != 0 {
                    let _ = self.events[i].read();
                }
            }
            self.serve();
        }
    }

    /// Takes every buffer available on every queue, then interrupts the guest.
    pub fn serve(&mut self) {
        let slot_arc = self.active.clone();
        let mut slot = slot_arc.lock().unwrap_or_else(|p| p.into_inner());
        let Some(active) = slot.as_mut() else { return };
        let mut broken = false;
        for index in 0..active.queues.len() {
            match self.serve_queue(active, index) {
                Ok(true) => active.interrupt.queue(index as u16),
                Ok(false) => {}
                Err(()) => broken = true,
            }
        }
        if broken {
            active.interrupt.broken();
            *slot = None;
        }
    }

    /// Serves queue `index`; whether anything was used.
    fn serve_queue(&mut self, active: &mut Active, index: usize) -> Result<bool, ()> {
        let Active { queues, memory, stats_head, .. } = active;
        let Some(queue) = queues.get_mut(index).filter(|q| q.ready()) else { return Ok(false) };
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(&*memory) {
            let head = chain.head_index();
            match index {
                INFLATE => self.pages(memory, chain, true),
                DEFLATE => self.pages(memory, chain, false),
                _ => {
                    self.stats(memory, chain);
                    // Held until the host asks again; a second one replaces it.
                    if let Some(old) = stats_head.replace(head) {
                        queue.add_used(&*memory, old, 0).map_err(|_| ())?;
                        used = true;
                    }
                    continue;
                }
            }
            queue.add_used(&*memory, head, 0).map_err(|_| ())?;
            used = true;
        }
        Ok(used)
    }

    /// Gives the host back every page of `chain`'s numbers inside guest
    /// RAM (`inflate`), or takes them out of the huge-page bitmaps (deflate).
    fn pages<M>(&mut self, memory: &GuestMemoryMmap, chain: DescriptorChain<M>, inflate: bool)
    where
        M: std::ops::Deref<Target = GuestMemoryMmap> + Clone,
    {
        let Ok(mut reader) = Reader::new(memory, chain) else {
            self.shared.ignored.fetch_add(1, Ordering::Relaxed);
            return;
        };
        for _ in 0..MAX_PFNS {
            let Ok(pfn) = reader.read_obj::<u32>() else { break };
            let Some(page) = locate(memory, u64::from(pfn)) else {
                if inflate {
                    self.shared.ignored.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            };
            if !inflate {
                if let Backed::File { offset, .. } = page
                    && self.partial.host_page > PAGE
                {
                    self.partial.mark(offset, false);
                }
                continue;
            }
            let freed = match page {
                Backed::Anonymous(ptr) => dontneed(ptr).then_some(1),
                Backed::File { fd, offset } if self.partial.host_page == PAGE => punch(fd, offset, PAGE).then_some(1),
                Backed::File { fd, offset } => match self.partial.mark(offset, true) {
                    Some(start) => punch(fd, start, self.partial.host_page).then_some(self.partial.host_page / PAGE),
                    None => Some(0),
                },
            };
            match freed {
                Some(n) => self.shared.released.fetch_add(n, Ordering::Relaxed),
                None => self.shared.ignored.fetch_add(1, Ordering::Relaxed),
            };
        }
    }

    /// Keeps the statistics in `chain`: 10-byte (tag u16, value u64) entries.
    fn stats<M>(&self, memory: &GuestMemoryMmap, chain: DescriptorChain<M>)
    where
        M: std::ops::Deref<Target = GuestMemoryMmap> + Clone,
    {
        let Ok(mut reader) = Reader::new(memory, chain) else { return };
        let mut got: Vec<(u16, u64)> = Vec::new();
        for _ in 0..MAX_STATS {
            let (Ok(tag), Ok(value)) = (reader.read_obj::<u16>(), reader.read_obj::<u64>()) else { break };
            match got.iter_mut().find(|(t, _)| *t == tag) {
                Some(slot) => slot.1 = value,
                None => got.push((tag, value)),
            }
        }
        *self.shared.guest_stats.lock().unwrap_or_else(|p| p.into_inner()) = got;
    }
}

/// Where guest page `pfn` lives on the host.
#[derive(Debug, Clone, Copy)]
enum Backed {
    /// In the helper's anonymous memory, at this address.
    Anonymous(*mut u8),
    /// In the memfd `fd`, at this offset.
    File {
        /// The memfd.
        fd: i32,
        /// The page's offset in it.
        offset: u64,
    },
}

/// Finds guest page `pfn`; `None` when it is not guest RAM.
fn locate(memory: &GuestMemoryMmap, pfn: u64) -> Option<Backed> {
    let addr = GuestAddress(pfn.checked_mul(PAGE)?);
    let region = memory.find_region(addr)?;
    let within = addr.checked_offset_from(region.start_addr())?;
    if within.checked_add(PAGE)? > region.len() {
        return None;
    }
    Some(match region.file_offset() {
        Some(f) => Backed::File { fd: f.file().as_raw_fd(), offset: f.start().checked_add(within)? },
        // `within` + PAGE lies inside the region's mapping (checked above).
        None => Backed::Anonymous(region.as_ptr().wrapping_add(within as usize)),
    })
}

/// Frees an anonymous page; false if the kernel refused (a locked mapping,
/// `<locked/>`, cannot drop pages).
fn dontneed(ptr: *mut u8) -> bool {
    // SAFETY: `ptr` is the start of PAGE bytes inside one guest memory
    // mapping (`locate` checked the range), page aligned as regions start
    // on pages and page numbers are page multiples. DONTNEED only drops
    // their content, which the guest gave up by inflating.
    unsafe { libc::madvise(ptr.cast(), PAGE as usize, libc::MADV_DONTNEED) == 0 }
}

/// Cuts `len` bytes at `offset` out of the memfd `fd`, freeing the pages;
/// the mapping stays, and reads zeroes there afterwards.
fn punch(fd: i32, offset: u64, len: u64) -> bool {
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else { return false };
    // SAFETY: a plain syscall on an fd the guest memory holds open.
    unsafe { libc::fallocate(fd, mode, offset, len) == 0 }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use vm_memory::Bytes;

    use super::*;

    #[derive(Default)]
    struct Irq {
        queue: AtomicU32,
        config: AtomicU32,
    }
    impl VirtioInterrupt for Irq {
        fn queue(&self, _: u16) {
            self.queue.fetch_add(1, Ordering::SeqCst);
        }
        fn broken(&self) {}
        fn config(&self) {
            self.config.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Queue n's rings at 0x1000 + n * 0x3000 (desc, avail, used).
    fn ring(n: u64) -> (u64, u64, u64) {
        let b = 0x1000 + n * 0x3000;
        (b, b + 0x1000, b + 0x2000)
    }

    struct Rig {
        mem: GuestMemoryMmap,
        balloon: Balloon,
        worker: Worker,
        control: Control,
        irq: Arc<Irq>,
    }

    /// A 4 MiB guest with a balloon and its three queues of 16.
    fn rig() -> Rig {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let (mut balloon, worker, control) = Balloon::new(4 << 20, 5, 4096).unwrap();
        let queues = (0..3)
            .map(|n| {
                let (d, a, u) = ring(n);
                let mut q = Queue::new(16).unwrap();
                q.set_size(16);
                q.set_desc_table_address(Some(d as u32), Some(0));
                q.set_avail_ring_address(Some(a as u32), Some(0));
                q.set_used_ring_address(Some(u as u32), Some(0));
                q.set_ready(true);
                q
            })
            .collect();
        let irq = Arc::new(Irq::default());
        balloon.activate(mem.clone(), F_STATS_VQ, queues, irq.clone()).unwrap();
        Rig { mem, balloon, worker, control, irq }
    }

    impl Rig {
        /// One buffer at `addr` of `len` bytes made available on queue `n`.
        fn post(&self, n: u64, addr: u64, len: u32) {
            let (desc, avail, _) = ring(n);
            let idx: u16 = self.mem.read_obj(GuestAddress(avail + 2)).unwrap();
            let slot = idx % 16;
            let d = RawDescriptor::from(SplitDescriptor::new(addr, len, 0, 0));
            self.mem.write_obj(d, GuestAddress(desc + 16 * u64::from(slot))).unwrap();
            self.mem.write_obj(slot, GuestAddress(avail + 4 + 2 * u64::from(slot))).unwrap();
            self.mem.write_obj(idx.wrapping_add(1), GuestAddress(avail + 2)).unwrap();
        }
        fn used(&self, n: u64) -> u16 {
            self.mem.read_obj(GuestAddress(ring(n).2 + 2)).unwrap()
        }
    }

    #[test]
    fn inflating_releases_pages_in_ram_and_ignores_the_rest() {
        let mut r = rig();
        let page = 0x200u64; // 2 MiB in
        r.mem.write_slice(&[0x5a; 4096], GuestAddress(page * PAGE)).unwrap();
        let pfns: [u32; 3] = [page as u32, 0x10_0000, u32::MAX];
        for (i, p) in pfns.iter().enumerate() {
            r.mem.write_obj(*p, GuestAddress(0x10000 + 4 * i as u64)).unwrap();
        }
        r.post(0, 0x10000, 12);
        r.worker.serve();
        assert_eq!(r.used(0), 1);
        let f = r.control.figures();
        assert_eq!((f.released_pages, f.ignored_pfns), (1, 2));
        let back: u8 = r.mem.read_obj(GuestAddress(page * PAGE + 17)).unwrap();
        assert_eq!(back, 0, "the released page reads as a fresh zero page");
        // A buffer outside guest memory breaks nothing.
        r.post(1, 0xffff_0000, 8);
        r.worker.serve();
        assert!(r.irq.queue.load(Ordering::SeqCst) >= 1);
    }

    #[test]
    fn a_huge_page_goes_back_only_once_all_of_it_is_in_the_balloon() {
        let mut p = Partial { host_page: 2 << 20, pages: HashMap::new() };
        let base = 3 * (2 << 20);
        for n in 0..511u64 {
            assert_eq!(p.mark(base + n * PAGE, true), None);
        }
        // One deflated page and the huge page is not whole any more.
        assert_eq!(p.mark(base, false), None);
        assert_eq!(p.mark(base + 511 * PAGE, true), None);
        assert_eq!(p.mark(base, true), Some(base));
        assert!(p.pages.is_empty(), "forgotten once punched");
        // A 4 KiB backing has no bitmaps: each page goes at once (see `pages`).
        let mut one = Partial { host_page: PAGE, pages: HashMap::new() };
        assert_eq!(one.mark(8 * PAGE, true), Some(8 * PAGE));
    }

    #[test]
    fn a_period_hands_the_guest_its_statistics_buffer_back_on_its_own() {
        let r = rig();
        r.mem.write_slice(&[4, 0, 1, 0, 0, 0, 0, 0, 0, 0], GuestAddress(0x20000)).unwrap();
        r.post(2, 0x20000, 10);
        r.control.set_period(1);
        let Rig { mem, worker, .. } = r;
        let used = || mem.read_obj::<u16>(GuestAddress(ring(2).2 + 2)).unwrap();
        let handle = worker.spawn("balloon-test".into(), || Ok(())).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(used(), 0, "held until the period is up");
        std::thread::sleep(std::time::Duration::from_millis(1200));
        assert_eq!(used(), 1, "returned by the period, with no question from the host");
        drop(handle);
    }

    #[test]
    fn the_target_and_actual_meet_in_config_space() {
        let mut r = rig();
        r.control.set_target(3);
        assert_eq!(r.irq.config.load(Ordering::SeqCst), 1);
        let mut d = [0u8; 4];
        r.balloon.read_config(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 256, "1 MiB of a 4 MiB guest in pages");
        r.balloon.write_config(0, &7u32.to_le_bytes());
        r.balloon.write_config(4, &256u32.to_le_bytes());
        r.balloon.read_config(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 256, "num_pages is the host's");
        let f = r.control.figures();
        assert_eq!((f.target_kib, f.actual_kib), (3072, 3072));
    }

    #[test]
    fn statistics_are_kept_and_the_buffer_returned_when_asked() {
        let mut r = rig();
        let mut buf = Vec::new();
        for (tag, v) in [(4u16, 1u64 << 20), (8, 2 << 20), (4, 3 << 20)] {
            buf.extend_from_slice(&tag.to_le_bytes());
            buf.extend_from_slice(&v.to_le_bytes());
        }
        r.mem.write_slice(&buf, GuestAddress(0x20000)).unwrap();
        r.post(2, 0x20000, buf.len() as u32);
        r.worker.serve();
        assert_eq!(r.used(2), 0, "held");
        let f = r.control.figures();
        assert_eq!(f.guest_stats, [(4, 3 << 20), (8, 2 << 20)]);
        assert_eq!(r.used(2), 1, "handed back for fresh figures");
    }
}
