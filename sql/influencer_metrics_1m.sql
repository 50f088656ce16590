-- description: One row per minute and influencer that has at least
--   one signal or execution in that minute (contracts.md §3).
-- keys: window_start, influencer_id
-- window: 1 minute
-- owner: analytics
--
-- Inputs: `signals` and `executions` hold the deduplicated events of the
-- windows being finalized; `executions` is already joined to its signal.
-- "Filled" means status filled or partially_filled. Latency percentiles are
-- over filled executions whose signal is known.
WITH s AS (
    SELECT
        date_bin(INTERVAL '1 minute', emitted_at) AS window_start,
        influencer_id,
        count(*) AS signals,
        count(DISTINCT instrument) AS instruments
    FROM signals
    GROUP BY 1, 2
),
e AS (
    SELECT
        date_bin(INTERVAL '1 minute', executed_at) AS window_start,
        influencer_id,
        count(*) AS executions,
        count(*) FILTER (WHERE status IN ('filled', 'partially_filled')) AS filled,
        count(*) FILTER (WHERE status = 'rejected') AS rejected,
        count(*) FILTER (WHERE status = 'failed') AS failed,
        sum(CASE WHEN status IN ('filled', 'partially_filled') THEN filled_qty * avg_fill_price END) AS copied_notional,
        count(DISTINCT subscriber_id) AS distinct_subscribers,
        sum(coalesce(realized_pnl, 0.0)) AS realized_pnl,
        avg(CASE WHEN status IN ('filled', 'partially_filled') THEN slippage_bps END) AS avg_slippage_bps,
        percentile_cont(0.5) WITHIN GROUP (ORDER BY CASE WHEN status IN ('filled', 'partially_filled') THEN signal_to_fill_ms END) AS p50_signal_to_fill_ms,
        percentile_cont(0.95) WITHIN GROUP (ORDER BY CASE WHEN status IN ('filled', 'partially_filled') THEN signal_to_fill_ms END) AS p95_signal_to_fill_ms
    FROM executions
    GROUP BY 1, 2
)
SELECT
    coalesce(s.window_start, e.window_start) AS window_start,
    coalesce(s.influencer_id, e.influencer_id) AS influencer_id,
    coalesce(s.signals, 0) AS signals,
    coalesce(s.instruments, 0) AS instruments,
    coalesce(e.executions, 0) AS executions,
    coalesce(e.filled, 0) AS filled,
    coalesce(e.rejected, 0) AS rejected,
    coalesce(e.failed, 0) AS failed,
    CAST(e.filled AS DOUBLE) / e.executions AS fill_rate,
    coalesce(e.copied_notional, 0.0) AS copied_notional,
    coalesce(e.distinct_subscribers, 0) AS distinct_subscribers,
    coalesce(e.realized_pnl, 0.0) AS realized_pnl,
    e.avg_slippage_bps,
    e.p50_signal_to_fill_ms,
    e.p95_signal_to_fill_ms
FROM s
FULL OUTER JOIN e
    ON s.window_start = e.window_start AND s.influencer_id = e.influencer_id
ORDER BY window_start, influencer_id
