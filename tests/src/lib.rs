//! Test support (unpublished): real `sluice-scheduler` and `sluice-executor`
//! processes on free loopback ports, the `sluice` CLI, and readers that check
//! what a job wrote. Binaries come from the same target directory as the test
//! (`scripts/test.sh` builds them first).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub mod changes;
pub mod dynamo;
pub mod faulty;
pub mod fleet;
pub mod imds;
pub mod kafka;
pub mod s3;
pub mod tls;

/// The target directory's binary `name` (e.g. `sluice`), next to the
/// running binary (`sluice-bench`) or one level up from a test's
/// (`target/debug/deps/test-xxxx`).
pub fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let here = exe.parent().context("locating the target directory")?;
    let candidates = [Some(here), here.parent()];
    for dir in candidates.into_iter().flatten() {
        let path = dir.join(name);
        if path.is_file() {
            return Ok(path);
        }
    }
    bail!(
        "{name} is missing next to {}: run `cargo build --workspace --bins` first",
        exe.display()
    );
}

/// `kill SIGNAL PID`.
fn send_signal(pid: u32, signal: &str) -> Result<()> {
    let ok = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()?
        .success();
    anyhow::ensure!(ok, "kill {signal} {pid} failed");
    Ok(())
}

/// The workspace root (for `jobs/...`). Read when the test runs, not
/// when it was built: a build of this checkout can be reused from another
/// one's target directory (CI's clone shares the developers' cache), and
/// the path compiled in may be gone.
pub fn workspace_root() -> PathBuf {
    let manifest =
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    Path::new(&manifest)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A loopback port free now and not handed out before by this process:
/// the kernel may give a just-released port again, and a cluster asks for
/// several in a row (seen in CI: the coordinator and the scheduler got the
/// same one, and the scheduler could not bind).
pub fn free_port() -> Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..100 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
    bail!("no loopback port free that was not handed out already")
}

/// A `sluice` command with the default log setting (sluice's warnings
/// only), whatever the caller's environment says.
pub fn sluice() -> Result<Command> {
    let mut cmd = Command::new(binary("sluice")?);
    cmd.env_remove("RUST_LOG").env_remove("SLUICE_LOG");
    Ok(cmd)
}

/// Runs a command with a deadline; a hang is a test failure, not a stuck suite.
/// Its output is drained while it runs (a chatty child would otherwise block
/// on a full pipe and look hung).
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    use std::io::Read;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning")?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => bail!(
            "timed out after {:?}; stderr: {}",
            timeout,
            String::from_utf8_lossy(&stderr)
        ),
    }
}

/// Writes `sql` as a job file in `dir` and runs it with `sluice run` and
/// `args`, giving it five minutes.
pub fn run_job_text(dir: &Path, sql: &str, args: &[&str]) -> Result<Output> {
    let job = dir.join("job.sql");
    std::fs::write(&job, sql)?;
    run_with_timeout(
        sluice()?.arg("run").arg(&job).args(args),
        Duration::from_secs(300),
    )
}

/// Runs one HTTP exchange on a client with a 3 s timeout (presenting
/// `tls`'s certificate when set), from a test's (synchronous) thread.
pub fn http<T>(
    tls: Option<&sluice_core::tls::ClusterTls>,
    exchange: impl AsyncFnOnce(reqwest::Client) -> Result<T>,
) -> Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = sluice_core::tls::http_client(tls, Duration::from_secs(3))?;
    rt.block_on(exchange(client))
}

/// GETs a JSON document, with a short timeout.
pub fn get_json(url: &str) -> Result<serde_json::Value> {
    get_json_tls(url, None)
}

/// GETs a JSON document over cluster TLS, with a short timeout.
pub fn get_json_tls(
    url: &str,
    tls: Option<&sluice_core::tls::ClusterTls>,
) -> Result<serde_json::Value> {
    http(tls, async |client| {
        let resp = client.get(url).send().await?.error_for_status()?;
        Ok(resp.json().await?)
    })
}

/// POSTs a JSON body, with a short timeout: the status and the answer's text.
pub fn post_json(url: &str, body: &str) -> Result<(u16, String)> {
    http(None, async |client| {
        let resp = client
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await?))
    })
}

/// A scheduler and executors as real processes; killed on drop.
pub struct Cluster {
    pub endpoint: String,
    pub scheduler: Child,
    pub executors: Vec<Child>,
    /// `host:port` of each executor's Prometheus `/metrics`.
    pub metrics: Vec<String>,
    /// `host:port` of each executor's Flight service (shuffle data).
    pub flight: Vec<String>,
    /// `http(s)://host:port` of the DynamoDB write coordinator.
    pub coordinator: String,
    /// With TLS: the test's client identity, and the CLI's `SLUICE_TLS_*`.
    pub tls: Option<sluice_core::tls::ClusterTls>,
    pub cli_env: Vec<(String, String)>,
    /// Where the processes' logs go (see [`log_dir`]).
    pub logs: PathBuf,
    /// The scheduler's port and the extra environment of every process,
    /// to start the scheduler again where it was.
    scheduler_port: u16,
    env: Vec<(String, String)>,
    scheduler_starts: usize,
    _work: tempfile::TempDir,
}

/// A fresh folder for one cluster's logs: under `$SLUICE_TEST_LOGS` when
/// set (`scripts/test.sh` sets it, and prints the path when a test fails),
/// named by the test (its thread's name) and this process; else under
/// `fallback`, removed with it.
pub fn log_dir(fallback: &Path) -> Result<PathBuf> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = match std::env::var_os("SLUICE_TEST_LOGS") {
        Some(root) => {
            let thread = std::thread::current();
            let test = thread
                .name()
                .unwrap_or("test")
                .replace(|c: char| !c.is_ascii_alphanumeric() && c != '_', "-");
            PathBuf::from(root).join(format!(
                "{test}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ))
        }
        None => fallback.join("logs"),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A scheduler on `port` that notices a lost executor within seconds.
fn spawn_scheduler(
    port: u16,
    coordinator: &str,
    env: &[(&str, &str)],
    log: &Path,
) -> Result<Child> {
    Command::new(binary("sluice-scheduler")?)
        .envs(env.iter().copied())
        .args(local_paths(env))
        .args(["--coordinator-addr", coordinator])
        .args(["--bind-host", "127.0.0.1", "--external-host", "127.0.0.1"])
        .args(["--bind-port", &port.to_string()])
        .args(["--scheduler-policy", "pull-staged"])
        .args(["--executor-timeout-seconds", "6"])
        .args(["--expire-dead-executor-interval-seconds", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(log)?))
        .spawn()
        .context("starting sluice-scheduler")
}

impl Cluster {
    /// Starts a scheduler that notices a lost executor within seconds, and
    /// `executors` executors with `slots` task slots each.
    pub fn start(executors: usize, slots: usize) -> Result<Self> {
        Self::start_with_env(executors, slots, &[])
    }

    /// As [`Cluster::start`], with extra environment for every process
    /// (e.g. `AWS_ENDPOINT_URL_DYNAMODB` pointing at a proxy).
    pub fn start_with_env(executors: usize, slots: usize, env: &[(&str, &str)]) -> Result<Self> {
        Self::start_inner(executors, slots, env, None)
    }

    /// As [`Cluster::start`], with mutual TLS on every port: the processes
    /// present `certs`' node certificate, the CLI and the test's own calls
    /// its client certificate.
    pub fn start_tls(
        executors: usize,
        slots: usize,
        certs: &tls::TestCerts,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let node = certs.node_env();
        let mut all: Vec<(&str, &str)> =
            node.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        all.extend_from_slice(env);
        Self::start_inner(executors, slots, &all, Some(certs))
    }

    fn start_inner(
        executors: usize,
        slots: usize,
        env: &[(&str, &str)],
        certs: Option<&tls::TestCerts>,
    ) -> Result<Self> {
        let work = tempfile::tempdir()?;
        let logs = log_dir(work.path())?;
        let port = free_port()?;
        let coordinator = format!("127.0.0.1:{}", free_port()?);
        let scheduler = spawn_scheduler(port, &coordinator, env, &logs.join("scheduler.log"))?;
        let endpoint = format!("127.0.0.1:{port}");
        let tls = certs.map(tls::TestCerts::client).transpose()?;
        let mut cluster = Self {
            endpoint,
            scheduler,
            executors: vec![],
            metrics: vec![],
            flight: vec![],
            coordinator: format!(
                "{}://{coordinator}",
                sluice_core::tls::http_scheme(tls.as_ref())
            ),
            tls,
            cli_env: certs.map(tls::TestCerts::client_env).unwrap_or_default(),
            logs,
            scheduler_port: port,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            scheduler_starts: 1,
            _work: work,
        };
        cluster.wait_http("/api/version", Duration::from_secs(30))?;
        for i in 0..executors {
            let (child, metrics, flight) = cluster.spawn_executor(i, port, slots, env, 0)?;
            cluster.executors.push(child);
            cluster.metrics.push(metrics);
            cluster.flight.push(flight);
        }
        // The ports above were free when picked, but another process may
        // take one before the executor binds it: an executor that exits
        // while starting is started again on fresh ports (twice at most).
        for attempt in 1..=2 {
            std::thread::sleep(Duration::from_millis(500));
            for i in 0..executors {
                if cluster.executors[i].try_wait()?.is_some() {
                    let (child, metrics, flight) =
                        cluster.spawn_executor(i, port, slots, env, attempt)?;
                    cluster.executors[i] = child;
                    cluster.metrics[i] = metrics;
                    cluster.flight[i] = flight;
                }
            }
        }
        cluster.wait_executors(executors, Duration::from_secs(30))?;
        Ok(cluster)
    }

    /// Starts executor `i` on free ports; returns it, its metrics address
    /// and its Flight address. Its log is `executor-{i}.log` (`-{attempt}`
    /// on a restart).
    fn spawn_executor(
        &self,
        i: usize,
        scheduler_port: u16,
        slots: usize,
        env: &[(&str, &str)],
        attempt: usize,
    ) -> Result<(Child, String, String)> {
        let dir = self._work.path().join(format!("executor-{i}"));
        std::fs::create_dir_all(&dir)?;
        if attempt > 0 {
            let log = self.logs.join(format!("executor-{i}.log"));
            let _ = std::fs::rename(&log, self.logs.join(format!("executor-{i}.log.{attempt}")));
        }
        let metrics = format!("127.0.0.1:{}", free_port()?);
        let flight = free_port()?;
        let mut command = Command::new(binary("sluice-executor")?);
        // A test's own SLUICE_COORDINATOR_URL (the flag's variable) wins.
        if !env.iter().any(|(k, _)| *k == "SLUICE_COORDINATOR_URL") {
            command.args(["--coordinator-url", &self.coordinator]);
        }
        let child = command
            .envs(env.iter().copied())
            .args(local_paths(env))
            .env("SLUICE_METRICS_ADDR", &metrics)
            .args(["--bind-host", "127.0.0.1", "--external-host", "127.0.0.1"])
            .args([
                "--scheduler-host",
                "127.0.0.1",
                "--scheduler-port",
                &scheduler_port.to_string(),
            ])
            .args(["--bind-port", &flight.to_string()])
            .args(["--bind-grpc-port", &free_port()?.to_string()])
            .args(["--bind-health-port", &free_port()?.to_string()])
            .args(["--vcores", &slots.to_string()])
            .args(["--task-scheduling-policy", "pull-staged"])
            .args(["--executor-heartbeat-interval-seconds", "1"])
            .arg("--work-dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(
                self.logs.join(format!("executor-{i}.log")),
            )?))
            .spawn()
            .context("starting sluice-executor")?;
        Ok((child, metrics, format!("127.0.0.1:{flight}")))
    }

    /// Sends `signal` (`-STOP`, `-CONT`, ...) to the scheduler's process.
    pub fn signal_scheduler(&self, signal: &str) -> Result<()> {
        send_signal(self.scheduler.id(), signal)
    }

    /// SIGKILLs the scheduler (and the coordinator in its process).
    pub fn kill_scheduler(&mut self) -> Result<()> {
        self.scheduler.kill()?;
        self.scheduler.wait()?;
        Ok(())
    }

    /// Starts a fresh scheduler (no memory of earlier jobs) on the same
    /// ports, and waits until the executors have registered with it again.
    pub fn restart_scheduler(&mut self) -> Result<()> {
        let _ = self.scheduler.kill();
        let _ = self.scheduler.wait();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let coordinator = self
            .coordinator
            .split_once("://")
            .map_or(self.coordinator.as_str(), |(_, a)| a)
            .to_string();
        self.scheduler_starts += 1;
        let log = self
            .logs
            .join(format!("scheduler-{}.log", self.scheduler_starts));
        self.scheduler = spawn_scheduler(self.scheduler_port, &coordinator, &env, &log)?;
        self.wait_http("/api/version", Duration::from_secs(30))?;
        self.wait_executors(self.executors.len(), Duration::from_secs(60))
    }

    /// `http` or, with TLS, `https`.
    pub fn scheme(&self) -> &'static str {
        sluice_core::tls::http_scheme(self.tls.as_ref())
    }

    /// A REST answer of the scheduler, as text.
    pub fn rest_text(&self, path: &str) -> Result<String> {
        Ok(self.rest_get(path)?.1)
    }

    /// A REST answer of the scheduler: its status and text.
    pub fn rest_get(&self, path: &str) -> Result<(u16, String)> {
        http(self.tls.as_ref(), async |client| {
            let answer = client
                .get(format!("{}://{}{path}", self.scheme(), self.endpoint))
                .send()
                .await?;
            Ok((answer.status().as_u16(), answer.text().await?))
        })
    }

    fn get(&self, path: &str) -> Result<serde_json::Value> {
        get_json_tls(
            &format!("{}://{}{path}", self.scheme(), self.endpoint),
            self.tls.as_ref(),
        )
    }

    /// The DynamoDB coordinator's view of its tables (budget, rate, writers).
    pub fn coordinator_tables(&self) -> Result<serde_json::Value> {
        get_json_tls(
            &format!("{}/v1/dynamodb/tables", self.coordinator),
            self.tls.as_ref(),
        )
    }

    fn wait_http(&self, path: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.get(path).is_err() {
            if Instant::now() > deadline {
                bail!("scheduler at {} did not answer {path}", self.endpoint);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Executors the scheduler currently knows.
    pub fn executor_count(&self) -> usize {
        self.get("/api/executors")
            .ok()
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or(0)
    }

    pub fn wait_executors(&self, n: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.executor_count() < n {
            if Instant::now() > deadline {
                bail!("only {} of {n} executors registered", self.executor_count());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// The sum of a Prometheus metric (all label sets) over the executors.
    pub fn executor_metric(&self, name: &str) -> Result<f64> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut total = 0.0;
        for addr in &self.metrics {
            let text = rt.block_on(async {
                let client =
                    sluice_core::tls::http_client(self.tls.as_ref(), Duration::from_secs(3))?;
                let resp = client
                    .get(format!("{}://{addr}/metrics", self.scheme()))
                    .send()
                    .await?;
                Ok::<_, anyhow::Error>(resp.error_for_status()?.text().await?)
            })?;
            for line in text.lines() {
                let sample = line.split([' ', '{']).next() == Some(name);
                if sample && let Some(v) = line.rsplit(' ').next() {
                    total += v.parse::<f64>().unwrap_or(0.0);
                }
            }
        }
        Ok(total)
    }

    /// Jobs as the scheduler lists them.
    pub fn jobs(&self) -> Result<Vec<serde_json::Value>> {
        Ok(self
            .get("/api/jobs")?
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Cancels the job the scheduler is running with `sluice cancel`,
    /// failing unless the CLI says it did.
    pub fn cancel_running_job(&self) -> Result<String> {
        let job_id = self
            .jobs()?
            .into_iter()
            .filter(|j| {
                j["job_status"]
                    .as_str()
                    .is_some_and(|s| s.contains("Running"))
            })
            .find_map(|j| j["job_id"].as_str().map(str::to_string))
            .context("no running job on the scheduler")?;
        let c = run_with_timeout(
            sluice()?
                .args(["cancel", &job_id, "--scheduler", &self.endpoint])
                .envs(self.cli_env.iter().map(|(k, v)| (k, v))),
            Duration::from_secs(30),
        )?;
        anyhow::ensure!(
            c.status.success(),
            "sluice cancel {job_id}: {}",
            String::from_utf8_lossy(&c.stderr)
        );
        Ok(job_id)
    }

    /// Sends `signal` (`-STOP`, `-CONT`) to executor `i`: SIGSTOP cuts it off
    /// as a network partition would, without killing it.
    pub fn signal_executor(&self, i: usize, signal: &str) -> Result<()> {
        send_signal(
            self.executors.get(i).context("no such executor")?.id(),
            signal,
        )
    }

    /// SIGKILL, as a crashed machine would.
    pub fn kill_executor(&mut self, i: usize) -> Result<()> {
        let child = self.executors.get_mut(i).context("no such executor")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// `sluice submit job args` on this cluster with `env` set, whatever
    /// its outcome (within 300 s).
    pub fn submit(&self, job: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
        run_with_timeout(
            sluice()?
                .arg("submit")
                .arg(job)
                .args(["--scheduler", &self.endpoint])
                .env("SLUICE_COORDINATOR", &self.coordinator)
                .envs(self.cli_env.iter().map(|(k, v)| (k, v)))
                .envs(env.iter().copied())
                .args(args),
            Duration::from_secs(300),
        )
    }

    /// `sluice submit job args` against this cluster (five minutes at
    /// most); fails with the CLI's stderr and the scheduler's log unless the
    /// job succeeded.
    pub fn submit_ok(&self, job: &Path, args: &[&str]) -> Result<Output> {
        let o = self.submit(job, args, &[])?;
        anyhow::ensure!(
            o.status.success(),
            "submit failed: {}\nscheduler log:\n{}",
            String::from_utf8_lossy(&o.stderr),
            self.scheduler_log()
        );
        Ok(o)
    }

    /// `sluice submit job args` in the background, output piped (for tests
    /// that act on the cluster while the job runs).
    pub fn spawn_submit(&self, job: &Path, args: &[&str]) -> Result<Child> {
        Ok(sluice()?
            .arg("submit")
            .arg(job)
            .args(["--scheduler", &self.endpoint])
            .env("SLUICE_COORDINATOR", &self.coordinator)
            .envs(self.cli_env.iter().map(|(k, v)| (k, v)))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?)
    }

    /// Executor `i`'s log.
    pub fn executor_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.logs.join(format!("executor-{i}.log"))).unwrap_or_default()
    }

    /// The scheduler's log, for failure messages.
    pub fn scheduler_log(&self) -> String {
        std::fs::read_to_string(self.logs.join("scheduler.log")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self
            .executors
            .iter_mut()
            .chain(std::iter::once(&mut self.scheduler))
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The local directories a test cluster's SQL may use: the temporary
/// directory tests write under and the workspace (job files' inputs),
/// unless the test sets `SLUICE_ALLOW_LOCAL_PATHS` itself.
fn local_paths(env: &[(&str, &str)]) -> Vec<String> {
    if env.iter().any(|(k, _)| *k == "SLUICE_ALLOW_LOCAL_PATHS") {
        return vec![];
    }
    vec![
        "--allow-local-paths".into(),
        format!(
            "{},{}",
            std::env::temp_dir().display(),
            workspace_root().display()
        ),
    ]
}

/// Visible entries of an output directory (what a reader would list), sorted.
pub fn visible_files(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| !n.starts_with('_') && !n.starts_with('.'))
        .collect();
    names.sort();
    Ok(names)
}

/// Everything under `dir`, hidden or not, recursively (for "nothing left behind").
pub fn all_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = vec![];
    if !dir.exists() {
        return Ok(out);
    }
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            out.extend(all_entries(&p)?);
        }
        out.push(p);
    }
    Ok(out)
}

/// The Parquet files under `out`'s Hive partition directories (`id=7/` or
/// `month=11/day=25/hour=22/id=7/`) whose names carry `tag` (one write's
/// files, e.g. one stream batch's): per partition path, (files, rows), rows
/// from each file's footer. Staging directories (`_`-prefixed) are skipped.
pub fn files_per_id(
    out: &Path,
    tag: &str,
) -> Result<std::collections::BTreeMap<String, (u64, u64)>> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let mut per = std::collections::BTreeMap::new();
    let mut dirs = vec![(out.to_path_buf(), String::new())];
    while let Some((dir, key)) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            if path.is_dir() {
                if name.contains('=') && !name.starts_with('_') {
                    let sub = if key.is_empty() {
                        name
                    } else {
                        format!("{key}/{name}")
                    };
                    dirs.push((path, sub));
                }
                continue;
            }
            if key.is_empty() || !name.ends_with(".parquet") || !name.contains(tag) {
                continue;
            }
            let rows = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path)?)?
                .metadata()
                .file_metadata()
                .num_rows() as u64;
            let e = per.entry(key.clone()).or_insert((0, 0));
            e.0 += 1;
            e.1 += rows;
        }
    }
    Ok(per)
}

/// Reads a written Parquet directory back with a separate `sluice run`:
/// (rows, distinct values of `column`). `columns` declares the table (so an
/// output still empty reads as zero rows), e.g. `id BIGINT, v VARCHAR`.
pub fn count_distinct(
    dir: &Path,
    location: &str,
    columns: &str,
    column: &str,
) -> Result<(u64, u64)> {
    let o = run_job_text(
        dir,
        &format!(
            "CREATE EXTERNAL TABLE counted ({columns}) STORED AS PARQUET LOCATION '{}/';\n\
             SELECT count(*) AS n, count(DISTINCT {column}) AS d FROM counted;\n",
            location.trim_end_matches('/')
        ),
        &["--output", "json"],
    )?;
    anyhow::ensure!(
        o.status.success(),
        "reading {location} back: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    let row = &v["statements"][1]["rows"][0];
    match (row["n"].as_u64(), row["d"].as_u64()) {
        (Some(n), Some(d)) => Ok((n, d)),
        _ => bail!("reading {location} back: no counts in {v}"),
    }
}
