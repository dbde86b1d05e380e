//! The libvirt RPC protocol: XDR, framing, programs and procedures, error replies.
//!
//! Pure code: no sockets, no state. The frontend drives it; the fuzz targets
//! in `fuzz/` feed it hostile bytes.

#![deny(missing_docs)]

pub mod admin;
pub mod error;
pub mod frame;
pub mod remote;
pub mod stats;
pub mod tuning;
pub mod xdr;
