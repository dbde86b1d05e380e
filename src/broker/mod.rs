//! The privileged process: owns state, sockets and files, validates every frontend request.
//!
//! Start-up, in order: configuration and logging; socket activation (which
//! must be read before `-d` changes our pid); daemonizing; the PID file lock;
//! the sockets; trimming our own capabilities; then the event loop, which
//! starts the frontend and reports readiness once the frontend is confined.

mod activation;
mod admin;
mod agent;
mod atomic;
mod audit;
mod balloon;
mod blockinfo;
mod call_audit;
mod calls;
pub mod cgroup;
mod devices;
mod disks;
mod domains;
mod event_loop;
mod exits;
mod files;
mod greeting;
mod guest_calls;
mod guest_events;
mod guestmem;
mod guests;
mod helper_asks;
mod host;
mod hostcpu;
mod hostpages;
mod hoststats;
mod ifstats;
mod imagelock;
mod io_errors;
mod lifecycle;
mod link;
mod listen;
mod memlock;
mod memsize;
mod metadata;
mod netinfo;
mod networks;
mod nics;
mod percpu;
mod permit;
mod pidfile;
mod pinning;
mod procfs;
mod publish;
mod qcow2;
mod query;
mod readiness;
mod restarts;
mod rtc;
mod sampling;
mod sched;
mod snapshots;
mod spawn;
mod state;
mod stats;
mod status;
mod storage;
mod store;
mod supervisor;
mod tuning;
mod volumes;

use std::path::PathBuf;
use std::process::ExitCode;

pub use audit::{TAG as AUDIT_TAG, format as format_audit};
pub use permit::{Phase, permit, permitted};
pub use spawn::{Spawned, helper as spawn_helper};

use crate::cli::Cli;
use crate::config::{Config, ConfigError, DefaultPaths, Mode, UserEnv};
use crate::logging::{self, LogState};
use crate::privsep::ListenerKind;
use crate::sandbox::{self, SandboxError};
use event_loop::Broker;
use readiness::Readiness;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration file is unusable.
    #[error("Can't load config file: {0}")]
    Config(#[from] ConfigError),
    /// systemd passed sockets we cannot use.
    #[error(transparent)]
    Activation(#[from] activation::ActivationError),
    /// `--listen` together with socket activation.
    #[error(
        "--listen parameter not permitted with systemd activation sockets, see 'man libvirtd' for further guidance"
    )]
    ListenWithActivation,
    /// The PID file is held or unwritable.
    #[error(transparent)]
    PidFile(#[from] pidfile::PidFileError),
    /// A socket could not be created.
    #[error(transparent)]
    Listen(#[from] listen::ListenError),
    /// Trimming the broker's own privileges failed.
    #[error("cannot restrict the broker: {0}")]
    Sandbox(#[from] SandboxError),
    /// `audit_level = 2` but no syslog socket answers.
    #[error("audit_level = 2 requires auditing, but the syslog socket '{0}' is not reachable")]
    AuditUnavailable(PathBuf),
    /// Setting up the event loop, signals or the frontend failed.
    #[error("{0}")]
    Setup(String),
    /// The first frontend never became ready.
    #[error("the frontend failed to start: {0}")]
    Frontend(String),
}

/// Runs the daemon for `cli`; returns when it exits.
pub fn run(cli: Cli) -> ExitCode {
    logging::install_bootstrap();
    let mut readiness = Readiness::default();
    match start(&cli, &mut readiness) {
        Ok(mut broker) => broker.run(&mut readiness),
        Err(e) => {
            report_start_failure(&cli, &mut readiness, &e.to_string());
            ExitCode::FAILURE
        }
    }
}

fn start(cli: &Cli, readiness: &mut Readiness) -> Result<Broker, StartError> {
    let mode = if nix::unistd::geteuid().is_root() { Mode::System } else { Mode::Session };
    let paths = DefaultPaths::for_mode(mode, &UserEnv::from_process());
    let config_path = cli.config.clone().unwrap_or_else(|| paths.config_file.clone());
    let (mut config, warnings) = match Config::load(&config_path, &paths) {
        Ok(c) => c,
        Err(ConfigError::Read { source, .. })
            if cli.config.is_none() && source.kind() == std::io::ErrorKind::NotFound =>
        {
            (Config::defaults(&paths), Vec::new())
        }
        Err(e) => return Err(e.into()),
    };
    apply_verbosity(&mut config, cli.verbose);
    let (state, log_warnings) = LogState::open(&config.log, cli.daemon, &config.syslog_socket);
    logging::install(state);
    for w in warnings.iter().chain(&log_warnings) {
        log::warn!("{w}");
    }

    let activated = activation::take(&config)?;
    if activated.is_some() && cli.listen {
        return Err(StartError::ListenWithActivation);
    }
    if cli.daemon {
        *readiness = Readiness::daemonize().map_err(|e| StartError::Setup(format!("cannot daemonize: {e}")))?;
    }

    let pid_path = cli.pid_file.clone().unwrap_or_else(|| paths.pid_file.clone());
    if let Some(dir) = pid_path.parent() {
        create_private_dir(dir, mode)?;
    }
    let pidfile = pidfile::PidFile::acquire(&pid_path)?;

    let listeners = match activated {
        Some(l) => l,
        None => listen::bind_all(&config, cli.listen, mode == Mode::Session)?,
    };
    listen::vet(&config, &listeners)?;
    // The key is read before the frontend exists; it never sees it.
    let tls = match listeners.sockets.iter().any(|(k, _)| *k == ListenerKind::Tls) {
        true => Some(crate::tls::files::TlsFiles::load(&config).map_err(|e| StartError::Setup(format!("TLS: {e}")))?),
        false => None,
    };
    if mode == Mode::System {
        sandbox::restrict_to(sandbox::BROKER_CAPS)?;
    }
    let mut auditor = audit::Auditor::new(&config.syslog_socket, config.audit_level, config.audit_logging);
    if config.audit_level == 2 && !auditor.is_connected() {
        return Err(StartError::AuditUnavailable(config.syslog_socket.clone()));
    }
    let store = store::Store::open(&config.domain_config_dir).map_err(|e| StartError::Setup(e.to_string()))?;
    let helper_exe = std::env::current_exe()
        .map(|e| e.with_file_name("libvirt-helper"))
        .map_err(|e| StartError::Setup(format!("cannot find the helper binary: {e}")))?;
    let mut ctx = state::Ctx {
        domains: domains::Domains::load(store),
        host_uuid: host::host_uuid(config.host_uuid.as_deref()),
        guests: supervisor::Supervisor::new(guests::Launcher {
            exe: helper_exe,
            state_dir: config.domain_state_dir.clone(),
            uids: (mode == Mode::System).then_some((config.helper_uid_min, config.helper_uid_max)),
            cgroups: guest_cgroups(&config, mode),
        }),
        storage: storage::Storage::load(&config.storage_config_dir(), &config.storage_state_dir()),
        helper_asks: Default::default(),
        exits: Default::default(),
        balloons: Default::default(),
        samples: Default::default(),
        snapshots: Default::default(),
        networks: networks::Networks::load(
            &config.domain_config_dir,
            &config.domain_state_dir,
            config.default_network && mode == Mode::System,
        ),
    };
    // Guests outlive the daemon: find the ones a previous broker left
    // running, then start the autostart domains that are not.
    for seen in ctx.reattach() {
        // Failure: the guest had stopped while no daemon was there, or its
        // helper speaks a protocol this daemon does not (then with a reason).
        let reason = seen.unmanageable.as_deref();
        call_audit::audit_guest(&mut auditor, "reattach", (&seen.name, &seen.uuid), seen.pid, reason, seen.running);
    }
    // Networks first, as libvirt's network driver starts before its
    // domains: an autostart guest on an autostart network finds it running.
    ctx.networks.autostart();
    for uuid in ctx.domains.autostart_pending() {
        // Success is audited when the helper reports the guest started.
        if let Err(e) = ctx.start(&uuid, None, false, "start", supervisor::Asker::Daemon("autostart")) {
            log::error!("autostart: {e}");
            let name = ctx.domains.by_uuid(&uuid).map(|e| e.def.name.clone()).unwrap_or_default();
            call_audit::audit_guest(&mut auditor, "start", (&name, &uuid), -1, Some("autostart"), false);
        }
    }
    ctx.guests.events.clear();
    ctx.networks.events.clear();
    Broker::new(event_loop::Setup {
        cli: cli.clone(),
        mode,
        paths,
        config_path,
        config,
        listeners,
        auditor,
        _pidfile: pidfile,
        ctx,
        tls,
    })
}

/// The host's cgroups for guests, said at start: which hierarchy and
/// controllers, or why there are none (session mode, nothing writable), in
/// which case tuning elements are refused at guest start.
fn guest_cgroups(config: &Config, mode: Mode) -> Option<std::sync::Arc<cgroup::Cgroups>> {
    if mode == Mode::Session {
        log::info!("session mode: guests get no cgroups; <cputune>, <memtune> and <blkiotune> are refused");
        return None;
    }
    let self_cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let place =
        cgroup::Place { mount: &config.cgroup_mount, partition: &config.cgroup_partition, self_cgroup: &self_cgroup };
    let mut notes = Vec::new();
    let found = cgroup::Cgroups::detect(&place, &mut notes);
    for n in &notes {
        log::info!("{n}");
    }
    match found {
        Ok(c) => {
            log::info!("guests' cgroups: {} under '{}'", c.summary(), config.cgroup_partition);
            Some(std::sync::Arc::new(c))
        }
        Err(e) => {
            log::warn!("guests get no cgroups ({e}); <cputune>, <memtune> and <blkiotune> are refused at start");
            None
        }
    }
}

/// Reports a failed start once on stderr in the foreground (or to the `-d`
/// parent), and to the log outputs unless that would repeat it on stderr.
fn report_start_failure(cli: &Cli, readiness: &mut Readiness, msg: &str) {
    readiness.fail(msg);
    if !cli.daemon {
        eprintln!("libvirtd: error: {msg}");
    }
    if cli.daemon || !logging::writes_to_stderr() {
        log::error!("{msg}");
    }
}

/// `-v` makes info messages visible, `-vv` debug ones, as libvirtd's `-v` does.
fn apply_verbosity(config: &mut Config, verbose: u8) {
    let floor = match verbose {
        0 => return,
        1 => 2,
        _ => 1,
    };
    config.log.level = config.log.level.min(floor);
    for out in &mut config.log.outputs {
        out.priority = out.priority.min(floor);
    }
}

/// Creates the PID file's directory if missing (private in session mode).
fn create_private_dir(dir: &std::path::Path, mode: Mode) -> Result<(), StartError> {
    if dir.exists() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    if mode == Mode::Session {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).map_err(|e| StartError::Setup(format!("cannot create '{}': {e}", dir.display())))
}
