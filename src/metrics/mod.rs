//! Metric definitions (`sql/`) and the engine that runs them.

pub mod catalog;
pub mod dedupe;
pub mod engine;
pub mod fixture;
pub mod header;
pub mod rewrite;
pub mod running;
pub mod udf;

use std::sync::Arc;

use datafusion::prelude::SessionContext;

/// Prepares a session for metric SQL: the exact functions it relies on and
/// the planner rules that keep it fast.
/// `AP_DISTINCT_REWRITE=off` leaves the count-distinct rewrite out, so
/// `make bench` can show what it saves; results are the same either way.
pub fn prepare(ctx: &SessionContext) {
    udf::register(ctx);
    if std::env::var("AP_DISTINCT_REWRITE").as_deref() != Ok("off") {
        ctx.add_optimizer_rule(Arc::new(rewrite::SplitDistinctAggregates));
    }
}
