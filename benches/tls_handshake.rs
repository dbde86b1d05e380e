//! TLS clients: how long a client waits from TCP connect to libvirt's
//! confirmation byte (TLS 1.3 handshake with a client certificate, the
//! frontend asking the broker to sign, the certificate and DN checks, the
//! broker's admission), and how many such connections per second one client
//! gets in a row. Beside it, the same handshake with the key in-process
//! (rustls server and client in memory, no sockets), which is the floor:
//! the difference is what keeping the key in the broker and admitting the
//! client through it cost.
//!
//! Run: `cargo bench --bench tls_handshake`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pki::{GOOD, free_port, pki, tls_conf};
use common::{Daemon, Tree};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

const RUNS: usize = 200;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &std::path::Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path).unwrap().map(Result::unwrap).collect()
}

fn key(path: &std::path::Path) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(path).unwrap()
}

fn client_config(dir: &std::path::Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&dir.join("cacert.pem")) {
        roots.add(c).unwrap();
    }
    let c = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs(&dir.join("clientcert.pem")), key(&dir.join("clientkey.pem")))
        .unwrap();
    Arc::new(c)
}

fn report(label: &str, mut times: Vec<Duration>, total: Duration) {
    times.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    println!(
        "{label:<44} mean {:>8.1} us  p50 {:>8.1} us  p99 {:>8.1} us  ({:.0} per s)",
        us(mean),
        us(times[times.len() / 2]),
        us(times[times.len() * 99 / 100]),
        times.len() as f64 / total.as_secs_f64()
    );
}

/// Connect, handshake, read the confirmation byte, close.
fn daemon_handshakes(port: u16, config: &Arc<rustls::ClientConfig>) -> (Vec<Duration>, Duration) {
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let began = Instant::now();
    let times = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            let conn = rustls::ClientConnection::new(config.clone(), name.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).unwrap();
            assert_eq!(byte, [1], "no confirmation byte");
            let elapsed = t.elapsed();
            tls.conn.send_close_notify();
            let _ = tls.flush();
            elapsed
        })
        .collect();
    (times, began.elapsed())
}

/// The same handshake with the key in this process, through memory.
fn in_process_handshakes(dir: &std::path::Path, client: &Arc<rustls::ClientConfig>) -> (Vec<Duration>, Duration) {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&dir.join("cacert.pem")) {
        roots.add(c).unwrap();
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build().unwrap();
    let server = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs(&dir.join("servercert.pem")), key(&dir.join("serverkey.pem")))
            .unwrap(),
    );
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let began = Instant::now();
    let times = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            let mut c = rustls::ClientConnection::new(client.clone(), name.clone()).unwrap();
            let mut s = rustls::ServerConnection::new(server.clone()).unwrap();
            while c.is_handshaking() || s.is_handshaking() {
                let mut buf = Vec::new();
                c.write_tls(&mut buf).unwrap();
                s.read_tls(&mut &buf[..]).unwrap();
                s.process_new_packets().unwrap();
                let mut buf = Vec::new();
                s.write_tls(&mut buf).unwrap();
                c.read_tls(&mut &buf[..]).unwrap();
                c.process_new_packets().unwrap();
            }
            t.elapsed()
        })
        .collect();
    (times, began.elapsed())
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let tree = Tree::new();
    let p = pki(&tree.path("pki"));
    let port = free_port();
    tree.write_conf(&tls_conf(&p, port, "\"C=GB,O=Example,CN=*\""));
    let _daemon = Daemon::start_in(tree, &["--listen"]);
    let client = client_config(&p.dir.join(GOOD));
    // Warm up both paths.
    daemon_handshakes(port, &client);
    in_process_handshakes(&p.dir, &client);
    let (times, total) = daemon_handshakes(port, &client);
    report("libvirtd-rs: connect to confirmation byte", times, total);
    let (times, total) = in_process_handshakes(&p.dir, &client);
    report("rustls alone, key in-process, in memory", times, total);
}
