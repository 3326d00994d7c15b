//! The fleet's certificate authority.
//!
//! The orchestrator makes its own CA on first start. It signs the orchestrator's server
//! certificate (for the fixed name [`ORCHESTRATOR_SERVER_NAME`], since nodes pin the CA rather
//! than trust a DNS name) and every node's client certificate, whose common name is the node id.
//! Nodes pin the CA by [`Ca::hash`]: sha256 over the CA certificate's DER, as `sha256:HEX`.
//!
//! This module does no I/O: the caller stores the PEM it hands out.

use edge_proto::{NodeId, ORCHESTRATOR_SERVER_NAME};
use orchestrator_core::session::{NodeSigner, SignError};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivatePkcs8KeyDer};
use std::time::{Duration, SystemTime};

/// How long a node certificate is valid, unless `serve --node-cert-validity-secs` says
/// otherwise. Nodes renew theirs two thirds of the way through (`node_core::renewal`).
pub const NODE_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How far back a certificate's validity starts, for clocks a little behind ours; at most a
/// tenth of its life, so that a short-lived certificate is not mostly in the past.
const BACKDATE: Duration = Duration::from_secs(3600);
/// How long the CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);

/// Why the CA could not be made, loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The stored CA does not parse: the data dir is damaged or from something else.
    #[error("stored CA is unusable: {0}")]
    BadStoredCa(rcgen::Error),
    /// The node's CSR is not a valid self-signed PKCS#10 request. The peer's fault.
    #[error("bad certificate signing request: {0}")]
    BadCsr(rcgen::Error),
    /// Signing failed. Ours.
    #[error("signing failed: {0}")]
    Signing(rcgen::Error),
}

/// Why a renewal was not signed.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// The CSR does not parse or its signature does not check. The peer's fault.
    #[error("bad certificate signing request: {0}")]
    BadCsr(rcgen::Error),
    /// The CSR is for another key than the session's certificate: a renewal never moves a
    /// node to a key it has not proved it holds.
    #[error("the request is for another key than the session's certificate")]
    KeyMismatch,
    /// The session's own certificate does not parse: it passed TLS, so this is ours.
    #[error("the session's certificate does not parse")]
    SessionCertificate,
    /// Signing failed. Ours.
    #[error("signing failed: {0}")]
    Signing(rcgen::Error),
}

impl RenewError {
    /// The refusal the node is told.
    pub fn refusal(&self) -> edge_proto::RenewRefusal {
        match self {
            Self::BadCsr(_) => edge_proto::RenewRefusal::BadCsr,
            Self::KeyMismatch => edge_proto::RenewRefusal::KeyMismatch,
            Self::SessionCertificate | Self::Signing(_) => edge_proto::RenewRefusal::Internal,
        }
    }
}

/// The CA: its certificate and the key that signs with it.
#[derive(Debug)]
pub struct Ca {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    /// How long the node certificates it signs are valid.
    node_validity: Duration,
}

impl Ca {
    /// A new CA with a fresh P-256 key.
    pub fn generate(now: SystemTime) -> Result<Self, PkiError> {
        Self::generate_named(now, "edge fleet CA")
    }

    /// A new CA to rotate to: named after the second it was made, so that its subject (and
    /// so the issuer of what it signs) differs from the CA it replaces.
    pub fn generate_successor(now: SystemTime) -> Result<Self, PkiError> {
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self::generate_named(now, &format!("edge fleet CA {secs}"))
    }

    fn generate_named(now: SystemTime, name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate().map_err(PkiError::Signing)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + CA_VALIDITY).into();
        let cert = params.self_signed(&key).map_err(PkiError::Signing)?;
        Ok(Self {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
            node_validity: NODE_CERT_VALIDITY,
        })
    }

    /// Loads a CA stored with [`Ca::cert_pem`] and [`Ca::key_pem`].
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(PkiError::BadStoredCa)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(PkiError::BadStoredCa)?;
        let der = pem_body(cert_pem).ok_or(PkiError::BadStoredCa(
            rcgen::Error::CouldNotParseCertificate,
        ))?;
        Ok(Self {
            cert_der: CertificateDer::from(der),
            cert_pem: cert_pem.to_owned(),
            issuer,
            node_validity: NODE_CERT_VALIDITY,
        })
    }

    /// This CA, signing node certificates valid for `validity` (at least a second).
    pub fn with_node_validity(mut self, validity: Duration) -> Self {
        self.node_validity = validity.max(Duration::from_secs(1));
        self
    }

    /// How long the node certificates it signs are valid.
    pub fn node_validity(&self) -> Duration {
        self.node_validity
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// What a node pins: `sha256:` and the hex sha256 of the CA certificate's DER.
    pub fn hash(&self) -> String {
        ca_hash(&self.cert_der)
    }

    /// A fresh server certificate for [`ORCHESTRATOR_SERVER_NAME`], signed by this CA.
    /// Returns the chain (leaf, then CA) and the leaf's key.
    pub fn issue_server_cert(
        &self,
        now: SystemTime,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivatePkcs8KeyDer<'static>), PkiError> {
        let key = KeyPair::generate().map_err(PkiError::Signing)?;
        let mut params = CertificateParams::new(vec![ORCHESTRATOR_SERVER_NAME.to_owned()])
            .map_err(PkiError::Signing)?;
        params.distinguished_name = dn(ORCHESTRATOR_SERVER_NAME);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + NODE_CERT_VALIDITY).into();
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(PkiError::Signing)?;
        let key_der = PrivatePkcs8KeyDer::from(key.serialize_der());
        Ok((vec![cert.der().clone(), self.cert_der.clone()], key_der))
    }

    /// Signs a node's CSR. Only the public key is taken from the request: the subject is the
    /// node id we chose and the usage is client authentication, whatever the request asked for.
    pub fn sign_node_csr(
        &self,
        csr_der: &[u8],
        node_id: NodeId,
        now: SystemTime,
    ) -> Result<CertificateDer<'static>, PkiError> {
        let csr = parse_csr(csr_der).map_err(PkiError::BadCsr)?;
        self.sign_node_key(&csr.public_key, node_id, now)
            .map_err(PkiError::Signing)
    }

    /// Renews the certificate of `node_id`, the node of the session whose client
    /// certificate is `session_cert_der`: signs `csr_der` if it is for that certificate's
    /// key. The node id is the session's; nothing in the request can choose another.
    pub fn renew_node_csr(
        &self,
        csr_der: &[u8],
        node_id: NodeId,
        session_cert_der: &[u8],
        now: SystemTime,
    ) -> Result<CertificateDer<'static>, RenewError> {
        let csr = parse_csr(csr_der).map_err(RenewError::BadCsr)?;
        let (_, session) = x509_parser::parse_x509_certificate(session_cert_der)
            .map_err(|_| RenewError::SessionCertificate)?;
        if session.public_key().subject_public_key.data.as_ref() != csr.public_key.der_bytes() {
            return Err(RenewError::KeyMismatch);
        }
        self.sign_node_key(&csr.public_key, node_id, now)
            .map_err(RenewError::Signing)
    }

    /// Whether this CA issued `cert_der`, a certificate TLS has already checked against the
    /// fleet's CAs: its issuer is this CA's subject (CAs of one fleet have subjects of their
    /// own, see [`Ca::generate_successor`]).
    pub fn issued(&self, cert_der: &[u8]) -> bool {
        let (Ok((_, cert)), Ok((_, ca))) = (
            x509_parser::parse_x509_certificate(cert_der),
            x509_parser::parse_x509_certificate(&self.cert_der),
        ) else {
            return false;
        };
        cert.issuer().as_raw() == ca.subject().as_raw()
    }

    /// A certificate for `node_id` and the key of `session_cert_der` (the certificate its
    /// session was opened with, whose key TLS has proved): how a CA rotation moves a node
    /// that is online onto the new CA without waiting for it to ask.
    pub fn reissue(
        &self,
        session_cert_der: &[u8],
        node_id: NodeId,
        now: SystemTime,
    ) -> Result<CertificateDer<'static>, RenewError> {
        let (_, session) = x509_parser::parse_x509_certificate(session_cert_der)
            .map_err(|_| RenewError::SessionCertificate)?;
        let key = rcgen::SubjectPublicKeyInfo::from_der(session.public_key().raw)
            .map_err(|_| RenewError::SessionCertificate)?;
        self.sign_node_key(&key, node_id, now)
            .map_err(RenewError::Signing)
    }

    fn sign_node_key(
        &self,
        key: &impl rcgen::PublicKeyData,
        node_id: NodeId,
        now: SystemTime,
    ) -> Result<CertificateDer<'static>, rcgen::Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&node_id.to_string());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = (now - BACKDATE.min(self.node_validity / 10)).into();
        params.not_after = (now + self.node_validity).into();
        // A fresh serial for each certificate, so a renewed one is told apart from the last.
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(key, &self.issuer)?;
        Ok(cert.der().clone())
    }
}

fn parse_csr(csr_der: &[u8]) -> Result<CertificateSigningRequestParams, rcgen::Error> {
    CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
}

/// 16 random bytes with the top bit clear: a positive serial of at most 20 bytes (RFC 5280).
fn random_serial() -> rcgen::SerialNumber {
    let mut serial = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut serial)
        .expect("the OS random source works");
    serial[0] &= 0x7f;
    rcgen::SerialNumber::from_slice(&serial)
}

/// When a certificate is valid, as Unix seconds: `(not_before, not_after)`.
pub fn validity(cert_der: &[u8]) -> Option<(i64, i64)> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// The pin of a CA certificate: `sha256:` and 64 hex digits.
pub fn ca_hash(cert_der: &[u8]) -> String {
    edge_proto::digest::to_prefixed(&edge_proto::digest::sha256(cert_der))
}

/// The node id in a node certificate's common name. `None` if the certificate does not parse or
/// names no node: the TLS layer has already checked that our CA signed it.
pub fn node_id_from_cert(cert_der: &[u8]) -> Option<NodeId> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    NodeId::parse(cn)
}

/// The CA signs enrollments for the core's session machine.
impl NodeSigner for Ca {
    fn sign_node_csr(
        &self,
        csr_der: &[u8],
        node: NodeId,
        wall: SystemTime,
    ) -> Result<Vec<u8>, SignError> {
        Ca::sign_node_csr(self, csr_der, node, wall)
            .map(|cert| cert.to_vec())
            .map_err(|e| match e {
                PkiError::BadCsr(_) => SignError::BadCsr(e.to_string()),
                other => SignError::Internal(other.to_string()),
            })
    }

    fn ca_der(&self) -> &[u8] {
        self.cert_der.as_ref()
    }
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn pem_body(pem: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|c| c.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr_for(key: &KeyPair) -> Vec<u8> {
        let mut params = CertificateParams::default();
        // A hostile node asks to be someone else and a CA: both must be ignored.
        params.distinguished_name = dn("ffffffffffffffffffffffffffffffff");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.serialize_request(key).expect("csr").der().to_vec()
    }

    #[test]
    fn node_certificate_names_the_id_we_chose_not_the_one_asked_for() {
        let now = SystemTime::now();
        let ca = Ca::generate(now).expect("ca");
        let key = KeyPair::generate().expect("key");
        let id = NodeId([7; 16]);
        let cert = ca.sign_node_csr(&csr_for(&key), id, now).expect("sign");
        assert_eq!(node_id_from_cert(&cert), Some(id));
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert).expect("parse");
        assert!(!parsed.is_ca());
        assert_eq!(
            parsed.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
    }

    #[test]
    fn ca_survives_a_pem_round_trip() {
        let now = SystemTime::now();
        let ca = Ca::generate(now).expect("ca");
        let back = Ca::from_pem(ca.cert_pem(), &ca.key_pem()).expect("load");
        assert_eq!(back.hash(), ca.hash());
        assert!(ca.hash().starts_with("sha256:") && ca.hash().len() == 7 + 64);
        // A certificate signed after the reload still chains to the same CA.
        let key = KeyPair::generate().expect("key");
        let cert = back
            .sign_node_csr(&csr_for(&key), NodeId([1; 16]), now)
            .expect("sign");
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert).expect("parse");
        let (_, ca_parsed) = x509_parser::parse_x509_certificate(ca.cert_der()).expect("parse");
        assert_eq!(parsed.issuer(), ca_parsed.subject());
    }

    #[test]
    fn garbage_csr_and_garbage_ca_are_errors() {
        let now = SystemTime::now();
        let ca = Ca::generate(now).expect("ca");
        for bad in [&[][..], &[0x30, 0x82, 0xff, 0xff][..], &[0u8; 300][..]] {
            assert!(matches!(
                ca.sign_node_csr(bad, NodeId([1; 16]), now),
                Err(PkiError::BadCsr(_))
            ));
        }
        assert!(Ca::from_pem("not pem", "not pem").is_err());
        assert_eq!(node_id_from_cert(b"junk"), None);
    }

    #[test]
    fn a_renewal_keeps_the_key_and_the_session_node_and_nothing_else() {
        let now = SystemTime::now();
        let ca = Ca::generate(now)
            .expect("ca")
            .with_node_validity(Duration::from_secs(600));
        let key = KeyPair::generate().expect("key");
        let id = NodeId([7; 16]);
        let first = ca.sign_node_csr(&csr_for(&key), id, now).expect("sign");
        // The CSR names another node and asks to be a CA: the certificate is for the
        // session's node, for client authentication, with a serial of its own.
        let renewed = ca
            .renew_node_csr(&csr_for(&key), id, &first, now)
            .expect("renew");
        assert_eq!(node_id_from_cert(&renewed), Some(id));
        let (_, a) = x509_parser::parse_x509_certificate(&first).expect("parse");
        let (_, b) = x509_parser::parse_x509_certificate(&renewed).expect("parse");
        assert!(!b.is_ca());
        assert_ne!(a.serial, b.serial, "a renewed certificate is told apart");
        let (before, after) = validity(&renewed).expect("validity");
        assert_eq!(
            after - before,
            600 + 60,
            "ten minutes, started a tenth of that back"
        );

        // Another key, even one that the same CA certified for another node, is refused.
        let other = KeyPair::generate().expect("key");
        assert!(matches!(
            ca.renew_node_csr(&csr_for(&other), id, &first, now),
            Err(RenewError::KeyMismatch)
        ));
        for bad in [&[][..], &[0x30, 0x82, 0xff, 0xff][..], &[0u8; 300][..]] {
            let err = ca
                .renew_node_csr(bad, id, &first, now)
                .expect_err("garbage");
            assert!(matches!(err, RenewError::BadCsr(_)));
            assert_eq!(err.refusal(), edge_proto::RenewRefusal::BadCsr);
        }
        // A CSR whose signature does not check (one byte of it flipped) is no proof.
        let mut forged = csr_for(&key);
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(ca.renew_node_csr(&forged, id, &first, now).is_err());
    }
}
