//! Conversions between JSON (as the `--json` interface and the shell show
//! them) and the msgpack [`Value`]s the dictionary holds.
//!
//! # Values
//!
//! | JSON                         | msgpack                         |
//! |------------------------------|---------------------------------|
//! | `null`                       | nil                             |
//! | `true` / `false`             | bool                            |
//! | integer (`i64` or `u64`)     | int                             |
//! | any other number             | float64                         |
//! | string                       | str                             |
//! | `{"$bin":"<hex>"}`           | bin (the object has exactly that one key) |
//! | array                        | array                           |
//! | any other object             | map with str keys               |
//!
//! Printing goes the other way. Non-finite floats (NaN, ±inf), which JSON
//! cannot hold, print as `null`. A map key that is str prints as itself; a
//! bin key prints as its UTF-8 text when valid; any other key (an int, a bin
//! that is not UTF-8, ...) prints as a JSON string of its Python-like
//! `Display` form (`7`, `True`, `b"�"`: invalid bytes become U+FFFD).
//! When two keys print the same, the last one wins. A map whose only key is
//! the str `"$bin"` with a string value prints like bytes: that one form is
//! ambiguous.
//!
//! JSON objects are read with their keys in sorted order (serde_json's
//! default map), so a map written from JSON has sorted keys.
//!
//! # Keys
//!
//! Dictionary keys are bytes. A JSON string is its UTF-8 bytes;
//! `{"$bin":"<hex>"}` is raw bytes. Keys print as a string when they are
//! valid UTF-8, else as `{"$bin":"<hex>"}`.

use rs2p::Value;
use serde_json::{Map, Number, Value as Json};

/// The single key of the JSON object that stands for bytes.
pub const BIN_KEY: &str = "$bin";

/// Lower-case hex of some bytes.
pub fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Bytes from hex (either case); an error message when it is not hex.
pub fn hex_decode(s: &str) -> Result<Vec<u8>, String> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let raw = s.as_bytes();
    if raw.len() % 2 != 0 {
        return Err(format!("\"$bin\" hex has an odd length ({})", raw.len()));
    }
    raw.chunks_exact(2)
        .enumerate()
        .map(|(i, pair)| match (nibble(pair[0]), nibble(pair[1])) {
            (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
            _ => Err(format!("\"$bin\" is not hex at offset {}", i * 2)),
        })
        .collect()
}

/// The JSON form of bytes: `{"$bin":"<hex>"}`.
pub fn bin_json(bytes: &[u8]) -> Json {
    let mut m = Map::new();
    m.insert(BIN_KEY.to_string(), Json::String(hex_encode(bytes)));
    Json::Object(m)
}

/// When `obj` is `{"$bin": "<hex>"}`, its bytes (or the hex error);
/// `None` for any other object.
fn bin_object(obj: &Map<String, Json>) -> Option<Result<Vec<u8>, String>> {
    if obj.len() != 1 {
        return None;
    }
    match obj.get(BIN_KEY)? {
        Json::String(hex) => Some(hex_decode(hex)),
        _ => Some(Err(format!("\"{BIN_KEY}\" must be a hex string"))),
    }
}

/// A [`Value`] from its JSON form.
pub fn json_to_value(j: &Json) -> Result<Value, String> {
    Ok(match j {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::F64(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => Value::Str(s.clone()),
        Json::Array(a) => Value::Array(a.iter().map(json_to_value).collect::<Result<_, _>>()?),
        Json::Object(obj) => {
            if let Some(bin) = bin_object(obj) {
                return bin.map(Value::Bin);
            }
            Value::Map(
                obj.iter()
                    .map(|(k, v)| Ok((Value::Str(k.clone()), json_to_value(v)?)))
                    .collect::<Result<_, String>>()?,
            )
        }
    })
}

/// The JSON form of a [`Value`].
pub fn value_to_json(v: &Value) -> Json {
    match v {
        Value::Nil => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Json::Number(i.into()),
            (None, Some(u)) => Json::Number(u.into()),
            // Unreachable: msgpack integers fit i64 or u64.
            (None, None) => Json::String(n.to_string()),
        },
        Value::F32(f) => float_json(f64::from(*f)),
        Value::F64(f) => float_json(*f),
        Value::Str(s) => Json::String(s.clone()),
        Value::Bin(b) => bin_json(b),
        Value::Array(a) => Json::Array(a.iter().map(value_to_json).collect()),
        Value::Map(m) => Json::Object(
            m.iter()
                .map(|(k, v)| (map_key_text(k), value_to_json(v)))
                .collect(),
        ),
    }
}

fn float_json(f: f64) -> Json {
    Number::from_f64(f).map_or(Json::Null, Json::Number)
}

/// How a map key prints as a JSON object key (see the module docs).
fn map_key_text(k: &Value) -> String {
    match k {
        Value::Str(s) => s.clone(),
        Value::Bin(b) => match std::str::from_utf8(b) {
            Ok(s) => s.to_string(),
            Err(_) => k.to_string(),
        },
        other => other.to_string(),
    }
}

/// A dictionary key from its JSON form: a string, or `{"$bin":"<hex>"}`.
pub fn json_to_key(j: &Json) -> Result<Vec<u8>, String> {
    match j {
        Json::String(s) => Ok(s.as_bytes().to_vec()),
        Json::Object(obj) => bin_object(obj)
            .unwrap_or_else(|| Err("a key must be a string or {\"$bin\":\"<hex>\"}".to_string())),
        other => Err(format!(
            "a key must be a string or {{\"$bin\":\"<hex>\"}}, not {}",
            json_kind(other)
        )),
    }
}

/// The JSON form of a dictionary key.
pub fn key_to_json(key: &[u8]) -> Json {
    match std::str::from_utf8(key) {
        Ok(s) => Json::String(s.to_string()),
        Err(_) => bin_json(key),
    }
}

/// A key for people to read: the text when valid UTF-8, else the JSON form.
pub fn key_display(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) => s.to_string(),
        Err(_) => key_to_json(key).to_string(),
    }
}

/// A key as the shell shows it: bare when the shell would read it back as
/// the same key (a word: no spaces or control characters, not starting
/// with `"` or `{`), else its JSON form (`"two words"`, `""`,
/// `{"$bin":"ff"}`).
pub fn key_shell(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if is_bare_word(s) => s.to_string(),
        _ => key_to_json(key).to_string(),
    }
}

fn is_bare_word(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(['"', '{'])
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Refuses integer literals in JSON `text` that no msgpack integer holds
/// (beyond -2^63 ..= 2^64-1): serde_json would read them as floats
/// (`99999999999999999999` as `1e20`) without a word.
pub fn check_integers(text: &str) -> Result<(), String> {
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut in_string = false;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        if b == b'-' || b.is_ascii_digit() {
            let start = i;
            while i < bytes.len()
                && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
            {
                i += 1;
            }
            let literal = &text[start..i];
            let integral = !literal.contains(['.', 'e', 'E']);
            if integral && literal.parse::<i64>().is_err() && literal.parse::<u64>().is_err() {
                return Err(format!(
                    "integer {literal} is out of range: msgpack integers are 64-bit \
                     (-9223372036854775808 to 18446744073709551615); quote it to keep it as a string"
                ));
            }
            continue;
        }
        i += 1;
    }
    Ok(())
}

/// Whether `pattern` (`*` any run of characters, `?` one character,
/// anything else itself) matches all of `text`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // The last `*` seen, and where in `text` its run ends so far.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// The name of a JSON value's type, for error messages.
pub fn json_kind(j: &Json) -> &'static str {
    match j {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// Equality for `wait`: exact, except that an integer and an integral float
/// with the same value match (js2p sends large integers as float64).
pub fn values_match(a: &Value, b: &Value) -> bool {
    if a == b {
        return true;
    }
    let numeric = |v: &Value| matches!(v, Value::Int(_) | Value::F32(_) | Value::F64(_));
    if numeric(a) && numeric(b) {
        if let (Some(x), Some(y)) = (a.as_integer(), b.as_integer()) {
            return x == y;
        }
    }
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| values_match(p, q))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter().all(|(k, v)| {
                    y.iter()
                        .any(|(k2, v2)| values_match(k, k2) && values_match(v, v2))
                })
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips() {
        let j = json!({"a": [1, -2, 1.5, "x", null, true, {"$bin": "00ff"}],
                       "big": u64::MAX, "neg": i64::MIN});
        let v = json_to_value(&j).unwrap();
        assert_eq!(value_to_json(&v), j);
        assert_eq!(
            json_to_value(&json!({"$bin": "ABcd"})).unwrap(),
            Value::Bin(vec![0xab, 0xcd])
        );
        assert!(json_to_value(&json!({"$bin": "abc"})).is_err());
        assert!(json_to_value(&json!({"$bin": "zz"})).is_err());
        assert!(json_to_value(&json!({"$bin": 1})).is_err());
        // With a second key it is an ordinary map.
        assert!(json_to_value(&json!({"$bin": "00", "x": 1}))
            .unwrap()
            .as_map()
            .is_some());
    }

    #[test]
    fn keys() {
        assert_eq!(json_to_key(&json!("测试")).unwrap(), "测试".as_bytes());
        assert_eq!(json_to_key(&json!({"$bin": "ff"})).unwrap(), vec![0xff]);
        assert!(json_to_key(&json!(1)).is_err());
        assert!(json_to_key(&json!({"k": 1})).is_err());
        assert_eq!(key_to_json(b"abc"), json!("abc"));
        assert_eq!(key_to_json(&[0xff]), json!({"$bin": "ff"}));
    }

    #[test]
    fn odd_map_keys() {
        let v = Value::Map(vec![
            (Value::Bin(b"k".to_vec()), Value::from(1)),
            (Value::Bin(vec![0xff]), Value::from(2)),
            (Value::from(7), Value::from(3)),
        ]);
        let shown = Value::Bin(vec![0xff]).to_string();
        assert_eq!(value_to_json(&v), json!({"k": 1, shown: 2, "7": 3}));
        assert_eq!(value_to_json(&Value::F64(f64::NAN)), Json::Null);
    }

    #[test]
    fn shell_keys() {
        assert_eq!(key_shell(b"plain"), "plain");
        assert_eq!(key_shell("测试".as_bytes()), "测试");
        assert_eq!(key_shell(b"two words"), "\"two words\"");
        assert_eq!(key_shell(b""), "\"\"");
        assert_eq!(key_shell(b"\"q"), "\"\\\"q\"");
        assert_eq!(key_shell(b"{x"), "\"{x\"");
        assert_eq!(key_shell(b"tab\there"), "\"tab\\there\"");
        assert_eq!(key_shell(&[0xff]), "{\"$bin\":\"ff\"}");
    }

    #[test]
    fn big_integers() {
        assert!(check_integers("99999999999999999999").is_err());
        assert!(check_integers("[1, -99999999999999999999]").is_err());
        assert!(check_integers("{\"a\": {\"b\": 18446744073709551616}}").is_err());
        assert!(check_integers("18446744073709551615").is_ok());
        assert!(check_integers("-9223372036854775808").is_ok());
        assert!(check_integers("1e20").is_ok());
        assert!(check_integers("99999999999999999999.0").is_ok());
        assert!(check_integers("\"99999999999999999999\"").is_ok());
        assert!(check_integers("\"a\\\" 99999999999999999999\"").is_ok());
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", ""));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("user:*", "user:1"));
        assert!(!glob_match("user:*", "users"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*b*", "abc"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("a*b", "abc"));
        assert!(glob_match("测*", "测试"));
        assert!(glob_match("exact", "exact"));
    }

    #[test]
    fn matching() {
        assert!(values_match(&Value::from(256), &Value::F64(256.0)));
        assert!(!values_match(&Value::from(256), &Value::F64(256.5)));
        assert!(!values_match(&Value::from("1"), &Value::from(1)));
    }
}
