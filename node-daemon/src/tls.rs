//! The node's TLS: how it trusts the orchestrator and proves who it is.
//!
//! Before enrollment the node knows only the CA's hash from its join settings, so
//! [`OrchestratorVerifier::pinned`] accepts a server whose chain contains a certificate with
//! that hash and whose leaf that certificate signed, for [`ORCHESTRATOR_SERVER_NAME`]. After
//! enrollment the node trusts exactly the stored CA ([`OrchestratorVerifier::rooted`]) and
//! presents its own certificate: to the orchestrator, and to the other nodes its proxy
//! serves and reaches ([`peer_tls`]).
//!
//! **Clocks.** A board without a real-time clock boots with the last time it saved, which
//! can be months or years behind, and to it the orchestrator's certificate is not valid
//! yet. Both ways of trusting the orchestrator then check the certificate as of the moment
//! it became valid instead: the chain, the signatures and the name are checked as ever. A
//! clock ahead is not forgiven: an expired certificate is refused. The node learns how far
//! off its clock is when the orchestrator welcomes it (`Welcome::time_ms`).

use edge_proto::digest::sha256;
use edge_proto::liveness::Liveness;
use edge_proto::{ALPN, ORCHESTRATOR_SERVER_NAME};
use edge_proxy::peer_tls::forgiving_a_clock_behind;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::identity::Identity;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[error("TLS setup: {0}")]
pub struct TlsError(String);

/// How the node trusts the orchestrator's certificate.
#[derive(Debug)]
pub struct OrchestratorVerifier {
    trust: Trust,
    provider: Arc<CryptoProvider>,
    checked: FullHandshakes,
}

/// How many of a configuration's handshakes were full: TLS checks the orchestrator's
/// certificate in those only, a resumed session checks none. Cheap to clone; clones count
/// together.
#[derive(Debug, Clone, Default)]
pub struct FullHandshakes(Arc<AtomicU64>);

impl FullHandshakes {
    /// How many so far.
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
enum Trust {
    /// Before enrollment: the chain must carry the CA with this hash, and it signed the leaf.
    Pinned([u8; 32]),
    /// After: the stored CA is the only root.
    Rooted(Arc<WebPkiServerVerifier>),
}

/// The message a node shows when the server is not the one its join settings name.
pub const PIN_MISMATCH: &str = "the orchestrator's CA does not match join.ca_hash";

impl OrchestratorVerifier {
    /// Trusts a chain that carries the CA whose SHA-256 is `pin`, and that CA signed the leaf.
    pub fn pinned(pin: [u8; 32], provider: Arc<CryptoProvider>) -> Self {
        Self {
            trust: Trust::Pinned(pin),
            provider,
            checked: FullHandshakes::default(),
        }
    }

    /// Trusts what `ca` signed, and nothing else.
    pub fn rooted(
        ca: CertificateDer<'static>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        Self::rooted_in(vec![ca], provider)
    }

    /// Trusts what any of `cas` signed (two while the fleet's CA is rotated), and nothing
    /// else.
    pub fn rooted_in(
        cas: Vec<CertificateDer<'static>>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        Ok(Self {
            trust: Trust::Rooted(webpki_in(cas, &provider).map_err(|e| TlsError(e.to_string()))?),
            provider,
            checked: FullHandshakes::default(),
        })
    }

    /// What counts the certificates this verifier accepts: its full handshakes.
    pub fn full_handshakes(&self) -> FullHandshakes {
        self.checked.clone()
    }
}

/// A verifier trusting only `ca`.
fn webpki(
    ca: CertificateDer<'static>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, rustls::Error> {
    webpki_in(vec![ca], provider)
}

/// A verifier trusting only `cas`.
fn webpki_in(
    cas: Vec<CertificateDer<'static>>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, rustls::Error> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots
            .add(ca)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))
}

impl ServerCertVerifier for OrchestratorVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = match &self.trust {
            Trust::Pinned(pin) => {
                let Some(ca) = intermediates.iter().find(|c| sha256(c.as_ref()) == *pin) else {
                    return Err(rustls::Error::General(PIN_MISMATCH.into()));
                };
                let inner = webpki(ca.clone().into_owned(), &self.provider)?;
                forgiving_a_clock_behind(now, |at| {
                    inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, at)
                })
            }
            Trust::Rooted(inner) => forgiving_a_clock_behind(now, |at| {
                inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, at)
            }),
        }?;
        self.checked.0.fetch_add(1, Ordering::Relaxed);
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn finish(mut tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, TlsError> {
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError(e.to_string()))?;
    Ok(with_liveness(
        quinn::ClientConfig::new(Arc::new(crypto)),
        Liveness::FAST,
    ))
}

/// `config` keeping its link alive by `liveness` (the node's `liveness`; [`enroll_config`]
/// and [`session_config`] start from [`Liveness::FAST`]).
pub fn with_liveness(mut config: quinn::ClientConfig, liveness: Liveness) -> quinn::ClientConfig {
    config.transport_config(Arc::new(edge_proto::quic::client_transport(liveness)));
    config
}

/// For enrollment: no client certificate, the server checked against the pinned CA hash.
pub fn enroll_config(ca_pin: [u8; 32]) -> Result<quinn::ClientConfig, TlsError> {
    let provider = provider();
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(OrchestratorVerifier::pinned(ca_pin, provider)))
        .with_no_client_auth();
    finish(tls)
}

/// For sessions: the stored CA is the only root, and the node presents its certificate.
///
/// Keep it for the next dial: it holds the TLS session tickets the orchestrator sent, so
/// that dial resumes the session, with no certificate sent, signed or checked either way.
pub fn session_config(identity: &Identity) -> Result<quinn::ClientConfig, TlsError> {
    session_config_counted(identity).map(|(config, _)| config)
}

/// As [`session_config`], with what counts its full handshakes: a dial that adds none
/// resumed its TLS session.
pub fn session_config_counted(
    identity: &Identity,
) -> Result<(quinn::ClientConfig, FullHandshakes), TlsError> {
    let provider = provider();
    let verifier = OrchestratorVerifier::rooted_in(identity.trust.clone(), provider.clone())?;
    let full = verifier.full_handshakes();
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(vec![identity.cert.clone()], identity.key.clone_key())
        .map_err(|e| TlsError(e.to_string()))?;
    Ok((finish(tls)?, full))
}

/// The configuration a node dials its sessions with, kept from one dial to the next so that
/// the next resumes the TLS session, and which of its connections did.
#[derive(Debug, Clone)]
pub struct SessionTls {
    config: quinn::ClientConfig,
    full: FullHandshakes,
    /// Full handshakes counted when [`SessionTls::resumed`] last asked.
    seen: u64,
}

impl SessionTls {
    /// For `identity`, keeping its link alive by `liveness`.
    pub fn new(identity: &Identity, liveness: Liveness) -> Result<Self, TlsError> {
        let (config, full) = session_config_counted(identity)?;
        Ok(Self {
            config: with_liveness(config, liveness),
            full,
            seen: 0,
        })
    }

    /// What to dial with.
    pub fn config(&self) -> quinn::ClientConfig {
        self.config.clone()
    }

    /// Whether the connection made since the last call resumed its TLS session: no full
    /// handshake was counted in between.
    pub fn resumed(&mut self) -> bool {
        let full = self.full.count();
        let resumed = full == self.seen;
        self.seen = full;
        resumed
    }
}

/// For the proxy's peers: served and reached as this node, with the stored CA as the only
/// root (`edge_proxy::peer_tls` says what each side checks).
pub fn peer_tls(identity: &Identity) -> Result<edge_proxy::PeerTls, TlsError> {
    edge_proxy::PeerTls::trusting(
        identity.trust.clone(),
        vec![identity.cert.clone()],
        identity.key.clone_key(),
    )
    .map_err(|e| TlsError(e.to_string()))
}

/// The name every orchestrator certificate is verified against.
pub fn server_name() -> &'static str {
    ORCHESTRATOR_SERVER_NAME
}
