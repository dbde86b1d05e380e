//! Regression tests for issue 11: what one local client (often on the
//! read-only socket, as any uid) could do to the daemon. Each test opens a
//! read-write session before the attack and checks afterwards that it still
//! answers, that a new read-only connection works, and that the frontend was
//! not killed and replaced.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use libvirtd::rpc::remote::{
    ConnectOpenArgs, DomainArg, DomainFlagsArgs, DomainRet, ListAllDomainsArgs, ListAllDomainsRet, NonnullDomain,
    OptStringArg, StringArg,
};
use libvirtd::rpc::xdr::{FixedOpaque, from_bytes, to_bytes};

const SECS: Duration = Duration::from_secs(10);

/// Procedure numbers (`policy/procedures.tsv`).
mod proc_ {
    pub const CONNECT_OPEN: i32 = 1;
    pub const CONNECT_GET_VERSION: i32 = 4;
    pub const CONNECT_GET_MAX_VCPUS: i32 = 5;
    pub const DOMAIN_DEFINE_XML: i32 = 11;
    pub const DOMAIN_DESTROY: i32 = 12;
    pub const DOMAIN_GET_XML_DESC: i32 = 14;
    pub const DOMAIN_LOOKUP_BY_NAME: i32 = 23;
    pub const AUTH_LIST: i32 = 66;
    pub const CONNECT_LIST_ALL_DOMAINS: i32 = 273;
}

/// Status word of an error reply.
const STATUS_ERROR: i32 = 1;
/// `VIR_ERR_OPERATION_DENIED`.
const OPERATION_DENIED: i32 = 29;

/// A session on `socket` past CONNECT_OPEN (read-only when `ro`), whose
/// reads give up after `SECS`.
fn session(socket: &Path, ro: bool) -> RawClient {
    let mut c = RawClient::connect(socket);
    c.stream.set_read_timeout(Some(SECS)).unwrap();
    c.open(u32::from(ro));
    c
}

/// The read-write session opened before the attack.
fn rw_before(d: &Daemon) -> RawClient {
    let mut rw = session(&d.tree.sock("libvirt-sock"), false);
    assert_eq!(rw.try_call(proc_::CONNECT_GET_VERSION, &[]).unwrap().0.status, 0);
    rw
}

/// After an attack: the session opened before it still answers, a new
/// read-only connection works, and the frontends are the ones from before.
fn assert_still_serving(d: &Daemon, rw: &mut RawClient, frontends: &[i32]) {
    let args = to_bytes(&ListAllDomainsArgs { need_results: 1, flags: 0 }).unwrap();
    match rw.try_call(proc_::CONNECT_LIST_ALL_DOMAINS, &args) {
        Ok((h, _)) => assert_eq!(h.status, 0, "the read-write session's call failed"),
        Err(e) => panic!("the read-write session opened before the attack is gone ({e})\n{}", d.stderr()),
    }
    let mut ro = RawClient::connect(&d.tree.sock("libvirt-sock-ro"));
    ro.stream.set_read_timeout(Some(SECS)).unwrap();
    let opened = ro.try_call(proc_::AUTH_LIST, &[]).and_then(|_| {
        let args = to_bytes(&ConnectOpenArgs { name: Some("qemu:///system".into()), flags: 1 }).unwrap();
        ro.try_call(proc_::CONNECT_OPEN, &args)
    });
    assert!(opened.is_ok_and(|(h, _)| h.status == 0), "a new read-only connection does not work");
    assert_eq!(d.frontend_pids(), frontends, "the frontend was killed and replaced:\n{}", d.stderr());
}

fn error_of(payload: &[u8]) -> libvirtd::rpc::remote::RemoteError {
    remote_error(payload)
}

fn uuid_n(n: u32) -> String {
    format!("5a5a0000-0000-4000-8000-{n:012x}")
}

/// A small domain XML, `extra` inserted before `<os>`.
fn small_domain(name: &str, uuid: &str, extra: &str) -> String {
    domain_xml(name, uuid).replace("  <os>", &format!("  {extra}\n  <os>"))
}

// ---- item 1: an error that echoes a 64 KiB argument ----

#[test]
fn an_oversized_max_vcpus_type_gets_a_bounded_error_and_the_frontend_lives() {
    let d = Daemon::start("", &[]);
    let mut rw = rw_before(&d);
    let frontends = d.frontend_pids();

    let mut ro = session(&d.tree.sock("libvirt-sock-ro"), true);
    let kind = "k".repeat(65_520);
    let args = to_bytes(&OptStringArg { value: Some(kind.clone()) }).unwrap();
    let (h, payload) = ro.try_call(proc_::CONNECT_GET_MAX_VCPUS, &args).expect("no reply: the connection closed");
    assert_eq!(h.status, STATUS_ERROR);
    let e = error_of(&payload);
    let message = e.message.unwrap_or_default();
    assert!(message.len() < 2048, "error message of {} bytes", message.len());
    assert!(message.contains("unknown type 'kkk"), "{message}");
    assert!(payload.len() < 4096, "error reply of {} bytes", payload.len());
    // The same for a lookup by a 64 KiB name, which the error quotes too.
    let args = to_bytes(&StringArg { value: kind }).unwrap();
    let (h, payload) = ro.try_call(proc_::DOMAIN_LOOKUP_BY_NAME, &args).expect("no reply: the connection closed");
    assert_eq!(h.status, STATUS_ERROR);
    assert!(payload.len() < 4096, "error reply of {} bytes", payload.len());
    // The attacker's own connection still works too.
    assert_eq!(ro.try_call(proc_::CONNECT_GET_VERSION, &[]).unwrap().0.status, 0);

    assert_still_serving(&d, &mut rw, &frontends);
}

// ---- item 2: ordinary large replies ----

#[test]
fn a_read_only_list_of_1300_domains_lists_them_all() {
    if !have_virsh() {
        return;
    }
    let d = Daemon::start("", &[]);
    let mut rw = rw_before(&d);
    let frontends = d.frontend_pids();

    // Names of 48 bytes: the list is about 100 KB on the wire, past the
    // 64 KiB a frontend-broker message could hold.
    const N: u32 = 1300;
    let name = |i: u32| format!("many-{i:04}-{}", "n".repeat(38));
    let mut definer = session(&d.tree.sock("libvirt-sock"), false);
    for i in 0..N {
        let xml = small_domain(&name(i), &uuid_n(i), "");
        let (h, p) = definer.try_call(proc_::DOMAIN_DEFINE_XML, &to_bytes(&StringArg { value: xml }).unwrap()).unwrap();
        assert_eq!(h.status, 0, "define {i}: {:?}", error_of(&p).message);
    }
    let ro = d.tree.sock("libvirt-sock-ro");
    let (code, out, err) = virsh_within(&ro, &["-r", "list", "--all", "--name"], Duration::from_secs(60))
        .expect("virsh -r list --all hung");
    assert_eq!(code, 0, "{err}");
    let names: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(names.len(), N as usize, "{err}");
    assert!(names.contains(&name(0).as_str()) && names.contains(&name(N - 1).as_str()));
    // The whole list in one reply on the raw read-only protocol too.
    let mut raw = session(&ro, true);
    let args = to_bytes(&ListAllDomainsArgs { need_results: 1, flags: 0 }).unwrap();
    let (h, p) = raw.try_call(proc_::CONNECT_LIST_ALL_DOMAINS, &args).expect("no reply to the list");
    assert_eq!(h.status, 0);
    assert_eq!(from_bytes::<ListAllDomainsRet>(&p).unwrap().domains.len(), N as usize);

    assert_still_serving(&d, &mut rw, &frontends);
}

/// Defines `xml` on `rw` and returns its XML as read back (raw protocol).
fn define_and_dump(rw: &mut RawClient, xml: String) -> Result<String, String> {
    let (h, p) = rw
        .try_call(proc_::DOMAIN_DEFINE_XML, &to_bytes(&StringArg { value: xml }).unwrap())
        .map_err(|e| format!("define: no reply ({e})"))?;
    if h.status != 0 {
        return Err(format!("define failed: {:?}", error_of(&p).message));
    }
    let dom: NonnullDomain = from_bytes::<DomainRet>(&p).unwrap().dom;
    let (h, p) = rw
        .try_call(proc_::DOMAIN_GET_XML_DESC, &to_bytes(&DomainFlagsArgs { dom, flags: 0 }).unwrap())
        .map_err(|e| format!("dumpxml: no reply ({e})"))?;
    if h.status != 0 {
        return Err(format!("dumpxml failed: {:?}", error_of(&p).message));
    }
    Ok(from_bytes::<StringArg>(&p).unwrap().value)
}

fn description_of(xml: &str) -> Option<String> {
    let doc = roxmltree::Document::parse_with_options(
        xml,
        roxmltree::ParsingOptions { allow_dtd: false, nodes_limit: 100_000, ..Default::default() },
    )
    .ok()?;
    doc.root_element().children().find(|n| n.has_tag_name("description")).map(|n| n.text().unwrap_or("").to_owned())
}

#[test]
fn a_description_of_60000_gt_characters_defines_and_dumps_intact() {
    if !have_virsh() {
        return;
    }
    let d = Daemon::start("", &[]);
    let mut rw = rw_before(&d);
    let frontends = d.frontend_pids();

    // Each '>' is written back as "&gt;": the reply is four times the input.
    let text = ">".repeat(60_000);
    let xml = small_domain("wide", &uuid_n(1), &format!("<description>{text}</description>"));
    let file = d.tree.path("wide.xml");
    std::fs::write(&file, xml).unwrap();
    let rw_sock = d.tree.sock("libvirt-sock");
    let (code, _, err) = virsh_within(&rw_sock, &["define", file.to_str().unwrap()], SECS).expect("define hung");
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = virsh_within(&rw_sock, &["dumpxml", "wide"], SECS).expect("dumpxml hung");
    assert_eq!(code, 0, "{err}");
    assert_eq!(description_of(&out).map(|t| t.len()), Some(text.len()), "{err}");
    assert_eq!(description_of(&out).as_deref(), Some(text.as_str()));

    assert_still_serving(&d, &mut rw, &frontends);
}

#[test]
fn a_900_kib_domain_xml_defines_and_reads_back() {
    let d = Daemon::start("", &[]);
    let mut rw = rw_before(&d);
    let frontends = d.frontend_pids();

    let text: String = (0..900 * 1024).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let xml = small_domain("large", &uuid_n(2), &format!("<description>{text}</description>"));
    assert!(xml.len() > 900 * 1024 && xml.len() < 1024 * 1024);
    let mut definer = session(&d.tree.sock("libvirt-sock"), false);
    let back = define_and_dump(&mut definer, xml).unwrap_or_else(|e| panic!("{e}\n{}", d.stderr()));
    assert_eq!(description_of(&back).as_deref(), Some(text.as_str()));

    assert_still_serving(&d, &mut rw, &frontends);
}

// ---- item 3: floods that deadlocked frontend and broker ----

#[test]
fn two_thousand_pipelined_denials_are_all_answered() {
    let d = Daemon::start("", &[]);
    let mut rw = rw_before(&d);
    let frontends = d.frontend_pids();

    let mut ro = session(&d.tree.sock("libvirt-sock-ro"), true);
    let dom = NonnullDomain { name: "nobody".into(), uuid: FixedOpaque([7; 16]), id: -1 };
    let args = to_bytes(&DomainArg { dom }).unwrap();
    let mut burst = Vec::new();
    for _ in 0..2000 {
        burst.extend(ro.packet(proc_::DOMAIN_DESTROY, &args).1);
    }
    assert!(burst.len() > 90_000, "{} bytes", burst.len());
    // One write, from a thread, while the replies are read here.
    let mut writer = ro.stream.try_clone().unwrap();
    let wrote = std::thread::spawn(move || writer.write_all(&burst));
    let mut denied = 0;
    while denied < 2000 {
        match ro.read() {
            Ok((h, p)) if h.proc_ == proc_::DOMAIN_DESTROY => {
                assert_eq!(h.status, STATUS_ERROR);
                assert_eq!(error_of(&p).code, OPERATION_DENIED);
                denied += 1;
            }
            Ok(_) => {}
            Err(e) => panic!("after {denied} of 2000 denials: {e}\n{}", d.stderr()),
        }
    }
    assert!(wrote.join().unwrap().is_ok());

    assert_still_serving(&d, &mut rw, &frontends);
}

#[test]
fn a_thousand_concurrent_read_only_connects_are_each_answered() {
    let d = Daemon::start("max_clients = 5000\nmax_anonymous_clients = 5000\n", &[]);
    let mut rw = rw_before(&d);
    let frontends = d.frontend_pids();

    let ro = d.tree.sock("libvirt-sock-ro");
    let opened = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (ro, opened) = (ro.clone(), opened.clone());
            std::thread::spawn(move || {
                // All 250 connect and ask at once; the answers are read after.
                let mut clients = Vec::new();
                let mut failures = Vec::new();
                let args = to_bytes(&ConnectOpenArgs { name: Some("qemu:///system".into()), flags: 1 }).unwrap();
                for _ in 0..250 {
                    let Ok(stream) = UnixStream::connect(&ro) else {
                        failures.push("connect refused".to_owned());
                        continue;
                    };
                    stream.set_read_timeout(Some(SECS)).unwrap();
                    let mut c = RawClient::from_stream(stream);
                    let mut bytes = c.packet(proc_::AUTH_LIST, &[]).1;
                    let (serial, open) = c.packet(proc_::CONNECT_OPEN, &args);
                    bytes.extend(open);
                    match c.stream.write_all(&bytes) {
                        Ok(()) => clients.push((c, serial)),
                        Err(e) => failures.push(format!("write: {e}")),
                    }
                }
                for (c, serial) in &mut clients {
                    let answer = loop {
                        match c.read() {
                            Ok((h, p)) if h.serial == *serial => break Ok((h, p)),
                            Ok(_) => continue,
                            Err(e) => break Err(e),
                        }
                    };
                    match answer {
                        Ok((h, _)) if h.status == 0 => {
                            opened.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok((_, p)) => failures.push(format!("refused: {:?}", error_of(&p).message)),
                        Err(e) => failures.push(format!("no answer: {e}")),
                    }
                }
                failures
            })
        })
        .collect();
    let failures: Vec<String> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert!(failures.is_empty(), "{} of 1000 failed, e.g. {:?}\n{}", failures.len(), failures.first(), d.stderr());
    assert_eq!(opened.load(Ordering::Relaxed), 1000);

    assert_still_serving(&d, &mut rw, &frontends);
}

// ---- item 4: memory that read-only clients could make the daemon hold ----

/// What the daemon's processes may hold in all, in KiB.
const MEMORY_CEILING_KIB: u64 = 100 * 1024;

#[test]
fn partial_frames_stay_under_the_memory_ceiling() {
    let d = Daemon::start("max_clients = 5000\nmax_anonymous_clients = 5000\n", &[]);
    let mut rw = rw_before(&d);
    let frontends = d.frontend_pids();
    let ro = d.tree.sock("libvirt-sock-ro");
    let mut peak = d.rss_kib();

    // 60 clients, each announcing a 4 MiB packet and sending all but 4 KiB of it.
    const FRAME: usize = 4 * 1024 * 1024;
    let partial: Vec<_> = (0..60)
        .map(|_| {
            let ro = ro.clone();
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(&ro).ok()?;
                s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut bytes = (FRAME as u32).to_be_bytes().to_vec();
                bytes.resize(FRAME - 4096, 0);
                // A daemon that stops reading leaves the write unfinished: fine.
                let _ = s.write_all(&bytes);
                Some(s)
            })
        })
        .collect();
    let held: Vec<Option<UnixStream>> = partial.into_iter().map(|t| t.join().unwrap()).collect();
    peak = peak.max(d.rss_kib());
    assert!(rw.try_call(proc_::CONNECT_GET_VERSION, &[]).is_ok_and(|(h, _)| h.status == 0), "rw session stalled");
    std::thread::sleep(Duration::from_millis(500));
    peak = peak.max(d.rss_kib());
    eprintln!("partial frames: daemon RSS peak {} MiB ({})", peak / 1024, d.rss_breakdown());
    assert!(peak < MEMORY_CEILING_KIB, "partial frames: daemon RSS {} MiB", peak / 1024);
    drop(held);

    assert_still_serving(&d, &mut rw, &frontends);
}

#[test]
fn unread_replies_stay_under_the_memory_ceiling() {
    // Many calls in flight per client keep the broker busy answering them.
    let d = Daemon::start("max_clients = 5000\nmax_anonymous_clients = 5000\nmax_client_requests = 64\n", &[]);
    let mut rw = rw_before(&d);
    let frontends = d.frontend_pids();
    let ro = d.tree.sock("libvirt-sock-ro");
    // A domain whose XML is 60 KB (under the 64 KiB a frontend-broker
    // message holds today): each reply to its dumpxml is that large.
    let uuid = uuid_n(3);
    let xml = small_domain("bulky", &uuid, &format!("<description>{}</description>", "b".repeat(60_000)));
    let (h, _) = rw.try_call(proc_::DOMAIN_DEFINE_XML, &to_bytes(&StringArg { value: xml }).unwrap()).unwrap();
    assert_eq!(h.status, 0);
    let uuid_bytes: [u8; 16] = {
        let hex: String = uuid.chars().filter(|c| *c != '-').collect();
        std::array::from_fn(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
    };
    let dom = NonnullDomain { name: "bulky".into(), uuid: FixedOpaque(uuid_bytes), id: -1 };
    let dump = to_bytes(&DomainFlagsArgs { dom, flags: 0 }).unwrap();
    let mut peak = d.rss_kib();

    // 20 clients that pipeline calls with large replies and never read them.
    let stop = Arc::new(AtomicBool::new(false));
    let greedy: Vec<_> = (0..20)
        .map(|_| {
            let (ro, stop, dump) = (ro.clone(), stop.clone(), dump.clone());
            std::thread::spawn(move || {
                let Ok(stream) = UnixStream::connect(&ro) else { return None };
                stream.set_read_timeout(Some(SECS)).unwrap();
                let mut c = RawClient::from_stream(stream);
                let args = to_bytes(&ConnectOpenArgs { name: Some("qemu:///system".into()), flags: 1 }).unwrap();
                c.try_call(proc_::AUTH_LIST, &[]).ok()?;
                c.try_call(proc_::CONNECT_OPEN, &args).ok()?;
                c.stream.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
                let started = Instant::now();
                let mut batch = Vec::new();
                for _ in 0..64 {
                    batch.extend(c.packet(proc_::DOMAIN_GET_XML_DESC, &dump).1);
                }
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(11) {
                    if c.stream.write_all(&batch).is_err() {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                Some(c.stream)
            })
        })
        .collect();
    // Bounded: 10 s, or until the daemon is past the ceiling.
    let flood_end = Instant::now() + Duration::from_secs(10);
    let mut breakdown = String::new();
    while Instant::now() < flood_end && peak < MEMORY_CEILING_KIB {
        let now = d.rss_kib();
        if now > peak {
            breakdown = d.rss_breakdown();
        }
        peak = peak.max(now);
        std::thread::sleep(Duration::from_millis(100));
    }
    let answered = rw.try_call(proc_::CONNECT_GET_VERSION, &[]).is_ok_and(|(h, _)| h.status == 0);
    stop.store(true, Ordering::Relaxed);
    let greedy: Vec<Option<UnixStream>> = greedy.into_iter().map(|t| t.join().unwrap()).collect();
    peak = peak.max(d.rss_kib());
    assert!(
        answered,
        "the read-write session stalled while replies piled up (RSS peak {} MiB)\n{}",
        peak / 1024,
        d.stderr()
    );
    eprintln!("unread replies: daemon RSS peak {} MiB ({breakdown})", peak / 1024);
    assert!(peak < MEMORY_CEILING_KIB, "unread replies: daemon RSS {} MiB ({breakdown})", peak / 1024);
    drop(greedy);

    assert_still_serving(&d, &mut rw, &frontends);
}

/// The frontend's FRAME_TIMEOUT and WRITE_TIMEOUT (30 s each), with slack.
const CUT_OFF: Duration = Duration::from_secs(40);

/// Whether the daemon closed `s` (EOF or reset) within `within`, draining
/// nothing it sent: a client that never reads does not read here either.
fn closed_within(s: &UnixStream, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        let mut fds = [libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(s), events: 0, revents: 0 }];
        // SAFETY: one valid pollfd for an open socket; poll writes only revents.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 200) };
        if n > 0 && fds[0].revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            return true;
        }
    }
    false
}

#[test]
fn clients_holding_a_partial_frame_or_unread_replies_are_cut_off() {
    let d = Daemon::start("", &[]);
    let mut rw = rw_before(&d);
    let frontends = d.frontend_pids();
    let ro = d.tree.sock("libvirt-sock-ro");
    // A frame header announcing 1 MiB, then a little of it, then silence.
    let partial = UnixStream::connect(&ro).unwrap();
    let mut head = (1024 * 1024u32).to_be_bytes().to_vec();
    head.resize(4096, 0);
    (&partial).write_all(&head).unwrap();
    // A client that asks for a large reply, many times, and never reads:
    // its socket buffer fills, then the daemon's queue for it.
    let mut greedy = RawClient::connect(&ro);
    greedy.open(1);
    let args = to_bytes(&ListAllDomainsArgs { need_results: 1, flags: 0 }).unwrap();
    let mut asks = Vec::new();
    for _ in 0..20_000 {
        asks.extend(greedy.packet(proc_::CONNECT_LIST_ALL_DOMAINS, &args).1);
    }
    greedy.stream.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let _ = greedy.stream.write_all(&asks);
    let started = Instant::now();
    assert!(closed_within(&partial, CUT_OFF), "a partial frame was held open");
    assert!(started.elapsed() >= Duration::from_secs(20), "cut off before its time");
    let greedy_closed = closed_within(&greedy.stream, CUT_OFF);
    // Replies unread in its socket buffer are still there; what matters is
    // that the daemon hung up.
    assert!(greedy_closed, "a client that never reads was held open");
    assert!(d.stderr().contains("held a partial frame for too long"), "{}", d.stderr());
    assert_still_serving(&d, &mut rw, &frontends);
}

// ---- item 5: a FIFO for a kernel or initrd ----

#[test]
fn a_fifo_kernel_or_initrd_fails_the_start_naming_it_and_the_daemon_keeps_serving() {
    if !have_virsh() {
        return;
    }
    let d = Daemon::start("", &[]);
    let mut rw = rw_before(&d);
    let frontends = d.frontend_pids();
    let rw_sock = d.tree.sock("libvirt-sock");

    let fifo = d.tree.path("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let kernel = d.tree.path("vmlinuz");
    std::fs::write(&kernel, b"not a kernel, never read").unwrap();
    let fifo_kernel =
        domain_xml("fifo-kernel", &uuid_n(10)).replace("/var/tmp/guestkit/vmlinuz", fifo.to_str().unwrap());
    let fifo_initrd = domain_xml("fifo-initrd", &uuid_n(11)).replace(
        "<kernel>/var/tmp/guestkit/vmlinuz</kernel>",
        &format!("<kernel>{}</kernel><initrd>{}</initrd>", kernel.display(), fifo.display()),
    );
    for (name, uuid, xml, what) in
        [("fifo-kernel", uuid_n(10), fifo_kernel, "kernel"), ("fifo-initrd", uuid_n(11), fifo_initrd, "initrd")]
    {
        let file = d.tree.path(&format!("{name}.xml"));
        std::fs::write(&file, xml).unwrap();
        assert_eq!(virsh(&rw_sock, &["define", file.to_str().unwrap()]).0, 0);
        let started = Instant::now();
        let (code, _, err) =
            virsh_within(&rw_sock, &["start", name], SECS).unwrap_or_else(|| panic!("virsh start {name} hung"));
        assert_eq!(code, 1, "{name} started");
        assert!(started.elapsed() < Duration::from_secs(5), "{name}: the start took {:?}", started.elapsed());
        let naming = format!("{what} '{}' is a FIFO, not a regular file", fifo.display());
        assert!(err.contains(&naming) && err.contains(&format!("domain '{name}'")), "{err}");
        assert_eq!(virsh(&rw_sock, &["domstate", name]).1, "shut off\n\n");
        assert!(d.tree.audit(&["op=start", &format!("uuid=\"{uuid}\""), "res=failed"], SECS).is_some());
        assert_still_serving(&d, &mut rw, &frontends);
    }
    // Nothing was started: no helper process.
    let helpers: Vec<i32> =
        children_of(d.pid).into_iter().filter(|p| !cmdline(*p).contains("--frontend-process")).collect();
    assert!(helpers.is_empty(), "helper processes left: {helpers:?}");
}

// ---- item 8: a TLS handshake flood and local latency ----

fn tls_client(dir: &Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = |p: &Path| CertificateDer::pem_file_iter(p).unwrap().map(Result::unwrap).collect::<Vec<_>>();
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&dir.join("cacert.pem")) {
        roots.add(c).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            certs(&dir.join("clientcert.pem")),
            PrivateKeyDer::from_pem_file(dir.join("clientkey.pem")).unwrap(),
        )
        .unwrap();
    Arc::new(config)
}

/// Median of `n` CONNECT_GET_VERSION round trips on `c`, at most `budget` long.
fn median_latency(c: &mut RawClient, n: usize, budget: Duration) -> Duration {
    let end = Instant::now() + budget;
    let mut times = Vec::new();
    while times.len() < n && Instant::now() < end {
        let t = Instant::now();
        let (h, _) = c.try_call(proc_::CONNECT_GET_VERSION, &[]).expect("the local session stopped answering");
        assert_eq!(h.status, 0);
        times.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(times.len() >= 10, "only {} calls answered in {budget:?}", times.len());
    times.sort();
    times[times.len() / 2]
}

#[test]
fn a_tls_handshake_flood_does_not_stall_local_clients() {
    use common::pki::*;
    use std::io::Read;
    let tree = Tree::new();
    let p = pki(&tree.path("pki"));
    let port = free_port();
    tree.write_conf(&(tls_conf(&p, port, "\"C=GB,O=Example,CN=*\"") + "max_clients = 5000\n"));
    let d = Daemon::start_in(tree, &["--listen"]);
    let mut rw = rw_before(&d);
    let frontends = d.frontend_pids();

    let idle = median_latency(&mut rw, 200, Duration::from_secs(3));
    let config = tls_client(&p.dir.join(GOOD));
    let stop = Arc::new(AtomicBool::new(false));
    let handshakes = Arc::new(AtomicUsize::new(0));
    let flood: Vec<_> = (0..16)
        .map(|_| {
            let (config, stop, handshakes) = (config.clone(), stop.clone(), handshakes.clone());
            std::thread::spawn(move || {
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
                let started = Instant::now();
                // Bounded: stops when told, or after 5 s whatever happens.
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(5) {
                    let Ok(tcp) = std::net::TcpStream::connect(("127.0.0.1", port)) else { continue };
                    tcp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let conn = rustls::ClientConnection::new(config.clone(), name.clone()).unwrap();
                    let mut tls = rustls::StreamOwned::new(conn, tcp);
                    let mut byte = [0u8; 1];
                    if tls.read_exact(&mut byte).is_ok() {
                        handshakes.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    // Let the flood get going, then measure for about 3 s.
    std::thread::sleep(Duration::from_millis(300));
    let flooded = median_latency(&mut rw, 300, Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for t in flood {
        t.join().unwrap();
    }
    let done = handshakes.load(Ordering::Relaxed);
    assert!(done > 50, "only {done} handshakes completed: no flood to speak of");
    let limit = idle * 2 + Duration::from_millis(2);
    eprintln!("TLS flood: local median {flooded:?} under {done} handshakes, idle {idle:?}");
    assert!(flooded <= limit, "local median {flooded:?} under {done} handshakes, idle {idle:?} (limit {limit:?})");

    assert_still_serving(&d, &mut rw, &frontends);
}
