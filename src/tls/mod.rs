//! TLS for remote clients (`--listen`, `listen_tls`), split across the two
//! processes: the broker reads the files and keeps the private key
//! ([`files`]); the frontend runs rustls with the public material and a
//! signing key that asks the broker for each signature ([`session`]);
//! both check a client's distinguished name ([`dn`]).
//!
//! Only TLS 1.3 is offered, which is what lets the broker refuse to sign
//! anything but a TLS 1.3 handshake.

pub mod dn;
pub mod files;
pub mod session;
