//! Boilerplate every sluice operator shares: the `ExecutionPlan` methods of
//! a single-input operator, and the checks of its partition and children.
//! Lives below every sink so operators of any sink can use it.

mod parts;

pub(crate) use parts::part_properties;
pub use parts::{PartRead, PartScanExec};

/// The `ExecutionPlan` methods sluice's write and commit operators share:
/// each holds `input`, `spec` and `properties`, is rebuilt with
/// `Self::new(child, spec)`, and has no expressions of its own.
macro_rules! single_input_plan {
    ($name:expr) => {
        $crate::exec::single_input_plan!(@body $name, |this: &Self, child| Self::new(child, this.spec.clone()));
    };
    // An operator with state beyond its spec rebuilds itself with `$rebuild`.
    ($name:expr, $rebuild:ident) => {
        $crate::exec::single_input_plan!(@body $name, |this: &Self, child| this.$rebuild(child));
    };
    (@body $name:expr, $make:expr) => {
        fn name(&self) -> &str {
            $name
        }

        fn properties(&self) -> &::std::sync::Arc<::datafusion::physical_plan::PlanProperties> {
            &self.properties
        }

        fn children(
            &self,
        ) -> Vec<&::std::sync::Arc<dyn ::datafusion::physical_plan::ExecutionPlan>> {
            vec![&self.input]
        }

        fn apply_expressions(
            &self,
            _f: &mut dyn FnMut(
                &::std::sync::Arc<dyn ::datafusion::physical_expr::PhysicalExpr>,
            ) -> ::datafusion::common::Result<
                ::datafusion::common::tree_node::TreeNodeRecursion,
            >,
        ) -> ::datafusion::common::Result<::datafusion::common::tree_node::TreeNodeRecursion> {
            Ok(::datafusion::common::tree_node::TreeNodeRecursion::Continue)
        }

        fn with_new_children(
            self: ::std::sync::Arc<Self>,
            children: Vec<::std::sync::Arc<dyn ::datafusion::physical_plan::ExecutionPlan>>,
        ) -> ::datafusion::common::Result<
            ::std::sync::Arc<dyn ::datafusion::physical_plan::ExecutionPlan>,
        > {
            let child = $crate::exec::only_child(children, $name)?;
            let make = $make;
            Ok(::std::sync::Arc::new(make(&self, child)))
        }
    };
}
pub(crate) use single_input_plan;

/// Operators that gather every writer's report run as one partition.
pub(crate) fn only_partition_zero(name: &str, partition: usize) -> datafusion::common::Result<()> {
    if partition != 0 {
        return Err(datafusion::common::DataFusionError::Internal(format!(
            "{name} has one partition, asked for {partition}"
        )));
    }
    Ok(())
}

/// The one child of a single-input operator, or an error naming it.
pub(crate) fn only_child(
    mut children: Vec<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>>,
    name: &str,
) -> datafusion::common::Result<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
    match children.pop() {
        Some(child) if children.is_empty() => Ok(child),
        _ => Err(datafusion::common::DataFusionError::Internal(format!(
            "{name} takes exactly one child"
        ))),
    }
}

/// An operator's output rows as a typed struct, read and written by column
/// name (never by position): a column added to a report cannot shift the
/// others, and a missing or mistyped column is an error naming it, not a
/// panic in the client. Each report declares its schema next to its
/// operator; arrow's JSON codec maps fields to columns of the same name
/// (reports are a few rows, so the detour through JSON costs nothing).
pub trait Report: serde::Serialize + serde::de::DeserializeOwned {
    /// The operator producing this report, for error messages.
    const OPERATOR: &'static str;

    /// The report's columns, named like the fields.
    fn fields() -> Vec<arrow::datatypes::Field>;

    /// The report's schema.
    fn schema() -> arrow::datatypes::SchemaRef {
        std::sync::Arc::new(arrow::datatypes::Schema::new(Self::fields()))
    }

    /// `rows` as one batch of [`Report::schema`].
    fn to_batch(rows: &[Self]) -> datafusion::common::Result<arrow::array::RecordBatch>
    where
        Self: Sized,
    {
        let schema = Self::schema();
        let failed = |e: arrow::error::ArrowError| {
            datafusion::common::DataFusionError::Internal(format!("{} report: {e}", Self::OPERATOR))
        };
        let mut decoder = arrow::json::ReaderBuilder::new(std::sync::Arc::clone(&schema))
            .with_batch_size(rows.len().max(1))
            .build_decoder()
            .map_err(failed)?;
        decoder.serialize(rows).map_err(failed)?;
        Ok(decoder
            .flush()
            .map_err(failed)?
            .unwrap_or_else(|| arrow::array::RecordBatch::new_empty(schema)))
    }

    /// Every row of `batches`, by column name.
    fn from_batches(batches: &[arrow::array::RecordBatch]) -> datafusion::common::Result<Vec<Self>>
    where
        Self: Sized,
    {
        let failed = |e: String| {
            datafusion::common::DataFusionError::Internal(format!(
                "reading {}'s report: {e}",
                Self::OPERATOR
            ))
        };
        let mut rows = Vec::new();
        for batch in batches.iter().filter(|b| b.num_rows() > 0) {
            let mut json = Vec::new();
            let mut writer = arrow::json::ArrayWriter::new(&mut json);
            writer.write(batch).map_err(|e| failed(e.to_string()))?;
            writer.finish().map_err(|e| failed(e.to_string()))?;
            let part: Vec<Self> = serde_json::from_slice(&json).map_err(|e| {
                failed(format!(
                    "{e} (columns {:?})",
                    batch
                        .schema()
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                ))
            })?;
            rows.extend(part);
        }
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::{DataType, Field};
    use serde::{Deserialize, Serialize};

    use super::Report;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Sample {
        name: String,
        rows: u64,
        wcu: f64,
        note: Option<String>,
    }

    impl Report for Sample {
        const OPERATOR: &'static str = "SampleExec";

        fn fields() -> Vec<Field> {
            vec![
                Field::new("name", DataType::Utf8, false),
                Field::new("rows", DataType::UInt64, false),
                Field::new("wcu", DataType::Float64, false),
                Field::new("note", DataType::Utf8, true),
            ]
        }
    }

    #[test]
    fn reports_round_trip_by_column_name() -> datafusion::common::Result<()> {
        let rows = vec![
            Sample {
                name: "a".into(),
                rows: u64::MAX,
                wcu: 1.5,
                note: None,
            },
            Sample {
                name: "b".into(),
                rows: 0,
                wcu: 0.0,
                note: Some("x".into()),
            },
        ];
        let batch = Sample::to_batch(&rows)?;
        assert_eq!(batch.schema(), Sample::schema());
        // Columns in another order still read by name.
        let reordered = batch.project(&[3, 2, 1, 0])?;
        assert_eq!(Sample::from_batches(&[reordered])?, rows);
        Ok(())
    }

    #[test]
    fn a_missing_column_is_an_error_naming_the_operator() -> datafusion::common::Result<()> {
        let batch = Sample::to_batch(&[Sample {
            name: "a".into(),
            rows: 1,
            wcu: 1.0,
            note: None,
        }])?;
        let without_rows = batch.project(&[0, 2, 3])?;
        let err = Sample::from_batches(&[without_rows])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("SampleExec") && err.contains("rows"), "{err}");
        Ok(())
    }
}

/// What a sink's write spec tells the logical node that carries it.
pub trait SinkSpec: Clone + std::fmt::Debug + serde::Serialize + Send + Sync + 'static {
    /// The node's name in plans (`SluiceWrite`).
    const NODE: &'static str;

    /// The write statement's result: the sink's commit report.
    fn result_schema() -> arrow::datatypes::SchemaRef;

    /// One line for `EXPLAIN`.
    fn explain(&self) -> String;
}

/// A sink's write in the logical plan: the rows to write (`input`) and the
/// sink's spec. The planner turns it into the sink's operators.
#[derive(Debug, Clone)]
pub struct SinkNode<S> {
    pub input: datafusion::logical_expr::LogicalPlan,
    pub spec: S,
    schema: datafusion::common::DFSchemaRef,
}

impl<S: SinkSpec> SinkNode<S> {
    pub fn try_new(
        input: datafusion::logical_expr::LogicalPlan,
        spec: S,
    ) -> datafusion::common::Result<Self> {
        let schema =
            std::sync::Arc::new(datafusion::common::DFSchema::try_from(S::result_schema())?);
        Ok(Self {
            input,
            spec,
            schema,
        })
    }

    pub fn into_plan(self) -> datafusion::logical_expr::LogicalPlan {
        datafusion::logical_expr::LogicalPlan::Extension(datafusion::logical_expr::Extension {
            node: std::sync::Arc::new(self),
        })
    }

    /// The spec as text: specs hold floats, so equality and order go
    /// through their serialized form.
    fn key(&self) -> String {
        serde_json::to_string(&self.spec).unwrap_or_default()
    }
}

impl<S: SinkSpec> PartialEq for SinkNode<S> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key() && self.input == other.input
    }
}

impl<S: SinkSpec> Eq for SinkNode<S> {}

impl<S: SinkSpec> std::hash::Hash for SinkNode<S> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state);
        self.input.hash(state);
    }
}

impl<S: SinkSpec> PartialOrd for SinkNode<S> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.key().partial_cmp(&other.key())
    }
}

impl<S: SinkSpec> datafusion::logical_expr::UserDefinedLogicalNodeCore for SinkNode<S> {
    fn name(&self) -> &str {
        S::NODE
    }

    fn inputs(&self) -> Vec<&datafusion::logical_expr::LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &datafusion::common::DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<datafusion::logical_expr::Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}: {}", S::NODE, self.spec.explain())
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<datafusion::logical_expr::Expr>,
        mut inputs: Vec<datafusion::logical_expr::LogicalPlan>,
    ) -> datafusion::common::Result<Self> {
        match inputs.pop() {
            Some(input) if inputs.is_empty() => Self::try_new(input, self.spec.clone()),
            _ => Err(datafusion::common::DataFusionError::Internal(format!(
                "{} takes exactly one input",
                S::NODE
            ))),
        }
    }
}

/// `scan` narrowed to `projection`'s columns of `schema` (a table
/// provider's scan that builds its whole rows).
pub(crate) fn project(
    scan: std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    schema: &arrow::datatypes::SchemaRef,
    projection: Option<&Vec<usize>>,
) -> datafusion::common::Result<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
    use std::sync::Arc;

    use datafusion::physical_expr::PhysicalExpr;
    use datafusion::physical_expr::expressions::Column;
    let Some(p) = projection else {
        return Ok(scan);
    };
    let exprs = p
        .iter()
        .map(|i| {
            let field = schema.field(*i);
            let col: Arc<dyn PhysicalExpr> = Arc::new(Column::new(field.name(), *i));
            (col, field.name().clone())
        })
        .collect::<Vec<_>>();
    Ok(Arc::new(
        datafusion::physical_plan::projection::ProjectionExec::try_new(exprs, scan)?,
    ))
}
