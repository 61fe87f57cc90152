//! The scheduler's REST API, as the client uses it: waiting for a scheduler
//! to answer, connecting a Ballista session to it, and job listing, status,
//! progress and cancel.

use std::time::{Duration, Instant};

use ballista::prelude::SessionContextExt;
use datafusion::prelude::SessionContext;

use super::report::JobProgress;
use crate::error::SluiceError;
use crate::plan::session;
use crate::tls::ClusterTls;

/// Connects to a scheduler (over `tls` when set), waiting at most `timeout`
/// for it to answer.
pub async fn connect(
    endpoint: &str,
    tls: Option<&ClusterTls>,
    timeout: Duration,
) -> Result<SessionContext, SluiceError> {
    wait_for_scheduler(endpoint, tls, timeout).await?;
    let session_failed = |source| SluiceError::Session {
        endpoint: endpoint.to_string(),
        source: Box::new(source),
    };
    let state = session::client_state(tls).map_err(session_failed)?;
    let url = format!("df://{}", host_port(endpoint));
    let ctx = SessionContext::remote_with_state(&url, state)
        .await
        .map_err(session_failed)?;
    session::register_functions(&ctx);
    Ok(ctx)
}

fn host_port(endpoint: &str) -> &str {
    endpoint
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_start_matches("df://")
        .trim_end_matches('/')
}

/// The scheduler's REST base URL (`https://` with cluster TLS).
pub fn rest_base(endpoint: &str, tls: Option<&ClusterTls>) -> String {
    format!("{}://{}", crate::tls::http_scheme(tls), host_port(endpoint))
}

fn http_client(tls: Option<&ClusterTls>) -> Result<reqwest::Client, SluiceError> {
    Ok(crate::tls::http_client(tls, Duration::from_secs(5))?)
}

/// Polls `/api/version` until the scheduler answers or `timeout` passes.
pub async fn wait_for_scheduler(
    endpoint: &str,
    tls: Option<&ClusterTls>,
    timeout: Duration,
) -> Result<(), SluiceError> {
    let client = http_client(tls)?;
    let url = format!("{}/api/version", rest_base(endpoint, tls));
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = client.get(&url).send().await;
        let reason = match attempt {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => format!("HTTP {} from {url}", r.status()),
            Err(e) => {
                let reason = crate::error::render(&e);
                match crate::tls::mismatch_hint(tls, &reason) {
                    Some(hint) => format!("{reason}; {hint}"),
                    None => reason,
                }
            }
        };
        if Instant::now() >= deadline {
            return Err(SluiceError::Unreachable {
                endpoint: endpoint.to_string(),
                reason: format!("no answer within {}s: {reason}", timeout.as_secs()),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The scheduler's REST API: job listing, status and cancel.
pub struct SchedulerApi {
    base: String,
    client: reqwest::Client,
}

impl SchedulerApi {
    pub fn new(endpoint: &str, tls: Option<&ClusterTls>) -> Result<Self, SluiceError> {
        Ok(Self {
            base: rest_base(endpoint, tls),
            client: http_client(tls)?,
        })
    }

    async fn get(&self, path: &str) -> Result<serde_json::Value, SluiceError> {
        let url = format!("{}{path}", self.base);
        let err = |source| SluiceError::SchedulerCall {
            url: url.clone(),
            source,
        };
        let resp = self.client.get(&url).send().await.map_err(err)?;
        let status = resp.status();
        if !status.is_success() {
            return Err(SluiceError::SchedulerAnswer {
                url: url.clone(),
                status: status.as_u16(),
            });
        }
        resp.json().await.map_err(err)
    }

    pub async fn executors(&self) -> Result<Vec<serde_json::Value>, SluiceError> {
        let v = self.get("/api/executors").await?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    pub async fn jobs(&self) -> Result<serde_json::Value, SluiceError> {
        self.get("/api/jobs").await
    }

    pub async fn job(&self, job_id: &str) -> Result<serde_json::Value, SluiceError> {
        self.get(&format!("/api/job/{job_id}")).await
    }

    pub async fn stages(&self, job_id: &str) -> Result<serde_json::Value, SluiceError> {
        self.get(&format!("/api/job/{job_id}/stages")).await
    }

    pub async fn cancel(&self, job_id: &str) -> Result<(), SluiceError> {
        let url = format!("{}/api/job/{job_id}", self.base);
        let resp =
            self.client
                .patch(&url)
                .send()
                .await
                .map_err(|source| SluiceError::SchedulerCall {
                    url: url.clone(),
                    source,
                })?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(SluiceError::SchedulerAnswer {
                url,
                status: resp.status().as_u16(),
            })
        }
    }

    pub async fn progress(&self, job_id: &str) -> Result<JobProgress, SluiceError> {
        let job = self.job(job_id).await?;
        let mut p = JobProgress {
            job_id: job_id.to_string(),
            status: job["job_status"].as_str().unwrap_or_default().to_string(),
            stages: job["num_stages"].as_u64().unwrap_or(0) as usize,
            stages_done: job["completed_stages"].as_u64().unwrap_or(0) as usize,
            percent: job["percent_complete"].as_u64().unwrap_or(0).min(100) as u8,
            ..Default::default()
        };
        if let Ok(stages) = self.stages(job_id).await
            && let Some(list) = stages["stages"].as_array()
        {
            for stage in list {
                if let Some(tasks) = stage["tasks"].as_array() {
                    p.tasks += tasks.len();
                    p.tasks_done += tasks
                        .iter()
                        .filter(|t| {
                            t["status"]
                                .to_string()
                                .to_ascii_lowercase()
                                .contains("success")
                        })
                        .count();
                }
            }
        }
        Ok(p)
    }
}
