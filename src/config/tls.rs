//! TLS settings: what a node presents and how it checks its peers.
//!
//! These are plain configuration values; the transport that uses them lives
//! in the shell (`net::tls`), which depends on this module and not the
//! other way round.

use std::fmt;
#[cfg(feature = "tls")]
use std::path::Path;
use std::str::FromStr;
#[cfg(feature = "tls")]
use std::sync::Arc;

use sha2::{Digest, Sha256};
#[cfg(feature = "tls")]
use tokio_rustls::rustls::{
    self,
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
};

use crate::error::{Error, Result};

/// TLS settings of the `SSL` transport ([`Transport::Ssl`](crate::Transport::Ssl)).
///
/// **Security**: with the default [`TlsVerify::AcceptAny`], TLS protects
/// against passive eavesdropping only. There is no peer authentication in
/// py2p's or js2p's scheme (their clients verify nothing, their certificates
/// are fresh and self-signed), so an active attacker can intercept
/// connections. Use [`TlsVerify::Pinned`] between rs2p nodes to
/// authenticate peers; pinned nodes cannot talk to the references.
///
/// ```
/// use rs2p::config::{TlsConfig, TlsIdentity, TlsVerify};
/// use rs2p::{SyncConfig, Transport};
/// // Two rs2p nodes that only accept each other:
/// let a = TlsIdentity::generate().unwrap();
/// let b = TlsIdentity::generate().unwrap();
/// let pins = vec![a.fingerprint(), b.fingerprint()];
/// let cfg_a = SyncConfig::new("127.0.0.1:0".parse().unwrap())
///     .with_transport(Transport::Ssl)
///     .with_tls(TlsConfig::new().with_identity(a).with_verify(TlsVerify::Pinned(pins.clone())));
/// // ... and node b likewise with identity b and the same pins.
/// assert_eq!(cfg_a.mesh_config().protocol_id(), "ANBM6pF8DhyLoKw2PEj8wwg9WbmxbYvmZt4d9ca3nJ7B");
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct TlsConfig {
    /// The certificate and key this node presents, as listener and (in
    /// pinned mode) as dialer. `None`: a fresh self-signed ECDSA P-256
    /// certificate is generated when the node binds, as py2p and js2p do.
    #[cfg(feature = "tls")]
    pub identity: Option<TlsIdentity>,
    /// How the certificates of peers are checked.
    pub verify: TlsVerify,
}

impl TlsConfig {
    /// The default: a generated certificate, any peer accepted.
    pub fn new() -> TlsConfig {
        TlsConfig::default()
    }

    /// Sets the certificate and key to present.
    #[cfg(feature = "tls")]
    pub fn with_identity(mut self, identity: TlsIdentity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Sets how peers' certificates are checked.
    pub fn with_verify(mut self, verify: TlsVerify) -> Self {
        self.verify = verify;
        self
    }
}

/// How a node checks the certificates of its TLS peers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsVerify {
    /// **Compatibility mode** (default), what py2p and js2p do: accept any
    /// server certificate **and do not check the TLS handshake signature**;
    /// listeners ask for no client certificate. Required to dial js2p,
    /// whose RSA-1024/SHA-1 certificate rustls otherwise refuses
    /// (`BadSignature`). Protects against passive eavesdropping only: no
    /// peer is authenticated.
    #[default]
    AcceptAny,
    /// Authenticate peers: as dialer, accept only a server whose certificate
    /// has one of these SHA-256 fingerprints (its handshake signature is
    /// checked normally); as listener, require a client certificate with
    /// one of these fingerprints. Both nodes present their
    /// [`TlsIdentity`], so list every node's fingerprint (your own too if
    /// nodes dial each other both ways). Only rs2p nodes can join: the
    /// references present no client certificate.
    Pinned(Vec<CertFingerprint>),
}

/// The SHA-256 digest of a certificate's DER encoding.
///
/// Written and parsed as 64 hex digits (colons allowed when parsing).
///
/// ```
/// use rs2p::config::CertFingerprint;
/// let f = CertFingerprint::of_der(b"not really a certificate");
/// let text = f.to_string();
/// assert_eq!(text.len(), 64);
/// assert_eq!(text.parse::<CertFingerprint>().unwrap(), f);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertFingerprint(pub [u8; 32]);

impl CertFingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> CertFingerprint {
        CertFingerprint(Sha256::digest(der).into())
    }
}

impl fmt::Display for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertFingerprint({self})")
    }
}

impl FromStr for CertFingerprint {
    type Err = Error;

    fn from_str(s: &str) -> Result<CertFingerprint> {
        let hex: Vec<u8> = s.bytes().filter(|b| *b != b':').collect();
        let bad = || {
            Error::Config(format!(
                "certificate fingerprint {s:?} is not 64 hex digits"
            ))
        };
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).map_err(|_| bad())?;
            out[i] = u8::from_str_radix(text, 16).map_err(|_| bad())?;
        }
        Ok(CertFingerprint(out))
    }
}

/// A certificate chain and its private key.
#[cfg(feature = "tls")]
#[derive(Clone)]
pub struct TlsIdentity {
    certs: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

#[cfg(feature = "tls")]
impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("fingerprint", &self.fingerprint())
            .field("chain_len", &self.certs.len())
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "tls")]
impl TlsIdentity {
    /// A fresh self-signed ECDSA P-256 certificate (any certificate works
    /// with the references, whose clients check nothing).
    pub fn generate() -> Result<TlsIdentity> {
        let made = rcgen::generate_simple_self_signed(vec!["rs2p".to_string()])
            .map_err(|e| Error::Config(format!("generating a TLS certificate: {e}")))?;
        let key = PrivateKeyDer::try_from(made.signing_key.serialize_der())
            .map_err(|e| Error::Config(format!("generated TLS key: {e}")))?;
        Ok(TlsIdentity {
            certs: vec![made.cert.der().clone()],
            key: Arc::new(key),
        })
    }

    /// A fresh self-signed ECDSA P-256 certificate and its private key, as
    /// PEM texts `(certificate, key)`: what `rs2p tls-keygen` writes, to be
    /// loaded with [`from_pem`](Self::from_pem) so that a node keeps one
    /// certificate (and fingerprint) across restarts.
    ///
    /// ```
    /// use rs2p::config::TlsIdentity;
    /// let (cert, key) = TlsIdentity::generate_pem()?;
    /// assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
    /// let id = TlsIdentity::from_pem(cert.as_bytes(), key.as_bytes())?;
    /// assert_eq!(id.fingerprint().to_string().len(), 64);
    /// # Ok::<(), rs2p::Error>(())
    /// ```
    pub fn generate_pem() -> Result<(String, String)> {
        let made = rcgen::generate_simple_self_signed(vec!["rs2p".to_string()])
            .map_err(|e| Error::Config(format!("generating a TLS certificate: {e}")))?;
        Ok((made.cert.pem(), made.signing_key.serialize_pem()))
    }

    /// Parses a PEM certificate chain (leaf first) and a PEM private key
    /// (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(cert_chain: &[u8], key: &[u8]) -> Result<TlsIdentity> {
        let certs = CertificateDer::pem_slice_iter(cert_chain)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Config(format!("TLS certificate PEM: {e}")))?;
        if certs.is_empty() {
            return Err(Error::Config(
                "no certificate in the TLS certificate PEM".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| Error::Config(format!("TLS private key PEM: {e}")))?;
        let identity = TlsIdentity {
            certs,
            key: Arc::new(key),
        };
        // Fail now, not when the node binds, if the key does not fit.
        provider()
            .key_provider
            .load_private_key(identity.key.clone_key())
            .map_err(|e| Error::Config(format!("TLS private key: {e}")))?;
        Ok(identity)
    }

    /// Reads [`from_pem`](Self::from_pem)'s inputs from files.
    pub fn from_pem_files(
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<TlsIdentity> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| Error::Config(format!("reading {}: {e}", p.display())))
        };
        TlsIdentity::from_pem(&read(cert_chain.as_ref())?, &read(key.as_ref())?)
    }

    /// The fingerprint of the leaf certificate (what peers pin).
    pub fn fingerprint(&self) -> CertFingerprint {
        CertFingerprint::of_der(self.certificate_der())
    }

    /// The DER encoding of the leaf certificate.
    pub fn certificate_der(&self) -> &[u8] {
        self.certs.first().map(|c| c.as_ref()).unwrap_or_default()
    }
}

#[cfg(feature = "tls")]
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(feature = "tls")]
impl TlsIdentity {
    /// The certificate chain, leaf first.
    pub(crate) fn certs(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    /// The private key.
    pub(crate) fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }
}
