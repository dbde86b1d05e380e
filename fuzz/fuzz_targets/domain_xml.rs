//! Hostile domain XML, as a client's define would carry it: parse, and for
//! what parses, emit and parse again (the canonical form must be stable).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for validate in [false, true] {
        if let Ok((def, _)) = libvirtd::domain::parse(text, validate) {
            let xml = def.to_xml();
            let (again, _) = libvirtd::domain::parse(&xml, true).expect("canonical XML must parse");
            assert_eq!(again, def);
        }
    }
});
