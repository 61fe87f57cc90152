-- Workload 1 of the field notes: Spark's committer benchmark, unchanged.
-- Variables: rows, partitions, output (e.g. --var rows=4e9 --var output=s3://bucket/p).
-- Writes exactly ${partitions} Parquet files holding ${rows} rows.
SET rows=1000000;
SET partitions=100;
SET output=/tmp/sluice-range;
INSERT OVERWRITE DIRECTORY '${output}' USING PARQUET
SELECT * FROM range(0, ${rows}, 1, ${partitions});
