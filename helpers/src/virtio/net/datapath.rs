//! virtio-net's data path: frames between a tap and the guest's receive and
//! transmit queues, with every guest-controlled value checked on the way.
//!
//! Pure of threads and interrupts (the device's thread in `net.rs` calls it
//! and raises them), so unit tests and the benchmark drive it with queues
//! in test memory.
//!
//! **What is checked.** A transmit chain is walked descriptor by descriptor:
//! more than [`MAX_DESCS`] descriptors, a chain that does not end (a loop,
//! one longer than the queue), a device-writable descriptor, a descriptor of
//! length 0 or outside guest RAM, less than a header and an Ethernet header
//! in all, or more than [`MAX_FRAME`] bytes after the header, and the frame
//! is dropped and counted in `tx_errs`; its header must ask only for the
//! offloads the driver negotiated, with checksum offsets inside the frame.
//! A receive chain must be device-writable only and hold the whole frame
//! (with MRG_RXBUF: the frame waits until enough chains together hold it).
//! Nothing is read or written outside guest RAM (vm-memory's checked
//! accesses), and a broken chain costs the guest one frame, never the helper.

use std::io;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use libvirtd::privsep::helper::NicCounters;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

/// Bytes of `virtio_net_hdr_v1` (with `num_buffers`) before each frame,
/// on the tap (the broker sets it with TUNSETVNETHDRSZ) and in the queues.
pub const HDR_LEN: usize = 12;
/// The largest frame after the header (virtio 1.2, 5.1.6.3.1: 65562
/// bytes of buffer with the header).
pub const MAX_FRAME: usize = 65550;
/// An Ethernet header: the shortest frame either way.
pub const ETH_HLEN: usize = 14;
/// Most descriptors in one chain.
pub const MAX_DESCS: usize = 256;
/// Most frames moved per direction before the thread looks at its other fds.
pub const BATCH: usize = 256;

/// VIRTIO_NET_F_CSUM: the guest may send frames with a partial checksum.
pub const F_CSUM: u64 = 1 << 0;
/// VIRTIO_NET_F_GUEST_CSUM: the guest takes frames with a partial checksum.
pub const F_GUEST_CSUM: u64 = 1 << 1;
/// VIRTIO_NET_F_GUEST_TSO4: the guest takes TCPv4 super-frames.
pub const F_GUEST_TSO4: u64 = 1 << 7;
/// VIRTIO_NET_F_GUEST_TSO6: the guest takes TCPv6 super-frames.
pub const F_GUEST_TSO6: u64 = 1 << 8;
/// VIRTIO_NET_F_HOST_TSO4: the guest may send TCPv4 super-frames.
pub const F_HOST_TSO4: u64 = 1 << 11;
/// VIRTIO_NET_F_HOST_TSO6: the guest may send TCPv6 super-frames.
pub const F_HOST_TSO6: u64 = 1 << 12;
/// VIRTIO_NET_F_MRG_RXBUF: a received frame may span several buffers,
/// `num_buffers` in its header saying how many.
pub const F_MRG_RXBUF: u64 = 1 << 15;
/// Every offload feature, offered together or not at all.
pub const OFFLOADS: u64 = F_CSUM | F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6 | F_HOST_TSO4 | F_HOST_TSO6;

const HDR_F_NEEDS_CSUM: u8 = 1;
const HDR_F_DATA_VALID: u8 = 2;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;

/// One interface's counters, shared with the control thread, which reads
/// them for `NetStats` without touching the device.
#[derive(Debug, Default)]
pub struct Counters {
    rx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    rx_errs: AtomicU64,
    rx_drop: AtomicU64,
    tx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_errs: AtomicU64,
    tx_drop: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl Counters {
    /// The counters as the broker hears them.
    pub fn snapshot(&self, alias: &str, link_up: bool) -> NicCounters {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NicCounters {
            alias: alias.to_string(),
            rx_bytes: get(&self.rx_bytes),
            rx_packets: get(&self.rx_packets),
            rx_errs: get(&self.rx_errs),
            rx_drop: get(&self.rx_drop),
            tx_bytes: get(&self.tx_bytes),
            tx_packets: get(&self.tx_packets),
            tx_errs: get(&self.tx_errs),
            tx_drop: get(&self.tx_drop),
            link_up,
        }
    }
}

/// The tap the broker made, non-blocking. Each read gives one frame, each
/// write takes one, both with the virtio-net header in front.
#[derive(Debug)]
pub struct Tap(OwnedFd);

impl Tap {
    /// Takes `fd` and makes it non-blocking, so that a full or empty tap
    /// never stalls the device's thread. Run before the process is confined.
    pub fn new(fd: OwnedFd) -> io::Result<Tap> {
        // SAFETY: F_GETFL/F_SETFL on an fd we own; no pointers.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Tap(fd))
    }

    /// Its fd, for poll.
    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: writes at most `buf.len()` bytes into `buf`, a live slice.
        let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }

    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: reads at most `buf.len()` bytes from `buf`, a live slice.
        let n = unsafe { libc::write(self.0.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }

    /// Tells the tap which offloaded frames this end takes (TUNSETOFFLOAD
    /// with `TUN_F_*` bits); fails on anything that is not a tap.
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
        let r = unsafe { libc::ioctl(self.0.as_raw_fd(), libc::TUNSETOFFLOAD as _, libc::c_ulong::from(flags)) };
        if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Whether the tap takes every offload this device offers: then the
    /// offload features are offered, else none. Leaves offloads off until
    /// a driver negotiates them.
    pub fn probe_offloads(&self) -> bool {
        let all = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
        let ok = self.set_offload(all).is_ok();
        let _ = self.set_offload(0);
        ok
    }
}

/// The `TUN_F_*` bits for what the driver said it takes.
pub fn tap_offloads(features: u64) -> u32 {
    if features & F_GUEST_CSUM == 0 {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if features & F_GUEST_TSO4 != 0 {
        flags |= libc::TUN_F_TSO4;
    }
    if features & F_GUEST_TSO6 != 0 {
        flags |= libc::TUN_F_TSO6;
    }
    flags
}

/// The queue itself is corrupt (its rings outside guest memory): the device
/// needs a reset.
#[derive(Debug, PartialEq, Eq)]
pub struct Broken;

impl From<virtio_queue::Error> for Broken {
    fn from(_: virtio_queue::Error) -> Broken {
        Broken
    }
}

/// What a pass over one queue did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Buffers were used: the driver may want an interrupt.
    pub used: bool,
    /// The batch ended with work left: come back without waiting.
    pub more: bool,
    /// Receive only: the guest has no buffer, so the tap is not read until
    /// it adds one (frames wait in the tap's queue meanwhile).
    pub starved: bool,
}

/// Frames between one tap and one queue pair.
pub struct Datapath {
    tap: Tap,
    counters: std::sync::Arc<Counters>,
    /// One frame with its header, and a byte more to tell an oversized
    /// frame from a full one.
    frame: Vec<u8>,
    /// The length of a frame in `frame` that waits for more buffers
    /// (merged receive buffers only).
    held: Option<usize>,
    /// The buffers a merged frame goes into: (chain head, address, length).
    segments: Vec<(u16, u64, u32)>,
}

fn u16_at(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

impl Datapath {
    /// A data path over `tap`, counting into `counters`.
    pub fn new(tap: Tap, counters: std::sync::Arc<Counters>) -> Datapath {
        Datapath { tap, counters, frame: vec![0; HDR_LEN + MAX_FRAME + 1], held: None, segments: Vec::new() }
    }

    /// The tap.
    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    /// Sends what the guest queued on `queue` (transmit); with the link
    /// down, each frame is consumed and counted as dropped.
    pub fn transmit(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
        features: u64,
        link_up: bool,
    ) -> Result<Pass, Broken> {
        let mut pass = Pass::default();
        let mut n = 0;
        loop {
            queue.disable_notification(mem)?;
            pending(mem, queue)?;
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let frame = self.take(mem, chain, features, link_up);
                // The frame is copied out: the buffer goes back before the
                // tap write, which runs the host's stack for the frame (and
                // wakes its receiver) before it returns. A driver that waits
                // on each completion sees it that much sooner.
                queue.add_used(mem, head, 0)?;
                if let Some(len) = frame {
                    self.send(len);
                }
                pass.used = true;
                n += 1;
                if n == BATCH {
                    pass.more = true;
                    return Ok(pass);
                }
            }
            if !queue.enable_notification(mem)? {
                return Ok(pass);
            }
        }
    }

    /// Copies a transmit chain into `frame` and checks it: its length if
    /// it is to be sent, else `None` (counted as an error, or as dropped
    /// with the link down).
    fn take(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
        features: u64,
        up: bool,
    ) -> Option<usize> {
        let Some(len) = self.gather(mem, chain) else {
            bump(&self.counters.tx_errs, 1);
            return None;
        };
        let c = &self.counters;
        if !tx_header_ok(&mut self.frame[..len], features) {
            bump(&c.tx_errs, 1);
            return None;
        }
        if !up {
            bump(&c.tx_drop, 1);
            return None;
        }
        Some(len)
    }

    /// Writes the first `len` bytes of `frame` to the tap, counted.
    fn send(&mut self, len: usize) {
        let c = &self.counters;
        match self.tap.write(&self.frame[..len]) {
            Ok(n) if n == len => {
                bump(&c.tx_packets, 1);
                bump(&c.tx_bytes, (len - HDR_LEN) as u64);
            }
            // The kernel's own check of the header and frame.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => bump(&c.tx_errs, 1),
            _ => bump(&c.tx_drop, 1),
        }
    }

    /// Copies a transmit chain into `frame`; `None` if it breaks a rule.
    fn gather(&mut self, mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> Option<usize> {
        let limit = HDR_LEN + MAX_FRAME;
        let (mut total, mut count, mut ended) = (0usize, 0usize, false);
        for d in chain {
            count += 1;
            if count > MAX_DESCS || d.is_write_only() || d.len() == 0 {
                return None;
            }
            let len = d.len() as usize;
            let end = total.checked_add(len).filter(|e| *e <= limit)?;
            // Fails for any byte outside guest RAM.
            mem.read_slice(&mut self.frame[total..end], d.addr()).ok()?;
            total = end;
            ended = !d.has_next();
        }
        // A chain that did not end: a loop, longer than the queue, or a
        // descriptor that could not be read.
        (ended && total >= HDR_LEN + ETH_HLEN).then_some(total)
    }

    /// Delivers frames from the tap into the guest's buffers on `queue`
    /// (receive). A frame is read only once a buffer is there for it.
    pub fn receive(&mut self, mem: &GuestMemoryMmap, queue: &mut Queue, features: u64) -> Result<Pass, Broken> {
        let mut pass = Pass::default();
        queue.disable_notification(mem)?;
        for _ in 0..BATCH {
            if pending(mem, queue)? == 0 {
                // Out of buffers: ask for a kick when the guest adds some.
                if queue.enable_notification(mem)? {
                    continue;
                }
                pass.starved = true;
                return Ok(pass);
            }
            let len = match self.held.take().map_or_else(|| self.tap.read(&mut self.frame), Ok) {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Empty (EAGAIN), or a tap that failed: poll says when to come back.
                Err(_) => return Ok(pass),
            };
            if features & F_MRG_RXBUF != 0 {
                let seen = queue.avail_idx(mem, Ordering::Acquire)?;
                if self.deliver_merged(mem, queue, len, features)? {
                    pass.used = true;
                    continue;
                }
                // Not buffers enough for it: it waits for the guest's next ones.
                self.held = Some(len);
                queue.enable_notification(mem)?;
                if queue.avail_idx(mem, Ordering::Acquire)? != seen {
                    continue;
                }
                pass.starved = true;
                return Ok(pass);
            }
            let chain = queue.pop_descriptor_chain(mem).ok_or(Broken)?;
            let head = chain.head_index();
            let written = self.deliver(mem, chain, len, features);
            queue.add_used(mem, head, written)?;
            pass.used = true;
        }
        pass.more = true;
        Ok(pass)
    }

    /// Writes the frame of `len` bytes into `chain`; returns the used length
    /// (0 when it could not be delivered, counted in `rx_errs`).
    fn deliver(&mut self, mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>, len: usize, f: u64) -> u32 {
        let c = std::sync::Arc::clone(&self.counters);
        if !(HDR_LEN + ETH_HLEN..=HDR_LEN + MAX_FRAME).contains(&len) || !rx_header_fix(&mut self.frame, f) {
            bump(&c.rx_errs, 1);
            return 0;
        }
        let (mut done, mut count) = (0usize, 0usize);
        for d in chain {
            count += 1;
            if count > MAX_DESCS || !d.is_write_only() {
                break;
            }
            let n = (d.len() as usize).min(len - done);
            if mem.write_slice(&self.frame[done..done + n], d.addr()).is_err() {
                break;
            }
            done += n;
            if done == len {
                break;
            }
        }
        if done < len {
            bump(&c.rx_errs, 1);
            return 0;
        }
        bump(&c.rx_packets, 1);
        bump(&c.rx_bytes, (len - HDR_LEN) as u64);
        len as u32
    }

    /// Writes the frame of `len` bytes across as many of the guest's chains
    /// as it needs (merged receive buffers); `false`, with nothing taken, if
    /// the guest has not given enough. A frame that cannot be delivered is
    /// counted in `rx_errs` and every chain it took given back empty.
    fn deliver_merged(&mut self, mem: &GuestMemoryMmap, queue: &mut Queue, len: usize, f: u64) -> Result<bool, Broken> {
        let c = std::sync::Arc::clone(&self.counters);
        if !(HDR_LEN + ETH_HLEN..=HDR_LEN + MAX_FRAME).contains(&len) || !rx_header_fix(&mut self.frame, f) {
            bump(&c.rx_errs, 1);
            return Ok(true);
        }
        self.segments.clear();
        let (mut capacity, mut chains, mut heads_ok) = (0usize, 0u16, true);
        while capacity < len {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                if pending(mem, queue)? != 0 {
                    return Err(Broken);
                }
                // Give back what was taken: the same chains are popped again.
                queue.set_next_avail(queue.next_avail().wrapping_sub(chains));
                return Ok(false);
            };
            chains += 1;
            let head = chain.head_index();
            // A chain with no room still counts as a buffer: it is given back empty.
            self.segments.push((head, 0, 0));
            for (i, d) in chain.enumerate() {
                if i >= MAX_DESCS || !d.is_write_only() {
                    heads_ok = false;
                    break;
                }
                self.segments.push((head, d.addr().0, d.len()));
                capacity += d.len() as usize;
            }
            if !heads_ok {
                break;
            }
        }
        self.frame[10..12].copy_from_slice(&chains.to_le_bytes());
        // Scatter, counting what each chain got.
        let (mut done, mut ok) = (0usize, heads_ok);
        let mut used: Vec<(u16, u32)> = Vec::with_capacity(usize::from(chains));
        for &(head, addr, seg_len) in &self.segments {
            if used.last().is_none_or(|(h, _)| *h != head) {
                used.push((head, 0));
            }
            let n = (seg_len as usize).min(len - done);
            if !ok || n == 0 {
                continue;
            }
            if mem.write_slice(&self.frame[done..done + n], vm_memory::GuestAddress(addr)).is_err() {
                ok = false;
                continue;
            }
            done += n;
            if let Some(last) = used.last_mut() {
                last.1 += n as u32;
            }
        }
        let ok = ok && done == len;
        for (head, written) in used {
            queue.add_used(mem, head, if ok { written } else { 0 })?;
        }
        if ok {
            bump(&c.rx_packets, 1);
            bump(&c.rx_bytes, (len - HDR_LEN) as u64);
        } else {
            bump(&c.rx_errs, 1);
        }
        Ok(true)
    }

    /// Reads and drops up to a batch of frames from the tap (link down, or
    /// no driver), counting them; `true` if the tap may hold more.
    pub fn discard(&mut self) -> bool {
        if self.held.take().is_some() {
            bump(&self.counters.rx_drop, 1);
        }
        for _ in 0..BATCH {
            match self.tap.read(&mut self.frame) {
                Ok(_) => bump(&self.counters.rx_drop, 1),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }
}

/// How many chains the driver has made available and the device not taken.
/// More than the queue holds is a corrupt ring (from which virtio-queue pops
/// nothing while its notification check still says there is work, which
/// would spin): the device needs a reset. Every virtio device's check
/// (`virtio::pending`); it lives here because `benches/virtio_net.rs`
/// compiles this file on its own.
pub(crate) fn pending(mem: &GuestMemoryMmap, queue: &Queue) -> Result<u16, Broken> {
    let ahead = (queue.avail_idx(mem, Ordering::Acquire)? - Wrapping(queue.next_avail())).0;
    if ahead > queue.size() { Err(Broken) } else { Ok(ahead) }
}

/// Checks a transmit header against the frame and the features, and clears
/// `num_buffers`. `frame` holds the header and the frame after it.
fn tx_header_ok(frame: &mut [u8], features: u64) -> bool {
    let body = frame.len() - HDR_LEN;
    let (flags, gso) = (frame[0], frame[1]);
    let (hdr_len, gso_size) = (u16_at(frame, 2), u16_at(frame, 4));
    let (csum_start, csum_offset) = (u16_at(frame, 6), u16_at(frame, 8));
    if flags & !HDR_F_NEEDS_CSUM != 0 {
        return false;
    }
    let csum = flags & HDR_F_NEEDS_CSUM != 0;
    if csum && (features & F_CSUM == 0 || csum_start + csum_offset + 2 > body) {
        return false;
    }
    let gso_ok = match gso {
        GSO_NONE => true,
        GSO_TCPV4 => features & F_HOST_TSO4 != 0,
        GSO_TCPV6 => features & F_HOST_TSO6 != 0,
        _ => false,
    };
    if !gso_ok || (gso != GSO_NONE && (!csum || gso_size == 0 || hdr_len > body)) {
        return false;
    }
    frame[10] = 0;
    frame[11] = 0;
    true
}

/// Makes the tap's header one the driver can take: only the flags and
/// segmentation it negotiated (`false` if the frame needs one it did not),
/// and `num_buffers` 1.
fn rx_header_fix(frame: &mut [u8], features: u64) -> bool {
    let (flags, gso) = (frame[0], frame[1]);
    if features & F_GUEST_CSUM == 0 {
        if flags & HDR_F_NEEDS_CSUM != 0 {
            return false;
        }
        frame[0] = 0;
    } else {
        frame[0] = flags & (HDR_F_NEEDS_CSUM | HDR_F_DATA_VALID);
    }
    let gso_ok = match gso {
        GSO_NONE => true,
        GSO_TCPV4 => features & F_GUEST_TSO4 != 0,
        GSO_TCPV6 => features & F_GUEST_TSO6 != 0,
        _ => false,
    };
    frame[10..12].copy_from_slice(&1u16.to_le_bytes());
    gso_ok
}
