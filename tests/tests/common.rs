// Shared by the integration tests: reading back what a job wrote.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use arrow::array::{AsArray, Int64Array};
use arrow::datatypes::Int64Type;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// The statement the skew tests run: `skewed_events(rows, seed, partitions)`
/// written to `dir` `PARTITIONED BY (id)` with statement `options`.
pub fn skewed_copy(rows: u64, seed: u64, partitions: u64, dir: &Path, options: &str) -> String {
    format!(
        "COPY (SELECT seq, ts, payload, id FROM skewed_events({rows}, {seed}, {partitions})) \
         TO '{}' STORED AS PARQUET PARTITIONED BY (id) OPTIONS ({options});\n",
        dir.display()
    )
}

/// Writes [`skewed_copy`] with `write.target_file_rows` = `target` to
/// `job`, the file a test submits.
pub fn write_skewed_job(
    job: &Path,
    rows: u64,
    seed: u64,
    partitions: u64,
    dir: &Path,
    target: u64,
) -> Result<()> {
    let sql = skewed_copy(
        rows,
        seed,
        partitions,
        dir,
        &format!("'write.target_file_rows' '{target}'"),
    );
    std::fs::write(job, sql).with_context(|| format!("writing {}", job.display()))
}

/// Reads every `.parquet` file in `dir` and checks the `id` column holds
/// `0..rows` exactly once. Returns the number of files.
pub fn check_range_output(dir: &Path, rows: u64) -> Result<usize> {
    let mut files = 0;
    let mut count = 0u64;
    let mut sum: i128 = 0;
    let mut min = i64::MAX;
    let mut max = i64::MIN;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("parquet") {
            continue;
        }
        files += 1;
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path)?)?.build()?;
        for batch in reader {
            let batch = batch?;
            let ids: &Int64Array = batch.column(0).as_primitive::<Int64Type>();
            for v in ids.values() {
                count += 1;
                sum += i128::from(*v);
                min = min.min(*v);
                max = max.max(*v);
            }
        }
    }
    ensure!(count == rows, "read {count} rows, expected {rows}");
    if rows > 0 {
        // With count == rows and min/max at the ends, equal sums mean no id is
        // missing or repeated unless errors cancel exactly; ids are also checked
        // for uniqueness on small outputs below.
        ensure!(min == 0 && max == rows as i64 - 1, "ids span {min}..={max}");
        let expected: i128 = i128::from(rows) * (i128::from(rows) - 1) / 2;
        ensure!(sum == expected, "id sum {sum}, expected {expected}");
    }
    Ok(files)
}

/// All ids in the output, for exact checks on small outputs.
pub fn ids(dir: &Path) -> Result<BTreeSet<i64>> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("parquet") {
            continue;
        }
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path)?)?.build()?;
        for batch in reader {
            let batch = batch?;
            for v in batch.column(0).as_primitive::<Int64Type>().values() {
                ensure!(out.insert(*v), "id {v} written twice");
            }
        }
    }
    Ok(out)
}

/// The `_SUCCESS` manifest as JSON.
pub fn manifest(dir: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("_SUCCESS")).context("reading _SUCCESS")?;
    Ok(serde_json::from_str(&text)?)
}

/// Checks `_SUCCESS` lists exactly the visible files, with `rows` in total.
pub fn check_manifest(dir: &Path, rows: u64) -> Result<()> {
    let m = manifest(dir)?;
    let mut listed: Vec<String> = m["filenames"]
        .as_array()
        .context("filenames")?
        .iter()
        .filter_map(|f| f.as_str())
        .filter_map(|f| f.rsplit('/').next().map(str::to_string))
        .collect();
    listed.sort();
    let present = sluice_test_support::visible_files(dir)?;
    ensure!(
        listed == present,
        "manifest lists {listed:?}, directory has {present:?}"
    );
    ensure!(
        m["rows"].as_u64() == Some(rows),
        "manifest rows {}",
        m["rows"]
    );
    let per_file: u64 = m["files"]
        .as_array()
        .context("files")?
        .iter()
        .filter_map(|f| f["rows"].as_u64())
        .sum();
    ensure!(per_file == rows, "per-file rows add to {per_file}");
    Ok(())
}

/// Rows in each `.parquet` file directly in `dir`.
pub fn row_counts(dir: &Path) -> Result<Vec<u64>> {
    let mut out = vec![];
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("parquet") {
            continue;
        }
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path)?)?;
        out.push(reader.metadata().file_metadata().num_rows() as u64);
    }
    Ok(out)
}

/// The manifest's files grouped by their Hive directory (`id=100`):
/// `(rows, writer)` per file.
pub fn manifest_files_by_dir(
    dir: &Path,
) -> Result<std::collections::BTreeMap<String, Vec<(u64, String)>>> {
    let m = manifest(dir)?;
    let mut out: std::collections::BTreeMap<String, Vec<(u64, String)>> = Default::default();
    for f in m["files"].as_array().context("files")? {
        let path = f["path"].as_str().context("path")?;
        let parent = path.rsplit('/').nth(1).context("file directory")?;
        out.entry(parent.to_string()).or_default().push((
            f["rows"].as_u64().context("rows")?,
            f["writer"].as_str().context("writer")?.to_string(),
        ));
    }
    Ok(out)
}

/// Checks a `PARTITIONED BY (id)` output of `skewed_events(rows, ..)`
/// against the generator (`id_of` gives row `r`'s id): every `seq` once, each id's rows in exactly
/// ceil(rows / target) files of at most `target` rows. Returns the
/// distinct writers of each id's files.
pub fn check_skewed_output(
    dir: &Path,
    rows: u64,
    target: u64,
    id_of: impl Fn(u64) -> i64,
) -> Result<std::collections::BTreeMap<i64, usize>> {
    check_skewed_output_files(dir, rows, target, id_of, true)
}

/// As [`check_skewed_output`]; with `exact_files` false an id may have more
/// than its ideal file count (a re-run map task leaves short chunks).
pub fn check_skewed_output_files(
    dir: &Path,
    rows: u64,
    target: u64,
    id_of: impl Fn(u64) -> i64,
    exact_files: bool,
) -> Result<std::collections::BTreeMap<i64, usize>> {
    let mut expected = std::collections::BTreeMap::new();
    for r in 0..rows {
        *expected.entry(id_of(r)).or_insert(0u64) += 1;
    }
    let files = manifest_files_by_dir(dir)?;
    ensure!(
        files.len() == expected.len(),
        "directories {:?}, expected ids {:?}",
        files.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    let mut seqs = BTreeSet::new();
    let mut writers = std::collections::BTreeMap::new();
    for (id, n) in &expected {
        let key = format!("id={id}");
        let listed = files
            .get(&key)
            .with_context(|| format!("no files for {key}"))?;
        let counts: Vec<u64> = listed.iter().map(|(r, _)| *r).collect();
        ensure!(
            counts.iter().sum::<u64>() == *n,
            "{key}: {counts:?}, expected {n} rows"
        );
        ensure!(
            counts.len() as u64 == n.div_ceil(target)
                || (!exact_files && counts.len() as u64 > n.div_ceil(target)),
            "{key}: {} files {counts:?}, expected ceil({n} / {target})",
            counts.len()
        );
        ensure!(counts.iter().all(|&c| c <= target), "{key}: {counts:?}");
        // What a reader sees agrees with the manifest.
        let mut on_disk = row_counts(&dir.join(&key))?;
        let mut listed_counts = counts.clone();
        on_disk.sort_unstable();
        listed_counts.sort_unstable();
        ensure!(on_disk == listed_counts, "{key}: on disk {on_disk:?}");
        for seq in ids(&dir.join(&key))? {
            ensure!(seqs.insert(seq), "seq {seq} written twice");
        }
        let distinct: BTreeSet<&String> = listed.iter().map(|(_, w)| w).collect();
        writers.insert(*id, distinct.len());
    }
    ensure!(
        seqs.len() as u64 == rows,
        "{} distinct seqs, expected {rows}",
        seqs.len()
    );
    Ok(writers)
}

/// Reads every data object under the prefix with the parquet crate and checks
/// the ids are exactly `0..rows`, each once. Returns the data keys.
pub fn check_s3_range_output(
    s3: &sluice_test_support::s3::S3,
    bucket: &str,
    prefix: &str,
    rows: u64,
) -> Result<Vec<String>> {
    let keys = s3.data_keys(bucket, prefix)?;
    let mut seen = vec![false; rows as usize];
    let mut count = 0u64;
    for key in &keys {
        ensure!(key.ends_with(".parquet"), "unexpected object {key}");
        let body = bytes::Bytes::from(s3.get(bucket, key)?);
        for batch in ParquetRecordBatchReaderBuilder::try_new(body)?.build()? {
            for id in batch?.column(0).as_primitive::<Int64Type>().values() {
                let i = usize::try_from(*id)?;
                ensure!(i < seen.len(), "id {id} out of range");
                ensure!(!seen[i], "id {id} written twice");
                seen[i] = true;
                count += 1;
            }
        }
    }
    ensure!(count == rows, "read {count} rows, expected {rows}");
    Ok(keys)
}

/// How many items `table` holds (a counting scan of the DynamoDB of
/// `AWS_ENDPOINT_URL_DYNAMODB`).
pub fn dynamo_count(table: &str) -> Result<u64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = sluice_core::storage::dynamodb::client().await;
        let (mut total, mut start) = (0u64, None);
        loop {
            let page = client
                .scan()
                .table_name(table)
                .select(aws_sdk_dynamodb::types::Select::Count)
                .set_exclusive_start_key(start)
                .send()
                .await?;
            total += u64::try_from(page.count())?;
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                return Ok(total);
            }
        }
    })
}
