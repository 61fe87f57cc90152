//! The `_SUCCESS` manifest a commit writes last: Hadoop S3A's SuccessData
//! fields plus per-file rows and bytes, so readers and tests can check what
//! a write committed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One committed file, as the manifest lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CommittedFile {
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    /// The writer partition (task attempt and partition) that wrote it.
    #[serde(default)]
    pub writer: String,
    /// Its rows per source split, for a micro-batch's write (see
    /// `WriteSpec::count_by`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub splits: Option<BTreeMap<String, u64>>,
}

/// A write's rows per source split, summed over its files: `None` unless
/// every file counted them.
pub fn rows_by_split(files: &[CommittedFile]) -> Option<BTreeMap<String, u64>> {
    let mut total: BTreeMap<String, u64> = BTreeMap::new();
    for file in files {
        for (split, rows) in file.splits.as_ref()? {
            *total.entry(split.clone()).or_default() += rows;
        }
    }
    Some(total)
}

/// The `_SUCCESS` manifest: Hadoop S3A's SuccessData fields plus per-file
/// rows and bytes, so readers and tests can check what a write committed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SuccessData {
    pub name: String,
    pub timestamp: i64,
    pub date: String,
    pub hostname: String,
    pub committer: String,
    pub description: String,
    pub job_id: String,
    pub job_id_source: String,
    pub filenames: Vec<String>,
    pub files: Vec<CommittedFile>,
    pub rows: u64,
    pub bytes: u64,
    pub diagnostics: BTreeMap<String, String>,
}

/// This host's name, for the manifest.
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
