//! The node's identity on disk: its private key, its certificate, the fleet CA and its id.
//!
//! Layout under `DATA_DIR/identity/` (directory 0700):
//! - `node.key`: the private key (0600). Made on first start; it never leaves the node.
//! - `node.crt`, `ca.crt`: PEM, written when enrollment succeeds (0600).
//! - `node.id`: 32 hex digits (0600).
//!
//! Every file is written to a temporary name, synced and renamed, and `node.id` is written
//! last: a node killed mid-write either has a whole identity or none, never half of one.

use crate::private_fs;
use edge_proto::NodeId;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::fs;
use std::path::{Path, PathBuf};

/// Why the identity could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but does not hold what it should: damaged, or edited by hand.
    #[error("{}: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("generating the node key: {0}")]
    Key(rcgen::Error),
}

/// An enrolled node's credentials.
#[derive(Debug)]
pub struct Identity {
    pub node_id: NodeId,
    pub cert: CertificateDer<'static>,
    pub ca: CertificateDer<'static>,
    /// Every CA in `ca.crt`, `ca` first: one, or two while the fleet's CA is rotated.
    pub trust: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// Where the identity lives.
#[derive(Debug, Clone)]
pub struct IdentityDir {
    dir: PathBuf,
}

impl IdentityDir {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("identity"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The stored identity, `None` if the node has not enrolled yet.
    pub fn load(&self) -> Result<Option<Identity>, IdentityError> {
        let id_path = self.path("node.id");
        let Some(id_text) = read_optional(&id_path)? else {
            return Ok(None);
        };
        let node_id = NodeId::parse(id_text.trim()).ok_or_else(|| IdentityError::Corrupt {
            path: id_path,
            reason: "not 32 hex digits".into(),
        })?;
        let cert = read_cert(&self.path("node.crt"))?;
        let ca = read_cert(&self.path("ca.crt"))?;
        let trust = read_certs(&self.path("ca.crt"))?;
        let key_path = self.path("node.key");
        let key_pem = read_required(&key_path)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
            IdentityError::Corrupt {
                path: key_path,
                reason: e.to_string(),
            }
        })?;
        Ok(Some(Identity {
            node_id,
            cert,
            ca,
            trust,
            key,
        }))
    }

    /// The node's key pair, made and stored on first use. Reusing it across enrollment
    /// attempts keeps one key per node.
    pub fn key_pair(&self) -> Result<KeyPair, IdentityError> {
        let path = self.path("node.key");
        if let Some(pem) = read_optional(&path)? {
            return KeyPair::from_pem(&pem).map_err(|e| IdentityError::Corrupt {
                path,
                reason: e.to_string(),
            });
        }
        let key = KeyPair::generate().map_err(IdentityError::Key)?;
        self.write(&path, key.serialize_pem().as_bytes())?;
        Ok(key)
    }

    /// A certificate signing request for `key`. The orchestrator ignores the subject and
    /// writes the node id it assigns; the name here only helps a human reading the CSR.
    pub fn csr(key: &KeyPair, name: &str) -> Result<Vec<u8>, IdentityError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        let csr = params.serialize_request(key).map_err(IdentityError::Key)?;
        Ok(csr.der().to_vec())
    }

    /// Stores what enrollment returned. `node.id` goes last: it marks the identity complete.
    pub fn save(
        &self,
        node_id: NodeId,
        cert_der: &[u8],
        ca_der: &[u8],
    ) -> Result<(), IdentityError> {
        self.write(
            &self.path("node.crt"),
            pem("CERTIFICATE", cert_der).as_bytes(),
        )?;
        self.write(&self.path("ca.crt"), pem("CERTIFICATE", ca_der).as_bytes())?;
        self.write(&self.path("node.id"), format!("{node_id}\n").as_bytes())
    }

    /// Stores a renewed certificate and the CAs to trust with it (the one that signed it
    /// first). The CAs go first: a crash between the two writes leaves the old certificate,
    /// still good, with a trust that covers both. Each file is replaced atomically, so a
    /// crash never leaves half a certificate.
    pub fn save_renewed(&self, cert_der: &[u8], trust: &[&[u8]]) -> Result<(), IdentityError> {
        if !trust.is_empty() {
            let bundle: String = trust.iter().map(|ca| pem("CERTIFICATE", ca)).collect();
            self.write(&self.path("ca.crt"), bundle.as_bytes())?;
        }
        self.write(
            &self.path("node.crt"),
            pem("CERTIFICATE", cert_der).as_bytes(),
        )
    }

    /// Whether `cert_der` certifies the node's own key: a certificate for any other key
    /// would lock the node out at its next dial, so none is stored.
    pub fn certifies_our_key(&self, cert_der: &[u8]) -> Result<bool, IdentityError> {
        let key = self.key_pair()?;
        Ok(
            x509_parser::parse_x509_certificate(cert_der).is_ok_and(|(_, cert)| {
                cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw()
            }),
        )
    }

    /// Removes the identity, so the next start enrolls again. Keeps the key.
    pub fn forget(&self) -> Result<(), IdentityError> {
        for name in ["node.id", "node.crt", "ca.crt"] {
            let path = self.path(name);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(IdentityError::Io { path, source }),
            }
        }
        Ok(())
    }

    /// Writes `path` atomically, readable by the node's user only.
    fn write(&self, path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
        let io = |source| IdentityError::Io {
            path: path.to_owned(),
            source,
        };
        private_fs::write_atomic(path, bytes).map_err(io)
    }
}

/// When `cert_der` is valid, in milliseconds since the Unix epoch; `None` if it does not
/// parse (it came from our own store, which the orchestrator filled).
pub fn validity(cert_der: &[u8]) -> Option<node_core::renewal::Validity> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let ms = |t: x509_parser::time::ASN1Time| {
        u64::try_from(t.timestamp())
            .ok()
            .map(|s| s.saturating_mul(1000))
    };
    let v = cert.validity();
    Some(node_core::renewal::Validity {
        not_before_ms: ms(v.not_before)?,
        not_after_ms: ms(v.not_after)?,
    })
}

fn read_optional(path: &Path) -> Result<Option<String>, IdentityError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(IdentityError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn read_required(path: &Path) -> Result<String, IdentityError> {
    read_optional(path)?.ok_or_else(|| IdentityError::Corrupt {
        path: path.to_owned(),
        reason: "missing, but node.id says the node is enrolled".into(),
    })
}

fn read_cert(path: &Path) -> Result<CertificateDer<'static>, IdentityError> {
    let text = read_required(path)?;
    CertificateDer::from_pem_slice(text.as_bytes()).map_err(|e| IdentityError::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Every certificate in the PEM file at `path`, in order; at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let text = read_required(path)?;
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::Corrupt {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(IdentityError::Corrupt {
            path: path.to_owned(),
            reason: "no certificate".into(),
        });
    }
    Ok(certs)
}

fn pem(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "edge-identity-{tag}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn identity_round_trips_and_key_is_private() {
        let data = temp_dir("rt");
        let dir = IdentityDir::new(&data);
        assert!(dir.load().expect("load").is_none());
        let key = dir.key_pair().expect("key");
        let again = dir.key_pair().expect("key");
        assert_eq!(
            key.serialize_der(),
            again.serialize_der(),
            "one key per node"
        );
        let mode = |name: &str| {
            fs::metadata(data.join("identity").join(name))
                .expect(name)
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("node.key"), 0o600);
        let cert = rcgen::CertificateParams::new(vec!["x".into()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let id = NodeId([3; 16]);
        dir.save(id, cert.der(), cert.der()).expect("save");
        for name in ["node.crt", "ca.crt", "node.id"] {
            assert_eq!(mode(name), 0o600, "{name} is the node's alone");
        }
        assert_eq!(mode(""), 0o700, "the identity directory");
        let loaded = dir.load().expect("load").expect("enrolled");
        assert_eq!(loaded.node_id, id);
        assert_eq!(loaded.cert.as_ref(), cert.der().as_ref());
        dir.forget().expect("forget");
        assert!(dir.load().expect("load").is_none());
        let _ = fs::remove_dir_all(data);
    }

    #[test]
    fn damaged_files_are_clear_errors() {
        let data = temp_dir("bad");
        let dir = IdentityDir::new(&data);
        fs::create_dir_all(data.join("identity")).expect("dir");
        fs::write(data.join("identity/node.id"), "not an id").expect("write");
        assert!(matches!(dir.load(), Err(IdentityError::Corrupt { .. })));
        fs::write(data.join("identity/node.id"), "ab".repeat(16)).expect("write");
        let err = dir.load().expect_err("no certificate");
        assert!(err.to_string().contains("node.crt"), "{err}");
        fs::write(data.join("identity/node.key"), "garbage").expect("write");
        assert!(matches!(dir.key_pair(), Err(IdentityError::Corrupt { .. })));
        let _ = fs::remove_dir_all(data);
    }
}
