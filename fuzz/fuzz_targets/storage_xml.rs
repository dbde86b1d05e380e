//! Hostile storage input: pool XML (parse; what parses is emitted and must
//! parse back the same), volume XML, and image headers (a qcow2 header is
//! whatever a guest or an upload wrote).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = libvirtd::storage::probe::probe(data, data.len() as u64);
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(def) = libvirtd::storage::pool::PoolDef::parse(text) {
        let again = libvirtd::storage::pool::PoolDef::parse(&def.to_xml(None)).expect("emitted pool XML must parse");
        assert_eq!(again, def);
    }
    let _ = libvirtd::storage::volume::VolRequest::parse(text);
});
