//! Writing a `serde_json::Value` as compact JSON text, byte for byte what
//! `serde_json::to_vec` writes, but scanning strings 32 bytes at a time: the local API
//! sends every push and reply as a JSON line, and a large skill input or output is one
//! long string that serde_json checks byte by byte (about twice the time, measured on a
//! 64 KiB string).

use serde_json::Value;

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Bytes checked at once before falling back to one at a time.
const BLOCK: usize = 32;

/// Whether any byte of `block` may be a control character, `"` or `\\` (exact for the
/// block as a whole; it is only used to skip clean blocks). Eight bytes per word, the
/// words of a block or-ed together, which the compiler turns into vector code.
fn block_needs_escape(block: &[u8]) -> bool {
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let mut acc = 0u64;
    for w in block.chunks_exact(8) {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        let w = u64::from_le_bytes(b);
        acc |= w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
        acc |= has_zero(w ^ (ONES * u64::from(b'"')));
        acc |= has_zero(w ^ (ONES * u64::from(b'\\')));
    }
    acc != 0
}

/// The escape of one byte, if it needs one (serde_json's table).
fn escape_of(b: u8) -> Option<&'static [u8]> {
    Some(match b {
        b'"' => b"\\\"",
        b'\\' => b"\\\\",
        b'\n' => b"\\n",
        b'\r' => b"\\r",
        b'\t' => b"\\t",
        0x08 => b"\\b",
        0x0c => b"\\f",
        0x00..=0x1f => return Some(&[]),
        _ => return None,
    })
}

fn write_escaped_byte(out: &mut Vec<u8>, b: u8, esc: &[u8]) {
    if esc.is_empty() {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        out.extend_from_slice(b"\\u00");
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 0xf)]);
    } else {
        out.extend_from_slice(esc);
    }
}

/// Writes `s` as a JSON string literal.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0; // first byte not yet written
    let mut i = 0;
    while i < bytes.len() {
        if let Some(block) = bytes.get(i..i + BLOCK) {
            if !block_needs_escape(block) {
                i += BLOCK;
                continue;
            }
        }
        let end = (i + BLOCK).min(bytes.len());
        while i < end {
            if let Some(esc) = escape_of(bytes[i]) {
                out.extend_from_slice(&bytes[start..i]);
                write_escaped_byte(out, bytes[i], esc);
                start = i + 1;
            }
            i += 1;
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Appends `v` as compact JSON text to `out`.
pub fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            // Writing to a Vec cannot fail; serde_json formats numbers (itoa / ryu).
            let _ = serde_json::to_writer(&mut *out, n);
        }
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (k, item) in items.iter().enumerate() {
                if k > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            for (k, (key, item)) in map.iter().enumerate() {
                if k > 0 {
                    out.push(b',');
                }
                write_str(out, key);
                out.push(b':');
                write_value(out, item);
            }
            out.push(b'}');
        }
    }
}

/// `v` as one JSON line (compact text and a newline).
pub fn to_line(v: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    write_value(&mut out, v);
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn same_as_serde_json(v: &Value) {
        let mut ours = Vec::new();
        write_value(&mut ours, v);
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&serde_json::to_vec(v).unwrap())
        );
    }

    #[test]
    fn matches_serde_json_on_every_escape() {
        let all: String = (0u8..0x80).map(char::from).collect();
        for s in [
            String::new(),
            all.clone(),
            "x".repeat(65_536),
            format!("{}\"{}\\{}\n", "a".repeat(7), "b".repeat(8), "c".repeat(9)),
            "ünïcödé → 🦀 \u{7f} \u{2028}".to_string(),
        ] {
            same_as_serde_json(&json!(s));
        }
        same_as_serde_json(&json!({
            "a\u{1}b": [1, -2, 3.5, 1e300, null, true, false, u64::MAX, i64::MIN],
            "nested": {"x": [], "y": {}, "z": [[all]]},
        }));
        assert_eq!(to_line(&json!({"a": 1})), b"{\"a\":1}\n");
    }

    fn any_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|f| json!(f)),
            ".{0,40}".prop_map(Value::String),
            prop::collection::vec(0u8..0x80, 0..40)
                .prop_map(|b| Value::String(b.into_iter().map(char::from).collect())),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(".{0,8}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_value_matches_serde_json(v in any_value()) {
            let mut ours = Vec::new();
            write_value(&mut ours, &v);
            prop_assert_eq!(ours, serde_json::to_vec(&v).unwrap());
        }
    }
}
