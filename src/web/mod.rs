//! A browser page that joins a `ws` mesh as a sync node, and the browser
//! bundle it runs on.
//!
//! [`serve`] answers plain HTTP on its own address (separate from the
//! node's port, which only speaks WebSocket):
//!
//! | path | what |
//! |---|---|
//! | `/` | the page: the live dictionary (key, value, owner, lease expiry) with set and delete, the peers, an event log |
//! | `/rs2p.js` | the bundle as a classic script: defines the global `rs2p` (js2p's browser API) and fetches `/rs2p.wasm` beside it; `rs2p.ready` resolves once it is loaded |
//! | `/rs2p.mjs` | the same as an ES module (`import * as rs2p from ".../rs2p.mjs"`) |
//! | `/rs2p.wasm` | the protocol core (crates/rs2p-wasm), WebAssembly |
//!
//! The bundle runs the same protocol core as this crate, compiled to
//! WebAssembly; its JavaScript only carries WebSocket bytes, timers, the
//! clock and random bytes. The bundle files are served with
//! `Access-Control-Allow-Origin: *`, so a page of any origin can load them
//! from the node. The page dials the node that served it at
//! `ws://<page host>:<node port>/`.
//!
//! The bundle is built by `scripts/build-wasm.sh` (which needs the wasm
//! toolchain of `scripts/setup-wasm.sh`) into `src/web/bundle/`, which is
//! committed: building this crate needs no wasm toolchain, and
//! `scripts/build-wasm.sh --check` (run by `scripts/test.sh`) fails when the
//! committed bundle is older than its sources.
//!
//! ```no_run
//! # async fn run() -> rs2p::Result<()> {
//! use rs2p::{SyncConfig, SyncSocket, Transport};
//! let node = SyncSocket::bind(
//!     SyncConfig::new("0.0.0.0:4444".parse().unwrap()).with_transport(Transport::Ws),
//! )
//! .await?;
//! let web = rs2p::web::serve("0.0.0.0:8080".parse().unwrap(), &node).await?;
//! println!("open http://localhost:{}/", web.local_addr().port());
//! # Ok(()) }
//! ```
//!
//! The page is served to anyone who can reach the address, and the mesh it
//! joins has no authentication: bind to a trusted interface.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::SyncSocket;

const PAGE: &str = include_str!("page.html");
/// The bundle: the classic script, the ES module, the WebAssembly core.
pub const BUNDLE_JS: &str = include_str!("bundle/rs2p.js");
/// The bundle as an ES module.
pub const BUNDLE_MJS: &str = include_str!("bundle/rs2p.mjs");
/// The protocol core, WebAssembly.
pub const BUNDLE_WASM: &[u8] = include_bytes!("bundle/rs2p.wasm");
const CONFIG_SLOT: &str = "/*RS2P_CONFIG*/";
/// Requests answered at once; more wait for a slot.
const MAX_CLIENTS: usize = 64;
/// Largest request head read.
const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request and read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The page for a node whose WebSocket port is `ws_port`, on the base
/// subnet `subnet` (without the leasing digit) over `ws`; `leasing` says
/// whether the mesh enforces leases.
pub fn page_html(ws_port: u16, subnet: &str, leasing: bool) -> String {
    let full = format!("{subnet}{}", if leasing { 1 } else { 0 });
    let config = serde_json::json!({
        "wsPort": ws_port,
        "subnet": subnet,
        "protocolId": crate::wire::ids::protocol_id(&full, "ws"),
        "leasing": leasing,
    })
    .to_string()
    // Inside <script>: never let data close the element.
    .replace('<', "\\u003c");
    PAGE.replacen(CONFIG_SLOT, &config, 1)
}

/// A running page server; dropping it (or [`close`](Self::close)) stops it.
#[derive(Debug)]
pub struct WebServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl WebServer {
    /// The address it listens on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and ends the server task.
    pub async fn close(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves the page and the bundle for `node` (which should use
/// [`Transport::Ws`](crate::Transport::Ws)) on `bind`: `GET /` (or
/// `/index.html`) returns the page, `/rs2p.js`, `/rs2p.mjs` and
/// `/rs2p.wasm` the bundle, anything else 404 or 405. The page connects to
/// the node's advertised port on the host the browser used to load the
/// page.
pub async fn serve(bind: SocketAddr, node: &SyncSocket) -> io::Result<WebServer> {
    let page: Arc<str> = page_html(node.mesh().out_addr().1, node.subnet(), node.leasing()).into();
    let listener = TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    let task = tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (stream, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!("page server accept failed: {e}");
                    // Out of file descriptors and the like: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let page = page.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(CLIENT_TIMEOUT, answer(stream, &page)).await;
                drop(permit);
            });
        }
    });
    tracing::info!(%addr, "serving the browser page");
    Ok(WebServer { addr, task })
}

async fn answer(mut stream: TcpStream, page: &str) -> io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= MAX_REQUEST {
            return respond(&mut stream, "431 Request Header Fields Too Large", "", b"").await;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split(['?', '#']).next().unwrap_or("");
    let file = match path {
        "/" | "/index.html" => Some(("text/html; charset=utf-8", page.as_bytes())),
        "/rs2p.js" => Some(("text/javascript; charset=utf-8", BUNDLE_JS.as_bytes())),
        "/rs2p.mjs" => Some(("text/javascript; charset=utf-8", BUNDLE_MJS.as_bytes())),
        "/rs2p.wasm" => Some(("application/wasm", BUNDLE_WASM)),
        _ => None,
    };
    match (method, file) {
        ("GET" | "HEAD", Some((kind, content))) => {
            let body = if method == "HEAD" {
                b"" as &[u8]
            } else {
                content
            };
            let len = content.len();
            // The bundle may be loaded by pages of any origin (scripts,
            // modules and the wasm fetch are CORS requests); the page
            // itself is for this origin only.
            let cors = if path.starts_with("/rs2p.") {
                "Access-Control-Allow-Origin: *\r\nCross-Origin-Resource-Policy: cross-origin\r\n"
            } else {
                ""
            };
            let extra = format!(
                "Content-Type: {kind}\r\nContent-Length: {len}\r\nCache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\n{cors}"
            );
            respond_raw(&mut stream, "200 OK", &extra, body).await
        }
        ("GET" | "HEAD", None) => respond(&mut stream, "404 Not Found", "", b"not found\n").await,
        _ => {
            respond(
                &mut stream,
                "405 Method Not Allowed",
                "Allow: GET, HEAD\r\n",
                b"",
            )
            .await
        }
    }
}

async fn respond(stream: &mut TcpStream, status: &str, extra: &str, body: &[u8]) -> io::Result<()> {
    let extra = format!(
        "{extra}Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
        body.len()
    );
    respond_raw(stream, status, &extra, body).await
}

async fn respond_raw(
    stream: &mut TcpStream,
    status: &str,
    headers: &str,
    body: &[u8],
) -> io::Result<()> {
    let mut out = format!("HTTP/1.1 {status}\r\n{headers}Connection: close\r\n\r\n").into_bytes();
    out.extend_from_slice(body);
    stream.write_all(&out).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_gets_its_config() {
        let html = page_html(4444, "sync", true);
        assert!(!html.contains(CONFIG_SLOT));
        for part in [
            r#""wsPort":4444"#,
            r#""subnet":"sync""#,
            r#""protocolId":"DR68gQTiTksB3b8cJKLt1ZK9EjpNvPpcA4PCQzQSL5zi""#,
            r#""leasing":true"#,
        ] {
            assert!(html.contains(part), "{part}");
        }
        // No protocol code of its own: it runs on the bundle.
        assert!(html.contains("rs2p.js"));
        assert!(!html.contains("sha256"));
    }

    /// The committed bundle is whole: the scripts define the API and point
    /// at the module, and the module is WebAssembly.
    #[test]
    fn bundle_is_embedded() {
        assert_eq!(&BUNDLE_WASM[..4], b"\0asm");
        assert!(BUNDLE_JS.contains("root.rs2p = api"));
        assert!(BUNDLE_JS.contains("rs2p.wasm?"));
        assert!(BUNDLE_MJS.contains("export const sync"));
        let tag = BUNDLE_MJS.split("rs2p.wasm?").nth(1).unwrap_or_default();
        assert_eq!(
            BUNDLE_JS.split("rs2p.wasm?").nth(1).map(|t| &t[..16]),
            Some(&tag[..16])
        );
    }
}
