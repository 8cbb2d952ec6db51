//! TLS for the IMAP listeners: the rustls server configuration from a PEM
//! certificate chain and private key, the certificate replaced while the
//! server runs ([`ReloadableCert`], on SIGHUP), and the self-signed
//! certificate of the embedded default: generated on first start for the
//! host name, valid about a year, reused afterwards and renewed (same key)
//! at a start or reload within a month of its end.
//!
//! Invariants: the crypto provider is aws-lc-rs, the one the rest of the
//! crate uses; a generated private key is written with owner-only
//! permissions and never replaced while its certificate exists; every error
//! names the file it is about; a certificate that fails to load never
//! replaces the one being served.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

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
    #[error("TLS protocol versions: {0}")]
    Protocols(rustls::Error),
}

/// The TLS configuration of a server holding the certificate chain in
/// `cert` (leaf first) and its private key in `key`, both PEM.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let source = CertSource::Files {
        cert: cert.to_owned(),
        key: key.to_owned(),
    };
    Arc::new(ReloadableCert::load(source)?).server_config()
}

/// The chain in `cert` (leaf first) and the private key in `key`, both PEM,
/// checked to fit together.
pub fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
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
    CertifiedKey::from_der(chain, private_key, &provider()).map_err(|source| TlsError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    })
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// Where the server's certificate comes from, read again at each reload.
#[derive(Clone, Debug)]
pub enum CertSource {
    /// A chain and key in PEM files (`imap.certificate`, `imap.private_key`).
    Files { cert: PathBuf, key: PathBuf },
    /// The self-signed pair in `dir` for `names`, generated if missing and
    /// renewed near its end ([`ensure_self_signed`]).
    SelfSigned { dir: PathBuf, names: Vec<String> },
}

impl CertSource {
    /// Reads (for a self-signed pair: first makes or renews) the
    /// certificate; returns it with the path of its certificate file.
    fn load(&self) -> Result<(CertifiedKey, PathBuf), TlsError> {
        let (cert, key) = match self {
            CertSource::Files { cert, key } => (cert.clone(), key.clone()),
            CertSource::SelfSigned { dir, names } => ensure_self_signed(dir, names)?,
        };
        Ok((certified_key(&cert, &key)?, cert))
    }
}

/// The certificate the server presents, replaceable while it runs: every
/// TLS handshake (implicit TLS and STARTTLS alike) asks it for the current
/// one, so after [`reload`](Self::reload) new connections get the new
/// certificate, and connections already open keep the session they have.
#[derive(Debug)]
pub struct ReloadableCert {
    source: CertSource,
    /// The certificate file the current certificate was read from.
    path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadableCert {
    /// Loads the certificate of `source`; fails as a start should.
    pub fn load(source: CertSource) -> Result<ReloadableCert, TlsError> {
        let (key, path) = source.load()?;
        Ok(ReloadableCert {
            source,
            path,
            current: RwLock::new(Arc::new(key)),
        })
    }

    /// Reads the certificate again from its source and serves it from the
    /// next handshake on. On any error the certificate being served stays,
    /// and the error (naming the file) is returned.
    pub fn reload(&self) -> Result<(), TlsError> {
        let (key, _) = self.source.load()?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        Ok(())
    }

    /// The certificate file (to tell users what to pin when self-signed).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_self_signed(&self) -> bool {
        matches!(self.source, CertSource::SelfSigned { .. })
    }

    /// The current certificate.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A server configuration presenting this certificate, whichever it is
    /// at the time of each handshake.
    pub fn server_config(self: Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let config = ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Protocols)?
            .with_no_client_auth()
            .with_cert_resolver(self);
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// How long a generated certificate is valid: about a year, like the
/// certificates clients see elsewhere (one valid until 4096 looks wrong to
/// them, and to anyone reading it).
pub const SELF_SIGNED_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// A generated certificate this close to its end (or past it) is renewed
/// at start, with the same key.
pub const SELF_SIGNED_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// The paths of a self-signed certificate and key in `dir`, generated for
/// `names` if they do not exist yet: the first name is the subject's
/// common name, every name a subject alternative name (DNS names and IP
/// addresses). An existing pair is reused as it is, so clients that
/// pinned the certificate keep trusting it, unless the certificate ends
/// within [`SELF_SIGNED_RENEW_BEFORE`]: then it is made again from the
/// same key, valid for [`SELF_SIGNED_VALIDITY`] from now.
pub fn ensure_self_signed(dir: &Path, names: &[String]) -> Result<(PathBuf, PathBuf), TlsError> {
    ensure_self_signed_at(dir, names, SystemTime::now())
}

/// [`ensure_self_signed`] with the current time given.
pub fn ensure_self_signed_at(
    dir: &Path,
    names: &[String],
    now: SystemTime,
) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert = dir.join(SELF_SIGNED_CERT);
    let key = dir.join(SELF_SIGNED_KEY);
    if cert.exists() && key.exists() {
        let ends = not_after(&cert)?;
        if ends > now + SELF_SIGNED_RENEW_BEFORE {
            return Ok((cert, key));
        }
        let key_pem = zeroize::Zeroizing::new(std::fs::read_to_string(&key).map_err(|source| {
            TlsError::Read {
                path: key.clone(),
                source,
            }
        })?);
        let key_pair = rcgen::KeyPair::from_pem(&key_pem).map_err(|e| TlsError::BadKey {
            path: key.clone(),
            message: e.to_string(),
        })?;
        let renewed = self_signed(names, &key_pair, now)?;
        write_replacing(&cert, renewed.pem().as_bytes(), false)?;
        tracing::info!(path = %cert.display(), ?names, "renewed the self-signed certificate");
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
    let key_pair = rcgen::KeyPair::generate()?;
    let generated = self_signed(names, &key_pair, now)?;
    // The key first: a certificate without its key is never left behind.
    write_replacing(&key, key_pair.serialize_pem().as_bytes(), true)?;
    write_replacing(&cert, generated.pem().as_bytes(), false)?;
    tracing::info!(path = %cert.display(), ?names, "generated a self-signed certificate");
    Ok((cert, key))
}

/// A certificate for `names` signed by its own `key`, valid from a day
/// before `now` (clocks differ) for [`SELF_SIGNED_VALIDITY`].
fn self_signed(
    names: &[String],
    key: &rcgen::KeyPair,
    now: SystemTime,
) -> Result<rcgen::Certificate, TlsError> {
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    let mut subject = rcgen::DistinguishedName::new();
    if let Some(name) = names.first() {
        subject.push(rcgen::DnType::CommonName, name.as_str());
    }
    subject.push(rcgen::DnType::OrganizationName, "Facteur self-signed");
    params.distinguished_name = subject;
    let now = time::OffsetDateTime::from(now);
    params.not_before = now - time::Duration::DAY;
    params.not_after = now + SELF_SIGNED_VALIDITY;
    Ok(params.self_signed(key)?)
}

/// When the (first) certificate in the PEM file `path` stops being valid.
fn not_after(path: &Path) -> Result<SystemTime, TlsError> {
    let bad = |message: String| TlsError::BadCertificate {
        path: path.to_owned(),
        message,
    };
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).map_err(|e| bad(e.to_string()))?;
    let cert = pem.parse_x509().map_err(|e| bad(e.to_string()))?;
    let seconds = cert.validity().not_after.timestamp();
    Ok(match u64::try_from(seconds) {
        Ok(s) => SystemTime::UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => SystemTime::UNIX_EPOCH,
    })
}

/// The names a self-signed certificate of this machine covers: the host
/// name first (the certificate's common name), then loopback, so that a
/// client on the same machine or the local network can pin it.
pub fn default_names() -> Vec<String> {
    let mut names = vec![];
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        if !host.is_empty() && host != "localhost" {
            names.push(host.to_owned());
        }
    }
    names.extend(["localhost".to_owned(), "127.0.0.1".into(), "::1".into()]);
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

    /// The subject's common name, the DNS and IP names, and the validity
    /// of the certificate in `path`, in seconds since the epoch.
    fn describe(path: &Path) -> (String, Vec<String>, i64, i64) {
        let pem = std::fs::read(path).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let cert = pem.parse_x509().unwrap();
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .map(|cn| cn.as_str().unwrap().to_owned())
            .unwrap_or_default();
        let names = cert
            .subject_alternative_name()
            .unwrap()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .map(|n| n.to_string())
                    .collect()
            })
            .unwrap_or_default();
        let v = cert.validity();
        (cn, names, v.not_before.timestamp(), v.not_after.timestamp())
    }

    fn epoch(t: SystemTime) -> i64 {
        t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64
    }

    /// Issue #14: the certificate names the host (not "rcgen self signed
    /// cert") and is valid about a year from now (not until 4096).
    #[test]
    fn self_signed_names_the_host_and_lasts_a_year() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["mail.example.org".to_owned(), "127.0.0.1".to_owned()];
        let now = SystemTime::now();
        let (cert, _) = ensure_self_signed_at(dir.path(), &names, now).unwrap();
        let (cn, sans, from, until) = describe(&cert);
        assert_eq!(cn, "mail.example.org");
        assert!(
            sans.iter().any(|n| n.contains("mail.example.org")),
            "{sans:?}"
        );
        // 127.0.0.1, as x509-parser shows an IP address.
        assert!(sans.iter().any(|n| n.contains("7f:00:00:01")), "{sans:?}");
        let now = epoch(now);
        assert!(from <= now && from >= now - 2 * 86_400, "{from} vs {now}");
        let days = (until - now) / 86_400;
        assert!((364..=366).contains(&days), "valid for {days} days");
        assert_eq!(default_names().last().map(String::as_str), Some("::1"));
    }

    /// A certificate within a month of its end is renewed at start with the
    /// same key; one further from it is left alone.
    #[test]
    fn self_signed_is_renewed_near_its_end_with_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_owned()];
        let year = SELF_SIGNED_VALIDITY;
        let made = SystemTime::now() - year + Duration::from_secs(60 * 86_400);
        let (cert, key) = ensure_self_signed_at(dir.path(), &names, made).unwrap();
        let (first_cert, first_key) = (std::fs::read(&cert).unwrap(), std::fs::read(&key).unwrap());
        // 60 days left: kept.
        ensure_self_signed(dir.path(), &names).unwrap();
        assert_eq!(std::fs::read(&cert).unwrap(), first_cert);
        // 20 days left: renewed, same key, a year from then.
        let later = SystemTime::now() + Duration::from_secs(40 * 86_400);
        ensure_self_signed_at(dir.path(), &names, later).unwrap();
        assert_ne!(std::fs::read(&cert).unwrap(), first_cert);
        assert_eq!(std::fs::read(&key).unwrap(), first_key);
        let (_, _, _, until) = describe(&cert);
        assert!(
            until > epoch(later) + 364 * 86_400,
            "not renewed for a year"
        );
        server_config(&cert, &key).unwrap();
        // Expired long ago: renewed as well.
        let (_, _, _, before) = describe(&cert);
        let much_later = SystemTime::now() + Duration::from_secs(3 * 365 * 86_400);
        ensure_self_signed_at(dir.path(), &names, much_later).unwrap();
        assert!(describe(&cert).3 > before);
    }

    /// The end-entity certificate `reloadable` presents now.
    fn presented(reloadable: &ReloadableCert) -> Vec<u8> {
        reloadable.current().cert[0].as_ref().to_vec()
    }

    fn first_der(path: &Path) -> Vec<u8> {
        CertificateDer::pem_file_iter(path)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .as_ref()
            .to_vec()
    }

    /// A reload serves the new files; a reload that fails (broken key,
    /// key of another certificate, missing file) keeps the certificate
    /// being served and names the file.
    #[test]
    fn reload_replaces_the_certificate_or_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let (a_cert, a_key) =
            ensure_self_signed(&dir.path().join("a"), &["a.test".into()]).unwrap();
        let (b_cert, b_key) =
            ensure_self_signed(&dir.path().join("b"), &["b.test".into()]).unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::copy(&a_cert, &cert).unwrap();
        std::fs::copy(&a_key, &key).unwrap();
        let source = CertSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        };
        let reloadable = ReloadableCert::load(source).unwrap();
        assert_eq!(presented(&reloadable), first_der(&a_cert));

        std::fs::copy(&b_cert, &cert).unwrap();
        std::fs::copy(&b_key, &key).unwrap();
        reloadable.reload().unwrap();
        assert_eq!(presented(&reloadable), first_der(&b_cert));

        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nbroken\n").unwrap();
        let e = reloadable.reload().unwrap_err().to_string();
        assert!(e.contains("key.pem"), "{e}");
        assert_eq!(presented(&reloadable), first_der(&b_cert));

        std::fs::copy(&a_key, &key).unwrap();
        let e = reloadable.reload().unwrap_err().to_string();
        assert!(e.contains("do not fit"), "{e}");
        assert_eq!(presented(&reloadable), first_der(&b_cert));

        std::fs::remove_file(&cert).unwrap();
        let e = reloadable.reload().unwrap_err().to_string();
        assert!(e.contains("cert.pem"), "{e}");
        assert_eq!(presented(&reloadable), first_der(&b_cert));
    }

    /// A self-signed certificate is made again when its file is gone and
    /// the server reloads.
    #[test]
    fn reload_of_a_self_signed_certificate_regenerates_it() {
        let dir = tempfile::tempdir().unwrap();
        let source = CertSource::SelfSigned {
            dir: dir.path().to_owned(),
            names: vec!["localhost".into()],
        };
        let reloadable = ReloadableCert::load(source).unwrap();
        assert!(reloadable.is_self_signed());
        let before = presented(&reloadable);
        std::fs::remove_file(reloadable.path()).unwrap();
        reloadable.reload().unwrap();
        assert_ne!(presented(&reloadable), before);
        assert_eq!(presented(&reloadable), first_der(reloadable.path()));
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
