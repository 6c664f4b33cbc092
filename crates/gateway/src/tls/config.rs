//! The certificate and key files, and the rustls `ServerConfig` made from them.
//!
//! [`CertFiles::load`] reads a PEM chain and a PEM private key and checks everything that
//! can be checked before serving: readable, a certificate and a key present, the leaf not
//! expired, a key type rustls can sign with (RSA, ECDSA P-256/P-384, Ed25519), and the
//! key matching the leaf. Each refusal is one [`TlsFileError`] naming the flag, the file
//! and the problem, with the words operators and tests look for ("cannot read", "no
//! certificate", "no private key", "expired", "does not match", "unsupported").
//!
//! [`ServerTls`] is one listener's TLS: its files, the current `Arc<ServerConfig>`, and
//! the ticketer and session cache that outlive reloads (a ticket issued before a SIGHUP
//! still resumes after it). [`ServerTls::reload`] builds a new config from the same paths
//! and keeps the old one if anything is wrong. Reading files is the only IO here, done
//! at startup and on SIGHUP by the caller's thread, never by a worker.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::server::{ProducesTickets, ServerSessionMemoryCache, StoresServerSessions};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{Error as RustlsError, InconsistentKeys, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The one ALPN protocol offered: WebSocket upgrades (and the admin API) are HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// TLS 1.2 sessions remembered for session-ID resumption (TLS 1.3 and ticket-capable
/// TLS 1.2 clients resume with stateless tickets instead); about 200 bytes each.
pub const SESSION_CACHE_SIZE: usize = 4096;

/// TLS 1.3 tickets sent after each full handshake: one is enough for the next
/// reconnect, and each costs a record on the wire and an encryption.
pub const TLS13_TICKETS: usize = 1;

/// Which listener a pair of files serves: its flags and its metric label.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The WebSocket listener (`--tls-cert`, `--tls-key`).
    Ws,
    /// The admin listener (`--admin-tls-cert`, `--admin-tls-key`).
    Admin,
}

impl Listener {
    /// The certificate flag.
    pub const fn cert_flag(self) -> &'static str {
        match self {
            Listener::Ws => "--tls-cert",
            Listener::Admin => "--admin-tls-cert",
        }
    }

    /// The key flag.
    pub const fn key_flag(self) -> &'static str {
        match self {
            Listener::Ws => "--tls-key",
            Listener::Admin => "--admin-tls-key",
        }
    }

    /// The `listener` label of `pingwheel_tls_certificate_expiry_timestamp_seconds`.
    pub const fn as_label(self) -> &'static str {
        match self {
            Listener::Ws => "ws",
            Listener::Admin => "admin",
        }
    }
}

/// Why a certificate or key file cannot be served. Every variant names the flag and the
/// path; the `Display` text is the one line the gateway prints before exiting (or logs
/// when a reload fails).
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    /// The file could not be read.
    #[error("{flag} {}: cannot read the file: {source}", path.display())]
    Unreadable {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The certificate file holds no `CERTIFICATE` PEM block.
    #[error("{flag} {}: no certificate in the file (expected PEM 'BEGIN CERTIFICATE')", path.display())]
    NoCertificate {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no private-key PEM block.
    #[error(
        "{flag} {}: no private key in the file (expected PEM 'BEGIN PRIVATE KEY', 'BEGIN EC PRIVATE KEY' or 'BEGIN RSA PRIVATE KEY')",
        path.display()
    )]
    NoKey {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A PEM block is malformed, or the leaf certificate is not valid X.509.
    #[error("{flag} {}: malformed: {message}", path.display())]
    Malformed {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The leaf certificate's notAfter is in the past.
    #[error("{flag} {}: the certificate expired at {not_after} (notAfter)", path.display())]
    Expired {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// The leaf's notAfter, as the certificate says it.
        not_after: String,
    },
    /// The key is of a type rustls cannot sign with.
    #[error("{flag} {}: unsupported private key ({message}); use RSA, ECDSA P-256 or Ed25519", path.display())]
    Unsupported {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What rustls said.
        message: String,
    },
    /// The key is not the leaf certificate's.
    #[error("{flag} {}: the private key does not match the certificate in {}", path.display(), cert.display())]
    Mismatch {
        /// The key flag.
        flag: &'static str,
        /// The key file.
        path: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// rustls refused the configuration for another reason.
    #[error("{flag} {}: cannot use the certificate: {message}", path.display())]
    Rejected {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What rustls said.
        message: String,
    },
}

/// One listener's certificate chain and key files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    /// Which listener (for flag names and the metric label).
    pub listener: Listener,
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
}

/// A checked certificate chain and signing key, ready to serve.
#[derive(Clone)]
pub struct LoadedCert {
    /// The chain and the key rustls signs with.
    pub certified: Arc<CertifiedKey>,
    /// The leaf's notAfter, unix seconds.
    pub not_after: i64,
    /// The leaf's serial number, upper-case hex (for logs).
    pub serial: String,
}

impl fmt::Debug for LoadedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedCert")
            .field("not_after", &self.not_after)
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

/// The crypto provider: rustls's default, aws-lc-rs, with the cipher suites whose keys
/// are 32 bytes: AES-256-GCM and ChaCha20-Poly1305, for TLS 1.3 and 1.2 (every current
/// client offers one of them). An established session keeps only its raw keys and
/// rebuilds the AEAD from them per batch (`session.rs`), which rustls's public key type
/// allows for 32-byte keys only; AES-128-GCM is left out for that reason.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::CipherSuite as S;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.retain(|suite| {
        matches!(
            suite.suite(),
            S::TLS13_AES_256_GCM_SHA384
                | S::TLS13_CHACHA20_POLY1305_SHA256
                | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
                | S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                | S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        )
    });
    Arc::new(provider)
}

impl CertFiles {
    /// Reads and checks both files at `now` (see the module docs for what is checked).
    ///
    /// # Errors
    /// The first problem found, as a [`TlsFileError`].
    pub fn load(&self, now: SystemTime) -> Result<LoadedCert, TlsFileError> {
        let cert_flag = self.listener.cert_flag();
        let key_flag = self.listener.key_flag();
        let cert_pem = read(cert_flag, &self.cert)?;
        let key_pem = read(key_flag, &self.key)?;
        let chain = parse_chain(cert_flag, &self.cert, &cert_pem)?;
        let (not_after, not_after_text, serial) = leaf_validity(cert_flag, &self.cert, &chain[0])?;
        let now_secs = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        if not_after < now_secs {
            return Err(TlsFileError::Expired {
                flag: cert_flag,
                path: self.cert.clone(),
                not_after: not_after_text,
            });
        }
        let key = parse_key(key_flag, &self.key, &key_pem)?;
        let signer = provider().key_provider.load_private_key(key).map_err(|e| {
            TlsFileError::Unsupported {
                flag: key_flag,
                path: self.key.clone(),
                message: e.to_string(),
            }
        })?;
        let certified = CertifiedKey::new(chain, signer);
        match certified.keys_match() {
            Ok(()) | Err(RustlsError::InconsistentKeys(InconsistentKeys::Unknown)) => {}
            Err(RustlsError::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
                return Err(TlsFileError::Mismatch {
                    flag: key_flag,
                    path: self.key.clone(),
                    cert: self.cert.clone(),
                });
            }
            Err(e) => {
                return Err(TlsFileError::Rejected {
                    flag: key_flag,
                    path: self.key.clone(),
                    message: e.to_string(),
                });
            }
        }
        Ok(LoadedCert {
            certified: Arc::new(certified),
            not_after,
            serial,
        })
    }
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError::Unreadable {
        flag,
        path: path.to_owned(),
        source,
    })
}

fn parse_chain(
    flag: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsFileError::Malformed {
            flag,
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsFileError::NoCertificate {
            flag,
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

fn parse_key(
    flag: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsFileError::NoKey {
            flag,
            path: path.to_owned(),
        },
        other => TlsFileError::Malformed {
            flag,
            path: path.to_owned(),
            message: other.to_string(),
        },
    })
}

/// The leaf's notAfter (unix seconds and as text) and serial.
fn leaf_validity(
    flag: &'static str,
    path: &Path,
    leaf: &CertificateDer<'_>,
) -> Result<(i64, String, String), TlsFileError> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| {
        TlsFileError::Malformed {
            flag,
            path: path.to_owned(),
            message: format!("the first certificate is not valid X.509: {e}"),
        }
    })?;
    let not_after = cert.validity().not_after;
    Ok((
        not_after.timestamp(),
        not_after.to_string(),
        cert.raw_serial_as_string().replace(':', "").to_uppercase(),
    ))
}

/// The `ServerConfig` for `cert`: TLS 1.3 and 1.2, no client certificates, ALPN
/// `http/1.1`, tickets from `ticketer` and TLS 1.2 session IDs in `cache`.
pub fn server_config(
    cert: &LoadedCert,
    ticketer: Arc<dyn ProducesTickets>,
    cache: Arc<dyn StoresServerSessions>,
) -> Result<Arc<ServerConfig>, RustlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(Arc::clone(
            &cert.certified,
        ))));
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    config.ticketer = ticketer;
    config.session_storage = cache;
    config.send_tls13_tickets = TLS13_TICKETS;
    // After the handshake the session takes the traffic keys over from rustls (and
    // frees rustls's state): see `session.rs`.
    config.enable_secret_extraction = true;
    Ok(Arc::new(config))
}

/// One listener's TLS: its files, what was last loaded from them, and the pieces that
/// outlive reloads. See the module docs.
pub struct ServerTls {
    files: CertFiles,
    ticketer: Arc<dyn ProducesTickets>,
    cache: Arc<dyn StoresServerSessions>,
    current: Arc<ServerConfig>,
    loaded: LoadedCert,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .field("loaded", &self.loaded)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads `files` at `now` and builds the first config.
    ///
    /// # Errors
    /// See [`CertFiles::load`].
    pub fn load(files: CertFiles, now: SystemTime) -> Result<ServerTls, TlsFileError> {
        let loaded = files.load(now)?;
        let ticketer =
            rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| TlsFileError::Rejected {
                flag: files.listener.cert_flag(),
                path: files.cert.clone(),
                message: format!("no ticketer: {e}"),
            })?;
        let cache: Arc<dyn StoresServerSessions> =
            ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
        let current = build(&files, &loaded, &ticketer, &cache)?;
        Ok(ServerTls {
            files,
            ticketer,
            cache,
            current,
            loaded,
        })
    }

    /// Reads the same files again at `now`; on success new connections get the new
    /// config from [`ServerTls::config`]. On failure nothing changes.
    ///
    /// # Errors
    /// See [`CertFiles::load`].
    pub fn reload(&mut self, now: SystemTime) -> Result<&LoadedCert, TlsFileError> {
        let loaded = self.files.load(now)?;
        self.current = build(&self.files, &loaded, &self.ticketer, &self.cache)?;
        self.loaded = loaded;
        Ok(&self.loaded)
    }

    /// The config new connections get.
    pub fn config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.current)
    }

    /// What is being served.
    pub fn loaded(&self) -> &LoadedCert {
        &self.loaded
    }

    /// The files.
    pub fn files(&self) -> &CertFiles {
        &self.files
    }
}

fn build(
    files: &CertFiles,
    loaded: &LoadedCert,
    ticketer: &Arc<dyn ProducesTickets>,
    cache: &Arc<dyn StoresServerSessions>,
) -> Result<Arc<ServerConfig>, TlsFileError> {
    server_config(loaded, Arc::clone(ticketer), Arc::clone(cache)).map_err(|e| {
        TlsFileError::Rejected {
            flag: files.listener.cert_flag(),
            path: files.cert.clone(),
            message: e.to_string(),
        }
    })
}
