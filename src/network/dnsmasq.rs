//! dnsmasq, the DHCP and DNS server of each active network, as libvirt runs
//! it: one daemonised process per network, started with a generated
//! configuration file and a pid file, found again by a restarted broker, and
//! stopped with the network.
//!
//! Leases: libvirt runs dnsmasq with `--leasefile-ro` and a helper script
//! (`leaseshelper`) that keeps a JSON status file. We let dnsmasq keep its
//! own lease file (`dhcp-leasefile=`) instead and read that: no script runs
//! as root on a guest's DHCP request, and dnsmasq rewrites the file
//! atomically itself. The file survives a restart of dnsmasq or the broker,
//! so no lease is dropped.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::xml::NetworkDef;
use crate::privsep::network::Lease;

/// Largest lease file read, in bytes.
const MAX_LEASE_FILE: u64 = 4 * 1024 * 1024;
/// Most leases reported for one network (`REMOTE_NETWORK_DHCP_LEASES_MAX`).
pub const MAX_LEASES: usize = 65_536;

/// Where one network's dnsmasq files live.
#[derive(Debug, Clone)]
pub struct Files {
    /// `NAME.conf`.
    pub conf: PathBuf,
    /// `NAME.hostsfile` (dhcp-hostsfile, re-read on SIGHUP).
    pub hosts: PathBuf,
    /// `NAME.addnhosts`.
    pub addnhosts: PathBuf,
    /// `NAME.leases`, dnsmasq's own.
    pub leases: PathBuf,
    /// `NAME.pid`.
    pub pid: PathBuf,
}

impl Files {
    /// The files of network `name` in `dir`.
    pub fn new(dir: &Path, name: &str) -> Files {
        let f = |ext: &str| dir.join(format!("{name}.{ext}"));
        Files { conf: f("conf"), hosts: f("hostsfile"), addnhosts: f("addnhosts"), leases: f("leases"), pid: f("pid") }
    }
}

/// Why dnsmasq could not be started or driven.
#[derive(Debug, thiserror::Error)]
pub enum DnsmasqError {
    /// No dnsmasq binary on this host.
    #[error("cannot find dnsmasq (install dnsmasq-base): DHCP and DNS need it")]
    Missing,
    /// A file could not be written or read.
    #[error("{what} '{path}': {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// dnsmasq exited with an error at start.
    #[error("dnsmasq failed to start: {0}")]
    Failed(String),
}

/// The dnsmasq binary, where Debian puts it or on `PATH`.
pub fn binary() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = vec!["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()];
    if let Some(p) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    dirs.into_iter().map(|d| d.join("dnsmasq")).find(|p| p.is_file())
}

/// The configuration file for `def` on bridge `bridge`, with libvirt's
/// options (see its `networkDnsmasqConfContents`).
pub fn config(def: &NetworkDef, bridge: &str, files: &Files) -> String {
    let mut c = String::new();
    c.push_str("##WARNING:  THIS IS AN AUTO-GENERATED FILE. CHANGES TO IT ARE LIKELY TO BE\n");
    c.push_str("##OVERWRITTEN AND LOST.  Changes to this configuration should be made using:\n");
    let _ = writeln!(c, "##    virsh net-edit {}\n##or other application using the libvirt API.\n##", def.name);
    c.push_str("## dnsmasq conf file created by libvirtd-rs\n");
    c.push_str("strict-order\n");
    let _ = writeln!(c, "pid-file={}", files.pid.display());
    c.push_str("except-interface=lo\nbind-dynamic\n");
    let _ = writeln!(c, "interface={bridge}");
    if let Some(d) = &def.domain {
        let _ = writeln!(c, "domain={d}\nexpand-hosts\nlocal=/{d}/");
    }
    let mut lease_max: u128 = 0;
    let mut any_dhcp = false;
    for ip in &def.ips {
        for (start, end) in &ip.ranges {
            any_dhcp = true;
            match ip.address {
                IpAddr::V4(_) => {
                    let mask = super::xml::network_address(&IpAddr::V4(std::net::Ipv4Addr::BROADCAST), ip.prefix);
                    let _ = writeln!(c, "dhcp-range={start},{end},{mask}");
                }
                IpAddr::V6(_) => {
                    let _ = writeln!(c, "dhcp-range={start},{end},{}", ip.prefix);
                }
            }
            lease_max += range_size(start, end);
        }
        // A network with fixed hosts but no range still answers them.
        if ip.ranges.is_empty() && !ip.hosts.is_empty() {
            any_dhcp = true;
            let net = super::xml::network_address(&ip.address, ip.prefix);
            match ip.address {
                IpAddr::V4(_) => {
                    let _ = writeln!(c, "dhcp-range={net},static");
                }
                IpAddr::V6(_) => {
                    let _ = writeln!(c, "dhcp-range={net},static,{}", ip.prefix);
                }
            }
        }
        lease_max += ip.hosts.len() as u128;
    }
    if any_dhcp {
        c.push_str("dhcp-no-override\ndhcp-authoritative\n");
        let _ = writeln!(c, "dhcp-lease-max={}", lease_max.clamp(1, 1 << 24));
        let _ = writeln!(c, "dhcp-hostsfile={}", files.hosts.display());
        let _ = writeln!(c, "dhcp-leasefile={}", files.leases.display());
    }
    let _ = writeln!(c, "addn-hosts={}", files.addnhosts.display());
    if def.ips.iter().any(|i| i.address.is_ipv6()) {
        c.push_str("enable-ra\n");
    }
    c
}

fn range_size(start: &IpAddr, end: &IpAddr) -> u128 {
    let n = |a: &IpAddr| match a {
        IpAddr::V4(v) => u128::from(u32::from(*v)),
        IpAddr::V6(v) => u128::from(*v),
    };
    n(end).saturating_sub(n(start)).saturating_add(1)
}

/// The `dhcp-hostsfile` contents: one line per fixed host, as libvirt
/// writes them (`mac,ip,name`; IPv6 `id:ID,[ip],name`).
pub fn hostsfile(def: &NetworkDef) -> String {
    let mut out = String::new();
    for ip in &def.ips {
        for h in &ip.hosts {
            let mut parts: Vec<String> = Vec::new();
            match (ip.address.is_ipv6(), &h.mac, &h.id) {
                (true, _, Some(id)) => parts.push(format!("id:{id}")),
                (_, Some(mac), _) => parts.push(mac.clone()),
                _ => {}
            }
            if let Some(a) = &h.ip {
                parts.push(if a.is_ipv6() { format!("[{a}]") } else { a.to_string() });
            }
            if let Some(n) = &h.name {
                parts.push(n.clone());
            }
            out.push_str(&parts.join(","));
            out.push('\n');
        }
    }
    out
}

fn write(path: &Path, text: &str) -> Result<(), DnsmasqError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("new");
    let io = |what| move |source| DnsmasqError::Io { what, path: path.to_owned(), source };
    // Readable by dnsmasq after it drops root (it re-reads the hosts on SIGHUP).
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(io("cannot create"))?;
    f.write_all(text.as_bytes()).map_err(io("cannot write"))?;
    std::fs::rename(&tmp, path).map_err(io("cannot rename into"))
}

/// Writes the configuration, hosts and addn-hosts files of `def`.
pub fn write_files(def: &NetworkDef, bridge: &str, files: &Files) -> Result<(), DnsmasqError> {
    write(&files.conf, &config(def, bridge, files))?;
    write(&files.hosts, &hostsfile(def))?;
    if !files.addnhosts.exists() {
        write(&files.addnhosts, "")?;
    }
    Ok(())
}

/// Rewrites the hosts file and has a running dnsmasq re-read it (SIGHUP),
/// keeping its leases.
pub fn update_hosts(def: &NetworkDef, files: &Files, pid: i32) -> Result<(), DnsmasqError> {
    write(&files.hosts, &hostsfile(def))?;
    let _ = kill(Pid::from_raw(pid), Signal::SIGHUP);
    Ok(())
}

/// Starts dnsmasq with `files.conf`; it daemonises and reports startup
/// errors before its first process exits. Returns the daemon's pid.
pub fn start(files: &Files) -> Result<i32, DnsmasqError> {
    let exe = binary().ok_or(DnsmasqError::Missing)?;
    let _ = std::fs::remove_file(&files.pid);
    let mut cmd = std::process::Command::new(exe);
    // The broker blocks SIGHUP, SIGTERM and SIGCHLD to read them from a
    // signalfd, and a blocked mask survives exec: dnsmasq must get them
    // (SIGHUP re-reads the hosts file, SIGTERM stops it).
    // SAFETY: sigprocmask is async-signal-safe; nothing is allocated.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| nix::sys::signal::SigSet::empty().thread_set_mask().map_err(std::io::Error::from));
    }
    let out = cmd
        .arg(format!("--conf-file={}", files.conf.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .env_clear()
        .output()
        .map_err(|source| DnsmasqError::Io { what: "cannot run", path: "dnsmasq".into(), source })?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        return Err(DnsmasqError::Failed(crate::rpc::error::clip(msg.trim(), 512).into_owned()));
    }
    let end = Instant::now() + Duration::from_secs(2);
    loop {
        if let Some(pid) = read_pid(&files.pid) {
            return Ok(pid);
        }
        if Instant::now() > end {
            return Err(DnsmasqError::Failed(format!("no pid file '{}' appeared", files.pid.display())));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The pid in a dnsmasq pid file.
pub fn read_pid(path: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(path).ok()?;
    text.trim().parse().ok().filter(|p| *p > 1)
}

/// Whether `pid` is our dnsmasq for `files` (its command line names our
/// configuration file), so a recycled pid is never signalled.
pub fn is_ours(pid: i32, files: &Files) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let want = format!("--conf-file={}", files.conf.display());
    cmdline.split(|b| *b == 0).any(|a| a == want.as_bytes())
}

/// Stops our dnsmasq `pid` (SIGTERM, then SIGKILL after 2 s) and removes
/// its pid file.
pub fn stop(pid: i32, files: &Files) {
    if is_ours(pid, files) {
        let p = Pid::from_raw(pid);
        let _ = kill(p, Signal::SIGTERM);
        let end = Instant::now() + Duration::from_secs(2);
        while is_ours(pid, files) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        if is_ours(pid, files) {
            let _ = kill(p, Signal::SIGKILL);
        }
    }
    let _ = std::fs::remove_file(&files.pid);
}

/// The leases in dnsmasq's lease file (`expiry mac ip hostname clientid`;
/// after a `duid` line, IPv6 leases `expiry iaid ip hostname clientid`),
/// bounded in size and count; malformed lines are skipped.
pub fn leases(path: &Path, def: &NetworkDef, bridge: &str) -> Vec<Lease> {
    use std::io::Read;
    let mut text = String::new();
    let Ok(f) = std::fs::File::open(path) else { return Vec::new() };
    if f.take(MAX_LEASE_FILE).read_to_string(&mut text).is_err() {
        return Vec::new();
    }
    parse_leases(&text, def, bridge)
}

/// Parses lease-file text (see [`leases`]).
pub fn parse_leases(text: &str, def: &NetworkDef, bridge: &str) -> Vec<Lease> {
    let opt = |s: &str| (s != "*").then(|| s.to_owned());
    let mut out = Vec::new();
    let mut v6 = false;
    for line in text.lines() {
        if out.len() >= MAX_LEASES {
            break;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() == Some(&"duid") {
            v6 = true;
            continue;
        }
        let [expiry, id, ip, host, client, ..] = f[..] else { continue };
        let (Ok(expiry), Ok(addr)) = (expiry.parse::<i64>(), ip.parse::<IpAddr>()) else { continue };
        let prefix = def.ips.iter().find(|i| i.contains(&addr)).map_or(0, |i| u32::from(i.prefix));
        let (mac, iaid) = if v6 { (None, Some(id.to_owned())) } else { (Some(id.to_owned()), None) };
        out.push(Lease {
            iface: bridge.to_owned(),
            expiry,
            kind: i32::from(addr.is_ipv6()),
            mac,
            iaid,
            ip: addr.to_string(),
            prefix,
            hostname: opt(host),
            client_id: opt(client),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> NetworkDef {
        super::super::xml::parse(
            "<network><name>default</name><forward mode='nat'/><bridge name='virbr0'/><ip address='192.168.122.1' netmask='255.255.255.0'><dhcp><range start='192.168.122.2' end='192.168.122.254'/><host mac='52:54:00:00:00:01' ip='192.168.122.7' name='web'/></dhcp></ip></network>",
        )
        .unwrap()
    }

    #[test]
    fn the_configuration_has_libvirts_options() {
        let files = Files::new(Path::new("/s"), "default");
        let c = config(&def(), "virbr0", &files);
        for line in [
            "strict-order",
            "pid-file=/s/default.pid",
            "except-interface=lo",
            "bind-dynamic",
            "interface=virbr0",
            "dhcp-range=192.168.122.2,192.168.122.254,255.255.255.0",
            "dhcp-no-override",
            "dhcp-authoritative",
            "dhcp-lease-max=254",
            "dhcp-hostsfile=/s/default.hostsfile",
            "dhcp-leasefile=/s/default.leases",
            "addn-hosts=/s/default.addnhosts",
        ] {
            assert!(c.lines().any(|l| l == line), "{line} missing from\n{c}");
        }
        assert_eq!(hostsfile(&def()), "52:54:00:00:00:01,192.168.122.7,web\n");
    }

    #[test]
    fn lease_lines_are_read_and_bad_ones_skipped() {
        let text = "1700000000 52:54:00:00:00:02 192.168.122.50 guest 01:52:54:00:00:00:02\ngarbage\n0 52:54:00:00:00:03 192.168.122.51 * *\n";
        let l = parse_leases(text, &def(), "virbr0");
        assert_eq!(l.len(), 2);
        assert_eq!((l[0].ip.as_str(), l[0].prefix, l[0].hostname.as_deref()), ("192.168.122.50", 24, Some("guest")));
        assert_eq!((l[1].hostname.clone(), l[1].client_id.clone()), (None, None));
    }
}
