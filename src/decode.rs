//! Kafka message bytes -> validated contract rows in Arrow builders, or a
//! dead letter with its reason.
//!
//! Each message is parsed on its own by a typed serde visitor that borrows
//! strings from the message, so one bad message never poisons its neighbours
//! and every rejection names the field and the rule it broke. Valid rows go
//! straight into Arrow column builders: no intermediate JSON tree.

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, Datelike};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

/// Why a message was rejected. The `Display` text is the dead-letter reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("tombstone: the message has no value")]
    Tombstone,
    #[error("empty value")]
    Empty,
    #[error("message of {bytes} bytes exceeds the {limit}-byte limit for one event")]
    TooLarge { bytes: usize, limit: usize },
    #[error("not UTF-8: invalid byte at offset {0}")]
    NotUtf8(usize),
    #[error("not a JSON object: the value starts with {0:?}")]
    NotAnObject(char),
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("wrong type: {0}")]
    WrongType(String),
    #[error("missing required field `{0}`")]
    MissingField(&'static str),
    #[error("field `{field}`: {detail}")]
    OutOfRange { field: &'static str, detail: String },
    #[error("field `{field}`: unknown value {value:?}, expected one of {allowed}")]
    UnknownEnum {
        field: &'static str,
        value: String,
        allowed: &'static str,
    },
    #[error("field `{field}`: {detail}")]
    BadTimestamp { field: &'static str, detail: String },
}

impl DecodeError {
    /// A short stable label, for counting and for the `error_kind` column.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Tombstone => "tombstone",
            DecodeError::Empty => "empty",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::NotUtf8(_) => "not_utf8",
            DecodeError::NotAnObject(_) => "not_an_object",
            DecodeError::InvalidJson(_) => "invalid_json",
            DecodeError::WrongType(_) => "wrong_type",
            DecodeError::MissingField(_) => "missing_field",
            DecodeError::OutOfRange { .. } => "out_of_range",
            DecodeError::UnknownEnum { .. } => "unknown_enum",
            DecodeError::BadTimestamp { .. } => "bad_timestamp",
        }
    }
}

/// Contract events are a few hundred bytes; a message over this size is
/// corrupt or abusive, and is rejected before any parsing work.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Event times outside these years are rejected: they are corrupt, and would
/// create absurd partitions.
const MIN_YEAR: i32 = 2000;
const MAX_YEAR: i32 = 2100;

/// A JSON string that borrows from the message unless it had escapes.
#[derive(Debug, Clone, PartialEq)]
pub struct Str<'a>(pub Cow<'a, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

impl Str<'_> {
    fn as_str(&self) -> &str {
        &self.0
    }
}

/// Declares a contract record whose fields are all optional at parse time
/// (presence is checked by validation, so a missing field gets its own
/// reason), with a map visitor that counts unknown fields and names the field
/// in every type error.
macro_rules! contract_record {
    ($name:ident < $lt:lifetime > { $($field:ident : $ty:ty),* $(,)? }) => {
        #[derive(Debug, Default)]
        pub struct $name<$lt> {
            $(pub $field: Option<$ty>,)*
            /// Fields the contract does not know: ignored, but counted.
            pub unknown_fields: u32,
            _marker: std::marker::PhantomData<&$lt ()>,
        }

        impl<$lt> Deserialize<$lt> for $name<$lt> {
            fn deserialize<D: Deserializer<$lt>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<$lt> Visitor<$lt> for V {
                    type Value = $name<$lt>;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str("a JSON object")
                    }
                    fn visit_map<A: MapAccess<$lt>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                        let mut out = $name::default();
                        while let Some(key) = map.next_key::<Str<$lt>>()? {
                            match key.as_str() {
                                $(stringify!($field) => {
                                    if out.$field.is_some() {
                                        return Err(de::Error::custom(format!(
                                            "field `{}` appears twice", stringify!($field))));
                                    }
                                    let v = map.next_value::<$ty>().map_err(|e| {
                                        de::Error::custom(format!("field `{}`: {e}", stringify!($field)))
                                    })?;
                                    out.$field = Some(v);
                                })*
                                _ => {
                                    map.next_value::<IgnoredAny>()?;
                                    out.unknown_fields += 1;
                                }
                            }
                        }
                        Ok(out)
                    }
                }
                d.deserialize_map(V)
            }
        }
    };
}

contract_record!(SignalJson<'a> {
    schema_version: i64,
    signal_id: Str<'a>,
    influencer_id: Str<'a>,
    instrument: Str<'a>,
    side: Str<'a>,
    action: Str<'a>,
    price: f64,
    allocation_pct: f64,
    confidence: Option<f64>,
    emitted_at: Str<'a>,
});

contract_record!(ExecutionJson<'a> {
    schema_version: i64,
    execution_id: Str<'a>,
    signal_id: Str<'a>,
    influencer_id: Str<'a>,
    subscriber_id: Str<'a>,
    instrument: Str<'a>,
    side: Str<'a>,
    status: Str<'a>,
    requested_qty: f64,
    filled_qty: f64,
    avg_fill_price: Option<f64>,
    fee: f64,
    realized_pnl: Option<f64>,
    error_code: Option<Str<'a>>,
    venue: Str<'a>,
    submitted_at: Str<'a>,
    executed_at: Str<'a>,
});

/// A validated signal; strings borrow from the message where possible.
#[derive(Debug, Clone, PartialEq)]
pub struct Signal<'a> {
    pub schema_version: i32,
    pub signal_id: Cow<'a, str>,
    pub influencer_id: Cow<'a, str>,
    pub instrument: Cow<'a, str>,
    pub side: &'static str,
    pub action: &'static str,
    pub price: f64,
    pub allocation_pct: f64,
    pub confidence: Option<f64>,
    /// Event time, microseconds since the epoch (UTC).
    pub emitted_at: i64,
    pub unknown_fields: u32,
}

/// A validated execution result.
#[derive(Debug, Clone, PartialEq)]
pub struct Execution<'a> {
    pub schema_version: i32,
    pub execution_id: Cow<'a, str>,
    pub signal_id: Cow<'a, str>,
    pub influencer_id: Cow<'a, str>,
    pub subscriber_id: Cow<'a, str>,
    pub instrument: Cow<'a, str>,
    pub side: &'static str,
    pub status: &'static str,
    pub requested_qty: f64,
    pub filled_qty: f64,
    pub avg_fill_price: Option<f64>,
    pub fee: f64,
    pub realized_pnl: Option<f64>,
    pub error_code: Option<Cow<'a, str>>,
    pub venue: Cow<'a, str>,
    pub submitted_at: i64,
    /// Event time, microseconds since the epoch (UTC).
    pub executed_at: i64,
    pub unknown_fields: u32,
}

const SIDES: &[&str] = &["buy", "sell"];
const ACTIONS: &[&str] = &["open", "close", "adjust"];
/// Execution statuses; the first two count as "filled".
pub const STATUSES: &[&str] = &[
    "filled",
    "partially_filled",
    "rejected",
    "failed",
    "cancelled",
];

/// Checks the bytes are a UTF-8 JSON object and parses them into `T`.
fn parse<'a, T: Deserialize<'a>>(value: Option<&'a [u8]>) -> Result<T, DecodeError> {
    let bytes = value.ok_or(DecodeError::Tombstone)?;
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge {
            bytes: bytes.len(),
            limit: MAX_MESSAGE_BYTES,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| DecodeError::NotUtf8(e.valid_up_to()))?;
    let first = text.trim_start().chars().next().ok_or(DecodeError::Empty)?;
    if first != '{' {
        // A syntax error is more useful than "not an object" for garbage.
        return Err(match serde_json::from_str::<IgnoredAny>(text) {
            Ok(_) => DecodeError::NotAnObject(first),
            Err(e) => DecodeError::InvalidJson(e.to_string()),
        });
    }
    serde_json::from_str(text).map_err(|e| {
        // Field errors are wrapped to name the field, which hides their
        // category: a syntax-only pass on this (rare) path tells them apart.
        match serde_json::from_str::<IgnoredAny>(text) {
            Err(syntax) => DecodeError::InvalidJson(syntax.to_string()),
            Ok(_) => DecodeError::WrongType(e.to_string()),
        }
    })
}

fn required<T>(v: Option<T>, field: &'static str) -> Result<T, DecodeError> {
    v.ok_or(DecodeError::MissingField(field))
}

fn non_empty<'a>(v: Option<Str<'a>>, field: &'static str) -> Result<Cow<'a, str>, DecodeError> {
    let s = required(v, field)?.0;
    if s.trim().is_empty() {
        return Err(DecodeError::OutOfRange {
            field,
            detail: "must not be empty".into(),
        });
    }
    Ok(s)
}

fn uuid<'a>(v: Option<Str<'a>>, field: &'static str) -> Result<Cow<'a, str>, DecodeError> {
    let s = required(v, field)?.0;
    if !is_uuid(&s) {
        return Err(DecodeError::OutOfRange {
            field,
            detail: format!("{s:?} is not a UUID"),
        });
    }
    Ok(s)
}

/// `8-4-4-4-12` hexadecimal digits.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn one_of(
    v: Option<Str<'_>>,
    field: &'static str,
    allowed: &'static [&'static str],
) -> Result<&'static str, DecodeError> {
    let s = required(v, field)?;
    allowed
        .iter()
        .find(|a| **a == s.as_str())
        .copied()
        .ok_or_else(|| DecodeError::UnknownEnum {
            field,
            value: s.0.into_owned(),
            allowed: match field {
                "side" => "buy, sell",
                "action" => "open, close, adjust",
                _ => "filled, partially_filled, rejected, failed, cancelled",
            },
        })
}

fn check(ok: bool, field: &'static str, value: f64, rule: &str) -> Result<(), DecodeError> {
    if ok {
        Ok(())
    } else {
        Err(DecodeError::OutOfRange {
            field,
            detail: format!("{value} is out of range, must be {rule}"),
        })
    }
}

fn positive(v: Option<f64>, field: &'static str) -> Result<f64, DecodeError> {
    let x = required(v, field)?;
    check(x > 0.0, field, x, "> 0")?;
    Ok(x)
}

fn non_negative(v: Option<f64>, field: &'static str) -> Result<f64, DecodeError> {
    let x = required(v, field)?;
    check(x >= 0.0, field, x, ">= 0")?;
    Ok(x)
}

fn version(v: Option<i64>) -> Result<i32, DecodeError> {
    let x = required(v, "schema_version")?;
    if !(1..=i32::MAX as i64).contains(&x) {
        return Err(DecodeError::OutOfRange {
            field: "schema_version",
            detail: format!("{x} is out of range, must be >= 1"),
        });
    }
    Ok(x as i32)
}

/// Parses an RFC 3339 timestamp to microseconds since the epoch, UTC.
pub fn timestamp(v: Option<Str<'_>>, field: &'static str) -> Result<i64, DecodeError> {
    let s = required(v, field)?;
    let t = DateTime::parse_from_rfc3339(s.as_str()).map_err(|e| DecodeError::BadTimestamp {
        field,
        detail: format!("{:?} is not an RFC 3339 timestamp ({e})", s.as_str()),
    })?;
    if !(MIN_YEAR..MAX_YEAR).contains(&t.year()) {
        return Err(DecodeError::BadTimestamp {
            field,
            detail: format!(
                "{:?} lies outside the years {MIN_YEAR}..{MAX_YEAR}",
                s.as_str()
            ),
        });
    }
    Ok(t.timestamp_micros())
}

/// Decodes and validates one `influencer_signals` message.
pub fn decode_signal(value: Option<&[u8]>) -> Result<Signal<'_>, DecodeError> {
    let j: SignalJson = parse(value)?;
    // Checked in contract order, so the first broken rule is the one reported.
    let schema_version = version(j.schema_version)?;
    let signal_id = uuid(j.signal_id, "signal_id")?;
    let influencer_id = non_empty(j.influencer_id, "influencer_id")?;
    let instrument = non_empty(j.instrument, "instrument")?;
    let side = one_of(j.side, "side", SIDES)?;
    let action = one_of(j.action, "action", ACTIONS)?;
    let price = positive(j.price, "price")?;
    let allocation_pct = required(j.allocation_pct, "allocation_pct")?;
    check(
        allocation_pct > 0.0 && allocation_pct <= 1.0,
        "allocation_pct",
        allocation_pct,
        "in (0, 1]",
    )?;
    let confidence = j.confidence.flatten();
    if let Some(c) = confidence {
        check((0.0..=1.0).contains(&c), "confidence", c, "in [0, 1]")?;
    }
    Ok(Signal {
        schema_version,
        signal_id,
        influencer_id,
        instrument,
        side,
        action,
        price,
        allocation_pct,
        confidence,
        emitted_at: timestamp(j.emitted_at, "emitted_at")?,
        unknown_fields: j.unknown_fields,
    })
}

/// Decodes and validates one `execution_results` message.
pub fn decode_execution(value: Option<&[u8]>) -> Result<Execution<'_>, DecodeError> {
    let j: ExecutionJson = parse(value)?;
    let status = one_of(j.status, "status", STATUSES)?;
    let filled_qty = non_negative(j.filled_qty, "filled_qty")?;
    let is_filled = status == "filled" || status == "partially_filled";
    if !is_filled && filled_qty != 0.0 {
        return Err(DecodeError::OutOfRange {
            field: "filled_qty",
            detail: format!("{filled_qty} must be 0 when status is {status}"),
        });
    }
    // Key present, value may be null: `Option<Option<f64>>`.
    let avg_fill_price = required(j.avg_fill_price, "avg_fill_price")?;
    match avg_fill_price {
        Some(p) => {
            check(p > 0.0, "avg_fill_price", p, "> 0 or null")?;
            if filled_qty == 0.0 {
                return Err(DecodeError::OutOfRange {
                    field: "avg_fill_price",
                    detail: "must be null when filled_qty is 0".into(),
                });
            }
        }
        None if filled_qty > 0.0 => {
            return Err(DecodeError::OutOfRange {
                field: "avg_fill_price",
                detail: "must be set when filled_qty > 0".into(),
            })
        }
        None => {}
    }
    Ok(Execution {
        schema_version: version(j.schema_version)?,
        execution_id: uuid(j.execution_id, "execution_id")?,
        signal_id: non_empty(j.signal_id, "signal_id")?,
        influencer_id: non_empty(j.influencer_id, "influencer_id")?,
        subscriber_id: non_empty(j.subscriber_id, "subscriber_id")?,
        instrument: non_empty(j.instrument, "instrument")?,
        side: one_of(j.side, "side", SIDES)?,
        status,
        requested_qty: positive(j.requested_qty, "requested_qty")?,
        filled_qty,
        avg_fill_price,
        fee: non_negative(j.fee, "fee")?,
        realized_pnl: j.realized_pnl.flatten(),
        error_code: j.error_code.flatten().map(|s| s.0),
        venue: non_empty(j.venue, "venue")?,
        submitted_at: timestamp(j.submitted_at, "submitted_at")?,
        executed_at: timestamp(j.executed_at, "executed_at")?,
        unknown_fields: j.unknown_fields,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const SIGNAL: &str = r#"{"schema_version":1,"signal_id":"0b6f1c2e-1111-4a4a-8b8b-000000000001","influencer_id":"inf-1","instrument":"BTC-USD","side":"buy","action":"open","price":100.5,"allocation_pct":0.25,"confidence":0.9,"emitted_at":"2026-01-01T10:00:01.250Z"}"#;
    pub(crate) const EXECUTION: &str = r#"{"schema_version":1,"execution_id":"0b6f1c2e-2222-4a4a-8b8b-000000000001","signal_id":"0b6f1c2e-1111-4a4a-8b8b-000000000001","influencer_id":"inf-1","subscriber_id":"sub-1","instrument":"BTC-USD","side":"buy","status":"filled","requested_qty":2,"filled_qty":2,"avg_fill_price":101,"fee":0.1,"realized_pnl":null,"error_code":null,"venue":"binance","submitted_at":"2026-01-01T10:00:01.300Z","executed_at":"2026-01-01T10:00:01.500Z"}"#;

    fn with(base: &str, field: &str, value: &str) -> String {
        let mut v: serde_json::Value = serde_json::from_str(base).unwrap();
        v[field] = serde_json::from_str(value).unwrap();
        v.to_string()
    }

    fn without(base: &str, field: &str) -> String {
        let mut v: serde_json::Value = serde_json::from_str(base).unwrap();
        v.as_object_mut().unwrap().remove(field);
        v.to_string()
    }

    fn sig_err(s: &str) -> DecodeError {
        decode_signal(Some(s.as_bytes())).unwrap_err()
    }

    fn exe_err(s: &str) -> DecodeError {
        decode_execution(Some(s.as_bytes())).unwrap_err()
    }

    #[test]
    fn valid_messages_decode_with_their_values() {
        let s = decode_signal(Some(SIGNAL.as_bytes())).unwrap();
        assert_eq!(s.signal_id, "0b6f1c2e-1111-4a4a-8b8b-000000000001");
        assert_eq!(s.side, "buy");
        assert_eq!(s.price, 100.5);
        assert_eq!(s.confidence, Some(0.9));
        assert_eq!(s.emitted_at, 1_767_261_601_250_000);
        assert!(matches!(s.signal_id, Cow::Borrowed(_)));
        let e = decode_execution(Some(EXECUTION.as_bytes())).unwrap();
        assert_eq!(e.status, "filled");
        assert_eq!(e.avg_fill_price, Some(101.0));
        assert_eq!(e.realized_pnl, None);
        assert_eq!(e.executed_at - e.submitted_at, 200_000);
    }

    #[test]
    fn unknown_fields_are_ignored_and_counted() {
        let s = with(SIGNAL, "extra", r#"{"nested":[1,2]}"#);
        let s = with(&s, "another", "1");
        assert_eq!(decode_signal(Some(s.as_bytes())).unwrap().unknown_fields, 2);
    }

    #[test]
    fn higher_schema_versions_are_accepted() {
        let s = with(SIGNAL, "schema_version", "3");
        assert_eq!(decode_signal(Some(s.as_bytes())).unwrap().schema_version, 3);
        assert_eq!(
            sig_err(&with(SIGNAL, "schema_version", "0")).kind(),
            "out_of_range"
        );
    }

    #[test]
    fn framing_errors_have_their_own_kind() {
        assert_eq!(decode_signal(None).unwrap_err(), DecodeError::Tombstone);
        assert_eq!(decode_signal(Some(b"")).unwrap_err(), DecodeError::Empty);
        assert_eq!(
            decode_signal(Some(b"  \n")).unwrap_err(),
            DecodeError::Empty
        );
        assert_eq!(
            decode_signal(Some(b"{\"a\":\xff}")).unwrap_err(),
            DecodeError::NotUtf8(5)
        );
        assert_eq!(sig_err("[1,2]"), DecodeError::NotAnObject('['));
        assert_eq!(sig_err("42"), DecodeError::NotAnObject('4'));
        assert_eq!(sig_err("hello").kind(), "invalid_json");
        // A valid event padded to 10 MB is rejected for its size alone.
        let huge = SIGNAL.replacen('{', &format!("{{\"pad\":\"{}\",", "x".repeat(10 << 20)), 1);
        assert_eq!(
            sig_err(&huge),
            DecodeError::TooLarge {
                bytes: huge.len(),
                limit: MAX_MESSAGE_BYTES
            }
        );
        assert_eq!(sig_err(&SIGNAL[..40]).kind(), "invalid_json");
        // 10,000 levels of nesting neither overflow the stack nor pass.
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert_eq!(sig_err(&deep).kind(), "not_an_object");
        let deep_obj = format!("{{\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(
            sig_err(&deep_obj),
            DecodeError::MissingField("schema_version")
        );
        let deep_field = SIGNAL.replace("100.5", &("[".repeat(10_000) + &"]".repeat(10_000)));
        assert_eq!(sig_err(&deep_field).kind(), "wrong_type");
    }

    #[test]
    fn every_required_field_is_required() {
        for f in [
            "schema_version",
            "signal_id",
            "influencer_id",
            "instrument",
            "side",
            "action",
            "price",
            "allocation_pct",
            "emitted_at",
        ] {
            assert_eq!(
                sig_err(&without(SIGNAL, f)),
                DecodeError::MissingField(f),
                "{f}"
            );
        }
        for f in [
            "schema_version",
            "execution_id",
            "signal_id",
            "influencer_id",
            "subscriber_id",
            "instrument",
            "side",
            "status",
            "requested_qty",
            "filled_qty",
            "avg_fill_price",
            "fee",
            "venue",
            "submitted_at",
            "executed_at",
        ] {
            assert_eq!(
                exe_err(&without(EXECUTION, f)),
                DecodeError::MissingField(f),
                "{f}"
            );
        }
        // Optional fields may be absent.
        assert!(decode_signal(Some(without(SIGNAL, "confidence").as_bytes())).is_ok());
        for f in ["realized_pnl", "error_code"] {
            assert!(decode_execution(Some(without(EXECUTION, f).as_bytes())).is_ok());
        }
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = sig_err(&with(SIGNAL, "price", r#""100""#));
        assert_eq!(e.kind(), "wrong_type");
        assert!(e.to_string().contains("`price`"), "{e}");
        let e = exe_err(&with(EXECUTION, "subscriber_id", "7"));
        assert!(e.to_string().contains("`subscriber_id`"), "{e}");
        assert_eq!(
            sig_err(&with(SIGNAL, "schema_version", "1.5")).kind(),
            "wrong_type"
        );
        assert_eq!(
            sig_err(&with(SIGNAL, "signal_id", "null")).kind(),
            "wrong_type"
        );
        let dup = SIGNAL.replacen("\"price\":100.5", "\"price\":1,\"price\":2", 1);
        assert!(sig_err(&dup).to_string().contains("twice"));
    }

    #[test]
    fn ranges_are_enforced() {
        for (field, v) in [
            ("price", "0"),
            ("price", "-1"),
            ("allocation_pct", "0"),
            ("allocation_pct", "1.01"),
            ("confidence", "1.5"),
            ("signal_id", r#""not-a-uuid""#),
            ("influencer_id", r#""""#),
        ] {
            let e = sig_err(&with(SIGNAL, field, v));
            assert_eq!(e.kind(), "out_of_range", "{field}={v}: {e}");
            assert!(e.to_string().contains(field), "{e}");
        }
        assert!(decode_signal(Some(with(SIGNAL, "allocation_pct", "1").as_bytes())).is_ok());
        assert!(decode_signal(Some(with(SIGNAL, "confidence", "null").as_bytes())).is_ok());
        for (field, v) in [
            ("requested_qty", "0"),
            ("filled_qty", "-1"),
            ("fee", "-0.5"),
            ("avg_fill_price", "0"),
            ("avg_fill_price", "null"),
        ] {
            assert_eq!(
                exe_err(&with(EXECUTION, field, v)).kind(),
                "out_of_range",
                "{field}={v}"
            );
        }
        let rejected = with(EXECUTION, "status", r#""rejected""#);
        assert_eq!(exe_err(&rejected).kind(), "out_of_range");
        let rejected = with(
            &with(&rejected, "filled_qty", "0"),
            "avg_fill_price",
            "null",
        );
        assert!(decode_execution(Some(rejected.as_bytes())).is_ok());
    }

    #[test]
    fn enums_are_checked() {
        let e = sig_err(&with(SIGNAL, "side", r#""hold""#));
        assert_eq!(e.kind(), "unknown_enum");
        assert!(e.to_string().contains("hold"));
        assert_eq!(
            sig_err(&with(SIGNAL, "action", r#""OPEN""#)).kind(),
            "unknown_enum"
        );
        assert_eq!(
            exe_err(&with(EXECUTION, "status", r#""done""#)).kind(),
            "unknown_enum"
        );
    }

    #[test]
    fn timestamps_must_parse_and_be_plausible() {
        for v in [
            r#""yesterday""#,
            r#""2026-13-01T00:00:00Z""#,
            r#""2026-01-01 10:00""#,
        ] {
            assert_eq!(
                sig_err(&with(SIGNAL, "emitted_at", v)).kind(),
                "bad_timestamp",
                "{v}"
            );
        }
        let e = exe_err(&with(EXECUTION, "executed_at", r#""9999-12-31T23:59:59Z""#));
        assert_eq!(e.kind(), "bad_timestamp");
        assert!(e.to_string().contains("executed_at"));
        let offset = with(SIGNAL, "emitted_at", r#""2026-01-01T12:00:01.25+02:00""#);
        assert_eq!(
            decode_signal(Some(offset.as_bytes())).unwrap().emitted_at,
            1_767_261_601_250_000
        );
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let s = with(SIGNAL, "influencer_id", r#""in\"f""#);
        assert_eq!(
            decode_signal(Some(s.as_bytes())).unwrap().influencer_id,
            "in\"f"
        );
    }
}
