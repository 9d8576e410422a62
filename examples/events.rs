//! A mesh node's events: peers joining and leaving, and user messages
//! (broadcasts and a whisper), read from `MeshSocket::events()` and
//! `MeshSocket::recv()` with a deadline.
//!
//! ```sh
//! cargo run --example events
//! ```

use std::time::Duration;

use rs2p::{EventStream, MeshConfig, MeshEvent, MeshSocket, Value};
use tokio_stream::StreamExt;

/// How long to wait for an event before giving up.
const DEADLINE: Duration = Duration::from_secs(20);

/// The next event that `pick` maps to something, within the deadline.
async fn next_event<T>(
    events: &mut EventStream,
    what: &str,
    pick: impl Fn(MeshEvent) -> Option<T>,
) -> Result<T, String> {
    let found = tokio::time::timeout(DEADLINE, async {
        while let Some(ev) = events.next().await {
            if let Some(t) = pick(ev) {
                return Some(t);
            }
        }
        None
    });
    match found.await {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Err(format!("the node closed before {what}")),
        Err(_) => Err(format!("no {what} within {DEADLINE:?}")),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let local = "127.0.0.1:0".parse()?;
    let hub = MeshSocket::bind(MeshConfig::new(local)).await?;
    let leaf = MeshSocket::bind(MeshConfig::new(local)).await?;
    let mut events = hub.events();
    let mut leaf_events = leaf.events();

    leaf.connect("127.0.0.1", hub.local_addr().port()).await?;
    let joined = |ev| match ev {
        MeshEvent::PeerJoined { id, addr } => Some((id, addr)),
        _ => None,
    };
    let (id, addr) = next_event(&mut events, "the leaf joining the hub", joined).await?;
    assert_eq!(id, leaf.id());
    println!("peer joined: {id} advertising {addr:?}");
    // Each end counts the link once it has the other's handshake: the leaf
    // broadcasts to its peers, so wait until the hub is one.
    next_event(&mut leaf_events, "the hub joining the leaf", joined).await?;

    // A broadcast floods the mesh; the hub queues it and tells its
    // subscribers.
    leaf.send(vec![Value::from("hello, mesh"), Value::from(42)])
        .await?;
    let message = next_event(&mut events, "a message", |ev| match ev {
        MeshEvent::Message(m) => Some(m),
        _ => None,
    })
    .await?;
    // The packets start with the sub-flag (0: a broadcast).
    let shown: Vec<String> = message.packets().iter().map(Value::to_string).collect();
    println!("message from {}: [{}]", message.sender(), shown.join(", "));
    assert_eq!(
        message.body(),
        &[Value::from("hello, mesh"), Value::from(42)]
    );
    // The same message waits in the queue for recv().
    let queued = tokio::time::timeout(DEADLINE, hub.recv())
        .await?
        .ok_or("the hub closed")?;
    assert_eq!(queued.id(), message.id());

    // A whisper goes to one neighbour and is answered with reply().
    hub.whisper(leaf.id(), vec![Value::from("psst")]).await?;
    let whisper = tokio::time::timeout(DEADLINE, leaf.recv())
        .await?
        .ok_or("the leaf closed")?;
    assert!(!whisper.is_broadcast());
    whisper.reply(vec![Value::from("heard you")]).await?;
    let answer = tokio::time::timeout(DEADLINE, hub.recv())
        .await?
        .ok_or("the hub closed")?;
    let said = answer.body().first().map(Value::to_string);
    println!("reply from the leaf: {}", said.unwrap_or_default());

    leaf.close().await;
    let left = next_event(&mut events, "the peer leaving", |ev| match ev {
        MeshEvent::PeerLeft { id } => Some(id),
        _ => None,
    })
    .await?;
    println!("peer left: {left}");
    hub.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn runs_to_the_end() {
        super::main().unwrap();
    }
}
