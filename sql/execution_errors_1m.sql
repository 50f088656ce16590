-- description: One row per minute, venue and error code with at least
--   one rejected or failed execution (contracts.md §3). A missing error code is
--   its own key (null).
-- keys: window_start, venue, error_code
-- window: 1 minute
-- owner: analytics
SELECT
    date_bin(INTERVAL '1 minute', executed_at) AS window_start,
    venue,
    error_code,
    count(*) AS errors,
    count(DISTINCT subscriber_id) AS affected_subscribers
FROM executions
WHERE status IN ('rejected', 'failed')
GROUP BY 1, 2, 3
ORDER BY window_start, venue, error_code
