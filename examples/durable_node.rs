//! A node that keeps its dictionary and its id in a data dir: written,
//! closed, started again with everything there and the same id (so it
//! still holds the leases on its keys). A second node on the same data dir
//! is refused with a typed error naming the path.
//!
//! ```sh
//! cargo run --example durable_node            # in a fresh temporary folder
//! cargo run --example durable_node -- ./data  # in ./data (kept)
//! ```

use rs2p::{Error, StoreError, SyncConfig, SyncSocket, Value};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A test runner may pass options of its own (`--exact NAME`): they
    // are not a folder.
    let given = std::env::args_os()
        .nth(1)
        .filter(|a| !a.to_string_lossy().starts_with('-'))
        .map(std::path::PathBuf::from);
    let dir = given.clone().unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        std::env::temp_dir().join(format!("rs2p-durable-{}-{nanos}", std::process::id()))
    });
    let cfg = || SyncConfig::new("127.0.0.1:0".parse().unwrap()).with_data_dir(&dir);

    let node = SyncSocket::bind(cfg()).await?;
    let id = node.id().to_string();
    // A write returns once it is on disk.
    let runs = node.get_as::<u64>("runs")?.unwrap_or(0) + 1;
    node.set("runs", runs).await?;
    node.apply_delta(
        "profile",
        Value::from_iter([("name", Value::from("durable"))]),
    )
    .await?;
    println!("{id} wrote runs = {runs} in {}", dir.display());

    // While it runs, the data dir is its own.
    match SyncSocket::bind(cfg()).await {
        Err(Error::Store(e @ StoreError::InUse { .. })) => println!("a second node: {e}"),
        Err(e) => return Err(format!("a second node failed otherwise: {e}").into()),
        Ok(_) => return Err("a second node opened the same data dir".into()),
    }

    // Closed and dropped, the data dir is free again.
    node.close().await;
    drop(node);
    let again = SyncSocket::bind(cfg()).await?;
    assert_eq!(again.id(), id, "the same id after a restart");
    assert_eq!(again.get_as::<u64>("runs")?, Some(runs));
    assert_eq!(
        again.metadata("runs").map(|m| m.owner),
        Some(id.clone().into_bytes()),
        "still the owner (and lease holder) of its key"
    );
    println!(
        "started again as {} with {} key(s): runs = {runs}",
        again.id(),
        again.len()
    );
    again.close().await;
    drop(again);
    if given.is_none() {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn runs_to_the_end() {
        super::main().unwrap();
    }
}
