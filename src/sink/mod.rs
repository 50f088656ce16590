//! Writing outputs: Hive partitioning, Parquet encoding, the object store.

pub mod parquet;
pub mod partition;
pub mod store;
