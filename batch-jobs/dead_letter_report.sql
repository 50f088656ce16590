-- Dead letters per topic, partition hour and error kind, with one reason.
SELECT topic, dt, hour, error_kind, count(*) AS messages, min(reason) AS example_reason
FROM (
    SELECT topic, dt, hour, error_kind, reason FROM dead_letter_influencer_signals
    UNION ALL
    SELECT topic, dt, hour, error_kind, reason FROM dead_letter_execution_results
)
GROUP BY topic, dt, hour, error_kind
ORDER BY dt, hour, topic, messages DESC
