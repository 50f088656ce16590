//! Event-time windows and watermarks: pure arithmetic, no I/O.
//!
//! Times are microseconds since the Unix epoch (UTC). Windows are tumbling,
//! one minute long, start inclusive.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Length of every metric window.
pub const WINDOW_MICROS: i64 = 60_000_000;

/// Start of the window holding `t`.
pub fn window_start(t: i64) -> i64 {
    t.div_euclid(WINDOW_MICROS) * WINDOW_MICROS
}

/// Per-partition progress of event time, giving the watermark.
///
/// The watermark is the minimum over partitions of the maximum event time
/// seen, minus the allowed lateness. A partition that has delivered nothing
/// for `idle_timeout` stops holding it back; when every partition is idle the
/// stream is caught up and the watermark follows the newest event.
#[derive(Debug, Clone)]
pub struct WatermarkTracker {
    allowed_lateness_us: i64,
    idle_timeout: Duration,
    partitions: BTreeMap<(String, i32), PartitionProgress>,
}

#[derive(Debug, Clone, Copy)]
struct PartitionProgress {
    /// `None` until the partition delivers its first valid event.
    max_event_time: Option<i64>,
    last_seen: Instant,
}

impl WatermarkTracker {
    pub fn new(allowed_lateness: Duration, idle_timeout: Duration) -> Self {
        Self {
            allowed_lateness_us: allowed_lateness.as_micros() as i64,
            idle_timeout,
            partitions: BTreeMap::new(),
        }
    }

    fn entry(&mut self, topic: &str, partition: i32, now: Instant) -> &mut PartitionProgress {
        self.partitions
            .entry((topic.to_owned(), partition))
            .or_insert(PartitionProgress {
                max_event_time: None,
                last_seen: now,
            })
    }

    /// Registers a partition this instance now reads. Until it delivers an
    /// event (or stays quiet for the idle timeout) it holds the watermark
    /// back: its backlog may hold the oldest events.
    pub fn assign(&mut self, topic: &str, partition: i32, now: Instant) {
        self.entry(topic, partition, now);
    }

    /// Records an event of `topic`/`partition` with event time `t`, seen at `now`.
    pub fn observe(&mut self, topic: &str, partition: i32, t: i64, now: Instant) {
        let p = self.entry(topic, partition, now);
        p.max_event_time = Some(p.max_event_time.map_or(t, |m| m.max(t)));
        p.last_seen = now;
    }

    /// Marks a partition as having delivered a message (even an invalid one)
    /// so that it does not count as idle.
    pub fn touch(&mut self, topic: &str, partition: i32, now: Instant) {
        if let Some(p) = self.partitions.get_mut(&(topic.to_owned(), partition)) {
            p.last_seen = now;
        }
    }

    /// Marks every partition as just seen: after the daemon itself stalled
    /// (a store outage), silence says nothing about the partitions.
    pub fn touch_all(&mut self, now: Instant) {
        for p in self.partitions.values_mut() {
            p.last_seen = now;
        }
    }

    /// The daemon was busy for `away` without reading (writing, finalizing,
    /// waiting for the store): partitions' idle clocks stand still for that
    /// time, so the daemon's own stall never makes them idle, while a
    /// partition quiet during reading still becomes idle on time.
    pub fn pause(&mut self, away: Duration, now: Instant) {
        for p in self.partitions.values_mut() {
            p.last_seen = (p.last_seen + away).min(now);
        }
    }

    /// Forgets partitions this instance no longer owns.
    pub fn retain(&mut self, keep: impl Fn(&str, i32) -> bool) {
        self.partitions.retain(|(t, p), _| keep(t, *p));
    }

    /// Current watermark, or `None` while an active partition has no event
    /// yet (or before any event at all).
    pub fn watermark(&self, now: Instant) -> Option<i64> {
        watermark_of(
            self.partitions.values().map(|p| {
                let idle = now.duration_since(p.last_seen) >= self.idle_timeout;
                (p.max_event_time, idle)
            }),
            self.allowed_lateness_us,
        )
    }

    /// Each partition's newest event time and whether it is idle at `now`.
    pub fn partitions(&self, now: Instant) -> Vec<((String, i32), Option<i64>, bool)> {
        self.partitions
            .iter()
            .map(|(k, p)| {
                let idle = now.duration_since(p.last_seen) >= self.idle_timeout;
                (k.clone(), p.max_event_time, idle)
            })
            .collect()
    }

    /// Maximum event time seen on any partition.
    pub fn max_event_time(&self) -> Option<i64> {
        self.partitions
            .values()
            .filter_map(|p| p.max_event_time)
            .max()
    }
}

/// The watermark rule, over partitions given as (newest event time, idle):
/// the minimum over active partitions, minus the lateness; `None` while an
/// active partition has no event yet. When every partition is idle the
/// stream is caught up and the watermark follows the newest event. Shared by
/// one instance's tracker and the finalizer's view over all instances.
pub fn watermark_of(
    partitions: impl IntoIterator<Item = (Option<i64>, bool)>,
    allowed_lateness_us: i64,
) -> Option<i64> {
    let mut newest = None;
    let mut active = vec![];
    for (max_event_time, idle) in partitions {
        newest = newest.max(max_event_time);
        if !idle {
            active.push(max_event_time);
        }
    }
    let low = if active.is_empty() {
        newest
    } else {
        active
            .into_iter()
            .collect::<Option<Vec<i64>>>()?
            .into_iter()
            .min()
    };
    low.map(|t| t.saturating_sub(allowed_lateness_us))
}

/// Windows with a start before the returned bound are final under `watermark`:
/// a window `[s, s + 1 min)` is final once the watermark reaches its end.
pub fn final_bound(watermark: i64) -> i64 {
    window_start(watermark)
}

/// Length of an hour partition.
pub const HOUR_MICROS: i64 = 60 * WINDOW_MICROS;

/// End of the chunk of windows finalized together from `start` (before
/// `to`): at least one window, then more while their events (`events` per
/// window start) fit in `budget`; at most ten minutes and never across an
/// hour, so a catch-up over hours of backlog holds few events in memory and
/// each file stays inside one Hive partition.
pub fn chunk_end(start: i64, to: i64, events: &BTreeMap<i64, u64>, budget: u64) -> i64 {
    const CHUNK: i64 = 10 * WINDOW_MICROS;
    let next_hour = (start.div_euclid(HOUR_MICROS) + 1) * HOUR_MICROS;
    let limit = to.min(next_hour).min(window_start(start) + CHUNK);
    let mut end = window_start(start) + WINDOW_MICROS;
    let mut total = events.get(&window_start(start)).copied().unwrap_or(0);
    while end < limit {
        total += events.get(&end).copied().unwrap_or(0);
        if total > budget {
            break;
        }
        end += WINDOW_MICROS;
    }
    end.min(limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn finalize_chunks_are_short_and_stay_inside_the_hour() {
        let h = 1_767_261_600_000_000; // 10:00
        let m = WINDOW_MICROS;
        let none = BTreeMap::new();
        let end = |start, to| chunk_end(start, to, &none, 100);
        assert_eq!(end(h, h + 120 * m), h + 10 * m);
        assert_eq!(end(h + 55 * m, h + 120 * m), h + 60 * m);
        assert_eq!(end(h + 59 * m + 1, h + 120 * m), h + 60 * m);
        assert_eq!(end(h, h + 3 * m), h + 3 * m);
    }

    #[test]
    fn finalize_chunks_hold_the_event_budget() {
        let h = 1_767_261_600_000_000;
        let m = WINDOW_MICROS;
        let events: BTreeMap<i64, u64> =
            [(h, 40), (h + m, 40), (h + 2 * m, 40), (h + 3 * m, 500)].into();
        let end = |start| chunk_end(start, h + 60 * m, &events, 100);
        assert_eq!(end(h), h + 2 * m, "two windows fit, three do not");
        assert_eq!(end(h + 2 * m), h + 3 * m);
        // A window over the budget alone is still finalized, on its own.
        assert_eq!(end(h + 3 * m), h + 4 * m);
        assert_eq!(end(h + 4 * m), h + 14 * m, "empty windows cost nothing");
    }

    const MIN: i64 = WINDOW_MICROS;

    #[test]
    fn window_start_floors_to_the_minute() {
        assert_eq!(window_start(0), 0);
        assert_eq!(window_start(MIN - 1), 0);
        assert_eq!(window_start(MIN), MIN);
        assert_eq!(window_start(5 * MIN + 17), 5 * MIN);
        assert_eq!(window_start(-1), -MIN);
    }

    #[test]
    fn a_window_is_final_when_the_watermark_reaches_its_end() {
        // Window [0, 1 min) is final at watermark 1 min, not 1 µs before.
        assert_eq!(final_bound(MIN - 1), 0);
        assert_eq!(final_bound(MIN), MIN);
    }

    #[test]
    fn watermark_is_min_of_partition_maxima_minus_lateness() {
        let t0 = Instant::now();
        let mut w = WatermarkTracker::new(Duration::from_secs(10), Duration::from_secs(30));
        assert_eq!(w.watermark(t0), None);
        w.observe("a", 0, 100 * 1_000_000, t0);
        w.observe("a", 0, 90 * 1_000_000, t0); // out of order: max stays
        w.observe("a", 1, 50 * 1_000_000, t0);
        w.observe("b", 0, 70 * 1_000_000, t0);
        assert_eq!(w.watermark(t0), Some(40 * 1_000_000));
        w.observe("a", 1, 200 * 1_000_000, t0);
        assert_eq!(w.watermark(t0), Some(60 * 1_000_000));
        assert_eq!(w.max_event_time(), Some(200 * 1_000_000));
    }

    #[test]
    fn idle_partitions_stop_holding_the_watermark_back() {
        let t0 = Instant::now();
        let mut w = WatermarkTracker::new(Duration::ZERO, Duration::from_secs(30));
        w.observe("a", 0, 10, t0);
        w.observe("a", 1, 1_000, t0 + Duration::from_secs(20));
        assert_eq!(w.watermark(t0 + Duration::from_secs(25)), Some(10));
        // Partition 0 idle for 31 s: only partition 1 counts.
        assert_eq!(w.watermark(t0 + Duration::from_secs(31)), Some(1_000));
        // Everything idle: caught up, follow the newest event.
        assert_eq!(w.watermark(t0 + Duration::from_secs(100)), Some(1_000));
        // A dead letter keeps the partition alive.
        w.touch("a", 0, t0 + Duration::from_secs(100));
        assert_eq!(w.watermark(t0 + Duration::from_secs(101)), Some(10));
        w.retain(|_, p| p != 0);
        assert_eq!(w.watermark(t0 + Duration::from_secs(101)), Some(1_000));
    }

    #[test]
    fn the_daemons_own_stalls_do_not_make_partitions_idle() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = WatermarkTracker::new(Duration::ZERO, s(30));
        w.observe("a", 0, 10, t0);
        w.observe("a", 1, 1_000, t0);
        // 60 s away (a finalization waiting for the store), then 5 s reading:
        // partition 0 has been quiet for 5 s of reading only.
        w.pause(s(60), t0 + s(60));
        assert_eq!(w.watermark(t0 + s(65)), Some(10));
        // Quiet for 31 s of reading: idle as usual.
        assert_eq!(w.watermark(t0 + s(91)), Some(1_000));
        // A pause never moves a partition past the present: idle again 30 s
        // after it.
        w.pause(s(1_000), t0 + s(100));
        assert_eq!(w.watermark(t0 + s(129)), Some(10));
        assert_eq!(w.watermark(t0 + s(131)), Some(1_000));
    }

    #[test]
    fn an_assigned_partition_without_events_holds_the_watermark_until_idle() {
        let t0 = Instant::now();
        let mut w = WatermarkTracker::new(Duration::ZERO, Duration::from_secs(30));
        w.assign("a", 0, t0);
        w.observe("a", 1, 500, t0);
        assert_eq!(w.watermark(t0 + Duration::from_secs(1)), None);
        assert_eq!(w.max_event_time(), Some(500));
        // Its backlog arrives: the watermark is the older of the two.
        w.observe("a", 0, 100, t0 + Duration::from_secs(2));
        assert_eq!(w.watermark(t0 + Duration::from_secs(2)), Some(100));
        // Assigned and silent past the idle timeout: no longer waited for.
        w.assign("b", 0, t0 + Duration::from_secs(2));
        assert_eq!(w.watermark(t0 + Duration::from_secs(3)), None);
        w.touch("a", 0, t0 + Duration::from_secs(31));
        w.touch("a", 1, t0 + Duration::from_secs(31));
        assert_eq!(w.watermark(t0 + Duration::from_secs(33)), Some(100));
    }
}
