-- A micro-batch stream: JSON files arriving in ${input}/ appended to
-- ${output} as Parquet, each file exactly once.
--   sluice stream jobs/stream_files.sql --var input=/tmp/in --var output=/tmp/out --checkpoint /tmp/ck
CREATE EXTERNAL TABLE events (id BIGINT NOT NULL, v VARCHAR) STORED AS JSON LOCATION '${input}/';
COPY (SELECT id, v FROM events) TO '${output}' STORED AS PARQUET;
