-- Workload 5 of the field notes as one job: chat messages written to a
-- DynamoDB table (partition key LivestreamID, sort key UID) reach ${output}
-- as NDJSON twice, once by LivestreamID=<id>/ and once by event hour
-- as Firehose lays it out (yyyy/MM/dd/HH/ of the change's creation time, in
-- UTC or `--var zone=Europe/Paris`, so a re-run batch lands in the same place,
-- unlike Firehose's arrival time), and changes that do not fit the columns land in errors/
-- with Firehose's fields. INSERT, MODIFY and REMOVE all arrive.
--   sluice stream jobs/chat_changes.sql --var table=chat --var output=s3://bucket/chat \
--     --checkpoint s3://bucket/checkpoints/chat --every 10s
-- The table needs its stream on (StreamViewType NEW_AND_OLD_IMAGES).
-- event_time is UTC as `yyyy-MM-dd HH:mm:ss.SSS`, the Hive JSON SerDe's
-- default timestamp format (Athena reads it as a TIMESTAMP).
SET start = trim_horizon;
SET batch = 50000;
-- The zone of the hour directories: an IANA name or an offset (+05:30).
SET zone = UTC;
CREATE EXTERNAL TABLE chat ("LivestreamID" VARCHAR NOT NULL, "UID" BIGINT NOT NULL, message VARCHAR, sent_at BIGINT)
  STORED AS DYNAMODB_STREAM LOCATION 'dynamodb://${table}'
  -- Changes that do not decode, and those the SQL below fails on alone
  -- (read as bad records, README "Records the job fails on"), go to errors/;
  -- every other change to both layouts: a batch that loses one commits
  -- nothing (max_filtered_records 0).
  OPTIONS ('starting_position' '${start}', 'max_records_per_batch' '${batch}',
           'max_bad_records' '1000000', 'max_failing_records' '16',
           'max_filtered_records' '0');
COPY (SELECT "LivestreamID", "UID", event_name, message, sent_at,
             to_char(approximate_creation_time, '%Y-%m-%d %H:%M:%S%.3f') AS event_time,
             shard_id, sequence_number, new_image, old_image
      FROM chat WHERE _error IS NULL)
  TO '${output}/by_stream/' STORED AS JSON PARTITIONED BY ("LivestreamID");
COPY (SELECT "LivestreamID", "UID", event_name, message, sent_at,
             to_char(approximate_creation_time, '%Y-%m-%d %H:%M:%S%.3f') AS event_time,
             shard_id, sequence_number, new_image, old_image,
             -- Firehose's yyyy/MM/dd/HH/ directories, in the zone; the hour
             -- stays in the rows.
             to_char(zoned, '%Y-%m-%dT%H') AS event_hour,
             to_char(zoned, '%Y') AS yyyy, to_char(zoned, '%m') AS mm,
             to_char(zoned, '%d') AS dd, to_char(zoned, '%H') AS hh
      FROM (SELECT *, approximate_creation_time AT TIME ZONE '${zone}' AS zoned
            FROM chat WHERE _error IS NULL))
  TO '${output}/by_hour/' STORED AS JSON PARTITIONED BY (yyyy, mm, dd, hh)
  OPTIONS ('write.partition_style' 'values');
COPY (SELECT 1 AS "attemptsMade", CAST(approximate_creation_time AS BIGINT) AS "arrivalTimestamp",
             CASE WHEN _error LIKE 'the job failed on this record alone:%'
                  THEN 'Record.ProcessingFailed' ELSE 'Record.DecodeFailed' END AS "errorCode",
             _error AS "errorMessage",
             COALESCE(data_text, new_image, old_image, keys) AS "rawData", shard_id, sequence_number
      FROM chat WHERE _error IS NOT NULL)
  TO '${output}/errors/' STORED AS JSON;
