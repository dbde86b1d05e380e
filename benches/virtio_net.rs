//! virtio-net's data path from the host side: the helper's own device model
//! (`helpers/src/virtio/net/datapath.rs`, compiled in here, since the helper
//! is not a library) moving frames between queues in test memory and a tap
//! in a network namespace this benchmark makes, as a driver would fill them.
//! Prints packets per second per core (frames over the CPU time of the
//! thread that runs the device model) and per wall-clock second, for
//! transmit (64-byte frames to the tap) and receive (UDP datagrams sent
//! into the tap from the namespace by another thread).
//!
//! Then, under `cargo bench` only, the same from inside a guest: the test
//! guest (tests/guest/guest.S, its own virtio-net driver, static `ip=`)
//! over a tap in a namespace of its own, in our helper and beside it in
//! QEMU with `-device virtio-net-pci` (tap backend, no vhost), the same
//! image: UDP request/response round trips to an echo server in the
//! namespace (`udprr`), datagrams sent back to back (`udpburst`, packets/s
//! the host received) and datagrams the namespace floods the guest with
//! (packets/s the guest counted, `netstat`), each also as the host CPU the
//! VMM's threads other than the vCPU spent per packet (a figure the
//! machine's other load changes less than the rates). Where KVM emulates
//! the guest's instructions the guest's own pace sets the rates, and the
//! machine's speed drifts by ±15 % within seconds; so both guests run at
//! once, in nine rounds, each measuring them in turns (who goes first
//! alternates) and their floods in alternating slices; then each figure's
//! median and the median of the rounds' ratios. QEMU is the one `shared/qemu.rs` finds (the
//! installed one, or Debian's packages unpacked where
//! `$LIBVIRTD_BENCH_QEMU` or `$LIBVIRTD_BENCH_QEMU_ROOT` says); without
//! one, its column is skipped with a note.
//!
//! Run: `cargo bench --bench virtio_net` (as root, with /dev/net/tun, `ip`,
//! and /dev/kvm for the guest figures).

#[allow(dead_code)]
#[path = "../helpers/src/virtio/net/datapath.rs"]
mod datapath;

use std::num::Wrapping;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use datapath::{Counters, Datapath, HDR_LEN, Tap};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const SIZE: u16 = 256;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x4000;
const USED: u64 = 0x6000;
const BUFFERS: u64 = 0x10_0000;
const BUFFER_LEN: u32 = 2048;
const WRITE: u16 = 2;
const TAP: &str = "vnet0";
const HOST_IP: &str = "10.78.0.1";
/// An address on the tap's link with a fixed neighbour entry: frames to it
/// go straight to the tap, with no ARP.
const FAR_IP: &str = "10.78.0.2";
const FAR_MAC: &str = "52:54:00:be:4c:01";
const TX_FRAMES: u32 = 300_000;
const RX_FRAMES: u64 = 200_000;
const RX_LIMIT: Duration = Duration::from_secs(15);

struct Netns(String);

impl Netns {
    fn run(&self, argv: &[&str]) {
        let ok = Command::new("ip").args(["netns", "exec", &self.0]).args(argv).status().unwrap().success();
        assert!(ok, "{argv:?}");
    }

    fn inside<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let ns = std::fs::File::open(format!("/run/netns/{}", self.0)).unwrap();
        std::thread::spawn(move || {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes one timespec into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A queue of [`SIZE`] in `mem`, descriptor `i` pointing at buffer `i`
/// (`flags` on each), avail ring entry `i` naming descriptor `i`.
fn queue(mem: &GuestMemoryMmap, len: u32, flags: u16) -> Queue {
    for i in 0..SIZE {
        let addr = BUFFERS + u64::from(i) * u64::from(BUFFER_LEN);
        let d = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0));
        mem.write_obj(d, GuestAddress(DESC + 16 * u64::from(i))).unwrap();
        mem.write_obj(i, GuestAddress(AVAIL + 4 + 2 * u64::from(i))).unwrap();
    }
    mem.write_obj(0u16, GuestAddress(AVAIL + 2)).unwrap();
    mem.write_obj(0u16, GuestAddress(USED + 2)).unwrap();
    let mut q = Queue::new(SIZE).unwrap();
    q.set_size(SIZE);
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_ready(true);
    q
}

/// Makes every used buffer available again, as a driver refilling its ring.
fn refill(mem: &GuestMemoryMmap, ahead: u16) {
    let used: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
    mem.write_obj(used.wrapping_add(ahead), GuestAddress(AVAIL + 2)).unwrap();
}

fn report(what: &str, frames: u64, cpu: Duration, wall: Duration) {
    println!(
        "virtio-net host side {what}: {frames} frames, {:.0} packets/s per core ({:.2} s CPU), {:.0} packets/s wall",
        frames as f64 / cpu.as_secs_f64(),
        cpu.as_secs_f64(),
        frames as f64 / wall.as_secs_f64()
    );
}

fn transmit(mem: &GuestMemoryMmap, tap: Tap) {
    let counters = Arc::new(Counters::default());
    let mut dp = Datapath::new(tap, counters.clone());
    // A 64-byte frame (no offload in its header) to a unicast MAC that is
    // not the tap's: the namespace's stack drops it at once.
    let mut frame = vec![0u8; HDR_LEN];
    frame.extend_from_slice(&[0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc, 0x52, 0x54, 0x00, 0xbe, 0x4c, 0x01, 0x08, 0x00]);
    frame.resize(HDR_LEN + 64, 0x5a);
    for i in 0..u64::from(SIZE) {
        mem.write_slice(&frame, GuestAddress(BUFFERS + i * u64::from(BUFFER_LEN))).unwrap();
    }
    let mut q = queue(mem, frame.len() as u32, 0);
    let (wall, cpu) = (Instant::now(), thread_cpu());
    let mut sent = 0u32;
    while sent < TX_FRAMES {
        refill(mem, SIZE);
        dp.transmit(mem, &mut q, 0, true).unwrap();
        sent += u32::from(SIZE);
    }
    let (cpu, wall) = (thread_cpu() - cpu, wall.elapsed());
    let c = counters.snapshot("bench", true);
    assert_eq!((c.tx_packets, c.tx_errs), (u64::from(sent), 0), "{c:?}");
    report("transmit", c.tx_packets, cpu, wall);
}

fn receive(mem: &GuestMemoryMmap, tap: Tap, ns: &Netns) {
    let counters = Arc::new(Counters::default());
    let mut dp = Datapath::new(tap, counters.clone());
    let mut q = queue(mem, BUFFER_LEN, WRITE);
    let stop = Arc::new(AtomicBool::new(false));
    let socket = ns.inside(|| std::net::UdpSocket::bind(format!("{HOST_IP}:0")).unwrap());
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let payload = [0x42u8; 18]; // 18 + 8 + 20 + 14 = a 60-byte frame
            while !stop.load(Ordering::Relaxed) {
                // ENOBUFS when the tap's queue is full: the device is behind.
                let _ = socket.send_to(&payload, format!("{FAR_IP}:9"));
            }
        })
    };
    let (wall, cpu) = (Instant::now(), thread_cpu());
    let end = Instant::now() + RX_LIMIT;
    while counters.snapshot("bench", true).rx_packets < RX_FRAMES && Instant::now() < end {
        refill(mem, SIZE);
        let mut fds = [libc::pollfd { fd: dp.tap().raw(), events: libc::POLLIN, revents: 0 }];
        // SAFETY: one live pollfd.
        unsafe { libc::poll(fds.as_mut_ptr(), 1, 100) };
        dp.receive(mem, &mut q, 0).unwrap();
    }
    let (cpu, wall) = (thread_cpu() - cpu, wall.elapsed());
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let c = counters.snapshot("bench", true);
    assert_eq!(c.rx_errs, 0, "{c:?}");
    assert!(c.rx_packets > 0, "{c:?}");
    let used = Wrapping(mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap());
    assert_eq!(used, Wrapping(c.rx_packets as u16), "every delivered frame is in the used ring");
    report("receive", c.rx_packets, cpu, wall);
}

fn main() {
    let root = nix::unistd::geteuid().is_root();
    if !root || !std::path::Path::new("/dev/net/tun").exists() {
        println!("virtio-net host side: skipped (needs root and /dev/net/tun)");
        return;
    }
    host_side();
    // `cargo test --all-targets` runs this binary too, without `--bench`:
    // the guest figures take a minute, they are for `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("virtio-net guest side: run with `cargo bench --bench virtio_net`");
        return;
    }
    if !std::path::Path::new("/dev/kvm").exists() {
        println!("virtio-net guest side: skipped (needs /dev/kvm)");
        return;
    }
    guest::compare();
}

fn host_side() {
    let ns = Netns(format!("lvrs-bench-net-{}", std::process::id()));
    let _ = Command::new("ip").args(["netns", "del", &ns.0]).stderr(Stdio::null()).status();
    assert!(Command::new("ip").args(["netns", "add", &ns.0]).status().unwrap().success());
    let fd: OwnedFd = ns.inside(|| libvirtd::network::tap::create(Some(TAP)).unwrap().0);
    ns.run(&["ip", "link", "set", "lo", "up"]);
    ns.run(&["ip", "addr", "add", &format!("{HOST_IP}/24"), "dev", TAP]);
    ns.run(&["ip", "link", "set", TAP, "up"]);
    ns.run(&["ip", "neigh", "replace", FAR_IP, "lladdr", FAR_MAC, "dev", TAP]);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
    let tap = Tap::new(fd.try_clone().unwrap()).unwrap();
    transmit(&mem, tap);
    let tap = Tap::new(fd).unwrap();
    receive(&mem, tap, &ns);
}

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "virtio_net/guest.rs"]
mod guest;
#[path = "shared/qemu.rs"]
mod qemu;
