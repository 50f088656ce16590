-- description: One row per minute with at least one signal or execution
--   (contracts.md §3).
-- keys: window_start
-- window: 1 minute
-- owner: analytics
--
-- `filled` counts status filled or partially_filled; `partially_filled` is the
-- part of it that was only partially filled. Latency percentiles are over
-- filled executions whose signal is known. `unmatched_executions` counts
-- executions whose signal was unknown when the window became final.
WITH activity AS (
    SELECT date_bin(INTERVAL '1 minute', emitted_at) AS window_start, influencer_id FROM signals
    UNION ALL
    SELECT date_bin(INTERVAL '1 minute', executed_at) AS window_start, influencer_id FROM executions
),
w AS (
    SELECT window_start, count(DISTINCT influencer_id) AS active_influencers
    FROM activity
    GROUP BY 1
),
s AS (
    SELECT date_bin(INTERVAL '1 minute', emitted_at) AS window_start, count(*) AS signals
    FROM signals
    GROUP BY 1
),
e AS (
    SELECT
        date_bin(INTERVAL '1 minute', executed_at) AS window_start,
        count(*) AS executions,
        count(*) FILTER (WHERE status IN ('filled', 'partially_filled')) AS filled,
        count(*) FILTER (WHERE status = 'partially_filled') AS partially_filled,
        count(*) FILTER (WHERE status = 'rejected') AS rejected,
        count(*) FILTER (WHERE status = 'failed') AS failed,
        count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
        count(DISTINCT subscriber_id) AS active_subscribers,
        sum(CASE WHEN status IN ('filled', 'partially_filled') THEN filled_qty * avg_fill_price END) AS filled_notional,
        percentile_cont(0.5) WITHIN GROUP (ORDER BY CASE WHEN status IN ('filled', 'partially_filled') THEN signal_to_fill_ms END) AS p50_signal_to_fill_ms,
        percentile_cont(0.95) WITHIN GROUP (ORDER BY CASE WHEN status IN ('filled', 'partially_filled') THEN signal_to_fill_ms END) AS p95_signal_to_fill_ms,
        percentile_cont(0.99) WITHIN GROUP (ORDER BY CASE WHEN status IN ('filled', 'partially_filled') THEN signal_to_fill_ms END) AS p99_signal_to_fill_ms,
        count(*) FILTER (WHERE signal_price IS NULL) AS unmatched_executions
    FROM executions
    GROUP BY 1
)
SELECT
    w.window_start,
    coalesce(s.signals, 0) AS signals,
    coalesce(e.executions, 0) AS executions,
    coalesce(e.filled, 0) AS filled,
    coalesce(e.partially_filled, 0) AS partially_filled,
    coalesce(e.rejected, 0) AS rejected,
    coalesce(e.failed, 0) AS failed,
    coalesce(e.cancelled, 0) AS cancelled,
    CAST(e.rejected + e.failed AS DOUBLE) / e.executions AS error_rate,
    w.active_influencers,
    coalesce(e.active_subscribers, 0) AS active_subscribers,
    coalesce(e.filled_notional, 0.0) AS filled_notional,
    e.p50_signal_to_fill_ms,
    e.p95_signal_to_fill_ms,
    e.p99_signal_to_fill_ms,
    coalesce(e.unmatched_executions, 0) AS unmatched_executions
FROM w
LEFT JOIN s ON s.window_start = w.window_start
LEFT JOIN e ON e.window_start = w.window_start
ORDER BY w.window_start
