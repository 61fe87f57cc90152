//! Alarms over the batch reports: `METRIC > VALUE [for N]`, e.g.
//! `scheduling_share > 0.5 for 3`, `total_delay > 2 intervals`,
//! `no_commit > 10m`, `lag_age > 5m`, `lag_records > 1000`.
//!
//! A rule fires once when its condition has held for N batches in a row
//! (1 by default) and clears once at the first batch where it does not
//! (`no_commit` is checked on a timer too, and clears at the next commit).
//! A stream that looks and finds nothing new is back on its schedule: its
//! delay and share alarms clear then too (the next batch starts on time).
//! Lag alarms wait for a batch (a source may find nothing to read yet while
//! it is behind: a skip cut short, empty pages of a lagging shard), and
//! `processing_delay` says how slow the last batch was.
//! Each change is logged, counted (`sluice_stream_alarms_total`), shown in
//! `sluice_stream_alarm_active`, and handed to the [`Notifier`], which posts
//! it to a webhook and/or gives it to a command in the background, with
//! timeouts, so a slow receiver never stalls the batches.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use metrics::{counter, gauge};
use serde::{Deserialize, Serialize};

use super::error::StreamError;
use super::info::BatchInfo;

/// How long a webhook call may take.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an alarm command may run before it is killed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Alarm changes waiting for the notifier; more are dropped (and logged).
const QUEUE: usize = 256;
/// How long a stopping stream waits for its queued alarm notifications.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Metric {
    SchedulingShare,
    SchedulingDelay,
    ProcessingDelay,
    TotalDelay,
    LagRecords,
    LagAge,
    NoCommit,
}

impl Metric {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "scheduling_share" => Self::SchedulingShare,
            "scheduling_delay" => Self::SchedulingDelay,
            "processing_delay" => Self::ProcessingDelay,
            "total_delay" => Self::TotalDelay,
            "lag_records" => Self::LagRecords,
            "lag_age" => Self::LagAge,
            "no_commit" => Self::NoCommit,
            _ => return None,
        })
    }

    fn is_duration(self) -> bool {
        !matches!(self, Self::SchedulingShare | Self::LagRecords)
    }
}

const METRICS: &str = "scheduling_share, scheduling_delay, processing_delay, total_delay, lag_records, lag_age, no_commit";

#[derive(Debug, Clone, PartialEq)]
pub struct AlarmRule {
    /// The rule as written: its name in logs, metrics and notifications.
    pub text: String,
    metric: Metric,
    /// Milliseconds for durations, else the plain number.
    threshold: f64,
    for_batches: u32,
}

impl AlarmRule {
    /// Parses a rule; `interval` is the trigger's, for `N intervals`.
    pub fn parse(text: &str, interval: Option<Duration>) -> Result<Self, StreamError> {
        let bad = |reason: String| StreamError::BadAlarm {
            text: text.to_string(),
            reason,
        };
        let words: Vec<&str> = text.split_whitespace().collect();
        let (metric, rest) = match words.as_slice() {
            [m, ">", rest @ ..] if !rest.is_empty() => (*m, rest),
            _ => return Err(bad("expected METRIC > VALUE [for N]".into())),
        };
        let metric = Metric::parse(metric)
            .ok_or_else(|| bad(format!("unknown metric {metric} (one of {METRICS})")))?;
        let (value, for_batches) = match rest {
            [v, "for", n] | [v, "for", n, "batches"] => {
                let n: u32 = n
                    .parse()
                    .map_err(|_| bad(format!("'for {n}' needs a number of batches")))?;
                (vec![*v], n)
            }
            [v, unit, "for", n] | [v, unit, "for", n, "batches"] => {
                let n: u32 = n
                    .parse()
                    .map_err(|_| bad(format!("'for {n}' needs a number of batches")))?;
                (vec![*v, *unit], n)
            }
            other => (other.to_vec(), 1),
        };
        if for_batches == 0 {
            return Err(bad("'for' needs at least 1 batch".into()));
        }
        if metric == Metric::NoCommit && for_batches != 1 {
            return Err(bad("no_commit is a time, not a number of batches".into()));
        }
        let threshold = match (metric, value.as_slice()) {
            (m, [n, unit]) if m.is_duration() && unit.starts_with("interval") => {
                let n: f64 = n
                    .parse()
                    .map_err(|_| bad(format!("'{n}' is not a number")))?;
                let Some(i) = interval else {
                    return Err(bad("'intervals' needs a trigger interval (--every)".into()));
                };
                n * i.as_millis() as f64
            }
            (m, [v]) if m.is_duration() => humantime::parse_duration(v)
                .map_err(|e| bad(format!("'{v}' is not a duration like 30s or 10m: {e}")))?
                .as_millis() as f64,
            (Metric::SchedulingShare, [v]) => match v.strip_suffix('%') {
                Some(p) => p.parse::<f64>().map(|p| p / 100.0),
                None => v.parse::<f64>(),
            }
            .map_err(|_| bad(format!("'{v}' is not a share like 0.5 or 50%")))?,
            (Metric::LagRecords, [v]) => {
                v.parse::<u64>()
                    .map_err(|_| bad(format!("'{v}' is not a count")))? as f64
            }
            _ => return Err(bad("expected METRIC > VALUE [for N]".into())),
        };
        if !threshold.is_finite() || threshold < 0.0 {
            return Err(bad("the value must be a finite number >= 0".into()));
        }
        Ok(Self {
            text: words.join(" "),
            metric,
            threshold,
            for_batches,
        })
    }

    fn value(&self, info: &BatchInfo) -> Option<f64> {
        Some(match self.metric {
            Metric::SchedulingShare => info.scheduling_share(),
            Metric::SchedulingDelay => info.scheduling_delay_ms as f64,
            Metric::ProcessingDelay => info.processing_delay_ms as f64,
            Metric::TotalDelay => info.total_delay_ms as f64,
            Metric::LagRecords => info.lag_records() as f64,
            Metric::LagAge => info.lag_age_ms() as f64,
            Metric::NoCommit => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Firing,
    Cleared,
}

/// One alarm starting or ending.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmEvent {
    pub alarm: String,
    pub state: Change,
    /// The value that changed it (ms for durations).
    pub value: f64,
    pub threshold: f64,
    pub batch_id: Option<u64>,
    pub stream_id: String,
    pub checkpoint: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug)]
struct RuleState {
    rule: AlarmRule,
    streak: u32,
    active: bool,
}

/// The alarms of one stream and whether each is firing.
#[derive(Debug)]
pub struct AlarmState {
    rules: Vec<RuleState>,
    stream_id: String,
    checkpoint: String,
}

impl AlarmState {
    pub fn new(rules: Vec<AlarmRule>, stream_id: &str, checkpoint: &str) -> Self {
        for r in &rules {
            gauge!("sluice_stream_alarm_active", "alarm" => r.text.clone()).set(0.0);
        }
        Self {
            rules: rules
                .into_iter()
                .map(|rule| RuleState {
                    rule,
                    streak: 0,
                    active: false,
                })
                .collect(),
            stream_id: stream_id.to_string(),
            checkpoint: checkpoint.to_string(),
        }
    }

    fn change(
        &self,
        r: &RuleState,
        state: Change,
        value: f64,
        batch_id: Option<u64>,
        at: DateTime<Utc>,
    ) -> AlarmEvent {
        let name = r.rule.text.clone();
        let label = match state {
            Change::Firing => "firing",
            Change::Cleared => "cleared",
        };
        counter!("sluice_stream_alarms_total", "alarm" => name.clone(), "state" => label)
            .increment(1);
        gauge!("sluice_stream_alarm_active", "alarm" => name.clone()).set(match state {
            Change::Firing => 1.0,
            Change::Cleared => 0.0,
        });
        AlarmEvent {
            alarm: name,
            state,
            value,
            threshold: r.rule.threshold,
            batch_id,
            stream_id: self.stream_id.clone(),
            checkpoint: self.checkpoint.clone(),
            at,
        }
    }

    /// Evaluates every batch rule on a committed batch (and clears
    /// `no_commit`).
    pub fn on_batch(&mut self, info: &BatchInfo, at: DateTime<Utc>) -> Vec<AlarmEvent> {
        let mut out = Vec::new();
        for i in 0..self.rules.len() {
            let r = &self.rules[i];
            let value = r.rule.value(info).unwrap_or(0.0);
            let over = r.rule.value(info).is_some() && value > r.rule.threshold;
            let (streak, active) = (if over { r.streak + 1 } else { 0 }, r.active);
            let event = if over && !active && streak >= r.rule.for_batches {
                Some((Change::Firing, true))
            } else if !over && active {
                Some((Change::Cleared, false))
            } else {
                None
            };
            if let Some((change, now_active)) = event {
                out.push(self.change(r, change, value, Some(info.batch_id), at));
                self.rules[i].active = now_active;
            }
            self.rules[i].streak = streak;
        }
        out
    }

    /// Evaluates `no_commit` rules, `since_commit` after the last commit
    /// (or the stream's start).
    pub fn on_time(&mut self, since_commit: Duration, at: DateTime<Utc>) -> Vec<AlarmEvent> {
        let mut out = Vec::new();
        let value = since_commit.as_millis() as f64;
        for i in 0..self.rules.len() {
            let r = &self.rules[i];
            if r.rule.metric != Metric::NoCommit || r.active || value <= r.rule.threshold {
                continue;
            }
            out.push(self.change(r, Change::Firing, value, None, at));
            self.rules[i].active = true;
        }
        out
    }

    /// The stream looked and found nothing new: it is caught up. A
    /// `no_commit` alarm clears (a quiet source is not a stalled stream),
    /// and so do the delay and share alarms: the schedule starts again on
    /// time.
    pub fn on_caught_up(&mut self, at: DateTime<Utc>) -> Vec<AlarmEvent> {
        let mut out = Vec::new();
        for i in 0..self.rules.len() {
            let r = &self.rules[i];
            if !matches!(
                r.rule.metric,
                Metric::NoCommit
                    | Metric::SchedulingShare
                    | Metric::SchedulingDelay
                    | Metric::TotalDelay
            ) {
                continue;
            }
            if r.active {
                out.push(self.change(r, Change::Cleared, 0.0, None, at));
            }
            self.rules[i].active = false;
            self.rules[i].streak = 0;
        }
        out
    }
}

/// Hands alarm changes to a webhook and/or a command, in the background.
#[derive(Clone)]
pub struct Notifier {
    tx: Option<tokio::sync::mpsc::Sender<AlarmEvent>>,
    /// The task that sends them, awaited by [`Notifier::finish`].
    sender: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Notifier {
    /// `webhook`: an `http(s)://` URL the event is POSTed to as JSON;
    /// `command`: run with `sh -c`, the event as JSON on its stdin.
    pub fn start(webhook: Option<String>, command: Option<String>) -> Result<Self, StreamError> {
        if webhook.is_none() && command.is_none() {
            return Ok(Self {
                tx: None,
                sender: Arc::default(),
            });
        }
        if let Some(url) = &webhook
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(StreamError::Setting(format!(
                "the alarm webhook must be an http:// or https:// URL, got {url}"
            )));
        }
        let client = reqwest::Client::builder()
            .timeout(WEBHOOK_TIMEOUT)
            .build()
            .map_err(|e| StreamError::Setting(format!("alarm webhook client: {e}")))?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<AlarmEvent>(QUEUE);
        let sender = tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                if let Some(url) = &webhook {
                    let sent = client.post(url).json(&event).send().await;
                    match sent.and_then(|r| r.error_for_status()) {
                        Ok(_) => counter!("sluice_stream_alarm_webhooks_total", "result" => "ok")
                            .increment(1),
                        Err(e) => {
                            counter!("sluice_stream_alarm_webhooks_total", "result" => "failed")
                                .increment(1);
                            tracing::warn!(alarm = %event.alarm, error = %e, "alarm webhook failed");
                        }
                    }
                }
                if let Some(cmd) = &command {
                    run_command(cmd, &event).await;
                }
            }
        });
        Ok(Self {
            tx: Some(tx),
            sender: Arc::new(Mutex::new(Some(sender))),
        })
    }

    /// Stops taking events and waits for the queued ones to be delivered,
    /// at most [`DRAIN_TIMEOUT`] (the rest are dropped, with a warning).
    pub async fn finish(self) {
        let Self { tx, sender } = self;
        drop(tx);
        let handle = sender.lock().ok().and_then(|mut h| h.take());
        let Some(handle) = handle else {
            return;
        };
        if tokio::time::timeout(DRAIN_TIMEOUT, handle).await.is_err() {
            tracing::warn!(
                "alarm notifications still queued after {}s at exit were dropped",
                DRAIN_TIMEOUT.as_secs()
            );
        }
    }

    pub fn notify(&self, event: &AlarmEvent) {
        let Some(tx) = &self.tx else {
            return;
        };
        if tx.try_send(event.clone()).is_err() {
            tracing::warn!(alarm = %event.alarm, "alarm notifications are backed up; this one is dropped");
        }
    }
}

async fn run_command(cmd: &str, event: &AlarmEvent) {
    use tokio::io::AsyncWriteExt;
    let body = serde_json::to_vec(event).unwrap_or_default();
    let run = async {
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .stdin(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(&body).await?;
        }
        child.wait().await
    };
    match tokio::time::timeout(COMMAND_TIMEOUT, run).await {
        Ok(Ok(status)) if status.success() => {}
        Ok(Ok(status)) => tracing::warn!(alarm = %event.alarm, %status, "alarm command failed"),
        Ok(Err(e)) => tracing::warn!(alarm = %event.alarm, error = %e, "alarm command failed"),
        Err(_) => tracing::warn!(alarm = %event.alarm, "alarm command timed out; killed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(id: u64, scheduling: u64, processing: u64) -> BatchInfo {
        BatchInfo {
            batch_id: id,
            scheduling_delay_ms: scheduling,
            processing_delay_ms: processing,
            total_delay_ms: scheduling + processing,
            ..Default::default()
        }
    }

    #[test]
    fn rules_parse_and_bad_ones_are_named() -> Result<(), StreamError> {
        let ten = Some(Duration::from_secs(10));
        let r = AlarmRule::parse("scheduling_share > 50% for 3", ten)?;
        assert_eq!((r.threshold, r.for_batches), (0.5, 3));
        assert_eq!(
            AlarmRule::parse("total_delay > 2 intervals", ten)?.threshold,
            20_000.0
        );
        assert_eq!(
            AlarmRule::parse("no_commit > 10m", None)?.threshold,
            600_000.0
        );
        assert_eq!(
            AlarmRule::parse("lag_records > 1000 for 2", None)?.for_batches,
            2
        );
        for (text, want) in [
            ("latency > 3s", "unknown metric latency"),
            ("total_delay > 2 intervals", "needs a trigger interval"),
            ("total_delay > soon", "not a duration"),
            ("scheduling_share > 0.5 for 0", "at least 1 batch"),
            ("scheduling_share 0.5", "expected METRIC > VALUE"),
            ("no_commit > 1m for 3", "a time, not a number"),
        ] {
            let err = AlarmRule::parse(text, None).err().map(|e| e.to_string());
            let err = err.unwrap_or_default();
            assert!(err.contains(want) && err.contains(text), "{text}: {err}");
        }
        Ok(())
    }

    #[test]
    fn an_alarm_fires_once_after_n_batches_and_clears_once() -> Result<(), StreamError> {
        let rule = AlarmRule::parse("scheduling_share > 0.5 for 3", None)?;
        let mut a = AlarmState::new(vec![rule], "s", "ck");
        let now = Utc::now();
        // Two slow batches: not yet.
        assert!(a.on_batch(&batch(0, 8, 2), now).is_empty());
        assert!(a.on_batch(&batch(1, 8, 2), now).is_empty());
        let fired = a.on_batch(&batch(2, 9, 1), now);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].state, Change::Firing);
        assert_eq!(fired[0].batch_id, Some(2));
        // Still over: no second event.
        assert!(a.on_batch(&batch(3, 9, 1), now).is_empty());
        let cleared = a.on_batch(&batch(4, 0, 5), now);
        assert_eq!(cleared.len(), 1);
        assert_eq!(cleared[0].state, Change::Cleared);
        assert!(a.on_batch(&batch(5, 0, 5), now).is_empty());
        // Fired again, then the backlog drains and the stream finds
        // nothing new: caught up, it clears once without another batch,
        // and the streak starts again.
        for id in 6..9 {
            a.on_batch(&batch(id, 9, 1), now);
        }
        let cleared = a.on_caught_up(now);
        assert_eq!(cleared.len(), 1);
        assert_eq!(cleared[0].state, Change::Cleared);
        assert!(a.on_caught_up(now).is_empty());
        assert!(a.on_batch(&batch(9, 9, 1), now).is_empty());
        // A slow batch stays slow however idle the stream is, and a lag
        // waits for a batch that reads.
        let mut slow = AlarmState::new(
            vec![
                AlarmRule::parse("processing_delay > 1s", None)?,
                AlarmRule::parse("lag_records > 10", None)?,
            ],
            "s",
            "ck",
        );
        let mut behind = batch(0, 0, 5_000);
        behind.lag = vec![crate::stream::source::SourceLag {
            source: "src".into(),
            pending: 50,
            ..Default::default()
        }];
        assert_eq!(slow.on_batch(&behind, now).len(), 2);
        assert!(slow.on_caught_up(now).is_empty());
        Ok(())
    }

    #[test]
    fn no_commit_fires_on_time_and_clears_at_the_next_commit() -> Result<(), StreamError> {
        let rule = AlarmRule::parse("no_commit > 10m", None)?;
        let mut a = AlarmState::new(vec![rule], "s", "ck");
        let now = Utc::now();
        assert!(a.on_time(Duration::from_secs(300), now).is_empty());
        assert_eq!(a.on_time(Duration::from_secs(601), now).len(), 1);
        assert!(a.on_time(Duration::from_secs(900), now).is_empty());
        let cleared = a.on_batch(&batch(7, 0, 1), now);
        assert_eq!(cleared.len(), 1);
        assert_eq!(cleared[0].state, Change::Cleared);
        // Caught up with nothing to read also clears it, once.
        assert_eq!(a.on_time(Duration::from_secs(601), now).len(), 1);
        let caught_up = a.on_caught_up(now);
        assert_eq!(caught_up.len(), 1);
        assert_eq!(caught_up[0].state, Change::Cleared);
        assert!(a.on_caught_up(now).is_empty());
        Ok(())
    }

    /// A stream that stops right after an alarm changed still delivers it:
    /// `finish` waits for the queue (here a command that takes a second).
    #[tokio::test]
    async fn queued_notifications_are_delivered_before_the_stream_exits()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("events");
        let notifier = Notifier::start(None, Some(format!("sleep 1; cat >> {}", file.display())))?;
        notifier.notify(&AlarmEvent {
            alarm: "no_commit > 3s".into(),
            state: Change::Firing,
            value: 4000.0,
            threshold: 3000.0,
            batch_id: None,
            stream_id: "s".into(),
            checkpoint: "ck".into(),
            at: Utc::now(),
        });
        notifier.finish().await;
        let text = std::fs::read_to_string(&file)?;
        assert!(text.contains("\"alarm\":\"no_commit > 3s\""), "{text}");
        Ok(())
    }
}
