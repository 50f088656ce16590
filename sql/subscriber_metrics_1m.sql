-- description: One row per minute and subscriber with at least one
--   execution in that minute (contracts.md §3).
-- keys: window_start, subscriber_id
-- window: 1 minute
-- owner: analytics
--
-- "Filled" means status filled or partially_filled; slippage is averaged over
-- filled executions whose signal is known (slippage_bps is null otherwise).
SELECT
    date_bin(INTERVAL '1 minute', executed_at) AS window_start,
    subscriber_id,
    count(*) AS executions,
    count(*) FILTER (WHERE status IN ('filled', 'partially_filled')) AS filled,
    count(*) FILTER (WHERE status = 'rejected') AS rejected,
    count(*) FILTER (WHERE status = 'failed') AS failed,
    count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
    CAST(count(*) FILTER (WHERE status IN ('filled', 'partially_filled')) AS DOUBLE) / count(*) AS fill_rate,
    coalesce(sum(CASE WHEN status IN ('filled', 'partially_filled') THEN filled_qty * avg_fill_price END), 0.0) AS filled_notional,
    sum(fee) AS fees,
    sum(coalesce(realized_pnl, 0.0)) AS realized_pnl,
    avg(CASE WHEN status IN ('filled', 'partially_filled') THEN slippage_bps END) AS avg_slippage_bps,
    count(DISTINCT influencer_id) AS distinct_influencers
FROM executions
GROUP BY 1, 2
ORDER BY window_start, subscriber_id
