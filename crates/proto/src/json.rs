//! [`Json`]: an arbitrary JSON value that can also cross the binary (bincode) codec.
//!
//! bincode cannot carry `serde_json::Value` (it needs self-describing input), so in
//! binary formats the value travels as its JSON text; in JSON it is the value itself.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A JSON value carried opaquely: skill input/output, event data, manifest extras.
#[derive(Clone, PartialEq, Default)]
pub struct Json(pub serde_json::Value);

impl Json {
    /// JSON `null`.
    pub fn null() -> Self {
        Json(serde_json::Value::Null)
    }
}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<serde_json::Value> for Json {
    fn from(v: serde_json::Value) -> Self {
        Json(v)
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            self.0.serialize(s)
        } else {
            s.serialize_str(&self.0.to_string())
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            serde_json::Value::deserialize(d).map(Json)
        } else {
            let text = String::deserialize(d)?;
            serde_json::from_str(&text)
                .map(Json)
                .map_err(serde::de::Error::custom)
        }
    }
}

/// Implements `Serialize`/`Deserialize` for a type whose derive is declared with
/// `#[serde(remote = "Self")]`: human-readable formats (JSON) get the derived shape,
/// with its `skip_serializing_if` and defaults; binary formats (bincode frames) carry the
/// JSON text, because bincode cannot skip fields. Used for every wire type that has
/// optional fields an agent sees.
#[macro_export]
macro_rules! json_in_binary {
    ($ty:ty) => {
        impl ::serde::Serialize for $ty {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    <$ty>::serialize(self, s)
                } else {
                    let text =
                        ::serde_json::to_string(self).map_err(::serde::ser::Error::custom)?;
                    s.serialize_str(&text)
                }
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $ty {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    <$ty>::deserialize(d)
                } else {
                    let text = <String as ::serde::Deserialize>::deserialize(d)?;
                    ::serde_json::from_str(&text).map_err(::serde::de::Error::custom)
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn crosses_both_codecs() {
        let v = Json(json!({"a": [1, 2.5, null, "x"], "b": {"c": true}}));
        let text = serde_json::to_string(&v).unwrap();
        assert_eq!(text, r#"{"a":[1,2.5,null,"x"],"b":{"c":true}}"#);
        let bin = crate::frame::to_bytes(&v).unwrap();
        assert_eq!(crate::frame::from_bytes::<Json>(&bin).unwrap(), v);
    }
}
