//! The broker's side of TLS: reads the certificate, key, CA and CRL files,
//! keeps the private key, and signs TLS 1.3 handshakes for the frontend.
//!
//! The frontend gets only the public material ([`TlsMaterial`]); it asks for
//! each handshake signature over its sign channel. The broker signs nothing
//! but a TLS 1.3 server CertificateVerify content, so a compromised frontend
//! cannot use the key to sign anything else.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use rustls::SignatureScheme;
use rustls::sign::SigningKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::config::Config;
use crate::privsep::{KeyKind, TlsMaterial};

/// Largest certificate, key, CA or CRL file read.
const MAX_FILE: u64 = 256 * 1024;
/// Most bytes of public material handed to the frontend (it travels in one
/// channel message).
const MAX_MATERIAL: usize = 48 * 1024;
/// What TLS 1.3 signs for a server: 64 spaces, this context string, a NUL,
/// then the transcript hash (RFC 8446 section 4.4.3).
const TLS13_SERVER_CONTEXT: &[u8] = b"TLS 1.3, server CertificateVerify\0";

/// Why the TLS files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} '{path}': {source}")]
    Read {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file's contents are unusable.
    #[error("{what} '{path}': {reason}")]
    Invalid {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: String,
        /// Why.
        reason: String,
    },
}

/// The loaded files: public material for the frontend, the key for us.
pub struct TlsFiles {
    /// What the frontend gets.
    pub material: TlsMaterial,
    key: Arc<dyn SigningKey>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles").field("material", &self.material).finish_non_exhaustive()
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let err = |source| TlsError::Read { what, path: path.display().to_string(), source };
    let mut bytes = Vec::new();
    std::fs::File::open(path).map_err(err)?.take(MAX_FILE + 1).read_to_end(&mut bytes).map_err(err)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(invalid(what, path, format!("larger than {MAX_FILE} bytes")));
    }
    Ok(bytes)
}

fn invalid(what: &'static str, path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::Invalid { what, path: path.display().to_string(), reason: reason.into() }
}

/// The PEM certificates in `path` (at least one).
fn certificates(what: &'static str, path: &Path) -> Result<Vec<Vec<u8>>, TlsError> {
    pem_items::<CertificateDer<'static>>(what, path, "certificate")
}

/// The DER of each PEM `noun` in `path` (at least one).
fn pem_items<T: PemObject + AsRef<[u8]>>(
    what: &'static str,
    path: &Path,
    noun: &str,
) -> Result<Vec<Vec<u8>>, TlsError> {
    let pem = read(what, path)?;
    let items: Vec<Vec<u8>> = T::pem_slice_iter(&pem)
        .map(|c| c.map(|c| c.as_ref().to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(what, path, format!("not a PEM {noun}: {e}")))?;
    if items.is_empty() {
        return Err(invalid(what, path, format!("holds no {noun}")));
    }
    Ok(items)
}

/// Every signature scheme rustls knows, to ask the key which it supports.
const SCHEMES: [SignatureScheme; 9] = [
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ECDSA_NISTP521_SHA512,
    SignatureScheme::ED25519,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA512,
    SignatureScheme::RSA_PKCS1_SHA256,
    SignatureScheme::RSA_PKCS1_SHA384,
];

impl TlsFiles {
    /// Reads the files `config` names. Errors name the file.
    pub fn load(config: &Config) -> Result<TlsFiles, TlsError> {
        let cert_chain = certificates("server certificate", &config.cert_file)?;
        let ca = certificates("CA certificate", &config.ca_file)?;
        let key_pem = read("server key", &config.key_file)?;
        let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| invalid("server key", &config.key_file, format!("not a PEM private key: {e}")))?;
        let key = rustls::crypto::ring::default_provider()
            .key_provider
            .load_private_key(key_der)
            .map_err(|e| invalid("server key", &config.key_file, e.to_string()))?;
        let crls = match &config.crl_file {
            Some(path) => pem_items::<CertificateRevocationListDer<'static>>("CRL", path, "CRL")?,
            None => Vec::new(),
        };
        // Catch what the frontend would otherwise find only at its first client.
        let chain: Vec<CertificateDer<'static>> = cert_chain.iter().map(|c| CertificateDer::from(c.clone())).collect();
        rustls::sign::CertifiedKey::new(chain, key.clone()).keys_match().map_err(|e| {
            invalid("server key", &config.key_file, format!("does not match the server certificate: {e}"))
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for c in &ca {
            roots
                .add(CertificateDer::from(c.clone()))
                .map_err(|e| invalid("CA certificate", &config.ca_file, e.to_string()))?;
        }
        if let Some(path) = &config.crl_file {
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::new(rustls::crypto::ring::default_provider()),
            )
            .with_crls(crls.iter().map(|c| CertificateRevocationListDer::from(c.clone())))
            .build()
            .map_err(|e| invalid("CRL", path, e.to_string()))?;
        }
        let key_kind = match key.algorithm() {
            rustls::SignatureAlgorithm::RSA => KeyKind::Rsa,
            rustls::SignatureAlgorithm::ECDSA => KeyKind::Ecdsa,
            rustls::SignatureAlgorithm::ED25519 => KeyKind::Ed25519,
            other => return Err(invalid("server key", &config.key_file, format!("unsupported key type {other:?}"))),
        };
        let schemes = SCHEMES.iter().filter(|s| key.choose_scheme(&[**s]).is_some()).map(|s| u16::from(*s)).collect();
        let material = TlsMaterial {
            cert_chain,
            ca,
            crls,
            verify_clients: !config.tls_no_verify_certificate,
            allowed_dns: config.tls_allowed_dn_list.clone(),
            key_kind,
            schemes,
        };
        let size: usize =
            [&material.cert_chain, &material.ca, &material.crls].iter().flat_map(|v| v.iter()).map(Vec::len).sum();
        if size > MAX_MATERIAL {
            return Err(invalid(
                "CA certificate",
                &config.ca_file,
                format!("certificates and CRL exceed {MAX_MATERIAL} bytes in all"),
            ));
        }
        Ok(TlsFiles { material, key })
    }

    /// Signs a TLS 1.3 server CertificateVerify content with `scheme`;
    /// anything else is refused.
    pub fn sign(&self, scheme: u16, message: &[u8]) -> Result<Vec<u8>, String> {
        if !is_tls13_server_verify(message) {
            return Err("not a TLS 1.3 server CertificateVerify".into());
        }
        let signer = self
            .key
            .choose_scheme(&[SignatureScheme::from(scheme)])
            .ok_or_else(|| format!("scheme {scheme:#x} unsupported"))?;
        signer.sign(message).map_err(|e| e.to_string())
    }
}

/// Whether `message` is what a TLS 1.3 server signs in its CertificateVerify.
fn is_tls13_server_verify(message: &[u8]) -> bool {
    let Some(hash_len) = message.len().checked_sub(64 + TLS13_SERVER_CONTEXT.len()) else { return false };
    message[..64].iter().all(|b| *b == b' ')
        && &message[64..64 + TLS13_SERVER_CONTEXT.len()] == TLS13_SERVER_CONTEXT
        && matches!(hash_len, 32 | 48 | 64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DefaultPaths, Mode, UserEnv};

    fn verify_content(hash_len: usize) -> Vec<u8> {
        let mut m = vec![b' '; 64];
        m.extend_from_slice(TLS13_SERVER_CONTEXT);
        m.extend(std::iter::repeat_n(0xab, hash_len));
        m
    }

    #[test]
    fn the_key_signs_tls13_handshakes_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["host".to_string()]).unwrap().self_signed(&key).unwrap();
        let mut config = Config::defaults(&DefaultPaths::for_mode(Mode::System, &UserEnv::default()));
        (config.key_file, config.cert_file, config.ca_file) =
            (dir.path().join("key.pem"), dir.path().join("cert.pem"), dir.path().join("ca.pem"));
        std::fs::write(&config.key_file, key.serialize_pem()).unwrap();
        std::fs::write(&config.cert_file, cert.pem()).unwrap();
        std::fs::write(&config.ca_file, cert.pem()).unwrap();
        let files = TlsFiles::load(&config).unwrap();
        let scheme = u16::from(SignatureScheme::ECDSA_NISTP256_SHA256);
        assert_eq!(files.material.schemes, [scheme]);
        assert!(files.sign(scheme, &verify_content(32)).is_ok());
        // Not a handshake: a certificate body, a TLS 1.2 key exchange, a
        // client's CertificateVerify, or a truncated content.
        let mut client = verify_content(32);
        client[64..70].copy_from_slice(b"TLS 1.");
        client[73..79].copy_from_slice(b"client");
        for bad in [cert.der().to_vec(), vec![0x03; 100], client, verify_content(32)[..90].to_vec(), verify_content(20)]
        {
            assert!(files.sign(scheme, &bad).is_err(), "signed {} bytes it should not have", bad.len());
        }
        assert!(files.sign(u16::from(SignatureScheme::RSA_PSS_SHA256), &verify_content(32)).is_err());

        // A key that is not the certificate's is refused at load, naming the file.
        std::fs::write(&config.key_file, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
        let err = TlsFiles::load(&config).unwrap_err().to_string();
        assert!(err.contains("server key") && err.contains("does not match"), "{err}");
    }
}
