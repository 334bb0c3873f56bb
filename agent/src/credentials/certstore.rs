//! The node's client certificate on disk, as kubelet's certificate store keeps it: each
//! certificate and its key in one file `<dir>/kubelet-client-<time>.pem` (mode 0600), and the
//! symlink `kubelet-client-current.pem` naming the one in use, switched atomically so a reader
//! (or a restarted agent) sees the old pair or the new one, never a mix.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

const PAIR_PREFIX: &str = "kubelet-client";
const CURRENT: &str = "kubelet-client-current.pem";

/// A client certificate with its private key, and when it is valid.
#[derive(Clone)]
pub struct NodeCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_before: jiff::Timestamp,
    pub not_after: jiff::Timestamp,
}

impl std::fmt::Debug for NodeCert {
    // The key never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCert")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl NodeCert {
    /// The certificate chain and key of `pem` (the store's file format, or the two apart),
    /// checked to belong together.
    pub fn parse(cert_pem: &str, key_pem: &str) -> Result<NodeCert> {
        let der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).context("no CERTIFICATE block")?;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| anyhow::anyhow!("parsing the certificate: {e}"))?;
        let key = rcgen::KeyPair::from_pem(key_pem).context("parsing the private key")?;
        if cert.tbs_certificate.subject_pki.raw
            != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
        {
            bail!("the certificate does not belong to the private key");
        }
        let time = |t: x509_parser::time::ASN1Time| {
            jiff::Timestamp::from_second(t.timestamp()).context("certificate time out of range")
        };
        Ok(NodeCert {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            not_before: time(cert.validity().not_before)?,
            not_after: time(cert.validity().not_after)?,
        })
    }

    /// Read back what [`CertStore::update`] wrote.
    fn from_file_text(text: &str) -> Result<NodeCert> {
        let mut certs = String::new();
        let mut key = String::new();
        for block in pem_blocks(text) {
            if block.starts_with("-----BEGIN CERTIFICATE-----") {
                certs.push_str(block);
                certs.push('\n');
            } else if block.contains(" PRIVATE KEY-----") {
                key.push_str(block);
                key.push('\n');
            }
        }
        NodeCert::parse(&certs, &key)
    }

    pub fn valid_at(&self, now: jiff::Timestamp) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

/// The `-----BEGIN …-----` … `-----END …-----` blocks of a PEM text, in order.
fn pem_blocks(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start..];
        let Some(end_marker) = after.find("-----END ") else {
            break;
        };
        let Some(close) = after[end_marker + 9..].find("-----") else {
            break;
        };
        let end = end_marker + 9 + close + 5;
        out.push(&after[..end]);
        rest = &after[end..];
    }
    out
}

/// The directory of the node's client certificates (`<root-dir>/pki`).
pub struct CertStore {
    dir: PathBuf,
}

impl CertStore {
    pub fn new(dir: &Path) -> CertStore {
        CertStore {
            dir: dir.to_path_buf(),
        }
    }

    /// The symlink to the pair in use: what the node kubeconfig names.
    pub fn current_path(&self) -> PathBuf {
        self.dir.join(CURRENT)
    }

    /// The pair in use; `None` when there is none yet or it cannot be read (then the node
    /// bootstraps again, as kubelet does).
    pub fn current(&self) -> Option<NodeCert> {
        let path = self.current_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "reading the node certificate");
                return None;
            }
        };
        NodeCert::from_file_text(&text)
            .inspect_err(|e| {
                tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "unusable node certificate")
            })
            .ok()
    }

    /// Store `cert` and make it current; older pairs but the one before are removed.
    pub fn update(&self, cert: &NodeCert) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let stamp = jiff::Zoned::now()
            .with_time_zone(jiff::tz::TimeZone::UTC)
            .strftime("%Y-%m-%d-%H-%M-%S")
            .to_string();
        let name = format!("{PAIR_PREFIX}-{stamp}.pem");
        let pair = self.dir.join(&name);
        let text = format!(
            "{}{}",
            ensure_newline(&cert.cert_pem),
            ensure_newline(&cert.key_pem)
        );
        skiff_common::fs::write_atomic(&pair, text.as_bytes(), 0o600)
            .with_context(|| format!("writing {}", pair.display()))?;
        let previous = std::fs::read_link(self.current_path()).ok();
        self.switch_current(&name)?;
        self.prune(&name, previous.as_deref());
        Ok(())
    }

    /// Point the `current` symlink at `name` by renaming a new symlink over it.
    fn switch_current(&self, name: &str) -> Result<()> {
        let temp = self
            .dir
            .join(format!(".{CURRENT}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_file(&temp);
        std::os::unix::fs::symlink(name, &temp)
            .with_context(|| format!("creating {}", temp.display()))?;
        std::fs::rename(&temp, self.current_path()).inspect_err(|_| {
            let _ = std::fs::remove_file(&temp);
        })?;
        Ok(())
    }

    fn prune(&self, keep: &str, previous: Option<&Path>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let is_pair =
                name.starts_with(PAIR_PREFIX) && name.ends_with(".pem") && name != CURRENT;
            let kept = name == keep || previous.is_some_and(|p| p == Path::new(&name));
            if is_pair && !kept {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

fn ensure_newline(s: &str) -> String {
    if s.ends_with('\n') {
        s.to_string()
    } else {
        format!("{s}\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed pair valid from 2020 to 2100.
    pub(crate) fn pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn stores_and_reads_back_the_current_pair() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::new(&dir.path().join("pki"));
        assert!(store.current().is_none());
        let (c, k) = pair();
        let cert = NodeCert::parse(&c, &k).unwrap();
        store.update(&cert).unwrap();
        let back = store.current().unwrap();
        assert_eq!(back.cert_pem.trim(), c.trim());
        assert_eq!(back.not_after, cert.not_after);
        assert!(back.valid_at(jiff::Timestamp::now()));
        let meta = std::fs::metadata(store.current_path()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_mismatched_key_is_refused() {
        let (c, _) = pair();
        let (_, other_key) = pair();
        let err = NodeCert::parse(&c, &other_key).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err:#}");
    }

    #[test]
    fn a_torn_file_reads_as_no_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::new(dir.path());
        std::fs::write(store.current_path(), "-----BEGIN CERTIFICATE-----\nAAAA").unwrap();
        assert!(store.current().is_none());
    }

    #[test]
    fn splits_pem_blocks() {
        let text =
            "junk\n-----BEGIN A-----\nx\n-----END A-----\n-----BEGIN B-----\ny\n-----END B-----\n";
        let blocks = pem_blocks(text);
        assert_eq!(blocks.len(), 2);
        assert!(blocks[1].starts_with("-----BEGIN B") && blocks[1].ends_with("END B-----"));
    }
}
