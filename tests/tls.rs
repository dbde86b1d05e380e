//! Remote clients over TLS with the stock virsh: certificates made here
//! (rcgen), the client's DN as its identity, refusals audited, SIGHUP
//! re-reading the allow-list, and the private key absent from the frontend.

mod common;

use std::time::Duration;

use common::pki::*;
use common::*;

const SECS: Duration = Duration::from_secs(10);

/// virsh over TLS as the client whose files are in `pki/<client>`.
fn virsh_tls(p: &Pki, port: u16, client: &str, args: &[&str]) -> (i32, String, String) {
    let mode = if is_root() { "system" } else { "session" };
    let uri = format!("qemu+tls://127.0.0.1:{port}/{mode}?pkipath={}", p.dir.join(client).display());
    client_tool("virsh", &uri, args)
}

fn tls_daemon() -> Option<(Daemon, Pki, u16)> {
    if !have_virsh() {
        return None;
    }
    let tree = Tree::new();
    let p = pki(&tree.path("pki"));
    let port = free_port();
    tree.write_conf(&tls_conf(&p, port, "\"C=GB,O=Example,CN=*\""));
    let d = Daemon::start_in(tree, &["--listen"]);
    Some((d, p, port))
}

#[test]
fn virsh_over_tls_works_with_a_good_certificate_and_others_are_refused_and_audited() {
    let Some((d, p, port)) = tls_daemon() else { return };
    let (code, out, err) = virsh_tls(&p, port, GOOD, &["list", "--all"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Id   Name   State"), "{out}");
    let dn = "C=GB,O=Example,CN=client1";
    assert!(d.tree.audit(&["op=client-auth", "sock=\"tls\"", &format!("dn=\"{dn}\""), "res=success"], SECS).is_some());

    for (client, why) in [(FOREIGN, "certificate"), (STRANGER, "tls_allowed_dn_list"), (REVOKED, "Revoked")] {
        let (code, _, err) = virsh_tls(&p, port, client, &["list"]);
        assert_ne!(code, 0, "{client} got in");
        assert!(err.contains("error: failed to connect to the hypervisor"), "{client}: {code} {err}");
        let record = d.tree.audit(&["op=client-auth", "sock=\"tls\"", "res=failed"], SECS);
        let record = record.unwrap_or_else(|| panic!("no audit record refusing {client}"));
        assert!(record.contains(why) || record.contains(&hex(why)), "{client}: {record}");
    }
    // The good client still gets in after the refusals.
    assert_eq!(virsh_tls(&p, port, GOOD, &["hostname"]).0, 0);

    // virt-admin shows a connected TLS client with its DN, and can disconnect it.
    if !have_virt_admin() {
        return;
    }
    let mode = if is_root() { "system" } else { "session" };
    let uri = format!("qemu+tls://127.0.0.1:{port}/{mode}?pkipath={}", p.dir.join(GOOD).display());
    let mut shell = std::process::Command::new("virsh")
        .args(["-c", &uri])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let admin = d.tree.sock("libvirt-admin-sock");
    let listed = || virt_admin(&admin, &["srv-clients-list", "libvirtd"]).1;
    assert!(wait_until(SECS, || listed().contains(" tls ")), "{}", listed());
    let out = listed();
    let id = out.lines().find(|l| l.contains(" tls ")).and_then(|l| l.split_whitespace().next()).unwrap().to_owned();
    let (code, info, err) = virt_admin(&admin, &["client-info", "libvirtd", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(info.contains("transport      : tls\n"), "{info}");
    assert!(info.contains(&format!("tls_x509_dname : {dn}\n")), "{info}");
    assert!(info.contains("sock_addr      : 127.0.0.1;"), "{info}");
    assert_eq!(virt_admin(&admin, &["client-disconnect", "libvirtd", &id]).0, 0);
    assert!(wait_until(SECS, || !listed().contains(" tls ")), "{}", listed());
    drop(shell.stdin.take());
    let _ = shell.wait();
}

/// How the audit trail writes `text` when it needs hex.
fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02X}")).collect()
}

#[test]
fn sighup_applies_a_new_allow_list_to_new_connections() {
    let Some((mut d, p, port)) = tls_daemon() else { return };
    assert_eq!(virsh_tls(&p, port, GOOD, &["hostname"]).0, 0);
    d.tree.write_conf(&tls_conf(&p, port, "\"C=GB,O=Intruders,CN=eve\""));
    d.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(wait_until(SECS, || virsh_tls(&p, port, STRANGER, &["hostname"]).0 == 0), "the new DN is not allowed");
    let (code, _, err) = virsh_tls(&p, port, GOOD, &["hostname"]);
    assert_ne!(code, 0, "the old DN still gets in: {err}");

    // virt-admin re-reads the files too.
    if have_virt_admin() {
        let admin = d.tree.sock("libvirt-admin-sock");
        let (code, _, err) = virt_admin(&admin, &["server-update-tls", "libvirtd"]);
        assert_eq!(code, 0, "{err}");
        std::fs::write(p.dir.join("crl.pem"), "garbage").unwrap();
        let (code, _, err) = virt_admin(&admin, &["server-update-tls", "libvirtd"]);
        assert_eq!(code, 1);
        assert!(err.contains("cannot reload TLS files: CRL"), "{err}");
        assert_eq!(virsh_tls(&p, port, STRANGER, &["hostname"]).0, 0, "a broken CRL replaced the good one");
    }
    // A broken certificate file keeps the previous files in use.
    std::fs::write(p.dir.join("servercert.pem"), "not a certificate").unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    assert!(d.is_running());
    assert_eq!(virsh_tls(&p, port, STRANGER, &["hostname"]).0, 0);
    assert!(wait_until(SECS, || d.stderr().contains("cannot reload TLS files")), "{}", d.stderr());
}

#[test]
fn the_private_key_never_enters_the_frontend() {
    if !is_root() {
        return;
    }
    let Some((d, p, port)) = tls_daemon() else { return };
    // A handshake has been signed, so the key was used.
    assert_eq!(virsh_tls(&p, port, GOOD, &["hostname"]).0, 0);
    let frontend = d.frontend_pid().expect("no frontend");
    let memory = process_memory(frontend);
    // The scan works: the (public) certificate is there.
    assert!(contains(&memory, &p.server_cert_der), "the scan did not find the certificate");
    // The P-256 private scalar: `02 01 01 04 20` then 32 bytes, inside the
    // PKCS#8 DER (the rest of which, the public key, is public).
    let der = p.server_key.serialize_der();
    let at = der.windows(5).position(|w| w == [2, 1, 1, 4, 32]).expect("not a P-256 PKCS#8 key") + 5;
    let scalar = &der[at..at + 32];
    assert!(!contains(&memory, &der), "the key's DER is in the frontend's memory");
    for part in [&scalar[..12], &scalar[10..22], &scalar[20..]] {
        assert!(!contains(&memory, part), "part of the private key is in the frontend's memory");
    }
    // Nor its PEM text: the base64 of the bytes that hold the scalar.
    let pem = p.server_key.serialize_pem();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let encoded = &body[(at / 3 + 1) * 4..(at / 3 + 1) * 4 + 32];
    assert!(!contains(&memory, encoded.as_bytes()), "the key's PEM is in the frontend's memory");
}

/// Every readable mapping of `pid`, concatenated (root reads a process
/// that is not dumpable with CAP_SYS_PTRACE).
fn process_memory(pid: i32) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut out = Vec::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (range, perms) = (f.next().unwrap(), f.next().unwrap());
        if !perms.starts_with('r') || line.ends_with("[vvar]") {
            continue;
        }
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (u64::from_str_radix(a, 16).unwrap(), u64::from_str_radix(b, 16).unwrap());
        let mut buf = vec![0u8; (b - a) as usize];
        if mem.seek(SeekFrom::Start(a)).is_ok() && mem.read_exact(&mut buf).is_ok() {
            out.extend_from_slice(&buf);
        }
    }
    assert!(out.len() > 1 << 20, "read only {} bytes of the frontend", out.len());
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn missing_certificates_stop_the_daemon_naming_the_file() {
    let tree = Tree::new();
    let p = pki(&tree.path("pki"));
    let port = free_port();
    std::fs::remove_file(p.dir.join("cacert.pem")).unwrap();
    tree.write_conf(&tls_conf(&p, port, ""));
    let out = command(&tree, &["--listen"]).stderr(std::process::Stdio::piped()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot read CA certificate '{}'", p.dir.join("cacert.pem").display())), "{err}");
}

#[test]
fn half_open_tls_connections_are_bounded_by_max_anonymous_clients() {
    let tree = Tree::new();
    let p = pki(&tree.path("pki"));
    let port = free_port();
    tree.write_conf(&(tls_conf(&p, port, "") + "max_anonymous_clients = 2\n"));
    let d = Daemon::start_in(tree, &["--listen"]);
    // Two connections that never start their handshake hold the two places.
    let idle: Vec<std::net::TcpStream> =
        (0..2).map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    assert!(wait_until(SECS, || d.tree.audit(&["op=client-open", "sock=\"tls\"", "res=success"], SECS).is_some()));
    assert!(d.tree.audit(&["op=client-open", "sock=\"tls\"", "res=success"], SECS).is_some());
    let mut third = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    third.set_read_timeout(Some(SECS)).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(std::io::Read::read(&mut third, &mut buf).unwrap_or(0), 0, "a third anonymous client was kept");
    let refused = d.tree.audit(&["op=client-open", "sock=\"tls\"", "res=failed"], SECS).expect("no refusal audited");
    assert!(refused.contains(&hex("max_anonymous_clients")), "{refused}");
    // Unix clients are not anonymous: they still get in.
    assert_eq!(virsh(&d.tree.sock("libvirt-sock"), &["hostname"]).0, 0);

    // The half-open ones are dropped when their handshake time is up, and audited.
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        assert_eq!(std::io::Read::read(&mut s, &mut buf).unwrap_or(0), 0, "a half-open client was kept");
    }
    let timed_out = d.tree.audit(&["op=client-auth", "sock=\"tls\"", "res=failed"], SECS).expect("not audited");
    assert!(timed_out.contains(&hex("not finished in time")), "{timed_out}");
    assert_eq!(virsh_tls(&p, port, GOOD, &["hostname"]).0, 0, "no room for a TLS client afterwards");
}

#[test]
fn without_certificate_verification_any_client_gets_in() {
    if !have_virsh() {
        return;
    }
    let tree = Tree::new();
    let p = pki(&tree.path("pki"));
    let port = free_port();
    tree.write_conf(&(tls_conf(&p, port, "\"CN=nobody\"") + "tls_no_verify_certificate = 1\n"));
    let d = Daemon::start_in(tree, &["--listen"]);
    for client in [GOOD, FOREIGN, REVOKED] {
        let (code, _, err) = virsh_tls(&p, port, client, &["hostname"]);
        assert_eq!(code, 0, "{client}: {err}");
    }
    assert!(d.tree.audit(&["op=client-auth", "sock=\"tls\"", "res=success"], SECS).is_some());
}

/// A handshake whose signature the broker is slow to give waits on the TLS
/// frontend's handshake thread, not on its event loop: a connected TLS
/// client is answered meanwhile (the frontend answers `getVersion` itself).
/// Both threads are confined.
#[test]
fn a_handshake_waiting_on_the_brokers_signature_stalls_no_other_client() {
    if !have_virsh() {
        return;
    }
    let Some((d, p, port)) = tls_daemon() else { return };
    let mode = if is_root() { "system" } else { "session" };
    let uri = format!("qemu+tls://127.0.0.1:{port}/{mode}?pkipath={}", p.dir.join(GOOD).display());
    let program = format!(
        r#"
import libvirt, os, signal, socket, ssl, threading, time
conn = libvirt.open("{uri}")
conn.getVersion()
raw = socket.create_connection(("127.0.0.1", {port}))
time.sleep(1)  # admitted while the broker runs
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
def handshake():
    try:
        ctx.wrap_socket(raw)
    except Exception:
        pass
os.kill({broker}, signal.SIGSTOP)
try:
    threading.Thread(target=handshake, daemon=True).start()
    time.sleep(0.3)  # its ClientHello is in; the frontend waits on the broker for a signature
    asked = time.monotonic()
    conn.getVersion()
    took = time.monotonic() - asked
finally:
    os.kill({broker}, signal.SIGCONT)
print("took %.3f" % took)
"#,
        broker = d.pid
    );
    let out = run_python(&d, &program, Duration::from_secs(60));
    let took: f64 = out.trim().strip_prefix("took ").and_then(|t| t.parse().ok()).expect(&out);
    eprintln!("a connected TLS client answered in {took} s while another's handshake waited on the broker");
    assert!(took < 1.0, "a connected client waited {took} s behind another's handshake");

    let f = d.frontend_pid_of("tls").expect("a TLS frontend");
    let mut names = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{f}/task")).unwrap().flatten() {
        let status = format!("{}/status", task.path().display());
        assert_eq!(task_status_field(&status, "Seccomp").as_deref(), Some("2"));
        assert_eq!(task_status_field(&status, "NoNewPrivs").as_deref(), Some("1"));
        names.push(std::fs::read_to_string(task.path().join("comm")).unwrap().trim().to_owned());
    }
    names.sort();
    assert_eq!(names, ["frontend-main", "frontend-tls"]);
    assert_eq!(virsh_tls(&p, port, GOOD, &["hostname"]).0, 0, "TLS clients are served after");
}
