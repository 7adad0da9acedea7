//! TLS on the ingest listener: the server certificate and key (`--tls-cert-file`,
//! `--tls-key-file`) and, with `--client-ca-file`, client certificates verified against
//! that CA. rustls with the ring provider, as the rest of the tree uses.
//!
//! Client certificates are *requested*, not required, in the handshake: a client that
//! sends none still connects and is then answered `401` like any request without a
//! credential (counted, and a bearer token or basic auth may still admit it), while a
//! certificate that does not chain to the CA fails the handshake. The configuration is
//! rebuilt from the files when they change; connections already open keep the one they
//! started with. ALPN offers HTTP/2 and HTTP/1.1, as Go's client (Prometheus) asks.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The files TLS is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// A TLS file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} from {path}: {reason}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{path} holds no {what}")]
    Empty { what: &'static str, path: PathBuf },
    #[error("the TLS configuration is not usable: {0}")]
    Config(String),
}

fn pem_error(what: &'static str, path: &Path) -> impl Fn(rustls_pki_types::pem::Error) -> TlsError {
    move |error| TlsError::Pem {
        what,
        path: path.to_owned(),
        reason: error.to_string(),
    }
}

fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_error(what, path))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error(what, path))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Builds the server configuration from the files as they are now.
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates("a certificate", &files.cert)?;
    let key =
        PrivateKeyDer::from_pem_file(&files.key).map_err(pem_error("a private key", &files.key))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for ca in certificates("a CA certificate", path)? {
                roots
                    .add(ca)
                    .map_err(|e| TlsError::Config(format!("{}: {e}", path.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                // Requested, not required: a request without one gets a counted 401.
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("{}: {e}", files.key.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The TLS configuration in force, rebuilt when its files change.
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Reads the files; any that cannot be used is an error.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let config = server_config(&files)?;
        Ok(Self {
            files,
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// The files to follow for changes.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.files.cert.clone(), self.files.key.clone()];
        files.extend(self.files.client_ca.clone());
        files
    }

    /// Rebuilds the configuration; on error the one in force stays (a certificate and
    /// its key are rarely swapped at the same instant: the next check picks up the pair).
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.files)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        Ok(())
    }

    /// An acceptor for a new connection, with the configuration in force now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}
