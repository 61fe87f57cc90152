//! Functions sluice adds to SQL, registered the same way on the client, the
//! scheduler and every executor so that plans using them decode anywhere.
//!
//! - [`range`]: Spark's `range(start, end, step, numPartitions)` table function,
//!   which yields exactly `numPartitions` partitions so a job file written for
//!   Spark writes the same number of files under sluice.
//! - [`skewed`]: `skewed_events(rows, seed, numPartitions)`, the skewed event
//!   stream of the field notes' small-files incident, for partitioned writes.
//! - `fail` (feature `test-functions`, test builds only): scalar functions
//!   that fail on purpose, used by fault tests to make one task attempt fail
//!   in a controlled way.

#[cfg(feature = "test-functions")]
pub mod fail;
pub mod range;
pub mod skewed;

use std::sync::Arc;

use datafusion::logical_expr::ScalarUDF;

/// Whether this build carries the test-only functions (a workspace build,
/// with the test-support crate): release binaries must not.
pub const TEST_FUNCTIONS: bool = cfg!(feature = "test-functions");

/// Scalar functions every sluice session registers.
pub fn scalar_functions() -> Vec<Arc<ScalarUDF>> {
    #[cfg(feature = "test-functions")]
    {
        vec![Arc::new(ScalarUDF::from(fail::FailIf::new()))]
    }
    #[cfg(not(feature = "test-functions"))]
    {
        vec![]
    }
}
