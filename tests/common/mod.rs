//! Starts the real `libvirtd` binary in a private temporary tree, with its own
//! syslog socket, and cleans up every process it started.

#![allow(dead_code)]

pub mod cgroup;
pub mod helper_guest;
pub mod pki;

use std::io::Read;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_libvirtd");

/// Fails the test under CI when a precondition is missing; elsewhere says why it returns early.
pub fn require(cond: bool, what: &str) -> bool {
    if !cond {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI requires {what}");
        eprintln!("not run here: needs {what}");
    }
    cond
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// A daemon's private tree: config, sockets, PID file, syslog socket, stderr capture.
pub struct Tree {
    pub dir: tempfile::TempDir,
    /// Audit records received (by a reader thread, so the daemon's sends never
    /// find the socket full) and not yet matched by [`Tree::audit`].
    unmatched: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Tree {
    pub fn new() -> Tree {
        let dir = tempfile::Builder::new().prefix("libvirtd-test").tempdir().unwrap();
        let syslog = UnixDatagram::bind(dir.path().join("syslog")).unwrap();
        let unmatched: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let sink = std::sync::Arc::downgrade(&unmatched);
        std::thread::spawn(move || {
            syslog.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            let mut buf = vec![0u8; 8192];
            // Ends when the tree (and its Arc) is gone.
            while let Some(records) = sink.upgrade() {
                if let Ok(n) = syslog.recv(&mut buf) {
                    let line = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if line.contains("libvirtd-audit:") {
                        records.lock().unwrap().push(line);
                    }
                }
            }
        });
        Tree { dir, unmatched }
    }
    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    pub fn sock(&self, name: &str) -> PathBuf {
        self.path("run").join(name)
    }
    pub fn conf_path(&self) -> PathBuf {
        self.path("libvirtd.conf")
    }
    pub fn pid_path(&self) -> PathBuf {
        self.path("libvirtd.pid")
    }
    /// Writes the config: the tree's paths plus `extra` lines (which win).
    pub fn write_conf(&self, extra: &str) {
        let base = [
            ("unix_sock_dir", self.path("run")),
            ("syslog_socket", self.path("syslog")),
            ("domain_config_dir", self.path("etc/qemu")),
            ("domain_state_dir", self.path("run/qemu")),
        ];
        let mut text = String::new();
        let cgroups = [("cgroup_partition", PathBuf::from(cgroup::partition(self.dir.path())))];
        for (key, path) in base.into_iter().chain(cgroups) {
            if !extra.lines().any(|l| l.split('=').next().is_some_and(|k| k.trim() == key)) {
                text.push_str(&format!("{key} = \"{}\"\n", path.display()));
            }
        }
        // The default network (virbr0) is written and started only by tests
        // that run the daemon in a network namespace of their own.
        if !extra.contains("default_network") {
            text.push_str("default_network = 0\n");
        }
        std::fs::write(self.conf_path(), text + extra).unwrap();
    }
    /// Whether an audit record containing every one of `needles` arrived
    /// (left for [`Tree::audit`] to take).
    pub fn audited(&self, needles: &[&str]) -> bool {
        self.unmatched.lock().unwrap().iter().any(|l| needles.iter().all(|n| l.contains(n)))
    }

    /// Waits for an audit record containing every one of `needles`, in any
    /// order of arrival; each record is returned at most once.
    pub fn audit(&self, needles: &[&str], timeout: Duration) -> Option<String> {
        let end = Instant::now() + timeout;
        loop {
            {
                let mut pending = self.unmatched.lock().unwrap();
                if let Some(i) = pending.iter().position(|l| needles.iter().all(|n| l.contains(n))) {
                    return Some(pending.remove(i));
                }
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A running daemon (the broker's process).
pub struct Daemon {
    pub tree: Tree,
    pub child: Option<Child>,
    pub pid: i32,
}

impl Daemon {
    /// Starts `libvirtd -f conf -p pid ARGS` in the foreground and waits for the rw socket.
    pub fn start(extra_conf: &str, args: &[&str]) -> Daemon {
        let tree = Tree::new();
        tree.write_conf(extra_conf);
        Self::start_in(tree, args)
    }

    pub fn start_in(tree: Tree, args: &[&str]) -> Daemon {
        let child = command(&tree, args).spawn().unwrap();
        let mut d = Daemon { pid: child.id() as i32, child: Some(child), tree };
        d.wait_started();
        d
    }

    /// Starts the daemon binary at `exe` (a copy, e.g. beside a stand-in helper).
    pub fn start_binary(tree: Tree, exe: &Path) -> Daemon {
        let child = command_for(exe, &tree, &tree.pid_path(), &[]).spawn().unwrap();
        let mut d = Daemon { pid: child.id() as i32, child: Some(child), tree };
        d.wait_started();
        d
    }

    /// Starts the daemon again in the same tree, after the previous one exited.
    pub fn restart(&mut self) {
        let child = command(&self.tree, &[]).spawn().unwrap();
        self.pid = child.id() as i32;
        self.child = Some(child);
        self.wait_started();
    }

    fn wait_started(&mut self) {
        assert!(self.wait_serving(Duration::from_secs(10)), "daemon did not start:\n{}", self.stderr());
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.tree.path("stderr")).unwrap_or_default()
    }

    /// The rw socket accepts and a frontend is confined and serving.
    pub fn wait_serving(&mut self, timeout: Duration) -> bool {
        wait_until(timeout, || {
            self.frontend_pid().is_some_and(|f| status_field(f, "Seccomp").as_deref() == Some("2"))
                && UnixStream::connect(self.tree.sock("libvirt-sock")).is_ok()
        })
    }

    /// Waits until the broker took every frontend's readiness (its
    /// `frontend-start` audit record), the moment start-up ends: a frontend
    /// lost before then ends the daemon, one lost after is replaced.
    pub fn wait_all_frontends_ready(&self, timeout: Duration) -> bool {
        wait_until(timeout, || {
            let pids = self.frontend_pids();
            !pids.is_empty() && pids.iter().all(|p| self.tree.audited(&["op=frontend-start", &format!("pid={p} ")]))
        })
    }

    /// The read-write socket's frontend.
    pub fn frontend_pid(&self) -> Option<i32> {
        self.frontend_pid_of("rw")
    }

    /// The frontend of one class (`rw`, `ro`, `admin`, `tcp`, `tls`).
    pub fn frontend_pid_of(&self, class: &str) -> Option<i32> {
        children_of(self.pid).into_iter().find(|p| {
            let args: Vec<String> = cmdline(*p).split_whitespace().map(String::from).collect();
            args.windows(2).any(|w| w[0] == "--frontend-process" && w[1] == class)
        })
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), sig).unwrap();
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Waits for the daemon to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Some(s) = child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        cgroup::cleanup(self.dir.path());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        kill_tree(self.pid);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}

/// SIGKILLs `pid` and every descendant.
pub fn kill_tree(pid: i32) {
    for c in children_of(pid) {
        kill_tree(c);
    }
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
}

pub fn command(tree: &Tree, args: &[&str]) -> Command {
    command_with_pid_file(tree, &tree.pid_path(), args)
}

pub fn command_with_pid_file(tree: &Tree, pid_file: &Path, args: &[&str]) -> Command {
    command_for(Path::new(BIN), tree, pid_file, args)
}

/// The daemon command, running the binary at `exe`.
pub fn command_for(exe: &Path, tree: &Tree, pid_file: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("-f").arg(tree.conf_path()).arg("-p").arg(pid_file).args(args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(tree.path("stderr")).unwrap())
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS");
    // A daemon of a test must not outlive it.
    // SAFETY: setpgid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setpgid(0, 0);
            Ok(())
        });
    }
    cmd
}

pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if status_field(p, "PPid").and_then(|s| s.parse().ok()) == Some(pid) {
            out.push(p);
        }
    }
    out
}

pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// One field of `/proc/<pid>/status`, trimmed.
pub fn status_field(pid: i32, name: &str) -> Option<String> {
    task_status_field(&format!("/proc/{pid}/status"), name)
}

pub fn task_status_field(path: &str, name: &str) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    s.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(|v| v.trim().to_owned()))
}

/// Connects, lets the daemon register the client, and returns the stream.
pub fn connect(path: &Path) -> UnixStream {
    UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()))
}

pub fn read_all(mut r: impl Read) -> String {
    let mut s = String::new();
    let _ = r.read_to_string(&mut s);
    s
}

/// The URI the stock clients use to reach `socket`.
pub fn uri(socket: &Path) -> String {
    format!("qemu+unix:///system?socket={}", socket.display())
}

/// Runs a stock client tool (`virsh`, `virt-admin`) connected to `uri`;
/// returns (exit code, stdout, stderr).
pub fn client_tool(tool: &str, uri: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(tool)
        .arg("-c")
        .arg(uri)
        .args(args)
        .env_remove("LIBVIRT_DEFAULT_URI")
        .env_remove("LIBVIRT_ADMIN_DEFAULT_URI")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool} ({e}); tests/run installs libvirt-clients"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the real virsh against `socket`; returns (exit code, stdout, stderr).
pub fn virsh(socket: &Path, args: &[&str]) -> (i32, String, String) {
    client_tool("virsh", &uri(socket), args)
}

/// Runs the real virt-admin against the admin socket `socket`.
pub fn virt_admin(socket: &Path, args: &[&str]) -> (i32, String, String) {
    client_tool("virt-admin", &format!("libvirtd:///system?socket={}", socket.display()), args)
}

/// Whether the stock client tools are installed (CI requires them).
pub fn have_virsh() -> bool {
    have_tool("virsh")
}

/// Whether virt-admin is installed (CI requires it).
pub fn have_virt_admin() -> bool {
    have_tool("virt-admin")
}

fn have_tool(tool: &str) -> bool {
    require(
        Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success()),
        &format!("{tool} (libvirt-clients)"),
    )
}

/// A minimal domain the daemon accepts.
pub fn domain_xml(name: &str, uuid: &str) -> String {
    format!(
        "<domain type='kvm'>\n  <name>{name}</name>\n  <uuid>{uuid}</uuid>\n  <memory unit='MiB'>128</memory>\n  \
         <currentMemory unit='MiB'>128</currentMemory>\n  <vcpu placement='static'>1</vcpu>\n  <os>\n    \
         <type arch='x86_64' machine='pc'>hvm</type>\n    <kernel>/var/tmp/guestkit/vmlinuz</kernel>\n    \
         <cmdline>console=ttyS0</cmdline>\n  </os>\n  <features><acpi/></features>\n  <clock offset='utc'/>\n  \
         <on_poweroff>destroy</on_poweroff>\n  <devices>\n    <serial type='pty'><target port='0'/></serial>\n    \
         <console type='pty'><target type='serial' port='0'/></console>\n    <controller type='usb' model='none'/>\n    \
         <memballoon model='none'/>\n  </devices>\n</domain>\n"
    )
}

/// Builds the test guest into `d`'s tree and returns the XML of domain
/// `name` booting it (not yet defined).
pub fn test_guest_xml(d: &Daemon, name: &str, uuid: &str) -> String {
    let images = d.tree.path("guest");
    build_guest(&images);
    domain_xml(name, uuid).replace("/var/tmp/guestkit/vmlinuz", images.join("vmlinuz").to_str().unwrap())
}

/// Python helper for python-libvirt scripts: reads a stream until `needle`
/// arrives, and fails the script at end of file.
pub const PY_UNTIL: &str = r#"
def until(st, needle):
    seen = b""
    while needle not in seen:
        data = st.recv(4096)
        if not data:
            sys.exit("end of file while waiting for %r; got %r" % (needle, seen))
        seen += data
    return seen
"#;

/// Python helper for python-libvirt scripts that talk to a guest's console
/// line by line: `upto(st, needle)` returns what `st` brings up to and
/// including `needle` (bytes) and keeps what came after it in `buf[0]` for
/// the next call; end of file fails the script.
pub const PY_UPTO: &str = r#"
buf = [b""]
def upto(st, needle):
    while needle not in buf[0]:
        data = st.recv(4096)
        if not data:
            sys.exit("end of file while waiting for %r; got %r" % (needle, buf[0]))
        buf[0] += data
    at = buf[0].index(needle) + len(needle)
    seen, buf[0] = buf[0][:at], buf[0][at:]
    return seen
"#;

/// Python helper for python-libvirt scripts that set `DAEMON` (the
/// daemon's pid): `helper()`, the pid of the daemon's child that runs
/// libvirt-helper (the others are its frontends), or None.
pub const PY_HELPER_PID: &str = r#"
import os
def helper():
    # The broker's child running libvirt-helper (the others are its frontends).
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open("/proc/%s/stat" % pid).read()
            cmd = open("/proc/%s/cmdline" % pid, "rb").read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == DAEMON and b"libvirt-helper" in cmd:
            return int(pid)
"#;

/// A raw libvirt RPC client, for what the stock clients will not send.
pub struct RawClient {
    pub stream: UnixStream,
    serial: u32,
}

impl RawClient {
    pub fn connect(path: &Path) -> RawClient {
        let stream = connect(path);
        // Generous: a first open of Debian's libvirtd probes QEMU for a while.
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        RawClient { stream, serial: 0 }
    }

    /// Encodes a CALL packet without sending it.
    pub fn packet(&mut self, proc_: i32, payload: &[u8]) -> (u32, Vec<u8>) {
        use libvirtd::rpc::frame::{self, Header, MessageType, REMOTE_PROGRAM};
        let serial = self.serial;
        self.serial += 1;
        let h = Header { prog: REMOTE_PROGRAM, vers: 1, proc_, kind: MessageType::Call, serial, status: 0 };
        let mut out = Vec::new();
        frame::encode(&mut out, &h, payload).unwrap();
        (serial, out)
    }

    pub fn send(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads one packet: header and payload.
    pub fn read(&mut self) -> std::io::Result<(libvirtd::rpc::frame::Header, Vec<u8>)> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len)?;
        let n = u32::from_be_bytes(len) as usize;
        let mut rest = vec![0u8; n - 4];
        self.stream.read_exact(&mut rest)?;
        let mut whole = len.to_vec();
        whole.extend_from_slice(&rest);
        let (h, payload, _) = libvirtd::rpc::frame::split(&whole).unwrap().unwrap();
        Ok((h, whole[payload].to_vec()))
    }

    /// One call and its reply.
    pub fn call(&mut self, proc_: i32, payload: &[u8]) -> (libvirtd::rpc::frame::Header, Vec<u8>) {
        let (serial, bytes) = self.packet(proc_, payload);
        self.send(&bytes);
        let (h, p) = self.read().unwrap();
        assert_eq!(h.serial, serial);
        (h, p)
    }

    /// AUTH_LIST and CONNECT_OPEN with `flags`.
    pub fn open(&mut self, flags: u32) {
        use libvirtd::rpc::remote::ConnectOpenArgs;
        self.call(66, &[]);
        let args =
            libvirtd::rpc::xdr::to_bytes(&ConnectOpenArgs { name: Some("qemu:///system".into()), flags }).unwrap();
        let (h, _) = self.call(1, &args);
        assert_eq!(h.status, 0, "CONNECT_OPEN failed");
    }
}

/// Decodes an error reply's payload.
pub fn remote_error(payload: &[u8]) -> libvirtd::rpc::remote::RemoteError {
    libvirtd::rpc::xdr::from_bytes(payload).unwrap()
}

/// Builds the project's test guest (both images) into `dir`.
pub fn build_guest(dir: &Path) {
    let status = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/guest/build.sh"))
        .arg(dir)
        .status()
        .expect("tests/guest/build.sh (needs binutils)");
    assert!(status.success(), "building the test guest failed");
}

impl Daemon {
    /// Every frontend process (one per trust class, or one for all), sorted.
    pub fn frontend_pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> =
            children_of(self.pid).into_iter().filter(|p| cmdline(*p).contains("--frontend-process")).collect();
        pids.sort_unstable();
        pids
    }

    /// Resident memory of the broker and of each frontend, for messages.
    pub fn rss_breakdown(&self) -> String {
        let mut parts = vec![format!("broker {} KiB", rss_kib_of(self.pid))];
        for p in self.frontend_pids() {
            let class = cmdline(p).split_whitespace().last().unwrap_or("?").to_owned();
            parts.push(format!("{class} {} KiB", rss_kib_of(p)));
        }
        parts.join(", ")
    }

    /// Resident memory of the broker and its frontends together, in KiB.
    pub fn rss_kib(&self) -> u64 {
        std::iter::once(self.pid).chain(self.frontend_pids()).map(rss_kib_of).sum()
    }
}

/// `VmRSS` of `pid` in KiB (0 once it is gone).
pub fn rss_kib_of(pid: i32) -> u64 {
    status_field(pid, "VmRSS").and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

/// Runs `tool -c uri ARGS`, killing it after `timeout`: `None` if it had to be
/// killed (a daemon that hangs fails the test instead of hanging it).
/// Waits up to `timeout` for `child` to exit; kills it (and returns `None`) if it does not.
pub fn wait_or_kill(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn client_tool_within(tool: &str, uri: &str, args: &[&str], timeout: Duration) -> Option<(i32, String, String)> {
    let mut child = Command::new(tool)
        .arg("-c")
        .arg(uri)
        .args(args)
        .env_remove("LIBVIRT_DEFAULT_URI")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {tool} ({e}); tests/run installs libvirt-clients"));
    let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || read_all(out));
    let err = std::thread::spawn(move || read_all(err));
    let status = wait_or_kill(&mut child, timeout);
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    status.map(|s| (s.code().unwrap_or(-1), out, err))
}

/// [`virsh`] with a deadline.
pub fn virsh_within(socket: &Path, args: &[&str], timeout: Duration) -> Option<(i32, String, String)> {
    client_tool_within("virsh", &uri(socket), args, timeout)
}

impl RawClient {
    /// A client on a stream already connected (its read timeout as set).
    pub fn from_stream(stream: UnixStream) -> RawClient {
        RawClient { stream, serial: 0 }
    }

    /// One call and its reply, or why there was none (closed, timed out).
    pub fn try_call(&mut self, proc_: i32, payload: &[u8]) -> std::io::Result<(libvirtd::rpc::frame::Header, Vec<u8>)> {
        use std::io::Write;
        let (serial, bytes) = self.packet(proc_, payload);
        self.stream.write_all(&bytes)?;
        loop {
            let (h, p) = self.read()?;
            // Events and keepalives may come between.
            if h.serial == serial && h.proc_ == proc_ {
                return Ok((h, p));
            }
        }
    }
}

/// Runs a python3 `program` (with python-libvirt), killed after `limit`;
/// returns stdout, failing the test (with stderr and the daemon's log) if it
/// failed or ran out of time.
pub fn run_python(d: &Daemon, program: &str, limit: Duration) -> String {
    let mut child = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(program)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || read_all(out));
    let err = std::thread::spawn(move || read_all(err));
    let status = wait_or_kill(&mut child, limit);
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    match status {
        Some(s) if s.success() => out,
        Some(s) => panic!("python failed ({s}):\n{out}\n{err}\n--- daemon:\n{}", d.stderr()),
        None => panic!("python did not finish within {limit:?}:\n{out}\n{err}\n--- daemon:\n{}", d.stderr()),
    }
}

/// The daemon in a mount namespace of its own with a tmpfs on /var/lib, where
/// virt-install puts the system `default` pool: the host's is never touched.
pub fn daemon_with_private_var_lib() -> Daemon {
    let tree = Tree::new();
    tree.write_conf("");
    let wrap = "mount -t tmpfs tmpfs /var/lib && exec \"$0\" \"$@\"";
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", wrap, BIN, "-f"])
        .arg(tree.conf_path())
        .arg("-p")
        .arg(tree.pid_path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(tree.path("stderr")).unwrap());
    // SAFETY: setpgid is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::setpgid(0, 0);
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    let mut d = Daemon { pid: child.id() as i32, child: Some(child), tree };
    assert!(d.wait_serving(Duration::from_secs(10)), "{}", d.stderr());
    d
}
