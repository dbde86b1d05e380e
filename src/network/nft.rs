//! The daemon's firewall rules: one nftables table of its own, `inet
//! libvirtd_rs` (libvirt 9's nftables backend keeps `inet libvirt_network`;
//! a name of our own means neither daemon touches the other's rules, nor
//! any rule that is not ours). The table is generated whole from the active
//! networks and replaced in one `nft -f -` transaction, so it is never half
//! applied; with no network that needs rules it is deleted.
//!
//! The rules follow libvirt's per mode: `nat` masquerades the network's
//! IPv4 subnet to other destinations and lets replies back in; `route`
//! forwards the subnet both ways; isolated networks reach nothing beyond
//! the bridge; `open` gets no rules at all. Every network also lets DHCP and
//! DNS in from its bridge.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;

use super::xml::{Forward, NetworkDef};

/// Family and name of our table.
pub const TABLE: &str = "inet libvirtd_rs";

/// Why the rules could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// `nft` is missing or could not run.
    #[error("cannot run nft (install nftables): {0}")]
    Run(std::io::Error),
    /// `nft` refused the ruleset.
    #[error("nft refused the rules: {0}")]
    Refused(String),
}

fn ipkw(a: &IpAddr) -> &'static str {
    if a.is_ipv4() { "ip" } else { "ip6" }
}

/// The rules of one network on bridge `br`, per chain.
fn network_rules(def: &NetworkDef, br: &str, input: &mut String, forward: &mut String, nat: &mut String) {
    if def.forward == Forward::Open {
        return;
    }
    let _ = writeln!(input, "\t\tiifname \"{br}\" udp dport {{ 53, 67, 547 }} accept");
    let _ = writeln!(input, "\t\tiifname \"{br}\" tcp dport 53 accept");
    let _ = writeln!(forward, "\t\tiifname \"{br}\" oifname \"{br}\" accept");
    for ip in &def.ips {
        let (kw, net) = (ipkw(&ip.address), ip.subnet());
        match def.forward {
            Forward::Nat | Forward::Route => {
                let out_dev = def.forward_dev.as_ref().map(|d| format!(" oifname \"{d}\"")).unwrap_or_default();
                let _ = writeln!(forward, "\t\tiifname \"{br}\"{out_dev} {kw} saddr {net} accept");
                // NAT applies to IPv4 only; IPv6 of a nat network is routed, as in libvirt.
                if def.forward == Forward::Nat && ip.address.is_ipv4() {
                    let _ =
                        writeln!(forward, "\t\toifname \"{br}\" {kw} daddr {net} ct state related,established accept");
                    let _ = writeln!(nat, "\t\t{kw} saddr {net} {kw} daddr 224.0.0.0/24 return");
                    let _ = writeln!(nat, "\t\t{kw} saddr {net} {kw} daddr 255.255.255.255 return");
                    let _ = writeln!(
                        nat,
                        "\t\tmeta l4proto {{ tcp, udp }} {kw} saddr {net} {kw} daddr != {net}{out_dev} masquerade to :1024-65535"
                    );
                    let _ = writeln!(nat, "\t\t{kw} saddr {net} {kw} daddr != {net}{out_dev} masquerade");
                } else {
                    let _ = writeln!(forward, "\t\toifname \"{br}\" {kw} daddr {net} accept");
                }
            }
            Forward::Isolated | Forward::Open => {}
        }
    }
    let _ = writeln!(forward, "\t\tiifname \"{br}\" reject");
    let _ = writeln!(forward, "\t\toifname \"{br}\" reject");
}

/// The whole table for `active` networks (definition, bridge), or `None`
/// when none needs a rule.
pub fn table(active: &[(&NetworkDef, &str)]) -> Option<String> {
    let (mut input, mut forward, mut nat) = (String::new(), String::new(), String::new());
    for (def, br) in active {
        network_rules(def, br, &mut input, &mut forward, &mut nat);
    }
    if input.is_empty() {
        return None;
    }
    let mut t = format!("table {TABLE} {{\n");
    let _ = write!(t, "\tchain input {{\n\t\ttype filter hook input priority filter; policy accept;\n{input}\t}}\n");
    let _ =
        write!(t, "\tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n{forward}\t}}\n");
    let _ =
        write!(t, "\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n{nat}\t}}\n");
    t.push_str("}\n");
    Some(t)
}

/// The script that replaces our table with `table` (or removes it): the
/// `add` makes the `delete` valid when the table is absent, and all of it
/// is one transaction.
pub fn script(table: Option<&str>) -> String {
    let mut s = format!("add table {TABLE}\ndelete table {TABLE}\n");
    if let Some(t) = table {
        s.push_str(t);
    }
    s
}

/// Applies `script` with `nft -f -`.
pub fn apply(script: &str) -> Result<(), NftError> {
    let exe = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .unwrap_or("nft");
    let mut child = std::process::Command::new(exe)
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(NftError::Run)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(NftError::Run)?;
    }
    let out = child.wait_with_output().map_err(NftError::Run)?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        return Err(NftError::Refused(crate::rpc::error::clip(msg.trim(), 512).into_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nat_network_masquerades_its_subnet_and_an_open_one_gets_nothing() {
        let def = super::super::xml::parse(&super::super::xml::default_network_xml()).unwrap();
        let t = table(&[(&def, "virbr0")]).unwrap();
        assert!(t.starts_with("table inet libvirtd_rs {"));
        assert!(t.contains("ip saddr 192.168.122.0/24 ip daddr != 192.168.122.0/24 masquerade\n"), "{t}");
        assert!(t.contains("oifname \"virbr0\" ip daddr 192.168.122.0/24 ct state related,established accept"));
        let open = super::super::xml::parse(
            "<network><name>o</name><forward mode='open'/><ip address='10.9.0.1' prefix='24'/></network>",
        )
        .unwrap();
        assert_eq!(table(&[(&open, "virbr1")]), None);
        assert_eq!(script(None), "add table inet libvirtd_rs\ndelete table inet libvirtd_rs\n");
    }
}
