//! Hostile bytes on a client socket: the frame splitter, then the dispatcher
//! (header checks and XDR decoding of every procedure's arguments), exactly
//! as the frontend runs them. Must never panic or loop.
#![no_main]

use libfuzzer_sys::fuzz_target;
use libvirtd::frontend::dispatch::{Facts, Session, dispatch};
use libvirtd::rpc::frame;

fuzz_target!(|data: &[u8]| {
    let facts = Facts { uri: "qemu:///system" };
    // Alternate between a fresh and an opened session, as both are reachable.
    let mut session = Session { opened: data.first().is_some_and(|b| b & 1 == 1), ..Session::default() };
    let mut rest = data;
    while let Ok(Some((header, payload, len))) = frame::split(rest) {
        let _ = dispatch(&mut session, &facts, &header, &rest[payload]);
        rest = &rest[len..];
    }
});
