//! Metric definitions (`sql/`) and the engine that runs them.

pub mod catalog;
pub mod engine;
pub mod rewrite;
pub mod udf;

use std::sync::Arc;

use datafusion::prelude::SessionContext;

/// Prepares a session for metric SQL: the exact functions it relies on and
/// the planner rules that keep it fast.
pub fn prepare(ctx: &SessionContext) {
    udf::register(ctx);
    ctx.add_optimizer_rule(Arc::new(rewrite::SplitDistinctAggregates));
}
