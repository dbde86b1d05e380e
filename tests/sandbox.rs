//! The sandbox, proven from outside: `/proc` of the running frontend and
//! broker, and probes that apply the frontend's exact profile to a test
//! process and show forbidden operations failing.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use common::*;
use libvirtd::config::SANDBOX_ID_BASE;
use libvirtd::sandbox::{self, Profile, Thread};

const PROBE_ENV: &str = "LIBVIRTD_SANDBOX_PROBE";

fn caps(pid_task: &str, field: &str) -> u64 {
    u64::from_str_radix(&task_status_field(pid_task, field).unwrap(), 16).unwrap()
}

#[test]
fn every_frontend_thread_is_unprivileged_and_confined() {
    if !require(is_root(), "root") {
        return;
    }
    let uid = 1_879_300_000u32;
    let gid = 1_879_300_007u32;
    let d = Daemon::start(&format!("frontend_uid = {uid}\nfrontend_gid = {gid}\n"), &[]);
    let f = d.frontend_pid().unwrap();
    let mut threads = 0;
    for task in std::fs::read_dir(format!("/proc/{f}/task")).unwrap().flatten() {
        let status = format!("{}/status", task.path().display());
        let field = |n| task_status_field(&status, n).unwrap();
        assert_eq!(field("Uid"), format!("{uid}\t{uid}\t{uid}\t{uid}"));
        assert_eq!(field("Gid"), format!("{gid}\t{gid}\t{gid}\t{gid}"));
        assert_eq!(field("Groups"), "");
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(caps(&status, set), 0, "{set}");
        }
        assert_eq!(field("NoNewPrivs"), "1");
        assert_eq!(field("Seccomp"), "2");
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap();
        assert_eq!(comm.trim(), "frontend-main");
        threads += 1;
    }
    assert_eq!(threads, 1, "the frontend is one event loop");
    // Not dumpable: its /proc files belong to root, not to its own uid.
    let meta = std::fs::metadata(format!("/proc/{f}/mem")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);
}

#[test]
fn the_default_frontend_uid_needs_no_account_on_a_fresh_host() {
    if !require(is_root(), "root") {
        return;
    }
    let d = Daemon::start("", &[]);
    let f = d.frontend_pid().unwrap();
    let uid = status_field(f, "Uid").unwrap();
    assert!(uid.starts_with(&SANDBOX_ID_BASE.to_string()), "{uid}");
    assert!(nix::unistd::User::from_uid(SANDBOX_ID_BASE.into()).unwrap().is_none());
}

#[test]
fn the_broker_keeps_only_the_capabilities_it_needs() {
    if !require(is_root(), "root") {
        return;
    }
    let d = Daemon::start("", &[]);
    let status = format!("/proc/{}/status", d.pid);
    let eff = caps(&status, "CapEff");
    let bnd = caps(&status, "CapBnd");
    for (name, bit) in [("CAP_SETUID", 7), ("CAP_SETGID", 6), ("CAP_KILL", 5)] {
        assert_ne!(eff & (1 << bit), 0, "{name} missing");
    }
    for (name, bit) in
        [("CAP_SYS_MODULE", 16), ("CAP_SYS_RAWIO", 17), ("CAP_SYS_PTRACE", 19), ("CAP_SYS_BOOT", 22), ("CAP_MKNOD", 27)]
    {
        assert_eq!(eff & (1 << bit), 0, "{name} kept");
        assert_eq!(bnd & (1 << bit), 0, "{name} left in the bounding set");
    }
}

/// Re-runs this test binary's `probe_entry` with `kind`, in a child process.
fn probe(kind: &str) -> (std::process::ExitStatus, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "probe_entry", "--nocapture", "--test-threads=1"])
        .env(PROBE_ENV, kind)
        .output()
        .unwrap();
    (out.status, String::from_utf8_lossy(&out.stdout).into_owned())
}

fn probe_ids() -> Option<(u32, u32)> {
    is_root().then_some((SANDBOX_ID_BASE, SANDBOX_ID_BASE))
}

/// In a child (PROBE_ENV set): confines itself and tries what the kind names.
/// In the test run itself: checks that the frontend profile verifies.
#[test]
fn probe_entry() {
    let Ok(kind) = std::env::var(PROBE_ENV) else {
        let (status, out) = probe("verify");
        assert!(status.success(), "{out}");
        assert!(out.contains("verified"), "{out}");
        return;
    };
    let frontend = Profile::frontend(probe_ids(), None);
    let landlock_only = Profile { seccomp: None, ..frontend.clone() };
    match kind.as_str() {
        "verify" => {
            sandbox::confine(&frontend).unwrap();
            sandbox::verify(&frontend).unwrap();
            println!("verified");
        }
        "open" => {
            sandbox::confine(&frontend).unwrap();
            println!("confined");
            let r = std::fs::File::open("/etc/hostname");
            println!("open returned {r:?}");
        }
        "exec" => {
            sandbox::confine(&frontend).unwrap();
            println!("confined");
            let r = nix::unistd::execv(c"/bin/true", &[c"true"]);
            println!("execve returned {r:?}");
        }
        "helper-vcpu-open" | "helper-vmm-ioctl" => {
            sandbox::confine(&Profile::helper(probe_ids())).unwrap();
            let thread = if kind == "helper-vcpu-open" { Thread::HelperVcpu } else { Thread::HelperVmm };
            sandbox::seccomp::apply(thread).unwrap();
            println!("confined");
            if kind == "helper-vcpu-open" {
                let r = std::fs::File::open("/etc/hostname");
                println!("open returned {r:?}");
            } else {
                let mut n: libc::c_int = 0;
                // SAFETY: FIONREAD on stdin writes one int into `n`.
                let r = unsafe { libc::ioctl(0, libc::FIONREAD, &mut n) };
                println!("ioctl returned {r}");
            }
        }
        "frontend-tls-read" => {
            // As the TLS frontend starts its handshake thread: the process
            // confined but for the event loop's filter, then the thread's own.
            sandbox::confine(&landlock_only).unwrap();
            sandbox::seccomp::apply(Thread::FrontendTls).unwrap();
            println!("confined");
            let mut byte = [0u8; 1];
            // SAFETY: reads at most one byte into `byte`, from stdin.
            let r = unsafe { libc::read(0, byte.as_mut_ptr().cast(), 1) };
            println!("read returned {r}");
        }
        "helper-io-open" => {
            sandbox::confine(&Profile::helper(probe_ids())).unwrap();
            sandbox::seccomp::apply(Thread::HelperIo).unwrap();
            println!("confined");
            // What the I/O thread does is allowed: a sync of an fd it has.
            // SAFETY: fdatasync on stdout; any errno is fine.
            let r = unsafe { libc::fdatasync(1) };
            println!("fdatasync ran ({r})");
            let r = std::fs::File::open("/etc/hostname");
            println!("open returned {r:?}");
        }
        "helper-vmm-mlock" | "helper-io-mlock" => {
            // Guest RAM is locked (<locked/>) before the helper is confined;
            // once confined no thread of it can lock memory.
            let page = vec![0u8; 4096];
            sandbox::confine(&Profile::helper(probe_ids())).unwrap();
            let thread = if kind == "helper-vmm-mlock" { Thread::HelperVmm } else { Thread::HelperIo };
            sandbox::seccomp::apply(thread).unwrap();
            println!("confined");
            // SAFETY: mlock2 on a live buffer only changes how it is kept.
            let r = unsafe { libc::mlock2(page.as_ptr().cast(), page.len(), libc::MLOCK_ONFAULT) };
            println!("mlock2 returned {r}");
        }
        "helper-landlock" => {
            sandbox::confine(&Profile::helper(probe_ids())).unwrap();
            let open = std::fs::File::open("/etc/hostname").map(|_| ()).map_err(|e| e.raw_os_error());
            println!("open: {open:?}");
        }
        "landlock" => {
            sandbox::confine(&landlock_only).unwrap();
            let open = std::fs::File::open("/etc/hostname").map(|_| ()).map_err(|e| e.raw_os_error());
            println!("open: {open:?}");
            let exec = nix::unistd::execv(c"/bin/true", &[c"true"]);
            println!("exec: {exec:?}");
        }
        other => panic!("unknown probe {other}"),
    }
    // Straight to exit_group: libc's exit handlers may make calls the filter
    // under test does not allow, which would turn a pass into a SIGSYS.
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    // SAFETY: _exit ends the process at once; nothing needs to run after it.
    unsafe { libc::_exit(0) }
}

#[test]
fn the_frontend_profile_kills_a_process_that_opens_a_file() {
    let (status, out) = probe("open");
    assert!(out.contains("confined"), "{out}");
    assert!(!out.contains("open returned"), "{out}");
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{status:?} {out}");
}

#[test]
fn the_frontend_profile_kills_a_process_that_execs() {
    let (status, out) = probe("exec");
    assert!(out.contains("confined"), "{out}");
    assert!(!out.contains("execve returned"), "{out}");
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{status:?} {out}");
}

#[test]
fn landlock_alone_denies_opening_and_executing_files() {
    let (status, out) = probe("landlock");
    assert!(status.success(), "{status:?} {out}");
    assert!(out.contains(&format!("open: Err(Some({}))", libc::EACCES)), "{out}");
    assert!(out.contains("exec: Err(EACCES)"), "{out}");
}

#[test]
fn the_broker_refuses_a_frontend_whose_sandbox_does_not_hold() {
    // The broker's outside check, run against a process that is not confined: this one.
    let err = sandbox::check_process(std::process::id() as i32, None).unwrap_err().to_string();
    assert!(err.contains("Seccomp") || err.contains("NoNewPrivs"), "{err}");
}

#[test]
fn the_helpers_filters_kill_what_they_do_not_allow() {
    for probe_kind in ["helper-vcpu-open", "helper-vmm-ioctl", "helper-vmm-mlock", "helper-io-mlock"] {
        let (status, out) = probe(probe_kind);
        assert!(out.contains("confined"), "{probe_kind}: {out}");
        assert!(!out.contains("returned"), "{probe_kind}: {out}");
        assert_eq!(status.signal(), Some(libc::SIGSYS), "{probe_kind}: {status:?} {out}");
    }
}

/// The TLS handshake thread waits on the broker's signatures: it cannot
/// read a client socket (or anything else), which the event loop does.
#[test]
fn the_tls_handshake_threads_filter_kills_a_read() {
    let (status, out) = probe("frontend-tls-read");
    assert!(out.contains("confined"), "{out}");
    assert!(!out.contains("read returned"), "{out}");
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{status:?} {out}");
}

#[test]
fn a_disk_io_thread_cannot_open_a_path() {
    let (status, out) = probe("helper-io-open");
    assert!(out.contains("fdatasync ran"), "its own calls are allowed: {out}");
    assert!(!out.contains("open returned"), "{out}");
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{status:?} {out}");
}

#[test]
fn the_helper_profile_denies_every_host_path() {
    let (status, out) = probe("helper-landlock");
    assert!(status.success(), "{status:?} {out}");
    assert!(out.contains(&format!("open: Err(Some({}))", libc::EACCES)), "{out}");
}
