//! Epoch records on the output store, under `_checkpoints/`.
//!
//! Before an epoch writes its files, its offset ranges are recorded
//! (`offsets/<epoch>.json`); after its files are written, its commit record
//! (`commits/<epoch>.json`) is written; only then are the offsets committed to
//! Kafka. The latest commit record also carries the window progress, so a
//! restart knows which windows are already final.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::buffer::OffsetRanges;
use crate::sink::store::{OutputStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("checkpoint {path}: {reason}")]
    Corrupt { path: String, reason: String },
}

/// Offsets of one topic-partition in an epoch (inclusive range).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRange {
    pub topic: String,
    pub partition: i32,
    pub first: i64,
    pub last: i64,
}

/// What an epoch consumed and, once committed, what it finalized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: u64,
    pub ranges: Vec<PartitionRange>,
    /// Windows starting before this (µs) are final.
    pub finalized_through: Option<i64>,
    /// Start of the earliest window holding data that is not final yet.
    pub first_open: Option<i64>,
    /// Newest event time committed so far (µs).
    #[serde(default)]
    pub max_event_time: Option<i64>,
    /// Windows `[from, to)` this epoch finalizes; a replay finalizes the same.
    #[serde(default)]
    pub finalize: Option<(i64, i64)>,
    /// Next offset to read per partition, over every committed epoch so far
    /// (in commit records): messages below it are already on the store.
    #[serde(default)]
    pub next_offsets: Vec<PartitionOffset>,
    /// Files the epoch wrote, relative to the output root.
    #[serde(default)]
    pub files: Vec<String>,
}

/// The next offset to read of one topic-partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOffset {
    pub topic: String,
    pub partition: i32,
    pub next: i64,
}

impl EpochRecord {
    pub fn ranges_of(offsets: &OffsetRanges) -> Vec<PartitionRange> {
        offsets
            .iter()
            .map(|((topic, partition), r)| PartitionRange {
                topic: topic.clone(),
                partition: *partition,
                first: r.first,
                last: r.last,
            })
            .collect()
    }
}

const OFFSETS: &str = "_checkpoints/offsets";
const COMMITS: &str = "_checkpoints/commits";

fn name(folder: &str, epoch: u64) -> String {
    format!("{folder}/{epoch:020}.json")
}

/// Epoch number of a record file name, if it is one.
fn epoch_of(rel: &str) -> Option<u64> {
    rel.rsplit('/').next()?.strip_suffix(".json")?.parse().ok()
}

/// Reads and writes epoch records on one store.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    store: OutputStore,
}

impl Checkpoints {
    pub fn new(store: OutputStore) -> Self {
        Self { store }
    }

    async fn put(&self, folder: &str, r: &EpochRecord) -> Result<(), CheckpointError> {
        let json = serde_json::to_vec_pretty(r).expect("records serialize");
        Ok(self
            .store
            .put(&name(folder, r.epoch), Bytes::from(json))
            .await?)
    }

    /// Records the offset ranges an epoch is about to write.
    pub async fn begin(&self, r: &EpochRecord) -> Result<(), CheckpointError> {
        self.put(OFFSETS, r).await
    }

    /// Marks an epoch's files as complete.
    pub async fn commit(&self, r: &EpochRecord) -> Result<(), CheckpointError> {
        self.put(COMMITS, r).await
    }

    /// The newest committed epoch, if any.
    pub async fn latest_commit(&self) -> Result<Option<EpochRecord>, CheckpointError> {
        self.newest(COMMITS, 0).await
    }

    /// An epoch that began after `committed` (the newest commit) but has no
    /// commit record: its files may be partly written and must be replayed.
    pub async fn pending(
        &self,
        committed: Option<u64>,
    ) -> Result<Option<EpochRecord>, CheckpointError> {
        let after = committed.map_or(0, |e| e + 1);
        self.newest(OFFSETS, after).await
    }

    /// The record with the highest epoch `>= min_epoch` in `folder`.
    async fn newest(
        &self,
        folder: &str,
        min_epoch: u64,
    ) -> Result<Option<EpochRecord>, CheckpointError> {
        let latest = self
            .store
            .list(folder)
            .await?
            .into_iter()
            .filter_map(|(rel, _)| epoch_of(&rel).map(|e| (e, rel)))
            .filter(|(e, _)| *e >= min_epoch)
            .max();
        let Some((_, rel)) = latest else {
            return Ok(None);
        };
        let bytes = self
            .store
            .get(&rel)
            .await?
            .ok_or_else(|| CheckpointError::Corrupt {
                path: rel.clone(),
                reason: "listed but missing".into(),
            })?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| CheckpointError::Corrupt {
                path: rel,
                reason: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::store::S3Options;

    fn record(epoch: u64) -> EpochRecord {
        EpochRecord {
            epoch,
            ranges: vec![PartitionRange {
                topic: "t".into(),
                partition: 0,
                first: 1,
                last: 9,
            }],
            finalized_through: Some(60_000_000),
            first_open: None,
            max_event_time: None,
            finalize: None,
            next_offsets: vec![],
            files: vec!["raw/x.parquet".into()],
        }
    }

    #[tokio::test]
    async fn latest_commit_is_the_highest_epoch() {
        let store = OutputStore::open("memory://", &S3Options::default()).unwrap();
        let c = Checkpoints::new(store.clone());
        assert_eq!(c.latest_commit().await.unwrap(), None);
        for e in [2, 10, 9] {
            c.commit(&record(e)).await.unwrap();
        }
        assert_eq!(c.pending(Some(10)).await.unwrap(), None);
        c.begin(&record(10)).await.unwrap();
        c.begin(&record(11)).await.unwrap(); // begun, not committed
        assert_eq!(c.latest_commit().await.unwrap(), Some(record(10)));
        assert_eq!(c.pending(Some(10)).await.unwrap(), Some(record(11)));
        assert_eq!(c.pending(None).await.unwrap(), Some(record(11)));
        store
            .put(&name(COMMITS, 12), Bytes::from_static(b"{"))
            .await
            .unwrap();
        assert!(matches!(
            c.latest_commit().await,
            Err(CheckpointError::Corrupt { .. })
        ));
        assert_eq!(
            epoch_of("_checkpoints/commits/00000000000000000042.json"),
            Some(42)
        );
    }
}
