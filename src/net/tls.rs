//! The `SSL` transport: the same frames inside a TLS stream (rustls with the
//! *ring* provider; TLS 1.3 and 1.2), as py2p and js2p speak it.
//!
//! In the references' scheme TLS only hides the traffic from a passive
//! eavesdropper: every node makes a throw-away self-signed certificate and
//! every client accepts any certificate, so an active attacker can sit in
//! the middle. rs2p does the same by default ([`TlsVerify::AcceptAny`]) so
//! that it can talk to them. Between rs2p nodes, [`TlsVerify::Pinned`]
//! authenticates both ends by certificate fingerprint.

use std::io;
#[cfg(feature = "tls")]
use std::net::SocketAddr;
#[cfg(feature = "tls")]
use std::sync::Arc;

#[cfg(feature = "tls")]
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
#[cfg(feature = "tls")]
use tokio_rustls::rustls::{
    self,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::WebPkiSupportedAlgorithms,
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
    CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme,
};
#[cfg(feature = "tls")]
use tokio_rustls::{TlsAcceptor, TlsConnector};

#[cfg(feature = "tls")]
use crate::config::tls::provider;
#[cfg(feature = "tls")]
use crate::config::tls::CertFingerprint;
use crate::config::tls::TlsConfig;
#[cfg(feature = "tls")]
use crate::config::tls::TlsIdentity;
#[cfg(feature = "tls")]
use crate::config::tls::TlsVerify;
use crate::error::{Error, Result};
#[cfg(feature = "tls")]
use crate::net::transport::FrameWrite;
use crate::net::transport::{BoxFuture, Io, Transport};

/// The server name a dialer asks for. No SNI is sent (the references send
/// none and check none), so it only has to be a valid DNS name.
#[cfg(feature = "tls")]
const SERVER_NAME: &str = "rs2p.invalid";

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
        .with_single_cert(identity.certs().to_vec(), identity.key().clone_key())
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
                .with_client_auth_cert(identity.certs().to_vec(), identity.key().clone_key())
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
        inline: None,
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
