//! Hostile network XML, as a client's net-define would carry it: parse, and
//! for what parses, emit and parse again (the canonical form must be
//! stable); a DHCP host edit on it must never panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(def) = libvirtd::network::xml::parse(text) {
        let xml = def.to_xml();
        let again = libvirtd::network::xml::parse(&xml).expect("canonical XML must parse");
        assert_eq!(again, def);
        let _ = libvirtd::network::dnsmasq::config(&def, "virbr0", &libvirtd::network::dnsmasq::Files::new("/s".as_ref(), &def.name));
        let _ = libvirtd::network::nft::table(&[(&def, "virbr0")]);
        for command in 1..=4 {
            let _ = libvirtd::network::update::edit_hosts(&def, command, -1, "<host mac='52:54:00:00:00:01' ip='10.0.0.9'/>");
        }
    }
});
