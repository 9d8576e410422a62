//! The interactive shell of `rs2p node` (stdin is a terminal, no --json).
//!
//! Values are typed as JSON (`{"$bin":"<hex>"}` for bytes); text that does
//! not start like JSON is a plain string, and `set -s` stores any text as a
//! string. A key is a word, or a JSON string (`"two words"`) or
//! `{"$bin":"<hex>"}`; keys print the same way, so that what `keys` shows
//! can be typed back. Commands are case-insensitive, Tab completes
//! commands and keys.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rs2p::{MeshEvent, SyncEvent, SyncSocket, Value};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{CompletionType, Config, Editor, ExternalPrinter, Helper};
use serde_json::Value as Json;
use tokio::runtime::Runtime;
use tokio_stream::StreamExt;

use crate::args::HostPort;
use crate::human;
use crate::node::{Node, Signals};
use crate::values::{
    check_integers, glob_match, json_to_key, json_to_value, key_display, key_shell, value_to_json,
};

const PROMPT: &str = "rs2p> ";

const HELP: &str = "\
commands (case-insensitive; Tab completes commands and keys):
  set KEY VALUE        set a key; VALUE is JSON (1, 2.5, true, \"text\", [..], {..})
                       or, when it does not start like JSON, plain text
  set -s KEY TEXT      set a key to TEXT as a string, whatever it looks like
  get KEY              show a key's value
  del KEY              delete a key
  keys [PATTERN]       list the keys (PATTERN: * any text, ? one character)
  items [PATTERN]      list keys, values, owners and how long ago they were written
  len                  count the keys
  delta KEY JSON       merge a JSON object into the map at KEY
  peers                list the connected peers
  connect HOST:PORT    connect to a node and wait for it to join
  watch                toggle printing updates, deletes and peers joining or leaving
  id                   show this node's id, address, subnet and protocol id
  clear                clear the screen
  help                 show this help
  quit                 close the node and exit (also Ctrl-D or Ctrl-C)
KEY is a word, a JSON string (\"two words\") or {\"$bin\":\"<hex>\"}, and keys print
that way too; bytes in values are {\"$bin\":\"<hex>\"}. Text that starts like JSON
({, [, \", a digit, -digit, true, false) must be valid JSON: quote it (\"1.2.3\") or use
set -s. Integers are 64-bit. A null value would delete the key (a nil store is a
delete in this protocol): use del.";

/// The commands, for completion.
const COMMANDS: [&str; 15] = [
    "set", "get", "del", "keys", "items", "len", "delta", "peers", "connect", "watch", "id",
    "clear", "help", "quit", "exit",
];

/// The commands whose first argument is a key.
const KEY_COMMANDS: [&str; 4] = ["set", "get", "del", "delta"];

/// What to do after a command.
enum Flow {
    Continue,
    Clear,
    Quit,
}

/// Tab completion of commands and keys.
struct ShellHelper {
    sync: SyncSocket,
}

impl Completer for ShellHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        Ok(complete(line, pos, || self.sync.keys().collect()))
    }
}

impl Hinter for ShellHelper {
    type Hint = String;
}

impl Highlighter for ShellHelper {}

impl Validator for ShellHelper {}

impl Helper for ShellHelper {}

/// Completions of `line` up to `pos`: the start of the word being
/// completed and the candidates. The first word completes to a command,
/// the second (after a command taking a key) to a key, as the shell prints
/// it.
fn complete(line: &str, pos: usize, keys: impl FnOnce() -> Vec<Vec<u8>>) -> (usize, Vec<Pair>) {
    let before = &line[..pos];
    let trimmed = before.trim_start();
    let offset = before.len() - trimmed.len();
    let pair = |s: &str, space: bool| Pair {
        display: s.to_string(),
        replacement: if space {
            format!("{s} ")
        } else {
            s.to_string()
        },
    };
    match trimmed.find(char::is_whitespace) {
        None => {
            let lower = trimmed.to_lowercase();
            let found = COMMANDS
                .iter()
                .filter(|c| c.starts_with(&lower))
                .map(|c| pair(c, true))
                .collect();
            (offset, found)
        }
        Some(end) => {
            let cmd = trimmed[..end].to_lowercase();
            let rest = &trimmed[end..];
            let arg = rest.trim_start();
            let mut arg_start = offset + end + (rest.len() - arg.len());
            let mut arg = arg;
            if cmd == "set" && (arg.starts_with("-s ") || arg.starts_with("-s\t")) {
                let after = arg[2..].trim_start();
                arg_start += arg.len() - after.len();
                arg = after;
            }
            // Only the first argument, and only while it is being typed.
            if !KEY_COMMANDS.contains(&cmd.as_str())
                || arg.contains(char::is_whitespace) && !arg.starts_with('"')
            {
                return (pos, Vec::new());
            }
            let mut found: Vec<Pair> = keys()
                .iter()
                .map(|k| key_shell(k))
                .filter(|shown| shown.starts_with(arg))
                .map(|shown| pair(&shown, true))
                .collect();
            found.sort_by(|a, b| a.display.cmp(&b.display));
            (arg_start, found)
        }
    }
}

/// Runs the shell until `quit`, Ctrl-D, Ctrl-C at the prompt, or a signal.
pub fn run(rt: &Runtime, node: Node) -> std::process::ExitCode {
    let config = Config::builder()
        .completion_type(CompletionType::List)
        .auto_add_history(false)
        .build();
    let mut editor = match Editor::<ShellHelper, DefaultHistory>::with_config(config) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("rs2p: cannot start the line editor: {e}");
            rt.block_on(node.sync.close());
            return std::process::ExitCode::FAILURE;
        }
    };
    editor.set_helper(Some(ShellHelper {
        sync: node.sync.clone(),
    }));
    let watch = Arc::new(AtomicBool::new(false));
    let events = Events {
        sync: node.sync.events(),
        mesh: node.sync.mesh().events(),
    };
    let me = node.id().to_string();
    match editor.create_external_printer() {
        Ok(printer) => {
            rt.spawn(print_events(events, Some(printer), watch.clone(), me));
        }
        Err(_) => {
            rt.spawn(print_events(events, None::<NoPrinter>, watch.clone(), me));
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
                    Ok(Flow::Clear) => {
                        let _ = editor.clear_screen();
                    }
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

/// The node's dictionary and mesh events.
struct Events {
    sync: rs2p::SyncEventStream,
    mesh: rs2p::EventStream,
}

impl Events {
    /// The next line to print under `watch` (None once both streams end).
    async fn next(&mut self, me: &str) -> Option<String> {
        loop {
            let line = tokio::select! {
                Some(ev) = self.sync.next() => sync_line(ev, me),
                Some(ev) = self.mesh.next() => mesh_line(ev),
                else => return None,
            };
            if let Some(line) = line {
                return Some(line);
            }
        }
    }
}

/// Who wrote an entry, for people: `this node` or a shortened id.
fn owner_text(owner: &[u8], me: &str) -> String {
    if owner == me.as_bytes() {
        "this node".to_string()
    } else {
        human::short_owner(owner)
    }
}

fn sync_line(ev: SyncEvent, me: &str) -> Option<String> {
    Some(match ev {
        SyncEvent::Update { key, value, meta } => format!(
            "[update] {} = {}  (by {})\n",
            key_shell(&key),
            value_to_json(&value),
            owner_text(&meta.owner, me),
        ),
        SyncEvent::Delete { key } => format!("[delete] {}\n", key_shell(&key)),
        SyncEvent::Lagged { missed } => {
            format!("[watch] {missed} changes not shown (too many at once)\n")
        }
        _ => return None,
    })
}

fn mesh_line(ev: MeshEvent) -> Option<String> {
    Some(match ev {
        MeshEvent::PeerJoined { id, addr } => {
            let at = addr.map_or_else(String::new, |(host, port)| {
                format!(" at {}", HostPort { host, port })
            });
            format!("[peer joined] {}{at}\n", human::short_id(&id))
        }
        MeshEvent::PeerLeft { id } => format!("[peer left] {}\n", human::short_id(&id)),
        MeshEvent::PeerRefused { dialed, id, reason } => {
            let at = dialed.map_or_else(String::new, |(host, port)| {
                format!(" at {}", HostPort { host, port })
            });
            format!("[peer refused] {}{at}: {reason}\n", human::short_id(&id))
        }
        _ => return None,
    })
}

async fn print_events<P: ExternalPrinter + Send + 'static>(
    mut events: Events,
    mut printer: Option<P>,
    watch: Arc<AtomicBool>,
    me: String,
) {
    while let Some(text) = events.next(&me).await {
        if !watch.load(Ordering::Relaxed) {
            continue;
        }
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

/// Whether `s` starts like a JSON value (and so must be one): `{`, `[`,
/// `"`, a digit, `-` and a digit, or exactly `true`, `false` or `null`.
fn looks_like_json(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some('{' | '[' | '"') => true,
        Some(c) if c.is_ascii_digit() => true,
        Some('-') => chars.next().is_some_and(|c| c.is_ascii_digit()),
        _ => matches!(s, "true" | "false" | "null"),
    }
}

/// Strict JSON: valid, and integers within 64 bits.
fn json(s: &str, what: &str) -> Result<Value, String> {
    check_integers(s)?;
    let j: Json = serde_json::from_str(s).map_err(|e| {
        format!(
            "{what} is not valid JSON ({e}); to store the text as a string, quote it as a JSON \
             string or use `set -s KEY TEXT`"
        )
    })?;
    json_to_value(&j)
}

/// A typed value: JSON when it starts like JSON (then it must be valid),
/// else the text as a string.
pub(crate) fn value(s: &str) -> Result<Value, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("missing VALUE".into());
    }
    if looks_like_json(s) {
        json(s, "VALUE")
    } else {
        Ok(Value::Str(s.to_string()))
    }
}

fn no_more(rest: &str, usage: &str) -> Result<(), String> {
    if rest.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("usage: {usage}"))
    }
}

/// An optional glob pattern (a word, or a JSON string).
fn pattern(rest: &str, usage: &str) -> Result<Option<String>, String> {
    let rest = rest.trim();
    if rest.is_empty() {
        return Ok(None);
    }
    if rest.starts_with('"') {
        let (k, more) = key(rest).map_err(|e| format!("{e}; usage: {usage}"))?;
        no_more(more, usage)?;
        return Ok(Some(String::from_utf8_lossy(&k).into_owned()));
    }
    let (p, more) = word(rest);
    no_more(more, usage)?;
    Ok(Some(p.to_string()))
}

/// Whether `key` matches the pattern (a missing one matches every key):
/// the key as text, or as the shell prints it.
fn key_matches(pattern: Option<&str>, key: &[u8]) -> bool {
    pattern.is_none_or(|p| glob_match(p, &key_display(key)) || glob_match(p, &key_shell(key)))
}

/// A library error for people.
fn lib_err(node: &Node, e: &rs2p::Error) -> String {
    human::describe(e, node.context())
}

async fn execute(node: &Node, watch: &AtomicBool, line: &str) -> Result<Flow, String> {
    let sync = &node.sync;
    let (cmd, rest) = word(line);
    let err = |e: rs2p::Error| lib_err(node, &e);
    match cmd.to_lowercase().as_str() {
        "set" => {
            let rest = rest.trim_start();
            let (as_string, rest) = match word(rest) {
                ("-s" | "--string", more) => (true, more),
                _ => (false, rest),
            };
            let usage = if as_string {
                "set -s KEY TEXT"
            } else {
                "set KEY VALUE"
            };
            let (k, rest) = key(rest).map_err(|e| format!("{e}; usage: {usage}"))?;
            let v = if as_string {
                let text = rest.trim();
                if text.is_empty() {
                    return Err(format!("missing TEXT; usage: {usage}"));
                }
                Value::Str(text.to_string())
            } else {
                value(rest).map_err(|e| format!("{e}; usage: {usage}"))?
            };
            if v.is_nil() {
                return Err(format!(
                    "null would delete {}: in this protocol storing null (nil) is a delete; use \
                     `del {}` to delete the key, or `set -s {} null` to store the text \"null\"",
                    key_shell(&k),
                    key_shell(&k),
                    key_shell(&k)
                ));
            }
            sync.set(k, v).await.map_err(err)?;
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
            sync.del(k).await.map_err(err)?;
            println!("ok");
        }
        "keys" => {
            let p = pattern(rest, "keys [PATTERN]")?;
            let keys: Vec<Vec<u8>> = sync
                .keys()
                .filter(|k| key_matches(p.as_deref(), k))
                .collect();
            if keys.is_empty() {
                println!("{}", if p.is_some() { "(no match)" } else { "(empty)" });
            }
            for k in keys {
                println!("{}", key_shell(&k));
            }
        }
        "items" => {
            let p = pattern(rest, "items [PATTERN]")?;
            let entries: Vec<_> = sync
                .entries()
                .into_iter()
                .filter(|(k, _, _)| key_matches(p.as_deref(), k))
                .collect();
            if entries.is_empty() {
                println!("{}", if p.is_some() { "(no match)" } else { "(empty)" });
            }
            let now = human::unix_now();
            for (k, v, meta) in entries {
                println!(
                    "{} = {}  (by {}, {})",
                    key_shell(&k),
                    value_to_json(&v),
                    owner_text(&meta.owner, node.id()),
                    human::age(meta.timestamp, now)
                );
            }
        }
        "len" => {
            no_more(rest, "len")?;
            println!("{}", sync.len());
        }
        "delta" => {
            let (k, rest) = key(rest).map_err(|e| format!("{e}; usage: delta KEY JSON"))?;
            let text = rest.trim();
            if text.is_empty() {
                return Err("missing JSON; usage: delta KEY JSON".into());
            }
            let v = json(text, "JSON").map_err(|e| format!("{e}; usage: delta KEY JSON"))?;
            if !matches!(v, Value::Map(_)) {
                return Err(format!(
                    "the delta is {} {}, not a map: give a JSON object ({{\"field\": value, ...}}) \
                     to merge into the map at {}",
                    human::article(v.kind()),
                    v.kind(),
                    key_shell(&k)
                ));
            }
            sync.apply_delta(k, v).await.map_err(err)?;
            println!("ok");
        }
        "peers" => {
            no_more(rest, "peers")?;
            let peers = sync.mesh().peers().await.map_err(err)?;
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
            node.join(&hp).await?;
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
        "clear" => {
            no_more(rest, "clear")?;
            return Ok(Flow::Clear);
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
        assert_eq!(value("trueish").unwrap(), Value::from("trueish"));
        assert_eq!(value("-x").unwrap(), Value::from("-x"));
        assert_eq!(value("null").unwrap(), Value::Nil);
        assert!(value("").is_err());
    }

    #[test]
    fn strict_values() {
        let e = value("{bad json").unwrap_err();
        assert!(e.contains("not valid JSON") && e.contains("set -s"), "{e}");
        assert!(value("[1, 2").is_err());
        assert!(value("1.2.3").is_err());
        let e = value("99999999999999999999").unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        assert!(value("[99999999999999999999]").is_err());
        assert_eq!(value("1e20").unwrap(), Value::F64(1e20));
        assert_eq!(value("-5").unwrap(), Value::from(-5));
    }

    #[test]
    fn completion() {
        let keys = || {
            vec![
                b"user:1".to_vec(),
                b"user:2".to_vec(),
                b"two words".to_vec(),
            ]
        };
        let (start, c) = complete("ke", 2, keys);
        assert_eq!(start, 0);
        assert_eq!(
            c.iter().map(|p| p.replacement.as_str()).collect::<Vec<_>>(),
            ["keys "]
        );
        let (_, c) = complete("DE", 2, keys);
        let got: Vec<_> = c.iter().map(|p| p.display.as_str()).collect();
        assert_eq!(got, ["del", "delta"]);
        let (start, c) = complete("get us", 6, keys);
        assert_eq!(start, 4);
        let got: Vec<_> = c.iter().map(|p| p.display.as_str()).collect();
        assert_eq!(got, ["user:1", "user:2"]);
        let (start, c) = complete("set -s \"tw", 10, keys);
        assert_eq!(start, 7);
        assert_eq!(c[0].replacement, "\"two words\" ");
        // Not the value, nor the argument of other commands.
        assert!(complete("set user:1 us", 13, keys).1.is_empty());
        assert!(complete("connect us", 10, keys).1.is_empty());
    }

    #[test]
    fn patterns() {
        assert!(key_matches(None, b"x"));
        assert!(key_matches(Some("user:*"), b"user:1"));
        assert!(!key_matches(Some("user:*"), b"other"));
        assert!(key_matches(Some("two*"), b"two words"));
        assert!(key_matches(Some("\"two*"), b"two words"));
        assert_eq!(
            pattern(" \"a b*\" ", "keys").unwrap().as_deref(),
            Some("a b*")
        );
        assert!(pattern("a b", "keys").is_err());
    }
}
