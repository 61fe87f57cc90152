//! Plan inspection: which statements are writes sluice runs through its own
//! sinks (an `INSERT` into a DynamoDB table or into a directory table), and
//! the write options a job's `SET sluice.write.*` statements default.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::catalog::default_table_source::source_as_provider;
use datafusion::datasource::listing::ListingTable;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{LogicalPlan, WriteOp};

use crate::sink::dynamo::DynamoTable;
use crate::sink::files::{WriteFormat, WriteSpec};

/// `INSERT INTO` a `STORED AS DYNAMODB` table: the rows and the table.
pub(super) fn dynamo_insert(plan: &LogicalPlan) -> Option<(LogicalPlan, Arc<dyn TableProvider>)> {
    let LogicalPlan::Dml(dml) = plan else {
        return None;
    };
    let provider = source_as_provider(&dml.target).ok()?;
    provider.downcast_ref::<DynamoTable>()?;
    Some((dml.input.as_ref().clone(), provider))
}

pub(super) fn starts_with_insert(sql: &str) -> bool {
    sql.trim_start()
        .get(..6)
        .is_some_and(|w| w.eq_ignore_ascii_case("insert"))
}

/// `INSERT INTO` / `INSERT OVERWRITE` a listing table whose location is a
/// directory: the rows to write and where, so the insert goes through
/// sluice's writers and committer instead of DataFusion's single-task sink
/// (which writes files in place, visible before it finishes). `None` for any
/// other insert, which runs as DataFusion plans it.
/// Prefix of the session settings that give write options a default:
/// `SET sluice.write.target_file_rows = 240000` is `write.target_file_rows`
/// for every later write of the job that does not set it in `OPTIONS`.
pub const WRITE_SETTING_PREFIX: &str = "sluice.";

/// The write options the job's `SET sluice.write.*` statements (or
/// `--var sluice.write.*=...`) default.
pub(super) fn write_defaults(vars: &HashMap<String, String>) -> BTreeMap<String, String> {
    vars.iter()
        .filter_map(|(k, v)| {
            let key = k.to_ascii_lowercase();
            let option = key.strip_prefix(WRITE_SETTING_PREFIX)?;
            option
                .starts_with("write.")
                .then(|| (option.to_string(), v.clone()))
        })
        .collect()
}

pub(super) fn table_insert(
    plan: &LogicalPlan,
    defaults: &BTreeMap<String, String>,
) -> Result<Option<(LogicalPlan, WriteSpec)>, DataFusionError> {
    let LogicalPlan::Dml(dml) = plan else {
        return Ok(None);
    };
    let overwrite = match dml.op {
        WriteOp::Insert(InsertOp::Append) => false,
        WriteOp::Insert(InsertOp::Overwrite) => true,
        _ => return Ok(None),
    };
    let Ok(provider) = source_as_provider(&dml.target) else {
        return Ok(None);
    };
    let Some(table) = provider.downcast_ref::<ListingTable>() else {
        return Ok(None);
    };
    let [path] = table.table_paths().as_slice() else {
        return Ok(None);
    };
    if !path.is_collection() {
        return Ok(None);
    }
    let ext = table.options().format.get_ext();
    let format = WriteFormat::parse(ext.trim_start_matches('.'))
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    let partition_by = table
        .options()
        .table_partition_cols
        .iter()
        .map(|(name, _)| name.clone())
        .collect();
    let spec = WriteSpec::new(path.as_str(), format, overwrite, defaults.clone())
        .map_err(|e| DataFusionError::External(Box::new(e)))?
        .with_partition_by(partition_by);
    Ok(Some((dml.input.as_ref().clone(), spec)))
}

/// Whether a write's rows are a source's dead letters: its plan, followed
/// down from the top through single-input steps, filters on
/// `_error IS NOT NULL` (one of the filter's conjuncts) before it reaches a
/// join, a union or a scan. A union with such a branch, or a view over
/// one (not inlined in the plan this reads), is not told apart.
pub fn keeps_only_errors(plan: &LogicalPlan) -> bool {
    use datafusion::logical_expr::Expr;
    use datafusion::logical_expr::utils::split_conjunction;
    let mut node = plan;
    loop {
        if let LogicalPlan::Filter(filter) = node
            && split_conjunction(&filter.predicate).iter().any(|e| {
                matches!(e, Expr::IsNotNull(inner)
                    if matches!(inner.as_ref(), Expr::Column(c) if c.name == crate::source::kafka::ERROR_COLUMN))
            })
        {
            return true;
        }
        match node.inputs().as_slice() {
            [only] => node = only,
            _ => return false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use datafusion::prelude::SessionContext;

    use super::keeps_only_errors;

    #[tokio::test]
    async fn dead_letter_writes_are_told_by_their_filter() {
        let ctx = SessionContext::new();
        ctx.sql("CREATE TABLE ev (v INT, _error VARCHAR) AS VALUES (1, NULL), (2, 'bad')")
            .await
            .unwrap();
        let plan = |sql: &'static str| {
            let ctx = ctx.clone();
            async move { ctx.sql(sql).await.unwrap().into_unoptimized_plan() }
        };
        for (sql, dead) in [
            ("SELECT v, _error FROM ev WHERE _error IS NOT NULL", true),
            ("SELECT v FROM ev WHERE v > 0 AND _error IS NOT NULL", true),
            ("SELECT v FROM ev WHERE _error IS NULL", false),
            ("SELECT v FROM ev", false),
            ("SELECT v FROM ev WHERE v IS NOT NULL", false),
            (
                "SELECT v FROM ev WHERE _error IS NOT NULL UNION ALL SELECT v FROM ev WHERE _error IS NULL",
                false,
            ),
            (
                "SELECT v FROM (SELECT v, _error FROM ev WHERE _error IS NOT NULL) ORDER BY v",
                true,
            ),
        ] {
            assert_eq!(keeps_only_errors(&plan(sql).await), dead, "{sql}");
        }
    }
}
