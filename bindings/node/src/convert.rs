//! JavaScript values to rs2p [`Value`]s and back, as js2p 0.7 (msgpack-lite)
//! maps them.
//!
//! | msgpack | JavaScript |
//! |---|---|
//! | nil | `null` (`undefined` goes out as nil too) |
//! | bool | boolean |
//! | int, float | number (integers beyond 2^53 lose precision, as in js2p); a safe integer goes out as int, any other number as float64; a BigInt goes out as int |
//! | str | string |
//! | bin | `Buffer` (any `Uint8Array`, typed array or `ArrayBuffer` goes out as bin) |
//! | array | `Array` |
//! | map | plain object; keys become strings (bin keys as UTF-8, lossy; other keys as their rendering); a `__proto__` key becomes an own property |
//!
//! Values coming from the network are at most as deep as the library's
//! decoding limit; values going out may be at most [`MAX_DEPTH`] deep (so a
//! cyclic object is refused instead of recursing forever).

use std::ffi::c_void;
use std::ptr;

use napi::bindgen_prelude::{FromNapiValue, ToNapiValue, TypeName, ValidateNapiValue};
use napi::{sys, Error, Result, Status, ValueType};
use rs2p::{Integer, Value};

/// Deepest nesting accepted from JavaScript (the library's decoder allows
/// 64 levels; a value sent must be decodable by peers).
pub const MAX_DEPTH: usize = 64;

/// Largest integer a JavaScript number holds exactly (2^53 - 1).
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

fn check(status: sys::napi_status, what: &str) -> Result<()> {
    if status == sys::Status::napi_ok {
        Ok(())
    } else {
        Err(Error::new(
            Status::from(status),
            format!("{what} failed ({})", Status::from(status)),
        ))
    }
}

fn type_error(msg: impl Into<String>) -> Error {
    Error::new(Status::InvalidArg, msg.into())
}

/// A value crossing the boundary, either way.
#[derive(Debug, Clone, PartialEq)]
pub struct Js(pub Value);

/// A dictionary key: a string (its UTF-8 bytes) or bytes (`Buffer`, typed
/// array, `ArrayBuffer`). Goes back to JavaScript as a `Buffer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

unsafe fn type_of(env: sys::napi_env, v: sys::napi_value) -> Result<sys::napi_valuetype> {
    let mut t = 0;
    check(unsafe { sys::napi_typeof(env, v, &mut t) }, "napi_typeof")?;
    Ok(t)
}

unsafe fn get_string(env: sys::napi_env, v: sys::napi_value) -> Result<String> {
    let mut len = 0usize;
    check(
        unsafe { sys::napi_get_value_string_utf8(env, v, ptr::null_mut(), 0, &mut len) },
        "reading a string",
    )?;
    let mut buf = vec![0u8; len + 1];
    let mut written = 0usize;
    check(
        unsafe {
            sys::napi_get_value_string_utf8(
                env,
                v,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut written,
            )
        },
        "reading a string",
    )?;
    buf.truncate(written);
    // N-API writes valid UTF-8 (lone surrogates become U+FFFD).
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The bytes of a Buffer, typed array or ArrayBuffer; `None` for any other
/// value.
unsafe fn get_bytes(env: sys::napi_env, v: sys::napi_value) -> Result<Option<Vec<u8>>> {
    let mut is = false;
    check(
        unsafe { sys::napi_is_typedarray(env, v, &mut is) },
        "napi_is_typedarray",
    )?;
    if is {
        let mut kind = 0;
        let mut len = 0usize;
        let mut data: *mut c_void = ptr::null_mut();
        let mut buffer = ptr::null_mut();
        let mut offset = 0usize;
        check(
            unsafe {
                sys::napi_get_typedarray_info(
                    env,
                    v,
                    &mut kind,
                    &mut len,
                    &mut data,
                    &mut buffer,
                    &mut offset,
                )
            },
            "reading a typed array",
        )?;
        let width = match kind {
            sys::TypedarrayType::int16_array | sys::TypedarrayType::uint16_array => 2,
            sys::TypedarrayType::int32_array
            | sys::TypedarrayType::uint32_array
            | sys::TypedarrayType::float32_array => 4,
            sys::TypedarrayType::float64_array
            | sys::TypedarrayType::bigint64_array
            | sys::TypedarrayType::biguint64_array => 8,
            _ => 1,
        };
        return Ok(Some(unsafe { copy_bytes(data, len.saturating_mul(width)) }));
    }
    check(
        unsafe { sys::napi_is_buffer(env, v, &mut is) },
        "napi_is_buffer",
    )?;
    if is {
        let mut data: *mut c_void = ptr::null_mut();
        let mut len = 0usize;
        check(
            unsafe { sys::napi_get_buffer_info(env, v, &mut data, &mut len) },
            "reading a Buffer",
        )?;
        return Ok(Some(unsafe { copy_bytes(data, len) }));
    }
    check(
        unsafe { sys::napi_is_arraybuffer(env, v, &mut is) },
        "napi_is_arraybuffer",
    )?;
    if is {
        let mut data: *mut c_void = ptr::null_mut();
        let mut len = 0usize;
        check(
            unsafe { sys::napi_get_arraybuffer_info(env, v, &mut data, &mut len) },
            "reading an ArrayBuffer",
        )?;
        return Ok(Some(unsafe { copy_bytes(data, len) }));
    }
    Ok(None)
}

unsafe fn copy_bytes(data: *const c_void, len: usize) -> Vec<u8> {
    if data.is_null() || len == 0 {
        return Vec::new();
    }
    unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) }.to_vec()
}

/// A JavaScript number as msgpack: a safe integer is an int, anything else
/// a float64.
pub fn number_value(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() <= MAX_SAFE_INTEGER {
        Value::Int(Integer::from(f as i64))
    } else {
        Value::F64(f)
    }
}

unsafe fn bigint_value(env: sys::napi_env, v: sys::napi_value) -> Result<Value> {
    let mut sign = 0;
    let mut count = 0usize;
    check(
        unsafe { sys::napi_get_value_bigint_words(env, v, &mut sign, &mut count, ptr::null_mut()) },
        "reading a BigInt",
    )?;
    if count > 2 {
        return Err(type_error("a BigInt beyond 64 bits cannot be sent"));
    }
    let mut words = [0u64; 2];
    let mut count = 2usize;
    check(
        unsafe {
            sys::napi_get_value_bigint_words(env, v, &mut sign, &mut count, words.as_mut_ptr())
        },
        "reading a BigInt",
    )?;
    let magnitude = i128::from(words[0]) | (i128::from(words[1]) << 64);
    let n = if sign != 0 { -magnitude } else { magnitude };
    Integer::from_i128(n)
        .map(Value::Int)
        .ok_or_else(|| type_error(format!("the BigInt {n} does not fit a msgpack integer")))
}

/// Reads a JavaScript value.
///
/// # Safety
///
/// `env` and `v` must be a live environment and a value of it, on its
/// thread.
pub unsafe fn from_js(env: sys::napi_env, v: sys::napi_value, depth: usize) -> Result<Value> {
    if depth > MAX_DEPTH {
        return Err(type_error(format!(
            "value nested deeper than {MAX_DEPTH} levels (or cyclic)"
        )));
    }
    match unsafe { type_of(env, v) }? {
        sys::ValueType::napi_undefined | sys::ValueType::napi_null => Ok(Value::Nil),
        sys::ValueType::napi_boolean => {
            let mut b = false;
            check(
                unsafe { sys::napi_get_value_bool(env, v, &mut b) },
                "reading a boolean",
            )?;
            Ok(Value::Bool(b))
        }
        sys::ValueType::napi_number => {
            let mut f = 0.0;
            check(
                unsafe { sys::napi_get_value_double(env, v, &mut f) },
                "reading a number",
            )?;
            Ok(number_value(f))
        }
        sys::ValueType::napi_string => Ok(Value::Str(unsafe { get_string(env, v) }?)),
        sys::ValueType::napi_bigint => unsafe { bigint_value(env, v) },
        sys::ValueType::napi_object => {
            if let Some(b) = unsafe { get_bytes(env, v) }? {
                return Ok(Value::Bin(b));
            }
            let mut is_array = false;
            check(
                unsafe { sys::napi_is_array(env, v, &mut is_array) },
                "napi_is_array",
            )?;
            if is_array {
                let mut len = 0u32;
                check(
                    unsafe { sys::napi_get_array_length(env, v, &mut len) },
                    "reading an array",
                )?;
                let mut out = Vec::with_capacity(len.min(1 << 16) as usize);
                for i in 0..len {
                    let mut e = ptr::null_mut();
                    check(
                        unsafe { sys::napi_get_element(env, v, i, &mut e) },
                        "reading an array",
                    )?;
                    out.push(unsafe { from_js(env, e, depth + 1) }?);
                }
                return Ok(Value::Array(out));
            }
            let mut names = ptr::null_mut();
            check(
                unsafe {
                    sys::napi_get_all_property_names(
                        env,
                        v,
                        sys::KeyCollectionMode::own_only,
                        sys::KeyFilter::enumerable | sys::KeyFilter::skip_symbols,
                        sys::KeyConversion::numbers_to_strings,
                        &mut names,
                    )
                },
                "reading an object's keys",
            )?;
            let mut len = 0u32;
            check(
                unsafe { sys::napi_get_array_length(env, names, &mut len) },
                "reading an object's keys",
            )?;
            let mut out = Vec::with_capacity(len.min(1 << 16) as usize);
            for i in 0..len {
                let mut k = ptr::null_mut();
                check(
                    unsafe { sys::napi_get_element(env, names, i, &mut k) },
                    "reading an object's keys",
                )?;
                let mut e = ptr::null_mut();
                check(
                    unsafe { sys::napi_get_property(env, v, k, &mut e) },
                    "reading an object's property",
                )?;
                let key = unsafe { get_string(env, k) }?;
                out.push((Value::Str(key), unsafe { from_js(env, e, depth + 1) }?));
            }
            Ok(Value::Map(out))
        }
        sys::ValueType::napi_function => Err(type_error("a function cannot be sent")),
        sys::ValueType::napi_symbol => Err(type_error("a symbol cannot be sent")),
        _ => Err(type_error("this kind of value cannot be sent")),
    }
}

/// Reads a key: a string or bytes.
///
/// # Safety
///
/// As [`from_js`].
pub unsafe fn key_from_js(env: sys::napi_env, v: sys::napi_value) -> Result<Vec<u8>> {
    match unsafe { type_of(env, v) }? {
        sys::ValueType::napi_string => Ok(unsafe { get_string(env, v) }?.into_bytes()),
        sys::ValueType::napi_object => match unsafe { get_bytes(env, v) }? {
            Some(b) => Ok(b),
            None => Err(type_error("a key must be a string or a Buffer")),
        },
        _ => Err(type_error("a key must be a string or a Buffer")),
    }
}

unsafe fn create_string(env: sys::napi_env, s: &str) -> Result<sys::napi_value> {
    let mut out = ptr::null_mut();
    check(
        unsafe { sys::napi_create_string_utf8(env, s.as_ptr().cast(), s.len() as isize, &mut out) },
        "creating a string",
    )?;
    Ok(out)
}

/// A new `Buffer` holding a copy of `b`.
///
/// # Safety
///
/// As [`from_js`].
pub unsafe fn create_buffer(env: sys::napi_env, b: &[u8]) -> Result<sys::napi_value> {
    let mut out = ptr::null_mut();
    let mut data: *mut c_void = ptr::null_mut();
    check(
        unsafe {
            sys::napi_create_buffer_copy(env, b.len(), b.as_ptr().cast(), &mut data, &mut out)
        },
        "creating a Buffer",
    )?;
    Ok(out)
}

unsafe fn create_double(env: sys::napi_env, f: f64) -> Result<sys::napi_value> {
    let mut out = ptr::null_mut();
    check(
        unsafe { sys::napi_create_double(env, f, &mut out) },
        "creating a number",
    )?;
    Ok(out)
}

/// A map key as the property name js2p's msgpack-lite would use.
fn property_name(k: &Value) -> String {
    match k {
        Value::Str(s) => s.clone(),
        Value::Bin(b) => String::from_utf8_lossy(b).into_owned(),
        Value::Nil => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Int(n) => n.to_string(),
        Value::F32(f) => f.to_string(),
        Value::F64(f) => f.to_string(),
        other => other.to_string(),
    }
}

/// Creates the JavaScript form of a value.
///
/// # Safety
///
/// As [`from_js`].
pub unsafe fn to_js(env: sys::napi_env, v: &Value) -> Result<sys::napi_value> {
    let mut out = ptr::null_mut();
    match v {
        Value::Nil => check(
            unsafe { sys::napi_get_null(env, &mut out) },
            "creating null",
        )?,
        Value::Bool(b) => check(
            unsafe { sys::napi_get_boolean(env, *b, &mut out) },
            "creating a boolean",
        )?,
        Value::Int(n) => out = unsafe { create_double(env, n.as_i128() as f64) }?,
        Value::F32(f) => out = unsafe { create_double(env, f64::from(*f)) }?,
        Value::F64(f) => out = unsafe { create_double(env, *f) }?,
        Value::Str(s) => out = unsafe { create_string(env, s) }?,
        Value::Bin(b) => out = unsafe { create_buffer(env, b) }?,
        Value::Array(items) => {
            check(
                unsafe { sys::napi_create_array_with_length(env, items.len(), &mut out) },
                "creating an array",
            )?;
            for (i, item) in items.iter().enumerate() {
                let e = unsafe { to_js(env, item) }?;
                let index = u32::try_from(i).map_err(|_| type_error("array too long"))?;
                check(
                    unsafe { sys::napi_set_element(env, out, index, e) },
                    "filling an array",
                )?;
            }
        }
        Value::Map(entries) => {
            check(
                unsafe { sys::napi_create_object(env, &mut out) },
                "creating an object",
            )?;
            for (k, item) in entries {
                let name = property_name(k);
                let e = unsafe { to_js(env, item) }?;
                if name == "__proto__" {
                    // An assignment would replace the object's prototype.
                    let desc = sys::napi_property_descriptor {
                        utf8name: c"__proto__".as_ptr(),
                        name: ptr::null_mut(),
                        method: None,
                        getter: None,
                        setter: None,
                        value: e,
                        attributes: sys::PropertyAttributes::writable
                            | sys::PropertyAttributes::enumerable
                            | sys::PropertyAttributes::configurable,
                        data: ptr::null_mut(),
                    };
                    check(
                        unsafe { sys::napi_define_properties(env, out, 1, &desc) },
                        "filling an object",
                    )?;
                } else {
                    let key = unsafe { create_string(env, &name) }?;
                    check(
                        unsafe { sys::napi_set_property(env, out, key, e) },
                        "filling an object",
                    )?;
                }
            }
        }
    }
    Ok(out)
}

impl FromNapiValue for Js {
    unsafe fn from_napi_value(env: sys::napi_env, v: sys::napi_value) -> Result<Self> {
        Ok(Js(unsafe { from_js(env, v, 0) }?))
    }
}

impl ToNapiValue for Js {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> Result<sys::napi_value> {
        unsafe { to_js(env, &val.0) }
    }
}

impl TypeName for Js {
    fn type_name() -> &'static str {
        "any"
    }
    fn value_type() -> ValueType {
        ValueType::Unknown
    }
}

impl ValidateNapiValue for Js {}

impl FromNapiValue for Bytes {
    unsafe fn from_napi_value(env: sys::napi_env, v: sys::napi_value) -> Result<Self> {
        Ok(Bytes(unsafe { key_from_js(env, v) }?))
    }
}

impl ToNapiValue for Bytes {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> Result<sys::napi_value> {
        unsafe { create_buffer(env, &val.0) }
    }
}

impl TypeName for Bytes {
    fn type_name() -> &'static str {
        "string | Buffer"
    }
    fn value_type() -> ValueType {
        ValueType::Unknown
    }
}

impl ValidateNapiValue for Bytes {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_as_js2p_sends_them() {
        assert_eq!(number_value(256.0), Value::from(256));
        assert_eq!(number_value(-3.0), Value::from(-3));
        assert_eq!(number_value(1.5), Value::F64(1.5));
        assert_eq!(number_value(1e300), Value::F64(1e300));
        assert_eq!(
            number_value(MAX_SAFE_INTEGER),
            Value::from(9_007_199_254_740_991i64)
        );
        assert!(matches!(number_value(f64::NAN), Value::F64(f) if f.is_nan()));
        assert_eq!(number_value(f64::INFINITY), Value::F64(f64::INFINITY));
    }

    #[test]
    fn map_keys_become_property_names() {
        assert_eq!(property_name(&Value::from("a")), "a");
        assert_eq!(property_name(&Value::from(&b"\xff"[..])), "\u{fffd}");
        assert_eq!(property_name(&Value::from(7)), "7");
        assert_eq!(property_name(&Value::Nil), "null");
        assert_eq!(property_name(&Value::from(true)), "true");
    }
}
