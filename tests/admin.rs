//! The admin socket with the stock virt-admin: servers, clients, limits and
//! logging, changed while the daemon runs, and every call audited.

mod common;

use std::time::Duration;

use common::*;

const SECS: Duration = Duration::from_secs(10);

/// The id virt-admin's `srv-clients-list SERVER` shows for the only client.
fn only_client(admin: &std::path::Path, server: &str) -> String {
    let (code, out, err) = virt_admin(admin, &["srv-clients-list", server]);
    assert_eq!(code, 0, "{err}");
    let ids: Vec<&str> = out.lines().skip(2).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(ids.len(), 1, "{out}");
    ids[0].to_owned()
}

#[test]
fn virt_admin_lists_servers_and_clients_and_disconnects_a_client() {
    if !have_virt_admin() {
        return;
    }
    let d = Daemon::start("", &[]);
    let admin = d.tree.sock("libvirt-admin-sock");
    let (code, out, err) = virt_admin(&admin, &["srv-list"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, " Id   Name\n----------------\n 0    libvirtd\n 1    admin\n\n");
    let (_, out, _) = virt_admin(&admin, &["srv-threadpool-info", "libvirtd"]);
    assert!(out.contains("maxWorkers     : 1\n") && out.contains("jobQueueDepth  : 0\n"), "{out}");

    // A client on the read-only socket, holding its connection open.
    let mut raw = RawClient::connect(&d.tree.sock("libvirt-sock-ro"));
    raw.open(0);
    let (_, out, _) = virt_admin(&admin, &["srv-clients-info", "libvirtd"]);
    assert!(out.contains("nclients_max        : 5000\n"), "{out}");
    assert!(out.contains("nclients            : 1\n"), "{out}");
    let id = only_client(&admin, "libvirtd");
    let (code, out, err) = virt_admin(&admin, &["client-info", "libvirtd", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("transport      : unix\n"), "{out}");
    assert!(out.contains("readonly       : yes\n"), "{out}");
    let me = std::process::id();
    assert!(out.contains(&format!("unix_process_id: {me}\n")), "{out}");
    assert!(out.contains(&format!("unix_user_id   : {}\n", nix::unistd::getuid())), "{out}");
    // virt-admin itself is the admin server's client.
    only_client(&admin, "admin");

    let (code, out, err) = virt_admin(&admin, &["client-disconnect", "libvirtd", &id]);
    assert_eq!((code, out.trim()), (0, format!("Client '{id}' disconnected").as_str()), "{err}");
    let mut buf = [0u8; 1];
    raw.stream.set_read_timeout(Some(SECS)).unwrap();
    assert_eq!(std::io::Read::read(&mut raw.stream, &mut buf).unwrap(), 0, "the client was not disconnected");
    let (_, out, _) = virt_admin(&admin, &["srv-clients-info", "libvirtd"]);
    assert!(out.contains("nclients            : 0\n"), "{out}");
    assert!(
        d.tree.audit(&["op=admin-client-disconnect", "server=\"libvirtd\"", &format!("client={id} ")], SECS).is_some()
    );

    // Unknown servers and clients get libvirt's errors.
    let (code, _, err) = virt_admin(&admin, &["srv-clients-info", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("error: Server not found: no server with matching name 'nope' found"), "{err}");
    let (code, _, err) = virt_admin(&admin, &["client-info", "libvirtd", "4242"]);
    assert_eq!(code, 1);
    assert!(err.contains("error: Client not found: No client with matching ID '4242'"), "{err}");
    let (code, _, err) = virt_admin(&admin, &["srv-threadpool-set", "libvirtd", "--max-workers", "4"]);
    assert_eq!(code, 1);
    assert!(err.contains("no worker pool to resize"), "{err}");
    assert!(d.tree.audit(&["op=admin-threadpool-set", "res=failed"], SECS).is_some());

    // The main sockets do not speak the admin protocol, nor the admin socket the main one.
    let (code, _, err) = virt_admin(&d.tree.sock("libvirt-sock"), &["srv-list"]);
    assert_ne!(code, 0, "{err}");
    let (code, _, _) = virsh(&admin, &["list"]);
    assert_ne!(code, 0);
}

#[test]
fn client_limits_change_live_and_hold() {
    if !have_virt_admin() {
        return;
    }
    let d = Daemon::start("", &[]);
    let admin = d.tree.sock("libvirt-admin-sock");
    let (code, _, err) =
        virt_admin(&admin, &["srv-clients-set", "libvirtd", "--max-clients", "2", "--max-unauth-clients", "1"]);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = virt_admin(&admin, &["srv-clients-info", "libvirtd"]);
    assert!(out.contains("nclients_max        : 2\n") && out.contains("nclients_unauth_max : 1\n"), "{out}");
    assert!(
        d.tree
            .audit(&["op=admin-clients-set", "value=\"nclients_max=2,nclients_unauth_max=1\"", "res=success"], SECS)
            .is_some()
    );

    // Two clients fit; a third is closed at once; the two keep working.
    let mut a = RawClient::connect(&d.tree.sock("libvirt-sock"));
    a.open(0);
    let mut b = RawClient::connect(&d.tree.sock("libvirt-sock-ro"));
    b.open(0);
    let mut c = connect(&d.tree.sock("libvirt-sock"));
    c.set_read_timeout(Some(SECS)).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(std::io::Read::read(&mut c, &mut buf).unwrap(), 0, "a third client was let in");
    for raw in [&mut a, &mut b] {
        let (h, _) = raw.call(59, &[]); // CONNECT_GET_HOSTNAME
        assert_eq!(h.status, 0);
    }
    // An invalid combination is refused and changes nothing.
    let (code, _, err) = virt_admin(&admin, &["srv-clients-set", "libvirtd", "--max-unauth-clients", "5"]);
    assert_eq!(code, 1);
    assert!(err.contains("must not exceed"), "{err}");
    // Raising the limit lets the next client in.
    assert_eq!(virt_admin(&admin, &["srv-clients-set", "libvirtd", "--max-clients", "3"]).0, 0);
    let mut c = RawClient::connect(&d.tree.sock("libvirt-sock"));
    c.open(0);

    // The admin server has a limit of its own (admin_max_clients, 5 by default).
    let (_, out, _) = virt_admin(&admin, &["srv-clients-info", "admin"]);
    assert!(out.contains("nclients_max        : 5\n") && out.contains("nclients            : 1\n"), "{out}");
}

#[test]
fn logging_filters_and_outputs_change_live() {
    if !have_virt_admin() {
        return;
    }
    let d = Daemon::start("", &[]);
    let admin = d.tree.sock("libvirt-admin-sock");
    let (_, out, _) = virt_admin(&admin, &["daemon-log-outputs"]);
    assert_eq!(out.trim(), "Logging outputs: 3:stderr");
    let (_, out, _) = virt_admin(&admin, &["daemon-log-filters"]);
    assert_eq!(out.trim(), "Logging filters:");

    // Debug records of client handling, to a file, from now on.
    let file = d.tree.path("admin.log");
    let outputs = format!("1:file:{}", file.display());
    assert_eq!(virt_admin(&admin, &["daemon-log-outputs", &outputs]).0, 0);
    assert_eq!(virt_admin(&admin, &["daemon-log-filters", "1:frontend"]).0, 0);
    let (_, out, _) = virt_admin(&admin, &["daemon-log-outputs"]);
    assert_eq!(out.trim(), format!("Logging outputs: {outputs}"));
    let (_, out, _) = virt_admin(&admin, &["daemon-log-filters"]);
    assert_eq!(out.trim(), "Logging filters: 1:frontend");
    assert!(d.tree.audit(&["op=admin-set-log-filters", "value=\"1:frontend\"", "res=success"], SECS).is_some());
    let (code, _, err) = virsh(&d.tree.sock("libvirt-sock"), &["hostname"]);
    assert_eq!(code, 0, "{err}");
    // The frontend (which cannot open files) writes through the fd the broker handed it.
    assert!(
        wait_until(SECS, || std::fs::read_to_string(&file).is_ok_and(|l| l.contains("on the rw socket"))),
        "{:?}",
        std::fs::read_to_string(&file)
    );

    let (code, _, err) = virt_admin(&admin, &["daemon-log-outputs", "9:nowhere"]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid argument: '9' is not a priority"), "{err}");
    let (_, out, _) = virt_admin(&admin, &["daemon-log-outputs"]);
    assert_eq!(out.trim(), format!("Logging outputs: {outputs}"), "a bad setting replaced a good one");
    // An empty definition restores the default.
    assert_eq!(virt_admin(&admin, &["daemon-log-outputs", ""]).0, 0);
    let (_, out, _) = virt_admin(&admin, &["daemon-log-outputs"]);
    assert_eq!(out.trim(), "Logging outputs: 3:stderr");
}
