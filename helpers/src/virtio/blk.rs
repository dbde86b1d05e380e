//! virtio-blk (virtio 1.2, 5.2): one request queue, served by the disk's
//! own I/O thread ([`Worker`]), never a vCPU thread.
//!
//! Every value the guest controls is checked before it is used: the
//! descriptors (virtio-queue's `Reader`/`Writer` refuse any outside guest
//! memory, chains are bounded by the queue size), the request type, the
//! data length (whole sectors), the sector range (`sector * 512 + len`
//! computed without overflow and inside the image). A request that breaks
//! a rule is answered with VIRTIO_BLK_S_IOERR or S_UNSUPP and the guest
//! goes on; a chain with no place for the status byte (or a loop) makes
//! the device NEEDS_RESET. Data moves through a page-aligned bounce buffer
//! of [`CHUNK`] bytes, so a request of any size costs no more memory and
//! an O_DIRECT image gets aligned memory.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use libvirtd::privsep::helper::{CacheMode, DiskConfig, DiskCounters};
use virtio_queue::{DescriptorChain, Queue, QueueT, Reader, Writer};
use vm_memory::{Address, ByteValued, Bytes, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{ActivateError, VirtioDevice, VirtioInterrupt};
use crate::block::Backend;

/// virtio device type.
pub const DEVICE_TYPE: u16 = 2;
/// The queue's largest size.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes moved per backend call.
pub const CHUNK: usize = 128 << 10;
const SECTOR: u64 = 512;
/// The serial's size in a get-id answer.
const ID_BYTES: usize = 20;

const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
const F_DISCARD: u64 = 1 << 13;
const F_WRITE_ZEROES: u64 = 1 << 14;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;

/// Request status bytes.
pub const S_OK: u8 = 0;
/// An I/O error (or a request that breaks a rule).
pub const S_IOERR: u8 = 1;
/// A request type this device does not do.
pub const S_UNSUPP: u8 = 2;

/// The header every request starts with.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct RequestHeader {
    kind: u32,
    ioprio: u32,
    sector: u64,
}

// SAFETY: plain integers with no padding (4 + 4 + 8 bytes); any bit pattern is valid.
unsafe impl ByteValued for RequestHeader {}

/// One discard or write-zeroes range.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Segment {
    sector: u64,
    sectors: u32,
    flags: u32,
}

// SAFETY: plain integers with no padding (8 + 4 + 4 bytes); any bit pattern is valid.
unsafe impl ByteValued for Segment {}

/// The least time between two unsolicited reports of one disk's backend
/// errors, so that a failing disk cannot flood the broker.
pub const REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// A backend error waiting for the control thread to report it.
#[derive(Debug, Default)]
struct Report {
    pending: Option<String>,
    last: Option<Instant>,
}

/// One disk's I/O counters, read by the control thread for `DiskStats`
/// without touching the device, and its backend errors for the
/// unsolicited `IoError` (the control thread owns the broker link, so the
/// I/O thread only wakes it through `notify`).
#[derive(Debug, Default)]
pub struct Stats {
    report: Mutex<Report>,
    notify: Option<Arc<EventFd>>,
    rd_reqs: AtomicU64,
    rd_bytes: AtomicU64,
    rd_ns: AtomicU64,
    wr_reqs: AtomicU64,
    wr_bytes: AtomicU64,
    wr_ns: AtomicU64,
    flush_reqs: AtomicU64,
    flush_ns: AtomicU64,
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Stats {
    /// The counters as the broker hears them.
    pub fn snapshot(&self, alias: &str) -> DiskCounters {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DiskCounters {
            alias: alias.to_string(),
            rd_reqs: get(&self.rd_reqs),
            rd_bytes: get(&self.rd_bytes),
            rd_total_ns: get(&self.rd_ns),
            wr_reqs: get(&self.wr_reqs),
            wr_bytes: get(&self.wr_bytes),
            wr_total_ns: get(&self.wr_ns),
            flush_reqs: get(&self.flush_reqs),
            flush_total_ns: get(&self.flush_ns),
            errors: get(&self.errors),
            last_error: self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }

    /// Counters whose backend errors wake the control thread on `notify`.
    pub fn reporting_to(notify: Arc<EventFd>) -> Stats {
        Stats { notify: Some(notify), ..Stats::default() }
    }

    /// The backend error to report now, if one waits (the first, then at
    /// most one each [`REPORT_EVERY`]).
    pub fn take_report(&self) -> Option<String> {
        self.report.lock().unwrap_or_else(|p| p.into_inner()).pending.take()
    }

    /// The image failed a request: counted, and reported unless one was
    /// within [`REPORT_EVERY`].
    fn backend_error(&self, why: String) {
        self.error(Some(why.clone()));
        let mut r = self.report.lock().unwrap_or_else(|p| p.into_inner());
        if r.last.is_some_and(|t| t.elapsed() < REPORT_EVERY) {
            return;
        }
        (r.pending, r.last) = (Some(why), Some(Instant::now()));
        drop(r);
        if let Some(n) = &self.notify {
            // A full counter still wakes the reader.
            let _ = n.write(1);
        }
    }

    fn error(&self, why: Option<String>) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Some(why) = why {
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        }
    }
}

/// Why a request failed.
#[derive(Debug)]
enum Failure {
    /// The request breaks a rule (bad descriptors, range, length).
    Bad,
    /// A write to a read-only disk.
    ReadOnly,
    /// A type this device does not do.
    Unsupported,
    /// The image failed.
    Backend(std::io::Error),
}

/// What became of a chain.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered; the used length.
    Used(u32),
    /// No status could be given: the device needs a reset.
    Broken,
}

/// A page-aligned buffer.
struct Bounce {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

// SAFETY: the buffer is plain memory owned by this value alone.
unsafe impl Send for Bounce {}

impl Bounce {
    fn new() -> Bounce {
        let layout = std::alloc::Layout::from_size_align(CHUNK, 4096).expect("CHUNK is a valid layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Bounce { ptr, layout }
    }

    fn get(&mut self, len: usize) -> &mut [u8] {
        // SAFETY: `ptr` is a live allocation of CHUNK bytes owned by self;
        // `len` is clamped to it and the borrow of self keeps it unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, len.min(CHUNK)) }
    }
}

impl Drop for Bounce {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// A disk as its I/O thread serves it.
pub struct Disk {
    backend: Box<dyn Backend>,
    read_only: bool,
    serial: Vec<u8>,
    /// Whether guest flushes reach the image (not with cache=unsafe).
    flush: bool,
    discard: bool,
    stats: Arc<Stats>,
    bounce: Bounce,
}

impl Disk {
    /// The disk `config` describes over `backend`.
    pub fn new(config: &DiskConfig, backend: Box<dyn Backend>, stats: Arc<Stats>) -> Disk {
        let mut serial = config.serial.as_deref().unwrap_or("").as_bytes().to_vec();
        serial.truncate(ID_BYTES);
        Disk {
            backend,
            read_only: config.read_only,
            serial,
            flush: config.cache != CacheMode::Unsafe,
            discard: config.discard,
            stats,
            bounce: Bounce::new(),
        }
    }

    /// The image's size in sectors.
    fn sectors(&self) -> u64 {
        self.backend.size() / SECTOR
    }

    /// Byte offset of `len` bytes at `sector`, if all of them lie inside the image.
    fn range(&self, sector: u64, len: u64) -> Result<u64, Failure> {
        let offset = sector.checked_mul(SECTOR).ok_or(Failure::Bad)?;
        let end = offset.checked_add(len).ok_or(Failure::Bad)?;
        if end > self.sectors() * SECTOR {
            return Err(Failure::Bad);
        }
        Ok(offset)
    }

    /// Answers one request; never touches memory outside `mem`'s RAM.
    pub fn handle<M>(&mut self, mem: &GuestMemoryMmap, chain: DescriptorChain<M>) -> Outcome
    where
        M: std::ops::Deref<Target = GuestMemoryMmap> + Clone,
    {
        // The status byte: the last byte of the last descriptor, device-writable.
        let Some(last) = chain.clone().last() else { return Outcome::Broken };
        if last.has_next() || !last.is_write_only() || last.len() == 0 {
            // A loop, a chain longer than the queue, or no room for a status.
            self.stats.error(Some("a request without a status descriptor".into()));
            return Outcome::Broken;
        }
        let Some(status_at) = last.addr().checked_add(u64::from(last.len()) - 1) else { return Outcome::Broken };
        if !mem.address_in_range(status_at) {
            self.stats.error(Some("a request whose status lies outside guest memory".into()));
            return Outcome::Broken;
        }
        let (status, written) = match self.execute(mem, chain) {
            Ok(n) => (S_OK, n),
            Err(Failure::Unsupported) => {
                self.stats.error(None);
                (S_UNSUPP, 0)
            }
            Err(Failure::Bad) => {
                self.stats.error(None);
                (S_IOERR, 0)
            }
            Err(Failure::ReadOnly) => {
                self.stats.error(None);
                (S_IOERR, 0)
            }
            Err(Failure::Backend(e)) => {
                self.stats.backend_error(e.to_string());
                (S_IOERR, 0)
            }
        };
        if mem.write_obj(status, status_at).is_err() {
            return Outcome::Broken;
        }
        Outcome::Used(written + 1)
    }

    /// Carries out a request; returns the data bytes written to the guest.
    fn execute<M>(&mut self, mem: &GuestMemoryMmap, chain: DescriptorChain<M>) -> Result<u32, Failure>
    where
        M: std::ops::Deref<Target = GuestMemoryMmap> + Clone,
    {
        let mut reader: Reader<'_> = chain.clone().reader(mem).map_err(|_| Failure::Bad)?;
        let header: RequestHeader = reader.read_obj().map_err(|_| Failure::Bad)?;
        let mut writer: Writer<'_> = chain.writer(mem).map_err(|_| Failure::Bad)?;
        let data_len = writer.available_bytes().checked_sub(1).ok_or(Failure::Bad)?;
        // `writer` keeps the data part; the status byte is written by `handle`.
        writer.split_at(data_len).map_err(|_| Failure::Bad)?;
        match header.kind {
            T_IN => self.read(header.sector, &mut writer, data_len),
            T_OUT => self.write(header.sector, &mut reader),
            T_FLUSH => {
                let start = Instant::now();
                if self.flush && !self.read_only {
                    self.backend.flush().map_err(Failure::Backend)?;
                }
                self.stats.flush_reqs.fetch_add(1, Ordering::Relaxed);
                self.stats.flush_ns.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
                Ok(0)
            }
            T_GET_ID => {
                let mut id = [0u8; ID_BYTES];
                id[..self.serial.len()].copy_from_slice(&self.serial);
                let n = data_len.min(ID_BYTES);
                writer.write_all(&id[..n]).map_err(|_| Failure::Bad)?;
                Ok(n as u32)
            }
            T_DISCARD | T_WRITE_ZEROES => self.ranges(header.kind, &mut reader),
            _ => Err(Failure::Unsupported),
        }
    }

    fn read(&mut self, sector: u64, writer: &mut Writer<'_>, len: usize) -> Result<u32, Failure> {
        if !(len as u64).is_multiple_of(SECTOR) {
            return Err(Failure::Bad);
        }
        let offset = self.range(sector, len as u64)?;
        let start = Instant::now();
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK);
            let buf = self.bounce.get(n);
            self.backend.read_at(buf, offset + done as u64).map_err(Failure::Backend)?;
            writer.write_all(buf).map_err(|_| Failure::Bad)?;
            done += n;
        }
        self.stats.rd_reqs.fetch_add(1, Ordering::Relaxed);
        self.stats.rd_bytes.fetch_add(len as u64, Ordering::Relaxed);
        self.stats.rd_ns.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Ok(len as u32)
    }

    fn write(&mut self, sector: u64, reader: &mut Reader<'_>) -> Result<u32, Failure> {
        if self.read_only {
            return Err(Failure::ReadOnly);
        }
        let len = reader.available_bytes();
        if !(len as u64).is_multiple_of(SECTOR) {
            return Err(Failure::Bad);
        }
        let offset = self.range(sector, len as u64)?;
        let start = Instant::now();
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK);
            let buf = self.bounce.get(n);
            reader.read_exact(buf).map_err(|_| Failure::Bad)?;
            self.backend.write_at(buf, offset + done as u64).map_err(Failure::Backend)?;
            done += n;
        }
        self.stats.wr_reqs.fetch_add(1, Ordering::Relaxed);
        self.stats.wr_bytes.fetch_add(len as u64, Ordering::Relaxed);
        self.stats.wr_ns.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Ok(0)
    }

    /// Discard and write-zeroes: one segment (max_*_seg is 1).
    fn ranges(&mut self, kind: u32, reader: &mut Reader<'_>) -> Result<u32, Failure> {
        if self.read_only {
            return Err(Failure::ReadOnly);
        }
        if kind == T_DISCARD && !self.discard {
            return Err(Failure::Unsupported);
        }
        if reader.available_bytes() != std::mem::size_of::<Segment>() {
            return Err(Failure::Bad);
        }
        let seg: Segment = reader.read_obj().map_err(|_| Failure::Bad)?;
        let len = u64::from(seg.sectors) * SECTOR;
        let offset = self.range(seg.sector, len)?;
        let done =
            if kind == T_DISCARD { self.backend.discard(offset, len) } else { self.backend.write_zeroes(offset, len) };
        match done {
            // A discard is a hint: an image that cannot drop the range keeps it.
            Err(e) if kind == T_DISCARD && e.kind() == std::io::ErrorKind::Unsupported => Ok(0),
            Err(e) if kind == T_DISCARD && e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(0),
            other => other.map(|()| 0).map_err(Failure::Backend),
        }
    }
}

/// What the I/O thread serves once the driver is ready.
struct Active {
    queue: Queue,
    memory: GuestMemoryMmap,
    interrupt: Arc<dyn VirtioInterrupt>,
}

type Slot = Arc<Mutex<Option<Active>>>;

/// The device side the transport sees.
pub struct Blk {
    config: [u8; 60],
    features: u64,
    event: Arc<EventFd>,
    active: Slot,
}

/// The I/O thread's side, before it runs.
pub struct Worker {
    disk: Disk,
    event: Arc<EventFd>,
    active: Slot,
}

impl Blk {
    /// The device for `config` and its I/O thread's side, over `disk`.
    pub fn new(config: &DiskConfig, disk: Disk) -> std::io::Result<(Blk, Worker)> {
        let event = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let active: Slot = Arc::default();
        // EVENT_IDX: `serve` takes every request available before one
        // interrupt and re-checks the ring after re-enabling kicks.
        let mut features = F_BLK_SIZE | F_FLUSH | super::F_EVENT_IDX;
        if config.read_only {
            features |= F_RO;
        } else {
            features |= F_WRITE_ZEROES;
            if config.discard {
                features |= F_DISCARD;
            }
        }
        let mut c = [0u8; 60];
        c[0..8].copy_from_slice(&disk.sectors().to_le_bytes());
        c[20..24].copy_from_slice(&(SECTOR as u32).to_le_bytes()); // blk_size
        c[34..36].copy_from_slice(&1u16.to_le_bytes()); // num_queues
        let max_sectors = u32::MAX >> 9;
        c[36..40].copy_from_slice(&max_sectors.to_le_bytes()); // max_discard_sectors
        c[40..44].copy_from_slice(&1u32.to_le_bytes()); // max_discard_seg
        c[44..48].copy_from_slice(&1u32.to_le_bytes()); // discard_sector_alignment
        c[48..52].copy_from_slice(&max_sectors.to_le_bytes()); // max_write_zeroes_sectors
        c[52..56].copy_from_slice(&1u32.to_le_bytes()); // max_write_zeroes_seg
        let blk = Blk { config: c, features, event: event.clone(), active: active.clone() };
        Ok((blk, Worker { disk, event, active }))
    }
}

impl VirtioDevice for Blk {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn queue_events(&self) -> Vec<Arc<EventFd>> {
        vec![self.event.clone()]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let start = offset as usize;
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.config.get(start + i).copied().unwrap_or(0);
        }
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        _features: u64,
        queues: Vec<Queue>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        let queue = queues.into_iter().next().filter(|q| q.ready());
        let queue = queue.ok_or_else(|| ActivateError("the request queue is not enabled".into()))?;
        *self.active.lock().unwrap_or_else(|p| p.into_inner()) = Some(Active { queue, memory, interrupt });
        // Requests queued before DRIVER_OK are served now.
        let _ = self.event.write(1);
        Ok(())
    }

    fn reset(&mut self) {
        // Waits for the batch in flight, if any: a reset completes after it.
        *self.active.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl Worker {
    /// Starts the I/O thread, which runs `confine` (its seccomp filter) before anything else.
    pub fn spawn(
        self,
        name: String,
        confine: impl FnOnce() -> Result<(), String> + Send + 'static,
    ) -> std::io::Result<super::worker::WorkerHandle> {
        super::worker::spawn(name, "I/O", confine, move |stop| self.run(stop))
    }

    fn run(mut self, stop: &EventFd) {
        loop {
            let mut fds = [
                libc::pollfd { fd: self.event.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: stop.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            ];
            // SAFETY: `fds` is a live array of two pollfds.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if n < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            }
            if fds[1].revents != 0 {
                return;
            }
            if fds[0].revents != 0 {
                let _ = self.event.read();
                self.serve();
            }
        }
    }

    /// Answers every request available, then interrupts the guest once if
    /// it asked (with EVENT_IDX: if the used index passed its `used_event`).
    /// Kicks stay off while requests are taken; once re-enabled the ring is
    /// read again, so a request made available meanwhile is not left
    /// waiting for a kick the driver will not send.
    pub fn serve(&mut self) {
        let mut slot = self.active.lock().unwrap_or_else(|p| p.into_inner());
        let Some(Active { queue, memory, interrupt }) = slot.as_mut() else { return };
        let mut used = false;
        let broken = loop {
            if queue.disable_notification(memory).is_err() {
                break true;
            }
            // An available index more than a ring ahead: virtio-queue
            // would pop nothing while `enable_notification` says there is
            // more, round and round.
            if super::pending(memory, queue).is_none() {
                self.disk.stats.error(Some("an available index past the ring".into()));
                break true;
            }
            let mut broken = false;
            while let Some(chain) = queue.pop_descriptor_chain(&*memory) {
                let head = chain.head_index();
                match self.disk.handle(memory, chain) {
                    Outcome::Used(len) => {
                        if queue.add_used(memory, head, len).is_err() {
                            broken = true;
                            break;
                        }
                        used = true;
                    }
                    Outcome::Broken => {
                        broken = true;
                        break;
                    }
                }
            }
            if broken {
                break true;
            }
            match queue.enable_notification(memory) {
                Ok(true) => continue,
                Ok(false) => break false,
                Err(_) => break true,
            }
        };
        if broken {
            interrupt.broken();
            *slot = None;
            return;
        }
        if used && queue.needs_notification(memory).unwrap_or(true) {
            interrupt.queue(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::sync::atomic::AtomicU32;

    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use vm_memory::GuestAddress;

    use super::*;
    use crate::block::raw::Raw;

    const WRITE: u16 = 2;
    const NEXT: u16 = 1;

    #[derive(Default)]
    struct Irq {
        queue: AtomicU32,
        broken: AtomicU32,
    }
    impl VirtioInterrupt for Irq {
        fn queue(&self, _: u16) {
            self.queue.fetch_add(1, Ordering::SeqCst);
        }
        fn broken(&self) {
            self.broken.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct Rig {
        mem: GuestMemoryMmap,
        worker: Worker,
        irq: Arc<Irq>,
        image: std::fs::File,
        stats: Arc<Stats>,
    }

    /// The queue's layout in test memory (laid out here: virtio-queue's
    /// mock lays rings of more than 8 entries over each other).
    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;

    /// A disk of 16 sectors of 0xab over a raw temp file, a queue of 16.
    fn rig(config: DiskConfig) -> Rig {
        let mut image = tempfile::tempfile().unwrap();
        image.write_all(&[0xab; 16 * 512]).unwrap();
        let backend = image.try_clone().unwrap();
        rig_over(config, image, backend, Arc::new(Stats::default()), false)
    }

    /// The same over `backend` (the image as the device opens it), with
    /// VIRTIO_F_EVENT_IDX negotiated if `event_idx`.
    fn rig_over(
        config: DiskConfig,
        image: std::fs::File,
        backend: std::fs::File,
        stats: Arc<Stats>,
        event_idx: bool,
    ) -> Rig {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let disk = Disk::new(&config, Box::new(Raw::new(backend).unwrap()), stats.clone());
        let (mut blk, worker) = Blk::new(&config, disk).unwrap();
        let mut q = Queue::new(16).unwrap();
        q.set_size(16);
        q.set_desc_table_address(Some(DESC as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_ready(true);
        q.set_event_idx(event_idx);
        let irq = Arc::new(Irq::default());
        blk.activate(mem.clone(), 0, vec![q], irq.clone()).unwrap();
        Rig { mem, worker, irq, image, stats }
    }

    impl Rig {
        /// Puts a request (the header, then `descs`: addr, len, flags) in the ring and
        /// serves it; returns the status and the used length.
        fn request(&mut self, header: RequestHeader, descs: &[(u64, u32, u16)]) -> (u8, u32) {
            self.mem.write_obj(header, GuestAddress(0x10000)).unwrap();
            self.mem.write_obj(0xeeu8, GuestAddress(0x30000)).unwrap();
            let mut all = vec![(0x10000, 16, 0)];
            all.extend_from_slice(descs);
            self.submit(&all);
            self.worker.serve();
            let used_idx: u16 = self.mem.read_obj(GuestAddress(USED + 2)).unwrap();
            let slot = USED + 4 + 8 * u64::from(used_idx.wrapping_sub(1) % 16);
            let len: u32 = self.mem.read_obj(GuestAddress(slot + 4)).unwrap();
            (self.mem.read_obj(GuestAddress(0x30000)).unwrap(), len)
        }

        /// One chain of `descs` (NEXT added but on the last) from descriptor 0, made available.
        fn submit(&self, descs: &[(u64, u32, u16)]) {
            self.submit_at(0, descs);
        }

        /// The same from descriptor `head`.
        fn submit_at(&self, head: u16, descs: &[(u64, u32, u16)]) {
            for (i, &(addr, len, flags)) in descs.iter().enumerate() {
                let at = head + i as u16;
                let last = i + 1 == descs.len();
                let (flags, next) = if last { (flags, 0) } else { (flags | NEXT, at + 1) };
                let d = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
                self.mem.write_obj(d, GuestAddress(DESC + 16 * u64::from(at))).unwrap();
            }
            let idx: u16 = self.mem.read_obj(GuestAddress(AVAIL + 2)).unwrap();
            self.mem.write_obj(head, GuestAddress(AVAIL + 4 + 2 * u64::from(idx % 16))).unwrap();
            self.mem.write_obj(idx.wrapping_add(1), GuestAddress(AVAIL + 2)).unwrap();
        }

        /// The used ring's index.
        fn used_idx(&self) -> u16 {
            self.mem.read_obj(GuestAddress(USED + 2)).unwrap()
        }

        /// A 4 KiB read of sector `sector` in slot `n` (descriptors 3n..3n+2,
        /// its own header, data page and status byte), made available.
        fn submit_read(&self, n: u16, sector: u64) {
            let at = u64::from(n);
            self.mem.write_obj(hdr(T_IN, sector), GuestAddress(0x10000 + 16 * at)).unwrap();
            self.mem.write_obj(0xeeu8, GuestAddress(0x30000 + at)).unwrap();
            let descs = [(0x10000 + 16 * at, 16, 0), (0x40000 + 0x1000 * at, 4096, WRITE), (0x30000 + at, 1, WRITE)];
            self.submit_at(3 * n, &descs);
        }
    }

    /// Where the driver's `used_event` and the device's `avail_event` are for a queue of 16.
    const USED_EVENT: u64 = AVAIL + 4 + 2 * 16;
    const AVAIL_EVENT: u64 = USED + 4 + 8 * 16;

    #[test]
    fn with_event_idx_a_batch_costs_one_interrupt_and_used_event_is_honoured() {
        let mut image = tempfile::tempfile().unwrap();
        image.write_all(&[0xab; 16 * 512]).unwrap();
        let backend = image.try_clone().unwrap();
        let mut r = rig_over(DiskConfig::test("vda"), image, backend, Arc::new(Stats::default()), true);
        // The driver wants an interrupt once the used index passes 0.
        r.mem.write_obj(0u16, GuestAddress(USED_EVENT)).unwrap();
        for n in 0..3 {
            r.submit_read(n, 2 * u64::from(n));
        }
        r.worker.serve();
        assert_eq!(r.used_idx(), 3, "all three answered in one pass");
        for n in 0..3 {
            assert_eq!(r.mem.read_obj::<u8>(GuestAddress(0x30000 + n)).unwrap(), S_OK);
        }
        assert_eq!(r.irq.queue.load(Ordering::SeqCst), 1, "one interrupt for the batch");
        assert_eq!(r.mem.read_obj::<u16>(GuestAddress(AVAIL_EVENT)).unwrap(), 3, "kick me at the next request");
        // Not yet wanted: the used index must pass 9 first.
        r.mem.write_obj(9u16, GuestAddress(USED_EVENT)).unwrap();
        r.submit_read(3, 0);
        r.worker.serve();
        assert_eq!((r.used_idx(), r.irq.queue.load(Ordering::SeqCst)), (4, 1), "no interrupt before used_event");
        // Wanted once the used index passes 4.
        r.mem.write_obj(4u16, GuestAddress(USED_EVENT)).unwrap();
        r.submit_read(4, 0);
        r.worker.serve();
        assert_eq!((r.used_idx(), r.irq.queue.load(Ordering::SeqCst)), (5, 2));
        assert_eq!(r.irq.broken.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn an_avail_index_past_the_ring_breaks_the_device_without_spinning() {
        let r = rig(DiskConfig::test("vda"));
        // 1000 chains made available on a ring of 16: virtio-queue pops none of them.
        r.mem.write_obj(1000u16, GuestAddress(AVAIL + 2)).unwrap();
        let Rig { mut worker, irq, stats, .. } = r;
        let (done, finished) = std::sync::mpsc::channel();
        // On a thread, so that a device that spins fails the test instead of hanging it.
        std::thread::spawn(move || {
            worker.serve();
            let stopped = worker.active.lock().unwrap().is_none();
            worker.serve();
            let _ = done.send(stopped);
        });
        let stopped = finished.recv_timeout(std::time::Duration::from_secs(10)).expect("serve returned");
        assert!(stopped, "it stops until reset");
        assert_eq!(irq.broken.load(Ordering::SeqCst), 1, "broken once, then quiet");
        assert_eq!(irq.queue.load(Ordering::SeqCst), 0);
        assert_eq!(stats.snapshot("d").errors, 1);
    }

    fn hdr(kind: u32, sector: u64) -> RequestHeader {
        RequestHeader { kind, ioprio: 0, sector }
    }

    const STATUS: (u64, u32, u16) = (0x30000, 1, WRITE);

    #[test]
    fn reads_and_writes_reach_the_image_at_the_sector() {
        let mut r = rig(DiskConfig::test("vda"));
        r.mem.write_slice(&[0x11; 1024], GuestAddress(0x20000)).unwrap();
        assert_eq!(r.request(hdr(T_OUT, 3), &[(0x20000, 1024, 0), STATUS]), (S_OK, 1));
        let mut back = [0u8; 1536];
        std::os::unix::fs::FileExt::read_exact_at(&r.image, &mut back, 1024).unwrap();
        assert!(back[..512].iter().all(|b| *b == 0xab) && back[512..].iter().all(|b| *b == 0x11));
        assert_eq!(r.request(hdr(T_IN, 2), &[(0x40000, 1024, WRITE), STATUS]), (S_OK, 1025));
        let mut got = [0u8; 1024];
        r.mem.read_slice(&mut got, GuestAddress(0x40000)).unwrap();
        assert!(got[..512].iter().all(|b| *b == 0xab) && got[512..].iter().all(|b| *b == 0x11));
        assert_eq!(r.request(hdr(T_FLUSH, 0), &[STATUS]), (S_OK, 1));
        let s = r.stats.snapshot("d");
        assert_eq!((s.rd_reqs, s.rd_bytes, s.wr_reqs, s.wr_bytes, s.flush_reqs, s.errors), (1, 1024, 1, 1024, 1, 0));
        assert!(r.irq.queue.load(Ordering::SeqCst) >= 1);
    }

    #[test]
    fn guest_values_out_of_bounds_get_an_error_status() {
        let mut r = rig(DiskConfig::test("vda"));
        // Past the end, overflowing sector*512, a partial sector.
        assert_eq!(r.request(hdr(T_IN, 15), &[(0x40000, 1024, WRITE), STATUS]).0, S_IOERR);
        assert_eq!(r.request(hdr(T_IN, u64::MAX / 256), &[(0x40000, 512, WRITE), STATUS]).0, S_IOERR);
        assert_eq!(r.request(hdr(T_OUT, 0), &[(0x20000, 100, 0), STATUS]).0, S_IOERR);
        // A data buffer outside guest memory.
        assert_eq!(r.request(hdr(T_IN, 0), &[(0xf000_0000, 512, WRITE), STATUS]).0, S_IOERR);
        assert_eq!(r.request(hdr(T_OUT, 0), &[(0xffff_ffff_ffff_fe00, 512, 0), STATUS]).0, S_IOERR);
        // Unknown type.
        assert_eq!(r.request(hdr(99, 0), &[STATUS]).0, S_UNSUPP);
        assert_eq!(r.stats.snapshot("d").errors, 6);
        assert_eq!(r.irq.broken.load(Ordering::SeqCst), 0, "the device goes on");
        assert_eq!(r.request(hdr(T_IN, 0), &[(0x40000, 512, WRITE), STATUS]).0, S_OK);
    }

    #[test]
    fn a_chain_with_no_status_breaks_the_device() {
        let mut r = rig(DiskConfig::test("vda"));
        r.mem.write_obj(hdr(T_IN, 0), GuestAddress(0x10000)).unwrap();
        // Only readable descriptors: nowhere to put the status.
        r.submit(&[(0x10000, 16, 0)]);
        r.worker.serve();
        assert_eq!(r.irq.broken.load(Ordering::SeqCst), 1);
        assert!(r.worker.active.lock().unwrap().is_none(), "it stops until reset");
    }

    #[test]
    fn read_only_refuses_writes_and_get_id_gives_the_serial() {
        let config =
            DiskConfig { read_only: true, serial: Some("SN-0123456789abcdefXYZ".into()), ..DiskConfig::test("vda") };
        let mut r = rig(config);
        assert_eq!(r.request(hdr(T_OUT, 0), &[(0x20000, 512, 0), STATUS]).0, S_IOERR);
        assert_eq!(r.request(hdr(T_WRITE_ZEROES, 0), &[(0x20000, 16, 0), STATUS]).0, S_IOERR);
        let mut back = [0u8; 512];
        std::os::unix::fs::FileExt::read_exact_at(&r.image, &mut back, 0).unwrap();
        assert!(back.iter().all(|b| *b == 0xab), "the image is untouched");
        assert_eq!(r.request(hdr(T_GET_ID, 0), &[(0x40000, 20, WRITE), STATUS]), (S_OK, 21));
        let mut id = [0u8; 20];
        r.mem.read_slice(&mut id, GuestAddress(0x40000)).unwrap();
        assert_eq!(&id, b"SN-0123456789abcdefX", "20 bytes at most");
    }

    /// CPU time this thread has used.
    fn thread_cpu() -> std::time::Duration {
        let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `t` is a live timespec the call fills.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
        std::time::Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    }

    /// The device model alone, from the host side: 4 KiB reads, then
    /// writes, at random 4 KiB blocks of a 32 MiB raw image in the page
    /// cache, written as the guest benchmark's is (4 KiB at a time, then
    /// synced: 4 KiB folios), five requests per pass as
    /// a driver with requests in flight makes them, EVENT_IDX on. Requests
    /// per second of this thread's CPU time (one core, whatever else the
    /// machine runs) and of the wall clock.
    /// Run: `cargo test --release --bin libvirt-helper -- --ignored --nocapture host_side`.
    #[test]
    #[ignore = "a benchmark: prints requests per second"]
    fn host_side_requests_per_second() {
        const BLOCKS: u64 = 8192;
        const BATCH: u16 = 5;
        let mut image = tempfile::tempfile_in(std::env::temp_dir()).unwrap();
        let bytes: Vec<u8> = (0..BLOCKS as usize * 4096).map(|i| (i / 512) as u8 ^ (i as u8).wrapping_mul(7)).collect();
        for page in bytes.chunks(4096) {
            image.write_all(page).unwrap();
        }
        image.sync_all().unwrap();
        let backend = image.try_clone().unwrap();
        let mut r = rig_over(DiskConfig::test("vda"), image, backend, Arc::new(Stats::default()), true);
        let mut seed = 1u64;
        for (label, kind, flags) in [("read", T_IN, WRITE), ("write", T_OUT, 0)] {
            let batches = 20_000u32;
            let (wall, cpu) = (Instant::now(), thread_cpu());
            for _ in 0..batches {
                for n in 0..BATCH {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let sector = 8 * ((seed >> 33) % BLOCKS);
                    let at = u64::from(n);
                    r.mem.write_obj(hdr(kind, sector), GuestAddress(0x10000 + 16 * at)).unwrap();
                    r.mem.write_obj(0xeeu8, GuestAddress(0x30000 + at)).unwrap();
                    let data = (0x40000 + 0x1000 * at, 4096, flags);
                    r.submit_at(3 * n, &[(0x10000 + 16 * at, 16, 0), data, (0x30000 + at, 1, WRITE)]);
                }
                r.worker.serve();
                for n in 0..u64::from(BATCH) {
                    assert_eq!(r.mem.read_obj::<u8>(GuestAddress(0x30000 + n)).unwrap(), S_OK, "{label}");
                }
            }
            let n = f64::from(batches * u32::from(BATCH));
            let (wall, cpu) = (wall.elapsed().as_secs_f64(), (thread_cpu() - cpu).as_secs_f64());
            println!(
                "virtio-blk host side: 4 KiB {label}s, {:.0} per second of CPU (one core), {:.0} per second of wall clock",
                n / cpu,
                n / wall
            );
        }
        assert_eq!(r.stats.snapshot("d").errors, 0);
    }

    #[test]
    fn write_zeroes_and_discard_follow_the_configuration() {
        let mut r = rig(DiskConfig::test("vda"));
        r.mem.write_obj(Segment { sector: 1, sectors: 2, flags: 0 }, GuestAddress(0x20000)).unwrap();
        assert_eq!(r.request(hdr(T_WRITE_ZEROES, 0), &[(0x20000, 16, 0), STATUS]).0, S_OK);
        let mut back = [0u8; 2048];
        std::os::unix::fs::FileExt::read_exact_at(&r.image, &mut back, 0).unwrap();
        assert!(back[..512].iter().all(|b| *b == 0xab) && back[512..1536].iter().all(|b| *b == 0));
        assert_eq!(r.request(hdr(T_DISCARD, 0), &[(0x20000, 16, 0), STATUS]).0, S_UNSUPP, "discard not enabled");
        r.mem.write_obj(Segment { sector: 15, sectors: 2, flags: 0 }, GuestAddress(0x20000)).unwrap();
        assert_eq!(r.request(hdr(T_WRITE_ZEROES, 0), &[(0x20000, 16, 0), STATUS]).0, S_IOERR, "past the end");
    }

    #[test]
    fn backend_errors_wake_the_control_thread_once_a_second_at_most() {
        let mut image = tempfile::tempfile().unwrap();
        image.write_all(&[0xab; 16 * 512]).unwrap();
        // The same file opened read-only: every write fails in the backend (EBADF).
        let backend = std::fs::File::open(format!("/proc/self/fd/{}", image.as_raw_fd())).unwrap();
        let notify = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let stats = Arc::new(Stats::reporting_to(notify.clone()));
        let mut r = rig_over(DiskConfig::test("vda"), image, backend, stats, false);
        assert_eq!(r.stats.take_report(), None);
        // A guest's own mistake is counted but is no backend error.
        assert_eq!(r.request(hdr(T_IN, 15), &[(0x40000, 1024, WRITE), STATUS]).0, S_IOERR);
        assert!(notify.read().is_err(), "nothing to report yet");
        for _ in 0..3 {
            assert_eq!(r.request(hdr(T_OUT, 0), &[(0x20000, 512, 0), STATUS]).0, S_IOERR);
        }
        assert_eq!(notify.read().unwrap(), 1, "woken once for three errors");
        let report = r.stats.take_report().unwrap();
        assert!(report.contains("Bad file descriptor"), "{report}");
        assert_eq!(r.stats.take_report(), None);
        assert_eq!(r.stats.snapshot("d").errors, 4);
        // After a second the next error is reported again.
        std::thread::sleep(REPORT_EVERY);
        assert_eq!(r.request(hdr(T_OUT, 0), &[(0x20000, 512, 0), STATUS]).0, S_IOERR);
        assert_eq!(notify.read().unwrap(), 1);
        assert!(r.stats.take_report().is_some());
    }
}
