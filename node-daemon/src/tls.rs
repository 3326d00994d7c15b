//! The node's TLS: how it trusts the orchestrator and proves who it is.
//!
//! Before enrollment the node knows only the CA's hash from its join settings, so
//! [`PinnedCaVerifier`] accepts a server whose chain contains a certificate with that hash and
//! whose leaf that certificate signed, for [`ORCHESTRATOR_SERVER_NAME`]. After enrollment the
//! node trusts exactly the stored CA and presents its own certificate: to the orchestrator,
//! and to the other nodes its proxy serves and reaches ([`peer_tls`]).

use edge_proto::digest::sha256;
use edge_proto::liveness::Liveness;
use edge_proto::{ALPN, ORCHESTRATOR_SERVER_NAME};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;

use crate::identity::Identity;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[error("TLS setup: {0}")]
pub struct TlsError(String);

/// Trusts the server chain only if it carries the CA with the pinned hash and that CA signed
/// the leaf.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl PinnedCaVerifier {
    pub fn new(pin: [u8; 32], provider: Arc<CryptoProvider>) -> Self {
        Self { pin, provider }
    }
}

/// The message a node shows when the server is not the one its join settings name.
pub const PIN_MISMATCH: &str = "the orchestrator's CA does not match join.ca_hash";

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| sha256(c.as_ref()) == self.pin)
        else {
            return Err(rustls::Error::General(PIN_MISMATCH.into()));
        };
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
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
        .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier::new(ca_pin, provider)))
        .with_no_client_auth();
    finish(tls)
}

/// For sessions: the stored CA is the only root, and the node presents its certificate.
pub fn session_config(identity: &Identity) -> Result<quinn::ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(identity.ca.clone())
        .map_err(|e| TlsError(e.to_string()))?;
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![identity.cert.clone()], identity.key.clone_key())
        .map_err(|e| TlsError(e.to_string()))?;
    finish(tls)
}

/// For the proxy's peers: served and reached as this node, with the stored CA as the only
/// root (`edge_proxy::peer_tls` says what each side checks).
pub fn peer_tls(identity: &Identity) -> Result<edge_proxy::PeerTls, TlsError> {
    edge_proxy::PeerTls::new(
        identity.ca.clone(),
        vec![identity.cert.clone()],
        identity.key.clone_key(),
    )
    .map_err(|e| TlsError(e.to_string()))
}

/// The name every orchestrator certificate is verified against.
pub fn server_name() -> &'static str {
    ORCHESTRATOR_SERVER_NAME
}
