//! TLS for the IMAP listeners: the rustls server configuration from a PEM
//! certificate chain and private key, and the self-signed certificate of
//! the embedded default, generated on first start and reused afterwards.
//!
//! Invariants: the crypto provider is aws-lc-rs, the one the rest of the
//! crate uses; a generated private key is written with owner-only
//! permissions and never replaced while its certificate exists; every error
//! names the file it is about.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// File names of the generated certificate and key in their directory.
pub const SELF_SIGNED_CERT: &str = "tls-cert.pem";
pub const SELF_SIGNED_KEY: &str = "tls-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a PEM certificate chain: {message}", path.display())]
    BadCertificate { path: PathBuf, message: String },
    #[error("{}: no PEM private key (PKCS#8, PKCS#1 or SEC1) found: {message}", path.display())]
    BadKey { path: PathBuf, message: String },
    #[error("certificate {} and key {} do not fit together: {source}", cert.display(), key.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The TLS configuration of a server holding the certificate chain in
/// `cert` (leaf first) and its private key in `key`, both PEM.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate {
            path: cert.to_owned(),
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::BadCertificate {
            path: cert.to_owned(),
            message: "no CERTIFICATE section".into(),
        });
    }
    let key_pem = zeroize::Zeroizing::new(read(key)?);
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::BadKey {
        path: key.to_owned(),
        message: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mismatch = |source| TlsError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    };
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(mismatch)?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(mismatch)?;
    Ok(Arc::new(config))
}

/// The paths of a self-signed certificate and key in `dir`, generated for
/// `names` (DNS names and IP addresses, as subject alternative names) if
/// they do not exist yet. An existing pair is reused as it is, so clients
/// that pinned the certificate keep trusting it.
pub fn ensure_self_signed(dir: &Path, names: &[String]) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert = dir.join(SELF_SIGNED_CERT);
    let key = dir.join(SELF_SIGNED_KEY);
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| TlsError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let generated = rcgen::generate_simple_self_signed(names.to_vec())?;
    // The key first: a certificate without its key is never left behind.
    write_replacing(&key, generated.signing_key.serialize_pem().as_bytes(), true)?;
    write_replacing(&cert, generated.cert.pem().as_bytes(), false)?;
    tracing::info!(path = %cert.display(), ?names, "generated a self-signed certificate");
    Ok((cert, key))
}

/// The names a self-signed certificate of this machine covers: loopback
/// and the host name, so that a client on the same machine or the local
/// network can pin it.
pub fn default_names() -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".into(), "::1".into()];
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        if !host.is_empty() && host != "localhost" {
            names.push(host.to_owned());
        }
    }
    names
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over
/// `path`, so a crash never leaves half a file; `private` files are
/// readable by their owner only.
fn write_replacing(path: &Path, bytes: &[u8], private: bool) -> Result<(), TlsError> {
    use std::io::Write;
    let err = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, if private { 0o600 } else { 0o644 });
    let mut file = options.open(&tmp).map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_is_generated_once_private_and_loads() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("created");
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let (cert, key) = ensure_self_signed(&dir, &names).unwrap();
        server_config(&cert, &key).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "key mode {mode:o}");
        }
        let first = std::fs::read(&cert).unwrap();
        let (cert2, key2) = ensure_self_signed(&dir, &names).unwrap();
        assert_eq!((&cert2, &key2), (&cert, &key));
        assert_eq!(std::fs::read(&cert).unwrap(), first, "reused, not replaced");
        // A lost certificate is generated again, with a new key.
        let old_key = std::fs::read(&key).unwrap();
        std::fs::remove_file(&cert).unwrap();
        ensure_self_signed(&dir, &names).unwrap();
        assert_ne!(std::fs::read(&key).unwrap(), old_key);
        server_config(&cert, &key).unwrap();
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = ensure_self_signed(dir.path(), &["localhost".into()]).unwrap();
        let missing = dir.path().join("nope.pem");
        let e = server_config(&missing, &key).unwrap_err().to_string();
        assert!(e.contains("nope.pem"), "{e}");

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "hello").unwrap();
        let e = server_config(&garbage, &key).unwrap_err().to_string();
        assert!(
            e.contains("garbage.pem") && e.contains("certificate"),
            "{e}"
        );
        let e = server_config(&cert, &garbage).unwrap_err().to_string();
        assert!(
            e.contains("garbage.pem") && e.contains("private key"),
            "{e}"
        );
        // The certificate where the key should be.
        let e = server_config(&cert, &cert).unwrap_err().to_string();
        assert!(e.contains("tls-cert.pem"), "{e}");

        // A key of another certificate.
        let other = tempfile::tempdir().unwrap();
        let (_, other_key) = ensure_self_signed(other.path(), &["localhost".into()]).unwrap();
        let e = server_config(&cert, &other_key).unwrap_err().to_string();
        assert!(e.contains("do not fit"), "{e}");
    }
}
