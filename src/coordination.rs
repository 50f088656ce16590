//! How several `run` instances share one output store.
//!
//! Every instance publishes a small record (`_instances/<id>.json`) after each
//! epoch: a heartbeat, the partitions it reads with the newest committed
//! event time of each and whether it is idle, and the events per window it
//! holds that are not final yet. One instance at a time, the holder of the
//! finalizer lease, turns raw data into final windows once every partition's
//! watermark has passed them. The lease is a sequence of terms
//! (`_finalizer/terms/<term>.json`, each created only if absent): the newest
//! term's instance holds it while its heartbeat is fresh; anyone may create
//! the next term once it is not. Finalization progress is
//! `_finalizer/progress.json`.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::sink::store::{OutputStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum CoordinationError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("coordination record {path}: {reason}")]
    Corrupt { path: String, reason: String },
    #[error(
        "instance id {instance:?} is in use by {host} pid {pid} (heartbeat {age_secs} s ago); \
         give every running instance its own --instance-id"
    )]
    InUse {
        instance: String,
        host: String,
        pid: u32,
        age_secs: i64,
    },
}

/// Committed progress of one partition an instance reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionReport {
    pub topic: String,
    pub partition: i32,
    /// Newest committed event time (µs); `None` before the first event.
    pub max_event_time: Option<i64>,
    /// No message for the idle timeout: it does not hold the watermark back.
    pub idle: bool,
}

/// What an instance tells the others, rewritten after every epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub instance: String,
    pub host: String,
    pub pid: u32,
    /// Wall clock of the last write (ms since the Unix epoch).
    pub heartbeat_ms: i64,
    /// Set on a clean stop: the instance holds nothing any more.
    pub stopped: bool,
    pub partitions: Vec<PartitionReport>,
    /// Events per window start (µs) committed by this instance and not
    /// final when it wrote the record.
    pub window_events: Vec<(i64, u64)>,
    /// Start of its earliest window with committed, not yet final data.
    pub first_open: Option<i64>,
}

impl InstanceRecord {
    /// Whether the instance still runs, judged by its heartbeat.
    pub fn alive(&self, now_ms: i64, timeout_ms: i64) -> bool {
        !self.stopped && now_ms - self.heartbeat_ms < timeout_ms
    }
}

/// Where finalization has got to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalizerProgress {
    /// Windows starting before this (µs) are final.
    pub finalized_through: i64,
    /// The lease term that wrote it.
    pub term: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Term {
    instance: String,
}

const INSTANCES: &str = "_instances";
const TERMS: &str = "_finalizer/terms";
const PROGRESS: &str = "_finalizer/progress.json";

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// This machine's name, for telling instances apart in records and errors.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

/// Whether the process `pid` on `host` is known to be gone: only provable
/// on this host (no `/proc/<pid>`); elsewhere heartbeats have to tell.
pub fn process_gone(host: &str, pid: u32) -> bool {
    host == host_name() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Reads and writes the coordination records of one instance.
#[derive(Debug, Clone)]
pub struct Coordinator {
    store: OutputStore,
    instance: String,
    /// Heartbeats older than this mark an instance as gone (ms).
    timeout_ms: i64,
}

impl Coordinator {
    pub fn new(store: OutputStore, instance: &str, timeout_ms: i64) -> Self {
        Self {
            store,
            instance: instance.to_owned(),
            timeout_ms,
        }
    }

    async fn read<T: for<'de> Deserialize<'de>>(
        &self,
        rel: &str,
    ) -> Result<Option<T>, CoordinationError> {
        match self.store.get(rel).await? {
            None => Ok(None),
            Some(b) => {
                serde_json::from_slice(&b)
                    .map(Some)
                    .map_err(|e| CoordinationError::Corrupt {
                        path: rel.to_owned(),
                        reason: e.to_string(),
                    })
            }
        }
    }

    fn record_name(instance: &str) -> String {
        format!("{INSTANCES}/{instance}.json")
    }

    /// Refuses to start when another live process uses this instance id.
    pub async fn check_not_in_use(&self) -> Result<(), CoordinationError> {
        let Some(r) = self
            .read::<InstanceRecord>(&Self::record_name(&self.instance))
            .await?
        else {
            return Ok(());
        };
        let now = now_ms();
        let running = r.pid != std::process::id() && !process_gone(&r.host, r.pid);
        if r.alive(now, self.timeout_ms) && running {
            return Err(CoordinationError::InUse {
                instance: self.instance.clone(),
                host: r.host,
                pid: r.pid,
                age_secs: (now - r.heartbeat_ms) / 1000,
            });
        }
        Ok(())
    }

    pub async fn publish(&self, r: &InstanceRecord) -> Result<(), CoordinationError> {
        let json = serde_json::to_vec_pretty(r).expect("records serialize");
        Ok(self
            .store
            .put(&Self::record_name(&r.instance), Bytes::from(json))
            .await?)
    }

    /// Every instance's record.
    pub async fn records(&self) -> Result<Vec<InstanceRecord>, CoordinationError> {
        let mut out = vec![];
        for (rel, _) in self.store.list(INSTANCES).await? {
            if let Some(r) = self.read(&rel).await? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Whether `instance` is alive according to `records`.
    pub fn is_alive(&self, records: &[InstanceRecord], instance: &str) -> bool {
        let now = now_ms();
        records
            .iter()
            .any(|r| r.instance == instance && r.alive(now, self.timeout_ms))
    }

    /// The newest lease term and its holder.
    async fn current_term(&self) -> Result<Option<(u64, String)>, CoordinationError> {
        let newest = self
            .store
            .list(TERMS)
            .await?
            .into_iter()
            .filter_map(|(rel, _)| {
                let n = rel
                    .rsplit('/')
                    .next()?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()?;
                Some((n, rel))
            })
            .max();
        let Some((term, rel)) = newest else {
            return Ok(None);
        };
        Ok(self.read::<Term>(&rel).await?.map(|t| (term, t.instance)))
    }

    /// The lease term this instance holds, taking the lease when its holder
    /// is gone; `None` while another live instance holds it.
    pub async fn lease(
        &self,
        records: &[InstanceRecord],
    ) -> Result<Option<u64>, CoordinationError> {
        let current = self.current_term().await?;
        let next = match &current {
            Some((term, holder)) if *holder == self.instance => return Ok(Some(*term)),
            Some((_, holder)) if self.is_alive(records, holder) => return Ok(None),
            Some((term, _)) => term + 1,
            None => 1,
        };
        let json = serde_json::to_vec(&Term {
            instance: self.instance.clone(),
        })
        .expect("terms serialize");
        let rel = format!("{TERMS}/{next:020}.json");
        Ok(self
            .store
            .create(&rel, Bytes::from(json))
            .await?
            .then_some(next))
    }

    /// Whether `term` is still the newest: checked before finalization
    /// writes, so a holder that lost the lease while stalled stops.
    pub async fn holds(&self, term: u64) -> Result<bool, CoordinationError> {
        Ok(self
            .current_term()
            .await?
            .is_some_and(|(t, holder)| t == term && holder == self.instance))
    }

    pub async fn progress(&self) -> Result<Option<FinalizerProgress>, CoordinationError> {
        self.read(PROGRESS).await
    }

    pub async fn set_progress(&self, p: FinalizerProgress) -> Result<(), CoordinationError> {
        let json = serde_json::to_vec_pretty(&p).expect("progress serializes");
        Ok(self.store.put(PROGRESS, Bytes::from(json)).await?)
    }
}

/// The watermark over every partition of the streams, from the instances'
/// reports: the newest report per partition counts (partitions move between
/// instances). `partitions` lists every partition that exists; one nobody
/// reports holds the watermark back. Idle partitions do not count; when all
/// are idle the watermark follows the newest event. Minus the lateness.
pub fn global_watermark(
    records: &[InstanceRecord],
    partitions: &[(String, i32)],
    allowed_lateness_us: i64,
) -> Option<i64> {
    let mut newest: BTreeMap<(&str, i32), (i64, &PartitionReport)> = BTreeMap::new();
    for r in records {
        for p in &r.partitions {
            let key = (p.topic.as_str(), p.partition);
            if newest.get(&key).is_none_or(|(t, _)| *t < r.heartbeat_ms) {
                newest.insert(key, (r.heartbeat_ms, p));
            }
        }
    }
    let reports = partitions
        .iter()
        .map(|(topic, partition)| {
            let (_, p) = newest.get(&(topic.as_str(), *partition))?;
            Some((p.max_event_time, p.idle))
        })
        .collect::<Option<Vec<_>>>()?;
    crate::window::watermark_of(reports, allowed_lateness_us)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::store::S3Options;

    fn report(topic: &str, partition: i32, t: Option<i64>, idle: bool) -> PartitionReport {
        PartitionReport {
            topic: topic.into(),
            partition,
            max_event_time: t,
            idle,
        }
    }

    fn record(
        instance: &str,
        heartbeat_ms: i64,
        partitions: Vec<PartitionReport>,
    ) -> InstanceRecord {
        InstanceRecord {
            instance: instance.into(),
            host: "h".into(),
            pid: 1,
            heartbeat_ms,
            stopped: false,
            partitions,
            window_events: vec![],
            first_open: None,
        }
    }

    #[test]
    fn watermark_is_the_slowest_active_partition_across_instances() {
        let all = [
            ("s".to_string(), 0),
            ("s".to_string(), 1),
            ("e".to_string(), 0),
        ];
        let a = record(
            "a",
            10,
            vec![
                report("s", 0, Some(500), false),
                report("e", 0, Some(900), false),
            ],
        );
        let b = record("b", 10, vec![report("s", 1, Some(700), false)]);
        assert_eq!(
            global_watermark(&[a.clone(), b.clone()], &all, 100),
            Some(400)
        );
        // A partition nobody reports holds it back.
        assert_eq!(global_watermark(std::slice::from_ref(&a), &all, 100), None);
        // The newest report of a partition wins: b took s/0 over from a.
        let b2 = record(
            "b",
            20,
            vec![
                report("s", 1, Some(700), false),
                report("s", 0, Some(800), false),
            ],
        );
        assert_eq!(global_watermark(&[a.clone(), b2], &all, 100), Some(600));
        // Idle partitions stop counting; all idle follows the newest event.
        let b3 = record(
            "b",
            20,
            vec![report("s", 1, None, true), report("s", 0, Some(800), true)],
        );
        assert_eq!(global_watermark(&[a.clone(), b3], &all, 100), Some(800));
        let idle = record(
            "a",
            30,
            vec![
                report("s", 0, Some(500), true),
                report("e", 0, Some(900), true),
            ],
        );
        let b4 = record("b", 30, vec![report("s", 1, None, true)]);
        assert_eq!(global_watermark(&[idle, b4], &all, 100), Some(800));
        // An active partition without events yet holds it back.
        let b5 = record("b", 30, vec![report("s", 1, None, false)]);
        assert_eq!(global_watermark(&[a, b5], &all, 100), None);
    }

    #[tokio::test]
    async fn one_live_instance_holds_the_lease_until_its_heartbeat_stops() {
        let store = OutputStore::open("memory://", &S3Options::default()).unwrap();
        let a = Coordinator::new(store.clone(), "a", 10_000);
        let b = Coordinator::new(store.clone(), "b", 10_000);
        let now = now_ms();
        let live = [record("a", now, vec![]), record("b", now, vec![])];
        assert_eq!(a.lease(&live).await.unwrap(), Some(1));
        assert_eq!(b.lease(&live).await.unwrap(), None);
        assert_eq!(a.lease(&live).await.unwrap(), Some(1));
        let a_gone = [record("a", now - 60_000, vec![]), record("b", now, vec![])];
        assert_eq!(b.lease(&a_gone).await.unwrap(), Some(2));
        assert!(!a.holds(1).await.unwrap(), "a lost it");
        assert!(b.holds(2).await.unwrap());
        let mut stopped = record("b", now, vec![]);
        stopped.stopped = true;
        assert_eq!(
            a.lease(&[record("a", now, vec![]), stopped]).await.unwrap(),
            Some(3)
        );
    }

    #[tokio::test]
    async fn a_live_process_with_the_same_id_is_refused() {
        let store = OutputStore::open("memory://", &S3Options::default()).unwrap();
        let c = Coordinator::new(store, "a", 10_000);
        c.check_not_in_use().await.unwrap();
        let mut r = record("a", now_ms(), vec![]);
        r.host = "elsewhere".into();
        c.publish(&r).await.unwrap();
        let e = c.check_not_in_use().await.unwrap_err();
        assert!(e.to_string().contains("--instance-id"), "{e}");
        // The same host and a pid that is gone: a restart after a crash.
        r.host = host_name();
        r.pid = u32::MAX;
        c.publish(&r).await.unwrap();
        c.check_not_in_use().await.unwrap();
    }
}
