//! The `SSL` transport: the same frames inside a TLS stream (rustls with the
//! *ring* provider; TLS 1.3 and 1.2), as py2p and js2p speak it.
//!
//! In the references' scheme TLS only hides the traffic from a passive
//! eavesdropper: every node makes a throw-away self-signed certificate and
//! every client accepts any certificate, so an active attacker can sit in
//! the middle. rs2p does the same by default ([`TlsVerify::AcceptAny`]) so
//! that it can talk to them. Between rs2p nodes, [`TlsVerify::Pinned`]
//! authenticates both ends by certificate fingerprint.

use std::fmt;
use std::io;
#[cfg(feature = "tls")]
use std::net::SocketAddr;
#[cfg(feature = "tls")]
use std::path::Path;
use std::str::FromStr;
#[cfg(feature = "tls")]
use std::sync::Arc;

use sha2::{Digest, Sha256};
#[cfg(feature = "tls")]
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
#[cfg(feature = "tls")]
use tokio_rustls::rustls::{
    self,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
    CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme,
};
#[cfg(feature = "tls")]
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::error::{Error, Result};
#[cfg(feature = "tls")]
use crate::net::transport::FrameWrite;
use crate::net::transport::{BoxFuture, Io, Transport};

/// The server name a dialer asks for. No SNI is sent (the references send
/// none and check none), so it only has to be a valid DNS name.
#[cfg(feature = "tls")]
const SERVER_NAME: &str = "rs2p.invalid";

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
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(feature = "tls")]
fn tls_error(e: rustls::Error) -> Error {
    Error::Config(format!("TLS setup: {e}"))
}

/// The `SSL` transport.
#[cfg(feature = "tls")]
pub(crate) struct Tls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

#[cfg(feature = "tls")]
impl Tls {
    /// Builds the server and client sides; generates a certificate when the
    /// configuration has none.
    pub(crate) fn new(cfg: &TlsConfig) -> Result<Tls> {
        let identity = match &cfg.identity {
            Some(i) => i.clone(),
            None => TlsIdentity::generate()?,
        };
        let provider = provider();
        let algs = provider.signature_verification_algorithms;

        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?;
        let server = match &cfg.verify {
            TlsVerify::AcceptAny => server.with_no_client_auth(),
            TlsVerify::Pinned(pins) => server.with_client_cert_verifier(Arc::new(Pinned {
                pins: pins.clone(),
                algs,
            })),
        }
        .with_single_cert(identity.certs.clone(), identity.key.clone_key())
        .map_err(tls_error)?;

        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?
            .dangerous();
        let mut client = match &cfg.verify {
            TlsVerify::AcceptAny => client
                .with_custom_certificate_verifier(Arc::new(AcceptAny { algs }))
                .with_no_client_auth(),
            TlsVerify::Pinned(pins) => client
                .with_custom_certificate_verifier(Arc::new(Pinned {
                    pins: pins.clone(),
                    algs,
                }))
                .with_client_auth_cert(identity.certs.clone(), identity.key.clone_key())
                .map_err(tls_error)?,
        };
        client.enable_sni = false;

        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }
}

#[cfg(feature = "tls")]
impl Transport for Tls {
    fn accept(&self, tcp: TcpStream) -> BoxFuture<'static, io::Result<Io>> {
        let acceptor = self.acceptor.clone();
        Box::pin(async move {
            let _ = tcp.set_nodelay(true);
            let peer = tcp.peer_addr()?;
            let tls = acceptor.accept(tcp).await?;
            Ok(split(tls, peer))
        })
    }

    fn connect(&self, host: String, port: u16) -> BoxFuture<'static, io::Result<Io>> {
        let connector = self.connector.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            let peer = tcp.peer_addr()?;
            let name = ServerName::try_from(SERVER_NAME)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let tls = connector.connect(name, tcp).await?;
            Ok(split(tls, peer))
        })
    }
}

#[cfg(feature = "tls")]
fn split<S>(stream: S, peer: SocketAddr) -> Io
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(stream);
    Io {
        read: Box::new(r),
        write: Box::new(FlushWrite(w)),
        peer,
    }
}

/// Writes an item and flushes: a TLS stream may keep encrypted records
/// buffered after `write` returns, which would stall the item.
#[cfg(feature = "tls")]
struct FlushWrite<W>(W);

#[cfg(feature = "tls")]
impl<W: AsyncWrite + Send + Unpin> FrameWrite for FlushWrite<W> {
    fn write<'a>(&'a mut self, item: &'a [u8]) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            self.0.write_all(item).await?;
            self.0.flush().await
        })
    }
    fn shutdown(&mut self) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(self.0.shutdown())
    }
}

/// [`TlsVerify::AcceptAny`]: the references' "verify nothing" client.
#[cfg(feature = "tls")]
#[derive(Debug)]
struct AcceptAny {
    algs: WebPkiSupportedAlgorithms,
}

#[cfg(feature = "tls")]
impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    // The signature proves possession of a key nobody vouches for, so
    // checking it adds nothing here, and js2p's RSA-1024 key fails it.
    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// [`TlsVerify::Pinned`], for both directions.
#[cfg(feature = "tls")]
#[derive(Debug)]
struct Pinned {
    pins: Vec<CertFingerprint>,
    algs: WebPkiSupportedAlgorithms,
}

#[cfg(feature = "tls")]
impl Pinned {
    fn check(&self, cert: &CertificateDer<'_>) -> std::result::Result<(), rustls::Error> {
        if self.pins.contains(&CertFingerprint::of_der(cert)) {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }
}

#[cfg(feature = "tls")]
impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(feature = "tls")]
impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The `SSL` transport in a build without the `tls` feature: it cannot be
/// made, so binding a [`Transport::Ssl`](crate::Transport::Ssl) node fails
/// with [`Error::FeatureDisabled`].
#[cfg(not(feature = "tls"))]
pub(crate) enum Tls {}

#[cfg(not(feature = "tls"))]
impl Tls {
    pub(crate) fn new(_cfg: &TlsConfig) -> Result<Tls> {
        Err(Error::FeatureDisabled("tls"))
    }
}

#[cfg(not(feature = "tls"))]
impl Transport for Tls {
    fn accept(&self, _tcp: TcpStream) -> BoxFuture<'static, io::Result<Io>> {
        match *self {}
    }

    fn connect(&self, _host: String, _port: u16) -> BoxFuture<'static, io::Result<Io>> {
        match *self {}
    }
}

#[cfg(all(test, feature = "tls"))]
mod tests {
    use super::*;

    #[test]
    fn generated_identity_loads() {
        let id = TlsIdentity::generate().unwrap();
        assert!(!id.certificate_der().is_empty());
        assert!(Tls::new(&TlsConfig::new().with_identity(id.clone())).is_ok());
        let pinned = TlsConfig::new()
            .with_identity(id.clone())
            .with_verify(TlsVerify::Pinned(vec![id.fingerprint()]));
        assert!(Tls::new(&pinned).is_ok());
    }

    #[test]
    fn pem_round_trip_and_errors() {
        let made = rcgen::generate_simple_self_signed(vec!["x".to_string()]).unwrap();
        let cert = made.cert.pem();
        let key = made.signing_key.serialize_pem();
        let id = TlsIdentity::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
        assert_eq!(id.fingerprint(), CertFingerprint::of_der(made.cert.der()));
        assert!(TlsIdentity::from_pem(b"", key.as_bytes()).is_err());
        assert!(TlsIdentity::from_pem(cert.as_bytes(), b"junk").is_err());
        assert!("zz".parse::<CertFingerprint>().is_err());
        let with_colons = id
            .fingerprint()
            .0
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(
            with_colons.parse::<CertFingerprint>().unwrap(),
            id.fingerprint()
        );
    }
}
