//! Reading from Kafka.

pub mod kafka;
pub mod replay;
