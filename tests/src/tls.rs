//! Cluster TLS files for tests, made with `sluice_core::tls::issue` (as
//! `sluice certs` makes them): a cluster CA, a certificate for the
//! processes (127.0.0.1 and localhost), one for clients, and a client
//! certificate from a second CA the cluster must not trust.

use std::path::{Path, PathBuf};

use anyhow::Result;
use sluice_core::tls::{ClusterTls, issue};

#[derive(Clone)]
pub struct TestCerts {
    dir: std::sync::Arc<tempfile::TempDir>,
}

impl TestCerts {
    pub fn new() -> Result<Self> {
        Self::for_hosts(&["127.0.0.1", "localhost"])
    }

    /// Node certificates valid for `hosts` (a fleet's addresses).
    pub fn for_hosts(hosts: &[&str]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let ca = dir.path().join("ca");
        issue::init_ca(&ca, "sluice test CA", 2)?;
        issue::issue(&ca, "node", &hosts, 2, dir.path())?;
        issue::issue(&ca, "client", &["sluice-client".to_string()], 2, dir.path())?;
        let rogue = dir.path().join("rogue-ca");
        issue::init_ca(&rogue, "another CA", 2)?;
        issue::issue(&rogue, "rogue", &hosts, 2, dir.path())?;
        Ok(Self {
            dir: std::sync::Arc::new(dir),
        })
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca").join(issue::CA_CERT)
    }

    fn pair(&self, name: &str) -> (PathBuf, PathBuf) {
        let d = self.dir.path();
        (d.join(format!("{name}.pem")), d.join(format!("{name}.key")))
    }

    /// `SLUICE_TLS_*` for a scheduler or executor.
    pub fn node_env(&self) -> Vec<(String, String)> {
        self.env("node", &self.ca())
    }

    /// `SLUICE_TLS_*` for the `sluice` CLI.
    pub fn client_env(&self) -> Vec<(String, String)> {
        self.env("client", &self.ca())
    }

    fn env(&self, name: &str, ca: &Path) -> Vec<(String, String)> {
        let (cert, key) = self.pair(name);
        vec![
            ("SLUICE_TLS_CA".into(), ca.display().to_string()),
            ("SLUICE_TLS_CERT".into(), cert.display().to_string()),
            ("SLUICE_TLS_KEY".into(), key.display().to_string()),
        ]
    }

    /// The client's TLS, for the test's own HTTP calls.
    pub fn client(&self) -> Result<ClusterTls> {
        let (cert, key) = self.pair("client");
        Ok(ClusterTls::load(&self.ca(), &cert, &key)?)
    }

    /// A client whose certificate another CA signed (it trusts the
    /// cluster's CA, so only the cluster's check of the client fails).
    pub fn rogue_client(&self) -> Result<ClusterTls> {
        let (cert, key) = self.pair("rogue");
        Ok(ClusterTls::load(&self.ca(), &cert, &key)?)
    }
}

/// Who a [`TestCerts::probe`] connects as.
#[derive(Debug, Clone, Copy)]
pub enum Peer {
    /// With the cluster's client certificate.
    Client,
    /// Over TLS, trusting the cluster CA, with no certificate of its own.
    NoCertificate,
    /// With a certificate another CA signed.
    Rogue,
}

impl TestCerts {
    /// Opens TLS to `addr` as `peer` (offering HTTP/2, as gRPC clients do),
    /// sends the HTTP/2 preface and reads the server's first answer:
    /// `Ok(bytes)` when the server spoke, `Err(reason)` when it refused.
    /// With TLS 1.3 a client finishes its handshake before the server has
    /// checked the client's certificate, so a refusal shows on the read.
    pub fn probe(
        &self,
        addr: std::net::SocketAddr,
        peer: Peer,
    ) -> Result<std::result::Result<usize, String>> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        use std::io::{Read, Write};

        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(self.ca())? {
            roots.add(ca?)?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let identity = |name: &str| -> Result<_> {
            let (cert, key) = self.pair(name);
            let certs = CertificateDer::pem_file_iter(&cert)?.collect::<Result<Vec<_>, _>>()?;
            Ok((certs, PrivateKeyDer::from_pem_file(&key)?))
        };
        let mut config = match peer {
            Peer::NoCertificate => builder.with_no_client_auth(),
            Peer::Client => {
                let (certs, key) = identity("client")?;
                builder.with_client_auth_cert(certs, key)?
            }
            Peer::Rogue => {
                let (certs, key) = identity("rogue")?;
                builder.with_client_auth_cert(certs, key)?
            }
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        let name = ServerName::from(addr.ip());
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name)?;
        let mut sock =
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(3))?;
        sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        let mut tls = rustls::Stream::new(&mut conn, &mut sock);
        let spoke = tls
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .and_then(|()| {
                let mut buf = [0u8; 256];
                tls.read(&mut buf)
            });
        Ok(match spoke {
            Ok(0) => Err("closed without an answer".to_string()),
            Ok(n) => Ok(n),
            Err(e) => Err(e.to_string()),
        })
    }
}

/// What `addr` answers a plain-text HTTP/1.1 request with (empty when it
/// closes the connection or stays silent).
pub fn plain_http(addr: std::net::SocketAddr) -> Result<String> {
    use std::io::{Read, Write};
    let mut sock = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(3))?;
    sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    sock.write_all(b"GET /api/jobs HTTP/1.1\r\nHost: sluice\r\n\r\n")?;
    let mut buf = vec![0u8; 256];
    let n = sock.read(&mut buf).unwrap_or(0);
    Ok(String::from_utf8_lossy(&buf[..n]).to_string())
}
