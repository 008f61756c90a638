//! SHELL: the TLS side of a health check with rustls (ring provider): the client
//! configuration built once per (service, server) — reading the CA file when the check
//! verifies — and the handshake over a connected socket.
//! Side effects: reads the CA file once; TLS handshakes with the real servers.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::core::health::{Failure, TlsCheck};

/// A server's TLS check, ready to handshake.
pub struct Tls {
    /// None when the configuration could not be built (logged once): every check fails.
    connector: Option<TlsConnector>,
    name: ServerName<'static>,
}

impl Tls {
    /// The TLS side of `check` for server `addr`; `http_host` is the HTTP check's Host.
    pub fn new(check: &TlsCheck, http_host: Option<&str>, addr: SocketAddr, service: &str) -> Tls {
        let name = [check.server_name.as_deref(), http_host]
            .into_iter()
            .flatten()
            .find_map(|n| ServerName::try_from(n.to_string()).ok())
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let connector = match client_config(check) {
            Ok(config) => Some(TlsConnector::from(Arc::new(config))),
            Err(why) => {
                tracing::warn!(
                    service = %service, server = %addr, ca_file = ?check.ca_file, error = %why,
                    "tls check cannot start: every check fails"
                );
                None
            }
        };
        Tls { connector, name }
    }

    /// Handshakes over `tcp`; any TLS failure (certificate included) is [`Failure::Tls`].
    pub async fn handshake(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>, Failure> {
        let connector = self.connector.as_ref().ok_or(Failure::Tls)?;
        connector
            .connect(self.name.clone(), tcp)
            .await
            .map_err(|_| Failure::Tls)
    }
}

fn client_config(check: &TlsCheck) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = match &check.ca_file {
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider))),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| e.to_string())? {
                let cert = cert.map_err(|e| e.to_string())?;
                roots.add(cert).map_err(|e| e.to_string())?;
            }
            if roots.is_empty() {
                return Err("no certificate in the CA file".into());
            }
            builder.with_root_certificates(roots)
        }
    };
    Ok(config.with_no_client_auth())
}

/// `tls: true`: any certificate is accepted, as keepalived's SSL_GET does, but the handshake's
/// signature is still checked against the certificate's key, so the server proves it holds
/// the key of the certificate it sent (RFC 8446 §4.4.3).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
