-- Per hour partition: raw messages (duplicates included), distinct execution
-- ids, and rows in executions_enriched. Once the hour is final the last two
-- match; a difference means windows still open, or late events not yet
-- folded in by a reprocess.
WITH raw AS (
    SELECT dt, hour, count(*) AS raw_messages, count(DISTINCT execution_id) AS distinct_ids
    FROM raw_execution_results
    GROUP BY dt, hour
),
final AS (
    SELECT dt, hour, count(*) AS enriched_rows
    FROM executions_enriched
    GROUP BY dt, hour
)
SELECT raw.dt, raw.hour, raw_messages, distinct_ids, coalesce(enriched_rows, 0) AS enriched_rows
FROM raw LEFT JOIN final ON raw.dt = final.dt AND raw.hour = final.hour
ORDER BY raw.dt, raw.hour
