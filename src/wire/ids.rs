//! Identifiers: the references' integer base58, protocol (subnet) ids and
//! node ids (PROTOCOL.md §3).

use sha2::{Digest, Sha256, Sha384};

/// The protocol version hashed into every protocol id.
pub const PROTOCOL_VERSION: &str = "0.7";

const ALPHABET: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// base58 of `bytes` read as one big-endian unsigned integer, as py2p and
/// js2p write it: no padding for leading zero bytes, zero is `"1"`.
///
/// ```
/// use rs2p::wire::ids::to_base58;
/// assert_eq!(to_base58(&[0]), "1");
/// assert_eq!(to_base58(&58u32.to_be_bytes()), "21");
/// assert_eq!(to_base58(&[0, 0, 1, 0]), "5R");
/// ```
pub fn to_base58(bytes: &[u8]) -> String {
    let mut num: Vec<u8> = bytes.iter().copied().skip_while(|&b| b == 0).collect();
    let mut digits = Vec::with_capacity(num.len() * 138 / 100 + 1);
    while !num.is_empty() {
        let mut rem = 0u32;
        let mut next = Vec::with_capacity(num.len());
        for &b in &num {
            let acc = (rem << 8) | u32::from(b);
            let q = acc / 58;
            rem = acc % 58;
            if !(next.is_empty() && q == 0) {
                next.push(q as u8);
            }
        }
        digits.push(ALPHABET[rem as usize]);
        num = next;
    }
    if digits.is_empty() {
        digits.push(b'1');
    }
    digits.reverse();
    // Only alphabet bytes were pushed.
    String::from_utf8(digits).unwrap_or_default()
}

/// Decodes base58 text into the minimal big-endian bytes of its integer
/// (empty for zero); `None` when a character is outside the alphabet.
///
/// ```
/// use rs2p::wire::ids::{from_base58, to_base58};
/// assert_eq!(from_base58("5R"), Some(vec![1, 0]));
/// assert_eq!(to_base58(&from_base58("jpXCZedGfVR").unwrap()), "jpXCZedGfVR");
/// assert_eq!(from_base58("0OIl"), None);
/// ```
pub fn from_base58(text: &str) -> Option<Vec<u8>> {
    let mut num: Vec<u8> = Vec::new(); // big-endian
    for c in text.bytes() {
        let d = ALPHABET.iter().position(|&a| a == c)? as u32;
        let mut carry = d;
        for b in num.iter_mut().rev() {
            let acc = u32::from(*b) * 58 + carry;
            *b = (acc & 0xff) as u8;
            carry = acc >> 8;
        }
        while carry > 0 {
            num.insert(0, (carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    Some(num)
}

/// Compares two base58 ids as the integers they encode (py2p's
/// connection-conflict rule). Text outside the alphabet sorts by bytes.
pub fn cmp_ids_numeric(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let parse = |x: &[u8]| std::str::from_utf8(x).ok().and_then(from_base58);
    match (parse(a), parse(b)) {
        (Some(x), Some(y)) => x.len().cmp(&y.len()).then_with(|| x.cmp(&y)),
        _ => a.cmp(b),
    }
}

/// The protocol (subnet) id: base58 of SHA-256 over `subnet`, `encryption`
/// and the protocol version, concatenated.
///
/// ```
/// assert_eq!(rs2p::wire::ids::protocol_id("mesh", "Plaintext"),
///            "EpAmyZWv9rZUKmjQgU3FTUD4GrJHvVEXizmghVBc8eGD");
/// ```
pub fn protocol_id(subnet: &str, encryption: &str) -> String {
    let mut h = Sha256::new();
    h.update(subnet.as_bytes());
    h.update(encryption.as_bytes());
    h.update(PROTOCOL_VERSION.as_bytes());
    to_base58(&h.finalize())
}

/// A node id the way py2p derives it: base58 of SHA-384 over the Python
/// repr of the outward address tuple, the protocol id and a salt.
///
/// ```
/// let id = rs2p::wire::ids::node_id_py2p("127.0.0.1", 44565,
///     "p7sAnBsK3n5enFXH7vEGQjzS6t6RH1CeEoYekNjr5Jn", "00000000-1111-4222-8333-444444444444");
/// assert_eq!(id, "4xD7wXvqR453LWpWstiAFVwB7yu1UeuAWcPdU7b5ofdMEnRc5pbHdWLKjrg15642JD");
/// ```
pub fn node_id_py2p(out_host: &str, out_port: u16, protocol_id: &str, salt: &str) -> String {
    node_id_of(&format!("('{out_host}', {out_port})"), protocol_id, salt)
}

/// A node id the way js2p derives it: over `(host, port)` of the *bind*
/// address without quotes.
pub fn node_id_js2p(bind_host: &str, bind_port: u16, protocol_id: &str, salt: &str) -> String {
    node_id_of(&format!("({bind_host}, {bind_port})"), protocol_id, salt)
}

fn node_id_of(addr_text: &str, protocol_id: &str, salt: &str) -> String {
    let mut h = Sha384::new();
    h.update(addr_text.as_bytes());
    h.update(protocol_id.as_bytes());
    h.update(salt.as_bytes());
    to_base58(&h.finalize())
}

/// A random v4-uuid-shaped salt, as py2p's `str(uuid4())`, from the OS's
/// generator (feature `net`; without it, draw 16 bytes yourself and use
/// [`salt_from_bytes`]).
#[cfg(feature = "net")]
pub fn random_salt() -> String {
    salt_from_bytes(rand::random())
}

/// The v4-uuid-shaped salt made of these 16 random bytes (the version and
/// variant bits are set, as a uuid4 has them).
///
/// ```
/// let s = rs2p::wire::ids::salt_from_bytes([0xff; 16]);
/// assert_eq!(s, "ffffffff-ffff-4fff-bfff-ffffffffffff");
/// ```
pub fn salt_from_bytes(b: [u8; 16]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-{:x}{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        8 | (b[8] & 3),
        &hex[17..20],
        &hex[20..32]
    )
}
