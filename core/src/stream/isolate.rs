//! Finding the records a batch's job fails on. One record that a cast or a
//! function in the job cannot take fails its whole batch, and the batch
//! fails the same way on every retry: the stream would stop there for good.
//! When a batch whose sources can pick records by their place
//! ([`Source::pickable`]) fails, the runner runs the job's queries again,
//! writing nothing ([`crate::client::JobRunner::probe`]), over halves of the
//! batch's records until it has the records that fail alone. With no more
//! of them than their source's `max_failing_records`, the batch runs again
//! with them read as bad records (`_error` says which statement failed and
//! why), where the job's error output takes them, as Firehose's
//! `processing-failed/` does; with more, the run ends naming them, as no
//! retry would mend it. A failure that no record alone reproduces (two
//! records together, a failed write, a flaky read) is left to the runner's
//! usual retry.
//!
//! A probe costs one run of the job's queries; finding k records among n
//! takes about 1.5 k log2(n) of them, so at most [`MOST`] records are
//! looked for in one batch, and a search gives up after [`MAX_PROBES`]
//! runs, or as soon as it sees the job fail on records of two halves
//! together but on neither alone.

use std::collections::HashMap;

use async_trait::async_trait;

use super::source::{Range, Source};
use crate::error::{SluiceError, render};

/// The most records picked out of one batch.
pub const MOST: usize = 16;
/// The most runs of the job's queries one search takes (finding [`MOST`]
/// records among 100,000 takes about 450).
const MAX_PROBES: u32 = 600;

/// The batch's records that can be picked: its pickable ranges in the
/// plan's order, numbered one after the other.
#[derive(Debug, Default)]
pub struct Records {
    /// (table, split, records, the first one's number).
    ranges: Vec<(String, String, u64, u64)>,
    total: u64,
}

impl Records {
    pub fn of(ranges: &[Range], sources: &[Box<dyn Source>]) -> Self {
        let mut out = Self::default();
        for r in ranges {
            let Some(source) = sources.iter().find(|s| s.table() == r.source) else {
                continue;
            };
            if let Some(n) = source.pickable(r).filter(|n| *n > 0) {
                out.ranges
                    .push((r.source.clone(), r.split.clone(), n, out.total));
                out.total += n;
            }
        }
        out
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Records `from..to` of the batch, as a window per (table, split).
    pub fn window(&self, from: u64, to: u64) -> HashMap<(String, String), (u64, u64)> {
        self.ranges
            .iter()
            .filter_map(|(table, split, n, first)| {
                let a = from.clamp(*first, first + n) - first;
                let b = to.clamp(*first, first + n) - first;
                (a < b).then(|| ((table.clone(), split.clone()), (a, b)))
            })
            .collect()
    }

    /// Record `i` of the batch: its table, split and place in its range.
    pub fn locate(&self, i: u64) -> Option<(&str, &str, u64)> {
        self.ranges
            .iter()
            .find(|(_, _, n, first)| (*first..first + n).contains(&i))
            .map(|(table, split, _, first)| (table.as_str(), split.as_str(), i - first))
    }
}

/// How the engine wraps a task's failure on a cluster (`Job 0Q2 failed:
/// Job failed due to stage 1 failed: Task failed due to runtime execution
/// error: ...`): the job's id differs each run, and the rest says nothing
/// of the record.
static ENGINE_WRAPPERS: std::sync::LazyLock<Result<regex::Regex, regex::Error>> =
    std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r"Job \S+ failed: |Job failed due to stage \d+ failed: |Task failed due to runtime execution error: ",
        )
    });

/// Why a probe failed, the same each time for the same record: where in
/// the job, and the engine's message.
pub fn why(e: &SluiceError) -> String {
    let text = render(e);
    match &*ENGINE_WRAPPERS {
        Ok(re) => re.replace_all(&text, "").into_owned(),
        Err(_) => text,
    }
}

/// Runs the job's queries over some of the batch's records.
#[async_trait]
pub trait Probe: Send {
    /// Over records `from..to` only (a snapshot's rows not at all), with
    /// `rejected` read as bad records; `Err` says why a statement failed.
    async fn run(&mut self, from: u64, to: u64, rejected: &[(u64, String)]) -> Result<(), String>;
}

/// What the search found.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// These records (number, why) fail the job alone, and the batch
    /// passes without them: it runs again with them read as bad records.
    Reject(Vec<(u64, String)>),
    /// More records fail alone than may be bad (`limit`) or looked for
    /// ([`MOST`]); each failed twice. The run ends.
    TooMany(Vec<(u64, String)>),
    /// No record to blame; why.
    NotFound(&'static str),
}

/// Looks for the records the job fails on among `total`, `limit` of which
/// may be bad.
pub async fn isolate(probe: &mut dyn Probe, total: u64, limit: u64) -> Outcome {
    let mut budget = Budget {
        probe,
        left: MAX_PROBES,
    };
    match search(&mut budget, total, limit).await {
        Ok(outcome) | Err(outcome) => outcome,
    }
}

/// The probes a search may run, counted.
struct Budget<'a> {
    probe: &'a mut dyn Probe,
    left: u32,
}

impl Budget<'_> {
    /// `Err` once the budget is spent: the search gives up.
    async fn run(
        &mut self,
        from: u64,
        to: u64,
        rejected: &[(u64, String)],
    ) -> Result<Result<(), String>, Outcome> {
        if self.left == 0 {
            return Err(Outcome::NotFound(
                "the search ran the job's queries as often as it may without an answer",
            ));
        }
        self.left -= 1;
        Ok(self.probe.run(from, to, rejected).await)
    }
}

/// [`isolate`], its early answers as `Err`.
async fn search(b: &mut Budget<'_>, total: u64, limit: u64) -> Result<Outcome, Outcome> {
    let most = usize::try_from(limit).unwrap_or(usize::MAX).min(MOST);
    if b.run(0, 0, &[]).await?.is_err() {
        return Err(Outcome::NotFound(
            "the job fails without any of the batch's records",
        ));
    }
    let Err(whole) = b.run(0, total, &[]).await? else {
        return Err(Outcome::NotFound(
            "the job's queries pass over the batch's records: the failure was elsewhere (a write, a read)",
        ));
    };
    // Windows to search, with why when they are known to fail; depth
    // first, lower half first: found in order, and the search stops one
    // record past `most`.
    let mut found: Vec<(u64, String)> = Vec::new();
    let mut todo: Vec<(u64, u64, Option<String>)> = vec![(0, total, Some(whole))];
    // Whether some record passes the job alone: when none does, the job
    // or its settings (a bad time zone) fail, not the records.
    let mut some_pass = false;
    while let Some((from, to, known)) = todo.pop() {
        let why = match known {
            Some(why) => why,
            None => match b.run(from, to, &[]).await? {
                Ok(()) => {
                    some_pass = true;
                    continue;
                }
                Err(why) => why,
            },
        };
        if to - from == 1 {
            found.push((from, why));
            if found.len() > most {
                break;
            }
            continue;
        }
        let mid = from + (to - from) / 2;
        match b.run(from, mid, &[]).await? {
            Err(lower) => {
                todo.push((mid, to, None));
                todo.push((from, mid, Some(lower)));
            }
            Ok(()) => {
                some_pass = true;
                match b.run(mid, to, &[]).await? {
                    Err(upper) => todo.push((mid, to, Some(upper))),
                    // Each half passes alone: records of both fail it together.
                    Ok(()) => {
                        return Err(Outcome::NotFound(
                            "the job fails on records together, not on one alone",
                        ));
                    }
                }
            }
        }
    }
    if found.is_empty() {
        return Err(Outcome::NotFound("no record fails the job alone"));
    }
    // Stopped early on the first records: the last one tells.
    let last = total - 1;
    if !some_pass && !found.iter().any(|(i, _)| *i == last) {
        some_pass = b.run(last, total, &[]).await?.is_ok();
    }
    if !some_pass {
        return Err(Outcome::NotFound(
            "no record of the batch passes the job alone: the job or its settings fail, not its records",
        ));
    }
    // Blaming a record needs a failure that is its content's, not its
    // read's (a source that stopped answering fails every window that
    // reads something) nor a moment's: read as a bad record it passes, and
    // read as it is it fails again, saying the same.
    for (i, why) in &found {
        if b.run(*i, i + 1, &[(*i, why.clone())]).await?.is_err() {
            return Err(Outcome::NotFound(
                "a record read as a bad record fails the job too: the failure is not in what it holds (a read that fails, or a job that does not leave out rows whose _error is set)",
            ));
        }
        if b.run(*i, i + 1, &[]).await?.err().as_ref() != Some(why) {
            return Err(Outcome::NotFound(
                "a record that failed alone did not fail the same way the second time",
            ));
        }
    }
    if found.len() > most {
        return Ok(Outcome::TooMany(found));
    }
    match b.run(0, total, &found).await? {
        Ok(()) => Ok(Outcome::Reject(found)),
        Err(_) => Err(Outcome::NotFound(
            "the job still fails with those records read as bad records",
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// A job that fails on some records alone, or on two together, and
    /// leaves out rejected records when `skips_rejected`.
    struct Fake {
        bad: BTreeSet<u64>,
        pair: Option<(u64, u64)>,
        skips_rejected: bool,
        /// Every read of a record from the sixth on fails (a shard that
        /// stopped answering).
        reads_fail: bool,
        /// Failures name the run they happened in.
        flaky: bool,
        runs: usize,
    }

    impl Fake {
        fn new(bad: &[u64]) -> Self {
            Self {
                bad: bad.iter().copied().collect(),
                pair: None,
                skips_rejected: true,
                reads_fail: false,
                flaky: false,
                runs: 0,
            }
        }
    }

    #[async_trait]
    impl Probe for Fake {
        async fn run(
            &mut self,
            from: u64,
            to: u64,
            rejected: &[(u64, String)],
        ) -> Result<(), String> {
            self.runs += 1;
            if self.reads_fail && from < to && to > 5 {
                return Err("shard s: connection refused".into());
            }
            let read = |i: &u64| {
                (from..to).contains(i)
                    && !(self.skips_rejected && rejected.iter().any(|(r, _)| r == i))
            };
            if let Some(i) = self.bad.iter().find(|i| read(i)) {
                return Err(match self.flaky {
                    true => format!("timed out in run {}", self.runs),
                    false => format!("cast failed on {i}"),
                });
            }
            match self.pair {
                Some((a, b)) if read(&a) && read(&b) => Err("overflow".into()),
                _ => Ok(()),
            }
        }
    }

    #[tokio::test]
    async fn the_records_that_fail_alone_are_found_in_order() {
        let mut fake = Fake::new(&[37, 3, 900]);
        let got = isolate(&mut fake, 1000, 5).await;
        let want = [3, 37, 900].map(|i| (i, format!("cast failed on {i}")));
        assert_eq!(got, Outcome::Reject(want.to_vec()));
        // About 2 k log2(n), not n.
        assert!(fake.runs < 70, "{} runs", fake.runs);
    }

    #[tokio::test]
    async fn more_than_the_limit_ends_the_search_past_it() {
        let mut fake = Fake::new(&[1, 5, 9]);
        let got = isolate(&mut fake, 10, 1).await;
        let want = [1, 5].map(|i| (i, format!("cast failed on {i}")));
        assert_eq!(got, Outcome::TooMany(want.to_vec()));
        // With no bad record allowed, the first names the failure.
        let got = isolate(&mut Fake::new(&[9]), 10, 0).await;
        assert_eq!(got, Outcome::TooMany(vec![(9, "cast failed on 9".into())]));
        // The cap holds whatever the limit.
        // (The last passes: the job works on some record.)
        let many: Vec<u64> = (0..39).collect();
        let Outcome::TooMany(got) = isolate(&mut Fake::new(&many), 40, 1_000_000).await else {
            panic!("not TooMany");
        };
        assert_eq!(got.len(), MOST + 1);
    }

    #[tokio::test]
    async fn failures_no_record_makes_alone_are_not_blamed_on_one() {
        let mut fake = Fake::new(&[]);
        fake.pair = Some((2, 70));
        let got = isolate(&mut fake, 100, 5).await;
        assert_eq!(
            got,
            Outcome::NotFound("the job fails on records together, not on one alone")
        );
        // Found a few runs in, not after searching every window.
        assert!(fake.runs <= 4, "{} runs", fake.runs);
        let got = isolate(&mut Fake::new(&[]), 100, 5).await;
        assert!(matches!(got, Outcome::NotFound(why) if why.contains("pass over")));
        // A job that reads rejected records anyway fails again.
        let mut fake = Fake::new(&[4]);
        fake.skips_rejected = false;
        let got = isolate(&mut fake, 10, 5).await;
        assert!(matches!(got, Outcome::NotFound(why) if why.contains("_error")));
        // Every record failing alone is the job's failure (a bad setting),
        // not the records': none is blamed, with or without a limit.
        let all: Vec<u64> = (0..40).collect();
        for limit in [0, 100] {
            let got = isolate(&mut Fake::new(&all), 40, limit).await;
            assert!(
                matches!(got, Outcome::NotFound(why) if why.contains("no record of the batch passes")),
                "{got:?}"
            );
        }
        let got = isolate(&mut Fake::new(&[0]), 1, 5).await;
        assert!(matches!(got, Outcome::NotFound(_)), "{got:?}");
        // A failure that says something else the second time is a
        // moment's, not the record's.
        let mut fake = Fake::new(&[3]);
        fake.flaky = true;
        let got = isolate(&mut fake, 10, 5).await;
        assert!(
            matches!(got, Outcome::NotFound(why) if why.contains("the same way")),
            "{got:?}"
        );
        // Reads that fail are not blamed on records, whatever the limit.
        for limit in [0, 5] {
            let mut fake = Fake::new(&[]);
            fake.reads_fail = true;
            let got = isolate(&mut fake, 10, limit).await;
            assert!(
                matches!(got, Outcome::NotFound(why) if why.contains("not in what it holds")),
                "{got:?}"
            );
        }
    }

    /// A record's failure reads the same each run: no job id, no
    /// engine wrappers.
    #[test]
    fn why_a_record_failed_says_where_and_the_engines_message() {
        let task = "Job 038GVNHBK4000 failed: Job failed due to stage 1 failed: Task failed due to runtime execution error: CastError(\"Cannot cast string 'abc' to value of Int64 type\")";
        let e = SluiceError::in_statement("poison.sql", 2)(
            datafusion::error::DataFusionError::Execution(task.into()),
        );
        assert_eq!(
            why(&e),
            "poison.sql:2: statement failed: Cannot cast string 'abc' to value of Int64 type"
        );
    }

    #[test]
    fn records_are_numbered_across_ranges() {
        let records = Records {
            ranges: vec![
                ("t".into(), "a".into(), 3, 0),
                ("t".into(), "b".into(), 4, 3),
            ],
            total: 7,
        };
        let w = records.window(2, 5);
        assert_eq!(w.get(&("t".into(), "a".into())), Some(&(2, 3)));
        assert_eq!(w.get(&("t".into(), "b".into())), Some(&(0, 2)));
        assert!(records.window(3, 3).is_empty());
        assert_eq!(records.locate(4), Some(("t", "b", 1)));
        assert_eq!(records.locate(7), None);
    }
}
