//! `rs2p shell --endpoint HOST:PORT`: the interactive shell on a node that
//! runs elsewhere, through its HTTP API. Commands and their syntax are
//! those of `rs2p node`'s shell ([`crate::shell`]'s parsing); `id` shows
//! the node's status.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use hyper::Method;
use rustyline::error::ReadlineError;
use rustyline::{DefaultEditor, ExternalPrinter};
use serde_json::{json, Value as Json};
use tokio::runtime::Runtime;

use crate::args::HostPort;
use crate::client::{self, ClientError, Endpoint, Output};
use crate::shell::{key, value, word};
use crate::values::value_to_json;

const PROMPT: &str = "rs2p> ";

const HELP: &str = "\
commands:
  set KEY VALUE        set a key (VALUE is JSON, else a plain string)
  get KEY              show a key's value
  del KEY              delete a key
  keys                 list the keys
  items                list keys, values, owners, write times and leases
  len                  count the keys
  delta KEY JSON       merge a JSON object into the map at KEY
  peers                list the node's peers
  connect HOST:PORT    make the node connect to another node
  watch                toggle printing updates and deletes as they happen
  id                   show the node's status
  help                 show this help
  quit                 leave the shell (the node keeps running; also Ctrl-D)
KEY is a word, a JSON string (\"two words\") or {\"$bin\":\"<hex>\"};
bytes in values are {\"$bin\":\"<hex>\"}.";

/// Prints lines above the prompt when the editor allows it.
type Printer = Arc<Mutex<Option<Box<dyn ExternalPrinter + Send>>>>;

fn say(printer: &Printer, text: String) {
    let mut p = printer.lock().unwrap_or_else(|e| e.into_inner());
    let printed = p.as_mut().is_some_and(|p| p.print(text.clone()).is_ok());
    if !printed {
        print!("{text}");
    }
}

/// Runs the shell until `quit` or Ctrl-D; exits 5 when the node cannot be
/// reached at the start.
pub fn run(rt: &Runtime, ep: Endpoint) -> ExitCode {
    let status = match rt.block_on(ep.call(Method::GET, "/v1/status", None)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rs2p: {e}");
            return ExitCode::from(e.code());
        }
    };
    let mut editor = match DefaultEditor::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("rs2p: cannot start the line editor: {e}");
            return ExitCode::FAILURE;
        }
    };
    let printer: Printer = Arc::new(Mutex::new(
        editor
            .create_external_printer()
            .ok()
            .map(|p| Box::new(p) as Box<dyn ExternalPrinter + Send>),
    ));
    println!(
        "connected to node {} at {} (subnet {}); type `help` for commands",
        status["id"].as_str().unwrap_or("?"),
        status["listen"].as_str().unwrap_or("?"),
        status["subnet"].as_str().unwrap_or("?"),
    );
    let mut watching: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        match editor.readline(PROMPT) {
            Ok(line) => {
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                let _ = editor.add_history_entry(line);
                if matches!(line, "quit" | "exit") {
                    break;
                }
                if line == "watch" {
                    match watching.take() {
                        Some(task) => {
                            task.abort();
                            println!("watching updates: off");
                        }
                        None => {
                            let (ep, printer) = (ep.clone(), printer.clone());
                            watching = Some(rt.spawn(async move {
                                let p = printer.clone();
                                let r = client::watch(&ep, b"", None, None, Output::Table, |l| {
                                    say(&p, l);
                                    true
                                })
                                .await;
                                if let Err(e) = r {
                                    say(&printer, format!("watch stopped: {e}\n"));
                                }
                            }));
                            println!("watching updates: on");
                        }
                    }
                    continue;
                }
                match rt.block_on(execute(&ep, line)) {
                    Ok(text) => print!("{text}"),
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
    if let Some(task) = watching {
        task.abort();
    }
    ExitCode::SUCCESS
}

fn no_more(rest: &str, usage: &str) -> Result<(), String> {
    if rest.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("usage: {usage}"))
    }
}

fn err(e: ClientError) -> String {
    e.to_string()
}

/// Runs one command; returns what to print.
async fn execute(ep: &Endpoint, line: &str) -> Result<String, String> {
    let (cmd, rest) = word(line);
    Ok(match cmd {
        "set" | "delta" => {
            let usage = if cmd == "set" {
                "set KEY VALUE"
            } else {
                "delta KEY JSON"
            };
            let (k, rest) = key(rest).map_err(|e| format!("{e}; usage: {usage}"))?;
            let v = value(rest).map_err(|e| format!("{e}; usage: {usage}"))?;
            let body = value_to_json(&v);
            if cmd == "set" {
                ep.call(Method::PUT, &client::key_path(&k), Some(&body))
                    .await
                    .map_err(err)?;
            } else {
                let path = format!("{}/delta", client::key_path(&k));
                ep.call(Method::POST, &path, Some(&body))
                    .await
                    .map_err(err)?;
            }
            "ok\n".into()
        }
        "get" => {
            let (k, rest) = key(rest).map_err(|e| format!("{e}; usage: get KEY"))?;
            no_more(rest, "get KEY")?;
            match ep.call(Method::GET, &client::key_path(&k), None).await {
                Ok(j) => format!("{}\n", j["value"]),
                Err(e) if e.code() == client::exit::NOT_FOUND => "(not found)\n".into(),
                Err(e) => return Err(err(e)),
            }
        }
        "del" => {
            let (k, rest) = key(rest).map_err(|e| format!("{e}; usage: del KEY"))?;
            no_more(rest, "del KEY")?;
            ep.call(Method::DELETE, &client::key_path(&k), None)
                .await
                .map_err(err)?;
            "ok\n".into()
        }
        "keys" | "items" | "len" => {
            no_more(rest, cmd)?;
            let j = ep.call(Method::GET, "/v1/kv", None).await.map_err(err)?;
            let entries = j["entries"].as_array().cloned().unwrap_or_default();
            match cmd {
                "len" => format!("{}\n", entries.len()),
                "items" => client::items_table(&j),
                _ if entries.is_empty() => "(empty)\n".into(),
                _ => entries
                    .iter()
                    .map(|e| match &e["key"] {
                        Json::String(s) => format!("{s}\n"),
                        other => format!("{other}\n"),
                    })
                    .collect(),
            }
        }
        "peers" => {
            no_more(rest, "peers")?;
            let j = ep.call(Method::GET, "/v1/peers", None).await.map_err(err)?;
            client::peers_table(&j)
        }
        "connect" => {
            let (target, rest) = word(rest);
            no_more(rest, "connect HOST:PORT")?;
            let hp: HostPort = target
                .parse()
                .map_err(|e| format!("{e}; usage: connect HOST:PORT"))?;
            let body = json!({"host": hp.host, "port": hp.port});
            ep.call(Method::POST, "/v1/peers", Some(&body))
                .await
                .map_err(err)?;
            format!("connected to {hp}\n")
        }
        "id" | "status" => {
            no_more(rest, cmd)?;
            let j = ep
                .call(Method::GET, "/v1/status", None)
                .await
                .map_err(err)?;
            client::status_text(&j)
        }
        "help" | "?" => format!("{HELP}\n"),
        other => return Err(format!("unknown command `{other}`; type `help`")),
    })
}
