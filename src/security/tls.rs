//! TLS for every connection (rustls, `ring` provider): the scheduler's
//! self-signed certificate (made once, kept in the journal directory), the
//! client side that pins its SHA-256 fingerprint, and `Transport`, the byte
//! stream a `Conn` frames (plain TCP or TLS).

use super::{perms, SecurityError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring as provider, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The name a client asks for in its TLS hello: the certificate is pinned
/// by fingerprint, so no name is checked.
const SERVER_NAME: &str = "actord";

/// The first byte of every TLS record that opens a handshake.
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(provider::default_provider())
}

/// Lowercase hex SHA-256 of a DER certificate: what the scheduler file carries.
pub fn fingerprint(cert: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The scheduler's certificate: the acceptor and the fingerprint to publish.
#[derive(Clone)]
pub struct ServerTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub fingerprint: String,
}

impl ServerTls {
    /// Loads `cert` and `key` (PEM files); the first certificate is the one pinned.
    pub fn load(cert: &Path, key: &Path) -> Result<ServerTls, SecurityError> {
        // PEM certificates and keys, chains included, are a few KiB.
        let read = |path: &Path| super::perms::read_bounded(path, 1 << 20);
        ServerTls::from_pem(&read(cert)?, &read(key)?).map_err(|(which, message)| SecurityError::File {
            path: if which == "key" { key } else { cert }.to_path_buf(),
            message,
        })
    }

    /// From PEM text; an error says which of the two (`cert`, `key`) is wrong.
    fn from_pem(cert: &[u8], key: &[u8]) -> Result<ServerTls, (&'static str, String)> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<_, _>>()
            .map_err(|e| ("cert", format!("not a PEM certificate: {e}")))?;
        let first = certs.first().ok_or(("cert", "holds no certificate".to_string()))?;
        let fingerprint = fingerprint(first);
        let key =
            PrivateKeyDer::from_pem_slice(key).map_err(|e| ("key", format!("not a PEM private key: {e}")))?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ("cert", e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| ("key", format!("the certificate and key do not go together: {e}")))?;
        Ok(ServerTls { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)), fingerprint })
    }

    /// The certificate kept in `dir` (`tls-cert.pem`, `tls-key.pem`, mode
    /// 0600), made on first use.
    pub fn self_signed_in(dir: &Path) -> Result<ServerTls, SecurityError> {
        let (cert, key) = (dir.join("tls-cert.pem"), dir.join("tls-key.pem"));
        if !cert.exists() || !key.exists() {
            let (cert_pem, key_pem) = generate()?;
            perms::write_private(&key, key_pem.as_bytes())?;
            perms::write_private(&cert, cert_pem.as_bytes())?;
            tracing::info!(cert = %cert.display(), "created a self-signed TLS certificate");
        }
        ServerTls::load(&cert, &key)
    }

    /// A certificate held in memory only (a scheduler without a journal).
    pub fn ephemeral() -> Result<ServerTls, SecurityError> {
        let (cert, key) = generate()?;
        ServerTls::from_pem(cert.as_bytes(), key.as_bytes()).map_err(|(_, m)| SecurityError::Tls(m))
    }
}

/// A new self-signed certificate and its key, both PEM.
fn generate() -> Result<(String, String), SecurityError> {
    let names = vec![SERVER_NAME.to_string(), crate::util::hostname()];
    let key = rcgen::KeyPair::generate().map_err(|e| SecurityError::Tls(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(names).map_err(|e| SecurityError::Tls(e.to_string()))?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "actord scheduler");
    // Pinned by fingerprint, so it need not expire soon: a new one would
    // change the fingerprint under running workers.
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(4000, 1, 1);
    let cert = params.self_signed(&key).map_err(|e| SecurityError::Tls(e.to_string()))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Accepts exactly the certificate whose SHA-256 is `expected`; signatures
/// are checked as usual, so the peer must hold its key.
#[derive(Debug)]
struct Pinned {
    expected: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = fingerprint(end_entity);
        if got == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the scheduler's certificate (sha256 {got}) is not the one the scheduler file pins (sha256 {})",
                self.expected
            )))
        }
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
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Opens TLS on `tcp`, accepting only the certificate with `fingerprint`.
pub async fn connect(tcp: TcpStream, fingerprint: &str) -> Result<Transport, std::io::Error> {
    let provider = provider();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            expected: fingerprint.to_ascii_lowercase(),
            provider,
        }))
        .with_no_client_auth();
    let name = ServerName::try_from(SERVER_NAME).map_err(std::io::Error::other)?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
    Ok(Transport::Tls(Box::new(tokio_rustls::TlsStream::Client(tls))))
}

/// The bytes under a `Conn`: plain TCP, or TLS over it.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_is_made_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = ServerTls::self_signed_in(dir.path()).unwrap();
        let b = ServerTls::self_signed_in(dir.path()).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint, "reused across starts");
        assert_eq!(a.fingerprint.len(), 64);
        for f in ["tls-cert.pem", "tls-key.pem"] {
            assert_eq!(perms::mode(&dir.path().join(f)).unwrap(), 0o600, "{f}");
        }
        let other = ServerTls::ephemeral().unwrap();
        assert_ne!(other.fingerprint, a.fingerprint);
    }

    #[test]
    fn a_mismatched_key_or_garbage_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        ServerTls::self_signed_in(dir.path()).unwrap();
        let (_, other_key) = generate().unwrap();
        let key = dir.path().join("other.pem");
        std::fs::write(&key, other_key).unwrap();
        let err = ServerTls::load(&dir.path().join("tls-cert.pem"), &key).err().unwrap().to_string();
        assert!(err.contains("do not go together"), "{err}");
        let err = ServerTls::load(&key, &key).err().unwrap().to_string();
        assert!(err.contains("holds no certificate"), "{err}");
    }
}
