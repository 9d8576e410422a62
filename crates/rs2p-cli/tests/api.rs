//! The node's HTTP API (`rs2p node --api`) and the client commands, over
//! real sockets: every endpoint, every client command and its exit code,
//! watch resumption, the token rule, the body and watch limits, and
//! metrics that move when traffic moves (parsed from the text format).
//!
//! Nodes run as child processes (headless, `--api 127.0.0.1:0`); the tests
//! speak HTTP/1.1 to them with a small blocking client of their own. Every
//! read has a deadline; children are killed when their handle drops.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};

const BIN: &str = env!("CARGO_BIN_EXE_rs2p");
/// Deadline for one expected line, answer or condition.
const T: Duration = Duration::from_secs(20);
/// Interval of the polling loops (each has a deadline).
const POLL: Duration = Duration::from_millis(20);

// ------------------------------------------------------------------ nodes

/// A headless `rs2p node` with its API.
struct Node {
    child: Child,
    /// The mesh address, HOST:PORT.
    addr: String,
    port: u16,
    id: String,
    /// The API's address, HOST:PORT.
    api: String,
    /// Stderr, read so that the pipe never fills.
    _stderr: Receiver<String>,
}

fn lines_of(r: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(l) = line else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

impl Node {
    fn start(args: &[&str]) -> Node {
        let mut all = vec!["node", "--api", "127.0.0.1:0"];
        all.extend_from_slice(args);
        Node::spawn(&all)
    }

    /// `rs2p ARGS` that must print the listening and api lines.
    fn spawn(args: &[&str]) -> Node {
        let mut child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start rs2p");
        let out = lines_of(child.stdout.take().expect("stdout"));
        let stderr = lines_of(child.stderr.take().expect("stderr"));
        let first = out.recv_timeout(T).unwrap_or_else(|e| {
            let said: Vec<String> = stderr.try_iter().collect();
            panic!("the listening line: {e}; stderr: {said:?}")
        });
        let rest = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("first line: {first:?}"));
        let (addr, id) = rest.split_once(" as ").expect("`as ID`");
        let second = out.recv_timeout(T).expect("the api line");
        let api = second
            .strip_prefix("api on http://")
            .unwrap_or_else(|| panic!("second line: {second:?}"))
            .to_string();
        assert!(!api.ends_with(":0"), "the bound port is printed: {api}");
        Node {
            child,
            port: addr.rsplit_once(':').unwrap().1.parse().unwrap(),
            addr: addr.to_string(),
            id: id.to_string(),
            api,
            _stderr: stderr,
        }
    }

    fn get(&self, path: &str) -> Resp {
        http(&self.api, "GET", path, &[], None)
    }

    fn json(&self, method: &str, path: &str, body: &Json) -> Resp {
        http(
            &self.api,
            method,
            path,
            &[],
            Some(body.to_string().as_bytes()),
        )
    }

    fn metrics(&self) -> Metrics {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200);
        assert!(r
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"));
        Metrics::parse(&r.text())
    }

    /// Runs a client command against this node.
    fn client(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend_from_slice(&["--endpoint", &self.api]);
        run(&all)
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill only sends a signal to our own child.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    fn exit_code(&mut self) -> Option<i32> {
        let deadline = Instant::now() + T;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s.code();
            }
            assert!(Instant::now() < deadline, "the node did not exit");
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `rs2p ARGS` to its end (with a deadline).
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rs2p");
    let deadline = Instant::now() + T;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("rs2p {args:?} did not finish");
        }
        std::thread::sleep(POLL);
    }
    child.wait_with_output().expect("output")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the exit code, showing the output otherwise.
fn code(o: &Output, want: i32) {
    assert_eq!(
        o.status.code(),
        Some(want),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
}

/// Polls `f` until it returns Some, for at most `T`.
fn until<R>(what: &str, mut f: impl FnMut() -> Option<R>) -> R {
    let deadline = Instant::now() + T;
    loop {
        if let Some(r) = f() {
            return r;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(POLL);
    }
}

/// Waits until the unix time (whole seconds) is past `t`.
fn wait_past(t: i64) {
    until("the next second", || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        (now > t).then_some(())
    });
}

// ------------------------------------------------------------------- HTTP

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Json {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The error kind of an error body.
    fn kind(&self) -> String {
        self.json()["error"]["kind"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect to the API");
    s.set_read_timeout(Some(T)).unwrap();
    s.set_write_timeout(Some(T)).unwrap();
    s
}

/// Reads a response head; returns the status and headers.
fn read_head(r: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).expect("header");
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').expect("header line");
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    (status, headers)
}

/// One request on a fresh connection (`Connection: close`).
fn http(
    api: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    let mut s = connect(api);
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    if let Some(b) = body {
        s.write_all(b).unwrap();
    }
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r);
    let mut raw = Vec::new();
    r.read_to_end(&mut raw).expect("body");
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked { dechunk(&raw) } else { raw };
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(nl) = raw.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&raw[..nl]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[nl + 2..nl + 2 + size]);
        raw = &raw[nl + 2 + size + 2..];
    }
}

/// A watch (`GET /v1/watch`) read as Server-Sent Events.
struct Watch {
    r: BufReader<TcpStream>,
    /// Decoded body bytes not yet split into events.
    buf: Vec<u8>,
}

#[derive(Debug)]
struct Event {
    id: Option<String>,
    event: String,
    data: Json,
}

impl Watch {
    fn open(api: &str, query: &str, last_id: Option<&str>) -> Result<Watch, Resp> {
        let mut s = connect(api);
        let mut req = format!("GET /v1/watch{query} HTTP/1.1\r\nHost: {api}\r\n");
        if let Some(id) = last_id {
            req.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let mut r = BufReader::new(s);
        let (status, headers) = read_head(&mut r);
        if status != 200 {
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.parse().unwrap());
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            return Err(Resp {
                status,
                headers,
                body,
            });
        }
        assert!(headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("content-type") && v == "text/event-stream"));
        Ok(Watch { r, buf: Vec::new() })
    }

    /// Reads one chunk of the chunked body; false at its end.
    fn read_chunk(&mut self) -> bool {
        let mut size = String::new();
        if self.r.read_line(&mut size).unwrap_or(0) == 0 {
            return false;
        }
        let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if size == 0 {
            return false;
        }
        let mut data = vec![0; size + 2];
        self.r.read_exact(&mut data).expect("chunk");
        self.buf.extend_from_slice(&data[..size]);
        true
    }

    /// The next frame (id-only frames included), or None when the stream
    /// ends.
    fn next_frame(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let frame: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(frame).unwrap();
                let mut ev = Event {
                    id: None,
                    event: String::new(),
                    data: Json::Null,
                };
                let mut any = false;
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        ev.id = Some(v.to_string());
                        any = true;
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        ev.event = v.to_string();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        ev.data = serde_json::from_str(v).expect("data is JSON");
                    }
                }
                if any {
                    return Some(ev);
                }
                continue;
            }
            if !self.read_chunk() {
                return None;
            }
        }
    }

    /// The next `update`, `delete`, `reset` or `lagged` event.
    fn next(&mut self) -> Event {
        loop {
            let ev = self.next_frame().expect("the watch ended");
            if !ev.event.is_empty() {
                return ev;
            }
        }
    }

    /// The id of the hello frame.
    fn hello_id(&mut self) -> String {
        let ev = self.next_frame().expect("hello");
        assert!(ev.event.is_empty(), "{ev:?}");
        ev.id.expect("the hello has an id")
    }
}

// ---------------------------------------------------------------- metrics

/// A parsed text-format exposition: samples by name and labels, and the
/// declared type of every family.
struct Metrics {
    samples: BTreeMap<(String, BTreeMap<String, String>), f64>,
    types: BTreeMap<String, String>,
}

impl Metrics {
    /// Parses (and checks) the Prometheus text format 0.0.4.
    fn parse(text: &str) -> Metrics {
        let mut samples = BTreeMap::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "{line}"
                );
                assert!(
                    types.insert(name.to_string(), kind.to_string()).is_none(),
                    "{name} typed twice"
                );
                continue;
            }
            if line.starts_with('#') {
                assert!(line.starts_with("# HELP "), "{line}");
                continue;
            }
            let (name, labels, value) = parse_sample(line);
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "metric name {name:?}"
            );
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
                })
                .unwrap_or(&name)
                .to_string();
            let kind = types
                .get(&family)
                .unwrap_or_else(|| panic!("sample {name} before its TYPE line"));
            if kind == "counter" {
                assert!(
                    name.ends_with("_total"),
                    "counter {name} must end in _total"
                );
            }
            assert!(
                samples.insert((name.clone(), labels), value).is_none(),
                "duplicate sample {line}"
            );
        }
        let m = Metrics { samples, types };
        m.check_histograms();
        m
    }

    /// Histogram buckets are cumulative, and `+Inf` equals `_count`.
    fn check_histograms(&self) {
        for (family, _) in self.types.iter().filter(|(_, t)| *t == "histogram") {
            let bucket = format!("{family}_bucket");
            let mut bounds: Vec<(f64, f64)> = self
                .samples
                .iter()
                .filter(|((n, _), _)| *n == bucket)
                .map(|((_, l), v)| {
                    let le = &l["le"];
                    (
                        if le == "+Inf" {
                            f64::INFINITY
                        } else {
                            le.parse().unwrap()
                        },
                        *v,
                    )
                })
                .collect();
            bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert!(
                bounds.windows(2).all(|w| w[0].1 <= w[1].1),
                "{family} not cumulative"
            );
            let inf = bounds.last().expect("buckets").1;
            assert_eq!(inf, self.get(&format!("{family}_count"), &[]), "{family}");
        }
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        *self
            .samples
            .get(&(name.to_string(), labels.clone()))
            .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
    }
}

/// `name{k="v",...} value`, with escapes in label values.
fn parse_sample(line: &str) -> (String, BTreeMap<String, String>, f64) {
    let name_end = line.find(['{', ' ']).expect("name");
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        let consumed;
        loop {
            let (i, c) = chars.next().expect("label or }");
            if c == '}' {
                consumed = i + 1;
                break;
            }
            if c == ',' {
                continue;
            }
            let key_start = i;
            let eq = r[key_start..].find('=').expect("=") + key_start;
            let key = r[key_start..eq].to_string();
            while chars.peek().is_some_and(|(j, _)| *j <= eq) {
                chars.next();
            }
            assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
            let mut value = String::new();
            loop {
                let (_, c) = chars.next().expect("closing quote");
                match c {
                    '"' => break,
                    '\\' => match chars.next().expect("escape").1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    c => value.push(c),
                }
            }
            labels.insert(key, value);
        }
        rest = &r[consumed..];
    }
    let value = rest.trim();
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().unwrap_or_else(|_| panic!("value of {line:?}")),
    };
    (name, labels, value)
}

// ------------------------------------------------------------------ tests

/// Two connected nodes (b dialled a).
fn pair(extra: &[&str]) -> (Node, Node) {
    let a = Node::start(extra);
    let target = format!("127.0.0.1:{}", a.port);
    let mut args = vec!["--connect", target.as_str()];
    args.extend_from_slice(extra);
    let b = Node::start(&args);
    until("the peers to handshake", || {
        let p = a.get("/v1/peers").json();
        (p["peers"].as_array().unwrap().len() == 1).then_some(())
    });
    (a, b)
}

fn value_at(n: &Node, key_path: &str) -> Option<Json> {
    let r = n.get(&format!("/v1/kv/{key_path}"));
    (r.status == 200).then(|| r.json()["value"].clone())
}

#[test]
fn kv_endpoints() {
    let (a, b) = pair(&[]);

    // PUT, GET, with the entry's metadata.
    let r = a.json("PUT", "/v1/kv/greeting", &json!("hello"));
    assert_eq!((r.status, r.json()), (200, json!({"ok": true})));
    let r = a.get("/v1/kv/greeting");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let e = r.json();
    assert_eq!(e["key"], "greeting");
    assert_eq!(e["value"], "hello");
    assert_eq!(e["owner"], a.id.as_str());
    let ts = e["timestamp"].as_i64().unwrap();
    assert_eq!(e["lease_expires"].as_i64(), Some(ts + 3600));

    // Bytes, nested values, percent-encoded and binary keys.
    let v = json!({"b": {"$bin": "00ff"}, "n": [1, -2, 1.5, null, true]});
    assert_eq!(a.json("PUT", "/v1/kv/a%2Fb%20c", &v).status, 200);
    assert_eq!(value_at(&a, "a%2Fb%20c"), Some(v.clone()));
    assert_eq!(a.json("PUT", "/v1/kv/%FF%00", &json!(7)).status, 200);
    let listed = a.get("/v1/kv?prefix=%FF").json();
    assert_eq!(listed["entries"][0]["key"], json!({"$bin": "ff00"}));

    // POST /v1/kv: an object, or an array of {key, value} (binary keys).
    let r = a.json("POST", "/v1/kv", &json!({"m1": 1, "m2": {"x": "y"}}));
    assert_eq!((r.status, r.json()["written"].clone()), (200, json!(2)));
    let r = a.json(
        "POST",
        "/v1/kv",
        &json!([{"key": {"$bin": "fe"}, "value": "bin"}, {"key": "m3", "value": 3}]),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(value_at(&a, "%FE"), Some(json!("bin")));

    // GET /v1/kv: sorted, with prefix and pattern.
    let keys = |q: &str| -> Vec<Json> {
        a.get(&format!("/v1/kv{q}")).json()["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["key"].clone())
            .collect()
    };
    assert_eq!(
        keys("?prefix=m"),
        vec![json!("m1"), json!("m2"), json!("m3")]
    );
    assert_eq!(
        keys("?pattern=m%3F"),
        vec![json!("m1"), json!("m2"), json!("m3")]
    );
    assert_eq!(keys("?prefix=m&pattern=*2"), vec![json!("m2")]);
    assert_eq!(keys("").len(), 7);
    let entry = &a.get("/v1/kv?prefix=m1").json()["entries"][0];
    assert_eq!(entry["owner"], a.id.as_str());
    assert!(entry["timestamp"].is_i64() && entry["lease_expires"].is_i64());

    // Delta merges one level deep; a delta on a non-map is a conflict.
    let r = a.json("POST", "/v1/kv/m2/delta", &json!({"z": 1}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(value_at(&a, "m2"), Some(json!({"x": "y", "z": 1})));
    let r = a.json("POST", "/v1/kv/greeting/delta", &json!({"z": 1}));
    assert_eq!((r.status, r.kind()), (409, "not_a_mapping".into()));
    let r = a.json("POST", "/v1/kv/m2/delta", &json!([1]));
    assert_eq!((r.status, r.kind()), (400, "bad_request".into()));

    // DELETE; absent keys are 404.
    assert_eq!(http(&a.api, "DELETE", "/v1/kv/m3", &[], None).status, 200);
    let r = a.get("/v1/kv/m3");
    assert_eq!((r.status, r.kind()), (404, "key_not_found".into()));
    let r = http(&a.api, "DELETE", "/v1/kv/m3", &[], None);
    assert_eq!((r.status, r.kind()), (404, "key_not_found".into()));

    // Bad requests: not JSON, no body, null, unknown parameters, bad
    // escapes; unknown routes and methods.
    let r = http(&a.api, "PUT", "/v1/kv/x", &[], Some(b"{nope"));
    assert_eq!((r.status, r.kind()), (400, "bad_request".into()));
    assert_eq!(http(&a.api, "PUT", "/v1/kv/x", &[], None).status, 400);
    assert_eq!(a.json("PUT", "/v1/kv/x", &json!(null)).status, 400);
    assert_eq!(a.json("PUT", "/v1/kv/x", &json!({"$bin": "f"})).status, 400);
    assert_eq!(a.get("/v1/kv?prefx=m").status, 400);
    assert_eq!(a.get("/v1/kv/%zz").status, 400);
    assert_eq!(a.json("POST", "/v1/kv", &json!(5)).status, 400);
    assert_eq!(
        a.json("POST", "/v1/kv", &json!([{"key": 1, "value": 2}]))
            .status,
        400
    );
    let r = a.get("/v2/nothing");
    assert_eq!((r.status, r.kind()), (404, "not_found".into()));
    let r = http(&a.api, "PATCH", "/v1/kv/x", &[], None);
    assert_eq!((r.status, r.kind()), (405, "method_not_allowed".into()));
    assert_eq!(value_at(&a, "x"), None);

    // Everything replicated to b; b's writes to a's keys are refused with
    // the owner and the time left.
    until("b to have a's keys", || {
        (value_at(&b, "m2") == Some(json!({"x": "y", "z": 1}))).then_some(())
    });
    assert_eq!(value_at(&b, "a%2Fb%20c"), Some(v));
    until("b to see the delete", || {
        (b.get("/v1/kv/m3").status == 404).then_some(())
    });
    // (Within the second of a's write, the lower id would win the tie.)
    wait_past(ts);
    let r = b.json("PUT", "/v1/kv/greeting", &json!("mine"));
    assert_eq!(r.status, 409, "{}", r.text());
    let err = &r.json()["error"];
    assert_eq!(err["kind"], "lease_held");
    assert_eq!(err["owner"], a.id.as_str());
    let left = err["expires_in"].as_i64().unwrap();
    assert!((3590..=3600).contains(&left), "{left}");
    assert_eq!(err["expires_at"].as_i64(), Some(ts + 3600));
    let r = http(&b.api, "DELETE", "/v1/kv/greeting", &[], None);
    assert_eq!((r.status, r.kind()), (409, "lease_held".into()));
    // POST /v1/kv stops at the first refusal and says how many went in.
    let r = b.json(
        "POST",
        "/v1/kv",
        &json!([{"key": "bfirst", "value": 1}, {"key": "greeting", "value": 2}]),
    );
    assert_eq!(
        (r.status, r.json()["error"]["written"].clone()),
        (409, json!(1))
    );

    // Peers: each side sees the other, with its kind and direction.
    let p = a.get("/v1/peers").json();
    assert_eq!(p["peers"][0]["id"], b.id.as_str());
    assert_eq!(p["peers"][0]["kind"], "rs2p");
    assert_eq!(p["peers"][0]["outgoing"], false);
    let p = b.get("/v1/peers").json();
    assert_eq!(p["peers"][0]["addr"], a.addr.as_str());
    assert_eq!(p["peers"][0]["outgoing"], true);

    // POST /v1/peers connects; a bad body is 400, a dead address 502.
    let c = Node::start(&[]);
    let r = c.json(
        "POST",
        "/v1/peers",
        &json!({"host": "127.0.0.1", "port": a.port}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    until("c to get a's keys", || {
        (value_at(&c, "greeting") == Some(json!("hello"))).then_some(())
    });
    assert_eq!(
        c.json("POST", "/v1/peers", &json!({"host": "127.0.0.1"}))
            .status,
        400
    );
    assert_eq!(
        c.json("POST", "/v1/peers", &json!({"host": "", "port": 1}))
            .status,
        400
    );
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = free.local_addr().unwrap().port();
    drop(free);
    let r = c.json(
        "POST",
        "/v1/peers",
        &json!({"host": "127.0.0.1", "port": dead}),
    );
    assert_eq!((r.status, r.kind()), (502, "io".into()));

    // Status and health.
    let s = a.get("/v1/status").json();
    assert_eq!(s["id"], a.id.as_str());
    assert_eq!(s["subnet"], "sync1");
    assert_eq!(s["transport"], "plaintext");
    assert_eq!(s["leasing"], true);
    assert_eq!(s["listen"], a.addr.as_str());
    assert_eq!(s["advertised"], json!([a.addr]));
    assert_eq!(s["api"], a.api.as_str());
    until("a to have b's write", || {
        (a.get("/v1/kv/bfirst").status == 200).then_some(())
    });
    let s = a.get("/v1/status").json();
    assert_eq!(s["keys"], 7);
    assert_eq!(s["tombstones"], 1);
    assert_eq!(s["peers"], 2);
    assert_eq!(s["store"]["state"], "memory");
    assert!(s["uptime_seconds"].as_f64().unwrap() > 0.0);
    let h = a.get("/health");
    assert_eq!((h.status, h.json()), (200, json!({"status": "ok"})));
}

#[test]
fn status_with_a_store_and_clean_shutdown() {
    let dir = std::env::temp_dir().join(format!("rs2p-api-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_string_lossy().into_owned();
    let mut n = Node::start(&["--data-dir", &d, "--subnet", "svc", "--no-leasing"]);
    let m0 = n.metrics();
    assert_eq!(m0.get("rs2p_store_up", &[]), 1.0);
    for i in 0..3 {
        assert_eq!(
            n.json("PUT", &format!("/v1/kv/k{i}"), &json!(i)).status,
            200
        );
    }
    let s = n.get("/v1/status").json();
    assert_eq!(s["subnet"], "svc0");
    assert_eq!(s["leasing"], false);
    assert_eq!(s["store"]["state"], "ok");
    assert_eq!(s["store"]["data_dir"], d.as_str());
    assert!(s["store"]["commits"].as_u64().unwrap() >= 1);
    let e = n.get("/v1/kv/k1").json();
    assert_eq!(e["lease_expires"], Json::Null, "no lease without leasing");
    let m1 = n.metrics();
    let commits = m1.get("rs2p_store_commits_total", &[]);
    assert!(commits > m0.get("rs2p_store_commits_total", &[]));
    assert_eq!(m1.get("rs2p_store_commit_seconds_count", &[]), commits);
    assert!(m1.get("rs2p_store_commit_seconds_sum", &[]) > 0.0);

    // SIGTERM with a watch open: the watch ends, the node exits 0 and
    // kept its keys.
    let mut w = Watch::open(&n.api, "", None).unwrap_or_else(|r| panic!("{}", r.text()));
    w.hello_id();
    n.signal(libc::SIGTERM);
    assert!(w.next_frame().is_none(), "the watch ends with the node");
    assert_eq!(n.exit_code(), Some(0));
    let again = Node::start(&["--data-dir", &d, "--subnet", "svc", "--no-leasing"]);
    assert_eq!(value_at(&again, "k2"), Some(json!(2)));
    drop(again);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn client_commands() {
    let (a, b) = pair(&[]);
    let o = a.client(&["set", "greeting", "hello world"]);
    code(&o, 0);
    assert_eq!(stdout(&o), "ok\n");
    code(&a.client(&["set", "n", "{\"a\": 1}"]), 0);
    code(
        &a.client(&["set", "{\"$bin\":\"ff\"}", "{\"$bin\":\"00\"}"]),
        0,
    );
    let o = a.client(&["set", "j", "{\"a\": 1}", "-o", "json"]);
    assert_eq!(
        serde_json::from_str::<Json>(&stdout(&o)).unwrap(),
        json!({"ok": true})
    );

    let o = a.client(&["get", "greeting"]);
    code(&o, 0);
    assert_eq!(stdout(&o), "\"hello world\"\n");
    let o = a.client(&["get", "n", "-o", "json"]);
    let e: Json = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        (e["value"].clone(), e["owner"].clone()),
        (json!({"a": 1}), json!(a.id))
    );
    assert_eq!(
        stdout(&a.client(&["get", "{\"$bin\":\"ff\"}"])),
        "{\"$bin\":\"00\"}\n"
    );
    let o = a.client(&["get", "missing"]);
    code(&o, 3);
    assert!(stderr(&o).contains("not found"), "{}", stderr(&o));

    let o = a.client(&["keys"]);
    code(&o, 0);
    let text = stdout(&o);
    let keys: Vec<&str> = text.lines().collect();
    assert_eq!(keys, vec!["greeting", "j", "n", "{\"$bin\":\"ff\"}"]);
    assert_eq!(stdout(&a.client(&["keys", "g*"])), "greeting\n");
    let o = a.client(&["keys", "?", "-o", "json"]);
    // `?` is any one byte: 0xff too.
    assert_eq!(
        serde_json::from_str::<Json>(&stdout(&o)).unwrap(),
        json!({"keys": ["j", "n", {"$bin": "ff"}]})
    );

    let o = a.client(&["items", "n*"]);
    code(&o, 0);
    let lines: Vec<String> = stdout(&o).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("KEY") && lines[0].contains("LEASE"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("n ") && lines[1].contains("{\"a\":1}") && lines[1].contains(&a.id)
    );
    assert!(
        lines[1].contains("59m") || lines[1].contains("60m00s"),
        "{}",
        lines[1]
    );
    let o = a.client(&["items", "-o", "json"]);
    let j: Json = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["entries"].as_array().unwrap().len(), 4);

    // b sees a's writes; its writes to a's keys fail with exit 4.
    until("b to have greeting", || {
        (value_at(&b, "greeting") == Some(json!("hello world"))).then_some(())
    });
    // (Within the second of a's writes, the lower id would win the tie.)
    let ts = a.get("/v1/kv/n").json()["timestamp"].as_i64().unwrap();
    wait_past(ts);
    let o = b.client(&["set", "greeting", "mine"]);
    code(&o, 4);
    assert!(
        stderr(&o).contains(&format!("leased by {}", a.id)) && stderr(&o).contains(" s left"),
        "{}",
        stderr(&o)
    );
    until("b to have n", || value_at(&b, "n").map(|_| ()));
    code(&b.client(&["del", "n"]), 4);

    code(&a.client(&["del", "n"]), 0);
    code(&a.client(&["del", "n"]), 3);

    // peers, connect, status.
    let o = a.client(&["peers"]);
    code(&o, 0);
    let text = stdout(&o);
    assert!(text.starts_with("ID"), "{text}");
    assert!(
        text.contains(&b.id) && text.contains("incoming") && text.contains("rs2p"),
        "{text}"
    );
    let o = a.client(&["peers", "-o", "json"]);
    let j: Json = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["peers"][0]["id"], b.id.as_str());

    let c = Node::start(&[]);
    let o = c.client(&["connect", &format!("127.0.0.1:{}", a.port)]);
    code(&o, 0);
    assert_eq!(stdout(&o), format!("connected to 127.0.0.1:{}\n", a.port));
    until("c to replicate", || {
        (value_at(&c, "greeting").is_some()).then_some(())
    });
    code(&c.client(&["connect", "nope"]), 2);

    let o = a.client(&["status"]);
    code(&o, 0);
    let text = stdout(&o);
    for want in [
        format!("id:          {}", a.id),
        format!("listen:      {}", a.addr),
        format!("api:         {}", a.api),
        "subnet:      sync1".to_string(),
        "keys:        3".to_string(),
        "tombstones:  1".to_string(),
        "store:       in memory".to_string(),
    ] {
        assert!(text.contains(&want), "{want:?} in\n{text}");
    }
    let o = a.client(&["status", "-o", "json"]);
    let j: Json = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        (j["id"].clone(), j["peers"].clone()),
        (json!(a.id), json!(2))
    );

    // watch: prints events as they come; --count ends it.
    let mut w = Command::new(BIN)
        .args([
            "watch",
            "live",
            "--count",
            "2",
            "-o",
            "json",
            "--endpoint",
            &a.api,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(w.stdout.take().unwrap());
    // The watch is open once the API counts it.
    until("the watch to open", || {
        (a.metrics().get("rs2p_api_watches", &[]) == 1.0).then_some(())
    });
    code(&a.client(&["set", "other", "1"]), 0);
    code(&a.client(&["set", "live1", "1"]), 0);
    code(&a.client(&["del", "live1"]), 0);
    let first: Json = serde_json::from_str(&lines.recv_timeout(T).unwrap()).unwrap();
    assert_eq!(
        (
            first["event"].clone(),
            first["key"].clone(),
            first["value"].clone()
        ),
        (json!("update"), json!("live1"), json!(1))
    );
    assert!(first["id"].as_str().unwrap().contains('-'));
    let second: Json = serde_json::from_str(&lines.recv_timeout(T).unwrap()).unwrap();
    assert_eq!(
        (second["event"].clone(), second["key"].clone()),
        (json!("delete"), json!("live1"))
    );
    let deadline = Instant::now() + T;
    let status = loop {
        if let Some(s) = w.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "watch --count did not exit");
        std::thread::sleep(POLL);
    };
    assert!(status.success());

    // A table watch resumes from --last-event-id.
    let o = a.client(&[
        "watch",
        "--last-event-id",
        first["id"].as_str().unwrap(),
        "--count",
        "1",
    ]);
    code(&o, 0);
    assert_eq!(stdout(&o), "delete live1\n");

    // Usage errors are 2, an unreachable node 5.
    code(&run(&["get"]), 2);
    code(&run(&["get", "k", "--endpoint", "no-port"]), 2);
    code(&run(&["get", "k", "-o", "yaml", "--endpoint", &a.api]), 2);
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("127.0.0.1:{}", free.local_addr().unwrap().port());
    drop(free);
    for cmd in [
        &["get", "k"][..],
        &["status"],
        &["watch"],
        &["peers"],
        &["shell"],
    ] {
        let mut args = cmd.to_vec();
        args.extend_from_slice(&["--endpoint", &dead]);
        let o = run(&args);
        code(&o, 5);
        assert!(
            stderr(&o).contains("cannot reach the node"),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn watch_resumes_after_the_last_event_id() {
    let n = Node::start(&["--api-watch-history", "4"]);
    let mut w = Watch::open(&n.api, "?prefix=w", None).unwrap_or_else(|r| panic!("{}", r.text()));
    let hello = w.hello_id();
    for (k, v) in [("w1", 1), ("x", 0), ("w2", 2)] {
        assert_eq!(n.json("PUT", &format!("/v1/kv/{k}"), &json!(v)).status, 200);
    }
    let e1 = w.next();
    assert_eq!(
        (
            e1.event.as_str(),
            e1.data["key"].clone(),
            e1.data["value"].clone()
        ),
        ("update", json!("w1"), json!(1))
    );
    assert_eq!(e1.data["owner"], n.id.as_str());
    let e2 = w.next();
    assert_eq!(e2.data["key"], "w2", "the prefix filters x out");
    drop(w);

    // Missed while disconnected: w3, its delete; resumed after w2.
    assert_eq!(n.json("PUT", "/v1/kv/w3", &json!(3)).status, 200);
    assert_eq!(http(&n.api, "DELETE", "/v1/kv/w3", &[], None).status, 200);
    let mut w = Watch::open(&n.api, "?prefix=w", e2.id.as_deref()).unwrap();
    let r1 = w.next();
    assert_eq!(
        (r1.event.as_str(), r1.data["key"].clone()),
        ("update", json!("w3"))
    );
    let r2 = w.next();
    assert_eq!(
        (r2.event.as_str(), r2.data["key"].clone()),
        ("delete", json!("w3"))
    );
    // Then live events on the same stream.
    assert_eq!(n.json("PUT", "/v1/kv/w4", &json!(4)).status, 200);
    let r3 = w.next();
    assert_eq!(r3.data["key"], "w4");
    let ids: Vec<u64> = [&e1, &e2, &r1, &r2, &r3]
        .iter()
        .map(|e| {
            e.id.as_ref()
                .unwrap()
                .rsplit_once('-')
                .unwrap()
                .1
                .parse()
                .unwrap()
        })
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

    // The ?last_event_id= form does the same, from the hello's id.
    let mut w = Watch::open(
        &n.api,
        &format!("?prefix=w&last_event_id={}", r2.id.as_ref().unwrap()),
        None,
    )
    .unwrap();
    assert_eq!(w.next().data["key"], "w4");

    // Events gone from the history (4 kept), an id from another run, or
    // from the future: `reset`, with an id to go on from.
    let mut w = Watch::open(&n.api, "", Some(&hello)).unwrap();
    let reset = w.next();
    assert_eq!(reset.event, "reset", "{reset:?}");
    assert!(reset.data["reason"]
        .as_str()
        .unwrap()
        .contains("no longer kept"));
    let epoch = hello.rsplit_once('-').unwrap().0;
    for bad in [
        "0000-1".to_string(),
        format!("{epoch}-999"),
        "garbage".into(),
    ] {
        let mut w = Watch::open(&n.api, "", Some(&bad)).unwrap();
        let ev = w.next();
        assert_eq!(ev.event, "reset", "{bad}");
        let now = ev.id.expect("reset carries the current id");
        // Resuming from it misses nothing.
        drop(w);
        assert_eq!(n.json("PUT", "/v1/kv/after", &json!(bad)).status, 200);
        let mut w = Watch::open(&n.api, "", Some(&now)).unwrap();
        assert_eq!(w.next().data["value"], json!(bad));
    }
}

#[test]
fn the_token_rule() {
    // Not loopback without a token: refused.
    let o = run(&["node", "--api", "0.0.0.0:0"]);
    code(&o, 1);
    assert!(stderr(&o).contains("--api-token-file"), "{}", stderr(&o));
    let dir = std::env::temp_dir().join(format!("rs2p-api-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let o = run(&[
        "node",
        "--api",
        "0.0.0.0:0",
        "--api-token-file",
        empty.to_str().unwrap(),
    ]);
    code(&o, 1);
    assert!(stderr(&o).contains("is empty"), "{}", stderr(&o));
    let o = run(&[
        "node",
        "--api-token-file",
        dir.join("missing").to_str().unwrap(),
    ]);
    code(&o, 1);

    // With a token (here on all addresses), every request needs it.
    let file = dir.join("token");
    std::fs::write(&file, "s3cret-token\n").unwrap();
    let n = Node::spawn(&[
        "node",
        "--api",
        "0.0.0.0:0",
        "--api-token-file",
        file.to_str().unwrap(),
    ]);
    let port = n.api.rsplit_once(':').unwrap().1;
    assert!(n.api.starts_with("0.0.0.0:"), "{}", n.api);
    let api = format!("127.0.0.1:{port}");
    for path in [
        "/health",
        "/metrics",
        "/v1/status",
        "/v1/kv",
        "/v1/kv/x",
        "/v1/watch",
        "/nope",
    ] {
        let r = http(&api, "GET", path, &[], None);
        assert_eq!((r.status, r.kind()), (401, "unauthorized".into()), "{path}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"rs2p\""));
        let r = http(
            &api,
            "GET",
            path,
            &[("Authorization", "Bearer wrong-token!")],
            None,
        );
        assert_eq!(r.status, 401, "{path}");
        let r = http(
            &api,
            "GET",
            path,
            &[("Authorization", "s3cret-token")],
            None,
        );
        assert_eq!(r.status, 401, "{path}: no Bearer");
        let r = http(
            &api,
            "GET",
            path,
            &[("Authorization", "Basic s3cret-token")],
            None,
        );
        assert_eq!(r.status, 401, "{path}: not Bearer");
    }
    // The scheme's case does not matter (RFC 7235).
    let r = http(
        &api,
        "GET",
        "/health",
        &[("Authorization", "bearer s3cret-token")],
        None,
    );
    assert_eq!(r.status, 200);
    let auth = [("Authorization", "Bearer s3cret-token")];
    let r = http(&api, "PUT", "/v1/kv/x", &[], Some(b"1"));
    assert_eq!(r.status, 401);
    let r = http(&api, "PUT", "/v1/kv/x", &auth, Some(b"1"));
    assert_eq!(r.status, 200);
    assert_eq!(
        http(&api, "GET", "/v1/kv/x", &auth, None).json()["value"],
        1
    );
    assert_eq!(http(&api, "GET", "/health", &auth, None).status, 200);

    // The client: --token-file or RS2P_API_TOKEN; without one, exit 6.
    let o = run(&["get", "x", "--endpoint", &api]);
    code(&o, 6);
    let o = run(&[
        "get",
        "x",
        "--endpoint",
        &api,
        "--token-file",
        file.to_str().unwrap(),
    ]);
    code(&o, 0);
    assert_eq!(stdout(&o), "1\n");
    let o = Command::new(BIN)
        .args(["status", "-o", "json", "--endpoint", &api])
        .env("RS2P_API_TOKEN", "s3cret-token")
        .output()
        .unwrap();
    code(&o, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn body_and_watch_limits() {
    let n = Node::start(&[
        "--api-max-body",
        "1000",
        "--api-max-watches",
        "2",
        "--api-watch-queue",
        "8",
    ]);
    let big = format!("\"{}\"", "x".repeat(2000));
    let r = http(&n.api, "PUT", "/v1/kv/big", &[], Some(big.as_bytes()));
    assert_eq!((r.status, r.kind()), (413, "body_too_large".into()));
    // Without a length up front (chunked), cut off at the limit too.
    let mut s = connect(&n.api);
    let chunk = "x".repeat(600);
    write!(
        s,
        "PUT /v1/kv/big HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n\"{chunk}\r\n{:x}\r\n{chunk}\"\r\n0\r\n\r\n",
        chunk.len() + 1,
        chunk.len() + 1
    )
    .unwrap();
    let mut r = BufReader::new(s);
    assert_eq!(read_head(&mut r).0, 413);
    let small = format!("\"{}\"", "x".repeat(900));
    assert_eq!(
        http(&n.api, "PUT", "/v1/kv/big", &[], Some(small.as_bytes())).status,
        200
    );

    // Two watches at most; a third is 503 until one closes.
    let w1 = Watch::open(&n.api, "", None).unwrap();
    let mut w2 = Watch::open(&n.api, "", None).unwrap();
    let r = Watch::open(&n.api, "", None)
        .err()
        .expect("a third watch is refused");
    assert_eq!((r.status, r.kind()), (503, "too_many_watches".into()));
    assert_eq!(r.header("retry-after"), Some("1"));
    drop(w1);
    let mut w3 = until("a watch slot to free up", || {
        Watch::open(&n.api, "", None).ok()
    });
    w2.hello_id();
    w3.hello_id();
    drop(w3);
    drop(w2);
    until("both watches to close", || {
        (n.metrics().get("rs2p_api_watches", &[]) == 0.0).then_some(())
    });

    // A client that stops reading is dropped: its connection closes and
    // its slot frees up.
    let mut slow = small_buffer_socket(&n.api);
    write!(slow, "GET /v1/watch HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    until("the slow watch to open", || {
        (n.metrics().get("rs2p_api_watches", &[]) == 1.0).then_some(())
    });
    let value = format!("\"{}\"", "v".repeat(900));
    let mut writes = 0;
    let dropped = until("the slow watch to be dropped", || {
        for _ in 0..20 {
            assert_eq!(
                http(
                    &n.api,
                    "PUT",
                    &format!("/v1/kv/s{writes}"),
                    &[],
                    Some(value.as_bytes())
                )
                .status,
                200
            );
            writes += 1;
        }
        let m = n.metrics();
        (m.get("rs2p_api_watch_dropped_total", &[]) >= 1.0).then_some(m)
    });
    assert_eq!(dropped.get("rs2p_api_watch_dropped_total", &[]), 1.0);
    assert_eq!(dropped.get("rs2p_api_watches", &[]), 0.0);
    // The slow client's stream ends (after what was already sent): EOF or
    // a reset, not a timeout.
    let mut sink = Vec::new();
    if let Err(e) = slow.read_to_end(&mut sink) {
        assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the slow watch's connection stayed open: {e}"
        );
    }
    assert!(!sink.is_empty(), "it got the head and some events");
    let mut fresh = until("a new watch", || Watch::open(&n.api, "", None).ok());
    fresh.hello_id();
    assert_eq!(n.json("PUT", "/v1/kv/after", &json!(1)).status, 200);
    assert_eq!(fresh.next().data["key"], "after");
    assert_eq!(n.get("/health").status, 200);
}

/// A connection with a small receive buffer (so that a watch that is not
/// read fills up fast).
fn small_buffer_socket(api: &str) -> TcpStream {
    use std::os::fd::FromRawFd;
    let addr: std::net::SocketAddrV4 = api.parse().unwrap();
    // SAFETY: plain socket calls on a descriptor we own; the stream takes
    // it over.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let size: libc::c_int = 4096;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: addr.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*addr.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "connect");
        let s = TcpStream::from_raw_fd(fd);
        s.set_read_timeout(Some(T)).unwrap();
        s
    }
}

#[test]
fn metrics_move_with_traffic() {
    let a = Node::start(&[]);
    // Keys before b joins: they reach b as a state transfer.
    for i in 0..5 {
        assert_eq!(
            a.json("PUT", &format!("/v1/kv/pre{i}"), &json!(i)).status,
            200
        );
    }
    let a0 = a.metrics();
    assert_eq!(a0.get("rs2p_keys", &[]), 5.0);
    assert_eq!(a0.get("rs2p_peers", &[("kind", "rs2p")]), 0.0);
    assert_eq!(
        a0.get("rs2p_frames_received_total", &[("type", "broadcast")]),
        0.0
    );
    assert!(a0.get("process_resident_memory_bytes", &[]) > 1e6);
    assert!(a0.get("rs2p_uptime_seconds", &[]) > 0.0);
    assert_eq!(
        a0.get(
            "rs2p_info",
            &[
                ("id", &a.id),
                ("subnet", "sync1"),
                ("transport", "plaintext"),
                ("version", "0.1.0")
            ]
        ),
        1.0
    );

    let target = format!("127.0.0.1:{}", a.port);
    let b = Node::start(&["--connect", &target]);
    // The counters are read a moment before the key count in one scrape:
    // wait for both.
    let b1 = until("b's state transfer", || {
        let m = b.metrics();
        (m.get("rs2p_keys", &[]) == 5.0
            && m.get("rs2p_state_transfer_bytes_total", &[("direction", "in")]) > 0.0)
            .then_some(m)
    });
    assert_eq!(b1.get("rs2p_peers", &[("kind", "rs2p")]), 1.0);
    assert!(b1.get("rs2p_state_transfer_bytes_total", &[("direction", "in")]) > 0.0);
    let a1 = a.metrics();
    assert!(a1.get("rs2p_state_transfer_bytes_total", &[("direction", "out")]) > 0.0);
    assert_eq!(a1.get("rs2p_peers", &[("kind", "rs2p")]), 1.0);
    assert!(a1.get("rs2p_connections", &[]) >= 1.0);
    // State transfers are whispers (between rs2p nodes the 5 keys travel
    // as one batch, after the peers list): a sent some, b received them.
    assert!(a1.get("rs2p_frames_sent_total", &[("type", "whisper")]) >= 2.0);
    assert!(b1.get("rs2p_frames_received_total", &[("type", "whisper")]) >= 2.0);

    // b writes; a receives broadcasts and their bytes, and sees their age.
    for i in 0..10 {
        assert_eq!(
            b.json("PUT", &format!("/v1/kv/b{i}"), &json!({"i": i}))
                .status,
            200
        );
    }
    let got = |m: &Metrics, name: &str, l: &[(&str, &str)]| m.get(name, l) - a1.get(name, l);
    // Counters and the key count are read at slightly different moments of
    // a scrape: wait until all of them show the ten writes.
    let a2 = until("a to get b's writes", || {
        let m = a.metrics();
        (m.get("rs2p_keys", &[]) == 15.0
            && got(&m, "rs2p_broadcasts_received_total", &[]) >= 10.0
            && got(&m, "rs2p_write_propagation_seconds_count", &[]) >= 10.0)
            .then_some(m)
    });
    assert!(got(&a2, "rs2p_frames_received_total", &[("type", "broadcast")]) >= 10.0);
    assert!(got(&a2, "rs2p_received_bytes_total", &[("type", "broadcast")]) >= 10.0 * 40.0);
    assert!(got(&a2, "rs2p_broadcasts_received_total", &[]) >= 10.0);
    assert_eq!(got(&a2, "rs2p_write_propagation_seconds_count", &[]), 10.0);
    assert!(a2.get("rs2p_write_propagation_seconds_bucket", &[("le", "3600")]) >= 10.0);
    let b2 = b.metrics();
    assert!(
        b2.get("rs2p_frames_sent_total", &[("type", "broadcast")])
            - b1.get("rs2p_frames_sent_total", &[("type", "broadcast")])
            >= 10.0
    );
    assert!(
        b2.get("rs2p_sent_bytes_total", &[("type", "broadcast")])
            > b1.get("rs2p_sent_bytes_total", &[("type", "broadcast")])
    );
    let sent_by_type: f64 = [
        "broadcast",
        "renegotiate",
        "whisper",
        "ping",
        "pong",
        "other",
    ]
    .iter()
    .map(|t| b2.get("rs2p_sent_bytes_total", &[("type", t)]))
    .sum();
    assert!(b2.get("rs2p_transmitted_bytes_total", &[]) >= sent_by_type);
    // a's own writes are not "received writes".
    assert_eq!(
        b2.get("rs2p_write_propagation_seconds_count", &[]),
        5.0,
        "the 5 transferred keys"
    );

    // Deletes make tombstones; API requests are counted by code.
    assert_eq!(http(&a.api, "DELETE", "/v1/kv/pre0", &[], None).status, 200);
    assert_eq!(a.get("/v1/kv/pre0").status, 404);
    let a3 = a.metrics();
    assert_eq!(a3.get("rs2p_tombstones", &[]), 1.0);
    assert_eq!(a3.get("rs2p_keys", &[]), 14.0);
    assert!(a3.get("rs2p_api_requests_total", &[("code", "404")]) >= 1.0);
    assert!(
        a3.get("rs2p_api_requests_total", &[("code", "200")])
            > a2.get("rs2p_api_requests_total", &[("code", "200")])
    );
    until("b to see the delete", || {
        (b.metrics().get("rs2p_tombstones", &[]) == 1.0).then_some(())
    });

    // Watches: open count and events sent.
    let mut w = Watch::open(&a.api, "", None).unwrap();
    w.hello_id();
    assert_eq!(b.json("PUT", "/v1/kv/watched", &json!(1)).status, 200);
    assert_eq!(w.next().data["key"], "watched");
    let a4 = a.metrics();
    assert_eq!(a4.get("rs2p_api_watches", &[]), 1.0);
    assert!(a4.get("rs2p_api_watch_events_total", &[]) >= 1.0);
    assert_eq!(a4.get("rs2p_api_watch_dropped_total", &[]), 0.0);

    // A third node linked to both: a's broadcasts reach c twice (from a
    // and through b) until the broadcast tree prunes a link, or b is told
    // by a's neighbour list not to relay. Which of the three shows first
    // depends on which copy wins each race (under load, either), so the
    // wait is for their sum.
    let b_target = format!("127.0.0.1:{}", b.port);
    let c = Node::start(&["--connect", &target, "--connect", &b_target]);
    until("c to join both", || {
        (c.metrics().get("rs2p_peers", &[("kind", "rs2p")]) == 2.0).then_some(())
    });
    let mut i = 0;
    let redundancy = |m: &Metrics| {
        m.get("rs2p_duplicate_broadcasts_total", &[])
            + m.get("rs2p_tree_prunes_total", &[])
            + m.get("rs2p_relays_pruned_total", &[])
    };
    until("a duplicate, a tree prune or a pruned relay", || {
        i += 1;
        assert_eq!(
            a.json("PUT", &format!("/v1/kv/tri{i}"), &json!(i)).status,
            200
        );
        let total: f64 = [&a, &b, &c].iter().map(|n| redundancy(&n.metrics())).sum();
        (total > 0.0).then_some(())
    });
    drop(c);

    // Garbage on the mesh port: a bad frame, counted; the link dropped.
    let bad_before = a.metrics().get("rs2p_bad_frames_total", &[]);
    let mut s = TcpStream::connect(&a.addr).unwrap();
    s.write_all(&[0, 0, 0, 8, 0xc1, 1, 2, 3, 4, 5, 6, 7])
        .unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
    let m = until("the bad frame to be counted", || {
        let m = a.metrics();
        (m.get("rs2p_bad_frames_total", &[]) > bad_before).then_some(m)
    });
    assert_eq!(m.get("rs2p_bad_frames_total", &[]), bad_before + 1.0);

    // b leaves: a's peer gauge goes back to 0.
    drop(b);
    until("a to see b leave", || {
        (a.metrics().get("rs2p_peers", &[("kind", "rs2p")]) == 0.0).then_some(())
    });
}

#[test]
fn api_addresses() {
    // An address given and taken: the node does not start.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let o = run(&["node", "--api", &addr]);
    code(&o, 1);
    assert!(
        stderr(&o).contains(&format!("cannot serve the API on {addr}")),
        "{}",
        stderr(&o)
    );
    code(&run(&["node", "--api", "localhost:1"]), 2);

    // The default address taken (by us, or by anyone): the node says so
    // and runs without the API.
    let _default = std::net::TcpListener::bind("127.0.0.1:4480");
    let mut child = Command::new(BIN)
        .args(["node"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = lines_of(child.stdout.take().unwrap());
    let err = lines_of(child.stderr.take().unwrap());
    let first = out.recv_timeout(T).unwrap();
    assert!(first.starts_with("listening on 127.0.0.1:"), "{first}");
    let warning = until("the warning", || {
        err.try_iter().find(|l| l.contains("4480"))
    });
    assert!(
        warning.contains("127.0.0.1:4480 is not available") && warning.contains("without the API"),
        "{warning}"
    );
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let deadline = Instant::now() + T;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the node did not stop");
        std::thread::sleep(POLL);
    };
    assert!(status.success());
    assert!(
        out.try_iter().next().is_none(),
        "no api line without an API"
    );

    // --api off: no API line either; the JSON mode still works beside an
    // API.
    let mut off = Command::new(BIN)
        .args(["node", "--api", "off"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = lines_of(off.stdout.take().unwrap());
    assert!(out.recv_timeout(T).unwrap().starts_with("listening on"));
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(off.id() as libc::pid_t, libc::SIGTERM) };
    assert!(off.wait().unwrap().success());
    assert!(
        out.recv_timeout(T).is_err(),
        "no second line with --api off"
    );
}

#[cfg(unix)]
#[test]
fn remote_shell() {
    use expectrl::{Eof, Expect, Session};

    let n = Node::start(&[]);
    assert_eq!(
        n.json("PUT", "/v1/kv/from_api", &json!([1, "two"])).status,
        200
    );
    let mut cmd = Command::new(BIN);
    cmd.args(["shell", "--endpoint", &n.api])
        .env("TERM", "xterm");
    let mut sh = Session::spawn(cmd).expect("spawn the shell in a pty");
    sh.set_expect_timeout(Some(T));
    sh.expect(format!("connected to node {}", n.id).as_str())
        .expect("banner");
    sh.expect("rs2p> ").expect("prompt");
    sh.send_line("get from_api").expect("send");
    sh.expect("[1,\"two\"]").expect("get");
    sh.send_line("set greeting hello there").expect("send");
    sh.expect("ok\r\n").expect("set");
    assert_eq!(value_at(&n, "greeting"), Some(json!("hello there")));
    sh.send_line("set m {\"a\": 1}").expect("send");
    sh.expect("ok\r\n").expect("set");
    sh.send_line("delta m {\"b\": 2}").expect("send");
    sh.expect("ok\r\n").expect("delta");
    sh.send_line("get m").expect("send");
    sh.expect("{\"a\":1,\"b\":2}").expect("merged");
    sh.send_line("get nothing").expect("send");
    sh.expect("(not found)").expect("absent");
    sh.send_line("len").expect("send");
    sh.expect("3\r\n").expect("len");
    sh.send_line("delta greeting {\"b\": 2}").expect("send");
    sh.expect("error: ").expect("delta on a str");
    sh.send_line("id").expect("send");
    sh.expect(format!("api:         {}", n.api).as_str())
        .expect("status");
    sh.send_line("watch").expect("send");
    sh.expect("watching updates: on").expect("watch on");
    until("the shell's watch", || {
        (n.metrics().get("rs2p_api_watches", &[]) == 1.0).then_some(())
    });
    assert_eq!(n.json("PUT", "/v1/kv/live", &json!(42)).status, 200);
    sh.expect("update live = 42").expect("watched");
    sh.send_line("del live").expect("send");
    sh.expect("delete live").expect("watched delete");
    sh.send_line("bogus").expect("send");
    sh.expect("unknown command").expect("unknown");
    sh.send_line("quit").expect("send");
    sh.expect(Eof).expect("the shell exits");
    // The node keeps running.
    assert_eq!(n.get("/health").status, 200);
}

/// docs/openapi.json and the server agree: every operation it describes
/// exists and answers a plain request with a status it documents (the
/// fuzzing in scripts/fuzz-api.sh goes much further).
#[test]
fn the_openapi_description_matches_the_server() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    let spec: Json = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(spec["openapi"], "3.0.3");
    let n = Node::start(&[]);
    assert_eq!(
        n.json("PUT", "/v1/kv/spec-probe", &json!({"a": 1})).status,
        200
    );
    let mut operations = 0;
    for (route, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            operations += 1;
            let url = route.replace("{key}", "spec-probe");
            let documented: Vec<u16> = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(|c| c.parse().unwrap())
                .collect();
            let body = match (method.as_str(), route.as_str()) {
                ("post", "/v1/peers") => Some(json!({"host": "127.0.0.1", "port": n.port})),
                ("post", _) => Some(json!({"b": 2})),
                ("put", _) => Some(json!("v")),
                _ => None,
            };
            let m = method.to_uppercase();
            let status = if route == "/v1/watch" {
                match Watch::open(&n.api, "", None) {
                    Ok(_) => 200,
                    Err(r) => r.status,
                }
            } else {
                let b = body.map(|b| b.to_string());
                http(&n.api, &m, &url, &[], b.as_deref().map(str::as_bytes)).status
            };
            assert!(
                documented.contains(&status),
                "{m} {route}: {status} not in {documented:?}"
            );
            assert!(
                status < 300 || method == "post" && route == "/v1/peers",
                "{m} {route}: {status}"
            );
        }
    }
    assert_eq!(operations, 12, "every route of the API is described");
}

/// `rs2p watch` outlives a restart of the node: it reconnects, is told
/// that events may have been missed (`reset`: the node's event ids start
/// over), and goes on with the new node's events.
#[cfg(unix)]
#[test]
fn the_watch_command_reconnects_across_a_restart() {
    let mut n = Node::start(&[]);
    let api = n.api.clone();
    let mut w = Command::new(BIN)
        .args(["watch", "-o", "json", "--count", "2", "--endpoint", &api])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(w.stdout.take().unwrap());
    let next =
        || -> Json { serde_json::from_str(&lines.recv_timeout(T).expect("a watch line")).unwrap() };
    until("the watch to open", || {
        (n.metrics().get("rs2p_api_watches", &[]) == 1.0).then_some(())
    });
    assert_eq!(n.json("PUT", "/v1/kv/one", &json!(1)).status, 200);
    let first = next();
    assert_eq!(
        (first["event"].clone(), first["key"].clone()),
        (json!("update"), json!("one"))
    );

    n.signal(libc::SIGTERM);
    assert_eq!(n.exit_code(), Some(0));
    let again = Node::spawn(&["node", "--api", &api]);
    assert_eq!(again.api, api);
    until("the watch to reconnect", || {
        (again.metrics().get("rs2p_api_watches", &[]) == 1.0).then_some(())
    });
    assert_eq!(again.json("PUT", "/v1/kv/two", &json!(2)).status, 200);
    let reset = next();
    assert_eq!(reset["event"], "reset", "{reset}");
    let second = next();
    assert_eq!(
        (second["event"].clone(), second["key"].clone()),
        (json!("update"), json!("two"))
    );
    let deadline = Instant::now() + T;
    let status = loop {
        if let Some(s) = w.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "watch --count 2 did not exit");
        std::thread::sleep(POLL);
    };
    assert!(status.success());
}
