//! Cluster TLS: mutual TLS with one cluster CA on every port a cluster
//! serves (scheduler gRPC + REST, coordinator, executor Flight, metrics),
//! and the matching client side for every caller (the CLI, executors,
//! Ballista's own clients).
//!
//! A peer is trusted when it presents a certificate the cluster CA signed;
//! there is no other credential, so none can reach a log, a plan or a REST
//! answer. Certificates and not a token because Ballista's clients take
//! their settings only through a tonic `Endpoint` hook, which can present a
//! client certificate but not add a header.
//!
//! Without TLS a cluster process serves loopback addresses only, unless the
//! operator passes `--insecure-no-tls` ([`check_listen`]): closed by default.
//! [`issue`] makes the files (`sluice certs`).

pub mod issue;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ballista_core::extension::{EndpointOverrideFn, SessionConfigExt};
use datafusion::prelude::SessionConfig;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// How long a peer may take over its TLS handshake before it is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many TLS handshakes a port runs at once. A peer that has not shown a
/// certificate yet is anyone on the network: past this many, a new
/// connection is closed at once instead of holding a task and its buffers
/// for the handshake timeout, so a flood of half-open connections cannot
/// grow a server's memory.
pub const MAX_HANDSHAKES: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {what} {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path} holds no PEM certificate")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("{what} {path}: a PEM block does not parse: {reason}")]
    BadPem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("TLS key {path} holds no PEM private key")]
    NoKey { path: PathBuf },
    #[error("TLS settings: {0}")]
    Incomplete(String),
    #[error("TLS certificate {cert} and key {key} do not make a server identity: {reason}")]
    Identity {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("TLS client settings: {0}")]
    Client(String),
    #[error(
        "refusing to serve {what} on {addr} without TLS: give --tls-ca, --tls-cert and --tls-key \
         (README, \"Running a cluster\"), bind a loopback address, or pass --insecure-no-tls \
         on a network you trust"
    )]
    OpenPort { what: String, addr: SocketAddr },
    #[error("issuing a certificate: {0}")]
    Issue(String),
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The TLS flags every cluster process shares (and `SLUICE_TLS_*`
/// variables or config-file keys through the layered config).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// The cluster CA certificate(s), PEM (several during a CA rotation):
    /// peers must present a certificate one of them signed.
    #[arg(long, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// This process's certificate, PEM, signed by the cluster CA; its names
    /// must include the host peers dial (e.g. --external-host).
    #[arg(long, value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert, PEM.
    #[arg(long, value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// Serve without TLS on a non-loopback address (a network you trust;
    /// anyone who reaches a port can run SQL as the cluster).
    #[arg(long)]
    pub insecure_no_tls: bool,
}

impl TlsArgs {
    /// The files loaded, or `None` when no TLS flag is set.
    pub fn load(&self) -> Result<Option<ClusterTls>, TlsError> {
        ClusterTls::load_some(
            self.tls_ca.as_deref(),
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
        )
    }
}

struct Pems {
    ca: String,
    ca_path: PathBuf,
    cert: String,
    key: String,
    cert_path: PathBuf,
    key_path: PathBuf,
}

/// A process's cluster TLS: the CA it trusts and the identity it presents,
/// as a server and as a client. Cheap to clone.
#[derive(Clone)]
pub struct ClusterTls {
    pems: Arc<Pems>,
}

impl std::fmt::Debug for ClusterTls {
    // Paths only: the key never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls")
            .field("cert", &self.pems.cert_path)
            .finish_non_exhaustive()
    }
}

fn read(what: &'static str, path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn certificates(
    what: &'static str,
    path: &Path,
    pem: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    // A damaged block is an error, not skipped: a CA bundle mid-rotation
    // that silently lost a CA would refuse half the fleet.
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            what,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ClusterTls {
    /// Loads all three files, none (no TLS), or fails naming what is missing.
    pub fn load_some(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Option<Self>, TlsError> {
        match (ca, cert, key) {
            (None, None, None) => Ok(None),
            (Some(ca), Some(cert), Some(key)) => Self::load(ca, cert, key).map(Some),
            _ => Err(TlsError::Incomplete(
                "--tls-ca, --tls-cert and --tls-key go together (all three or none)".to_string(),
            )),
        }
    }

    /// Reads and checks the CA bundle, certificate and key.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let pems = Pems {
            ca: read("TLS CA", ca)?,
            ca_path: ca.to_path_buf(),
            cert: read("TLS certificate", cert)?,
            key: read("TLS key", key)?,
            cert_path: cert.to_path_buf(),
            key_path: key.to_path_buf(),
        };
        certificates("TLS CA", ca, &pems.ca)?;
        let tls = Self {
            pems: Arc::new(pems),
        };
        // Fails now, naming the files, rather than at the first connection.
        tls.server_config()?;
        Ok(tls)
    }

    fn identity(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        let p = &self.pems;
        let certs = certificates("TLS certificate", &p.cert_path, &p.cert)?;
        let key = PrivateKeyDer::from_pem_slice(p.key.as_bytes()).map_err(|_| TlsError::NoKey {
            path: p.key_path.clone(),
        })?;
        Ok((certs, key))
    }

    /// A rustls server config that requires a client certificate signed by
    /// the cluster CA, speaking HTTP/2 (gRPC) and HTTP/1.1 (REST).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let p = &self.pems;
        let identity_error = |reason: String| TlsError::Identity {
            cert: p.cert_path.clone(),
            key: p.key_path.clone(),
            reason,
        };
        let mut roots = RootCertStore::empty();
        for ca in certificates("TLS CA", &p.ca_path, &p.ca)? {
            roots
                .add(ca)
                .map_err(|e| identity_error(format!("CA certificate: {e}")))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), ring())
            .build()
            .map_err(|e| identity_error(e.to_string()))?;
        let (certs, key) = self.identity()?;
        let mut config = rustls::ServerConfig::builder_with_provider(ring())
            .with_safe_default_protocol_versions()
            .map_err(|e| identity_error(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| identity_error(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// tonic's client side: trust the cluster CA, present this identity.
    pub fn tonic_client(&self) -> tonic::transport::ClientTlsConfig {
        let p = &self.pems;
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&p.ca))
            .identity(tonic::transport::Identity::from_pem(&p.cert, &p.key))
    }

    /// tonic's server side: this identity, clients must present a
    /// certificate the cluster CA signed.
    pub fn tonic_server(&self) -> tonic::transport::ServerTlsConfig {
        let p = &self.pems;
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&p.cert, &p.key))
            .client_ca_root(tonic::transport::Certificate::from_pem(&p.ca))
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// The hook Ballista applies to every gRPC endpoint it dials (scheduler,
    /// executors' Flight): TLS with this identity. Ballista dials the
    /// scheduler as `http://` even with TLS on, so such an endpoint is
    /// rebuilt as `https://` (tonic encrypts only `https` URIs), with the
    /// timeouts and windows of `config` (the process's Ballista settings).
    pub fn endpoint_override(&self, config: &SessionConfig) -> EndpointOverrideFn {
        let tls = self.tonic_client();
        let grpc = ballista_core::utils::GrpcClientConfig::from(&config.ballista_config());
        Arc::new(move |endpoint: tonic::transport::Endpoint| {
            let endpoint = if endpoint.uri().scheme_str() == Some("http") {
                let uri = endpoint
                    .uri()
                    .to_string()
                    .replacen("http://", "https://", 1);
                ballista_core::utils::create_grpc_client_endpoint(uri, Some(&grpc))?
            } else {
                endpoint
            };
            Ok(endpoint.tls_config(tls.clone())?)
        })
    }

    /// Puts this TLS on a session: Ballista's clients (scheduler, shuffle
    /// and result fetches) dial with it, and sluice's operators find it for
    /// their coordinator calls.
    pub fn install(&self, config: SessionConfig) -> SessionConfig {
        let hook = self.endpoint_override(&config);
        config
            .with_ballista_use_tls(true)
            .with_ballista_override_create_grpc_client_endpoint(hook)
            .with_extension(Arc::new(self.clone()))
    }

    /// The TLS a session carries, if any.
    pub fn of(config: &SessionConfig) -> Option<Arc<Self>> {
        config.get_extension::<Self>()
    }
}

/// `https` with cluster TLS, `http` without.
pub fn http_scheme(tls: Option<&ClusterTls>) -> &'static str {
    if tls.is_some() { "https" } else { "http" }
}

/// The one way sluice builds an HTTP client for a cluster port: with TLS,
/// it trusts only the cluster CA, presents this process's certificate and
/// refuses plain `http://`.
pub fn http_client(
    tls: Option<&ClusterTls>,
    timeout: Duration,
) -> Result<reqwest::Client, TlsError> {
    let builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)));
    let builder = match tls {
        None => builder,
        Some(tls) => {
            let p = &tls.pems;
            let bad = |e: reqwest::Error| TlsError::Client(e.to_string());
            let mut builder = builder
                .use_rustls_tls()
                .tls_built_in_root_certs(false)
                .https_only(true)
                .identity(
                    reqwest::Identity::from_pem(format!("{}\n{}", p.cert, p.key).as_bytes())
                        .map_err(bad)?,
                );
            for ca in reqwest::Certificate::from_pem_bundle(p.ca.as_bytes()).map_err(bad)? {
                builder = builder.add_root_certificate(ca);
            }
            builder
        }
    };
    builder.build().map_err(|e| TlsError::Client(e.to_string()))
}

/// What a failed call to a cluster port most likely means when the two
/// sides disagree about TLS, for the end of its error message.
pub fn mismatch_hint(tls: Option<&ClusterTls>, error: &str) -> Option<&'static str> {
    match tls {
        None if error.contains("invalid HTTP version") => Some(
            "the port speaks TLS: give --tls-ca, --tls-cert and --tls-key (README, \"Running a cluster\")",
        ),
        // An https:// URL dialled without the cluster's CA.
        None if error.contains("UnknownIssuer") => Some(
            "the port's certificate is the cluster's own: give --tls-ca, --tls-cert and --tls-key (README, \"Running a cluster\")",
        ),
        Some(_) if error.contains("fatal alert") => {
            Some("the server refused this client's certificate: is it signed by the cluster's CA?")
        }
        Some(_) if error.contains("InvalidContentType") || error.contains("corrupt message") => {
            Some("the port does not speak TLS: drop --tls-* for a cluster without TLS")
        }
        _ => None,
    }
}

/// Closed by default: without TLS a cluster port serves loopback only,
/// unless the operator said the network is trusted.
pub fn check_listen(
    what: &str,
    addr: SocketAddr,
    tls: Option<&ClusterTls>,
    insecure: bool,
) -> Result<(), TlsError> {
    if tls.is_none() && !insecure && !addr.ip().is_loopback() {
        return Err(TlsError::OpenPort {
            what: what.to_string(),
            addr,
        });
    }
    Ok(())
}

/// Serves `router` on `listener`, over mutual TLS when `tls` is set
/// (a handshake must finish within 10 s). Handlers see the peer's address
/// as `ConnectInfo<SocketAddr>`, as under `axum::serve`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    tls: Option<&ClusterTls>,
) -> std::io::Result<()> {
    serve_bounded(listener, router, tls, MAX_HANDSHAKES).await
}

/// [`serve`] with at most `max_handshakes` TLS handshakes at once.
async fn serve_bounded(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    tls: Option<&ClusterTls>,
    max_handshakes: usize,
) -> std::io::Result<()> {
    let app = router.into_make_service_with_connect_info::<SocketAddr>();
    let Some(tls) = tls else {
        return axum::serve(listener, app).await;
    };
    let config = tls
        .server_config()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let listener = listener.into_std()?;
    listener.set_nonblocking(true)?;
    let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(
        axum_server::tls_rustls::RustlsConfig::from_config(config),
    )
    .handshake_timeout(HANDSHAKE_TIMEOUT);
    let acceptor = BoundedHandshakes {
        inner: acceptor,
        permits: Arc::new(tokio::sync::Semaphore::new(max_handshakes)),
        max: max_handshakes,
    };
    axum_server::from_tcp(listener)?
        .acceptor(acceptor)
        .serve(app)
        .await
}

/// Connections one tonic port (an executor's Flight service) holds at
/// once. tonic runs every accepted connection's TLS handshake at once with
/// no bound of its own, so the cap is on connections: a half-open flood
/// holds slots only until tonic's 10 s handshake timeout drops them.
pub const MAX_TONIC_CONNECTIONS: usize = 1024;

/// A connection that holds one of its port's slots until it is dropped.
pub struct Capped {
    io: tokio::net::TcpStream,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl tokio::io::AsyncRead for Capped {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Capped {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Capped {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// The connections of `listener` for tonic's `serve_with_incoming*`, at
/// most `max` at once: one past it is closed unanswered (and counted in
/// `sluice_tls_handshakes_refused_total`), as the axum ports do.
pub fn capped_incoming(
    listener: tokio::net::TcpListener,
    max: usize,
) -> impl futures::Stream<Item = std::io::Result<Capped>> + Send + 'static {
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    futures::stream::unfold((listener, slots), |(listener, slots)| async move {
        loop {
            let (io, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                // A failed accept (the peer left, no file descriptors) ends
                // no one else's connection.
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            match Arc::clone(&slots).try_acquire_owned() {
                Ok(slot) => {
                    let _ = io.set_nodelay(true);
                    return Some((Ok(Capped { io, _slot: slot }), (listener, slots)));
                }
                Err(_) => {
                    drop(io);
                    metrics::counter!("sluice_tls_handshakes_refused_total").increment(1);
                }
            }
        }
    })
}

/// An acceptor that runs `inner` (the TLS handshake) only while it holds
/// one of `permits`; a connection that finds none is closed unanswered.
#[derive(Clone)]
struct BoundedHandshakes<A> {
    inner: A,
    permits: Arc<tokio::sync::Semaphore>,
    max: usize,
}

impl<A, I, S> axum_server::accept::Accept<I, S> for BoundedHandshakes<A>
where
    A: axum_server::accept::Accept<I, S>,
    A::Future: Send + 'static,
    A::Stream: Send + 'static,
    A::Service: Send + 'static,
{
    type Stream = A::Stream;
    type Service = A::Service;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = std::io::Result<(Self::Stream, Self::Service)>> + Send>,
    >;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => {
                let handshake = self.inner.accept(stream, service);
                Box::pin(async move {
                    let done = handshake.await;
                    drop(permit);
                    done
                })
            }
            Err(_) => {
                // Dropping the stream closes the connection.
                drop(stream);
                metrics::counter!("sluice_tls_handshakes_refused_total").increment(1);
                Box::pin(std::future::ready(Err(std::io::Error::other(format!(
                    "{} TLS handshakes in progress; connection closed",
                    self.max
                )))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Peers that connect and never start a handshake use up the port's
    /// handshake slots; the next connection is closed at once (not after
    /// the 10 s handshake timeout), and once they leave a client with a
    /// certificate is served again.
    #[tokio::test]
    async fn half_open_connections_past_the_cap_are_closed_at_once()
    -> Result<(), Box<dyn std::error::Error>> {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir()?;
        let ca = dir.path().join("ca");
        let ca_pem = issue::init_ca(&ca, "test CA", 30)?;
        let (cert, key) = issue::issue(&ca, "server", &["127.0.0.1".into()], 30, dir.path())?;
        let (ccert, ckey) = issue::issue(&ca, "client", &["ops".into()], 30, dir.path())?;
        let server = ClusterTls::load(&ca_pem, &cert, &key)?;
        let identity = ClusterTls::load(&ca_pem, &ccert, &ckey)?;
        // A new client each time: a pooled connection would skip the handshake.
        let client = || http_client(Some(&identity), Duration::from_secs(3));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let router = axum::Router::new().route("/ping", axum::routing::get(|| async { "pong" }));
        tokio::spawn(async move { serve_bounded(listener, router, Some(&server), 2).await });
        let url = format!("https://{addr}/ping");
        assert_eq!(client()?.get(&url).send().await?.text().await?, "pong");

        let idle = [
            tokio::net::TcpStream::connect(addr).await?,
            tokio::net::TcpStream::connect(addr).await?,
        ];
        // Until the server has taken both (a probe it still admits holds a
        // slot only until it is dropped), a further connection is closed
        // unanswered, long before the 10 s handshake timeout.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut probe = tokio::net::TcpStream::connect(addr).await?;
            let mut buf = [0u8; 1];
            match tokio::time::timeout(Duration::from_secs(1), probe.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(_)) => panic!("the server wrote before a handshake"),
                Err(_) => assert!(tokio::time::Instant::now() < deadline, "never closed"),
            }
        }
        assert!(client()?.get(&url).send().await.is_err());

        drop(idle);
        let served = loop {
            match client()?.get(&url).send().await {
                Ok(answer) => break answer.text().await?,
                Err(e) => assert!(tokio::time::Instant::now() < deadline, "{e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(served, "pong");
        Ok(())
    }

    /// A tonic port's connections past its cap are closed at once; a slot
    /// comes back when a connection ends.
    #[tokio::test]
    async fn connections_past_a_tonic_ports_cap_are_closed()
    -> Result<(), Box<dyn std::error::Error>> {
        use futures::StreamExt;
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut incoming = Box::pin(capped_incoming(listener, 2));
        let _a = tokio::net::TcpStream::connect(addr).await?;
        let _b = tokio::net::TcpStream::connect(addr).await?;
        let first = incoming.next().await.ok_or("no connection")??;
        let _second = incoming.next().await.ok_or("no connection")??;
        let mut third = tokio::net::TcpStream::connect(addr).await?;
        // The stream accepts the third while it waits for a fourth, and
        // closes it: the peer reads the end at once.
        let waiting = tokio::spawn(async move { incoming.next().await.map(|c| c.is_ok()) });
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf)).await?;
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        drop(first);
        let _fourth = tokio::net::TcpStream::connect(addr).await?;
        let admitted = tokio::time::timeout(Duration::from_secs(5), waiting).await??;
        assert_eq!(admitted, Some(true));
        Ok(())
    }

    #[test]
    fn a_port_without_tls_is_loopback_only_unless_told() {
        let open: SocketAddr = "0.0.0.0:50050".parse().unwrap_or(([0, 0, 0, 0], 1).into());
        let lo: SocketAddr = ([127, 0, 0, 1], 50050).into();
        let err = check_listen("the scheduler", open, None, false)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("refusing to serve the scheduler on 0.0.0.0:50050 without TLS"));
        assert!(check_listen("the scheduler", lo, None, false).is_ok());
        assert!(check_listen("the scheduler", open, None, true).is_ok());
    }

    #[test]
    fn a_tls_mismatch_is_explained() {
        let plain = "client error (SendRequest): invalid HTTP version parsed";
        assert!(mismatch_hint(None, plain).is_some_and(|h| h.contains("--tls-ca")));
        assert!(mismatch_hint(None, "Connection refused (os error 111)").is_none());
        let unknown = "client error (Connect): invalid peer certificate: UnknownIssuer";
        assert!(mismatch_hint(None, unknown).is_some_and(|h| h.contains("--tls-ca")));
    }

    #[test]
    fn a_damaged_block_in_a_ca_bundle_is_named() {
        let pem = "-----BEGIN CERTIFICATE-----\n%%%not base64%%%\n-----END CERTIFICATE-----\n";
        let err = certificates("TLS CA", Path::new("/etc/sluice/tls/ca.pem"), pem)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with("TLS CA /etc/sluice/tls/ca.pem: a PEM block does not parse"),
            "{err}"
        );
        let none = certificates("TLS CA", Path::new("/x.pem"), "no pem here")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(none.contains("holds no PEM certificate"), "{none}");
    }

    #[test]
    fn tls_flags_go_together() {
        let args = TlsArgs {
            tls_ca: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let err = args.load().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("all three or none"), "{err}");
        assert!(TlsArgs::default().load().ok().flatten().is_none());
    }
}
