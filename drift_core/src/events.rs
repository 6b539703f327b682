//! Columnar decoding of JSON prediction events: single events and batch envelopes (the
//! schema tags and limits come from the caller), straight into per-(model, version)
//! columns: event time, ids, latency, error flags, the prediction and one column per
//! feature (numbers as f64 with NaN for missing, strings kept apart).
//!
//! The decoder only *accepts* what the caller's reference validator accepts; anything it
//! is not sure of (a bad value, an unknown schema, a duplicated key, text it cannot
//! parse) is returned as a rejected message or event span, for the caller to decode the
//! slow, exact way (and to dead-letter with the reason). Rejecting too much costs speed,
//! never correctness.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// What a valid message looks like (the event contract's tags and limits).
#[derive(Debug, Clone)]
pub struct Contract {
    pub event_schema: String,
    pub batch_schema: String,
    pub max_message_bytes: usize,
    pub max_events: usize,
    pub max_features: usize,
    /// Longest string, in characters (ids, names, categorical values).
    pub max_string_chars: usize,
    pub min_ts_ms: i64,
    /// Latest accepted event time relative to `now_ms` (None: no check).
    pub max_future_ms: Option<i64>,
}

/// A feature or prediction value.
#[derive(Debug, Clone, PartialEq)]
enum Val<'a> {
    Null,
    Num(f64),
    Str(Cow<'a, str>),
}

#[derive(Debug)]
enum Ts<'a> {
    Ms(i64),
    Text(Cow<'a, str>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Event,
    Batch,
}

#[derive(Debug, Default)]
struct WireEvent<'a> {
    event_id: Option<Cow<'a, str>>,
    model: Option<Cow<'a, str>>,
    version: Option<Cow<'a, str>>,
    ts: Option<Ts<'a>>,
    features: Option<Vec<(Cow<'a, str>, Val<'a>)>>,
    prediction: Option<Val<'a>>,
    latency: Option<Option<f64>>,
    error: Option<bool>,
}

enum Message<'a> {
    Event(Box<WireEvent<'a>>),
    /// An envelope's items, to be parsed one by one.
    Batch(Vec<&'a RawValue>),
    /// An envelope's items, parsed in the same pass (every one valid).
    Events(Vec<WireEvent<'a>>),
}

/// Returned by the message visitor when the first key is not `schema`: the caller looks
/// the schema up first, then decodes again knowing the kind.
const NEED_SCHEMA: &str = "driftline: schema is not the first key";

fn too_long(s: &str, max: usize) -> bool {
    s.len() > max && s.chars().count() > max
}

/// A string, borrowed from the input when it holds no escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Any value of a field the contract does not name. Unlike `IgnoredAny` it goes through
/// `deserialize_any`, so serde_json's nesting limit (128) applies: deeper input is left
/// to the caller, whose own limit may be lower than the skipping would allow.
struct Skip;

impl<'de> de::Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Skip)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = Skip;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Skip)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Skip)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Skip)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Skip)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Skip)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Skip)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_key::<Skip>()?.is_some() {
            map.next_value::<Skip>()?;
        }
        Ok(Skip)
    }
}

/// A number, a string (at most `max` characters) or null.
struct ValSeed(usize);

impl<'de> DeserializeSeed<'de> for ValSeed {
    type Value = Val<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValSeed {
    type Value = Val<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number, a string or null")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Val::Num(v as f64))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Val::Num(v as f64))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        if v.is_finite() {
            Ok(Val::Num(v))
        } else {
            Err(E::custom("not finite"))
        }
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        if too_long(v, self.0) {
            return Err(E::custom("string too long"));
        }
        Ok(Val::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        if too_long(v, self.0) {
            return Err(E::custom("string too long"));
        }
        Ok(Val::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Val::Null)
    }
}

/// The `features` object: at most `max_features` names of at most `max_chars`.
struct FeaturesSeed<'c>(&'c Contract);

impl<'de> DeserializeSeed<'de> for FeaturesSeed<'_> {
    type Value = Vec<(Cow<'de, str>, Val<'de>)>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FeaturesSeed<'_> {
    type Value = Vec<(Cow<'de, str>, Val<'de>)>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of feature values")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let c = self.0;
        let mut out = Vec::with_capacity(map.size_hint().unwrap_or(32).min(c.max_features));
        while let Some(Text(name)) = map.next_key::<Text<'de>>()? {
            if out.len() >= c.max_features {
                return Err(de::Error::custom("too many features"));
            }
            if too_long(&name, c.max_string_chars) {
                return Err(de::Error::custom("feature name too long"));
            }
            let value = map.next_value_seed(ValSeed(c.max_string_chars))?;
            out.push((name, value));
        }
        Ok(out)
    }
}

/// Event time: epoch milliseconds (integer or number) or text for the caller to parse.
struct TsSeed;

impl<'de> DeserializeSeed<'de> for TsSeed {
    type Value = Ts<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TsSeed {
    type Value = Ts<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("epoch milliseconds or RFC 3339 text")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Ts::Ms(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        i64::try_from(v)
            .map(Ts::Ms)
            .map_err(|_| E::custom("ts out of range"))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        // int() of the number, as the reference decoder does; far-off values are its call
        if v.is_finite() && v.abs() < 9.0e15 {
            Ok(Ts::Ms(v.trunc() as i64))
        } else {
            Err(E::custom("ts out of range"))
        }
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Ts::Text(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Ts::Text(Cow::Owned(v.to_owned())))
    }
}

/// `model_version`: text, or an integer written as text.
struct VersionSeed(usize);

impl<'de> DeserializeSeed<'de> for VersionSeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for VersionSeed {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a version string or integer")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        if too_long(v, self.0) {
            return Err(E::custom("version too long"));
        }
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        if too_long(v, self.0) {
            return Err(E::custom("version too long"));
        }
        Ok(Cow::Owned(v.to_owned()))
    }
}

/// The `events` array of an envelope: at most `max_events` raw items.
struct ItemsSeed(usize);

impl<'de> DeserializeSeed<'de> for ItemsSeed {
    type Value = Vec<&'de RawValue>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed {
    type Value = Vec<&'de RawValue>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of events")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(64).min(self.0));
        while let Some(item) = seq.next_element::<&'de RawValue>()? {
            if out.len() >= self.0 {
                return Err(de::Error::custom("too many events"));
            }
            out.push(item);
        }
        Ok(out)
    }
}

/// An envelope's `events`, each parsed as it is read; any bad one fails the whole array
/// (the caller then takes the items one by one).
struct InlineSeed<'c>(&'c Contract);

impl<'de> DeserializeSeed<'de> for InlineSeed<'_> {
    type Value = Vec<WireEvent<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for InlineSeed<'_> {
    type Value = Vec<WireEvent<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of events")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let c = self.0;
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(64).min(c.max_events));
        let item = MessageSeed {
            contract: c,
            known: Some(Kind::Event),
            inline: false,
        };
        while let Some(m) = seq.next_element_seed(item.clone())? {
            if out.len() >= c.max_events {
                return Err(de::Error::custom("too many events"));
            }
            match m {
                Message::Event(ev) => out.push(*ev),
                _ => return Err(de::Error::custom("not an event")),
            }
        }
        Ok(out)
    }
}

/// A message (or, with `known = Some(Kind::Event)`, one item of an envelope); `inline`
/// parses an envelope's items in the same pass.
#[derive(Clone)]
struct MessageSeed<'c> {
    contract: &'c Contract,
    known: Option<Kind>,
    inline: bool,
}

impl<'de> DeserializeSeed<'de> for MessageSeed<'_> {
    type Value = Message<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

fn once<T, E: de::Error>(slot: &mut Option<T>, value: T) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::custom("duplicated key"));
    }
    *slot = Some(value);
    Ok(())
}

fn ident<'de, E: de::Error>(text: Text<'de>, max: usize) -> Result<Cow<'de, str>, E> {
    if text.0.is_empty() || too_long(&text.0, max) {
        return Err(E::custom("bad identifier"));
    }
    Ok(text.0)
}

impl<'de> Visitor<'de> for MessageSeed<'_> {
    type Value = Message<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event or a batch envelope")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let c = self.contract;
        let max = c.max_string_chars;
        let mut kind = self.known;
        let mut schema_seen = false;
        let mut ev = WireEvent::default();
        let mut items: Option<Vec<&'de RawValue>> = None;
        let mut parsed: Option<Vec<WireEvent<'de>>> = None;
        while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
            if key == "schema" {
                if schema_seen {
                    return Err(de::Error::custom("duplicated key"));
                }
                schema_seen = true;
                let Text(tag) = map.next_value::<Text<'de>>()?;
                let this = if tag == c.event_schema.as_str() {
                    Kind::Event
                } else if tag == c.batch_schema.as_str() {
                    Kind::Batch
                } else {
                    return Err(de::Error::custom("unknown schema"));
                };
                match kind {
                    Some(k) if k != this => return Err(de::Error::custom("unexpected schema")),
                    _ => kind = Some(this),
                }
                continue;
            }
            let Some(k) = kind else {
                return Err(de::Error::custom(NEED_SCHEMA));
            };
            match (k, key.as_ref()) {
                (Kind::Batch, "events") if self.inline => {
                    once(&mut parsed, map.next_value_seed(InlineSeed(c))?)?
                }
                (Kind::Batch, "events") => {
                    once(&mut items, map.next_value_seed(ItemsSeed(c.max_events))?)?
                }
                (Kind::Batch, _) => {
                    map.next_value::<Skip>()?;
                }
                (Kind::Event, "event_id") => once(
                    &mut ev.event_id,
                    ident(map.next_value::<Text<'de>>()?, max)?,
                )?,
                (Kind::Event, "model") => {
                    once(&mut ev.model, ident(map.next_value::<Text<'de>>()?, max)?)?
                }
                (Kind::Event, "model_version") => {
                    once(&mut ev.version, map.next_value_seed(VersionSeed(max))?)?
                }
                (Kind::Event, "ts") => once(&mut ev.ts, map.next_value_seed(TsSeed)?)?,
                (Kind::Event, "features") => {
                    once(&mut ev.features, map.next_value_seed(FeaturesSeed(c))?)?
                }
                (Kind::Event, "prediction") => {
                    once(&mut ev.prediction, map.next_value_seed(ValSeed(max))?)?
                }
                (Kind::Event, "latency_ms") => {
                    let v = match map.next_value_seed(ValSeed(max))? {
                        Val::Null => None,
                        Val::Num(x) if x >= 0.0 => Some(x),
                        _ => return Err(de::Error::custom("bad latency_ms")),
                    };
                    once(&mut ev.latency, v)?
                }
                (Kind::Event, "status") => {
                    let Text(status) = map.next_value::<Text<'de>>()?;
                    let error = match status.as_ref() {
                        "ok" => false,
                        "error" => true,
                        _ => return Err(de::Error::custom("bad status")),
                    };
                    once(&mut ev.error, error)?
                }
                (Kind::Event, _) => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        if !schema_seen {
            return Err(de::Error::custom("no schema"));
        }
        match kind {
            Some(Kind::Batch) => match (parsed, items) {
                (Some(events), _) => Ok(Message::Events(events)),
                (_, Some(items)) => Ok(Message::Batch(items)),
                _ => Err(de::Error::custom("no events")),
            },
            _ => {
                if ev.event_id.is_none() || ev.model.is_none() || ev.ts.is_none() {
                    return Err(de::Error::custom("missing field"));
                }
                if ev.features.is_none() {
                    return Err(de::Error::custom("missing field"));
                }
                Ok(Message::Event(Box::new(ev)))
            }
        }
    }
}

/// Finds the schema of a message whose first key is not `schema`.
struct SchemaOnly<'c>(&'c Contract);

impl<'de> DeserializeSeed<'de> for SchemaOnly<'_> {
    type Value = Kind;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for SchemaOnly<'_> {
    type Value = Kind;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object with a schema")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut kind = None;
        while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
            if key == "schema" {
                let Text(tag) = map.next_value::<Text<'de>>()?;
                kind = if tag == self.0.event_schema.as_str() {
                    Some(Kind::Event)
                } else if tag == self.0.batch_schema.as_str() {
                    Some(Kind::Batch)
                } else {
                    None
                };
                break;
            }
            map.next_value::<Skip>()?;
        }
        kind.ok_or_else(|| de::Error::custom("no known schema"))
    }
}

fn parse<'a>(
    text: &'a str,
    c: &Contract,
    known: Option<Kind>,
    inline: bool,
) -> Option<Message<'a>> {
    let seed = |known| MessageSeed {
        contract: c,
        known,
        inline,
    };
    let mut d = serde_json::Deserializer::from_str(text);
    match seed(known).deserialize(&mut d) {
        Ok(m) => d.end().ok().map(|_| m),
        Err(e) if known.is_none() && e.to_string().starts_with(NEED_SCHEMA) => {
            let mut d = serde_json::Deserializer::from_str(text);
            let kind = SchemaOnly(c).deserialize(&mut d).ok()?;
            let mut d = serde_json::Deserializer::from_str(text);
            let m = seed(Some(kind)).deserialize(&mut d).ok()?;
            d.end().ok().map(|_| m)
        }
        Err(_) => None,
    }
}

/// Byte ranges of a message's events: its envelope's items, or the whole message for a
/// single event; empty for anything else.
pub fn event_spans(raw: &[u8], c: &Contract) -> Vec<(u32, u32)> {
    let Some(text) = std::str::from_utf8(raw).ok() else {
        return Vec::new();
    };
    match parse(text, c, None, false) {
        Some(Message::Batch(items)) => {
            let base = text.as_ptr() as usize;
            items
                .iter()
                .map(|item| {
                    let body = item.get();
                    let start = (body.as_ptr() as usize - base) as u32;
                    (start, start + body.len() as u32)
                })
                .collect()
        }
        Some(_) => vec![(0, raw.len() as u32)],
        None => Vec::new(),
    }
}

/// One column of values under construction; rows before its first value are missing.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    /// The numbers (NaN where a row has a string, null or nothing).
    pub numbers: Vec<f64>,
    /// The strings, once one was seen (None where a row has none).
    pub strings: Option<Vec<Option<String>>>,
    pub n_numbers: usize,
    pub n_strings: usize,
    /// Rows where the key was present (null included).
    pub n_present: usize,
    /// Rows where the key was absent.
    pub absent: Vec<u32>,
    stamp: u64,
}

impl Column {
    fn new(name: String) -> Self {
        Column {
            name,
            numbers: Vec::new(),
            strings: None,
            n_numbers: 0,
            n_strings: 0,
            n_present: 0,
            absent: Vec::new(),
            stamp: 0,
        }
    }

    fn pad(&mut self, rows: usize) {
        if self.numbers.len() < rows {
            self.absent.extend(self.numbers.len() as u32..rows as u32);
            self.numbers.resize(rows, f64::NAN);
        }
        if let Some(s) = &mut self.strings {
            if s.len() < rows {
                s.resize(rows, None);
            }
        }
    }

    fn push(&mut self, row: usize, value: &Val<'_>) {
        self.pad(row);
        match value {
            Val::Null => {
                self.numbers.push(f64::NAN);
                if let Some(s) = &mut self.strings {
                    s.push(None);
                }
            }
            Val::Num(x) => {
                self.numbers.push(*x);
                self.n_numbers += 1;
                if let Some(s) = &mut self.strings {
                    s.push(None);
                }
            }
            Val::Str(text) => {
                self.numbers.push(f64::NAN);
                self.n_strings += 1;
                let s = self.strings.get_or_insert_with(|| vec![None; row]);
                s.push(Some(text.as_ref().to_owned()));
            }
        }
    }
}

/// The events of one (model, version), in arrival order.
#[derive(Debug, Clone)]
pub struct Group {
    pub model: String,
    pub version: String,
    pub rows: usize,
    /// Index of the message each row came from.
    pub message: Vec<u32>,
    /// Position of the row among all accepted events of the call (arrival order).
    pub seq: Vec<u32>,
    /// Position of the row's event in its message (0 for a single event; see
    /// `event_spans` for its bytes).
    pub item: Vec<u32>,
    /// Event time in epoch ms; rows listed in `ts_text` hold 0 until the caller parses it.
    pub ts: Vec<i64>,
    pub ts_text: Vec<(u32, String)>,
    pub event_id: Vec<String>,
    /// NaN where the event has none.
    pub latency: Vec<f64>,
    pub error: Vec<bool>,
    pub prediction: Column,
    pub features: Vec<Column>,
    index: HashMap<String, usize>,
    /// Column of each position of the previous event's features (events from one
    /// producer list their features in the same order).
    order: Vec<usize>,
}

impl Group {
    fn new(model: String, version: String) -> Self {
        Group {
            model,
            version,
            rows: 0,
            message: Vec::new(),
            seq: Vec::new(),
            item: Vec::new(),
            ts: Vec::new(),
            ts_text: Vec::new(),
            event_id: Vec::new(),
            latency: Vec::new(),
            error: Vec::new(),
            prediction: Column::new(String::new()),
            features: Vec::new(),
            index: HashMap::new(),
            order: Vec::new(),
        }
    }

    /// The columns of the event's features, or None if a name repeats.
    fn columns_of(&mut self, features: &[(Cow<'_, str>, Val<'_>)], stamp: u64) -> Option<()> {
        if self.order.len() > features.len() {
            self.order.truncate(features.len());
        }
        for (i, (name, _)) in features.iter().enumerate() {
            let cached = self
                .order
                .get(i)
                .copied()
                .filter(|&j| self.features[j].name == name.as_ref());
            let j = match cached {
                Some(j) => j,
                None => {
                    let j = match self.index.get(name.as_ref()) {
                        Some(&j) => j,
                        None => {
                            self.features.push(Column::new(name.as_ref().to_owned()));
                            let j = self.features.len() - 1;
                            self.index.insert(name.as_ref().to_owned(), j);
                            j
                        }
                    };
                    if i < self.order.len() {
                        self.order[i] = j;
                    } else {
                        self.order.push(j);
                    }
                    j
                }
            };
            let column = &mut self.features[j];
            if column.stamp == stamp {
                return None;
            }
            column.stamp = stamp;
        }
        Some(())
    }

    fn finish(&mut self) {
        let rows = self.rows;
        self.prediction.pad(rows);
        for column in &mut self.features {
            column.pad(rows);
        }
    }
}

/// What a call decoded: the groups, and what the caller must decode itself.
#[derive(Debug, Default)]
pub struct Decoded {
    pub groups: Vec<Group>,
    /// (message index, byte range of the event, or None for the whole message).
    pub rejected: Vec<(u32, Option<(u32, u32)>)>,
}

/// Decodes messages into columns (see the module doc).
pub fn decode_messages<'a, I: IntoIterator<Item = &'a [u8]>>(
    messages: I,
    contract: &Contract,
    now_ms: Option<i64>,
) -> Decoded {
    let mut out = Decoded::default();
    let mut lookup: HashMap<(String, String), usize> = HashMap::new();
    let mut last: Option<usize> = None;
    let mut stamp: u64 = 0;
    let mut seq: u32 = 0;
    for (index, raw) in messages.into_iter().enumerate() {
        let index = index as u32;
        let text = match (raw.len() <= contract.max_message_bytes)
            .then(|| std::str::from_utf8(raw).ok())
            .flatten()
        {
            Some(t) => t,
            None => {
                out.rejected.push((index, None));
                continue;
            }
        };
        let message =
            parse(text, contract, None, true).or_else(|| parse(text, contract, None, false));
        let mut add_event = |out: &mut Decoded, ev: WireEvent<'_>, item: u32| {
            stamp += 1;
            let added = add(
                out,
                &mut lookup,
                &mut last,
                ev,
                (index, item, seq, stamp),
                contract,
                now_ms,
            );
            if added {
                seq += 1;
            }
            added
        };
        match message {
            None => out.rejected.push((index, None)),
            Some(Message::Event(ev)) => {
                if !add_event(&mut out, *ev, 0) {
                    out.rejected.push((index, None));
                }
            }
            Some(Message::Events(events)) => {
                let mut spans: Option<Vec<(u32, u32)>> = None;
                for (item, ev) in events.into_iter().enumerate() {
                    if !add_event(&mut out, ev, item as u32) {
                        let spans = spans.get_or_insert_with(|| event_spans(raw, contract));
                        out.rejected.push((index, spans.get(item).copied()));
                    }
                }
            }
            Some(Message::Batch(items)) => {
                let base = text.as_ptr() as usize;
                for (item, raw_item) in items.into_iter().enumerate() {
                    let body = raw_item.get();
                    let start = (body.as_ptr() as usize - base) as u32;
                    let span = (start, start + body.len() as u32);
                    let added = match parse(body, contract, Some(Kind::Event), false) {
                        Some(Message::Event(ev)) => add_event(&mut out, *ev, item as u32),
                        _ => false,
                    };
                    if !added {
                        out.rejected.push((index, Some(span)));
                    }
                }
            }
        }
    }
    for group in &mut out.groups {
        group.finish();
    }
    out
}

/// Adds a parsed event to its group's columns; false if it is not acceptable after all.
/// `at` is (message index, item in the message, arrival position, event serial).
fn add(
    out: &mut Decoded,
    lookup: &mut HashMap<(String, String), usize>,
    last: &mut Option<usize>,
    ev: WireEvent<'_>,
    at: (u32, u32, u32, u64),
    c: &Contract,
    now_ms: Option<i64>,
) -> bool {
    let (message, item, seq, stamp) = at;
    let (Some(event_id), Some(model), Some(ts), Some(features)) =
        (ev.event_id, ev.model, ev.ts, ev.features)
    else {
        return false;
    };
    if let Ts::Ms(t) = ts {
        if t < c.min_ts_ms {
            return false;
        }
        if let (Some(now), Some(ahead)) = (now_ms, c.max_future_ms) {
            if t > now.saturating_add(ahead) {
                return false;
            }
        }
    }
    let version = ev.version.unwrap_or(Cow::Borrowed(""));
    let g = match *last {
        Some(g)
            if out.groups[g].model == model.as_ref()
                && out.groups[g].version == version.as_ref() =>
        {
            g
        }
        _ => {
            let key = (model.into_owned(), version.into_owned());
            let g = match lookup.get(&key) {
                Some(&g) => g,
                None => {
                    out.groups.push(Group::new(key.0.clone(), key.1.clone()));
                    lookup.insert(key, out.groups.len() - 1);
                    out.groups.len() - 1
                }
            };
            *last = Some(g);
            g
        }
    };
    let group = &mut out.groups[g];
    if group.columns_of(&features, stamp).is_none() {
        return false;
    }
    let row = group.rows;
    for (i, (_, value)) in features.iter().enumerate() {
        let j = group.order[i];
        let column = &mut group.features[j];
        column.push(row, value);
        column.n_present += 1;
    }
    group
        .prediction
        .push(row, ev.prediction.as_ref().unwrap_or(&Val::Null));
    group.message.push(message);
    group.seq.push(seq);
    group.item.push(item);
    match ts {
        Ts::Ms(t) => group.ts.push(t),
        Ts::Text(text) => {
            group.ts.push(0);
            group.ts_text.push((row as u32, text.into_owned()));
        }
    }
    group.event_id.push(event_id.into_owned());
    group.latency.push(ev.latency.flatten().unwrap_or(f64::NAN));
    group.error.push(ev.error.unwrap_or(false));
    group.rows += 1;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contract() -> Contract {
        Contract {
            event_schema: "driftline.event/v1".into(),
            batch_schema: "driftline.batch/v1".into(),
            max_message_bytes: 1 << 20,
            max_events: 100,
            max_features: 4,
            max_string_chars: 8,
            min_ts_ms: 946_684_800_000,
            max_future_ms: Some(3_600_000),
        }
    }

    const NOW: i64 = 1_800_000_000_000;

    fn run(messages: &[&str]) -> Decoded {
        decode_messages(
            messages.iter().map(|m| m.as_bytes()),
            &contract(),
            Some(NOW),
        )
    }

    #[test]
    fn single_events_and_envelopes_fill_columns_per_model_version() {
        let a = r#"{"schema":"driftline.event/v1","event_id":"e1","model":"m","model_version":3,"ts":1700000000000,"features":{"x":1.5,"c":"DE"},"prediction":0.5,"latency_ms":2,"status":"error"}"#;
        let b = r#"{"schema":"driftline.batch/v1","events":[ {"model":"m","schema":"driftline.event/v1","event_id":"e2","model_version":"3","ts":1700000000001.9,"features":{"c":null,"y":2}}, {"schema":"driftline.event/v1","event_id":"e3","model":"n","ts":"2026-01-01T00:00:00Z","features":{}} ]}"#;
        let d = run(&[a, b]);
        assert!(d.rejected.is_empty(), "{:?}", d.rejected);
        assert_eq!(d.groups.len(), 2);
        let m = &d.groups[0];
        assert_eq!(
            (m.model.as_str(), m.version.as_str(), m.rows),
            ("m", "3", 2)
        );
        assert_eq!(m.ts, vec![1_700_000_000_000, 1_700_000_000_001]);
        assert_eq!(m.message, vec![0, 1]);
        assert_eq!(m.seq, vec![0, 1]);
        assert_eq!(m.error, vec![true, false]);
        assert_eq!(m.latency[0], 2.0);
        assert!(m.latency[1].is_nan());
        let x = &m.features[m.index["x"]];
        assert_eq!(x.numbers[0], 1.5);
        assert!(x.numbers[1].is_nan());
        assert_eq!(
            (x.n_numbers, x.n_present, x.absent.clone()),
            (1, 1, vec![1])
        );
        let c = &m.features[m.index["c"]];
        assert_eq!(
            c.strings.as_ref().unwrap(),
            &vec![Some("DE".to_string()), None]
        );
        assert_eq!((c.n_strings, c.n_present), (1, 2));
        let y = &m.features[m.index["y"]];
        assert!(y.numbers[0].is_nan());
        assert_eq!(y.numbers[1], 2.0);
        assert_eq!(m.item, vec![0, 0]);
        let spans = event_spans(b.as_bytes(), &contract());
        let (start, end) = spans[0];
        assert!(b[start as usize..end as usize].starts_with("{\"model\""));
        assert_eq!(
            event_spans(a.as_bytes(), &contract()),
            vec![(0, a.len() as u32)]
        );
        let n = &d.groups[1];
        assert_eq!(
            (n.version.as_str(), n.ts_text.clone()),
            ("", vec![(0, "2026-01-01T00:00:00Z".to_string())])
        );
        assert!(n.prediction.numbers[0].is_nan());
    }

    #[test]
    fn anything_doubtful_is_left_to_the_caller() {
        let ok = r#"{"schema":"driftline.event/v1","event_id":"e","model":"m","ts":1700000000000,"features":{"x":1}}"#;
        let deep = format!(
            r#"{{"schema":"driftline.event/v1","event_id":"e","model":"m","ts":1700000000000,"features":{{}},"pad":{}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        let cases = [
            "not json",
            r#"{"schema":"other","event_id":"e","model":"m","ts":1700000000000,"features":{}}"#,
            r#"{"event_id":"e","model":"m","ts":1700000000000,"features":{}}"#,
            r#"{"schema":"driftline.event/v1","event_id":"","model":"m","ts":1700000000000,"features":{}}"#,
            r#"{"schema":"driftline.event/v1","event_id":"e","model":"m","ts":1,"features":{}}"#,
            r#"{"schema":"driftline.event/v1","event_id":"e","model":"m","ts":1900000000000,"features":{}}"#,
            r#"{"schema":"driftline.event/v1","event_id":"e","model":"m","ts":1700000000000,"features":{"x":true}}"#,
            r#"{"schema":"driftline.event/v1","event_id":"e","model":"m","ts":1700000000000,"features":{"x":"toolongvalue"}}"#,
            r#"{"schema":"driftline.event/v1","event_id":"e","model":"m","ts":1700000000000,"features":{"a":1,"b":1,"c":1,"d":1,"e":1}}"#,
            r#"{"schema":"driftline.event/v1","event_id":"e","model":"m","ts":1700000000000,"features":{"x":1,"x":2}}"#,
            r#"{"schema":"driftline.event/v1","event_id":"e","model":"m","ts":1700000000000,"features":{},"status":"bad"}"#,
            r#"{"schema":"driftline.event/v1","event_id":"e","model":"m","ts":1700000000000,"features":{},"latency_ms":-1}"#,
            r#"{"schema":"driftline.event/v1","event_id":"e","model":"m","ts":1700000000000,"features":{"x":1e999}}"#,
            r#"{"schema":"driftline.event/v1","event_id":"e","model":"m","model_version":1.5,"ts":1700000000000,"features":{}}"#,
            r#"{"schema":"driftline.event/v1","event_id":"e","model":"m","ts":1700000000000}"#,
            r#"{"schema":"driftline.event/v1","event_id":"e","model":"m","ts":1700000000000,"features":{}} x"#,
            &deep,
        ];
        for case in cases {
            let d = run(&[ok, case, ok]);
            assert_eq!(d.rejected, vec![(1, None)], "{case}");
            assert_eq!(d.groups[0].rows, 2, "{case}");
        }
        // a bad item of an envelope is rejected alone, with its span
        let env = format!(
            r#"{{"schema":"driftline.batch/v1","events":[{ok},{{"schema":"driftline.event/v1"}},{ok}]}}"#
        );
        let d = run(&[&env]);
        assert_eq!(d.groups[0].rows, 2);
        let (m, span) = d.rejected[0];
        let (s, e) = span.unwrap();
        assert_eq!(
            (m, &env[s as usize..e as usize]),
            (0, r#"{"schema":"driftline.event/v1"}"#)
        );
        // too many events: the whole message
        let many = format!(
            r#"{{"schema":"driftline.batch/v1","events":[{}]}}"#,
            vec![ok; 101].join(",")
        );
        assert_eq!(run(&[&many]).rejected, vec![(0, None)]);
    }
}
