//! libvirtd in Rust: a privilege-separated libvirt management daemon.
//!
//! The code map below is also the README's; `tests/layout.rs` checks that every
//! path named here exists.

#![deny(clippy::undocumented_unsafe_blocks)]

/// The privileged process: owns state, sockets and files, validates every frontend request.
pub mod broker;
/// UTC dates from seconds and back, for log stamps and the guest's CMOS clock.
pub mod calendar;
/// The manual page's command line.
pub mod cli;
/// `libvirtd.conf` and the default paths for root and non-root daemons.
pub mod config;
/// Domain XML: the subset of libvirt's format this daemon runs, parsed and emitted.
pub mod domain;
/// The unprivileged process that talks to clients; holds no privilege and opens no file.
pub mod frontend;
/// Log levels, filters and outputs in libvirt's syntax, written to stderr, syslog or files.
pub mod logging;
/// libvirt's virtual networks: network XML, bridges over rtnetlink, our nftables table, dnsmasq.
pub mod network;
/// The messages between frontend and broker, and the channel that carries them.
pub mod privsep;
/// The libvirt wire protocol: XDR, framing, procedures, error replies.
pub mod rpc;
/// Confinement shared by all processes: ids, capabilities, landlock, seccomp, self-checks.
pub mod sandbox;
/// libvirt's storage model for directory pools: pool and volume XML, image headers.
pub mod storage;
/// TLS for remote clients: the key in the broker, the sessions in the frontend.
pub mod tls;

/// The name `--version` reports, as `libvirtd (<project>) <version>`.
pub const PROJECT: &str = "libvirtd-rs";
/// This build's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
