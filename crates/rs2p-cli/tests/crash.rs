//! SIGKILL a node that keeps its data in `--data-dir` after 10,000
//! acknowledged writes, restart it: every write is there, the id is the
//! same, it can still change its own keys, and it catches up from a peer.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{unix_now, Node};
use serde_json::json;

#[test]
fn sigkill_after_ten_thousand_acknowledged_writes() {
    let dir =
        std::env::temp_dir().join(format!("rs2p-crash-{}-{}", std::process::id(), unix_now()));
    let dir_s = dir.to_str().unwrap().to_string();
    let mut a = Node::start(&["--data-dir", &dir_s]);
    let id = a.id.clone();
    let mut peer = Node::start(&[]);
    let r = peer
        .call(json!({"op":"connect","host":"127.0.0.1","port":a.port().parse::<u16>().unwrap()}));
    assert_eq!(r["ok"], true, "{r}");

    // 10,000 writes, pipelined; each reply comes once the write is on disk.
    for i in 0..10_000 {
        a.send(json!({"op":"set","key":format!("key{i:05}"),"value":i}));
    }
    a.stdin.flush().unwrap();
    for i in 0..10_000 {
        let r = a.reply();
        assert_eq!(r["ok"], true, "write {i}: {r}");
    }
    // SIGKILL: no chance to flush anything else.
    a.child.kill().unwrap();
    a.child.wait().unwrap();

    // While it is down, the peer learns a key of its own.
    let r = peer.call(json!({"op":"wait","key":"key09999","timeout_ms":20000}));
    assert_eq!(r["ok"], true, "{r}");
    let r = peer.call(json!({"op":"set","key":"written-while-down","value":"hello"}));
    assert_eq!(r["ok"], true, "{r}");

    let peer_addr = peer.addr.clone();
    let mut a = Node::start(&["--data-dir", &dir_s, "--connect", &peer_addr]);
    assert_eq!(a.id, id, "the node came back with another id");
    let r = a.call(json!({"op":"len"}));
    assert!(r["len"].as_u64().unwrap() >= 10_000, "{r}");
    let r = a.call(json!({"op":"dump"}));
    let items = r["items"].as_array().unwrap();
    for i in (0..10_000).step_by(1) {
        let key = format!("key{i:05}");
        let item = items.iter().find(|it| it[0] == key.as_str());
        let item = item.unwrap_or_else(|| panic!("{key} lost"));
        assert_eq!(item[1], json!(i));
        assert_eq!(item[2]["owner"], id.as_str());
    }
    // It catches up from its peer.
    let r =
        a.call(json!({"op":"wait","key":"written-while-down","value":"hello","timeout_ms":20000}));
    assert_eq!(r["ok"], true, "{r}");
    // And still owns its keys: it can change them, the peer cannot.
    let r = a.call(json!({"op":"set","key":"key00000","value":"changed after the crash"}));
    assert_eq!(r["ok"], true, "{r}");
    let r = peer.call(
        json!({"op":"wait","key":"key00000","value":"changed after the crash","timeout_ms":20000}),
    );
    assert_eq!(r["ok"], true, "{r}");
    let t0 = unix_now();
    while unix_now() <= t0 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = peer.call(json!({"op":"set","key":"key00001","value":"theft"}));
    assert_eq!(r["error"]["kind"], "lease_held", "{r}");
    let _ = std::fs::remove_dir_all(&dir);
}
