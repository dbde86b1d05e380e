//! The libvirt RPC protocol: XDR, framing, programs and procedures, error replies.
//!
//! Pure code: no sockets, no state. The frontend drives it; the fuzz targets
//! in `fuzz/` feed it hostile bytes.

#![deny(missing_docs)]

pub mod admin;
pub mod blockdev;
pub mod cpu;
pub mod error;
pub mod events;
pub mod frame;
pub mod network;
pub mod remote;
pub mod stats;
pub mod storage;
pub mod tuning;
pub mod xdr;
