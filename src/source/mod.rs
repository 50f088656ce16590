//! Reading from Kafka.

pub mod kafka;
