//! Mutual TLS between the nodes of one fleet: how a node serves its peers and how it reaches
//! them.
//!
//! Both ends present their node certificate, which the fleet CA signed for the node's id (its
//! common name) with the client-authentication usage only. So:
//! - the **server** (the peer listener) requires a client certificate that chains to the fleet
//!   CA, as rustls' [`WebPkiClientVerifier`] checks it;
//! - the **client** checks the server's certificate with [`PeerVerifier`]: the same chain check
//!   (as a client certificate, since that is the only usage a node certificate has), and that
//!   its node id is the one the route named. The id travels as the TLS server name
//!   ([`server_name`]), `ID.node.edge`, never sent (no SNI): a peer's address is only where
//!   the route says the node is, its certificate is who it is.
//!
//! TLS 1.3 only, as the orchestrator link; ALPN `http/1.1`. A foreign certificate, none, or
//! another node's: the handshake fails.
//!
//! Both checks forgive a clock behind ([`ClockBehind`]), as the orchestrator link does: a
//! board without a real-time clock may boot years in the past, and to it every certificate
//! issued since is not valid yet. Such a certificate is checked as of its start; an expired
//! one is still refused.

use edge_proto::NodeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};
use std::sync::Arc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// What peers speak over TLS.
const ALPN_HTTP1: &[u8] = b"http/1.1";
/// The suffix of the server name that carries a peer's node id.
const NAME_SUFFIX: &str = ".node.edge";

/// Why the peer TLS configuration could not be built: the node's identity is unusable.
#[derive(Debug, thiserror::Error)]
#[error("peer TLS: {0}")]
pub struct PeerTlsError(String);

/// The node's TLS for peers: the listener's acceptor and the client's connector.
#[derive(Clone)]
pub struct PeerTls {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls").finish_non_exhaustive()
    }
}

impl PeerTls {
    /// Serves and dials as the node whose certificate chain (leaf first) and key are given,
    /// trusting exactly `ca`.
    pub fn new(
        ca: CertificateDer<'static>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, PeerTlsError> {
        Self::trusting(vec![ca], chain, key)
    }

    /// As [`PeerTls::new`], trusting each of `cas`: while the fleet's CA is rotated, peers
    /// hold certificates of either.
    pub fn trusting(
        cas: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, PeerTlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for ca in cas {
            roots
                .add(ca)
                .map_err(|e| PeerTlsError(format!("the fleet CA: {e}")))?;
        }
        let roots = Arc::new(roots);
        let clients: Arc<dyn ClientCertVerifier> = Arc::new(ClockBehind(
            WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| PeerTlsError(e.to_string()))?,
        ));
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| PeerTlsError(e.to_string()))?
            .with_client_cert_verifier(clients.clone())
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| PeerTlsError(format!("the node's certificate: {e}")))?;
        server.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        let verifier = PeerVerifier {
            chain: clients,
            provider: provider.clone(),
        };
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| PeerTlsError(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(chain, key)
            .map_err(|e| PeerTlsError(format!("the node's certificate: {e}")))?;
        client.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        // The name is ours, not a DNS name a peer could serve by: nothing to tell it.
        client.enable_sni = false;
        Ok(Self {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// For the peer listener.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.server.clone())
    }

    /// For the connections to peers.
    pub fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.client.clone())
    }
}

/// The TLS server name a connection to `node` is verified against.
pub fn server_name(node: NodeId) -> Option<ServerName<'static>> {
    ServerName::try_from(format!("{node}{NAME_SUFFIX}")).ok()
}

/// The node id a [`server_name`] names.
fn node_of_name(name: &ServerName<'_>) -> Option<NodeId> {
    match name {
        ServerName::DnsName(dns) => NodeId::parse(dns.as_ref().strip_suffix(NAME_SUFFIX)?),
        _ => None,
    }
}

/// The node id in a node certificate's common name; `None` if it does not parse or names no
/// node.
pub fn node_of_cert(cert: &CertificateDer<'_>) -> Option<NodeId> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    NodeId::parse(cn)
}

/// Runs `verify` at `now` and, if the certificate is only not valid yet (as every recent one
/// is to a clock behind), again as of its start. The node's one rule for a clock behind: the
/// peer link's [`ClockBehind`] and the orchestrator link's verifier (`node-daemon`'s `tls`)
/// both use it.
pub fn forgiving_a_clock_behind<T>(
    now: UnixTime,
    verify: impl Fn(UnixTime) -> Result<T, rustls::Error>,
) -> Result<T, rustls::Error> {
    match verify(now) {
        Err(rustls::Error::InvalidCertificate(CertificateError::NotValidYetContext {
            not_before,
            ..
        })) => verify(not_before),
        other => other,
    }
}

/// Checks a node certificate as the verifier it wraps does, except that one that is only not
/// valid yet, as every recent certificate is to a clock behind, is checked as of its start.
#[derive(Debug)]
struct ClockBehind(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for ClockBehind {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        forgiving_a_clock_behind(now, |at| {
            self.0.verify_client_cert(end_entity, intermediates, at)
        })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Verifies a peer's certificate: signed by the fleet CA as a node's (client) certificate,
/// and for the node id the server name carries.
#[derive(Debug)]
struct PeerVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.chain
            .verify_client_cert(end_entity, intermediates, now)?;
        let wanted = node_of_name(server_name).ok_or(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName,
        ))?;
        if node_of_cert(end_entity) != Some(wanted) {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        }
        Ok(ServerCertVerified::assertion())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_id_makes_a_server_name_that_names_it_again() {
        for id in [[0u8; 16], [0x11; 16], [0xab; 16], [0xff; 16]] {
            let node = NodeId(id);
            let name = server_name(node).expect("a valid name, digits alone included");
            assert_eq!(node_of_name(&name), Some(node));
        }
    }

    #[test]
    fn other_names_name_no_node() {
        for name in [
            "orchestrator.edge",
            "node.edge",
            "0123.node.edge",
            "00112233445566778899aabbccddeeff.node.edge.evil",
            "00112233445566778899aabbccddeeff",
        ] {
            let name = ServerName::try_from(name).expect("a DNS name");
            assert_eq!(node_of_name(&name), None, "{name:?}");
        }
        let ip = ServerName::try_from("127.0.0.1").expect("an IP");
        assert_eq!(node_of_name(&ip), None);
    }

    /// A fleet CA and a node certificate valid through 2026 only.
    fn cert_of_2026() -> (CertificateDer<'static>, CertificateDer<'static>) {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose, date_time_ymd,
        };
        let ca_key = KeyPair::generate().expect("key");
        let mut ca = CertificateParams::default();
        ca.distinguished_name
            .push(DnType::CommonName, "edge fleet CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).expect("CA");
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().expect("key");
        let mut node = CertificateParams::default();
        node.distinguished_name
            .push(DnType::CommonName, NodeId([7; 16]).to_string());
        node.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        node.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        node.not_before = date_time_ymd(2026, 1, 1);
        node.not_after = date_time_ymd(2027, 1, 1);
        let leaf = node.signed_by(&key, &issuer).expect("leaf");
        (ca_cert.der().clone(), leaf.der().clone())
    }

    #[test]
    fn a_clock_behind_is_forgiven_and_one_ahead_is_not() {
        let (ca, leaf) = cert_of_2026();
        let mut roots = RootCertStore::empty();
        roots.add(ca).expect("CA");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = ClockBehind(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("verifier"),
        );
        let at =
            |year_secs: u64| UnixTime::since_unix_epoch(std::time::Duration::from_secs(year_secs));
        // 2023, 2026-06 and 2028, in seconds since the epoch.
        let (behind, during, ahead) = (1_672_531_200, 1_780_000_000, 1_830_297_600);
        assert!(verifier.verify_client_cert(&leaf, &[], at(during)).is_ok());
        assert!(
            verifier.verify_client_cert(&leaf, &[], at(behind)).is_ok(),
            "three years behind: checked as of its start"
        );
        assert!(matches!(
            verifier.verify_client_cert(&leaf, &[], at(ahead)),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            ))
        ));
    }

    #[test]
    fn garbage_is_no_certificate_of_a_node() {
        assert_eq!(node_of_cert(&CertificateDer::from(vec![])), None);
        assert_eq!(node_of_cert(&CertificateDer::from(vec![0x30; 4096])), None);
    }
}
