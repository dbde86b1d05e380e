//! The frontend's side of TLS: a rustls server configuration whose signing
//! key lives in the broker (each handshake signature is one request on the
//! sign channel, answered within a bound, on the frontend's handshake
//! thread so that the event loop serves everyone else meanwhile),
//! and client certificates checked once the handshake is over, as libvirt
//! does: a client that fails gets no confirmation byte and a closed
//! connection, rather than a TLS alert in the middle of its handshake.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::{CertifiedKey, Signer, SigningKey, SingleCertAndKey};
use rustls::{RootCertStore, ServerConfig, SignatureAlgorithm, SignatureScheme};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};

use crate::privsep::{Channel, KeyKind, SignReply, SignRequest, TlsMaterial};

/// How long the broker gets to sign, in ms.
const SIGN_TIMEOUT_MS: u16 = 2_000;

/// The frontend's end of the sign channel.
#[derive(Debug)]
pub struct SignChannel {
    channel: Channel,
    next: AtomicU32,
}

impl SignChannel {
    /// Wraps the channel the broker passed.
    pub fn new(channel: Channel) -> SignChannel {
        SignChannel { channel, next: AtomicU32::new(1) }
    }

    fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let failed = |e: &dyn std::fmt::Display| rustls::Error::General(format!("signing in the broker: {e}"));
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let request = SignRequest { id, scheme: scheme.into(), message: message.to_vec() };
        self.channel.send_wait(&request, &[]).map_err(|e| failed(&e))?;
        // A reply to an earlier request that timed out is skipped.
        loop {
            let (reply, _) = self.channel.recv_blocking::<SignReply>(SIGN_TIMEOUT_MS, |_| 0).map_err(|e| failed(&e))?;
            if reply.id == id {
                return reply.signature.map_err(|e| failed(&e));
            }
        }
    }
}

/// The server key, as far as the frontend knows it: its kind and schemes.
#[derive(Debug)]
struct RemoteKey {
    kind: KeyKind,
    schemes: Vec<SignatureScheme>,
    channel: Arc<SignChannel>,
}

#[derive(Debug)]
struct RemoteSigner {
    scheme: SignatureScheme,
    channel: Arc<SignChannel>,
}

impl SigningKey for RemoteKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let scheme = self.schemes.iter().find(|s| offered.contains(s))?;
        Some(Box::new(RemoteSigner { scheme: *scheme, channel: self.channel.clone() }))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        match self.kind {
            KeyKind::Rsa => SignatureAlgorithm::RSA,
            KeyKind::Ecdsa => SignatureAlgorithm::ECDSA,
            KeyKind::Ed25519 => SignatureAlgorithm::ED25519,
        }
    }
}

impl Signer for RemoteSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.channel.sign(self.scheme, message)
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}

/// Asks every client for a certificate and checks that it holds the key
/// (the handshake signature), but leaves the CA and CRL check to
/// [`Tls::verify`] after the handshake.
#[derive(Debug)]
struct Deferred(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for Deferred {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        // No hints: a client sends the certificate it has, whoever signed it.
        &[]
    }

    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: rustls_pki_types::UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// TLS for new clients: the rustls configuration, and the check of client
/// certificates that runs after each handshake.
#[derive(Debug, Clone)]
pub struct Tls {
    /// For new sessions.
    pub config: Arc<ServerConfig>,
    /// Checks a client's certificate chain against the CA and CRLs; `None`
    /// with `tls_no_verify_certificate`.
    verifier: Option<Arc<dyn ClientCertVerifier>>,
}

impl Tls {
    /// Checks the certificates a client presented; `Err` says why it may not in.
    pub fn verify(&self, certs: Option<&[CertificateDer<'static>]>) -> Result<(), String> {
        let Some(verifier) = &self.verifier else { return Ok(()) };
        let (leaf, rest) = certs.and_then(|c| c.split_first()).ok_or("no client certificate")?;
        verifier
            .verify_client_cert(leaf, rest, rustls_pki_types::UnixTime::now())
            .map(|_| ())
            .map_err(|e| format!("client certificate: {e}"))
    }
}

/// The TLS setup for `m`: TLS 1.3 only, client certificates checked
/// against the CA and CRLs unless turned off.
pub fn server_config(m: &TlsMaterial, channel: Arc<SignChannel>) -> Result<Tls, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Option<Arc<dyn ClientCertVerifier>> = if m.verify_clients {
        let mut roots = RootCertStore::empty();
        for ca in &m.ca {
            roots.add(CertificateDer::from(ca.clone())).map_err(|e| format!("CA certificate: {e}"))?;
        }
        let crls = m.crls.iter().map(|c| CertificateRevocationListDer::from(c.clone()));
        Some(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .with_crls(crls)
                .build()
                .map_err(|e| format!("client verification: {e}"))?,
        )
    } else {
        None
    };
    let handshake_verifier: Arc<dyn ClientCertVerifier> = match &verifier {
        Some(v) => Arc::new(Deferred(v.clone())),
        None => WebPkiClientVerifier::no_client_auth(),
    };
    let key =
        RemoteKey { kind: m.key_kind, schemes: m.schemes.iter().map(|s| SignatureScheme::from(*s)).collect(), channel };
    let chain = m.cert_chain.iter().map(|c| CertificateDer::from(c.clone())).collect();
    let certified = CertifiedKey::new(chain, Arc::new(key));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_client_cert_verifier(handshake_verifier)
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    // libvirt's client reads exactly one record after the handshake, the
    // confirmation byte: a session ticket there would be read instead.
    // (Resumption buys nothing for long-lived management connections.)
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Tls { config: Arc::new(config), verifier })
}
