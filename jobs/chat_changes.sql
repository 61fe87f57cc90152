-- Workload 5 of the field notes as one job: chat messages written to a
-- DynamoDB table (partition key LivestreamID, sort key UID) reach ${output}
-- as NDJSON twice, once by LivestreamID=<id>/ and once by event hour
-- as Firehose lays it out (yyyy/MM/dd/HH/, UTC, from the change's creation time, so a re-run batch lands in the
-- same place), and changes that do not fit the columns land in errors/
-- with Firehose's fields. INSERT, MODIFY and REMOVE all arrive.
--   sluice stream jobs/chat_changes.sql --var table=chat --var output=s3://bucket/chat \
--     --checkpoint s3://bucket/checkpoints/chat --every 10s
-- The table needs its stream on (StreamViewType NEW_AND_OLD_IMAGES).
SET start = trim_horizon;
SET batch = 50000;
CREATE EXTERNAL TABLE chat ("LivestreamID" VARCHAR NOT NULL, "UID" BIGINT NOT NULL, message VARCHAR, sent_at BIGINT)
  STORED AS DYNAMODB_STREAM LOCATION 'dynamodb://${table}'
  OPTIONS ('starting_position' '${start}', 'max_records_per_batch' '${batch}', 'max_bad_records' '1000000');
COPY (SELECT "LivestreamID", "UID", event_name, message, sent_at, approximate_creation_time AS event_time,
             shard_id, sequence_number, new_image, old_image
      FROM chat WHERE _error IS NULL)
  TO '${output}/by_stream/' STORED AS JSON PARTITIONED BY ("LivestreamID");
COPY (SELECT "LivestreamID", "UID", event_name, message, sent_at, approximate_creation_time AS event_time,
             shard_id, sequence_number, new_image, old_image,
             -- Firehose's yyyy/MM/dd/HH/ directories; the values stay in the rows.
             to_char(approximate_creation_time, '%Y-%m-%dT%H') AS event_hour,
             to_char(approximate_creation_time, '%Y') AS yyyy, to_char(approximate_creation_time, '%m') AS mm,
             to_char(approximate_creation_time, '%d') AS dd, to_char(approximate_creation_time, '%H') AS hh
      FROM chat WHERE _error IS NULL)
  TO '${output}/by_hour/' STORED AS JSON PARTITIONED BY (yyyy, mm, dd, hh)
  OPTIONS ('write.partition_style' 'values');
COPY (SELECT 1 AS "attemptsMade", approximate_creation_time AS "arrivalTimestamp",
             'Record.DecodeFailed' AS "errorCode", _error AS "errorMessage",
             COALESCE(new_image, old_image, keys) AS "rawData", shard_id, sequence_number
      FROM chat WHERE _error IS NOT NULL)
  TO '${output}/errors/' STORED AS JSON;
