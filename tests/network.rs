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
    // One namespace per client: tests run in parallel in one process.
    static CLIENTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let client = Netns::new(&format!("cl{}", CLIENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
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
        assert!(matches!(tap::create(Some("vnet0")), Err(tap::TapError::Exists(_))), "a name in use is refused");
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
fn a_domains_interfaces_are_kept_listed_by_domiflist_and_other_kinds_refused() {
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
    // Each interface has a PCI slot of its own, from 0x03 on.
    for slot in ["0x03", "0x04", "0x05"] {
        assert!(dump.contains(&format!("bus='0x00' slot='{slot}' function='0x0'/>\n    </interface>")), "{dump}");
    }
    // The network is not there: libvirt's error, and nothing runs.
    let start = rw(&d, &["start", "nics"]);
    assert!(start.2.contains("no network with matching name 'default'"), "{start:?}");
    for (kind, needle) in [
        ("type='user'", "unsupported configuration: interface type 'user' is not supported"),
        ("type='vhostuser'", "unsupported configuration: interface type 'vhostuser' is not supported"),
    ] {
        std::fs::write(&file, xml.replace("type='ethernet'", kind)).unwrap();
        let refused = rw(&d, &["define", file.to_str().unwrap()]);
        assert!(refused.2.contains(needle), "{refused:?}");
    }
    let e1000 = xml.replacen("<model type='virtio'/>", "<model type='e1000'/>", 1);
    std::fs::write(&file, e1000).unwrap();
    let refused = rw(&d, &["define", file.to_str().unwrap()]);
    assert!(refused.2.contains("unsupported configuration: interface model 'e1000' is not supported"), "{refused:?}");
}

/// The test guest's domain XML with `nics` as its interfaces.
fn guest_with(d: &Daemon, name: &str, uuid: &str, nics: &str) -> String {
    test_guest_xml(d, name, uuid).replace("<devices>", &format!("<devices>{nics}"))
}

fn define_domain(d: &Daemon, xml: &str) {
    let file = d.tree.path("dom.xml");
    std::fs::write(&file, xml).unwrap();
    ok(rw(d, &["define", file.to_str().unwrap()]));
}

/// `ip -d link show NAME` in `ns`, or None if there is no such interface.
fn link_of(ns: &Netns, name: &str) -> Option<String> {
    let (found, text) = ns.run(&["ip", "-d", "link", "show", name]);
    found.then_some(text)
}

/// Every `vnetN` interface in `ns`.
fn vnets(ns: &Netns) -> Vec<String> {
    let (_, text) = ns.run(&["ip", "-o", "link", "show"]);
    text.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .filter(|n| n.starts_with("vnet"))
        .collect()
}

/// Whether guest `name` of `d` runs (`virsh domstate`).
fn state(d: &Daemon, name: &str) -> String {
    rw(d, &["domstate", name]).1.trim().to_owned()
}

const NIC_UUID: &str = "6f1c4c2e-0d6a-4c59-9d70-0b4c53a1e100";

#[test]
fn a_guest_on_a_network_gets_a_tap_on_its_bridge_kept_across_restarts_and_removed_with_it() {
    if !can_run() || !require(Path::new("/dev/kvm").exists(), "/dev/kvm") {
        return;
    }
    let ns = Netns::new("gnet");
    let mut d = daemon_in(&ns, "");
    define(&d, NAT_XML);
    let nic = "<interface type='network'><mac address='52:54:00:77:00:05'/><source network='lab'/>\
               <model type='virtio'/></interface>";
    define_domain(&d, &guest_with(&d, "g1", NIC_UUID, nic));

    // Not active: libvirt's error, the domain stays shut off, no tap is left.
    let refused = rw(&d, &["start", "g1"]);
    assert!(refused.2.contains("Requested operation is not valid: network 'lab' is not active"), "{refused:?}");
    assert_eq!(state(&d, "g1"), "shut off");
    assert!(vnets(&ns).is_empty(), "{:?}", vnets(&ns));

    ok(rw(&d, &["net-start", "lab"]));
    ok(rw(&d, &["start", "g1"]));
    let link = link_of(&ns, "vnet0").expect("the guest's tap");
    assert!(link.contains("master virbr7") && link.contains(",UP") && link.contains("tun type tap"), "{link}");
    // The network's MTU (1400), as the bridge has it.
    assert!(link.contains("mtu 1400"), "{link}");
    let live = ok(rw(&d, &["dumpxml", "g1"]));
    assert!(live.contains("<source network='lab' bridge='virbr7'/>"), "{live}");
    assert!(live.contains("<target dev='vnet0'/>") && live.contains("<alias name='net0'/>"), "{live}");
    assert!(live.contains("<alias name='net0'/>\n      <address type='pci' domain='0x0000' bus='0x00' slot='0x03'"));
    let inactive = ok(rw(&d, &["dumpxml", "--inactive", "g1"]));
    assert!(!inactive.contains("vnet0") && !inactive.contains("<alias name='net0'/>"), "{inactive}");
    let list = ok(ro(&d, &["domiflist", "g1"]));
    assert!(
        list.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["vnet0", "network", "lab", "virtio", "52:54:00:77:00:05"]),
        "{list}"
    );

    // A daemon restart finds the guest and its tap.
    restart_in(&ns, &mut d);
    assert_eq!(state(&d, "g1"), "running", "{}", d.stderr());
    assert!(link_of(&ns, "vnet0").is_some_and(|l| l.contains("master virbr7")));
    assert!(ok(ro(&d, &["domiflist", "g1"])).contains("vnet0"));
    assert!(ok(rw(&d, &["dumpxml", "g1"])).contains("<target dev='vnet0'/>"));

    // Destroy removes it.
    ok(rw(&d, &["destroy", "g1"]));
    assert!(wait_until(Duration::from_secs(3), || link_of(&ns, "vnet0").is_none()), "the tap is left");
    assert!(!ok(rw(&d, &["dumpxml", "g1"])).contains("vnet0"));
}

#[test]
fn bridge_and_ethernet_interfaces_get_their_taps_and_a_failing_one_leaves_nothing() {
    if !can_run() || !require(Path::new("/dev/kvm").exists(), "/dev/kvm") {
        return;
    }
    let ns = Netns::new("gbr");
    let d = daemon_in(&ns, "");
    assert!(ns.run(&["ip", "link", "add", "brt0", "type", "bridge"]).0);
    assert!(ns.run(&["ip", "link", "set", "brt0", "mtu", "1450", "up"]).0);
    let nics = "<interface type='bridge'><mac address='52:54:00:77:00:06'/><source bridge='brt0'/>\
                <model type='virtio'/></interface>\
                <interface type='ethernet'><mac address='52:54:00:77:00:07'/><target dev='tap-fixed'/>\
                <model type='virtio'/><mtu size='1300'/></interface>";
    define_domain(&d, &guest_with(&d, "g2", NIC_UUID, nics));
    ok(rw(&d, &["start", "g2"]));
    let bridged = link_of(&ns, "vnet0").expect("the bridge interface's tap");
    assert!(bridged.contains("master brt0") && bridged.contains("mtu 1450") && bridged.contains(",UP"), "{bridged}");
    let eth = link_of(&ns, "tap-fixed").expect("the fixed-name tap");
    assert!(!eth.contains("master") && eth.contains(",UP") && eth.contains("mtu 1300"), "{eth}");
    let live = ok(rw(&d, &["dumpxml", "g2"]));
    assert!(live.contains("<target dev='vnet0'/>") && live.contains("<target dev='tap-fixed'/>"), "{live}");
    assert!(live.contains("<alias name='net1'/>"), "{live}");

    // The helper dies: its taps go, the fixed name is free for the next start.
    let pid: i32 = std::fs::read_to_string(d.tree.path("run/qemu/g2.status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("pid=")?.parse().ok())
        .unwrap();
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    assert!(wait_until(Duration::from_secs(5), || state(&d, "g2") == "shut off"), "{}", state(&d, "g2"));
    assert!(link_of(&ns, "tap-fixed").is_none() && vnets(&ns).is_empty());
    ok(rw(&d, &["start", "g2"]));
    assert!(link_of(&ns, "tap-fixed").is_some());
    ok(rw(&d, &["destroy", "g2"]));
    assert!(link_of(&ns, "tap-fixed").is_none() && vnets(&ns).is_empty());

    // A fixed name already taken fails the start naming the interface, and
    // the other interface's tap, made first, is gone with it.
    assert!(ns.run(&["ip", "tuntap", "add", "tap-fixed", "mode", "tap"]).0);
    let taken = rw(&d, &["start", "g2"]);
    assert!(taken.2.contains("52:54:00:77:00:07") && taken.2.contains("tap-fixed"), "{taken:?}");
    assert_eq!(state(&d, "g2"), "shut off");
    assert!(vnets(&ns).is_empty(), "{:?}", vnets(&ns));
    assert!(ns.run(&["ip", "link", "del", "tap-fixed"]).0);
    // A host bridge that does not exist is named.
    assert!(ns.run(&["ip", "link", "del", "brt0"]).0);
    let missing = rw(&d, &["start", "g2"]);
    assert!(missing.2.contains("bridge 'brt0'") && missing.2.contains("no such bridge"), "{missing:?}");
    assert!(vnets(&ns).is_empty() && link_of(&ns, "tap-fixed").is_none());
}

#[test]
fn interfaces_attach_and_detach_in_the_definition_and_live_changes_are_refused() {
    if !can_run() || !require(Path::new("/dev/kvm").exists(), "/dev/kvm") {
        return;
    }
    let ns = Netns::new("gatt");
    let d = daemon_in(&ns, "");
    define(&d, NAT_XML);
    define_domain(&d, &guest_with(&d, "g3", NIC_UUID, ""));
    let denied = ro(&d, &["attach-interface", "g3", "network", "lab", "--config"]);
    assert!(denied.2.contains("read only access prevents virDomainAttachDeviceFlags"), "{denied:?}");
    ok(rw(&d, &["attach-interface", "g3", "network", "lab", "--mac", "52:54:00:77:00:08", "--config"]));
    let dump = ok(rw(&d, &["dumpxml", "--inactive", "g3"]));
    assert!(dump.contains("<mac address='52:54:00:77:00:08'/>\n      <source network='lab'/>"), "{dump}");
    assert!(dump.contains("slot='0x03'"), "{dump}");
    // Persisted: the definition on disk has it.
    let stored = std::fs::read_to_string(d.tree.path("etc/qemu/g3.xml")).unwrap();
    assert!(stored.contains("52:54:00:77:00:08"), "{stored}");
    let file = d.tree.path("nic.xml");
    std::fs::write(&file, "<interface type='ethernet'><mac address='52:54:00:77:00:09'/></interface>").unwrap();
    ok(rw(&d, &["attach-device", "g3", file.to_str().unwrap(), "--config"]));
    assert_eq!(ok(rw(&d, &["domiflist", "g3"])).matches("52:54:00:77:00:0").count(), 2);
    let twice = rw(&d, &["attach-device", "g3", file.to_str().unwrap(), "--config"]);
    assert!(twice.2.contains("52:54:00:77:00:09"), "{twice:?}");
    ok(rw(&d, &["detach-device", "g3", file.to_str().unwrap(), "--config"]));
    ok(rw(&d, &["detach-interface", "g3", "network", "--mac", "52:54:00:77:00:08", "--config"]));
    let dump = ok(rw(&d, &["dumpxml", "--inactive", "g3"]));
    assert!(!dump.contains("<interface"), "{dump}");
    let gone = rw(&d, &["detach-interface", "g3", "network", "--mac", "52:54:00:77:00:08", "--config"]);
    assert_ne!(gone.0, 0);

    // A running guest: no hotplug, said clearly.
    ok(rw(&d, &["start", "g3"]));
    let live = rw(&d, &["attach-interface", "g3", "network", "lab", "--live"]);
    assert!(live.2.contains("Operation not supported") && live.2.contains("hotplug"), "{live:?}");
    ok(rw(&d, &["destroy", "g3"]));
}

#[test]
fn domifaddr_reads_the_networks_leases_and_refuses_other_sources() {
    if !can_run() || !require(Path::new("/dev/kvm").exists(), "/dev/kvm") {
        return;
    }
    if !require(Path::new("/bin/busybox").exists(), "busybox (udhcpc)") {
        return;
    }
    let ns = Netns::new("gaddr");
    let d = daemon_in(&ns, "");
    define(&d, NAT_XML);
    ok(rw(&d, &["net-start", "lab"]));
    let mac = "52:54:00:77:00:0a";
    let nic = format!("<interface type='network'><mac address='{mac}'/><source network='lab'/></interface>");
    define_domain(&d, &guest_with(&d, "g4", NIC_UUID, &nic));
    ok(rw(&d, &["start", "g4"]));
    // No lease yet: nothing to show.
    let none = ok(ro(&d, &["domifaddr", "g4", "--source", "lease"]));
    assert!(!none.contains(mac), "{none}");
    // A lease for the guest's MAC, from dnsmasq (a DHCP client standing in for the guest).
    let ip = dhcp_client(&ns, "virbr7", mac).expect("a lease from dnsmasq");
    let shown = ok(ro(&d, &["domifaddr", "g4", "--source", "lease"]));
    let row = shown.lines().find(|l| l.contains(mac)).unwrap_or_else(|| panic!("{shown}"));
    assert_eq!(row.split_whitespace().collect::<Vec<_>>(), ["vnet0", mac, "ipv4", &format!("{ip}/24")], "{shown}");
    // The agent is refused on the read-only socket as libvirt refuses it,
    // and is not configured on the read-write one; ARP is not a source here.
    let agent = ro(&d, &["domifaddr", "g4", "--source", "agent"]);
    assert!(agent.2.contains("read only access prevents virDomainInterfaceAddresses"), "{agent:?}");
    let agent = rw(&d, &["domifaddr", "g4", "--source", "agent"]);
    assert!(agent.2.contains("argument unsupported: QEMU guest agent is not configured"), "{agent:?}");
    let arp = rw(&d, &["domifaddr", "g4", "--source", "arp"]);
    assert!(arp.2.contains("argument unsupported") && arp.2.contains("lease"), "{arp:?}");
    // Interfaces the guest does not have are named in the error.
    let unknown = ro(&d, &["domifstat", "g4", "eth9"]);
    assert!(unknown.2.contains("'eth9' is not a known interface"), "{unknown:?}");
    ok(rw(&d, &["destroy", "g4"]));
    let stopped = ro(&d, &["domifaddr", "g4", "--source", "lease"]);
    assert!(stopped.2.contains("domain is not running"), "{stopped:?}");
}

#[test]
fn setlink_in_the_definition_of_a_stopped_guest_is_kept_and_read_back() {
    if !can_run() {
        return;
    }
    let ns = Netns::new("gcfg");
    let d = daemon_in(&ns, "");
    let nic = "<interface type='ethernet'><mac address='52:54:00:77:00:0b'/><target dev='tap-cfg'/></interface>";
    define_domain(&d, &domain_xml("g5", NIC_UUID).replace("<devices>", &format!("<devices>{nic}")));
    let denied = ro(&d, &["domif-setlink", "g5", "52:54:00:77:00:0b", "down", "--config"]);
    assert!(denied.2.contains("read only access prevents virDomainUpdateDeviceFlags"), "{denied:?}");
    assert!(!ok(rw(&d, &["dumpxml", "g5"])).contains("<link state="));
    ok(rw(&d, &["domif-setlink", "g5", "52:54:00:77:00:0b", "down", "--config"]));
    assert!(ok(rw(&d, &["domif-getlink", "g5", "52:54:00:77:00:0b", "--config"])).contains("down"));
    let stored = std::fs::read_to_string(d.tree.path("etc/qemu/g5.xml")).unwrap();
    assert!(stored.contains("<link state='down'/>"), "{stored}");
    ok(rw(&d, &["domif-setlink", "g5", "tap-cfg", "up", "--config"]));
    assert!(!ok(rw(&d, &["dumpxml", "--inactive", "g5"])).contains("<link state="));
    // Anything but the link state is not updated.
    let file = d.tree.path("upd.xml");
    std::fs::write(
        &file,
        "<interface type='bridge'><mac address='52:54:00:77:00:0b'/><source bridge='x'/></interface>",
    )
    .unwrap();
    let other = rw(&d, &["update-device", "g5", file.to_str().unwrap(), "--config"]);
    assert!(other.2.contains("only its link state can be updated"), "{other:?}");
}

/// The helper's virtio-net device counts the guest's traffic, and
/// `domif-setlink` takes effect live.
#[test]
fn domifstat_counts_the_guests_traffic_and_setlink_changes_its_link() {
    if !can_run() || !require(Path::new("/dev/kvm").exists(), "/dev/kvm") {
        return;
    }
    let ns = Netns::new("gdev");
    let d = daemon_in(&ns, "");
    define(&d, NAT_XML);
    ok(rw(&d, &["net-start", "lab"]));
    let mac = "52:54:00:77:00:0c";
    let nic = format!("<interface type='network'><mac address='{mac}'/><source network='lab'/></interface>");
    define_domain(&d, &guest_with(&d, "g6", NIC_UUID, &nic));
    ok(rw(&d, &["start", "g6"]));
    let field = |text: &str, name: &str| -> Option<u64> {
        text.lines().find_map(|l| {
            let mut f = l.split_whitespace();
            (f.nth(1)? == name).then(|| f.next()?.parse().ok()).flatten()
        })
    };
    // The guest asks for a lease at boot: it has sent something.
    let sent = wait_until(Duration::from_secs(30), || {
        field(&rw(&d, &["domifstat", "g6", "vnet0"]).1, "tx_packets").is_some_and(|n| n > 0)
    });
    assert!(sent, "{:?}", rw(&d, &["domifstat", "g6", "vnet0"]));
    // By MAC as well as by name.
    let by_mac = ok(ro(&d, &["domifstat", "g6", mac]));
    assert!(field(&by_mac, "rx_bytes").is_some() && field(&by_mac, "tx_drop").is_some(), "{by_mac}");

    ok(rw(&d, &["domif-setlink", "g6", "vnet0", "down"]));
    assert!(ok(rw(&d, &["domif-getlink", "g6", "vnet0"])).contains("down"));
    assert!(ok(rw(&d, &["dumpxml", "g6"])).contains("<link state='down'/>"));
    // The definition is not the live state.
    assert!(!ok(rw(&d, &["dumpxml", "--inactive", "g6"])).contains("<link state='down'/>"));
    ok(rw(&d, &["domif-setlink", "g6", "vnet0", "up"]));
    assert!(ok(rw(&d, &["domif-getlink", "g6", "vnet0"])).contains("up"));
    ok(rw(&d, &["destroy", "g6"]));
}

/// Bulk statistics, `domifstat` and `domif-setlink` in flight to the same
/// helper at once, from several clients: the helper answers `NetStats` to
/// all three, and each call gets the answer to its own question (a link
/// change is never answered with the counters a bulk round asked for
/// before it, which showed the old link state).
#[test]
fn setlink_domifstat_and_bulk_statistics_in_flight_together_each_get_their_own_answer() {
    let py = Command::new("/usr/bin/python3").args(["-c", "import libvirt"]).output().is_ok_and(|o| o.status.success());
    if !can_run() || !require(Path::new("/dev/kvm").exists(), "/dev/kvm") || !require(py, "python3-libvirt") {
        return;
    }
    let ns = Netns::new("gmix");
    let d = daemon_in(&ns, "");
    define(&d, NAT_XML);
    ok(rw(&d, &["net-start", "lab"]));
    let mac = "52:54:00:77:00:0e";
    let nic = format!("<interface type='network'><mac address='{mac}'/><source network='lab'/></interface>");
    define_domain(&d, &guest_with(&d, "g8", NIC_UUID, &nic));
    ok(rw(&d, &["start", "g8"]));
    let program = format!(
        r##"
import libvirt, threading
libvirt.registerErrorHandler(lambda *a: None, None)
RW, RO, MAC = {rw:?}, {ro:?}, {mac:?}
stop = threading.Event()
rounds, errors = [0], []
def scrape():
    c = libvirt.openReadOnly(RO)
    while not stop.is_set():
        try:
            for dom, stats in c.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_INTERFACE):
                if stats.get("net.count") != 1 or "net.0.rx.bytes" not in stats:
                    errors.append("domstats: %r" % stats)
            rounds[0] += 1
        except libvirt.libvirtError as e:
            errors.append("domstats: %s" % e)
scrapers = [threading.Thread(target=scrape) for _ in range(2)]
for t in scrapers:
    t.start()
dom = libvirt.open(RW).lookupByName("g8")
for i in range(40):
    state = "down" if i % 2 == 0 else "up"
    xml = "<interface type='network'><mac address='%s'/><source network='lab'/><link state='%s'/></interface>" % (MAC, state)
    try:
        dom.updateDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        if ("<link state='down'/>" in dom.XMLDesc(0)) != (state == "down"):
            errors.append("setlink %s #%d: the live XML does not show it" % (state, i))
        if len(dom.interfaceStats(MAC)) != 8:
            errors.append("domifstat #%d: not 8 figures" % i)
    except libvirt.libvirtError as e:
        errors.append("#%d (%s): %s" % (i, state, e))
stop.set()
for t in scrapers:
    t.join()
print("ROUNDS %d" % rounds[0])
print("ERRORS %d" % len(errors))
for e in errors[:10]:
    print(e)
"##,
        rw = uri(&d.tree.sock("libvirt-sock")),
        ro = uri(&d.tree.sock("libvirt-sock-ro")),
    );
    let out = run_python(&d, &program, Duration::from_secs(120));
    assert!(out.contains("ERRORS 0\n"), "{out}");
    let rounds: u64 = out.lines().find_map(|l| l.strip_prefix("ROUNDS ")?.parse().ok()).unwrap_or(0);
    assert!(rounds > 0, "no bulk round completed: {out}");
    ok(rw(&d, &["destroy", "g8"]));
}

#[test]
fn an_autostart_guest_on_an_autostart_network_starts_with_the_daemon() {
    if !can_run() || !require(Path::new("/dev/kvm").exists(), "/dev/kvm") {
        return;
    }
    let ns = Netns::new("gauto");
    let mut d = daemon_in(&ns, "");
    define(&d, NAT_XML);
    ok(rw(&d, &["net-autostart", "lab"]));
    let nic = "<interface type='network'><mac address='52:54:00:77:00:0d'/><source network='lab'/></interface>";
    define_domain(&d, &guest_with(&d, "g7", NIC_UUID, nic));
    ok(rw(&d, &["autostart", "g7"]));
    // Neither runs; the daemon starts both, the network first.
    restart_in(&ns, &mut d);
    assert!(wait_until(Duration::from_secs(10), || state(&d, "g7") == "running"), "{}", d.stderr());
    let link = link_of(&ns, "vnet0").expect("the guest's tap");
    assert!(link.contains("master virbr7"), "{link}");
    ok(rw(&d, &["destroy", "g7"]));
}

/// The path of a guest on a NAT network: the test guest's DHCP client gets
/// its lease from the network's dnsmasq through the virtio-net device, the
/// tap and the bridge; the lease shows in `net-dhcp-leases` and in
/// `domifaddr` on the read-only socket; the host pings the guest, not while
/// its link is set down live, and again once it is set up.
#[test]
fn a_guest_on_a_nat_network_gets_its_lease_from_dnsmasq_and_answers_pings_while_its_link_is_up() {
    if !can_run() || !require(Path::new("/dev/kvm").exists(), "/dev/kvm") {
        return;
    }
    let ns = Netns::new("gping");
    let d = daemon_in(&ns, "");
    define(&d, NAT_XML);
    ok(rw(&d, &["net-start", "lab"]));
    let (name, mac, uuid) = ("g8", "52:54:00:77:00:18", "7f6d2a1c-4b3e-4c55-9a61-0d2f3e4a5b18");
    let nic = format!("<interface type='network'><mac address='{mac}'/><source network='lab'/></interface>");
    let console = start_logged(&d, name, uuid, &nic);
    // The guest's DHCP waits out the bridge's forward delay and dnsmasq's
    // ping check; it prints the address it was given.
    let line = format!("NET eth0 MAC={mac} IP=10.77.0.");
    let leased = wait_until(Duration::from_secs(60), || console().contains(&line));
    assert!(leased, "no lease; the console:\n{}\n{}", console(), d.stderr());
    let text = console();
    let ip = text.lines().find_map(|l| l.strip_prefix(&format!("NET eth0 MAC={mac} IP="))).unwrap().trim().to_owned();
    let leases = ok(rw(&d, &["net-dhcp-leases", "lab"]));
    assert!(leases.lines().any(|l| l.contains(mac) && l.contains(&format!("{ip}/24"))), "{leases}");
    let addr = ok(ro(&d, &["domifaddr", name, "--source", "lease"]));
    assert!(addr.contains(mac) && addr.contains(&ip), "{addr}");

    let ping = || ns.run(&["busybox", "ping", "-c", "1", "-W", "2", &ip]).0;
    assert!(wait_until(Duration::from_secs(20), ping), "no answer from {ip}; the console:\n{}", console());
    let rx = || -> u64 {
        let text = ok(ro(&d, &["domifstat", name, mac]));
        text.lines().find_map(|l| l.split_once(" rx_packets ")?.1.trim().parse().ok()).unwrap_or(0)
    };
    let before = rx();
    assert!(before > 0);
    ok(rw(&d, &["domif-setlink", name, "vnet0", "down"]));
    assert!(!ping(), "a guest with its link down answered");
    ok(rw(&d, &["domif-setlink", name, "vnet0", "up"]));
    assert!(wait_until(Duration::from_secs(20), ping), "no answer after the link came back");
    assert!(rx() > before);
    ok(rw(&d, &["destroy", name]));
}

/// Defines and starts the test guest `name` with `nics`, its console to a
/// log file (for what it printed if a test fails); returns a reader of
/// that log.
fn start_logged(d: &Daemon, name: &str, uuid: &str, nics: &str) -> impl Fn() -> String + use<> {
    let log = d.tree.path(&format!("{name}.log"));
    let xml = guest_with(d, name, uuid, nics).replace(
        "<serial type='pty'><target port='0'/></serial>",
        &format!("<serial type='file'><source path='{}'/><target port='0'/></serial>", log.display()),
    );
    let file = d.tree.path(&format!("{name}.xml"));
    std::fs::write(&file, xml).unwrap();
    ok(rw(d, &["define", file.to_str().unwrap()]));
    ok(rw(d, &["start", name]));
    move || std::fs::read_to_string(&log).unwrap_or_default()
}

/// Whether python3 has python-libvirt, to drive the guests' consoles.
fn have_python_libvirt() -> bool {
    let py = Command::new("/usr/bin/python3").args(["-c", "import libvirt"]).output().is_ok_and(|o| o.status.success());
    require(py, "python3-libvirt")
}

/// Types each `(guest, command)` on that guest's console (python-libvirt's
/// console stream), in order, and returns the first line of each answer
/// that starts with `marker`.
fn on_consoles(d: &Daemon, commands: &[(&str, &str)], marker: &str) -> Vec<String> {
    let script = format!(
        "URI = {:?}\nCOMMANDS = {commands:?}\nMARKER = {marker:?}\n{PY_UNTIL}{}",
        uri(&d.tree.sock("libvirt-sock")),
        r#"
import libvirt
libvirt.registerErrorHandler(lambda *a: None, None)
conn = libvirt.open(URI)
streams = {}
def console(name):
    if name not in streams:
        st = conn.newStream(0)
        conn.lookupByName(name).openConsole(None, st, 0)
        # The console may open before or after the guest's prompt: a marker
        # line the guest echoes back says where its answers begin.
        st.send(b"echo ready-for-commands\r")
        until(st, b"ready-for-commands\r\n> ")
        streams[name] = st
    return streams[name]
for name, command in COMMANDS:
    st = console(name)
    st.send(command.encode() + b"\r")
    text = until(st, b"\r\n> ").decode()
    lines = [l for l in text.splitlines() if l.startswith(MARKER)]
    if not lines:
        raise SystemExit("no %s line in %s's answer %r" % (MARKER, name, text))
    print(lines[0])
"#
    );
    run_python(d, &script, Duration::from_secs(120)).lines().map(str::to_owned).collect()
}

/// Two guests started together on one network: dnsmasq answers nothing
/// while it checks an address for one of them, so the other's DHCP must
/// outwait that; both get their leases, use them, and ping each other.
#[test]
fn two_guests_on_a_nat_network_both_get_leases_and_ping_each_other() {
    if !can_run() || !require(Path::new("/dev/kvm").exists(), "/dev/kvm") || !have_python_libvirt() {
        return;
    }
    let ns = Netns::new("gpair");
    let d = daemon_in(&ns, "");
    define(&d, NAT_XML);
    ok(rw(&d, &["net-start", "lab"]));
    let guests = [
        ("ga", "52:54:00:77:00:21", "7f6d2a1c-4b3e-4c55-9a61-0d2f3e4a5b21"),
        ("gb", "52:54:00:77:00:22", "7f6d2a1c-4b3e-4c55-9a61-0d2f3e4a5b22"),
    ];
    for (name, mac, uuid) in guests {
        let nic = format!("<interface type='network'><mac address='{mac}'/><source network='lab'/></interface>");
        define_domain(&d, &guest_with(&d, name, uuid, &nic));
    }
    for (name, _, _) in guests {
        ok(rw(&d, &["start", name]));
    }
    // Both leased, in net-dhcp-leases and domifaddr.
    let lease_of = |mac: &str| -> Option<String> {
        let leases = ok(ro(&d, &["net-dhcp-leases", "lab"]));
        let row = leases.lines().find(|l| l.contains(mac))?;
        row.split_whitespace().find_map(|w| w.strip_suffix("/24")).map(str::to_owned)
    };
    let leased = wait_until(Duration::from_secs(90), || guests.iter().all(|(_, mac, _)| lease_of(mac).is_some()));
    assert!(leased, "{}\n{}", ok(ro(&d, &["net-dhcp-leases", "lab"])), d.stderr());
    let ips: Vec<String> = guests.iter().map(|(_, mac, _)| lease_of(mac).unwrap()).collect();
    assert_ne!(ips[0], ips[1]);
    for ((name, mac, _), ip) in guests.iter().zip(&ips) {
        let addr = ok(ro(&d, &["domifaddr", name, "--source", "lease"]));
        assert!(addr.contains(mac) && addr.contains(&format!("{ip}/24")), "{addr}");
    }
    // Each pings the other's leased address: both use what dnsmasq gave.
    let a_to_b = format!("ping {} 3", ips[1]);
    let b_to_a = format!("ping {} 3", ips[0]);
    let answers = on_consoles(&d, &[("ga", &a_to_b), ("gb", &b_to_a)], "PING ");
    assert_eq!(answers, ["PING SENT=3 RECEIVED=3", "PING SENT=3 RECEIVED=3"]);
    // And the host reaches both.
    for ip in &ips {
        assert!(ns.run(&["busybox", "ping", "-c", "1", "-W", "2", ip]).0, "no answer from {ip}");
    }
    for (name, _, _) in guests {
        ok(rw(&d, &["destroy", name]));
    }
}

/// A guest on `type='bridge'` with a static address (`ip=` on its kernel
/// command line, as there is no DHCP server on a plain host bridge) and the
/// host's address on that bridge reach each other.
#[test]
fn a_guest_on_a_host_bridge_and_the_hosts_address_on_it_ping_each_other() {
    if !can_run() || !require(Path::new("/dev/kvm").exists(), "/dev/kvm") || !have_python_libvirt() {
        return;
    }
    let ns = Netns::new("gbrp");
    let d = daemon_in(&ns, "");
    assert!(ns.run(&["ip", "link", "add", "brh0", "type", "bridge", "stp_state", "0", "forward_delay", "0"]).0);
    assert!(ns.run(&["ip", "addr", "add", "10.88.0.1/24", "dev", "brh0"]).0);
    assert!(ns.run(&["ip", "link", "set", "brh0", "up"]).0);
    let nic = "<interface type='bridge'><mac address='52:54:00:77:00:23'/><source bridge='brh0'/>\
               <model type='virtio'/></interface>";
    let xml = guest_with(&d, "gh", "7f6d2a1c-4b3e-4c55-9a61-0d2f3e4a5b23", nic)
        .replace("<cmdline>console=ttyS0</cmdline>", "<cmdline>console=ttyS0 ip=10.88.0.5/24</cmdline>");
    define_domain(&d, &xml);
    ok(rw(&d, &["start", "gh"]));
    let link = link_of(&ns, "vnet0").expect("the guest's tap");
    assert!(link.contains("master brh0"), "{link}");
    let ping = || ns.run(&["busybox", "ping", "-c", "1", "-W", "2", "10.88.0.5"]).0;
    assert!(wait_until(Duration::from_secs(30), ping), "the host got no answer from the guest");
    let answers = on_consoles(&d, &[("gh", "ping 10.88.0.1 3"), ("gh", "ping 10.88.0.9 1")], "PING ");
    // Nobody has 10.88.0.9: no ARP answer, no echo request sent.
    assert_eq!(answers, ["PING SENT=3 RECEIVED=3", "PING NOARP"]);
    ok(rw(&d, &["destroy", "gh"]));
}
