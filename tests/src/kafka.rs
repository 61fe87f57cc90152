//! Kafka for the stream tests and bench: the shared test broker (tansu,
//! started by `scripts/test-servers.sh`), a private broker a test can pause
//! or kill, and a real producer (rskafka) writing the skewed events.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rskafka::client::ClientBuilder;
use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::record::Record;

/// The shared test broker's `host:port`.
pub fn shared_broker() -> Result<String> {
    std::env::var("SLUICE_TEST_KAFKA").context("SLUICE_TEST_KAFKA: run through scripts/test.sh")
}

fn rt() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// A broker of its own (in-memory storage) on a free loopback port; killed
/// when dropped.
pub struct Broker {
    pub addr: String,
    child: Child,
}

impl Broker {
    /// Starts `$SLUICE_TEST_TANSU`, or the one `scripts/test-servers.sh`
    /// built into the test cache.
    pub fn start() -> Result<Self> {
        let bin = match std::env::var("SLUICE_TEST_TANSU") {
            Ok(b) => b,
            Err(_) => {
                let cache = std::env::var("SLUICE_TEST_CACHE").unwrap_or_else(|_| {
                    format!(
                        "{}/.cache/sluice-test",
                        std::env::var("HOME").unwrap_or_default()
                    )
                });
                format!("{cache}/tansu/bin/tansu")
            }
        };
        if !Path::new(&bin).exists() {
            bail!("no tansu broker at {bin}: run scripts/test-servers.sh once to build it");
        }
        let port = crate::free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let url = format!("tcp://{addr}");
        let child = Command::new(bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting tansu")?;
        let broker = Self { addr, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&broker.addr).is_err() {
            if Instant::now() > deadline {
                bail!("tansu did not listen on {} within 30 s", broker.addr);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(broker)
    }

    fn signal(&self, sig: &str) -> Result<()> {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()?
            .success();
        if !ok {
            bail!("kill {sig} {} failed", self.child.id());
        }
        Ok(())
    }

    /// Stops the broker process (SIGSTOP): connections open, nothing answers.
    pub fn pause(&self) -> Result<()> {
        self.signal("-STOP")
    }

    pub fn resume(&self) -> Result<()> {
        self.signal("-CONT")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn create_topic(broker: &str, name: &str, partitions: i32) -> Result<()> {
    rt()?.block_on(async {
        let client = ClientBuilder::new(vec![broker.to_string()]).build().await?;
        client
            .controller_client()?
            .create_topic(name, partitions, 1, 5_000)
            .await?;
        Ok(())
    })
}

/// Produces `values` to partitions of `topic`, one record per request (a
/// batch of its own: tansu 0.6 answers a fetch from an offset inside a
/// batch with the next batch, and ListOffsets(latest) with the last batch's
/// first offset + 1), the partitions in parallel.
pub fn produce_all<V: Into<Vec<u8>> + Send + 'static>(
    broker: &str,
    topic: &str,
    by_partition: Vec<(i32, Vec<V>)>,
) -> Result<()> {
    rt()?.block_on(async {
        let client = ClientBuilder::new(vec![broker.to_string()]).build().await?;
        let mut tasks = vec![];
        for (partition, values) in by_partition {
            let pc = client
                .partition_client(topic, partition, UnknownTopicHandling::Retry)
                .await?;
            tasks.push(tokio::spawn(async move {
                for v in values {
                    let record = Record {
                        key: None,
                        value: Some(v.into()),
                        headers: Default::default(),
                        timestamp: chrono::Utc::now(),
                    };
                    pc.produce(vec![record], Compression::NoCompression).await?;
                }
                Ok::<_, anyhow::Error>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        Ok(())
    })
}

/// The skewed event `seq` as JSON: id 100 holds 30% of the events, the rest
/// spread over ids 0..40; `ts` is two seconds per event from
/// 2026-11-25T22:00Z, so a few thousand events cross hours and a day.
pub fn event(seq: u64) -> String {
    let id = if seq % 10 < 3 { 100 } else { seq % 40 };
    let ts = chrono::DateTime::from_timestamp(1_795_644_000 + 2 * seq as i64, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    format!("{{\"seq\":{seq},\"id\":{id},\"ts\":\"{ts}\",\"payload\":\"p{seq}\"}}")
}

/// Events `from..to` (see [`event`]) round-robin over `partitions`.
pub fn produce_events(
    broker: &str,
    topic: &str,
    partitions: i32,
    from: u64,
    to: u64,
) -> Result<()> {
    let n = partitions.max(1) as u64;
    let mut by_partition: Vec<Vec<String>> = vec![vec![]; n as usize];
    for seq in from..to {
        by_partition[(seq % n) as usize].push(event(seq));
    }
    produce_all(
        broker,
        topic,
        by_partition
            .into_iter()
            .enumerate()
            .map(|(p, v)| (p as i32, v))
            .collect(),
    )
}
