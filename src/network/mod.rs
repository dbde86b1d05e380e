//! libvirt's virtual networks, the parts that need no broker state: the
//! network XML model (`xml`), the bridge over rtnetlink (`bridge`), the
//! nftables table of the daemon's own (`nft`) and dnsmasq's configuration,
//! process and leases (`dnsmasq`), guest taps (`tap`) and
//! `virNetworkUpdate`'s DHCP host edits (`update`). `broker/networks.rs` drives them.

pub mod bridge;
pub mod dnsmasq;
pub mod nft;
pub mod tap;
pub mod update;
pub mod xml;
