//! The rs2p protocol core as a WebAssembly module: a p2p-today 0.7 sync
//! node for browsers (and Node), wire-compatible with py2p and js2p.
//!
//! [`Core`] is a [`rs2p::proto::Node`] with a
//! [`Replica`] and the work a shell does
//! around it: frames are split off the WebSocket byte stream with
//! [`rs2p::wire::next_frame`], outputs are carried out through a [`Host`]
//! (send bytes, open or close a WebSocket, arm the timer), and dictionary
//! changes and routing events are handed back to JavaScript as a list of
//! events after each call. Every protocol rule runs here; the JavaScript
//! shell (`js/shell.js`) only owns the WebSockets, the timer, the clock and
//! the random bytes, and gives it js2p's browser API
//! (`rs2p.sync.SyncSocket`).
//!
//! Nothing received from the network can panic this module: frames are
//! bounded and decoded by the core, which refuses what it cannot read, and
//! the glue here indexes nothing and unwraps nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use js_sys::{Array, Object, Uint8Array};
use rs2p::proto::dict::Dict;
use rs2p::proto::mesh::Settings;
use rs2p::proto::replica::{Change, Pump, Replica, Room};
use rs2p::proto::{ConnId, Event, Node, Now, Output, PeerKind};
use rs2p::wire::{ids, next_frame};
use rs2p::{DecodeError, Error, Value};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

/// Bytes a WebSocket may hold unsent (`bufferedAmount`) before its peer is
/// dropped as too slow; state transfers keep to a quarter of it.
const MAX_QUEUED: usize = 64 << 20;
/// How often state transfers are moved along while some are left.
const PUMP_MS: f64 = 10.0;
/// The largest frame read past instead of closing the connection (as the
/// tokio shell does).
const MAX_SKIPPED_FRAME: u64 = 1 << 30;
/// Deepest JavaScript value taken for a write (the core refuses deeper
/// values anyway; this bounds the conversion of cyclic objects).
const MAX_JS_DEPTH: usize = 64;

#[wasm_bindgen]
extern "C" {
    /// What the JavaScript shell provides. None of its methods may throw,
    /// and none calls back into the [`Core`] before returning.
    pub type Host;

    /// Writes bytes (whole frames) on the WebSocket of `conn`.
    #[wasm_bindgen(method)]
    fn send(this: &Host, conn: f64, bytes: &[u8]);

    /// Opens a WebSocket to `ws://host:port/` for `conn`; the shell calls
    /// [`Core::opened`] or [`Core::failed`] later.
    #[wasm_bindgen(method)]
    fn dial(this: &Host, conn: f64, host: &str, port: u16);

    /// Closes the WebSocket of `conn` (the core has forgotten it).
    #[wasm_bindgen(method)]
    fn close(this: &Host, conn: f64);

    /// Bytes the WebSocket of `conn` holds unsent, or a negative number
    /// when there is no such WebSocket.
    #[wasm_bindgen(method)]
    fn queued(this: &Host, conn: f64) -> f64;

    /// Arms the one timer to call [`Core::timeout`] in `delay` ms
    /// (replacing the one armed), or disarms it when `delay` is negative.
    #[wasm_bindgen(method)]
    fn timer(this: &Host, delay: f64);

    /// Milliseconds on a monotonic clock (`performance.now()`).
    #[wasm_bindgen(method)]
    fn now(this: &Host) -> f64;
}

/// The read side of one connection: bytes not yet split into frames.
#[derive(Default)]
struct Reader {
    buf: BytesMut,
    /// Bytes of an oversized frame still to read past.
    skip: usize,
    frames: u64,
}

/// A sync node: the protocol core and what a shell keeps around it.
#[wasm_bindgen]
pub struct Core {
    node: Node,
    dict: Arc<Mutex<Dict>>,
    host: Host,
    readers: HashMap<ConnId, Reader>,
    /// The time the armed timer is due at (ms, the host's clock).
    armed: Option<f64>,
    /// State transfers are under way.
    pumping: bool,
    leasing: bool,
    protocol_id: String,
    /// Events for JavaScript, handed over at the end of each call.
    events: Array,
}

struct JsRoom<'a>(&'a Host);

impl Room for JsRoom<'_> {
    fn queued(&self, conn: ConnId) -> Option<(usize, usize)> {
        let q = self.0.queued(conn as f64);
        (q >= 0.0).then_some((q as usize, MAX_QUEUED))
    }
}

fn js_error(e: &Error) -> JsValue {
    let err = js_sys::Error::new(&e.to_string());
    err.set_name(match e {
        Error::LeaseHeld { .. } => "LeaseError",
        Error::KeyNotFound(_) => "KeyError",
        _ => "Rs2pError",
    });
    let _ = js_sys::Reflect::set(&err, &"kind".into(), &e.kind().into());
    err.into()
}

fn type_error(msg: &str) -> JsValue {
    js_sys::TypeError::new(msg).into()
}

#[wasm_bindgen]
impl Core {
    /// A sync node on `subnet` (the base subnet: `1` or `0` is appended for
    /// leasing on or off, as js2p and py2p do) over `transport` (`ws`).
    /// `random` holds at least 56 random bytes (crypto.getRandomValues):
    /// the seed of the core's generator and the node id.
    #[wasm_bindgen(constructor)]
    pub fn new(
        subnet: &str,
        transport: &str,
        leasing: bool,
        random: &[u8],
        host: Host,
    ) -> Result<Core, JsValue> {
        let (Some(seed), Some(id)) = (random.get(..8), random.get(8..56)) else {
            return Err(type_error("rs2p: 56 random bytes are needed"));
        };
        let mut seed8 = [0u8; 8];
        seed8.copy_from_slice(seed);
        let subnet = format!("{subnet}{}", if leasing { 1 } else { 0 });
        let protocol_id = ids::protocol_id(&subnet, transport);
        // A browser cannot listen: no address (the empty host advertises
        // nil). Its id is 48 random bytes in base58, the shape of py2p's
        // and js2p's (base58 of a SHA-384 over their address and a random
        // salt).
        let id = ids::to_base58(id);
        let mut settings = Settings::new(id.into_bytes(), &subnet, ("", 0));
        settings.protocol_id = protocol_id.clone().into_bytes();
        let dict = Arc::new(Mutex::new(Dict::default()));
        let replica = Replica::new(dict.clone(), leasing);
        Ok(Core {
            node: Node::new(settings, Some(replica), u64::from_le_bytes(seed8)),
            dict,
            host,
            readers: HashMap::new(),
            armed: None,
            pumping: false,
            leasing,
            protocol_id,
            events: Array::new(),
        })
    }

    /// This node's id.
    #[wasm_bindgen(getter)]
    pub fn id(&self) -> String {
        String::from_utf8_lossy(self.node.id()).into_owned()
    }

    /// The protocol (subnet) id.
    #[wasm_bindgen(getter, js_name = protocolId)]
    pub fn protocol_id(&self) -> String {
        self.protocol_id.clone()
    }

    /// True when leases are enforced.
    #[wasm_bindgen(getter)]
    pub fn leasing(&self) -> bool {
        self.leasing
    }

    fn now(&self) -> Now {
        let ms = self.host.now();
        let elapsed = Duration::try_from_secs_f64(ms / 1000.0).unwrap_or(Duration::ZERO);
        Now {
            elapsed,
            unix: (js_sys::Date::now() / 1000.0).floor() as i64,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Dict> {
        self.dict.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ----- inputs from the shell -----

    /// Dials `ws://host:port/` (the host's `dial` follows). Returns the
    /// events.
    pub fn connect(&mut self, host: &str, port: u16) -> Result<Array, JsValue> {
        let now = self.now();
        self.node
            .connect(host, port, now)
            .map_err(|e| js_error(&e))?;
        Ok(self.finish())
    }

    /// The WebSocket of `conn` opened.
    pub fn opened(&mut self, conn: f64) -> Array {
        let now = self.now();
        self.node.handle_ready(conn as ConnId, now);
        self.finish()
    }

    /// The WebSocket of `conn` failed before it opened.
    pub fn failed(&mut self, conn: f64) -> Array {
        let conn = conn as ConnId;
        self.readers.remove(&conn);
        self.node.handle_failed(conn);
        self.finish()
    }

    /// The WebSocket of `conn` closed.
    pub fn closed(&mut self, conn: f64, reason: &str) -> Array {
        let conn = conn as ConnId;
        if self.readers.remove(&conn).is_some() {
            let now = self.now();
            self.node.handle_closed(conn, reason, now);
        }
        self.finish()
    }

    /// Bytes arrived on `conn` (one WebSocket message): frames are split
    /// off and handed to the core.
    pub fn received(&mut self, conn: f64, bytes: &[u8]) -> Array {
        let conn = conn as ConnId;
        let Some(mut reader) = self.readers.remove(&conn) else {
            return self.finish();
        };
        reader.buf.extend_from_slice(bytes);
        let limits = self.node.mesh().settings().limits.clone();
        let error = loop {
            if !self.node.mesh().has_conn(conn) {
                // The core dropped it (and the host closed it).
                return self.finish();
            }
            if reader.skip > 0 {
                let n = reader.skip.min(reader.buf.len());
                reader.buf.advance(n);
                reader.skip -= n;
                if reader.skip > 0 {
                    break None;
                }
            }
            match next_frame(&mut reader.buf, &limits) {
                Ok(Some(body)) => {
                    reader.frames += 1;
                    let now = self.now();
                    self.node.handle_frame(conn, body, &JsRoom(&self.host), now);
                    self.carry_out();
                    self.pumping = true;
                }
                Ok(None) => break None,
                // As the tokio shell: once the peer has sent a frame, a
                // frame over the limit is read past and the link kept.
                Err(error @ DecodeError::FrameTooLarge { len, .. })
                    if reader.frames > 0 && len <= MAX_SKIPPED_FRAME =>
                {
                    reader.buf.advance(4);
                    reader.skip = usize::try_from(len).unwrap_or(usize::MAX);
                    self.node.frame_skipped(conn, &error);
                }
                Err(e) => break Some(e.to_string()),
            }
        };
        match error {
            Some(reason) => {
                let now = self.now();
                self.node.handle_closed(conn, &reason, now);
                self.host.close(conn as f64);
            }
            None => {
                self.readers.insert(conn, reader);
            }
        }
        self.finish()
    }

    /// The timer armed through the host fired.
    pub fn timeout(&mut self) -> Array {
        self.armed = None;
        let now = self.now();
        let due = self.node.poll_timeout().is_some_and(|d| d <= now.elapsed);
        if due {
            self.node.handle_timeout(now);
        }
        self.finish()
    }

    // ----- the dictionary -----

    /// The value at `key`, or `undefined`.
    pub fn get(&self, key: JsValue) -> Result<JsValue, JsValue> {
        let key = key_bytes(&key)?;
        Ok(self
            .lock()
            .get(&key)
            .map_or(JsValue::UNDEFINED, |v| to_js(&v)))
    }

    /// True when `key` holds a value.
    pub fn has(&self, key: JsValue) -> Result<bool, JsValue> {
        let key = key_bytes(&key)?;
        Ok(self.lock().meta(&key).is_some())
    }

    /// `{owner, timestamp}` of the value at `key`, or `undefined`.
    pub fn meta(&self, key: JsValue) -> Result<JsValue, JsValue> {
        let key = key_bytes(&key)?;
        Ok(self
            .lock()
            .meta(&key)
            .map_or(JsValue::UNDEFINED, |m| meta_js(&m.owner, m.timestamp)))
    }

    /// Sets `key` (`null` deletes it) and broadcasts the write. Fails with
    /// a `LeaseError` when another node holds the key's lease. Returns the
    /// events.
    pub fn set(&mut self, key: JsValue, value: JsValue) -> Result<Array, JsValue> {
        let key = key_bytes(&key)?;
        let value = from_js(&value, 0).map_err(|e| type_error(&e))?;
        let now = self.now();
        let res = self.node.set(key, value, now);
        let events = self.finish();
        res.map_err(|e| js_error(&e))?;
        Ok(events)
    }

    /// Deletes `key`; a `KeyError` when it holds nothing.
    pub fn del(&mut self, key: JsValue) -> Result<Array, JsValue> {
        let bytes = key_bytes(&key)?;
        if self.lock().meta(&bytes).is_none() {
            let e = Error::KeyNotFound(String::from_utf8_lossy(&bytes).into_owned());
            return Err(js_error(&e));
        }
        self.set(key, JsValue::NULL)
    }

    /// Merges the map `delta` into the map at `key` and broadcasts the
    /// delta. Returns the events.
    #[wasm_bindgen(js_name = applyDelta)]
    pub fn apply_delta(&mut self, key: JsValue, delta: JsValue) -> Result<Array, JsValue> {
        let key = key_bytes(&key)?;
        let entries = match from_js(&delta, 0).map_err(|e| type_error(&e))? {
            Value::Map(entries) => entries,
            other => {
                return Err(type_error(&format!(
                    "a delta is a mapping, not {}",
                    other.kind()
                )))
            }
        };
        let now = self.now();
        let res = self.node.apply_delta(key, entries, now);
        let events = self.finish();
        res.map_err(|e| js_error(&e))?;
        Ok(events)
    }

    /// The keys, in insertion order (text when they are UTF-8, else
    /// `Uint8Array`).
    pub fn keys(&self) -> Array {
        self.lock().keys().map(key_js).collect()
    }

    /// The number of keys.
    #[wasm_bindgen(getter)]
    pub fn size(&self) -> usize {
        self.lock().len()
    }

    // ----- the mesh -----

    /// The handshaken peers: `[{id, addr, outgoing, kind}]`, `addr` being
    /// `[host, port]` or `null`, `kind` one of `py2p`, `js2p`, `rs2p`.
    pub fn peers(&self) -> Array {
        self.node
            .peers()
            .into_iter()
            .map(|p| {
                let addr: JsValue = match &p.addr {
                    Some((h, port)) => Array::of2(&h.as_str().into(), &JsValue::from(*port)).into(),
                    None => JsValue::NULL,
                };
                let kind = match p.kind {
                    PeerKind::Py => "py2p",
                    PeerKind::Js => "js2p",
                    PeerKind::Rs => "rs2p",
                    PeerKind::Unknown => "unknown",
                };
                object(&[
                    ("id", p.id.as_str().into()),
                    ("addr", addr),
                    ("outgoing", p.outgoing.into()),
                    ("kind", kind.into()),
                ])
            })
            .collect()
    }

    /// Counters: `{peers, connections, badFrames, framesSkipped,
    /// lastError}`.
    pub fn stats(&self) -> JsValue {
        let s = self.node.stats();
        object(&[
            ("peers", (s.peers as f64).into()),
            ("connections", (s.connections as f64).into()),
            ("badFrames", (s.bad_frames as f64).into()),
            ("framesSkipped", (s.frames_skipped as f64).into()),
            (
                "lastError",
                s.last_error.map_or(JsValue::NULL, |e| e.into()),
            ),
        ])
    }
}

impl Core {
    /// Carries out the outputs, moves state transfers along, re-arms the
    /// timer, and hands over the events.
    fn finish(&mut self) -> Array {
        self.carry_out();
        if self.pumping {
            let now = self.now();
            self.pumping = self.node.pump(&JsRoom(&self.host), now) != Pump::Done;
            self.carry_out();
        }
        self.rearm();
        std::mem::replace(&mut self.events, Array::new())
    }

    fn rearm(&mut self) {
        let now = self.host.now();
        let mut due = self.node.poll_timeout().map(|d| d.as_secs_f64() * 1000.0);
        if self.pumping {
            let pump = now + PUMP_MS;
            due = Some(due.map_or(pump, |d| d.min(pump)));
        }
        if due == self.armed {
            return;
        }
        self.armed = due;
        match due {
            Some(d) => self.host.timer((d - now).max(0.0)),
            None => self.host.timer(-1.0),
        }
    }

    fn event(&self, name: &str, args: &[JsValue]) {
        let ev = Array::new();
        ev.push(&name.into());
        for a in args {
            ev.push(a);
        }
        self.events.push(&ev);
    }

    fn carry_out(&mut self) {
        while let Some(out) = self.node.poll_output() {
            match out {
                Output::Transmit { conn, bytes } => {
                    let q = self.host.queued(conn as f64);
                    if q < 0.0 {
                        continue;
                    }
                    if q as usize + bytes.len() > MAX_QUEUED {
                        let now = self.now();
                        self.node.handle_slow(conn, now);
                        continue;
                    }
                    self.host.send(conn as f64, &bytes);
                }
                Output::Dial { conn, host, port } => {
                    self.readers.insert(conn, Reader::default());
                    self.host.dial(conn as f64, &host, port);
                }
                Output::Close { conn } => {
                    self.readers.remove(&conn);
                    self.host.close(conn as f64);
                }
                Output::Event(Event::Connected) => self.event("connect", &[]),
                Output::Event(Event::PeerJoined { id, addr }) => {
                    let addr: JsValue = match addr {
                        Some((h, p)) => Array::of2(&h.into(), &p.into()).into(),
                        None => JsValue::NULL,
                    };
                    self.event("peer", &[key_js(&id), addr]);
                }
                Output::Event(Event::PeerLeft { id }) => {
                    self.event("peer_left", &[key_js(&id)]);
                }
                Output::Sync(Change::Set {
                    key, value, meta, ..
                }) => {
                    let m = meta_js(&meta.owner, meta.timestamp);
                    self.event("update", &[key_js(&key), to_js(&value), m]);
                }
                Output::Sync(Change::Deleted { key, .. }) => {
                    self.event("delete", &[key_js(&key)]);
                }
                _ => {}
            }
        }
    }
}

/// The protocol (subnet) id of `subnet` over `transport`, as js2p's
/// `Protocol(subnet, transport).id`.
#[wasm_bindgen(js_name = protocolId)]
pub fn protocol_id(subnet: &str, transport: &str) -> String {
    ids::protocol_id(subnet, transport)
}

// ----- values between JavaScript and msgpack -----

fn object(fields: &[(&str, JsValue)]) -> JsValue {
    let pairs: Array = fields
        .iter()
        .map(|(k, v)| Array::of2(&JsValue::from(*k), v))
        .collect();
    Object::from_entries(&pairs).map_or(JsValue::NULL, Into::into)
}

fn meta_js(owner: &[u8], timestamp: i64) -> JsValue {
    object(&[
        ("owner", String::from_utf8_lossy(owner).as_ref().into()),
        ("timestamp", (timestamp as f64).into()),
    ])
}

/// A key as JavaScript sees it: text when it is UTF-8, else bytes.
fn key_js(key: &[u8]) -> JsValue {
    match std::str::from_utf8(key) {
        Ok(s) => s.into(),
        Err(_) => Uint8Array::from(key).into(),
    }
}

fn key_bytes(key: &JsValue) -> Result<Vec<u8>, JsValue> {
    if let Some(s) = key.as_string() {
        return Ok(s.into_bytes());
    }
    if let Some(b) = key.dyn_ref::<Uint8Array>() {
        return Ok(b.to_vec());
    }
    Err(type_error("rs2p: a key is a string or a Uint8Array"))
}

/// The largest integer a JavaScript number holds exactly.
const MAX_SAFE: i64 = (1 << 53) - 1;

/// A msgpack value as JavaScript sees it: `null`, booleans, numbers
/// (integers beyond 2^53 as `BigInt`), strings, `Uint8Array`, arrays, and
/// maps as plain objects when every key is a string (else `Map`).
pub fn to_js(v: &Value) -> JsValue {
    match v {
        Value::Nil => JsValue::NULL,
        Value::Bool(b) => (*b).into(),
        Value::Int(n) => match n.as_i64() {
            Some(i) if (-MAX_SAFE..=MAX_SAFE).contains(&i) => (i as f64).into(),
            _ => JsValue::from(n.as_i128()),
        },
        Value::F32(f) => f64::from(*f).into(),
        Value::F64(f) => (*f).into(),
        Value::Str(s) => s.as_str().into(),
        Value::Bin(b) => Uint8Array::from(b.as_slice()).into(),
        Value::Array(a) => a.iter().map(to_js).collect::<Array>().into(),
        Value::Map(m) => {
            if m.iter().all(|(k, _)| matches!(k, Value::Str(_))) {
                let pairs: Array = m
                    .iter()
                    .map(|(k, v)| Array::of2(&to_js(k), &to_js(v)))
                    .collect();
                // Object.fromEntries defines own properties: a key such as
                // "__proto__" stays a key.
                Object::from_entries(&pairs).map_or(JsValue::NULL, Into::into)
            } else {
                let map = js_sys::Map::new();
                for (k, v) in m {
                    map.set(&to_js(k), &to_js(v));
                }
                map.into()
            }
        }
    }
}

/// A JavaScript value as msgpack: `null` and `undefined` are nil, integral
/// numbers within 2^53 and `BigInt`s are integers, other numbers float64,
/// strings str, `Uint8Array`/`ArrayBuffer` bin, arrays arrays, `Map`s and
/// plain objects maps.
pub fn from_js(v: &JsValue, depth: usize) -> Result<Value, String> {
    if depth > MAX_JS_DEPTH {
        return Err(format!(
            "rs2p: value nested deeper than {MAX_JS_DEPTH} levels"
        ));
    }
    if v.is_null() || v.is_undefined() {
        return Ok(Value::Nil);
    }
    if let Some(b) = v.as_bool() {
        return Ok(Value::Bool(b));
    }
    if let Some(f) = v.as_f64() {
        let exact = f.fract() == 0.0 && f.abs() <= MAX_SAFE as f64;
        return Ok(if exact {
            Value::from(f as i64)
        } else {
            Value::F64(f)
        });
    }
    if let Some(s) = v.as_string() {
        return Ok(Value::Str(s));
    }
    if v.is_bigint() {
        let n = i128::try_from(v.clone()).map_err(|_| "rs2p: BigInt out of range".to_string())?;
        return rs2p::Integer::from_i128(n)
            .map(Value::Int)
            .ok_or_else(|| "rs2p: BigInt beyond 64 bits".to_string());
    }
    if let Some(b) = v.dyn_ref::<Uint8Array>() {
        return Ok(Value::Bin(b.to_vec()));
    }
    if let Some(b) = v.dyn_ref::<js_sys::ArrayBuffer>() {
        return Ok(Value::Bin(Uint8Array::new(b).to_vec()));
    }
    if Array::is_array(v) {
        let a: &Array = v.unchecked_ref();
        let mut out = Vec::with_capacity(a.length() as usize);
        for x in a.iter() {
            out.push(from_js(&x, depth + 1)?);
        }
        return Ok(Value::Array(out));
    }
    if let Some(m) = v.dyn_ref::<js_sys::Map>() {
        let mut out = Vec::with_capacity(m.size() as usize);
        for entry in m.entries() {
            let entry: Array = entry
                .map_err(|_| "rs2p: unreadable Map".to_string())?
                .into();
            out.push((
                from_js(&entry.get(0), depth + 1)?,
                from_js(&entry.get(1), depth + 1)?,
            ));
        }
        return Ok(Value::Map(out));
    }
    if v.is_object() && !v.is_function() {
        let entries = Object::entries(v.unchecked_ref());
        let mut out = Vec::with_capacity(entries.length() as usize);
        for entry in entries.iter() {
            let entry: Array = entry.into();
            out.push((
                from_js(&entry.get(0), depth + 1)?,
                from_js(&entry.get(1), depth + 1)?,
            ));
        }
        return Ok(Value::Map(out));
    }
    Err(format!(
        "rs2p: cannot store a {}",
        v.js_typeof().as_string().unwrap_or_default()
    ))
}
