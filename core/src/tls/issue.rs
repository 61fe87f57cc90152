//! Making the cluster's TLS files (`sluice certs`): a CA, and certificates
//! it signs for each process, usable as server and as client. ECDSA P-256,
//! as rcgen makes by default; rustls and tonic both speak it.

use std::path::{Path, PathBuf};

use chrono::{Datelike, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::TlsError;

/// The CA's files in a directory made by [`init_ca`].
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";

fn bad(e: rcgen::Error) -> TlsError {
    TlsError::Issue(e.to_string())
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), TlsError> {
    let failed = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(failed)?;
    }
    std::fs::write(path, contents).map_err(failed)?;
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(failed)?;
    }
    Ok(())
}

/// Valid from yesterday (clock skew between hosts) for `days`.
fn validity(params: &mut CertificateParams, days: u32) {
    let from = Utc::now() - chrono::Days::new(1);
    let to = Utc::now() + chrono::Days::new(u64::from(days));
    let ymd =
        |d: chrono::DateTime<Utc>| rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8);
    params.not_before = ymd(from);
    params.not_after = ymd(to);
}

/// A new cluster CA in `dir` (`ca.pem`, `ca.key`), valid `days`. Refuses to
/// overwrite an existing CA: every certificate it signed would stop working.
pub fn init_ca(dir: &Path, name: &str, days: u32) -> Result<PathBuf, TlsError> {
    let cert_path = dir.join(CA_CERT);
    if cert_path.exists() {
        return Err(TlsError::Issue(format!(
            "{} exists; a new CA goes in a new directory (README, \"Rotating certificates\")",
            cert_path.display()
        )));
    }
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(bad)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, days);
    let key = KeyPair::generate().map_err(bad)?;
    let cert = params.self_signed(&key).map_err(bad)?;
    write(&dir.join(CA_KEY), &key.serialize_pem(), true)?;
    write(&cert_path, &cert.pem(), false)?;
    Ok(cert_path)
}

/// A certificate for `name`, signed by the CA in `ca_dir`, for the DNS names
/// and IP addresses in `hosts` (what peers dial), usable to serve and to
/// connect. Writes `out/<name>.pem` and `out/<name>.key`.
pub fn issue(
    ca_dir: &Path,
    name: &str,
    hosts: &[String],
    days: u32,
    out: &Path,
) -> Result<(PathBuf, PathBuf), TlsError> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(TlsError::Issue(format!(
            "certificate name '{name}' must be letters, digits, '-', '_' or '.'"
        )));
    }
    let ca_pem = super::read("TLS CA", &ca_dir.join(CA_CERT))?;
    let ca_key =
        KeyPair::from_pem(&super::read("TLS CA key", &ca_dir.join(CA_KEY))?).map_err(bad)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(bad)?;
    let mut params = CertificateParams::new(hosts.to_vec()).map_err(bad)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut params, days);
    let key = KeyPair::generate().map_err(bad)?;
    let cert = params.signed_by(&key, &issuer).map_err(bad)?;
    let cert_path = out.join(format!("{name}.pem"));
    let key_path = out.join(format!("{name}.key"));
    write(&key_path, &key.serialize_pem(), true)?;
    write(&cert_path, &cert.pem(), false)?;
    Ok((cert_path, key_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_files_load_as_a_cluster_identity() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let ca = init_ca(dir.path(), "test CA", 30)?;
        let (cert, key) = issue(
            dir.path(),
            "node-1",
            &["localhost".into(), "127.0.0.1".into()],
            30,
            dir.path(),
        )?;
        crate::tls::ClusterTls::load(&ca, &cert, &key)?;
        let again = init_ca(dir.path(), "test CA", 30)
            .err()
            .map(|e| e.to_string());
        assert!(again.unwrap_or_default().contains("exists"));
        let bad = issue(dir.path(), "../x", &[], 30, dir.path()).err();
        assert!(
            bad.map(|e| e.to_string())
                .unwrap_or_default()
                .contains("must be letters")
        );
        Ok(())
    }
}
