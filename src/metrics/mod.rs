//! Metric definitions (`sql/`) and the engine that runs them.

pub mod catalog;
pub mod engine;
pub mod udf;
