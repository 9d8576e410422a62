//! The interactive shell of `rs2p node` (stdin is a terminal, no --json).
//!
//! Values are typed as JSON (`{"$bin":"<hex>"}` for bytes) and fall back
//! to a plain string when the text is not valid JSON. A key is a word, or a
//! JSON string (`"two words"`) or `{"$bin":"<hex>"}`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rs2p::{SyncEvent, SyncEventStream, Value};
use rustyline::error::ReadlineError;
use rustyline::{DefaultEditor, ExternalPrinter};
use serde_json::Value as Json;
use tokio::runtime::Runtime;
use tokio_stream::StreamExt;

use crate::args::HostPort;
use crate::node::{Node, Signals};
use crate::values::{json_to_key, json_to_value, key_display, value_to_json};

const PROMPT: &str = "rs2p> ";

const HELP: &str = "\
commands:
  set KEY VALUE        set a key (VALUE is JSON, else a plain string)
  get KEY              show a key's value
  del KEY              delete a key
  keys                 list the keys
  items                list keys, values, owners and write times
  len                  count the keys
  delta KEY JSON       merge a JSON object into the map at KEY
  peers                list the connected peers
  connect HOST:PORT    connect to a node
  watch                toggle printing updates and deletes as they happen
  id                   show this node's id, address, subnet and protocol id
  help                 show this help
  quit                 close the node and exit (also Ctrl-D or Ctrl-C)
KEY is a word, a JSON string (\"two words\") or {\"$bin\":\"<hex>\"};
bytes in values are {\"$bin\":\"<hex>\"}.";

/// What to do after a command.
enum Flow {
    Continue,
    Quit,
}

/// Runs the shell until `quit`, Ctrl-D, Ctrl-C at the prompt, or a signal.
pub fn run(rt: &Runtime, node: Node) -> std::process::ExitCode {
    let mut editor = match DefaultEditor::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("rs2p: cannot start the line editor: {e}");
            rt.block_on(node.sync.close());
            return std::process::ExitCode::FAILURE;
        }
    };
    let watch = Arc::new(AtomicBool::new(false));
    let events = node.sync.events();
    match editor.create_external_printer() {
        Ok(printer) => {
            rt.spawn(print_events(events, Some(printer), watch.clone()));
        }
        Err(_) => {
            rt.spawn(print_events(events, None::<NoPrinter>, watch.clone()));
        }
    }

    let mut signals = {
        let _guard = rt.enter();
        Signals::install()
    };
    if let Err(e) = rt.block_on(node.dial()) {
        eprintln!("rs2p: {e}");
        return std::process::ExitCode::FAILURE;
    }

    // A signal while the editor holds the terminal in raw mode: put the
    // terminal back as it was, close the node, exit.
    let saved = term::save();
    let sig_node = node.sync.clone();
    rt.spawn(async move {
        signals.recv().await;
        term::restore(&saved);
        eprintln!("\nrs2p: signal received, closing the node");
        sig_node.close().await;
        std::process::exit(0);
    });

    println!(
        "rs2p node {} listening on {} (subnet {}); type `help` for commands",
        node.id(),
        node.addr(),
        node.subnet
    );
    loop {
        match editor.readline(PROMPT) {
            Ok(line) => {
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                let _ = editor.add_history_entry(line);
                match rt.block_on(execute(&node, &watch, line)) {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Quit) => break,
                    Err(msg) => println!("error: {msg}"),
                }
            }
            Err(ReadlineError::Eof | ReadlineError::Interrupted) => break,
            Err(e) => {
                eprintln!("rs2p: cannot read the terminal: {e}");
                break;
            }
        }
    }
    rt.block_on(node.sync.close());
    std::process::ExitCode::SUCCESS
}

/// A stand-in printer type for when the editor cannot make one.
struct NoPrinter;

impl ExternalPrinter for NoPrinter {
    fn print(&mut self, msg: String) -> rustyline::Result<()> {
        print!("{msg}");
        Ok(())
    }
}

async fn print_events<P: ExternalPrinter + Send + 'static>(
    mut events: SyncEventStream,
    mut printer: Option<P>,
    watch: Arc<AtomicBool>,
) {
    while let Some(ev) = events.next().await {
        if !watch.load(Ordering::Relaxed) {
            continue;
        }
        let text = match ev {
            SyncEvent::Update { key, value, meta } => format!(
                "[update] {} = {}  (by {}, t={})\n",
                key_display(&key),
                value_to_json(&value),
                String::from_utf8_lossy(&meta.owner),
                meta.timestamp
            ),
            SyncEvent::Delete { key } => format!("[delete] {}\n", key_display(&key)),
            _ => continue,
        };
        let printed = printer
            .as_mut()
            .is_some_and(|p| p.print(text.clone()).is_ok());
        if !printed {
            print!("{text}");
        }
    }
}

/// Splits off the first word.
pub(crate) fn word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

/// Splits off a key: a word, or a JSON string or `{"$bin":"<hex>"}`.
pub(crate) fn key(s: &str) -> Result<(Vec<u8>, &str), String> {
    let s = s.trim_start();
    if s.is_empty() {
        return Err("missing KEY".into());
    }
    if s.starts_with('"') || s.starts_with('{') {
        let mut stream = serde_json::Deserializer::from_str(s).into_iter::<Json>();
        let j = match stream.next() {
            Some(Ok(j)) => j,
            Some(Err(e)) => return Err(format!("bad KEY: {e}")),
            None => return Err("missing KEY".into()),
        };
        let rest = &s[stream.byte_offset()..];
        return Ok((json_to_key(&j)?, rest));
    }
    let (k, rest) = word(s);
    Ok((k.as_bytes().to_vec(), rest))
}

/// A typed value: JSON when it parses, else the text as a string.
pub(crate) fn value(s: &str) -> Result<Value, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("missing VALUE".into());
    }
    match serde_json::from_str::<Json>(s) {
        Ok(j) => json_to_value(&j),
        Err(_) => Ok(Value::Str(s.to_string())),
    }
}

fn no_more(rest: &str, usage: &str) -> Result<(), String> {
    if rest.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("usage: {usage}"))
    }
}

fn lib_err(e: rs2p::Error) -> String {
    format!("{e} [{}]", e.kind())
}

async fn execute(node: &Node, watch: &AtomicBool, line: &str) -> Result<Flow, String> {
    let sync = &node.sync;
    let (cmd, rest) = word(line);
    match cmd {
        "set" => {
            let (k, rest) = key(rest).map_err(|e| format!("{e}; usage: set KEY VALUE"))?;
            let v = value(rest).map_err(|e| format!("{e}; usage: set KEY VALUE"))?;
            sync.set(k, v).await.map_err(lib_err)?;
            println!("ok");
        }
        "get" => {
            let (k, rest) = key(rest).map_err(|e| format!("{e}; usage: get KEY"))?;
            no_more(rest, "get KEY")?;
            match sync.get(&k) {
                Some(v) => println!("{}", value_to_json(&v)),
                None => println!("(not found)"),
            }
        }
        "del" => {
            let (k, rest) = key(rest).map_err(|e| format!("{e}; usage: del KEY"))?;
            no_more(rest, "del KEY")?;
            sync.del(k).await.map_err(lib_err)?;
            println!("ok");
        }
        "keys" => {
            no_more(rest, "keys")?;
            let keys: Vec<Vec<u8>> = sync.keys().collect();
            if keys.is_empty() {
                println!("(empty)");
            }
            for k in keys {
                println!("{}", key_display(&k));
            }
        }
        "items" => {
            no_more(rest, "items")?;
            let entries = sync.entries();
            if entries.is_empty() {
                println!("(empty)");
            }
            for (k, v, meta) in entries {
                println!(
                    "{} = {}  (owner {}, t={})",
                    key_display(&k),
                    value_to_json(&v),
                    String::from_utf8_lossy(&meta.owner),
                    meta.timestamp
                );
            }
        }
        "len" => {
            no_more(rest, "len")?;
            println!("{}", sync.len());
        }
        "delta" => {
            let (k, rest) = key(rest).map_err(|e| format!("{e}; usage: delta KEY JSON"))?;
            let v = value(rest).map_err(|e| format!("{e}; usage: delta KEY JSON"))?;
            sync.apply_delta(k, v).await.map_err(lib_err)?;
            println!("ok");
        }
        "peers" => {
            no_more(rest, "peers")?;
            let peers = sync.mesh().peers().await.map_err(lib_err)?;
            if peers.is_empty() {
                println!("(no peers)");
            }
            for p in peers {
                let addr = p.addr.map_or_else(
                    || "-".to_string(),
                    |(host, port)| HostPort { host, port }.to_string(),
                );
                let dir = if p.outgoing { "outgoing" } else { "incoming" };
                println!("{}  {addr}  {dir}", p.id);
            }
        }
        "connect" => {
            let (target, rest) = word(rest);
            no_more(rest, "connect HOST:PORT")?;
            let hp: HostPort = target
                .parse()
                .map_err(|e| format!("{e}; usage: connect HOST:PORT"))?;
            sync.connect(&hp.host, hp.port).await.map_err(lib_err)?;
            println!("connected to {hp}");
        }
        "watch" => {
            no_more(rest, "watch")?;
            let on = !watch.fetch_xor(true, Ordering::Relaxed);
            println!("watching updates: {}", if on { "on" } else { "off" });
        }
        "id" => {
            no_more(rest, "id")?;
            println!("id:          {}", node.id());
            println!("address:     {}", node.addr());
            println!("subnet:      {}", node.subnet);
            println!("protocol id: {}", sync.mesh().protocol_id());
        }
        "help" | "?" => println!("{HELP}"),
        "quit" | "exit" => return Ok(Flow::Quit),
        other => return Err(format!("unknown command `{other}`; type `help`")),
    }
    Ok(Flow::Continue)
}

/// Saving and restoring the terminal's mode around a signal exit.
#[cfg(unix)]
mod term {
    use std::mem::MaybeUninit;

    /// The terminal mode of stdin, when it could be read.
    pub struct Saved(Option<libc::termios>);

    /// Reads the current mode of stdin.
    pub fn save() -> Saved {
        let mut t = MaybeUninit::<libc::termios>::uninit();
        // SAFETY: tcgetattr writes a whole termios into the pointer on
        // success (return 0); we only read it then.
        let rc = unsafe { libc::tcgetattr(libc::STDIN_FILENO, t.as_mut_ptr()) };
        if rc == 0 {
            // SAFETY: initialised by the successful tcgetattr above.
            Saved(Some(unsafe { t.assume_init() }))
        } else {
            Saved(None)
        }
    }

    /// Puts stdin back into the saved mode.
    pub fn restore(saved: &Saved) {
        if let Some(t) = &saved.0 {
            // SAFETY: `t` is a valid termios read by tcgetattr; tcsetattr
            // only reads it.
            unsafe {
                libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, t);
            }
        }
    }
}

#[cfg(not(unix))]
mod term {
    pub struct Saved;
    pub fn save() -> Saved {
        Saved
    }
    pub fn restore(_: &Saved) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        assert_eq!(word("  set k v w"), ("set", " k v w"));
        let (k, rest) = key(" \"two words\" 1").unwrap();
        assert_eq!((k.as_slice(), rest), (&b"two words"[..], " 1"));
        let (k, rest) = key("{\"$bin\":\"ff\"} x").unwrap();
        assert_eq!((k.as_slice(), rest), (&[0xffu8][..], " x"));
        assert_eq!(key("测试 成功").unwrap().0, "测试".as_bytes());
        assert!(key("  ").is_err());
        assert_eq!(value(" 256 ").unwrap(), Value::from(256));
        assert_eq!(value("hello world").unwrap(), Value::from("hello world"));
        assert_eq!(value("\"1\"").unwrap(), Value::from("1"));
        assert!(value("").is_err());
    }
}
