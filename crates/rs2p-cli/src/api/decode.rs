//! Reading requests: percent-encoding, query strings, keys in paths, JSON
//! bodies, glob patterns.

use super::*;

/// Percent-encodes bytes for a path segment or a query value: unreserved
/// characters stay, everything else is `%XX`.
pub fn percent_encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// Percent-decodes to bytes (`+` is a space when `plus` is set, as in
/// query strings).
pub fn percent_decode(s: &str, plus: bool) -> Result<Vec<u8>, String> {
    let raw = s.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'%' => {
                let hex = raw
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent-escape at offset {i}"))?;
                out.push(hex);
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// The query's parameters, decoded; unknown names are refused so that a
/// typo does not silently list everything.
pub(super) fn query(uri: &Uri, known: &[&str]) -> Result<Vec<(String, Vec<u8>)>, ApiError> {
    let mut out = Vec::new();
    for pair in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = String::from_utf8(percent_decode(name, true).map_err(ApiError::bad)?)
            .map_err(|_| ApiError::bad("a query parameter's name is not UTF-8"))?;
        if !known.contains(&name.as_str()) {
            return Err(ApiError::bad(format!(
                "unknown query parameter `{name}` (known: {})",
                known.join(", ")
            )));
        }
        out.push((name, percent_decode(value, true).map_err(ApiError::bad)?));
    }
    Ok(out)
}

pub(super) fn param<'a>(params: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    params
        .iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
}

/// The key of `/v1/kv/{key}` (and `/v1/kv/{key}/delta`), as bytes.
pub(super) fn path_key(uri: &Uri) -> Result<Vec<u8>, ApiError> {
    let rest = uri.path().strip_prefix("/v1/kv/").unwrap_or("");
    let seg = rest.strip_suffix("/delta").unwrap_or(rest);
    percent_decode(seg, false).map_err(|e| ApiError::bad(format!("key: {e}")))
}

/// Reads a JSON body of at most `--api-max-body` bytes.
pub(super) async fn read_json(
    st: &ApiState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Json, ApiError> {
    let max = st.limits.api_max_body;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is over {max} bytes (--api-max-body)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let bytes = match http_body_util::Limited::new(body, max).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) => return Err(ApiError::bad(format!("cannot read the body: {e}"))),
    };
    if bytes.is_empty() {
        return Err(ApiError::bad("the request needs a JSON body"));
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad(format!("the body is not JSON: {e}")))
}

/// A glob over bytes: `*` is any run, `?` any one byte, others match
/// themselves.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}
