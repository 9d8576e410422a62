//! The msgpack value model shared by the wire codec and the dictionary.
//!
//! [`Value`] keeps every distinction the p2p-today wire makes: text (`str`)
//! versus bytes (`bin`), integers of either sign up to 64 bits, `f32` versus
//! `f64`, and maps in their wire order. Encoding always picks the smallest
//! msgpack representation, as py2p does, so a decoded value re-encodes to the
//! same bytes.

use std::collections::BTreeMap;
use std::fmt;

use crate::error::ValueError;

/// A msgpack integer: any value in `i64::MIN ..= u64::MAX`.
///
/// The wire width is not stored: encoders pick the smallest width that holds
/// the value, which is what both reference implementations do.
///
/// ```
/// use rs2p::Integer;
/// assert_eq!(Integer::from(300u16).as_u64(), Some(300));
/// assert_eq!(Integer::from(-1i8).as_u64(), None);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Integer(i128);

impl Integer {
    /// The value as `i64`, if it fits.
    pub fn as_i64(self) -> Option<i64> {
        i64::try_from(self.0).ok()
    }
    /// The value as `u64`, if it fits.
    pub fn as_u64(self) -> Option<u64> {
        u64::try_from(self.0).ok()
    }
    /// The value as a wide integer (always exact).
    pub fn as_i128(self) -> i128 {
        self.0
    }
    /// Builds an integer from an `i128`, if it is in the msgpack range.
    pub fn from_i128(n: i128) -> Option<Integer> {
        (i128::from(i64::MIN)..=i128::from(u64::MAX))
            .contains(&n)
            .then_some(Integer(n))
    }
}

impl fmt::Debug for Integer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Integer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

macro_rules! integer_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Integer {
            fn from(n: $t) -> Integer { Integer(n as i128) }
        }
        impl From<$t> for Value {
            fn from(n: $t) -> Value { Value::Int(Integer::from(n)) }
        }
        impl TryFrom<&Value> for $t {
            type Error = ValueError;
            fn try_from(v: &Value) -> Result<$t, ValueError> {
                let n = v.as_integer().ok_or_else(|| ValueError::WrongType {
                    expected: stringify!($t),
                    found: v.kind(),
                })?;
                <$t>::try_from(n.0).map_err(|_| ValueError::OutOfRange {
                    target: stringify!($t),
                    value: n.0,
                })
            }
        }
        impl TryFrom<Value> for $t {
            type Error = ValueError;
            fn try_from(v: Value) -> Result<$t, ValueError> { <$t>::try_from(&v) }
        }
    )*};
}
integer_from!(u8, u16, u32, u64, i8, i16, i32, i64, usize, isize);

/// A msgpack value as the p2p-today wire carries it.
///
/// ```
/// use rs2p::Value;
/// let v = Value::from(vec![Value::from("text"), Value::from(&b"bytes"[..]), Value::from(7)]);
/// assert_eq!(v.as_array().map(|a| a.len()), Some(3));
/// assert!(Value::from("a").is_str() && Value::from(&b"a"[..]).is_bin());
/// ```
#[derive(Clone, Debug, PartialEq, Default)]
pub enum Value {
    /// msgpack nil (`None` in Python, `null`/`undefined` in JavaScript).
    #[default]
    Nil,
    /// A boolean.
    Bool(bool),
    /// An integer (any width on the wire).
    Int(Integer),
    /// A 32-bit float (py2p and js2p never send one, but the wire allows it).
    F32(f32),
    /// A 64-bit float.
    F64(f64),
    /// Text (msgpack `str`): valid UTF-8.
    Str(String),
    /// Bytes (msgpack `bin`).
    Bin(Vec<u8>),
    /// An array.
    Array(Vec<Value>),
    /// A map, in wire order. Keys may be any value.
    Map(Vec<(Value, Value)>),
}

impl Value {
    /// A short name of the value's type, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Nil => "nil",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::F32(_) => "float32",
            Value::F64(_) => "float64",
            Value::Str(_) => "str",
            Value::Bin(_) => "bin",
            Value::Array(_) => "array",
            Value::Map(_) => "map",
        }
    }
    /// True for nil.
    pub fn is_nil(&self) -> bool {
        matches!(self, Value::Nil)
    }
    /// True for text.
    pub fn is_str(&self) -> bool {
        matches!(self, Value::Str(_))
    }
    /// True for bytes.
    pub fn is_bin(&self) -> bool {
        matches!(self, Value::Bin(_))
    }
    /// The integer, also accepting an integral float (js2p writes integers
    /// beyond 32 bits as float64).
    pub fn as_integer(&self) -> Option<Integer> {
        match *self {
            Value::Int(n) => Some(n),
            Value::F64(f) if f.fract() == 0.0 && f.is_finite() => Integer::from_i128(f as i128),
            Value::F32(f) if f.fract() == 0.0 && f.is_finite() => Integer::from_i128(f as i128),
            _ => None,
        }
    }
    /// The value as `i64` (integral floats accepted).
    pub fn as_i64(&self) -> Option<i64> {
        self.as_integer().and_then(Integer::as_i64)
    }
    /// The value as `u64` (integral floats accepted).
    pub fn as_u64(&self) -> Option<u64> {
        self.as_integer().and_then(Integer::as_u64)
    }
    /// The value as a float (integers converted).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F64(f) => Some(f),
            Value::F32(f) => Some(f64::from(f)),
            Value::Int(n) => Some(n.0 as f64),
            _ => None,
        }
    }
    /// The boolean, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    /// The text, if this is `str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    /// The bytes of a `str` (its UTF-8) or a `bin`: how ids, keys and request
    /// ids are compared, since py2p sends them as bin and js2p as str.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Str(s) => Some(s.as_bytes()),
            Value::Bin(b) => Some(b),
            _ => None,
        }
    }
    /// The elements, if this is an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    /// The entries, if this is a map.
    pub fn as_map(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }
    /// How deep the value nests: 1 for a scalar, 2 for an array or map of
    /// scalars, and so on (an empty array or map counts 1). Computed without
    /// recursion, so any value a program can build is measured safely.
    ///
    /// ```
    /// use rs2p::Value;
    /// assert_eq!(Value::from(1).height(), 1);
    /// assert_eq!(Value::Array(vec![Value::Array(vec![1.into()])]).height(), 3);
    /// ```
    pub fn height(&self) -> usize {
        let mut deepest = 0;
        let mut stack = vec![(self, 1usize)];
        while let Some((v, d)) = stack.pop() {
            deepest = deepest.max(d);
            match v {
                Value::Array(a) => stack.extend(a.iter().map(|x| (x, d + 1))),
                Value::Map(m) => {
                    for (k, x) in m {
                        stack.push((k, d + 1));
                        stack.push((x, d + 1));
                    }
                }
                _ => {}
            }
        }
        deepest
    }

    /// Python truthiness, as py2p's state-transfer check uses it: nil,
    /// false, 0, 0.0, and empty str/bin/array/map are falsy.
    pub fn is_truthy(&self) -> bool {
        match self {
            Value::Nil => false,
            Value::Bool(b) => *b,
            Value::Int(n) => n.0 != 0,
            Value::F32(f) => *f != 0.0,
            Value::F64(f) => *f != 0.0,
            Value::Str(s) => !s.is_empty(),
            Value::Bin(b) => !b.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Map(m) => !m.is_empty(),
        }
    }
    /// Looks a key up in a map by value equality, treating str and bin with
    /// the same bytes as the same key.
    pub fn map_get(&self, key: &Value) -> Option<&Value> {
        let m = self.as_map()?;
        m.iter().find(|(k, _)| same_key(k, key)).map(|(_, v)| v)
    }
}

/// Key equality where `str` and `bin` with equal bytes match.
pub(crate) fn same_key(a: &Value, b: &Value) -> bool {
    match (a.as_bytes(), b.as_bytes()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Str(s.to_owned())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(s)
    }
}
impl From<&String> for Value {
    fn from(s: &String) -> Value {
        Value::Str(s.clone())
    }
}
impl From<&[u8]> for Value {
    fn from(b: &[u8]) -> Value {
        Value::Bin(b.to_vec())
    }
}
impl<const N: usize> From<&[u8; N]> for Value {
    fn from(b: &[u8; N]) -> Value {
        Value::Bin(b.to_vec())
    }
}
impl From<Vec<u8>> for Value {
    fn from(b: Vec<u8>) -> Value {
        Value::Bin(b)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Value {
        Value::F64(f)
    }
}
impl From<f32> for Value {
    fn from(f: f32) -> Value {
        Value::F32(f)
    }
}
impl From<()> for Value {
    fn from(_: ()) -> Value {
        Value::Nil
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(o: Option<T>) -> Value {
        o.map_or(Value::Nil, Into::into)
    }
}
impl From<Vec<Value>> for Value {
    fn from(a: Vec<Value>) -> Value {
        Value::Array(a)
    }
}
impl<K: Into<Value>, V: Into<Value>> From<BTreeMap<K, V>> for Value {
    fn from(m: BTreeMap<K, V>) -> Value {
        Value::Map(m.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}
impl<K: Into<Value>, V: Into<Value>> FromIterator<(K, V)> for Value {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Value {
        Value::Map(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}
impl<T: Into<Value>> FromIterator<T> for Value {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Value {
        Value::Array(iter.into_iter().map(Into::into).collect())
    }
}

impl TryFrom<Value> for String {
    type Error = ValueError;
    fn try_from(v: Value) -> Result<String, ValueError> {
        match v {
            Value::Str(s) => Ok(s),
            other => Err(ValueError::WrongType {
                expected: "str",
                found: other.kind(),
            }),
        }
    }
}
impl TryFrom<Value> for Vec<u8> {
    type Error = ValueError;
    fn try_from(v: Value) -> Result<Vec<u8>, ValueError> {
        match v {
            Value::Bin(b) => Ok(b),
            other => Err(ValueError::WrongType {
                expected: "bin",
                found: other.kind(),
            }),
        }
    }
}
impl TryFrom<Value> for bool {
    type Error = ValueError;
    fn try_from(v: Value) -> Result<bool, ValueError> {
        v.as_bool().ok_or(ValueError::WrongType {
            expected: "bool",
            found: v.kind(),
        })
    }
}
impl TryFrom<Value> for f64 {
    type Error = ValueError;
    fn try_from(v: Value) -> Result<f64, ValueError> {
        v.as_f64().ok_or(ValueError::WrongType {
            expected: "float",
            found: v.kind(),
        })
    }
}
impl TryFrom<Value> for Vec<Value> {
    type Error = ValueError;
    fn try_from(v: Value) -> Result<Vec<Value>, ValueError> {
        match v {
            Value::Array(a) => Ok(a),
            other => Err(ValueError::WrongType {
                expected: "array",
                found: other.kind(),
            }),
        }
    }
}

impl fmt::Display for Value {
    /// A compact, Python-like rendering (`b'..'` for bytes).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Nil => f.write_str("None"),
            Value::Bool(b) => f.write_str(if *b { "True" } else { "False" }),
            Value::Int(n) => write!(f, "{n}"),
            Value::F32(x) => write!(f, "{x}"),
            Value::F64(x) => write!(f, "{x}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Bin(b) => write!(f, "b{:?}", String::from_utf8_lossy(b)),
            Value::Array(a) => {
                f.write_str("[")?;
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
            Value::Map(m) => {
                f.write_str("{")?;
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k}: {v}")?;
                }
                f.write_str("}")
            }
        }
    }
}
