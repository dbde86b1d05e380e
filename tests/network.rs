//! Virtual networks (libvirt's network driver) through the stock `virsh`:
//! bridges, our nftables table, dnsmasq, leases, persistence, autostart,
//! re-attachment after a daemon restart and cleanup. Every test runs its
//! daemon in a network namespace it creates and deletes, so nothing here
//! touches the host's interfaces or rules; processes left in the namespace
//! (dnsmasq, a DHCP client) are killed with it.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// A network namespace of the test's own, deleted (with every process in
/// it) on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("lvrs-{tag}-{}", std::process::id());
        // One left by an earlier run of this test under the same pid.
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        let ok = Command::new("ip").args(["netns", "add", &name]).status().unwrap().success();
        assert!(ok, "ip netns add {name}");
        let ns = Netns { name };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs `argv` in the namespace; returns (success, stdout + stderr).
    fn run(&self, argv: &[&str]) -> (bool, String) {
        let out = Command::new("ip").args(["netns", "exec", &self.name]).args(argv).output().unwrap();
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    fn inode(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/run/netns/{}", self.name)).ok().map(|m| m.ino())
    }

    /// Pids of the processes in this namespace, other than `except`.
    fn pids(&self) -> Vec<i32> {
        use std::os::unix::fs::MetadataExt;
        let Some(ino) = self.inode() else { return Vec::new() };
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|p| std::fs::metadata(format!("/proc/{p}/ns/net")).is_ok_and(|m| m.ino() == ino))
            .collect()
    }

    /// Pids of dnsmasq processes in the namespace.
    fn dnsmasqs(&self) -> Vec<i32> {
        self.pids().into_iter().filter(|p| cmdline(*p).starts_with("/usr/sbin/dnsmasq")).collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for p in self.pids() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::Signal::SIGKILL);
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Root, `ip`, `nft`, `dnsmasq` and `virsh` (CI has them all: tests/run installs them).
fn can_run() -> bool {
    if !require(is_root(), "root") || !have_virsh() {
        return false;
    }
    let tool = |p: &str| Path::new(p).exists();
    require(tool("/usr/sbin/nft"), "nft (nftables)") && require(tool("/usr/sbin/dnsmasq"), "dnsmasq (dnsmasq-base)")
}

/// Starts the daemon of `tree` inside `ns`.
fn spawn_in(ns: &Netns, tree: &Tree) -> std::process::Child {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name, BIN, "-f"])
        .arg(tree.conf_path())
        .arg("-p")
        .arg(tree.pid_path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::OpenOptions::new().create(true).append(true).open(tree.path("stderr")).unwrap())
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS");
    // SAFETY: setpgid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setpgid(0, 0);
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

fn daemon_in(ns: &Netns, extra_conf: &str) -> Daemon {
    let tree = Tree::new();
    // dnsmasq drops root and re-reads its hosts file on SIGHUP: the tree
    // must be searchable by it.
    std::fs::set_permissions(tree.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    tree.write_conf(extra_conf);
    let child = spawn_in(ns, &tree);
    let mut d = Daemon { pid: child.id() as i32, child: Some(child), tree };
    assert!(d.wait_serving(Duration::from_secs(15)), "daemon did not start:\n{}", d.stderr());
    d
}

/// Stops the daemon with SIGTERM (as `systemctl stop` does) and starts it again in `ns`.
fn restart_in(ns: &Netns, d: &mut Daemon) {
    stop(d);
    start_again_in(ns, d);
}

fn stop(d: &mut Daemon) {
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(10)).is_some(), "daemon did not stop");
}

/// Starts the stopped daemon `d` again in `ns`.
fn start_again_in(ns: &Netns, d: &mut Daemon) {
    let child = spawn_in(ns, &d.tree);
    d.pid = child.id() as i32;
    d.child = Some(child);
    assert!(d.wait_serving(Duration::from_secs(15)), "daemon did not restart:\n{}", d.stderr());
}

fn rw(d: &Daemon, args: &[&str]) -> (i32, String, String) {
    virsh(&d.tree.sock("libvirt-sock"), args)
}

fn ro(d: &Daemon, args: &[&str]) -> (i32, String, String) {
    virsh(&d.tree.sock("libvirt-sock-ro"), args)
}

fn ok(r: (i32, String, String)) -> String {
    assert_eq!(r.0, 0, "virsh failed: {}{}", r.1, r.2);
    r.1
}

const NAT_XML: &str = "<network>
  <name>lab</name>
  <forward mode='nat'/>
  <bridge name='virbr7' stp='on' delay='0'/>
  <mtu size='1400'/>
  <ip address='10.77.0.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='10.77.0.100' end='10.77.0.199'/>
    </dhcp>
  </ip>
  <ip family='ipv6' address='fd77::1' prefix='64'/>
</network>
";

fn define(d: &Daemon, xml: &str) -> String {
    let file = d.tree.path("net.xml");
    std::fs::write(&file, xml).unwrap();
    ok(rw(d, &["net-define", file.to_str().unwrap()]))
}

/// The pid of the dnsmasq started for network `name` of daemon `d`.
fn dnsmasq_of(ns: &Netns, d: &Daemon, name: &str) -> Option<i32> {
    let conf = format!("--conf-file={}", d.tree.path(&format!("run/network/{name}.conf")).display());
    ns.dnsmasqs().into_iter().find(|p| cmdline(*p).split_whitespace().any(|a| a == conf))
}

/// Asks dnsmasq for a lease from a second namespace joined to `bridge` by
/// a veth pair; returns the address it got.
fn dhcp_client(ns: &Netns, bridge: &str, mac: &str) -> Option<String> {
    let client = Netns::new("cl");
    let host_end = format!("vh{}", std::process::id() % 100_000);
    let (made, out) =
        ns.run(&["ip", "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &client.name]);
    assert!(made, "{out}");
    assert!(ns.run(&["ip", "link", "set", &host_end, "master", bridge, "up"]).0);
    assert!(client.run(&["ip", "link", "set", "eth0", "address", mac, "up"]).0);
    // The bridge port needs its STP forward delay before frames pass.
    let forwarding = wait_until(Duration::from_secs(10), || {
        ns.run(&["ip", "-d", "link", "show", &host_end]).1.contains("state forwarding")
    });
    assert!(forwarding, "{}", ns.run(&["ip", "-d", "link", "show", &host_end]).1);
    let (_, out) =
        client.run(&["busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-t", "5", "-T", "2", "-s", "/bin/true"]);
    out.lines().find_map(|l| l.split("lease of ").nth(1)?.split_whitespace().next().map(str::to_owned))
}

#[test]
fn a_nat_network_gets_its_bridge_rules_and_dnsmasq_and_destroy_removes_them() {
    if !can_run() {
        return;
    }
    let ns = Netns::new("nat");
    let mut d = daemon_in(&ns, "");
    assert!(ok(rw(&d, &["net-list", "--all", "--name"])).trim().is_empty(), "no default network in tests");
    define(&d, NAT_XML);
    assert!(d.tree.path("etc/qemu/networks/lab.xml").is_file());
    ok(rw(&d, &["net-start", "lab"]));

    // The bridge, its addresses and MTU, up.
    let (_, link) = ns.run(&["ip", "-d", "link", "show", "virbr7"]);
    assert!(link.contains("bridge ") && link.contains("mtu 1400") && link.contains(",UP"), "{link}");
    assert!(link.contains("stp_state 1"), "{link}");
    let (_, addr) = ns.run(&["ip", "addr", "show", "virbr7"]);
    assert!(addr.contains("inet 10.77.0.1/24") && addr.contains("inet6 fd77::1/64"), "{addr}");
    // Our table, with the NAT for the subnet; forwarding on.
    let (listed, table) = ns.run(&["nft", "list", "table", "inet", "libvirtd_rs"]);
    assert!(listed, "{table}");
    assert!(table.contains("ip saddr 10.77.0.0/24 ip daddr != 10.77.0.0/24 masquerade"), "{table}");
    assert_eq!(ns.run(&["cat", "/proc/sys/net/ipv4/ip_forward"]).1.trim(), "1");
    // dnsmasq with our configuration.
    let pid = dnsmasq_of(&ns, &d, "lab").expect("a dnsmasq for the network");
    // It gets the signals the broker blocks for itself (SIGHUP, SIGTERM).
    let blocked = u64::from_str_radix(&status_field(pid, "SigBlk").unwrap(), 16).unwrap();
    assert_eq!(blocked & (1 | 1 << 14), 0, "dnsmasq blocks SIGHUP or SIGTERM");
    let conf = std::fs::read_to_string(d.tree.path("run/network/lab.conf")).unwrap();
    for line in ["interface=virbr7", "dhcp-range=10.77.0.100,10.77.0.199,255.255.255.0", "dhcp-lease-max=100"] {
        assert!(conf.lines().any(|l| l == line), "{line} not in\n{conf}");
    }
    let info = ok(rw(&d, &["net-info", "lab"]));
    assert!(info.contains("Active:         yes") && info.contains("Bridge:         virbr7"), "{info}");

    // A fixed host, live and in the definition; dnsmasq keeps running.
    let host = "<host mac='52:54:00:aa:00:01' name='web' ip='10.77.0.10'/>";
    ok(rw(&d, &["net-update", "lab", "add", "ip-dhcp-host", host, "--live", "--config"]));
    let hosts = std::fs::read_to_string(d.tree.path("run/network/lab.hostsfile")).unwrap();
    assert_eq!(hosts, "52:54:00:aa:00:01,10.77.0.10,web\n");
    assert!(
        ok(rw(&d, &["net-dumpxml", "--inactive", "lab"]))
            .contains("<host mac='52:54:00:aa:00:01' name='web' ip='10.77.0.10'/>")
    );
    let again = rw(&d, &["net-update", "lab", "add", "ip-dhcp-host", host, "--live"]);
    assert!(again.2.contains("existing dhcp host entry"), "{again:?}");

    // A lease for the fixed host, read back from dnsmasq's lease file.
    if require(Path::new("/bin/busybox").exists(), "busybox (udhcpc)") {
        assert_eq!(dhcp_client(&ns, "virbr7", "52:54:00:aa:00:01").as_deref(), Some("10.77.0.10"));
        let leases = ok(ro(&d, &["net-dhcp-leases", "lab"]));
        assert!(leases.contains("52:54:00:aa:00:01") && leases.contains("10.77.0.10/24"), "{leases}");
    }

    // A daemon restart leaves the network running and finds it again:
    // same dnsmasq, same lease.
    restart_in(&ns, &mut d);
    assert_eq!(dnsmasq_of(&ns, &d, "lab"), Some(pid), "dnsmasq was restarted:\n{}", d.stderr());
    assert!(ok(rw(&d, &["net-list", "--name"])).contains("lab"));
    assert!(ns.run(&["nft", "list", "table", "inet", "libvirtd_rs"]).0);
    if Path::new("/bin/busybox").exists() {
        assert!(ok(ro(&d, &["net-dhcp-leases", "lab"])).contains("10.77.0.10/24"));
    }

    // A dnsmasq that died while no daemon ran is started again, with the
    // lease file it kept.
    stop(&mut d);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    assert!(wait_until(Duration::from_secs(3), || dnsmasq_of(&ns, &d, "lab").is_none()));
    start_again_in(&ns, &mut d);
    let respawned = dnsmasq_of(&ns, &d, "lab").expect("dnsmasq started again");
    assert_ne!(respawned, pid);
    if Path::new("/bin/busybox").exists() {
        assert!(ok(ro(&d, &["net-dhcp-leases", "lab"])).contains("10.77.0.10/24"));
    }

    // Destroy: nothing of ours is left.
    ok(rw(&d, &["net-destroy", "lab"]));
    assert!(!ns.run(&["ip", "link", "show", "virbr7"]).0, "the bridge is left");
    assert!(!ns.run(&["nft", "list", "table", "inet", "libvirtd_rs"]).0, "the table is left");
    assert!(wait_until(Duration::from_secs(3), || dnsmasq_of(&ns, &d, "lab").is_none()), "dnsmasq is left");
    assert!(!d.tree.path("run/network/lab.xml").exists());
    ok(rw(&d, &["net-undefine", "lab"]));
    assert!(!d.tree.path("etc/qemu/networks/lab.xml").exists());
    assert!(ok(rw(&d, &["net-list", "--all", "--name"])).trim().is_empty());
    // Every change is audited with the client and the network.
    for op in ["op=net-define", "op=net-start", "op=net-update", "op=net-destroy", "op=net-undefine"] {
        let found = d.tree.audit(&[op, "net=\"lab\"", "res=success"], Duration::from_secs(5));
        assert!(found.is_some(), "{op} not audited");
    }
}

#[test]
fn the_default_network_is_written_on_first_start_and_autostarts() {
    if !can_run() {
        return;
    }
    let ns = Netns::new("def");
    let mut d = daemon_in(&ns, "default_network = 1\n");
    let list = ok(rw(&d, &["net-list", "--all"]));
    assert!(list.contains("default") && list.contains("active") && list.contains("yes"), "{list}");
    assert!(d.tree.path("etc/qemu/networks/default.xml").is_file());
    assert!(d.tree.path("etc/qemu/networks/autostart/default.xml").symlink_metadata().is_ok());
    let (_, addr) = ns.run(&["ip", "addr", "show", "virbr0"]);
    assert!(addr.contains("inet 192.168.122.1/24"), "{addr}");
    let xml = ok(rw(&d, &["net-dumpxml", "default"]));
    assert!(
        xml.contains("<range start='192.168.122.2' end='192.168.122.254'/>") && xml.contains("mode='nat'"),
        "{xml}"
    );

    // Destroyed by the user, undefined: a restart neither starts nor writes it again.
    ok(rw(&d, &["net-destroy", "default"]));
    ok(rw(&d, &["net-autostart", "default", "--disable"]));
    restart_in(&ns, &mut d);
    assert!(ok(rw(&d, &["net-list", "--inactive", "--name"])).contains("default"));
    assert!(!ns.run(&["ip", "link", "show", "virbr0"]).0);
    ok(rw(&d, &["net-autostart", "default"]));
    ok(rw(&d, &["net-undefine", "default"]));
    restart_in(&ns, &mut d);
    assert!(ok(rw(&d, &["net-list", "--all", "--name"])).trim().is_empty());
    assert!(ns.dnsmasqs().is_empty());
}

#[test]
fn the_default_network_stays_stopped_when_its_subnet_is_in_use() {
    if !can_run() {
        return;
    }
    let ns = Netns::new("busy");
    assert!(ns.run(&["ip", "link", "add", "taken0", "type", "bridge"]).0);
    assert!(ns.run(&["ip", "addr", "add", "192.168.122.50/24", "dev", "taken0"]).0);
    assert!(ns.run(&["ip", "link", "set", "taken0", "up"]).0);
    let d = daemon_in(&ns, "default_network = 1\n");
    let inactive = ok(rw(&d, &["net-list", "--inactive", "--name"]));
    assert!(inactive.contains("default"), "{inactive}");
    assert!(d.stderr().contains("Network is already in use by interface taken0"), "{}", d.stderr());
    assert!(!ns.run(&["ip", "link", "show", "virbr0"]).0);
    assert!(!ns.run(&["nft", "list", "table", "inet", "libvirtd_rs"]).0);
    assert!(ns.dnsmasqs().is_empty());
    let start = rw(&d, &["net-start", "default"]);
    assert!(start.2.contains("already in use by interface taken0"), "{start:?}");
}

#[test]
fn read_only_clients_inspect_networks_and_change_nothing() {
    if !can_run() {
        return;
    }
    let ns = Netns::new("ro");
    let d = daemon_in(&ns, "");
    define(&d, &NAT_XML.replace("<ip family='ipv6' address='fd77::1' prefix='64'/>", ""));
    ok(rw(&d, &["net-start", "lab"]));
    assert!(ok(ro(&d, &["net-list", "--all"])).contains("lab"));
    assert!(ok(ro(&d, &["net-info", "lab"])).contains("virbr7"));
    assert!(ok(ro(&d, &["net-dumpxml", "lab"])).contains("<name>lab</name>"));
    let uuid = ok(ro(&d, &["net-uuid", "lab"]));
    assert_eq!(ok(ro(&d, &["net-name", uuid.trim()])).trim(), "lab");
    ok(ro(&d, &["net-dhcp-leases", "lab"]));
    let file = d.tree.path("net.xml");
    for (args, api) in [
        (vec!["net-destroy", "lab"], "virNetworkDestroy"),
        (vec!["net-undefine", "lab"], "virNetworkUndefine"),
        (vec!["net-autostart", "lab"], "virNetworkSetAutostart"),
        (vec!["net-define", file.to_str().unwrap()], "virNetworkDefineXML"),
        (
            vec!["net-update", "lab", "add", "ip-dhcp-host", "<host mac='52:54:00:00:00:01' ip='10.77.0.9'/>"],
            "virNetworkUpdate",
        ),
    ] {
        let (code, _, err) = ro(&d, &args);
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains(&format!("read only access prevents {api}")), "{args:?}: {err}");
    }
    assert!(ns.run(&["ip", "link", "show", "virbr7"]).0, "the network still runs");
    ok(rw(&d, &["net-destroy", "lab"]));
}

#[test]
fn unsupported_forward_modes_and_elements_are_refused_naming_them() {
    if !can_run() {
        return;
    }
    let ns = Netns::new("bad");
    let d = daemon_in(&ns, "");
    let file = d.tree.path("bad.xml");
    std::fs::write(&file, "<network><name>b</name><forward mode='bridge'/><bridge name='br0'/></network>").unwrap();
    let (code, _, err) = rw(&d, &["net-define", file.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("unsupported configuration: forward mode 'bridge' is not supported"), "{err}");
    std::fs::write(&file, "<network><name>b</name><forward mode='nat'/><ip address='10.8.0.1' prefix='24'><tftp root='/srv'/></ip></network>").unwrap();
    let (_, _, err) = rw(&d, &["net-define", file.to_str().unwrap()]);
    assert!(err.contains("unsupported configuration: network element <tftp> is not supported"), "{err}");
    // A transient network: gone from the list once destroyed.
    std::fs::write(&file, "<network><name>t</name><ip address='10.9.0.1' prefix='24'/></network>").unwrap();
    ok(rw(&d, &["net-create", file.to_str().unwrap()]));
    let list = ok(rw(&d, &["net-list", "--transient", "--name"]));
    assert!(list.lines().any(|l| l.trim() == "t"), "{list}");
    let (_, table) = ns.run(&["nft", "list", "table", "inet", "libvirtd_rs"]);
    assert!(table.contains("iifname \"virbr0\" reject"), "an isolated network reaches nothing: {table}");
    ok(rw(&d, &["net-destroy", "t"]));
    assert!(ok(rw(&d, &["net-list", "--all", "--name"])).trim().is_empty());
    assert!(ns.dnsmasqs().is_empty());
}

#[test]
fn network_lifecycle_events_reach_a_registered_client() {
    if !can_run() {
        return;
    }
    let ns = Netns::new("ev");
    let d = daemon_in(&ns, "");
    let watcher = Command::new("virsh")
        .args([
            "-c",
            &uri(&d.tree.sock("libvirt-sock-ro")),
            "net-event",
            "--event",
            "lifecycle",
            "--loop",
            "--timeout",
            "20",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    define(&d, &NAT_XML.replace("<ip family='ipv6' address='fd77::1' prefix='64'/>", ""));
    ok(rw(&d, &["net-start", "lab"]));
    ok(rw(&d, &["net-destroy", "lab"]));
    ok(rw(&d, &["net-undefine", "lab"]));
    std::thread::sleep(Duration::from_millis(500));
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(watcher.id() as i32), nix::sys::signal::Signal::SIGINT);
    let out = watcher.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for what in ["Defined", "Started", "Stopped", "Undefined"] {
        assert!(text.contains(&format!("for network lab: {what}")), "{what} missing from:\n{text}");
    }
}

#[test]
fn a_tap_is_created_with_a_vnet_header_attached_to_a_bridge_and_gone_with_its_fd() {
    use libvirtd::network::{bridge, tap};
    if !require(is_root(), "root") || !require(Path::new("/dev/net/tun").exists(), "/dev/net/tun") {
        return;
    }
    // A thread of its own in a new network namespace: its children (ip)
    // see the same namespace, the rest of the test process keeps the host's.
    let seen = std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let ip = |args: &[&str]| {
            String::from_utf8_lossy(&Command::new("ip").args(args).output().unwrap().stdout).into_owned()
        };
        let spec = bridge::BridgeSpec { name: "virbr3", mac: None, mtu: Some(1450), stp: false, delay: 0 };
        bridge::create(&spec).unwrap();
        bridge::set_up("virbr3").unwrap();
        let (fd, name) = tap::create(None).unwrap();
        assert_eq!(name, "vnet0", "the kernel's first free vnetN");
        let (_fd2, second) = tap::create(None).unwrap();
        assert_eq!(second, "vnet1");
        assert!(matches!(tap::create(Some("vnet0")), Err(tap::TapError::Create { .. })), "a name in use is refused");
        tap::attach(&name, "virbr3", Some(1450)).unwrap();
        let link = ip(&["-d", "link", "show", &name]);
        // The tap is a bridge port, up, with the bridge's MTU, and its flags say vnet_hdr.
        let details = ip(&["-d", "-j", "link", "show", &name]);
        drop(fd);
        let gone = ip(&["link", "show", "vnet0"]);
        (link, details, gone)
    })
    .join()
    .unwrap();
    let (link, details, gone) = seen;
    assert!(link.contains("master virbr3") && link.contains("mtu 1450") && link.contains(",UP"), "{link}");
    assert!(details.contains("\"vnet_hdr\":true") && details.contains("\"pi\":false"), "{details}");
    assert!(details.contains("\"type\":\"tap\""), "{details}");
    assert!(gone.is_empty(), "the tap outlived its fd: {gone}");
}

#[test]
fn a_domains_interfaces_are_kept_listed_by_domiflist_and_refused_at_start() {
    if !can_run() {
        return;
    }
    let ns = Netns::new("dom");
    let d = daemon_in(&ns, "");
    let nics = "<interface type='network'><mac address='52:54:00:11:22:33'/><source network='default'/>\
                <model type='virtio'/></interface>\
                <interface type='bridge'><source bridge='br0'/><target dev='tap-web'/><model type='virtio'/>\
                <link state='down'/><mtu size='1400'/></interface>\
                <interface type='ethernet'><model type='virtio'/></interface>";
    let xml =
        domain_xml("nics", "6f1c4c2e-0d6a-4c59-9d70-0b4c53a1e001").replace("<devices>", &format!("<devices>{nics}"));
    let file = d.tree.path("dom.xml");
    std::fs::write(&file, &xml).unwrap();
    ok(rw(&d, &["define", file.to_str().unwrap()]));
    let list = ok(ro(&d, &["domiflist", "nics"]));
    assert!(list.contains("network") && list.contains("default") && list.contains("52:54:00:11:22:33"), "{list}");
    assert!(list.contains("tap-web") && list.contains("br0") && list.contains("virtio"), "{list}");
    let dump = ok(rw(&d, &["dumpxml", "nics"]));
    assert!(dump.contains("<link state='down'/>") && dump.contains("<mtu size='1400'/>"), "{dump}");
    // A MAC is generated for the NIC that had none, in libvirt's range.
    assert_eq!(dump.matches("<mac address='52:54:00:").count(), 3, "{dump}");
    let start = rw(&d, &["start", "nics"]);
    assert!(start.2.contains("cannot provide <interface> devices yet"), "{start:?}");
    std::fs::write(&file, xml.replace("type='ethernet'", "type='user'")).unwrap();
    let user = rw(&d, &["define", file.to_str().unwrap()]);
    assert!(user.2.contains("unsupported configuration: interface type 'user' is not supported"), "{user:?}");
}
