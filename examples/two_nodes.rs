//! Two sync nodes on 127.0.0.1: each writes a key, and each waits for the
//! other's write with `events()` (no polling); then one deletes its key and
//! the other sees the delete.
//!
//! ```sh
//! cargo run --example two_nodes
//! ```

use std::time::Duration;

use rs2p::{SyncConfig, SyncEvent, SyncEventStream, SyncSocket, Value};
use tokio_stream::StreamExt;

/// How long to wait for a change to arrive before giving up.
const DEADLINE: Duration = Duration::from_secs(20);

/// Waits for the first change that `wanted` accepts.
async fn wait_for(
    changes: &mut SyncEventStream,
    what: &str,
    wanted: impl Fn(&SyncEvent) -> bool,
) -> Result<SyncEvent, String> {
    let found = tokio::time::timeout(DEADLINE, async {
        while let Some(ev) = changes.next().await {
            if wanted(&ev) {
                return Some(ev);
            }
        }
        None // the node closed
    });
    match found.await {
        Ok(Some(ev)) => Ok(ev),
        Ok(None) => Err(format!("the node closed before {what}")),
        Err(_) => Err(format!("no {what} within {DEADLINE:?}")),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let local = "127.0.0.1:0".parse()?;
    let a = SyncSocket::bind(SyncConfig::new(local)).await?;
    let b = SyncSocket::bind(SyncConfig::new(local)).await?;
    println!("a is {} on {}", a.id(), a.mesh().local_addr());
    println!("b is {} on {}", b.id(), b.mesh().local_addr());

    // Subscribe before anything happens, so that no change is missed.
    let (mut on_a, mut on_b) = (a.events(), b.events());
    b.connect("127.0.0.1", a.mesh().local_addr().port()).await?;

    a.set("greeting", "hello from a").await?;
    b.set("测试", "成功").await?;
    let is_update = |k: &'static str| move |ev: &SyncEvent| matches!(ev, SyncEvent::Update { key, .. } if key == k.as_bytes());
    if let SyncEvent::Update { value, meta, .. } =
        wait_for(&mut on_b, "a's greeting on b", is_update("greeting")).await?
    {
        assert_eq!(value, Value::from("hello from a"));
        assert_eq!(meta.owner, a.id().as_bytes());
        println!("b got greeting = {value} (owner a)");
    }
    wait_for(&mut on_a, "b's key on a", is_update("测试")).await?;
    println!("a got 测试 = {}", a.get("测试").ok_or("测试 missing on a")?);

    a.del("greeting").await?;
    wait_for(
        &mut on_b,
        "the delete on b",
        |ev| matches!(ev, SyncEvent::Delete { key } if key == b"greeting"),
    )
    .await?;
    assert!(b.get("greeting").is_none());
    println!("b saw greeting deleted; b holds {} key(s)", b.len());

    a.close().await;
    b.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn runs_to_the_end() {
        super::main().unwrap();
    }
}
