//! Synthetic, realistic events for both topics: each signal fans out to many
//! executions with a realistic status mix; some messages are duplicated, some
//! sent late or out of order, some signals arrive after their executions, and
//! a configurable share is malformed. Deterministic for a given `--seed`.

use std::time::{Duration, Instant};

use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, Producer};
use serde_json::json;
use tracing::info;

use crate::config::Common;
use crate::source::kafka;

/// Options of `produce`.
#[derive(Debug, Clone, Args)]
pub struct ProduceOpts {
    /// Messages per second (both topics together); event times follow the
    /// wall clock. Without it, messages go as fast as the broker takes them.
    #[arg(long, env = "AP_PRODUCE_RATE")]
    pub rate: Option<f64>,
    /// Total messages to send [default: 100000, or unlimited with --duration].
    #[arg(long, env = "AP_PRODUCE_COUNT")]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, env = "AP_PRODUCE_DURATION")]
    pub duration: Option<f64>,
    /// Seed of the generator: the same seed gives the same messages.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Mean executions per signal.
    #[arg(long, default_value_t = 100)]
    pub fanout: u32,
    /// Number of influencers.
    #[arg(long, default_value_t = 50)]
    pub influencers: u32,
    /// Number of subscribers.
    #[arg(long, default_value_t = 5000)]
    pub subscribers: u32,
    /// Share of messages replaced by malformed ones.
    #[arg(long, default_value_t = 0.001)]
    pub bad_rate: f64,
    /// Share of messages sent twice.
    #[arg(long, default_value_t = 0.01)]
    pub duplicate_rate: f64,
    /// Share of messages held back and sent minutes (of event time) late.
    #[arg(long, default_value_t = 0.002)]
    pub late_rate: f64,
    /// Share of signals sent after their executions.
    #[arg(long, default_value_t = 0.02)]
    pub signal_after_rate: f64,
    /// Event time of the first signal without --rate (RFC 3339) [default: now].
    #[arg(long)]
    pub start: Option<String>,
    /// Seconds of event time between signals without --rate.
    #[arg(long, default_value_t = 1.0)]
    pub signal_gap: f64,
    /// Create the topics with this many partitions if they are missing.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
}

/// Which topic a generated message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Signal,
    Execution,
}

/// One generated message.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub role: Role,
    pub key: String,
    pub payload: Vec<u8>,
}

const INSTRUMENTS: &[(&str, f64)] = &[
    ("BTC-USD", 60_000.0),
    ("ETH-USD", 3_000.0),
    ("SOL-USD", 150.0),
    ("AAPL", 190.0),
    ("TSLA", 250.0),
    ("NVDA", 120.0),
    ("EUR-USD", 1.08),
    ("XAU-USD", 2_300.0),
];
const VENUES: &[&str] = &["binance", "coinbase", "kraken", "nasdaq", "lmax"];
const ERRORS: &[&str] = &[
    "INSUFFICIENT_FUNDS",
    "RISK_LIMIT",
    "VENUE_TIMEOUT",
    "INSTRUMENT_HALTED",
];

/// The event generator; an iterator of messages in send order.
pub struct Generator {
    rng: StdRng,
    opts: ProduceOpts,
    /// Event time of the next signal (µs); `None` follows the wall clock.
    next_time: Option<i64>,
    ready: std::collections::VecDeque<Generated>,
    /// Held-back messages and the signal count after which they are released.
    late: Vec<(u64, Generated)>,
    signals: u64,
}

fn rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .expect("generated times are valid")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Generator {
    pub fn new(opts: ProduceOpts) -> Result<Self, String> {
        let next_time = match (&opts.rate, &opts.start) {
            (Some(_), None) => None,
            (_, Some(s)) => Some(
                chrono::DateTime::parse_from_rfc3339(s)
                    .map_err(|e| format!("--start {s:?}: {e}"))?
                    .timestamp_micros(),
            ),
            (None, None) => Some(chrono::Utc::now().timestamp_micros()),
        };
        Ok(Self {
            rng: StdRng::seed_from_u64(opts.seed),
            opts,
            next_time,
            ready: Default::default(),
            late: vec![],
            signals: 0,
        })
    }

    fn uuid(&mut self) -> String {
        let b: [u8; 16] = self.rng.random();
        let h =
            |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
        format!(
            "{}-{}-4{}-{:x}{}-{}",
            h(0..4),
            h(4..6),
            &h(6..8)[1..],
            8 | (b[8] & 3),
            &h(8..10)[1..],
            h(10..16)
        )
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random_bool(p.min(1.0))
    }

    /// Makes one signal and its executions, with the configured disorder.
    fn next_signal(&mut self) {
        let now = chrono::Utc::now().timestamp_micros();
        let emitted = self.next_time.unwrap_or(now);
        if let Some(t) = &mut self.next_time {
            *t += (self.opts.signal_gap * 1e6) as i64;
        }
        let influencer = format!(
            "inf-{:03}",
            self.rng.random_range(0..self.opts.influencers.max(1))
        );
        let (instrument, base) = INSTRUMENTS[self.rng.random_range(0..INSTRUMENTS.len())];
        let price = base * (1.0 + self.rng.random_range(-0.02..0.02));
        let side = if self.rng.random_bool(0.5) {
            "buy"
        } else {
            "sell"
        };
        let action = ["open", "open", "close", "adjust"][self.rng.random_range(0..4)];
        let signal_id = self.uuid();
        let signal = json!({
            "schema_version": 1,
            "signal_id": signal_id,
            "influencer_id": influencer,
            "instrument": instrument,
            "side": side,
            "action": action,
            "price": (price * 100.0).round() / 100.0,
            "allocation_pct": self.rng.random_range(1..=50) as f64 / 100.0,
            "confidence": if self.rng.random_bool(0.8) { json!(self.rng.random_range(0..=100) as f64 / 100.0) } else { json!(null) },
            "emitted_at": rfc3339(emitted),
        });
        let signal = Generated {
            role: Role::Signal,
            key: influencer.clone(),
            payload: signal.to_string().into_bytes(),
        };
        let signal_after = self.chance(self.opts.signal_after_rate);
        if !signal_after {
            self.emit(signal.clone());
        }
        let fanout = self
            .rng
            .random_range(self.opts.fanout / 2..=self.opts.fanout * 3 / 2)
            .max(1);
        let mut executions = Vec::with_capacity(fanout as usize);
        for _ in 0..fanout {
            let subscriber = format!(
                "sub-{:05}",
                self.rng.random_range(0..self.opts.subscribers.max(1))
            );
            let latency_us = (self.rng.random_range(0.0f64..1.0).powi(3) * 5e6) as i64 + 20_000;
            let executed = emitted + latency_us;
            let submitted = executed - self.rng.random_range(1_000..latency_us.max(1_001));
            let roll: f64 = self.rng.random();
            let status = match roll {
                r if r < 0.80 => "filled",
                r if r < 0.88 => "partially_filled",
                r if r < 0.94 => "rejected",
                r if r < 0.97 => "failed",
                _ => "cancelled",
            };
            let qty = (self.rng.random_range(0.01..10.0f64) * 1000.0).round() / 1000.0;
            let (filled, avg) = match status {
                "filled" => (
                    qty,
                    Some(price * (1.0 + self.rng.random_range(-0.0005..0.0015))),
                ),
                "partially_filled" => (
                    (qty * self.rng.random_range(0.1..0.9) * 1000.0).round() / 1000.0,
                    Some(price * (1.0 + self.rng.random_range(-0.0005..0.002))),
                ),
                _ => (0.0, None),
            };
            let filled = if status == "partially_filled" && filled <= 0.0 {
                0.001
            } else {
                filled
            };
            let error_code = match status {
                "rejected" | "failed" => json!(ERRORS[self.rng.random_range(0..ERRORS.len())]),
                _ => json!(null),
            };
            let notional = filled * avg.unwrap_or(0.0);
            let pnl = if action == "close" && filled > 0.0 {
                json!((self.rng.random_range(-0.05..0.06) * notional * 100.0).round() / 100.0)
            } else {
                json!(null)
            };
            let v = json!({
                "schema_version": 1,
                "execution_id": self.uuid(),
                "signal_id": signal_id,
                "influencer_id": influencer,
                "subscriber_id": subscriber,
                "instrument": instrument,
                "side": side,
                "status": status,
                "requested_qty": qty,
                "filled_qty": filled,
                "avg_fill_price": avg.map(|p| (p * 10_000.0).round() / 10_000.0),
                "fee": (notional * 0.001 * 10_000.0).round() / 10_000.0,
                "realized_pnl": pnl,
                "error_code": error_code,
                "venue": VENUES[self.rng.random_range(0..VENUES.len())],
                "submitted_at": rfc3339(submitted),
                "executed_at": rfc3339(executed),
            });
            executions.push((
                executed,
                Generated {
                    role: Role::Execution,
                    key: subscriber,
                    payload: v.to_string().into_bytes(),
                },
            ));
        }
        // Mostly in event-time order, with local swaps.
        executions.sort_by_key(|(t, _)| *t);
        for i in 1..executions.len() {
            if self.chance(0.1) {
                executions.swap(i - 1, i);
            }
        }
        for (_, e) in executions {
            self.emit(e);
        }
        if signal_after {
            self.emit(signal);
        }
        self.signals += 1;
        let due = self.signals;
        let (release, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.late)
            .into_iter()
            .partition(|(at, _)| *at <= due);
        self.late = keep;
        self.ready.extend(release.into_iter().map(|(_, g)| g));
    }

    /// Queues a message, possibly malformed, duplicated or held back.
    fn emit(&mut self, mut g: Generated) {
        if self.chance(self.opts.bad_rate) {
            g.payload = self.corrupt(&g.payload);
        }
        if self.chance(self.opts.late_rate) {
            // Released 2 to 5 minutes of signals later.
            let gap = self.opts.signal_gap.max(0.001);
            let later = self.signals + (self.rng.random_range(120.0..300.0) / gap) as u64;
            self.late.push((later, g));
            return;
        }
        if self.chance(self.opts.duplicate_rate) {
            self.ready.push_back(g.clone());
        }
        self.ready.push_back(g);
    }

    /// One of the malformations the contract names.
    fn corrupt(&mut self, payload: &[u8]) -> Vec<u8> {
        let text = String::from_utf8_lossy(payload).into_owned();
        let mut v: serde_json::Value = serde_json::from_str(&text).expect("generated JSON");
        match self.rng.random_range(0..9) {
            0 => b"definitely not json".to_vec(),
            1 => payload[..payload.len() / 2].to_vec(),
            2 => {
                let mut b = payload.to_vec();
                b[10] = 0xff;
                b
            }
            3 => b"[1,2,3]".to_vec(),
            4 => {
                let obj = v.as_object_mut().expect("object");
                let key = obj.keys().nth(1).cloned().expect("fields");
                obj.remove(&key);
                v.to_string().into_bytes()
            }
            5 => {
                v["schema_version"] = json!("one");
                v.to_string().into_bytes()
            }
            6 => {
                v["side"] = json!("hold");
                v.to_string().into_bytes()
            }
            7 => {
                let field = if v.get("emitted_at").is_some() {
                    "emitted_at"
                } else {
                    "executed_at"
                };
                v[field] = json!("9999-12-31T23:59:59Z");
                v.to_string().into_bytes()
            }
            _ => {
                let field = if v.get("price").is_some() {
                    "price"
                } else {
                    "requested_qty"
                };
                v[field] = json!(-1);
                v.to_string().into_bytes()
            }
        }
    }
}

impl Iterator for Generator {
    type Item = Generated;
    fn next(&mut self) -> Option<Generated> {
        while self.ready.is_empty() {
            self.next_signal();
        }
        self.ready.pop_front()
    }
}

/// What `produce` sent.
#[derive(Debug, Default, Clone)]
pub struct ProduceSummary {
    pub signals: u64,
    pub executions: u64,
    pub seconds: f64,
}

/// Sends generated messages to Kafka until the count or duration is reached.
pub async fn produce(common: &Common, opts: ProduceOpts) -> anyhow::Result<ProduceSummary> {
    let topics = &common.topics;
    kafka::ensure_topics(&common.brokers, &topics.both(), opts.partitions).await?;
    let producer = kafka::producer(&common.brokers)?;
    let count = opts.count.unwrap_or(if opts.duration.is_some() {
        u64::MAX
    } else {
        100_000
    });
    let duration = opts.duration.map(Duration::from_secs_f64);
    let rate = opts.rate;
    let generator = Generator::new(opts).map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    let mut summary = ProduceSummary::default();
    let mut last_report = Instant::now();
    for (i, g) in generator.enumerate() {
        let i = i as u64;
        if i >= count || duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        if let Some(r) = rate {
            let due = Duration::from_secs_f64(i as f64 / r);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        let topic = match g.role {
            Role::Signal => {
                summary.signals += 1;
                &topics.signals
            }
            Role::Execution => {
                summary.executions += 1;
                &topics.executions
            }
        };
        let mut record = BaseRecord::to(topic).key(&g.key).payload(&g.payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            info!(
                sent = i + 1,
                per_sec = ((i + 1) as f64 / started.elapsed().as_secs_f64()) as u64,
                "producing"
            );
        }
    }
    producer.flush(Duration::from_secs(60))?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{decode_execution, decode_signal, is_uuid};
    use clap::Parser;

    #[derive(Parser)]
    struct P {
        #[command(flatten)]
        o: ProduceOpts,
    }

    fn opts(args: &[&str]) -> ProduceOpts {
        let mut all = vec!["p", "--start", "2026-01-01T10:00:00Z"];
        all.extend_from_slice(args);
        P::parse_from(all).o
    }

    #[test]
    fn same_seed_same_messages_and_all_valid_without_bad_rate() {
        let a: Vec<_> = Generator::new(opts(&["--bad-rate", "0"]))
            .unwrap()
            .take(3000)
            .collect();
        let b: Vec<_> = Generator::new(opts(&["--bad-rate", "0"]))
            .unwrap()
            .take(3000)
            .collect();
        assert_eq!(a, b);
        let c: Vec<_> = Generator::new(opts(&["--bad-rate", "0", "--seed", "7"]))
            .unwrap()
            .take(3000)
            .collect();
        assert_ne!(a, c);
        let signals = a.iter().filter(|g| g.role == Role::Signal).count();
        assert!(
            signals > 10 && signals < 100,
            "fan-out ~100: {signals} signals"
        );
        for g in &a {
            match g.role {
                Role::Signal => {
                    assert!(is_uuid(&decode_signal(Some(&g.payload)).unwrap().signal_id))
                }
                Role::Execution => {
                    decode_execution(Some(&g.payload)).unwrap();
                }
            }
        }
    }

    #[test]
    fn disorder_is_present() {
        let msgs: Vec<_> =
            Generator::new(opts(&["--bad-rate", "0.05", "--duplicate-rate", "0.05"]))
                .unwrap()
                .take(20_000)
                .collect();
        let bad = msgs
            .iter()
            .filter(|g| match g.role {
                Role::Signal => decode_signal(Some(&g.payload)).is_err(),
                Role::Execution => decode_execution(Some(&g.payload)).is_err(),
            })
            .count();
        assert!(bad > 500 && bad < 1500, "{bad}");
        let mut seen = std::collections::HashSet::new();
        let dups = msgs.iter().filter(|g| !seen.insert(&g.payload)).count();
        assert!(dups > 500, "{dups}");
        let mut times = msgs.iter().filter_map(|g| {
            decode_execution(Some(&g.payload))
                .ok()
                .map(|e| e.executed_at)
        });
        let mut prev = times.next().unwrap();
        let mut out_of_order = 0;
        for t in times {
            if t < prev {
                out_of_order += 1;
            }
            prev = t;
        }
        assert!(out_of_order > 100, "{out_of_order}");
    }
}
