//! What the process tests share: an `rs2p node --json` child driven
//! line by line.
#![allow(dead_code)] // each test file uses its own part of it

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use serde_json::Value;

/// How long one reply may take.
pub const T: Duration = Duration::from_secs(30);

pub struct Node {
    pub child: Child,
    pub stdin: ChildStdin,
    pub lines: Receiver<Value>,
    pub addr: String,
    pub id: String,
}

impl Node {
    pub fn start(args: &[&str]) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rs2p"))
            .args(["node", "--json"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start rs2p node");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        let first = lines.recv_timeout(T).expect("listening line");
        assert_eq!(first["event"], "listening", "{first}");
        Node {
            child,
            stdin,
            addr: first["addr"].as_str().unwrap().to_string(),
            id: first["id"].as_str().unwrap().to_string(),
            lines,
        }
    }

    pub fn send(&mut self, req: Value) {
        writeln!(self.stdin, "{req}").unwrap();
    }

    /// The next reply (events are skipped).
    pub fn reply(&mut self) -> Value {
        loop {
            let v = self.lines.recv_timeout(T).expect("a reply in time");
            if v.get("event").is_none() {
                return v;
            }
        }
    }

    pub fn call(&mut self, req: Value) -> Value {
        self.send(req);
        self.stdin.flush().unwrap();
        self.reply()
    }

    pub fn port(&self) -> &str {
        self.addr.rsplit(':').next().unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
