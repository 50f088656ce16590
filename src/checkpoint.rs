//! Epoch records on the output store, under `_checkpoints/`.
//!
//! Each instance keeps its own chain (`_checkpoints/<instance>/`), so
//! instances never overwrite each other's epochs. Before an epoch writes its
//! files it claims the first offset of each of its partition ranges
//! (`claims/<topic>/<partition>/<first>.json`, created only if absent: two
//! instances that read the same messages after a rebalance cannot both write
//! them), then records its ranges and planned files (`offsets/<epoch>.json`);
//! after its files are written its commit record (`commits/<epoch>.json`) is
//! written; only then are the offsets committed to Kafka.

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

/// What an epoch consumed and wrote.
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
    /// Next offset to read per partition, over every committed epoch so far
    /// (in commit records): messages below it are already on the store.
    #[serde(default)]
    pub next_offsets: Vec<PartitionOffset>,
    /// Files the epoch writes (planned before the first is written),
    /// relative to the output root.
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

const OFFSETS: &str = "offsets";
const COMMITS: &str = "commits";
/// Records older than this many epochs are deleted as new ones commit.
const KEEP_EPOCHS: u64 = 20;

fn folder(instance: &str, kind: &str) -> String {
    format!("_checkpoints/{instance}/{kind}")
}

fn name(folder: &str, epoch: u64) -> String {
    format!("{folder}/{epoch:020}.json")
}

fn claim_name(topic: &str, partition: i32, first: i64) -> String {
    format!("_checkpoints/claims/{topic}/{partition}/{first:020}.json")
}

/// Who claimed a partition range's first offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub instance: String,
    pub epoch: u64,
}

/// Epoch number of a record file name, if it is one.
fn epoch_of(rel: &str) -> Option<u64> {
    rel.rsplit('/').next()?.strip_suffix(".json")?.parse().ok()
}

/// Reads and writes epoch records on one store: this instance's own chain,
/// and (read-only, or to abort a dead instance's epoch) the others'.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    store: OutputStore,
    instance: String,
}

impl Checkpoints {
    pub fn new(store: OutputStore, instance: &str) -> Self {
        Self {
            store,
            instance: instance.to_owned(),
        }
    }

    async fn put(&self, kind: &str, r: &EpochRecord) -> Result<(), CheckpointError> {
        let json = serde_json::to_vec_pretty(r).expect("records serialize");
        let rel = name(&folder(&self.instance, kind), r.epoch);
        Ok(self.store.put(&rel, Bytes::from(json)).await?)
    }

    /// Claims the first offset of each range of `r` for this instance's epoch
    /// `r.epoch`. Returns the ranges someone else holds, with their claim.
    pub async fn claim(
        &self,
        r: &EpochRecord,
    ) -> Result<Vec<(PartitionRange, Claim)>, CheckpointError> {
        let mine = Claim {
            instance: self.instance.clone(),
            epoch: r.epoch,
        };
        let json = Bytes::from(serde_json::to_vec(&mine).expect("claims serialize"));
        let mut taken = vec![];
        for range in &r.ranges {
            let rel = claim_name(&range.topic, range.partition, range.first);
            if self.store.create(&rel, json.clone()).await? {
                continue;
            }
            match self.read_claim(&rel).await? {
                Some(c) if c == mine => {}
                // Released between the two calls: try again next attempt.
                None => taken.push((range.clone(), mine.clone())),
                Some(other) => taken.push((range.clone(), other)),
            }
        }
        Ok(taken)
    }

    async fn read_claim(&self, rel: &str) -> Result<Option<Claim>, CheckpointError> {
        let Some(bytes) = self.store.get(rel).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| CheckpointError::Corrupt {
                path: rel.to_owned(),
                reason: e.to_string(),
            })
    }

    /// Deletes the claim on `range` if `owner` holds it.
    pub async fn release(
        &self,
        range: &PartitionRange,
        owner: &Claim,
    ) -> Result<(), CheckpointError> {
        let rel = claim_name(&range.topic, range.partition, range.first);
        if self.read_claim(&rel).await?.as_ref() == Some(owner) {
            self.store.delete(&rel).await?;
        }
        Ok(())
    }

    /// Records the offset ranges and planned files an epoch is about to write.
    pub async fn begin(&self, r: &EpochRecord) -> Result<(), CheckpointError> {
        self.put(OFFSETS, r).await
    }

    /// Marks an epoch's files as complete, and forgets epochs long done.
    pub async fn commit(&self, r: &EpochRecord) -> Result<(), CheckpointError> {
        self.put(COMMITS, r).await?;
        if let Some(old) = r.epoch.checked_sub(KEEP_EPOCHS) {
            let owner = Claim {
                instance: self.instance.clone(),
                epoch: old,
            };
            if let Some(rec) = self.read(&self.instance, COMMITS, old).await? {
                for range in &rec.ranges {
                    self.release(range, &owner).await?;
                }
            }
            for kind in [OFFSETS, COMMITS] {
                self.store
                    .delete(&name(&folder(&self.instance, kind), old))
                    .await?;
            }
        }
        Ok(())
    }

    /// Abandons an epoch that began but never committed (this instance's
    /// after a crash, or a dead instance's): its planned files, its claims
    /// and its offset record are deleted, so its messages, still
    /// uncommitted in Kafka, are simply read again by their partitions' owner.
    pub async fn abort(&self, instance: &str, r: &EpochRecord) -> Result<(), CheckpointError> {
        for f in &r.files {
            self.store.delete(f).await?;
        }
        let owner = Claim {
            instance: instance.to_owned(),
            epoch: r.epoch,
        };
        for range in &r.ranges {
            self.release(range, &owner).await?;
        }
        Ok(self
            .store
            .delete(&name(&folder(instance, OFFSETS), r.epoch))
            .await?)
    }

    /// The commit record of `instance`'s epoch, if it committed.
    pub async fn committed(
        &self,
        instance: &str,
        epoch: u64,
    ) -> Result<Option<EpochRecord>, CheckpointError> {
        self.read(instance, COMMITS, epoch).await
    }

    /// The offset record of `instance`'s epoch, if it began.
    pub async fn begun(
        &self,
        instance: &str,
        epoch: u64,
    ) -> Result<Option<EpochRecord>, CheckpointError> {
        self.read(instance, OFFSETS, epoch).await
    }

    /// The newest committed epoch of `instance`, if any.
    pub async fn latest_commit_of(
        &self,
        instance: &str,
    ) -> Result<Option<EpochRecord>, CheckpointError> {
        self.newest(&folder(instance, COMMITS), 0).await
    }

    /// This instance's newest committed epoch, if any.
    pub async fn latest_commit(&self) -> Result<Option<EpochRecord>, CheckpointError> {
        self.latest_commit_of(&self.instance).await
    }

    /// Every instance that has a checkpoint chain on the store.
    pub async fn instances(&self) -> Result<Vec<String>, CheckpointError> {
        let mut all = self.store.folders("_checkpoints").await?;
        all.retain(|f| f != "claims");
        Ok(all)
    }

    /// This instance's epochs that began after `committed` (the newest
    /// commit) but have no commit record: their files may be partly written.
    pub async fn pending(
        &self,
        committed: Option<u64>,
    ) -> Result<Vec<EpochRecord>, CheckpointError> {
        let after = committed.map_or(0, |e| e + 1);
        let mut out = vec![];
        for (rel, _) in self.store.list(&folder(&self.instance, OFFSETS)).await? {
            if epoch_of(&rel).is_some_and(|e| e >= after) {
                out.push(self.parse(&rel).await?);
            }
        }
        Ok(out)
    }

    async fn read(
        &self,
        instance: &str,
        kind: &str,
        epoch: u64,
    ) -> Result<Option<EpochRecord>, CheckpointError> {
        let rel = name(&folder(instance, kind), epoch);
        match self.store.get(&rel).await? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| CheckpointError::Corrupt {
                        path: rel,
                        reason: e.to_string(),
                    })
            }
        }
    }

    async fn parse(&self, rel: &str) -> Result<EpochRecord, CheckpointError> {
        let bytes = self
            .store
            .get(rel)
            .await?
            .ok_or_else(|| CheckpointError::Corrupt {
                path: rel.to_owned(),
                reason: "listed but missing".into(),
            })?;
        serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Corrupt {
            path: rel.to_owned(),
            reason: e.to_string(),
        })
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
        match latest {
            None => Ok(None),
            Some((_, rel)) => self.parse(&rel).await.map(Some),
        }
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
            next_offsets: vec![],
            files: vec!["raw/x.parquet".into()],
        }
    }

    #[tokio::test]
    async fn latest_commit_is_the_highest_epoch() {
        let store = OutputStore::open("memory://", &S3Options::default()).unwrap();
        let c = Checkpoints::new(store.clone(), "a");
        assert_eq!(c.latest_commit().await.unwrap(), None);
        for e in [2, 10, 9] {
            c.commit(&record(e)).await.unwrap();
        }
        assert!(c.pending(Some(10)).await.unwrap().is_empty());
        c.begin(&record(10)).await.unwrap();
        c.begin(&record(11)).await.unwrap(); // begun, not committed
        assert_eq!(c.latest_commit().await.unwrap(), Some(record(10)));
        assert_eq!(c.pending(Some(10)).await.unwrap(), [record(11)]);
        assert_eq!(c.latest_commit_of("b").await.unwrap(), None);
        assert_eq!(c.instances().await.unwrap(), ["a"]);
        store
            .put(&name(&folder("a", COMMITS), 12), Bytes::from_static(b"{"))
            .await
            .unwrap();
        assert!(matches!(
            c.latest_commit().await,
            Err(CheckpointError::Corrupt { .. })
        ));
        assert_eq!(
            epoch_of("_checkpoints/a/commits/00000000000000000042.json"),
            Some(42)
        );
    }

    #[tokio::test]
    async fn claims_let_one_instance_write_a_range_and_aborts_release_it() {
        let store = OutputStore::open("memory://", &S3Options::default()).unwrap();
        let a = Checkpoints::new(store.clone(), "a");
        let b = Checkpoints::new(store.clone(), "b");
        assert!(a.claim(&record(3)).await.unwrap().is_empty());
        assert!(
            a.claim(&record(3)).await.unwrap().is_empty(),
            "a retry keeps it"
        );
        let taken = b.claim(&record(7)).await.unwrap();
        let owner = Claim {
            instance: "a".into(),
            epoch: 3,
        };
        assert_eq!(taken, [(record(7).ranges[0].clone(), owner.clone())]);
        // a dies after writing a file: b aborts a's epoch and takes the range.
        let mut begun = record(3);
        store.put("raw/x.parquet", Bytes::new()).await.unwrap();
        a.begin(&begun).await.unwrap();
        assert_eq!(b.begun("a", 3).await.unwrap(), Some(begun.clone()));
        b.abort("a", &begun).await.unwrap();
        assert_eq!(store.get("raw/x.parquet").await.unwrap(), None);
        assert_eq!(b.begun("a", 3).await.unwrap(), None);
        assert!(b.claim(&record(7)).await.unwrap().is_empty());
        // A release by a former owner leaves the new claim alone.
        begun.files.clear();
        b.release(&begun.ranges[0], &owner).await.unwrap();
        assert!(!a.claim(&record(3)).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn old_epochs_are_pruned_with_their_claims() {
        let store = OutputStore::open("memory://", &S3Options::default()).unwrap();
        let a = Checkpoints::new(store.clone(), "a");
        let mut r = record(0);
        a.claim(&r).await.unwrap();
        a.commit(&r).await.unwrap();
        r.epoch = KEEP_EPOCHS;
        r.ranges[0].first = 10;
        a.claim(&r).await.unwrap();
        a.commit(&r).await.unwrap();
        assert_eq!(a.committed("a", 0).await.unwrap(), None);
        assert!(a.committed("a", KEEP_EPOCHS).await.unwrap().is_some());
        let claims = store.list("_checkpoints/claims").await.unwrap();
        assert_eq!(claims.len(), 1, "{claims:?}");
    }
}
