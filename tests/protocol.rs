//! The wire protocol with a raw client: what the stock clients will not send
//! (hostile packets, pipelining, the read-only flag on the read-write socket,
//! keepalive), checked byte by byte.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;
use libvirtd::rpc::frame::{KEEPALIVE_PROGRAM, MessageType};
use libvirtd::rpc::remote::StringArg;
use libvirtd::rpc::xdr;

const SECS: Duration = Duration::from_secs(10);
const GET_LIB_VERSION: i32 = 157;
const DEFINE_XML: i32 = 11;

#[test]
fn pipelined_calls_are_answered_with_their_serials() {
    let d = Daemon::start("", &[]);
    let mut c = RawClient::connect(&d.tree.sock("libvirt-sock"));
    c.open(0);
    let mut burst = Vec::new();
    let mut serials = Vec::new();
    for _ in 0..20 {
        let (serial, bytes) = c.packet(GET_LIB_VERSION, &[]);
        serials.push(serial);
        burst.extend_from_slice(&bytes);
    }
    c.send(&burst);
    let mut got = Vec::new();
    for _ in 0..20 {
        let (h, payload) = c.read().unwrap();
        assert_eq!((h.kind, h.status, h.proc_), (MessageType::Reply, 0, GET_LIB_VERSION));
        assert_eq!(payload, 9_000_000u64.to_be_bytes());
        got.push(h.serial);
    }
    got.sort_unstable();
    assert_eq!(got, serials);
}

#[test]
fn the_read_only_flag_on_the_read_write_socket_is_enforced_by_the_daemon() {
    let d = Daemon::start("", &[]);
    let mut c = RawClient::connect(&d.tree.sock("libvirt-sock"));
    c.open(1);
    let xml =
        xdr::to_bytes(&StringArg { value: domain_xml("raw-ro", "7b756f5b-4608-417c-a706-f41a63ae86d9") }).unwrap();
    let (h, payload) = c.call(DEFINE_XML, &xml);
    assert_eq!(h.status, 1);
    let e = remote_error(&payload);
    assert_eq!((e.code, e.domain), (29, 20));
    assert_eq!(e.message.as_deref(), Some("operation forbidden: read only access prevents virDomainDefineXML"));
    assert!(!d.tree.path("etc/qemu/raw-ro.xml").exists());
}

/// CONNECT_OPEN with `name`, on a fresh connection: the reply's header and payload.
fn open_named(d: &Daemon, name: &str) -> (libvirtd::rpc::frame::Header, Vec<u8>) {
    use libvirtd::rpc::remote::ConnectOpenArgs;
    let mut c = RawClient::connect(&d.tree.sock("libvirt-sock"));
    c.call(66, &[]);
    c.call(1, &xdr::to_bytes(&ConnectOpenArgs { name: Some(name.into()), flags: 0 }).unwrap())
}

#[test]
fn every_uri_spelling_libvirt_maps_to_this_driver_connects_and_others_are_refused() {
    let d = Daemon::start("", &[]);
    let path = if is_root() { "system" } else { "session" };
    for name in [format!("qemu:/{path}"), format!("qemu:///{path}/"), format!("qemu:///{path}?x=1")] {
        let (h, payload) = open_named(&d, &name);
        assert_eq!(h.status, 0, "{name}: {:?}", h.status.eq(&1).then(|| remote_error(&payload)));
    }
    for name in [format!("qemu://{path}"), format!("qemu:{path}"), "xen:///system".into(), "qemu:///other".into()] {
        let (h, payload) = open_named(&d, &name);
        assert_eq!(h.status, 1, "{name} was accepted");
        let e = remote_error(&payload);
        assert_eq!((e.code, e.domain), (5, 7), "{name}");
        assert_eq!(e.message, Some(format!("no connection driver available for {name}")));
    }
}

#[test]
fn a_hostile_packet_closes_only_that_connection() {
    let d = Daemon::start("", &[]);
    let frontend = d.frontend_pid().unwrap();
    let mut good = RawClient::connect(&d.tree.sock("libvirt-sock"));
    good.open(0);
    for hostile in [vec![0x7f, 0xff, 0xff, 0xff], vec![0, 0, 0, 8, 1, 2, 3, 4], {
        let mut p = vec![0, 0, 0, 0x1c, 0x20, 0, 0x80, 0x86, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9];
        p.extend_from_slice(&[0; 8]);
        p
    }] {
        let mut bad = connect(&d.tree.sock("libvirt-sock"));
        bad.set_read_timeout(Some(SECS)).unwrap();
        bad.write_all(&hostile).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(bad.read(&mut buf).unwrap_or(0), 0, "{hostile:?} did not close the connection");
    }
    // Undecodable arguments are an error reply, not a disconnect.
    let (h, payload) = good.call(23, &[0xff, 0xff, 0xff, 0xff]);
    assert_eq!(h.status, 1);
    assert_eq!(remote_error(&payload).message.as_deref(), Some("Unable to decode message payload"));
    let (h, _) = good.call(GET_LIB_VERSION, &[]);
    assert_eq!(h.status, 0, "the well-behaved client was disturbed");
    assert_eq!(d.frontend_pid(), Some(frontend), "the frontend restarted");
}

#[test]
fn unknown_procedures_say_not_supported_and_the_connection_stays_usable() {
    let d = Daemon::start("", &[]);
    let mut c = RawClient::connect(&d.tree.sock("libvirt-sock"));
    c.open(0);
    let (h, payload) = c.call(9999, &[]);
    let e = remote_error(&payload);
    assert_eq!((h.status, e.code, e.domain), (1, 39, 7));
    assert_eq!(e.message.as_deref(), Some("unknown procedure: 9999"));
    let (h, _) = c.call(GET_LIB_VERSION, &[]);
    assert_eq!(h.status, 0);
}

#[test]
fn the_admin_socket_does_not_serve_the_remote_program() {
    let d = Daemon::start("", &[]);
    let mut c = RawClient::connect(&d.tree.sock("libvirt-admin-sock"));
    let (h, payload) = c.call(66, &[]);
    assert_eq!(h.status, 1);
    assert!(remote_error(&payload).message.unwrap().starts_with("Cannot find program"));
}

#[test]
fn keepalive_pings_are_answered_and_silent_clients_are_dropped() {
    let d = Daemon::start("keepalive_interval = 1\nkeepalive_count = 2\n", &[]);
    let mut c = RawClient::connect(&d.tree.sock("libvirt-sock"));
    // Our PING gets a PONG.
    let ping = [0, 0, 0, 0x1c, 0x6b, 0x65, 0x65, 0x70, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0];
    c.send(&ping);
    let (h, _) = c.read().unwrap();
    assert_eq!((h.prog, h.proc_, h.kind), (KEEPALIVE_PROGRAM, 2, MessageType::Message));
    // Negotiate keepalive, then stay silent: the daemon pings, then gives up.
    let (h, payload) = c.call(60, &10i32.to_be_bytes());
    assert_eq!((h.status, payload), (0, 1i32.to_be_bytes().to_vec()));
    let start = Instant::now();
    let mut pings = 0;
    loop {
        match c.read() {
            Ok((h, _)) if h.prog == KEEPALIVE_PROGRAM && h.proc_ == 1 => pings += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => break,
        }
    }
    assert_eq!(pings, 2);
    let waited = start.elapsed();
    assert!(waited >= Duration::from_secs(2) && waited < Duration::from_secs(8), "{waited:?}");
}

#[test]
fn a_client_that_answers_pings_is_kept() {
    let d = Daemon::start("keepalive_interval = 1\nkeepalive_count = 1\n", &[]);
    let mut c = RawClient::connect(&d.tree.sock("libvirt-sock"));
    c.call(60, &10i32.to_be_bytes());
    let pong = [0, 0, 0, 0x1c, 0x6b, 0x65, 0x65, 0x70, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0];
    for _ in 0..4 {
        let (h, _) = c.read().expect("dropped although it answered");
        assert_eq!((h.prog, h.proc_), (KEEPALIVE_PROGRAM, 1));
        c.send(&pong);
    }
    let (h, _) = c.call(66, &[]);
    assert_eq!(h.status, 0);
}
