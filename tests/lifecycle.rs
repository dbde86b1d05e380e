//! Guests through the daemon with the stock virsh: start the test guest in a
//! sandboxed helper, inspect it running, destroy it.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

const SECS: Duration = Duration::from_secs(10);
const UUID: &str = "6b756f5b-4608-417c-a706-f41a63ae86d9";

fn have_kvm() -> bool {
    require(std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok(), "/dev/kvm")
}

/// Builds the test guest into the daemon's tree and defines a domain booting it.
fn define_guest(d: &Daemon, name: &str, kernel: Option<&str>) -> PathBuf {
    define_guest_as(d, name, UUID, kernel)
}

fn define_guest_as(d: &Daemon, name: &str, uuid: &str, kernel: Option<&str>) -> PathBuf {
    let images = d.tree.path("guest");
    build_guest(&images);
    let kernel = kernel.map(PathBuf::from).unwrap_or_else(|| images.join("vmlinuz"));
    let xml = domain_xml(name, uuid).replace("/var/tmp/guestkit/vmlinuz", kernel.to_str().unwrap());
    let file = d.tree.path(&format!("{name}.xml"));
    std::fs::write(&file, xml).unwrap();
    let (code, _, err) = virsh(&d.tree.sock("libvirt-sock"), &["define", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    images
}

#[test]
fn a_guest_starts_runs_in_its_own_sandboxed_helper_and_is_destroyed() {
    if !have_virsh() || !have_kvm() {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    define_guest(&d, "guest-a", None);
    let (code, out, err) = virsh(&rw, &["start", "guest-a"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "Domain 'guest-a' started");
    assert_eq!(virsh(&rw, &["domstate", "--reason", "guest-a"]).1, "running (booted)\n\n");
    let (_, info, _) = virsh(&rw, &["dominfo", "guest-a"]);
    assert!(info.starts_with("Id:             1\n"), "{info}");
    assert!(info.contains("State:          running\n"), "{info}");
    assert_eq!(
        virsh(&rw, &["list"]).1,
        " Id   Name      State\n-------------------------\n 1    guest-a   running\n\n"
    );
    assert_eq!(virsh(&rw, &["domid", "guest-a"]).1.trim(), "1");
    let started = d.tree.audit(&["op=start", "vm=\"guest-a\"", &format!("uuid=\"{UUID}\""), "res=success"], SECS);
    let pid = vm_pid(&started.expect("no start audit"));

    // The helper: the guest's own uid from the helper range, its own session, confined.
    if is_root() {
        let uid: u32 = status_field(pid, "Uid").unwrap().split_whitespace().next().unwrap().parse().unwrap();
        let base = libvirtd::config::SANDBOX_ID_BASE;
        assert!((base + 1..=base + 0xffff).contains(&uid), "helper uid {uid}");
        assert_eq!(status_field(pid, "Seccomp").as_deref(), Some("2"));
        assert_eq!(status_field(pid, "CapEff").as_deref(), Some("0000000000000000"));
    }
    assert_eq!(nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid))).unwrap().as_raw(), pid);

    // Read-only clients see it but cannot stop it.
    let ro = d.tree.sock("libvirt-sock-ro");
    assert!(virsh(&ro, &["list"]).1.contains("guest-a   running"));
    let (code, _, err) = virsh(&ro, &["destroy", "guest-a"]);
    assert_eq!(code, 1);
    assert!(err.contains("read only access prevents virDomainDestroy"), "{err}");

    let (code, _, err) = virsh(&rw, &["start", "guest-a"]);
    assert_eq!(code, 1);
    assert!(err.contains("Domain is already active"), "{err}");

    let (code, out, err) = virsh(&rw, &["destroy", "guest-a"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "Domain 'guest-a' destroyed");
    assert_eq!(virsh(&rw, &["domstate", "--reason", "guest-a"]).1, "shut off (destroyed)\n\n");
    assert!(d.tree.audit(&["op=destroy", "vm=\"guest-a\"", &format!("vm-pid={pid}"), "res=success"], SECS).is_some());
    assert!(wait_until(SECS, || !std::path::Path::new(&format!("/proc/{pid}")).exists()), "the helper lingers");

    let (code, _, err) = virsh(&rw, &["destroy", "guest-a"]);
    assert_eq!(code, 1);
    assert!(err.contains("error: Requested operation is not valid: domain is not running"), "{err}");
    // A second start gets the next id.
    assert_eq!(virsh(&rw, &["start", "guest-a"]).0, 0);
    assert_eq!(virsh(&rw, &["domid", "guest-a"]).1.trim(), "2");
    // A graceful destroy asks the helper to stop the guest, and waits for it.
    let (code, out, err) = virsh(&rw, &["destroy", "--graceful", "guest-a"]);
    assert_eq!((code, out.trim()), (0, "Domain 'guest-a' destroyed"), "{err}");
    assert_eq!(virsh(&rw, &["domstate", "--reason", "guest-a"]).1, "shut off (destroyed)\n\n");
    assert!(d.tree.audit(&["op=destroy", "vm=\"guest-a\"", "res=success"], SECS).is_some());
}

#[test]
fn a_missing_kernel_is_a_clear_error_and_nothing_starts() {
    if !have_virsh() || !have_kvm() {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    define_guest(&d, "guest-b", Some("/nonexistent/vmlinuz"));
    let (code, _, err) = virsh(&rw, &["start", "guest-b"]);
    assert_eq!(code, 1);
    assert!(err.contains("error: Failed to start domain 'guest-b'"), "{err}");
    assert!(err.contains("cannot open kernel '/nonexistent/vmlinuz'"), "{err}");
    assert_eq!(virsh(&rw, &["domstate", "guest-b"]).1, "shut off\n\n");
    assert!(d.tree.audit(&["op=start", "res=failed"], SECS).is_some());
}

#[test]
fn the_daemon_does_not_time_out_while_a_guest_runs() {
    if !have_virsh() || !have_kvm() {
        return;
    }
    let mut d = Daemon::start("", &["--timeout", "2"]);
    define_guest(&d, "guest-c", None);
    assert_eq!(virsh(&d.tree.sock("libvirt-sock"), &["start", "guest-c"]).0, 0);
    std::thread::sleep(Duration::from_secs(4));
    assert!(d.is_running(), "timed out with a guest running");
    assert_eq!(virsh(&d.tree.sock("libvirt-sock"), &["destroy", "guest-c"]).0, 0);
    assert!(d.wait_exit(Duration::from_secs(10)).is_some_and(|s| s.success()));
}

#[test]
fn shutdown_reboot_and_reset_reach_the_guest() {
    if !have_virsh() || !have_kvm() {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    define_guest(&d, "guest-d", None);
    let state = || virsh(&rw, &["domstate", "--reason", "guest-d"]).1;
    assert_eq!(virsh(&rw, &["start", "guest-d"]).0, 0);
    let first = helper_pid(&d, "start", "guest-d");
    // Give the guest a moment to reach its shell, where it takes interrupts.
    std::thread::sleep(Duration::from_millis(500));

    let (code, out, err) = virsh(&rw, &["reboot", "guest-d"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "Domain 'guest-d' is being rebooted");
    assert!(wait_until(SECS, || d.tree.audit(&["op=stop", "reason=\"reboot\""], Duration::ZERO).is_some()));
    // The fresh helper reports itself started within moments (until then the
    // domain shows "paused (starting up)"; on a loaded machine that is seen).
    assert!(wait_until(SECS, || state() == "running (booted)\n\n"), "{}", state());
    assert_eq!(virsh(&rw, &["domid", "guest-d"]).1.trim(), "1", "a reboot keeps the id");
    assert!(wait_until(SECS, || !std::path::Path::new(&format!("/proc/{first}")).exists()), "old helper lingers");

    let (code, out, err) = virsh(&rw, &["reset", "guest-d"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "Domain 'guest-d' was reset");
    assert!(wait_until(SECS, || d.tree.audit(&["op=stop", "reason=\"reset\""], Duration::ZERO).is_some()));
    assert!(wait_until(SECS, || state() == "running (booted)\n\n"), "{}", state());

    let (code, _, err) = virsh(&rw, &["shutdown", "--mode", "acpi", "guest-d"]);
    assert_eq!(code, 1);
    assert!(err.contains("unsupported flags (0x1)"), "{err}");

    std::thread::sleep(Duration::from_millis(500));
    let (code, out, err) = virsh(&rw, &["shutdown", "guest-d"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "Domain 'guest-d' is being shutdown");
    assert!(wait_until(SECS, || state() == "shut off (shutdown)\n\n"), "{}", state());
    assert!(d.tree.audit(&["op=stop", "reason=\"shutdown\"", "vm=\"guest-d\""], SECS).is_some());
}

#[test]
fn a_file_serial_logs_the_console() {
    if !have_virsh() || !have_kvm() {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let images = define_guest(&d, "guest-e", None);
    let log = d.tree.path("guest-e.log");
    let xml = domain_xml("guest-e", UUID)
        .replace("/var/tmp/guestkit/vmlinuz", images.join("pvh.elf").to_str().unwrap())
        .replace(
            "<serial type='pty'><target port='0'/></serial>",
            &format!("<serial type='file'><source path='{}'/><target port='0'/></serial>", log.display()),
        );
    let file = d.tree.path("guest-e.xml");
    std::fs::write(&file, xml).unwrap();
    assert_eq!(virsh(&rw, &["define", file.to_str().unwrap()]).0, 0);
    assert_eq!(virsh(&rw, &["start", "guest-e"]).0, 0);
    assert!(
        wait_until(SECS, || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("GUEST-READY"))),
        "no console log"
    );
    assert_eq!(virsh(&rw, &["destroy", "guest-e"]).0, 0);
}

#[test]
fn suspend_and_resume_follow_libvirts_states() {
    if !have_virsh() || !have_kvm() {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    define_guest(&d, "guest-f", None);
    let (code, _, err) = virsh(&rw, &["suspend", "guest-f"]);
    assert_eq!(code, 1);
    assert!(err.contains("Requested operation is not valid: domain is not running"), "{err}");
    assert_eq!(virsh(&rw, &["start", "guest-f"]).0, 0);
    let (code, out, err) = virsh(&rw, &["suspend", "guest-f"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "Domain 'guest-f' suspended");
    assert_eq!(virsh(&rw, &["domstate", "--reason", "guest-f"]).1, "paused (user)\n\n");
    assert!(virsh(&rw, &["dominfo", "guest-f"]).1.contains("State:          paused\n"));
    assert_eq!(virsh(&rw, &["suspend", "guest-f"]).0, 0, "suspending a paused guest succeeds quietly");
    let (code, out, err) = virsh(&rw, &["resume", "guest-f"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "Domain 'guest-f' resumed");
    assert_eq!(virsh(&rw, &["domstate", "--reason", "guest-f"]).1, "running (unpaused)\n\n");
    let (code, _, err) = virsh(&rw, &["resume", "guest-f"]);
    assert_eq!(code, 1);
    assert!(err.contains("Requested operation is not valid: domain is already running"), "{err}");
    assert!(d.tree.audit(&["op=suspend", "vm=\"guest-f\"", "res=success"], SECS).is_some());
    assert!(d.tree.audit(&["op=resume", "vm=\"guest-f\"", "res=success"], SECS).is_some());
    assert_eq!(virsh(&rw, &["destroy", "guest-f"]).0, 0);
}

#[test]
fn a_transient_guest_is_created_and_gone_when_destroyed_and_start_paused_works() {
    if !have_virsh() || !have_kvm() {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let images = define_guest(&d, "guest-g", None);
    let (code, _, err) = virsh(&rw, &["start", "--paused", "guest-g"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(virsh(&rw, &["domstate", "--reason", "guest-g"]).1, "paused (user)\n\n");
    assert_eq!(virsh(&rw, &["destroy", "guest-g"]).0, 0);

    let xml = domain_xml("guest-t", "7c756f5b-4608-417c-a706-f41a63ae86d9")
        .replace("/var/tmp/guestkit/vmlinuz", images.join("pvh.elf").to_str().unwrap());
    let file = d.tree.path("guest-t.xml");
    std::fs::write(&file, xml).unwrap();
    let (code, out, err) = virsh(&rw, &["create", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("Domain 'guest-t' created from {}", file.display()));
    let (_, info, _) = virsh(&rw, &["dominfo", "guest-t"]);
    assert!(info.contains("State:          running\n") && info.contains("Persistent:     no\n"), "{info}");
    assert!(!d.tree.path("etc/qemu/guest-t.xml").exists(), "a transient domain was written to disk");
    assert!(d.tree.audit(&["op=create", "vm=\"guest-t\"", "res=success"], SECS).is_some());
    let (code, _, err) = virsh(&rw, &["undefine", "guest-t"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot undefine transient domain"), "{err}");
    assert_eq!(virsh(&rw, &["destroy", "guest-t"]).0, 0);
    let (code, _, err) = virsh(&rw, &["dominfo", "guest-t"]);
    assert_eq!(code, 1);
    assert_eq!(err.trim(), "error: failed to get domain 'guest-t'");
}

#[test]
fn virsh_event_sees_the_lifecycle() {
    if !have_virsh() || !have_kvm() {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let watcher = std::process::Command::new("virsh")
        .arg("-c")
        .arg(uri(&rw))
        .args(["event", "--all", "--loop", "--timeout", "8"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let it register its callbacks.
    std::thread::sleep(Duration::from_secs(1));
    define_guest(&d, "guest-h", None);
    for cmd in ["start", "suspend", "resume", "destroy", "undefine"] {
        assert_eq!(virsh(&rw, &[cmd, "guest-h"]).0, 0, "{cmd}");
    }
    let out = watcher.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let want = [
        "Defined Added",
        "Started Booted",
        "Suspended Paused",
        "Resumed Unpaused",
        "Stopped Destroyed",
        "Undefined Removed",
    ];
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("event 'lifecycle'")).collect();
    assert_eq!(lines.len(), want.len(), "{text}");
    for (line, w) in lines.iter().zip(want) {
        assert_eq!(*line, format!("event 'lifecycle' for domain 'guest-h': {w}"), "{text}");
    }
    assert!(text.contains("events received: 6"), "{text}");
}

/// A new daemon running the test guest as domain `name`, with its rw
/// socket; `None` (the test skips) without virsh or /dev/kvm outside CI.
fn running_guest(name: &str) -> Option<(Daemon, PathBuf)> {
    if !have_virsh() || !have_kvm() {
        return None;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    define_guest(&d, name, None);
    let (code, _, err) = virsh(&rw, &["start", name]);
    assert_eq!(code, 0, "{err}");
    Some((d, rw))
}

/// Runs one of the console scripts in tests/ (virsh console under a pty)
/// with `args`; returns what it printed, after checking it succeeded.
fn console_script(d: &Daemon, script: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("/usr/bin/python3")
        .arg(format!("{}/tests/{script}", env!("CARGO_MANIFEST_DIR")))
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}\n{}", String::from_utf8_lossy(&out.stderr), d.stderr());
    text
}

/// tests/console.py against `name` on `socket`.
fn console_session(d: &Daemon, socket: &std::path::Path, name: &str, extra: &[&str]) -> String {
    let uri = uri(socket);
    let args: Vec<&str> = [uri.as_str(), name].into_iter().chain(extra.iter().copied()).collect();
    console_script(d, "console.py", &args)
}

#[test]
fn virsh_console_attaches_types_detaches_and_is_exclusive() {
    let Some((d, rw)) = running_guest("guest-k") else { return };
    let text = console_session(&d, &rw, "guest-k", &[]);
    assert!(text.contains("first detach: 0"), "{text}");
    assert!(text.contains("second client: 1"), "{text}");
    assert!(text.contains("second detach: 0"), "{text}");
    assert!(d.tree.audit(&["op=console", "vm=\"guest-k\"", "res=success"], SECS).is_some());
    // Read-only clients cannot open it.
    let text = console_session(&d, &d.tree.sock("libvirt-sock-ro"), "guest-k", &["read-only"]);
    assert!(text.contains("read-only: 1"), "{text}");
    assert_eq!(virsh(&rw, &["destroy", "guest-k"]).0, 0);
}

/// tests/console_end.py: `virsh console` on `name` while the guest
/// powers off (`how` = "poweroff") or is destroyed by another client.
fn console_until_the_end(d: &Daemon, rw: &std::path::Path, name: &str, how: &str) -> String {
    console_script(d, "console_end.py", &[&uri(rw), name, how])
}

#[test]
fn virsh_console_exits_by_itself_when_the_guest_powers_off_or_is_destroyed() {
    let Some((d, rw)) = running_guest("guest-e") else { return };
    assert_eq!(console_until_the_end(&d, &rw, "guest-e", "poweroff"), "virsh exited: 0\n");
    assert!(wait_until(SECS, || virsh(&rw, &["domstate", "guest-e"]).1 == "shut off\n\n"));
    assert_eq!(virsh(&rw, &["start", "guest-e"]).0, 0);
    assert_eq!(console_until_the_end(&d, &rw, "guest-e", "destroy"), "virsh exited: 0\n");
    assert_eq!(virsh(&rw, &["domstate", "guest-e"]).1, "shut off\n\n");
}

/// SIGKILLs the listed helpers when dropped: a restarted daemon's guests are
/// not its children, so the daemon's own clean-up would miss them.
struct Helpers(Vec<i32>);

impl Drop for Helpers {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

fn alive(pid: i32) -> bool {
    status_field(pid, "State").is_some_and(|s| !s.starts_with('Z'))
}

/// The helper's pid, from the audit record of the `op` that started it.
fn helper_pid(d: &Daemon, op: &str, name: &str) -> i32 {
    let line = d.tree.audit(&[&format!("op={op} "), &format!("vm=\"{name}\""), "res=success"], SECS);
    vm_pid(&line.unwrap_or_else(|| panic!("no {op} audit for {name}")))
}

/// The helper pid an audit record names.
fn vm_pid(record: &str) -> i32 {
    record.split("vm-pid=").nth(1).and_then(|r| r.split(' ').next()?.parse().ok()).expect(record)
}

#[test]
fn guests_outlive_a_daemon_restart_and_autostart_domains_start_with_it() {
    if !have_virsh() || !have_kvm() {
        return;
    }
    let mut d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    define_guest_as(&d, "guest-r", UUID, None);
    define_guest_as(&d, "guest-s", "0f3a6b52-1c8e-4d7b-9a64-2e5f8c1d3b70", None);
    define_guest_as(&d, "guest-t", "7c2d9e41-5a3b-4f60-8e17-b94c0d6a2f58", None);
    assert_eq!(virsh(&rw, &["start", "guest-r"]).0, 0);
    assert_eq!(virsh(&rw, &["start", "guest-s"]).0, 0);
    assert_eq!(virsh(&rw, &["suspend", "guest-r"]).0, 0);
    let (code, _, err) = virsh(&rw, &["autostart", "guest-t"]);
    assert_eq!(code, 0, "{err}");
    let (r, s) = (helper_pid(&d, "start", "guest-r"), helper_pid(&d, "start", "guest-s"));
    let _helpers = Helpers(vec![r, s]);

    // The daemon dies without cleaning up; its guests keep running.
    d.signal(nix::sys::signal::Signal::SIGKILL);
    assert!(d.wait_exit(SECS).is_some());
    assert!(wait_until(SECS, || d.frontend_pid().is_none()));
    assert!(alive(r) && alive(s), "helpers died with the daemon");
    // One guest ends while no daemon is there.
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(s), nix::sys::signal::Signal::SIGKILL);
    assert!(wait_until(SECS, || !alive(s)));
    // The paused guest's record says running (as a broker that died between
    // asking for the pause and recording it would leave it): the helper's
    // word wins.
    let status = d.tree.path("run/qemu/guest-r.status");
    let record = std::fs::read_to_string(&status).unwrap();
    assert!(record.contains("state=3\nreason=1\n"), "{record}");
    std::fs::write(&status, record.replace("state=3\nreason=1\n", "state=1\nreason=1\n")).unwrap();

    d.restart();

    // The survivor keeps its id and state; the dead one is shut off; the
    // autostart domain started with the daemon, with an id not reused.
    assert_eq!(virsh(&rw, &["domstate", "--reason", "guest-r"]).1.trim(), "paused (user)");
    assert_eq!(virsh(&rw, &["domid", "guest-r"]).1.trim(), "1");
    assert_eq!(virsh(&rw, &["resume", "guest-r"]).0, 0);
    assert_eq!(virsh(&rw, &["domstate", "guest-r"]).1.trim(), "running");
    assert_eq!(virsh(&rw, &["domstate", "guest-s"]).1.trim(), "shut off");
    let vm_pid = format!("vm-pid={r} ");
    assert!(d.tree.audit(&["op=reattach ", "vm=\"guest-r\"", &vm_pid, "res=success"], SECS).is_some());
    assert!(d.tree.audit(&["op=reattach ", "vm=\"guest-s\"", "res=failed"], SECS).is_some());
    assert_eq!(virsh(&rw, &["domstate", "guest-t"]).1.trim(), "running", "{}", d.stderr());
    assert_eq!(virsh(&rw, &["domid", "guest-t"]).1.trim(), "3");
    let (_, list, _) = virsh(&rw, &["list", "--name"]);
    assert_eq!(list, "guest-r\nguest-t\n\n");

    // The re-attached guest answers on its console and is destroyed as usual.
    let text = console_session(&d, &rw, "guest-r", &[]);
    assert!(text.contains("first detach: 0"), "{text}");
    assert_eq!(virsh(&rw, &["destroy", "guest-r"]).0, 0);
    assert!(wait_until(SECS, || !alive(r)), "destroy left the re-attached helper running");
    assert_eq!(virsh(&rw, &["domstate", "guest-r"]).1.trim(), "shut off");

    // A clean stop (SIGTERM) leaves guests running too, transient ones
    // included, and autostart does not start a running domain twice.
    let xml = std::fs::read_to_string(d.tree.path("guest-r.xml")).unwrap();
    let transient = d.tree.path("guest-u.xml");
    std::fs::write(&transient, xml.replace("guest-r", "guest-u").replace(UUID, "3e8b1f27-9d4c-4a05-b6e2-58c7a0f91d34"))
        .unwrap();
    let (code, _, err) = virsh(&rw, &["create", transient.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (t, u) = (helper_pid(&d, "start", "guest-t"), helper_pid(&d, "create", "guest-u"));
    let _more = Helpers(vec![t, u]);
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(d.wait_exit(SECS).is_some_and(|s| s.success()));
    assert!(alive(t) && alive(u), "a clean daemon stop took its guests with it");
    d.restart();
    assert_eq!(virsh(&rw, &["list", "--name"]).1, "guest-t\nguest-u\n\n", "{}", d.stderr());
    assert_eq!(virsh(&rw, &["domid", "guest-t"]).1.trim(), "3");
    assert_eq!(virsh(&rw, &["domid", "guest-u"]).1.trim(), "4");
    assert!(children_of(d.pid).iter().all(|p| !cmdline(*p).contains("libvirt-helper")), "autostart ran twice");
    assert_eq!(virsh(&rw, &["destroy", "guest-u"]).0, 0);
    assert_ne!(virsh(&rw, &["domstate", "guest-u"]).0, 0, "a destroyed transient guest lingers");
    assert_eq!(virsh(&rw, &["destroy", "guest-t"]).0, 0);
    // Nothing is left recorded as running for the next daemon.
    let state = d.tree.path("run/qemu");
    let left: Vec<_> = std::fs::read_dir(&state)
        .map(|r| r.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.iter().all(|n| !n.to_string_lossy().ends_with(".status")), "{left:?}");
}

#[test]
fn a_wedged_helper_stalls_only_its_own_callers_and_destroy_still_works() {
    let Some((d, rw)) = running_guest("guest-w") else { return };
    let pid = helper_pid(&d, "start", "guest-w");
    let _helper = Helpers(vec![pid]);
    let helper = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(helper, nix::sys::signal::Signal::SIGSTOP).unwrap();

    // A suspend waits for the helper; other clients are served meanwhile.
    let mut suspend = std::process::Command::new("virsh")
        .args(["-c", &uri(&rw), "suspend", "guest-w"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (code, out, err) = virsh(&d.tree.sock("libvirt-sock-ro"), &["list", "--name"]);
    assert_eq!((code, out.as_str()), (0, "guest-w\n\n"), "{err}");
    assert_eq!(virsh(&rw, &["domstate", "guest-w"]).1.trim(), "running");
    // Statistics answer while the suspend is pending (issue 13): they do not
    // queue behind the guest's outstanding request.
    let asked = std::time::Instant::now();
    let (code, out, err) = virsh(&d.tree.sock("libvirt-sock-ro"), &["domstats", "--cpu-total", "--vcpu", "guest-w"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cpu.time=") && out.contains("vcpu.current=1"), "{out}");
    let (code, out, err) = virsh(&d.tree.sock("libvirt-sock-ro"), &["dommemstat", "guest-w"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("rss "), "{out}");
    assert!(asked.elapsed() < Duration::from_secs(3), "statistics waited for the pending suspend");
    assert!(suspend.try_wait().unwrap().is_none(), "the suspend returned before its helper could answer");
    let out = suspend.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("guest 'guest-w' did not answer"), "{err}");
    assert!(d.tree.audit(&["op=suspend ", "res=failed"], SECS).is_some());

    // So does a graceful destroy, which never kills.
    let graceful = std::process::Command::new("virsh")
        .args(["-c", &uri(&rw), "destroy", "--graceful", "guest-w"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(virsh(&d.tree.sock("libvirt-sock-ro"), &["domstate", "guest-w"]).1.trim(), "running");
    let out = graceful.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("guest 'guest-w' did not stop within 5 s"), "{err}");
    assert!(d.tree.audit(&["op=destroy ", "res=failed"], SECS).is_some());
    assert_eq!(virsh(&rw, &["domstate", "guest-w"]).1.trim(), "running");
    assert!(alive(pid));
    let (code, _, err) = virsh(&rw, &["destroy", "guest-w"]);
    assert_eq!(code, 0, "{err}");
    assert!(wait_until(SECS, || !alive(pid)), "destroy left a stopped helper behind");
    assert_eq!(virsh(&rw, &["domstate", "--reason", "guest-w"]).1.trim(), "shut off (destroyed)");
}

#[test]
fn two_requests_on_one_guest_are_in_flight_at_once_and_statistics_answer_meanwhile() {
    let Some((d, rw)) = running_guest("guest-m") else { return };
    let pid = helper_pid(&d, "start", "guest-m");
    let _helper = Helpers(vec![pid]);
    let helper = nix::unistd::Pid::from_raw(pid);
    let ro = d.tree.sock("libvirt-sock-ro");
    let spawn = |args: &[&str]| {
        std::process::Command::new("virsh")
            .args(["-c", &uri(&rw)])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // A helper slow to answer: stopped until the test lets it go on.
    nix::sys::signal::kill(helper, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let mut suspend = spawn(&["suspend", "guest-m"]);
    std::thread::sleep(Duration::from_millis(300));
    // A second request to the same guest goes out while the first waits.
    let mut graceful = spawn(&["destroy", "--graceful", "guest-m"]);
    std::thread::sleep(Duration::from_millis(300));

    // Statistics answer meanwhile, and show the guest busy with a request.
    let asked = std::time::Instant::now();
    let (code, out, err) = virsh(&ro, &["domstats", "--state", "--cpu-total", "--vcpu", "guest-m"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("state.state=1") && out.contains("cpu.time=") && out.contains("vcpu.current=1"), "{out}");
    let (code, out, err) = virsh(&ro, &["dominfo", "guest-m"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("State:          running"), "{out}");
    let (code, out, err) = virsh(&ro, &["dommemstat", "guest-m"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("rss "), "{out}");
    let (code, out, err) = virsh(&ro, &["domcontrol", "guest-m"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("occupied"), "{out}");
    assert!(asked.elapsed() < Duration::from_secs(3), "statistics waited for the pending requests");
    assert!(suspend.try_wait().unwrap().is_none(), "the suspend returned before its helper could answer");
    assert!(graceful.try_wait().unwrap().is_none(), "the graceful destroy returned before its helper could answer");

    // Once the helper goes on, it answers both, in order: paused, then stopped.
    nix::sys::signal::kill(helper, nix::sys::signal::Signal::SIGCONT).unwrap();
    let out = suspend.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Domain 'guest-m' suspended"));
    let out = graceful.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(d.tree.audit(&["op=suspend ", "vm=\"guest-m\"", "res=success"], SECS).is_some());
    assert!(d.tree.audit(&["op=destroy ", "vm=\"guest-m\"", "res=success"], SECS).is_some());
    assert!(wait_until(SECS, || !alive(pid)), "the graceful destroy left its helper running");
    assert_eq!(virsh(&rw, &["domstate", "--reason", "guest-m"]).1.trim(), "shut off (destroyed)");
}

/// A daemon whose guest helper is a stand-in that never reports Started
/// (the daemon runs the helper found beside its own binary), or exits at
/// once when the returned file exists.
fn stand_in_daemon(conf: &str) -> (Daemon, PathBuf) {
    let tree = Tree::new();
    tree.write_conf(conf);
    let bin = tree.path("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::copy(BIN, bin.join("libvirtd")).unwrap();
    let exit_now = tree.path("exit-now");
    let script = format!("#!/bin/sh\n[ -e '{}' ] && exit 3\nexec sleep 60\n", exit_now.display());
    std::fs::write(bin.join("libvirt-helper"), script).unwrap();
    std::fs::set_permissions(bin.join("libvirt-helper"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    (Daemon::start_binary(tree, &bin.join("libvirtd")), exit_now)
}

#[test]
fn a_helper_that_never_starts_stalls_nobody_and_the_start_fails_naming_the_domain() {
    if !have_virsh() || !have_kvm() {
        return;
    }
    let (d, exit_now) = stand_in_daemon("");
    let (rw, ro) = (d.tree.sock("libvirt-sock"), d.tree.sock("libvirt-sock-ro"));
    define_guest_as(&d, "stuck-1", "0d3c4a52-9c57-4a43-9d7f-8c1f0f6a0b01", None);
    define_guest_as(&d, "stuck-2", "0d3c4a52-9c57-4a43-9d7f-8c1f0f6a0b02", None);
    let start = |name: &str| {
        std::process::Command::new("virsh")
            .args(["-c", &uri(&rw), "start", name])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (mut one, mut two) = (start("stuck-1"), start("stuck-2"));
    let state = |name: &str| virsh(&ro, &["domstate", "--reason", name]).1;
    assert!(wait_until(SECS, || state("stuck-1").trim() == "paused (starting up)"), "{}", state("stuck-1"));
    assert!(wait_until(SECS, || state("stuck-2").trim() == "paused (starting up)"), "{}", state("stuck-2"));
    let helpers: Vec<i32> = children_of(d.pid).into_iter().filter(|p| cmdline(*p).contains("sleep")).collect();
    assert_eq!(helpers.len(), 2, "stand-in helpers: {helpers:?}");
    let _guard = Helpers(helpers.clone());

    // Both starts wait on their helpers; the read-only socket answers meanwhile.
    let (code, out, err) = virsh(&ro, &["list", "--name"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("stuck-1\n") && out.contains("stuck-2\n"), "{out}");
    assert!(one.try_wait().unwrap().is_none() && two.try_wait().unwrap().is_none(), "a start did not wait");
    // Nothing else may act on a guest that is still starting, except destroy.
    let (code, _, err) = virsh(&rw, &["suspend", "stuck-2"]);
    assert_eq!(code, 1);
    assert!(err.contains("guest 'stuck-2' has not finished its start yet"), "{err}");
    let (code, _, err) = virsh(&rw, &["destroy", "stuck-1"]);
    assert_eq!(code, 0, "{err}");
    let out = one.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("domain is not running"), "{out:?}");
    assert_eq!(state("stuck-1").trim(), "shut off (destroyed)");

    // The other gives up at the deadline, names the domain, and leaves nothing behind.
    let out = two.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("error: Failed to start domain 'stuck-2'"), "{err}");
    assert!(err.contains("guest 'stuck-2' did not start within 10 s"), "{err}");
    assert_eq!(state("stuck-2").trim(), "shut off (failed)");
    assert!(wait_until(SECS, || helpers.iter().all(|p| !alive(*p))), "a stand-in helper lingers");
    assert!(
        d.tree.audit(&["op=start ", "uuid=\"0d3c4a52-9c57-4a43-9d7f-8c1f0f6a0b02\"", "res=failed"], SECS).is_some()
    );
    assert!(!d.tree.path("run/qemu/stuck-2.status").exists(), "the failed start is still recorded");

    // A helper that exits at once fails its start promptly, with the reason.
    std::fs::write(&exit_now, "").unwrap();
    let (code, _, err) = virsh(&rw, &["start", "stuck-1"]);
    assert_eq!(code, 1);
    assert!(err.contains("guest failed to start"), "{err}");
    assert_eq!(state("stuck-1").trim(), "shut off (failed)");
}

#[test]
fn max_client_requests_holds_a_clients_further_calls_not_other_clients() {
    if !have_virsh() || !have_kvm() {
        return;
    }
    let (d, _) = stand_in_daemon("max_client_requests = 1\n");
    define_guest_as(&d, "slow-1", "0d3c4a52-9c57-4a43-9d7f-8c1f0f6a0b03", None);
    let rw = d.tree.sock("libvirt-sock");
    let uuid = libvirtd::domain::parse_uuid("0d3c4a52-9c57-4a43-9d7f-8c1f0f6a0b03").unwrap().0;
    let mut a = RawClient::connect(&rw);
    a.open(0);
    // DOMAIN_CREATE (waits up to 10 s for the stand-in), then CONNECT_GET_HOSTNAME, pipelined.
    let dom = libvirtd::rpc::remote::NonnullDomain {
        name: "slow-1".into(),
        uuid: libvirtd::rpc::xdr::FixedOpaque(uuid),
        id: -1,
    };
    let (start_serial, start) = a.packet(9, &libvirtd::rpc::xdr::to_bytes(&dom).unwrap());
    let (_, hostname) = a.packet(59, &[]);
    a.send(&[start, hostname].concat());
    // Another client is served meanwhile.
    let mut b = RawClient::connect(&rw);
    b.open(0);
    assert_eq!(b.call(59, &[]).0.status, 0);
    // The first client's second call waited for its first: the start's answer comes first.
    let (h, _) = a.read().unwrap();
    assert_eq!(h.serial, start_serial, "the second call overtook the first");
    assert_ne!(h.status, 0, "the stand-in helper cannot start a guest");
    let (h, _) = a.read().unwrap();
    assert_eq!((h.proc_, h.status), (59, 0));
}

/// Restarts the broker allows a guest that resets itself before ending it
/// (`src/broker/restarts.rs`, MAX_RESTARTS).
const MAX_RESTARTS: usize = 5;

#[test]
fn a_guest_that_resets_at_every_boot_ends_crashed_after_a_few_restarts() {
    if !have_virsh() || !have_kvm() {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw_sock = d.tree.sock("libvirt-sock");
    // A session opened before the loop, which must still answer after it.
    let mut rw = RawClient::connect(&rw_sock);
    rw.stream.set_read_timeout(Some(SECS)).unwrap();
    rw.open(0);
    let images = d.tree.path("guest");
    build_guest(&images);
    let kernel = images.join("vmlinuz");
    // Default on_reboot (restart); the second also asks on_crash=restart,
    // which must not start the loop again.
    for (name, uuid, on_crash) in [
        ("looper", "8b756f5b-4608-417c-a706-f41a63ae86d9", ""),
        ("looper-crash-restart", "9b756f5b-4608-417c-a706-f41a63ae86d9", "<on_crash>restart</on_crash>"),
    ] {
        let xml = domain_xml(name, uuid)
            .replace("/var/tmp/guestkit/vmlinuz", kernel.to_str().unwrap())
            .replace("console=ttyS0", "console=ttyS0 resetatboot")
            .replace("<on_poweroff>destroy</on_poweroff>", &format!("<on_poweroff>destroy</on_poweroff>{on_crash}"));
        let file = d.tree.path(&format!("{name}.xml"));
        std::fs::write(&file, xml).unwrap();
        assert_eq!(virsh(&rw_sock, &["define", file.to_str().unwrap()]).0, 0);
        let started = std::time::Instant::now();
        let (code, _, err) = virsh(&rw_sock, &["start", name]);
        assert_eq!(code, 0, "{err}");
        let state = || virsh(&rw_sock, &["domstate", "--reason", name]).1;
        assert!(wait_until(SECS, || state() == "shut off (crashed)\n\n"), "{name}: {}\n{}", state(), d.stderr());
        assert!(started.elapsed() < SECS, "{name}: took {:?}", started.elapsed());

        // One record says why it ended; before it, the restarts allowed.
        let vm = format!("vm=\"{name}\"");
        let why = d.tree.audit(&["op=stop", &vm, "reason=\"reset-loop\""], SECS);
        assert!(why.is_some(), "{name}: no audit record of the reset loop");
        assert!(d.tree.audit(&["op=stop", &vm, "reason=\"reset-loop\""], Duration::from_millis(500)).is_none());
        let mut reboots = 0;
        while d.tree.audit(&["op=stop", &vm, "reason=\"reboot\""], Duration::from_millis(200)).is_some() {
            reboots += 1;
        }
        assert_eq!(reboots, MAX_RESTARTS, "{name}: restarts before the guest was ended");
        // And it stays off: no helper started after.
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(state(), "shut off (crashed)\n\n", "{name}");
        assert!(d.tree.audit(&["op=start", &vm, "res=success"], Duration::from_millis(200)).is_some());
    }
    let helpers: Vec<i32> =
        children_of(d.pid).into_iter().filter(|p| !cmdline(*p).contains("--frontend-process")).collect();
    assert!(helpers.is_empty(), "helpers left: {helpers:?}");

    // The daemon still serves: the session from before and a new read-only one.
    assert_eq!(rw.try_call(4, &[]).expect("the read-write session is gone").0.status, 0);
    let (code, out, err) = virsh(&d.tree.sock("libvirt-sock-ro"), &["list", "--all"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("looper") && out.contains("shut off"), "{out}");
}
