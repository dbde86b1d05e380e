//! The `net` group of `virConnectGetAllDomainStats` for a running guest,
//! from the counters its helper reports (`HelperEvent::NetStats`), with
//! libvirt's QEMU driver's names and types.

use crate::domain::DomainDef;
use crate::privsep::admin::{Param, ParamValue};
use crate::privsep::helper::NicCounters;

/// The alias the helper knows interface `index` by (`<alias name='net0'>`,
/// as libvirt's QEMU driver names them).
pub fn alias(index: usize) -> String {
    format!("net{index}")
}

/// The group: the count, then per interface its host-side name (the tap
/// the broker made, as `<target dev>` of the live definition shows it; the
/// alias before the guest has one) and, where the helper reported them in
/// time, its traffic as the host sees it: libvirt's `rx` is what the guest
/// received, as in the helper's counters.
pub fn stats_group(def: &DomainDef, taps: &[String], counters: Option<&[NicCounters]>) -> Vec<Param> {
    let ull = |field: String, v: u64| Param { field, value: ParamValue::ULLong(v) };
    let mut p = vec![Param { field: "net.count".into(), value: ParamValue::UInt(def.interfaces.len() as u32) }];
    for (i, nic) in def.interfaces.iter().enumerate() {
        let alias = alias(i);
        let name = taps.get(i).or(nic.target.as_ref()).cloned().unwrap_or_else(|| alias.clone());
        p.push(Param { field: format!("net.{i}.name"), value: ParamValue::Text(name) });
        let Some(c) = counters.and_then(|all| all.iter().find(|c| c.alias == alias)) else { continue };
        let figures = [
            ("rx.bytes", c.rx_bytes),
            ("rx.pkts", c.rx_packets),
            ("rx.errs", c.rx_errs),
            ("rx.drop", c.rx_drop),
            ("tx.bytes", c.tx_bytes),
            ("tx.pkts", c.tx_packets),
            ("tx.errs", c.tx_errs),
            ("tx.drop", c.tx_drop),
        ];
        p.extend(figures.into_iter().map(|(name, v)| ull(format!("net.{i}.{name}"), v)));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> DomainDef {
        let xml = "<domain type='kvm'><name>n</name><memory>65536</memory><os><type>hvm</type><kernel>/k</kernel>\
                   </os><devices><interface type='ethernet'><mac address='52:54:00:00:00:01'/>\
                   <target dev='vnet7'/><model type='virtio'/></interface>\
                   <interface type='ethernet'><mac address='52:54:00:00:00:02'/><model type='virtio'/></interface>\
                   </devices></domain>";
        crate::domain::parse(xml, false).unwrap().0
    }

    fn fields(p: &[Param]) -> Vec<(String, ParamValue)> {
        p.iter().map(|p| (p.field.clone(), p.value.clone())).collect()
    }

    #[test]
    fn each_interface_gets_its_name_and_the_counters_its_helper_reported() {
        let d = def();
        let c = NicCounters {
            alias: "net1".into(),
            rx_bytes: 1500,
            rx_packets: 2,
            rx_errs: 3,
            rx_drop: 4,
            tx_bytes: 600,
            tx_packets: 5,
            tx_errs: 6,
            tx_drop: 7,
            link_up: true,
        };
        let got = fields(&stats_group(&d, &[], Some(std::slice::from_ref(&c))));
        let ull = |f: &str, v: u64| (f.to_owned(), ParamValue::ULLong(v));
        assert_eq!(
            got,
            [
                ("net.count".into(), ParamValue::UInt(2)),
                ("net.0.name".into(), ParamValue::Text("vnet7".into())),
                ("net.1.name".into(), ParamValue::Text("net1".into())),
                ull("net.1.rx.bytes", 1500),
                ull("net.1.rx.pkts", 2),
                ull("net.1.rx.errs", 3),
                ull("net.1.rx.drop", 4),
                ull("net.1.tx.bytes", 600),
                ull("net.1.tx.pkts", 5),
                ull("net.1.tx.errs", 6),
                ull("net.1.tx.drop", 7),
            ]
        );
        // A helper that did not answer: names only.
        assert_eq!(stats_group(&d, &[], None).len(), 3);
        // A running guest's taps name its interfaces as the host sees them.
        let named = fields(&stats_group(&d, &["vnet3".into(), "vnet4".into()], None));
        assert!(named.iter().any(|(f, v)| f == "net.1.name" && v == &ParamValue::Text("vnet4".into())), "{named:?}");
    }
}
