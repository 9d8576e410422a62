//! The browser page (`rs2p::web`) in headless Chromium, driven over the
//! DevTools protocol: the page joins an rs2p `ws` node that also has a real
//! js2p `ws` node as a peer, and keys travel between all three.
//!
//! Needs `chromium` (scripts/setup-browser.sh installs it) and the reference
//! peers; fails when either is missing, unless RS2P_SKIP_BROWSER=1 /
//! RS2P_SKIP_REFERENCES=1. RS2P_CHROMIUM names another browser binary.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::node::*;
use common::peers::*;
use futures_util::{SinkExt, StreamExt};
use rs2p::{Error, SyncConfig, SyncSocket, Transport, Value};
use serde_json::{json, Value as Json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RS2P_CHROMIUM").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|n| dir.join(n)))
        .find(|p| p.is_file())
}

/// A headless Chromium with a fresh profile; killed and cleaned up on drop.
struct Chromium {
    child: Child,
    dir: PathBuf,
}

impl Chromium {
    fn launch(bin: &Path) -> Chromium {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("rs2p-chromium-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("chromium profile dir");
        let log = File::create(dir.join("stderr.log")).expect("chromium log");
        let child = Command::new(bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", dir.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        Chromium { child, dir }
    }

    fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(self.dir.join("stderr.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// The browser's DevTools WebSocket URL, from the DevToolsActivePort
    /// file Chromium writes once it listens.
    fn devtools_url(&mut self) -> String {
        let file = self.dir.join("DevToolsActivePort");
        let deadline = Instant::now() + T;
        loop {
            if let Ok(text) = std::fs::read_to_string(&file) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    return format!("ws://127.0.0.1:{port}{path}");
                }
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("chromium exited ({st}):\n{}", self.log());
            }
            if Instant::now() > deadline {
                panic!("chromium did not open its DevTools port:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A minimal DevTools protocol client attached to one page.
struct Cdp {
    ws: WebSocketStream<TcpStream>,
    next: u64,
    session: Option<String>,
}

impl Cdp {
    async fn connect(url: &str) -> Cdp {
        let rest = url.trim_start_matches("ws://");
        let host = rest.split('/').next().unwrap_or(rest);
        let tcp = TcpStream::connect(host).await.expect("DevTools port");
        let (ws, _) = tokio_tungstenite::client_async(url, tcp)
            .await
            .expect("DevTools WebSocket");
        Cdp {
            ws,
            next: 1,
            session: None,
        }
    }

    async fn call(&mut self, method: &str, params: Json) -> Json {
        let id = self.next;
        self.next += 1;
        let mut req = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            req["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::text(req.to_string()))
            .await
            .expect("DevTools send");
        let wait = async {
            while let Some(msg) = self.ws.next().await {
                let Ok(Message::Text(text)) = msg else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<Json>(&text) else {
                    continue;
                };
                if v["id"] == json!(id) {
                    return v;
                }
            }
            panic!("DevTools connection closed during {method}");
        };
        let reply = tokio::time::timeout(T, wait)
            .await
            .unwrap_or_else(|_| panic!("no DevTools reply to {method}"));
        if let Some(e) = reply.get("error") {
            panic!("DevTools {method} failed: {e}");
        }
        reply["result"].clone()
    }

    /// Opens `url` in a new tab and attaches to it.
    async fn open(&mut self, url: &str) {
        let target = self.call("Target.createTarget", json!({"url": url})).await;
        let id = target["targetId"].clone();
        let attached = self
            .call(
                "Target.attachToTarget",
                json!({"targetId": id, "flatten": true}),
            )
            .await;
        self.session = attached["sessionId"].as_str().map(str::to_string);
        assert!(self.session.is_some(), "no DevTools session: {attached}");
    }

    /// Evaluates an expression in the page; its JSON value (null on a
    /// script exception, e.g. before the page has loaded).
    async fn eval(&mut self, expr: &str) -> Json {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if r.get("exceptionDetails").is_some() {
            return Json::Null;
        }
        r["result"]["value"].clone()
    }
}

const PAGE_STATE: &str = r#"(() => {
  if (!window.rs2p || !document.getElementById('rows')) return null;
  return {
    id: window.rs2p.id,
    state: window.rs2p.state(),
    peer: window.rs2p.peer(),
    badFrames: window.rs2p.badFrames(),
    error: document.getElementById('error').textContent,
    rows: Array.from(document.querySelectorAll('#rows tr')).map(tr => ({
      key: tr.dataset.key,
      value: tr.querySelector('.value').textContent,
      owner: tr.querySelector('.owner').dataset.full,
      expires: Number(tr.querySelector('.expires').dataset.full),
    })),
  };
})()"#;

fn row<'a>(state: &'a Json, key: &str) -> Option<&'a Json> {
    state["rows"].as_array()?.iter().find(|r| r["key"] == key)
}

/// Sets a key through the page's form; returns the page's error line.
fn form_set(rt: &Rt, cdp: &mut Cdp, key: &str, value: &str) -> String {
    let expr = format!(
        "(() => {{ document.getElementById('key').value = {k}; \
         document.getElementById('value').value = {v}; \
         document.getElementById('set-form').requestSubmit(); \
         return document.getElementById('error').textContent; }})()",
        k = json!(key),
        v = json!(value),
    );
    rt.block(cdp.eval(&expr))
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// For the optional screenshot (RS2P_BROWSER_SCREENSHOT=file.png).
fn base64_decode(text: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let sextets: Vec<u8> = text.bytes().filter_map(val).collect();
    let mut out = Vec::with_capacity(sextets.len() * 3 / 4);
    for chunk in sextets.chunks(4) {
        let mut acc = 0u32;
        for (i, s) in chunk.iter().enumerate() {
            acc |= u32::from(*s) << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("page server");
    s.set_read_timeout(Some(T)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("page server answer");
    out
}

#[test]
fn browser_page_syncs_with_rs2p_and_js2p() {
    if std::env::var("RS2P_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("skipped: RS2P_SKIP_BROWSER=1");
        return;
    }
    let Some(chromium_bin) = find_chromium() else {
        panic!("chromium missing: run scripts/setup-browser.sh (or set RS2P_SKIP_BROWSER=1)");
    };
    if !require_peers() {
        return;
    }
    let started = Instant::now();
    let rt = Rt::new();
    let r: SyncSocket = rt.sync(SyncConfig::new(local()).with_transport(Transport::Ws));
    rt.block(r.set("before", "set before the page loaded"))
        .unwrap();
    let web = rt
        .block(rs2p::web::serve(local(), &r))
        .expect("page server");
    let index = http_get(web.local_addr(), "/");
    assert!(index.starts_with("HTTP/1.1 200 OK"), "{index}");
    assert!(index.contains(r.mesh().protocol_id()));
    assert!(http_get(web.local_addr(), "/nope").starts_with("HTTP/1.1 404"));

    let mut j = RefPeer::spawn(Impl::Js2p, &PeerOpts::sync().transport("ws"));
    j.connect(r.mesh().local_addr().port(), None);
    wait_for("js2p linked", T, || rt.peer_ids(r.mesh()).len() == 1);

    let mut chromium = Chromium::launch(&chromium_bin);
    let url = chromium.devtools_url();
    let mut cdp = rt.block(Cdp::connect(&url));
    rt.block(cdp.open(&format!("http://{}/", web.local_addr())));

    // The page joins (state transfer brings the earlier key).
    let mut page = Json::Null;
    wait_for("page connected with the early key", T, || {
        page = rt.block(cdp.eval(PAGE_STATE));
        page["state"] == "connected" && row(&page, "before").is_some()
    });
    let page_id = page["id"].as_str().unwrap().to_string();
    assert_eq!(page["peer"], json!(r.id()));
    assert!(rt.peer_ids(r.mesh()).contains(&page_id));
    assert_eq!(
        row(&page, "before").unwrap()["value"],
        json!("\"set before the page loaded\"")
    );

    // Live writes from rs2p and js2p reach the page.
    rt.block(r.set("rs-live", "from rs2p")).unwrap();
    rt.block(r.apply_delta("map", Value::from_iter([("a", Value::from(1))])))
        .unwrap();
    j.ok(json!({"op":"set","key":"js-live","value":"from js2p"}));
    wait_for("rs2p and js2p writes in the page", T, || {
        page = rt.block(cdp.eval(PAGE_STATE));
        row(&page, "rs-live").is_some()
            && row(&page, "js-live").is_some()
            && row(&page, "map").is_some()
    });
    let rs_row = row(&page, "rs-live").unwrap();
    assert_eq!(rs_row["value"], json!("\"from rs2p\""));
    assert_eq!(rs_row["owner"], json!(r.id()));
    let ts = r.metadata("rs-live").unwrap().timestamp;
    assert_eq!(rs_row["expires"], json!(ts + 3600));
    let js_row = row(&page, "js-live").unwrap();
    assert_eq!(js_row["value"], json!("\"from js2p\""));
    assert_eq!(js_row["owner"], json!(j.id()));
    assert_eq!(row(&page, "map").unwrap()["value"], json!("{\"a\": 1}"));

    // A key set in the page reaches rs2p and, through it, js2p.
    let err = form_set(&rt, &mut cdp, "page-key", "hello from chromium");
    assert_eq!(err, "");
    wait_for("page write on rs2p", T, || {
        r.get("page-key") == Some(Value::from("hello from chromium"))
    });
    assert_eq!(r.metadata("page-key").unwrap().owner, page_id.as_bytes());
    j.wait_until("page write on js2p", T, |j| {
        j.get("page-key") == Some(json!("hello from chromium"))
    });

    // Leases hold both ways (a write in the same second as the owner's is
    // settled by the owner-id tie-break instead, so step past it).
    let t0 = unix_now();
    wait_for("next second", T, || unix_now() > t0);
    let theirs = rt.block(r.set("page-key", "rs2p tries"));
    assert!(
        matches!(theirs, Err(Error::LeaseHeld { ref owner, .. }) if *owner == page_id),
        "{theirs:?}"
    );
    let err = form_set(&rt, &mut cdp, "rs-live", "page tries");
    assert!(err.contains("is leased by"), "{err}");

    page = rt.block(cdp.eval(PAGE_STATE));
    assert_eq!(page["badFrames"], json!(0));
    assert_eq!(
        row(&page, "rs-live").unwrap()["value"],
        json!("\"from rs2p\"")
    );
    assert_eq!(j.stats().0, 0, "{:?}", j.stats());
    if let Some(path) = std::env::var_os("RS2P_BROWSER_SCREENSHOT") {
        let shot = rt.block(cdp.call("Page.captureScreenshot", json!({"format": "png"})));
        let png = base64_decode(shot["data"].as_str().unwrap_or_default());
        std::fs::write(&path, png).expect("writing the screenshot");
    }
    drop(chromium);
    rt.block(web.close());
    rt.block(r.close());
    eprintln!("browser test took {:?}", started.elapsed());
}
