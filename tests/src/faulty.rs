//! A loopback HTTP proxy in front of the test S3 server that answers a share
//! of multipart part uploads (`PUT ...?partNumber=...`) with `500 Internal
//! Server Error` instead of forwarding them: the flaky S3 of the fault tests.
//! It also counts the access keys requests were signed with (SigV4's
//! `Credential=`), so a credentials test sees which key was used, not only
//! that some key was found; can hold every `CompleteMultipartUpload` for a
//! while (so a test can act mid-commit); and keeps a ledger of requests by
//! kind and of the bytes servers copy for `CopyObject`, which is what any
//! S3-compatible server charges whatever its speed (the commit bench).
//! Plain HTTP/1.1 with `Content-Length` bodies, which is what the S3 clients
//! under test send and moto answers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A running proxy; stops with its runtime when dropped.
pub struct FaultyS3 {
    pub endpoint: String,
    pub injected: Arc<AtomicU64>,
    pub part_uploads: Arc<AtomicU64>,
    /// Requests per signing access key (`-` for unsigned requests).
    pub signers: Arc<Mutex<BTreeMap<String, u64>>>,
    ledger: Arc<Mutex<Ledger>>,
    latency_ms: Arc<AtomicU64>,
    _runtime: tokio::runtime::Runtime,
}

/// What passed through the proxy: requests by kind, and the bytes the
/// server copied (`CopyObject`), from the sizes of the objects it saw written.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Ledger {
    pub requests: BTreeMap<&'static str, u64>,
    pub copied_bytes: u64,
    /// Bytes sent in `PutObject` and `UploadPart` bodies.
    pub uploaded_bytes: u64,
    #[serde(skip)]
    sizes: std::collections::HashMap<String, u64>,
    #[serde(skip)]
    parts: std::collections::HashMap<String, u64>,
}

/// Counters the proxy keeps.
#[derive(Clone)]
struct Counts {
    injected: Arc<AtomicU64>,
    part_uploads: Arc<AtomicU64>,
    signers: Arc<Mutex<BTreeMap<String, u64>>>,
    ledger: Arc<Mutex<Ledger>>,
    hold_completes: std::time::Duration,
    refuse: Option<(&'static str, &'static str)>,
    failed_parts: Arc<Mutex<std::collections::HashSet<String>>>,
    /// Added before forwarding every request (a slow S3).
    latency_ms: Arc<AtomicU64>,
}

impl FaultyS3 {
    /// Proxies to `upstream` (`http://host:port`), failing every `every`-th
    /// part upload.
    pub fn start(upstream: &str, every: u64) -> Result<Self> {
        Self::start_with(upstream, every, std::time::Duration::ZERO, None)
    }

    /// As [`FaultyS3::start`], also holding every `CompleteMultipartUpload`
    /// for `hold_completes` before forwarding it, and refusing with `403
    /// AccessDenied` every request of kind `refuse.0` (`delete_objects`, ...)
    /// whose body contains `refuse.1`.
    pub fn start_with(
        upstream: &str,
        every: u64,
        hold_completes: std::time::Duration,
        refuse: Option<(&'static str, &'static str)>,
    ) -> Result<Self> {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let counts = Counts {
            injected: Arc::new(AtomicU64::new(0)),
            part_uploads: Arc::new(AtomicU64::new(0)),
            signers: Arc::default(),
            ledger: Arc::default(),
            hold_completes,
            refuse,
            failed_parts: Arc::default(),
            latency_ms: Arc::default(),
        };
        let kept = counts.clone();
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (up, counts) = (upstream.clone(), counts.clone());
                tokio::spawn(async move {
                    let _ = serve(client, &up, every, &counts).await;
                });
            }
        });
        Ok(Self {
            endpoint,
            injected: kept.injected,
            part_uploads: kept.part_uploads,
            signers: kept.signers,
            ledger: kept.ledger,
            latency_ms: kept.latency_ms,
            _runtime: runtime,
        })
    }

    /// Delays every request from now on by `latency` (zero: none).
    pub fn set_latency(&self, latency: std::time::Duration) {
        self.latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
    }

    /// The ledger so far.
    pub fn ledger(&self) -> Ledger {
        match self.ledger.lock() {
            Ok(l) => l.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Starts a new ledger (the sizes of objects already seen are kept).
    pub fn reset_ledger(&self) {
        let mut l = match self.ledger.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        l.requests.clear();
        l.copied_bytes = 0;
        l.uploaded_bytes = 0;
    }

    /// The access keys requests were signed with, and how many each.
    pub fn signing_keys(&self) -> BTreeMap<String, u64> {
        match self.signers.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// One request: its head (request line and headers, as sent) and body.
struct Request {
    head: String,
    body: Vec<u8>,
}

async fn read_message<R: AsyncBufReadExt + Unpin>(reader: &mut R) -> Result<Option<Request>> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        bail!("chunked bodies are not supported by the fault proxy");
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await?;
    Ok(Some(Request { head, body }))
}

async fn serve(client: TcpStream, upstream: &str, every: u64, counts: &Counts) -> Result<()> {
    let (injected, part_uploads) = (&counts.injected, &counts.part_uploads);
    let (read, mut write) = client.into_split();
    let mut reader = BufReader::new(read);
    while let Some(req) = read_message(&mut reader).await? {
        let signer = signing_key(&req.head).unwrap_or_else(|| "-".to_string());
        if let Ok(mut signers) = counts.signers.lock() {
            *signers.entry(signer).or_default() += 1;
        }
        let first = req.head.lines().next().unwrap_or_default().to_string();
        let is_part = first.starts_with("PUT ") && first.contains("partNumber=");
        // A part fails at most once: its retry goes through, so the client's
        // retry budget is never what a test measures.
        let part = first.split(' ').nth(1).unwrap_or_default().to_string();
        if is_part
            && part_uploads.fetch_add(1, Ordering::SeqCst) % every == every - 1
            && counts
                .failed_parts
                .lock()
                .map(|mut f| f.insert(part))
                .unwrap_or(false)
        {
            injected.fetch_add(1, Ordering::SeqCst);
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
                <Error><Code>InternalError</Code><Message>injected</Message></Error>";
            let resp = format!(
                "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            );
            write.write_all(resp.as_bytes()).await?;
            continue;
        }
        let kind = kind_of(&req.head);
        let latency = counts.latency_ms.load(Ordering::SeqCst);
        if latency > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(latency)).await;
        }
        if kind == "complete_multipart_upload" && !counts.hold_completes.is_zero() {
            tokio::time::sleep(counts.hold_completes).await;
        }
        if counts
            .refuse
            .is_some_and(|(k, body)| k == kind && String::from_utf8_lossy(&req.body).contains(body))
        {
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
                <Error><Code>AccessDenied</Code><Message>refused by the test proxy</Message></Error>";
            let resp = format!(
                "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            );
            write.write_all(resp.as_bytes()).await?;
            continue;
        }
        let response = forward(upstream, &req).await?;
        let ok = response.starts_with(b"HTTP/1.1 200") || response.starts_with(b"HTTP/1.1 204");
        if let Ok(mut ledger) = counts.ledger.lock() {
            ledger.record(kind, &req, ok);
        }
        write.write_all(&response).await?;
    }
    Ok(())
}

/// A header's value, by case-insensitive name.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The request's kind, as S3 names its operations.
fn kind_of(head: &str) -> &'static str {
    let first = head.lines().next().unwrap_or_default();
    let (method, target) = first.split_once(' ').unwrap_or_default();
    let query = target
        .split_once('?')
        .map(|(_, q)| q.split(' ').next().unwrap_or_default());
    let has = |q: &str| {
        query.is_some_and(|s| {
            s.split('&')
                .any(|p| p == q || p.starts_with(&format!("{q}=")))
        })
    };
    match method {
        "PUT" if has("partNumber") => "upload_part",
        "PUT" if header(head, "x-amz-copy-source").is_some() => "copy_object",
        "PUT" => "put_object",
        "POST" if has("uploads") => "create_multipart_upload",
        "POST" if has("uploadId") => "complete_multipart_upload",
        "POST" if has("delete") => "delete_objects",
        "DELETE" if has("uploadId") => "abort_multipart_upload",
        "DELETE" => "delete_object",
        "GET" if has("uploads") => "list_multipart_uploads",
        "GET"
            if has("list-type")
                || target
                    .split('?')
                    .next()
                    .is_some_and(|p| p.matches('/').count() <= 1) =>
        {
            "list_objects"
        }
        "GET" => "get_object",
        "HEAD" => "head_object",
        _ => "other",
    }
}

/// `/bucket/key` of a request target or copy source, decoded.
fn object_of(raw: &str) -> String {
    let path = raw
        .split('?')
        .next()
        .unwrap_or_default()
        .trim_start_matches('/');
    percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .into_owned()
}

impl Ledger {
    fn record(&mut self, kind: &'static str, req: &Request, ok: bool) {
        *self.requests.entry(kind).or_default() += 1;
        let first = req.head.lines().next().unwrap_or_default();
        let target = first.split(' ').nth(1).unwrap_or_default();
        let object = object_of(target);
        let query = target.split_once('?').map_or("", |(_, q)| q);
        let upload_id = query
            .split('&')
            .find_map(|p| p.strip_prefix("uploadId="))
            .unwrap_or_default()
            .to_string();
        let body = req.body.len() as u64;
        if !ok {
            return;
        }
        match kind {
            "put_object" => {
                self.uploaded_bytes += body;
                self.sizes.insert(object, body);
            }
            "upload_part" => {
                self.uploaded_bytes += body;
                *self.parts.entry(upload_id).or_default() += body;
            }
            "complete_multipart_upload" => {
                let size = self.parts.remove(&upload_id).unwrap_or_default();
                self.sizes.insert(object, size);
            }
            "copy_object" => {
                let source = object_of(header(&req.head, "x-amz-copy-source").unwrap_or_default());
                let size = self.sizes.get(&source).copied().unwrap_or_default();
                self.copied_bytes += size;
                self.sizes.insert(object, size);
            }
            _ => {}
        }
    }
}

/// Sends one request upstream on its own connection and returns the raw
/// response (head and `Content-Length` body).
async fn forward(upstream: &str, req: &Request) -> Result<Vec<u8>> {
    let mut up = TcpStream::connect(upstream)
        .await
        .with_context(|| format!("connecting to {upstream}"))?;
    up.write_all(req.head.as_bytes()).await?;
    up.write_all(&req.body).await?;
    let mut reader = BufReader::new(up);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            bail!("upstream closed mid-response");
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let status_line = head.lines().next().unwrap_or_default().to_string();
    let bodyless = req.head.starts_with("HEAD ")
        || status_line.contains(" 204 ")
        || status_line.contains(" 304 ");
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    let mut out = head.into_bytes();
    if !bodyless {
        match length {
            Some(n) => {
                let mut body = vec![0; n];
                reader.read_exact(&mut body).await?;
                out.extend_from_slice(&body);
            }
            None => {
                bail!("upstream response without Content-Length: {status_line}");
            }
        }
    }
    Ok(out)
}

/// The access key of a SigV4 `Authorization` header
/// (`AWS4-HMAC-SHA256 Credential=AKID/date/region/s3/aws4_request, ...`).
fn signing_key(head: &str) -> Option<String> {
    let value = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("authorization").then_some(v)
    })?;
    let credential = value.split("Credential=").nth(1)?;
    Some(credential.split('/').next()?.trim().to_string())
}
