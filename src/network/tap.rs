//! A guest NIC's tap, made by the broker: opened on `/dev/net/tun` with
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` (frames carry a virtio-net header,
//! so checksum offload and TSO/GSO can pass through), named `vnetN` by the
//! kernel as libvirt names them unless the domain XML fixes a name, then
//! attached to a bridge and brought up. The tap is not persistent: it goes
//! away with the last fd, so a helper that dies takes its tap with it. The
//! guest start path calls [`create`] and [`attach`] and passes the fd to the
//! helper, which never creates, names or configures an interface.

use std::os::fd::{AsRawFd, OwnedFd};

use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};

use super::bridge::{self, BridgeError};

/// Bytes of the virtio-net header on each frame (`virtio_net_hdr_v1`,
/// with `num_buffers`, as virtio 1.0 devices use).
pub const VNET_HDR_LEN: i32 = 12;

/// Why a tap could not be made or attached.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open /dev/net/tun: {0}")]
    Open(std::io::Error),
    /// The kernel refused the tap.
    #[error("cannot create tap '{name}': {source}")]
    Create {
        /// The name asked for.
        name: String,
        /// The kernel's errno.
        #[source]
        source: std::io::Error,
    },
    /// The name is not a valid interface name.
    #[error("invalid tap name '{0}'")]
    Name(String),
    /// An interface of that name exists already (TUNSETIFF would attach to
    /// a persistent tap of that name rather than fail).
    #[error("an interface named '{0}' already exists")]
    Exists(String),
    /// Attaching or bringing it up failed.
    #[error(transparent)]
    Link(#[from] BridgeError),
}

/// `struct ifreq` as TUNSETIFF reads and writes it: the name and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates a tap named `name` (or `vnetN`, the first free N, when `None`)
/// with a virtio-net header of [`VNET_HDR_LEN`] bytes. Returns its fd and
/// the name the kernel gave it.
pub fn create(name: Option<&str>) -> Result<(OwnedFd, String), TapError> {
    let asked = name.unwrap_or("vnet%d");
    if asked.is_empty() || asked.len() >= libc::IFNAMSIZ || asked.contains('/') {
        return Err(TapError::Name(asked.to_owned()));
    }
    if name.is_some() && bridge::ifindex(asked).is_some() {
        return Err(TapError::Exists(asked.to_owned()));
    }
    let fd: OwnedFd = nix::fcntl::open(
        "/dev/net/tun",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| TapError::Open(e.into()))?;
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: 0, _pad: [0; 22] };
    req.name[..asked.len()].copy_from_slice(asked.as_bytes());
    req.flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    let failed = |source| TapError::Create { name: asked.to_owned(), source };
    // SAFETY: `fd` is an open tun fd we own; TUNSETIFF reads and writes one
    // `struct ifreq` (40 bytes), which `req` is, for the duration of the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF as _, &mut req as *mut IfReq) } < 0 {
        return Err(failed(std::io::Error::last_os_error()));
    }
    let hdr: libc::c_int = VNET_HDR_LEN;
    // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which points at `hdr`.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ as _, &hdr as *const libc::c_int) } < 0 {
        return Err(failed(std::io::Error::last_os_error()));
    }
    let len = req.name.iter().position(|b| *b == 0).unwrap_or(req.name.len());
    let given = String::from_utf8_lossy(&req.name[..len]).into_owned();
    Ok((fd, given))
}

/// Attaches tap `tap` to bridge `bridge_name` (with the bridge's MTU or
/// `mtu`) and brings it up.
pub fn attach(tap: &str, bridge_name: &str, mtu: Option<u32>) -> Result<(), TapError> {
    let tap_index = bridge::ifindex(tap).ok_or_else(|| BridgeError::Missing(tap.to_owned()))?;
    let br_index = bridge::ifindex(bridge_name).ok_or_else(|| BridgeError::Missing(bridge_name.to_owned()))?;
    let mut m = LinkMessage::default();
    m.header.index = tap_index;
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    m.attributes.push(LinkAttribute::Controller(br_index));
    if let Some(mtu) = mtu {
        m.attributes.push(LinkAttribute::Mtu(mtu));
    }
    bridge::set_link(m, "attach", tap)?;
    Ok(())
}

/// Brings tap `tap` up unattached (`<interface type='ethernet'>`), with
/// MTU `mtu` when given.
pub fn up(tap: &str, mtu: Option<u32>) -> Result<(), TapError> {
    let index = bridge::ifindex(tap).ok_or_else(|| BridgeError::Missing(tap.to_owned()))?;
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    if let Some(mtu) = mtu {
        m.attributes.push(LinkAttribute::Mtu(mtu));
    }
    bridge::set_link(m, "bring up", tap)?;
    Ok(())
}
