//! The client commands (`rs2p get`, `set`, `del`, `keys`, `items`, `watch`,
//! `peers`, `connect`, `status`, `shell`): they talk to a running node's
//! HTTP API ([`crate::api`]) through a small HTTP/1.1 client (hyper, one
//! connection per request).
//!
//! Exit codes: 0 ok, 1 error (the node refused the request, or answered
//! with an error), 2 usage, 3 not found, 4 lease held by another node,
//! 5 the node cannot be reached (or stopped answering), 6 unauthorized
//! (a token is missing or wrong).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use axum::body::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::{header, Method, Request, StatusCode};
use serde_json::{json, Value as Json};

use crate::api::percent_encode;
use crate::args::HostPort;
use crate::values::{json_to_key, json_to_value, key_display, BIN_KEY};

mod show;
mod watch;

pub use show::{items_table, peers_table, status_text};
pub use watch::watch;

/// The exit codes of the client commands.
pub mod exit {
    /// The request was carried out.
    pub const OK: u8 = 0;
    /// The node answered with an error, or something else went wrong.
    pub const ERROR: u8 = 1;
    /// Bad arguments.
    pub const USAGE: u8 = 2;
    /// The key (or route) does not exist.
    pub const NOT_FOUND: u8 = 3;
    /// Another node holds the key's lease.
    pub const LEASE_HELD: u8 = 4;
    /// The node cannot be reached, or stopped answering.
    pub const UNREACHABLE: u8 = 5;
    /// The node wants a token (`--token-file`), or another one.
    pub const UNAUTHORIZED: u8 = 6;
}

/// The long help's appendix of the client commands.
pub const CLIENT_HELP: &str = "\
Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 lease held by another node,
5 node unreachable, 6 unauthorized (see --token-file).";

/// How the node is reached (every client command takes these).
#[derive(Clone, Debug, Args)]
pub struct Conn {
    /// The node's API: HOST:PORT or http://HOST:PORT.
    #[arg(long, short = 'e', value_name = "HOST:PORT", default_value = crate::api::DEFAULT_ADDR,
          global = true)]
    pub endpoint: String,
    /// A file whose first line is the API's token (default: the
    /// RS2P_API_TOKEN environment variable, if set).
    #[arg(long, value_name = "FILE", global = true)]
    pub token_file: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
    /// How long one request may take, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30.0, global = true)]
    pub timeout: f64,
}

/// Output formats of the client commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people: values as JSON, columns aligned.
    Table,
    /// The API's JSON (one object per line for `watch`).
    Json,
}

/// The client commands.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Print a key's value (exit 3 when absent). KEY is the text, or
    /// {"$bin":"<hex>"} for raw bytes.
    #[command(after_help = CLIENT_HELP)]
    Get {
        /// The key.
        key: String,
        #[command(flatten)]
        #[allow(missing_docs)]
        conn: Conn,
    },
    /// Set a key. VALUE is JSON ({"$bin":"<hex>"} for bytes), or else
    /// taken as a string. Exit 4 when another node holds the lease.
    #[command(after_help = CLIENT_HELP)]
    Set {
        /// The key.
        key: String,
        /// The value.
        value: String,
        #[command(flatten)]
        #[allow(missing_docs)]
        conn: Conn,
    },
    /// Delete a key (exit 3 when absent, 4 when leased by another node).
    #[command(after_help = CLIENT_HELP)]
    Del {
        /// The key.
        key: String,
        #[command(flatten)]
        #[allow(missing_docs)]
        conn: Conn,
    },
    /// List the keys, or those matching PATTERN (`*` any run, `?` any
    /// one character).
    #[command(after_help = CLIENT_HELP)]
    Keys {
        /// A glob.
        pattern: Option<String>,
        #[command(flatten)]
        #[allow(missing_docs)]
        conn: Conn,
    },
    /// List keys with their values, owners, write times and lease ends.
    #[command(after_help = CLIENT_HELP)]
    Items {
        /// A glob.
        pattern: Option<String>,
        #[command(flatten)]
        #[allow(missing_docs)]
        conn: Conn,
    },
    /// Print updates and deletes (of keys starting with PREFIX) as they
    /// happen. When the connection drops, watch reconnects and resumes
    /// after the last event it printed; it gives up (exit 5) when the node
    /// stays unreachable for 30 s.
    #[command(after_help = CLIENT_HELP)]
    Watch {
        /// Only keys starting with this.
        prefix: Option<String>,
        /// Start after this event id (from an earlier `-o json` watch).
        #[arg(long, value_name = "ID")]
        last_event_id: Option<String>,
        /// Exit after this many events.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        #[command(flatten)]
        #[allow(missing_docs)]
        conn: Conn,
    },
    /// List the node's peers.
    #[command(after_help = CLIENT_HELP)]
    Peers {
        #[command(flatten)]
        #[allow(missing_docs)]
        conn: Conn,
    },
    /// Make the node connect to another node.
    #[command(after_help = CLIENT_HELP)]
    Connect {
        /// The other node's HOST:PORT.
        target: HostPort,
        #[command(flatten)]
        #[allow(missing_docs)]
        conn: Conn,
    },
    /// Show the node's id, addresses, uptime, keys and store.
    #[command(after_help = CLIENT_HELP)]
    Status {
        #[command(flatten)]
        #[allow(missing_docs)]
        conn: Conn,
    },
    /// An interactive shell on a running node (type `help`).
    #[command(after_help = CLIENT_HELP)]
    Shell {
        #[command(flatten)]
        #[allow(missing_docs)]
        conn: Conn,
    },
}

/// A failed client request.
#[derive(Debug)]
pub enum ClientError {
    /// Bad arguments.
    Usage(String),
    /// The node cannot be reached.
    Unreachable(String),
    /// The node answered with an error status.
    Http {
        /// The status.
        status: StatusCode,
        /// The error's kind (`lease_held`, ...), when the body had one.
        kind: String,
        /// The message.
        message: String,
        /// The whole error object.
        body: Json,
    },
    /// Anything else.
    Other(String),
}

impl ClientError {
    /// The exit code for this error.
    pub fn code(&self) -> u8 {
        match self {
            ClientError::Usage(_) => exit::USAGE,
            ClientError::Unreachable(_) => exit::UNREACHABLE,
            ClientError::Http { status, kind, .. } => match (status.as_u16(), kind.as_str()) {
                (401, _) => exit::UNAUTHORIZED,
                (404, _) => exit::NOT_FOUND,
                (409, "lease_held") => exit::LEASE_HELD,
                _ => exit::ERROR,
            },
            ClientError::Other(_) => exit::ERROR,
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Usage(m) | ClientError::Other(m) => f.write_str(m),
            ClientError::Unreachable(m) => write!(f, "cannot reach the node: {m}"),
            ClientError::Http {
                status,
                kind,
                message,
                body,
            } => {
                if kind == "lease_held" {
                    let left = body["expires_in"].as_i64().unwrap_or(0);
                    write!(f, "{message}: {left} s left [lease_held]")
                } else {
                    write!(f, "{message} [{kind}, HTTP {}]", status.as_u16())
                }
            }
        }
    }
}

type Result<T> = std::result::Result<T, ClientError>;

/// Where and how to reach a node's API.
#[derive(Clone, Debug)]
pub struct Endpoint {
    host: String,
    port: u16,
    token: Option<String>,
    timeout: Duration,
}

impl Endpoint {
    /// From the common options (reads the token file).
    pub fn new(conn: &Conn) -> Result<Endpoint> {
        let text = conn.endpoint.trim();
        let text = text.strip_prefix("http://").unwrap_or(text);
        let text = text.strip_suffix('/').unwrap_or(text);
        let hp: HostPort = text
            .parse()
            .map_err(|e| ClientError::Usage(format!("--endpoint: {e}")))?;
        let token = match &conn.token_file {
            Some(path) => Some(crate::api::read_token(path).map_err(ClientError::Usage)?),
            None => std::env::var("RS2P_API_TOKEN")
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
        };
        if !(conn.timeout > 0.0 && conn.timeout.is_finite()) {
            return Err(ClientError::Usage("--timeout must be positive".into()));
        }
        Ok(Endpoint {
            host: hp.host,
            port: hp.port,
            token,
            timeout: Duration::from_secs_f64(conn.timeout.min(1e6)),
        })
    }

    fn authority(&self) -> String {
        HostPort {
            host: self.host.clone(),
            port: self.port,
        }
        .to_string()
    }

    /// Sends a request; returns the response with its body unread.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Json>,
        headers: &[(&str, &str)],
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        let unreachable = |e: &dyn std::fmt::Display| {
            ClientError::Unreachable(format!("{}: {e}", self.authority()))
        };
        let stream = tokio::time::timeout(
            self.timeout,
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| unreachable(&"connection timed out"))?
        .map_err(|e| unreachable(&e))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| unreachable(&e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.authority())
            .header(header::ACCEPT, "application/json");
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let payload = match body {
            Some(j) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(j.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(payload))
            .map_err(|e| ClientError::Other(format!("bad request: {e}")))?;
        tokio::time::timeout(self.timeout, sender.send_request(req))
            .await
            .map_err(|_| unreachable(&"no answer in time"))?
            .map_err(|e| unreachable(&e))
    }

    /// A request whose answer is JSON; error statuses become
    /// [`ClientError::Http`].
    pub async fn call(&self, method: Method, path: &str, body: Option<&Json>) -> Result<Json> {
        let resp = self.send(method, path, body, &[]).await?;
        let status = resp.status();
        let bytes = tokio::time::timeout(self.timeout, resp.into_body().collect())
            .await
            .map_err(|_| ClientError::Unreachable("the answer did not arrive in time".into()))?
            .map_err(|e| ClientError::Unreachable(format!("the answer broke off: {e}")))?
            .to_bytes();
        let j: Json = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            json!({"error": {"kind": "http", "message": String::from_utf8_lossy(&bytes).trim()}})
        });
        if status.is_success() {
            return Ok(j);
        }
        let err = j.get("error").cloned().unwrap_or(Json::Null);
        Err(ClientError::Http {
            status,
            kind: err["kind"].as_str().unwrap_or("http").to_string(),
            message: err["message"]
                .as_str()
                .map_or_else(|| format!("HTTP {status}"), str::to_string),
            body: err,
        })
    }
}

/// A key from the command line: `{"$bin":"<hex>"}` is raw bytes, anything
/// else is the text itself.
pub fn arg_key(s: &str) -> Result<Vec<u8>> {
    if s.trim_start().starts_with('{') && s.contains(BIN_KEY) {
        let j: Json = serde_json::from_str(s)
            .map_err(|e| ClientError::Usage(format!("KEY is not valid JSON: {e}")))?;
        return json_to_key(&j).map_err(ClientError::Usage);
    }
    Ok(s.as_bytes().to_vec())
}

/// A value from the command line: JSON when it parses, else a string.
pub fn arg_value(s: &str) -> Result<Json> {
    match serde_json::from_str::<Json>(s) {
        Ok(j) => {
            json_to_value(&j).map_err(ClientError::Usage)?;
            Ok(j)
        }
        Err(_) => Ok(Json::String(s.to_string())),
    }
}

/// The path of a key.
pub fn key_path(key: &[u8]) -> String {
    format!("/v1/kv/{}", percent_encode(key))
}

/// The query string selecting keys by glob: a prefix (the glob's literal
/// start) and the pattern.
fn pattern_query(pattern: Option<&str>) -> String {
    match pattern {
        None => String::new(),
        Some(p) => {
            let literal: String = p.chars().take_while(|c| *c != '*' && *c != '?').collect();
            format!(
                "?prefix={}&pattern={}",
                percent_encode(literal.as_bytes()),
                percent_encode(p.as_bytes())
            )
        }
    }
}

/// A key as the API shows it (a string, or `{"$bin"}`), for people.
fn shown_key(j: &Json) -> String {
    match json_to_key(j) {
        Ok(k) => key_display(&k),
        Err(_) => j.to_string(),
    }
}

/// Prints rows with aligned columns.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(unicode_width::UnicodeWidthStr::width(c.as_str()));
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            out.push_str(c);
            if i + 1 < n {
                let w = unicode_width::UnicodeWidthStr::width(c);
                out.push_str(&" ".repeat(widths[i] - w + 2));
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

fn print_json(j: &Json) {
    print(&format!("{j}\n"));
}

/// Runs a client command; the exit code is one of [`exit`]'s.
pub fn run(rt: &tokio::runtime::Runtime, cmd: ClientCommand) -> ExitCode {
    let result = match cmd {
        ClientCommand::Shell { conn } => {
            return match Endpoint::new(&conn) {
                Ok(ep) => crate::remote_shell::run(rt, ep),
                Err(e) => fail(&e),
            }
        }
        cmd => rt.block_on(run_one(cmd)),
    };
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => fail(&e),
    }
}

fn fail(e: &ClientError) -> ExitCode {
    eprintln!("rs2p: {e}");
    ExitCode::from(e.code())
}

async fn run_one(cmd: ClientCommand) -> Result<()> {
    match cmd {
        ClientCommand::Get { key, conn } => {
            let ep = Endpoint::new(&conn)?;
            let key = arg_key(&key)?;
            let j = ep.call(Method::GET, &key_path(&key), None).await?;
            match conn.output {
                Output::Json => print_json(&j),
                Output::Table => print(&format!("{}\n", j["value"])),
            }
        }
        ClientCommand::Set { key, value, conn } => {
            let ep = Endpoint::new(&conn)?;
            let key = arg_key(&key)?;
            let value = arg_value(&value)?;
            let j = ep.call(Method::PUT, &key_path(&key), Some(&value)).await?;
            done(conn.output, &j);
        }
        ClientCommand::Del { key, conn } => {
            let ep = Endpoint::new(&conn)?;
            let key = arg_key(&key)?;
            let j = ep.call(Method::DELETE, &key_path(&key), None).await?;
            done(conn.output, &j);
        }
        ClientCommand::Keys { pattern, conn } => {
            let ep = Endpoint::new(&conn)?;
            let path = format!("/v1/kv{}", pattern_query(pattern.as_deref()));
            let j = ep.call(Method::GET, &path, None).await?;
            let keys: Vec<Json> = entries(&j).iter().map(|e| e["key"].clone()).collect();
            match conn.output {
                Output::Json => print_json(&json!({ "keys": keys })),
                Output::Table => {
                    let text: String = keys.iter().map(|k| format!("{}\n", shown_key(k))).collect();
                    print(&text);
                }
            }
        }
        ClientCommand::Items { pattern, conn } => {
            let ep = Endpoint::new(&conn)?;
            let path = format!("/v1/kv{}", pattern_query(pattern.as_deref()));
            let j = ep.call(Method::GET, &path, None).await?;
            match conn.output {
                Output::Json => print_json(&j),
                Output::Table => print(&items_table(&j)),
            }
        }
        ClientCommand::Watch {
            prefix,
            last_event_id,
            count,
            conn,
        } => {
            let ep = Endpoint::new(&conn)?;
            let prefix = prefix.map(|p| p.into_bytes()).unwrap_or_default();
            watch(&ep, &prefix, last_event_id, count, conn.output, |line| {
                print(&line);
                true
            })
            .await?;
        }
        ClientCommand::Peers { conn } => {
            let ep = Endpoint::new(&conn)?;
            let j = ep.call(Method::GET, "/v1/peers", None).await?;
            match conn.output {
                Output::Json => print_json(&j),
                Output::Table => print(&peers_table(&j)),
            }
        }
        ClientCommand::Connect { target, conn } => {
            let ep = Endpoint::new(&conn)?;
            let body = json!({"host": target.host, "port": target.port});
            let j = ep.call(Method::POST, "/v1/peers", Some(&body)).await?;
            match conn.output {
                Output::Json => print_json(&j),
                Output::Table => print(&format!("connected to {target}\n")),
            }
        }
        ClientCommand::Status { conn } => {
            let ep = Endpoint::new(&conn)?;
            let j = ep.call(Method::GET, "/v1/status", None).await?;
            match conn.output {
                Output::Json => print_json(&j),
                Output::Table => print(&status_text(&j)),
            }
        }
        ClientCommand::Shell { .. } => unreachable!("handled by run"),
    }
    Ok(())
}

fn done(output: Output, j: &Json) {
    match output {
        Output::Json => print_json(j),
        Output::Table => print("ok\n"),
    }
}

fn entries(j: &Json) -> &[Json] {
    j["entries"].as_array().map_or(&[], Vec::as_slice)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args() {
        assert_eq!(arg_key("{\"$bin\":\"ff00\"}").unwrap(), vec![0xff, 0]);
        assert_eq!(arg_key("plain key").unwrap(), b"plain key");
        assert!(arg_key("{\"$bin\":\"f\"}").is_err());
        assert_eq!(arg_value("12").unwrap(), json!(12));
        assert_eq!(arg_value("hello world").unwrap(), json!("hello world"));
        assert_eq!(
            pattern_query(Some("a b*")),
            "?prefix=a%20b&pattern=a%20b%2A"
        );
        assert_eq!(key_path(b"a/b"), "/v1/kv/a%2Fb");
    }
}
