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
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(failed)?;
    }
    // A key is never readable by others, not even between create and chmod.
    let mode = if private { 0o600 } else { 0o644 };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(failed)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(failed)?;
    file.write_all(contents.as_bytes()).map_err(failed)
}

/// The validity a certificate may ask for, in days.
pub const DAYS: std::ops::RangeInclusive<u32> = 1..=36_500;

/// Valid from yesterday (clock skew between hosts) until `days` from now
/// (the day after, since dates are cut to midnight).
fn validity(params: &mut CertificateParams, days: u32) -> Result<(), TlsError> {
    if !DAYS.contains(&days) {
        return Err(TlsError::Issue(format!(
            "--days {days}: a certificate is valid for {} to {} days",
            DAYS.start(),
            DAYS.end()
        )));
    }
    let now = Utc::now();
    let (Some(from), Some(to)) = (
        now.checked_sub_days(chrono::Days::new(1)),
        now.checked_add_days(chrono::Days::new(u64::from(days) + 1)),
    ) else {
        return Err(TlsError::Issue(format!("--days {days}: out of range")));
    };
    let ymd =
        |d: chrono::DateTime<Utc>| rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8);
    params.not_before = ymd(from);
    params.not_after = ymd(to);
    Ok(())
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
    validity(&mut params, days)?;
    let key = KeyPair::generate().map_err(bad)?;
    let cert = params.self_signed(&key).map_err(bad)?;
    write(&dir.join(CA_KEY), &key.serialize_pem(), true)?;
    write(&cert_path, &cert.pem(), false)?;
    Ok(cert_path)
}

/// A certificate for `name`, signed by the CA in `ca_dir`, for the DNS names
/// and IP addresses in `hosts` (what peers dial), usable to serve and to
/// connect. Writes `out/<name>.pem` and `out/<name>.key`; `out` may not be
/// the CA's directory, so the files that go to hosts never sit beside the
/// CA key.
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
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    if same(ca_dir, out) {
        return Err(TlsError::Issue(format!(
            "--out {}: certificates go outside the CA's directory, so the CA key stays off the hosts",
            out.display()
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
    validity(&mut params, days)?;
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
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A full handshake in memory: a client presenting `client`'s files
    /// dials `name`, served with `server`'s; `Ok` when both sides finish.
    fn handshake(dir: &Path, server: &str, client: &str, name: &str) -> TestResult {
        let file = |n: &str, ext: &str| dir.join(format!("{n}.{ext}"));
        let tls = crate::tls::ClusterTls::load(
            &dir.join("ca").join(CA_CERT),
            &file(server, "pem"),
            &file(server, "key"),
        )?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(dir.join("ca").join(CA_CERT))? {
            roots.add(ca?)?;
        }
        let certs =
            CertificateDer::pem_file_iter(file(client, "pem"))?.collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(file(client, "key"))?;
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)?;
        let mut c = rustls::ClientConnection::new(
            std::sync::Arc::new(config),
            ServerName::try_from(name.to_string())?,
        )?;
        let mut s = rustls::ServerConnection::new(tls.server_config()?)?;
        for _ in 0..10 {
            let mut bytes = Vec::new();
            c.write_tls(&mut bytes)?;
            s.read_tls(&mut bytes.as_slice())?;
            s.process_new_packets()?;
            let mut bytes = Vec::new();
            s.write_tls(&mut bytes)?;
            c.read_tls(&mut bytes.as_slice())?;
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(());
            }
        }
        Err("the handshake did not finish".into())
    }

    /// The fleet's one executor certificate (deploy/ec2-user-data.sh): a
    /// wildcard over the private DNS names verifies for any executor's name
    /// and for no other.
    #[test]
    fn one_wildcard_certificate_serves_every_executor_name() -> TestResult {
        let dir = tempfile::tempdir()?;
        let ca = dir.path().join("ca");
        init_ca(&ca, "test CA", 30)?;
        issue(&ca, "executor", &["*.ec2.internal".into()], 30, dir.path())?;
        issue(&ca, "client", &["ops".into()], 30, dir.path())?;
        handshake(
            dir.path(),
            "executor",
            "client",
            "ip-10-0-2-21.ec2.internal",
        )?;
        handshake(dir.path(), "executor", "client", "ip-10-0-3-7.ec2.internal")?;
        let wrong = handshake(dir.path(), "executor", "client", "scheduler.internal");
        assert!(wrong.is_err());
        Ok(())
    }

    #[test]
    fn issued_files_load_as_a_cluster_identity() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let ca_dir = dir.path().join("ca");
        let ca = init_ca(&ca_dir, "test CA", 30)?;
        let (cert, key) = issue(
            &ca_dir,
            "node-1",
            &["localhost".into(), "127.0.0.1".into()],
            30,
            dir.path(),
        )?;
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key)?.permissions().mode() & 0o777, 0o600);
        let beside = issue(&ca_dir, "n", &[], 30, &ca_dir)
            .err()
            .map(|e| e.to_string());
        assert!(
            beside
                .unwrap_or_default()
                .contains("outside the CA's directory")
        );
        let long = issue(&ca_dir, "n", &[], 3_000_000, dir.path())
            .err()
            .map(|e| e.to_string());
        assert!(
            long.unwrap_or_default()
                .contains("valid for 1 to 36500 days")
        );
        crate::tls::ClusterTls::load(&ca, &cert, &key)?;
        let again = init_ca(&ca_dir, "test CA", 30).err().map(|e| e.to_string());
        assert!(again.unwrap_or_default().contains("exists"));
        let bad = issue(&ca_dir, "../x", &[], 30, dir.path()).err();
        assert!(
            bad.map(|e| e.to_string())
                .unwrap_or_default()
                .contains("must be letters")
        );
        Ok(())
    }
}
