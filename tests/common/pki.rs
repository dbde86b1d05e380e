//! Certificates for TLS tests and benches, made with rcgen: a CA, a server
//! certificate for 127.0.0.1, a CRL, and one virsh `pkipath` directory per
//! client (good, from another CA, with a DN not allowed, revoked).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
};

pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

pub fn ca(name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::OrganizationName, name);
    p.distinguished_name.push(DnType::CommonName, format!("{name} CA"));
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().unwrap();
    Ca { cert: p.self_signed(&key).unwrap(), key }
}

/// A certificate for `dn` (pairs of type and value, in order) signed by `ca`.
pub fn issue(ca: &Ca, dn: &[(DnType, &str)], sans: &[&str], serial: u64, server: bool) -> (String, KeyPair) {
    let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name = DistinguishedName::new();
    for (t, v) in dn {
        p.distinguished_name.push(t.clone(), *v);
    }
    p.serial_number = Some(SerialNumber::from(serial));
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    p.extended_key_usages =
        vec![if server { ExtendedKeyUsagePurpose::ServerAuth } else { ExtendedKeyUsagePurpose::ClientAuth }];
    let key = KeyPair::generate().unwrap();
    (p.signed_by(&key, &ca.cert, &ca.key).unwrap().pem(), key)
}

/// Everything the test needs on disk: the server's files, and one virsh
/// `pkipath` directory per client.
pub struct Pki {
    pub dir: PathBuf,
    pub server_key: KeyPair,
    pub server_cert_der: Vec<u8>,
}

pub const GOOD: &str = "good";
pub const FOREIGN: &str = "foreign";
pub const STRANGER: &str = "stranger";
pub const REVOKED: &str = "revoked";

pub fn pki(dir: &Path) -> Pki {
    let root = ca("Example");
    let other = ca("Elsewhere");
    std::fs::create_dir_all(dir).unwrap();
    let (server_pem, server_key) =
        issue(&root, &[(DnType::OrganizationName, "Example"), (DnType::CommonName, "host")], &["127.0.0.1"], 2, true);
    std::fs::write(dir.join("servercert.pem"), &server_pem).unwrap();
    std::fs::write(dir.join("serverkey.pem"), server_key.serialize_pem()).unwrap();
    std::fs::write(dir.join("cacert.pem"), root.cert.pem()).unwrap();
    let crl = CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2025, 1, 1),
        next_update: rcgen::date_time_ymd(2099, 1, 1),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![RevokedCertParams {
            serial_number: SerialNumber::from(66u64),
            revocation_time: rcgen::date_time_ymd(2025, 1, 1),
            reason_code: None,
            invalidity_date: None,
        }],
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&root.cert, &root.key)
    .unwrap();
    std::fs::write(dir.join("crl.pem"), crl.pem().unwrap()).unwrap();
    let clients: [(&str, &Ca, &str, u64); 4] = [
        (GOOD, &root, "client1", 10),
        (FOREIGN, &other, "client1", 11),
        (STRANGER, &root, "eve", 12),
        (REVOKED, &root, "client2", 66),
    ];
    for (name, issuer, cn, serial) in clients {
        let org = if name == STRANGER { "Intruders" } else { "Example" };
        let dn = [(DnType::CountryName, "GB"), (DnType::OrganizationName, org), (DnType::CommonName, cn)];
        let (pem, key) = issue(issuer, &dn, &[], serial, false);
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("clientcert.pem"), pem).unwrap();
        std::fs::write(d.join("clientkey.pem"), key.serialize_pem()).unwrap();
        // virsh checks its own certificate against this file as well as the
        // server's: the foreign client trusts both CAs.
        let cas = if name == FOREIGN { root.cert.pem() + &other.cert.pem() } else { root.cert.pem() };
        std::fs::write(d.join("cacert.pem"), cas).unwrap();
    }
    let server_cert_der = rustls_pki_types::pem::PemObject::from_pem_slice(server_pem.as_bytes())
        .map(|c: rustls_pki_types::CertificateDer<'static>| c.to_vec())
        .unwrap();
    Pki { dir: dir.to_owned(), server_key, server_cert_der }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn tls_conf(p: &Pki, port: u16, allowed: &str) -> String {
    let f = |n: &str| p.dir.join(n).display().to_string();
    format!(
        "listen_tls = 1\nlisten_addr = \"127.0.0.1\"\ntls_port = {port}\nkey_file = \"{}\"\ncert_file = \"{}\"\n\
         ca_file = \"{}\"\ncrl_file = \"{}\"\ntls_allowed_dn_list = [{allowed}]\n",
        f("serverkey.pem"),
        f("servercert.pem"),
        f("cacert.pem"),
        f("crl.pem")
    )
}
