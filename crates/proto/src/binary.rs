//! Binary forms used by peer frames of version 2 ([`crate::peer::PEER_FRAME_VERSION`]):
//! a JSON value as a tagged binary value ([`json`]) and the envelope as a fixed sequence
//! of its fields ([`envelope`]), so a peer frame never writes or parses JSON text.
//!
//! A JSON value is one of `Null | Bool(bool) | U64 | I64 | F64 | String | Array(values) |
//! Object(key → value)`, the variant index first (bincode varint), strings as length and
//! UTF-8 bytes: a 64 KiB string is copied, never escaped or scanned for escapes. Nesting
//! deeper than [`MAX_DEPTH`] is refused when decoding (as serde_json refuses it), so
//! garbage cannot exhaust the stack.
//!
//! Used through `#[serde(with = "...")]` on the frame fields; a human-readable format
//! (JSON, e.g. in logs or tests) gets the value's ordinary serde form instead.

use serde::de::{self, DeserializeSeed, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Number, Value};

/// Deepest nesting of arrays and objects a binary value may have.
pub const MAX_DEPTH: usize = 128;

const NAME: &str = "Json";
const VARIANTS: &[&str] = &[
    "Null", "Bool", "U64", "I64", "F64", "String", "Array", "Object",
];

/// Serialises a borrowed JSON value in its binary form.
struct ValueRef<'a>(&'a Value);

impl Serialize for ValueRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Null => s.serialize_unit_variant(NAME, 0, "Null"),
            Value::Bool(b) => s.serialize_newtype_variant(NAME, 1, "Bool", b),
            Value::Number(n) => number(n, s),
            Value::String(t) => s.serialize_newtype_variant(NAME, 5, "String", t.as_str()),
            Value::Array(a) => s.serialize_newtype_variant(NAME, 6, "Array", &ArrayRef(a)),
            Value::Object(m) => s.serialize_newtype_variant(NAME, 7, "Object", &ObjectRef(m)),
        }
    }
}

fn number<S: Serializer>(n: &Number, s: S) -> Result<S::Ok, S::Error> {
    if let Some(u) = n.as_u64() {
        s.serialize_newtype_variant(NAME, 2, "U64", &u)
    } else if let Some(i) = n.as_i64() {
        s.serialize_newtype_variant(NAME, 3, "I64", &i)
    } else {
        // Without serde_json's arbitrary precision, a number is one of the three.
        let f = n.as_f64().unwrap_or(0.0);
        s.serialize_newtype_variant(NAME, 4, "F64", &f)
    }
}

struct ArrayRef<'a>(&'a [Value]);

impl Serialize for ArrayRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for v in self.0 {
            seq.serialize_element(&ValueRef(v))?;
        }
        seq.end()
    }
}

struct ObjectRef<'a>(&'a Map<String, Value>);

impl Serialize for ObjectRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k.as_str(), &ValueRef(v))?;
        }
        map.end()
    }
}

/// Reads one binary value `depth` levels down.
#[derive(Clone, Copy)]
struct ValueSeed {
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.depth > MAX_DEPTH {
            return Err(de::Error::custom(format_args!(
                "JSON value nested deeper than {MAX_DEPTH}"
            )));
        }
        d.deserialize_enum(NAME, VARIANTS, self)
    }
}

impl<'de> Visitor<'de> for ValueSeed {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a binary JSON value")
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        let (tag, v) = data.variant::<u32>()?;
        let inner = ValueSeed {
            depth: self.depth + 1,
        };
        Ok(match tag {
            0 => {
                v.unit_variant()?;
                Value::Null
            }
            1 => Value::Bool(v.newtype_variant()?),
            2 => Value::from(v.newtype_variant::<u64>()?),
            3 => Value::from(v.newtype_variant::<i64>()?),
            4 => {
                let f: f64 = v.newtype_variant()?;
                let n = Number::from_f64(f)
                    .ok_or_else(|| de::Error::custom("JSON number is not finite"))?;
                Value::Number(n)
            }
            5 => Value::String(v.newtype_variant()?),
            6 => Value::Array(v.newtype_variant_seed(ArraySeed(inner))?),
            7 => Value::Object(v.newtype_variant_seed(ObjectSeed(inner))?),
            n => {
                return Err(de::Error::invalid_value(
                    de::Unexpected::Unsigned(u64::from(n)),
                    &"a JSON value tag 0-7",
                ))
            }
        })
    }
}

struct ArraySeed(ValueSeed);

impl<'de> DeserializeSeed<'de> for ArraySeed {
    type Value = Vec<Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<Value>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ArraySeed {
    type Value = Vec<Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Value>, A::Error> {
        // No capacity from the announced length: garbage may announce anything.
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self.0)? {
            out.push(v);
        }
        Ok(out)
    }
}

struct ObjectSeed(ValueSeed);

impl<'de> DeserializeSeed<'de> for ObjectSeed {
    type Value = Map<String, Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let v = map.next_value_seed(self.0)?;
            out.insert(k, v);
        }
        Ok(out)
    }
}

/// `#[serde(with = "crate::binary::json")]` for a [`crate::Json`] field.
pub mod json {
    use super::*;
    use crate::Json;

    /// Writes the value in its binary form (its JSON form for JSON).
    pub fn serialize<S: Serializer>(v: &Json, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            v.0.serialize(s)
        } else {
            ValueRef(&v.0).serialize(s)
        }
    }

    /// Reads a value written by [`serialize`].
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Json, D::Error> {
        if d.is_human_readable() {
            Value::deserialize(d).map(Json)
        } else {
            ValueSeed { depth: 0 }.deserialize(d).map(Json)
        }
    }

    /// An optional value (the envelope's `payload` and `meta`).
    pub(crate) mod option {
        use super::*;

        pub(crate) struct OptRef<'a>(pub(crate) Option<&'a Json>);

        impl Serialize for OptRef<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self.0 {
                    Some(v) => s.serialize_some(&ValueRef(&v.0)),
                    None => s.serialize_none(),
                }
            }
        }

        pub(crate) struct Opt(pub(crate) Option<Json>);

        impl<'de> Deserialize<'de> for Opt {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_option(OptVisitor)
            }
        }

        struct OptVisitor;

        impl<'de> Visitor<'de> for OptVisitor {
            type Value = Opt;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an optional binary JSON value")
            }

            fn visit_none<E: de::Error>(self) -> Result<Opt, E> {
                Ok(Opt(None))
            }

            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Opt, D::Error> {
                ValueSeed { depth: 0 }
                    .deserialize(d)
                    .map(|v| Opt(Some(Json(v))))
            }
        }
    }
}

/// `#[serde(with = "crate::binary::envelope")]` for an [`Envelope`] field: every field
/// in a fixed order, optional ones as bincode options, the trace context inline, the
/// payload and `meta` as binary values. Artifacts and the error keep their own binary
/// form (rare, and small).
pub mod envelope {
    use super::json::option::{Opt, OptRef};
    use super::*;
    use crate::envelope::{Artifact, Envelope, PrimitiveType, TraceContext};
    use crate::error::ErrorObject;
    use crate::id::AgentId;

    #[derive(Serialize)]
    struct Ref<'a> {
        v: &'a str,
        id: &'a str,
        kind: PrimitiveType,
        ts: &'a str,
        from: &'a AgentId,
        to: &'a Option<AgentId>,
        task_id: &'a Option<String>,
        in_reply_to: &'a Option<String>,
        context_id: &'a Option<String>,
        trace_id: &'a str,
        span_id: &'a str,
        parent_span_id: &'a Option<String>,
        payload: OptRef<'a>,
        artifacts: &'a [Artifact],
        error: &'a Option<ErrorObject>,
        meta: OptRef<'a>,
    }

    #[derive(Deserialize)]
    struct Owned {
        v: String,
        id: String,
        kind: PrimitiveType,
        ts: String,
        from: AgentId,
        to: Option<AgentId>,
        task_id: Option<String>,
        in_reply_to: Option<String>,
        context_id: Option<String>,
        trace_id: String,
        span_id: String,
        parent_span_id: Option<String>,
        payload: Opt,
        artifacts: Vec<Artifact>,
        error: Option<ErrorObject>,
        meta: Opt,
    }

    /// Writes the envelope in its binary form (its JSON form for JSON).
    pub fn serialize<S: Serializer>(e: &Envelope, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return e.serialize(s);
        }
        Ref {
            v: &e.v,
            id: &e.id,
            kind: e.kind,
            ts: &e.ts,
            from: &e.from,
            to: &e.to,
            task_id: &e.task_id,
            in_reply_to: &e.in_reply_to,
            context_id: &e.context_id,
            trace_id: &e.trace.trace_id,
            span_id: &e.trace.span_id,
            parent_span_id: &e.trace.parent_span_id,
            payload: OptRef(e.payload.as_ref()),
            artifacts: &e.artifacts,
            error: &e.error,
            meta: OptRef(e.meta.as_ref()),
        }
        .serialize(s)
    }

    /// Reads an envelope written by [`serialize`].
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Envelope, D::Error> {
        if d.is_human_readable() {
            return Envelope::deserialize(d);
        }
        let o = Owned::deserialize(d)?;
        Ok(Envelope {
            v: o.v,
            id: o.id,
            kind: o.kind,
            ts: o.ts,
            from: o.from,
            to: o.to,
            task_id: o.task_id,
            in_reply_to: o.in_reply_to,
            context_id: o.context_id,
            trace: TraceContext {
                trace_id: o.trace_id,
                span_id: o.span_id,
                parent_span_id: o.parent_span_id,
            },
            payload: o.payload.0,
            artifacts: o.artifacts,
            error: o.error,
            meta: o.meta.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{from_bytes, to_bytes};
    use crate::Json;
    use proptest::prelude::*;
    use serde_json::json;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct W(#[serde(with = "json")] Json);

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (-1e300f64..1e300).prop_map(Value::from),
            ".{0,20}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(".{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    #[test]
    fn a_large_string_is_carried_as_bytes() {
        let text = "\"x\\".repeat(20_000);
        let w = W(Json(json!({"input": text})));
        let b = to_bytes(&w).unwrap();
        // tag, one entry, key, tag, length varint, the bytes: no escaping.
        assert!(b.len() < text.len() + 20, "{} bytes", b.len());
        assert_eq!(from_bytes::<W>(&b).unwrap(), w);
    }

    #[test]
    fn nesting_past_the_limit_is_refused() {
        let mut v = json!(1);
        for _ in 0..MAX_DEPTH {
            v = json!([v]);
        }
        let ok = W(Json(v.clone()));
        assert_eq!(from_bytes::<W>(&to_bytes(&ok).unwrap()).unwrap(), ok);
        // One more level: written fine, refused when read.
        let deep = to_bytes(&W(Json(json!([v])))).unwrap();
        assert!(from_bytes::<W>(&deep).is_err());
        // Garbage: a million "array of one" tags never reaches the stack's end.
        let bomb: Vec<u8> = std::iter::repeat_n([6u8, 1u8], 500_000).flatten().collect();
        assert!(from_bytes::<W>(&bomb).is_err());
    }

    #[test]
    fn unknown_tags_and_non_finite_numbers_are_refused() {
        assert!(from_bytes::<W>(&[8]).is_err());
        let mut nan = vec![4u8];
        nan.extend_from_slice(&f64::NAN.to_le_bytes());
        assert!(from_bytes::<W>(&nan).is_err());
    }

    #[test]
    fn json_form_is_the_plain_value() {
        let w = W(Json(json!({"a": [1, "b"]})));
        assert_eq!(serde_json::to_string(&w).unwrap(), r#"{"a":[1,"b"]}"#);
    }

    proptest! {
        #[test]
        fn values_round_trip(v in arb_value()) {
            let w = W(Json(v));
            let b = to_bytes(&w).unwrap();
            prop_assert_eq!(from_bytes::<W>(&b).unwrap(), w);
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = from_bytes::<W>(&bytes);
        }
    }
}
