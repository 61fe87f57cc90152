-- Workload 2 of the field notes: events to a provisioned DynamoDB table,
-- paced by one limiter for the whole cluster (whatever ${partitions} is).
-- Variables: table, rows, partitions, percent, dead_letter.
-- The table must exist (partition key `pk` S, sort key `sk` N).
SET table=events;
SET rows=10000;
SET partitions=48;
SET percent=0.9;
SET dead_letter=/tmp/sluice-dead-letters;
CREATE EXTERNAL TABLE events (pk VARCHAR, sk BIGINT, kind VARCHAR, body VARCHAR)
STORED AS DYNAMODB LOCATION 'dynamodb://${table}'
OPTIONS ('write.percent' '${percent}', 'write.dead_letter' '${dead_letter}');
INSERT INTO events
SELECT concat('user-', CAST(id % 1000 AS VARCHAR)) AS pk,
       id AS sk,
       CASE WHEN id % 10 = 0 THEN 'purchase' ELSE 'view' END AS kind,
       repeat('x', 900) AS body
FROM range(0, ${rows}, 1, ${partitions});
