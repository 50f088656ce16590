-- Hourly totals from the one-minute system metrics. Ratios are recomputed
-- from the summed counts (an average of per-minute ratios would weight quiet
-- minutes like busy ones).
SELECT
    date_trunc('hour', window_start) AS hour_start,
    sum(signals) AS signals,
    sum(executions) AS executions,
    sum(filled) AS filled,
    CAST(sum(rejected) + sum(failed) AS DOUBLE) / nullif(sum(executions), 0) AS error_rate,
    sum(filled_notional) AS filled_notional,
    max(p99_signal_to_fill_ms) AS worst_minute_p99_signal_to_fill_ms,
    sum(unmatched_executions) AS unmatched_executions
FROM system_metrics_1m
GROUP BY 1
ORDER BY 1
