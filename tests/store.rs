//! Failures of the durable store (`SyncConfig::data_dir`): each is an
//! `Error::Store` whose `StoreError` names the path and keeps the
//! operating system's or the database's error as its source.
#![cfg(feature = "store")]

mod support;

use std::error::Error as _;
use std::path::{Path, PathBuf};

use rs2p::{Error, StoreError, SyncConfig, SyncSocket};
use support::local;

/// A fresh path under the temporary directory (nothing is created).
fn scratch(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::env::temp_dir().join(format!("rs2p-store-{name}-{}-{nanos}", std::process::id()))
}

async fn bind(dir: &Path) -> rs2p::Result<SyncSocket> {
    SyncSocket::bind(SyncConfig::new(local()).with_data_dir(dir)).await
}

/// The `StoreError` of a failed bind (anything else fails the test).
async fn store_error(dir: &Path) -> StoreError {
    match bind(dir).await {
        Err(Error::Store(e)) => {
            let top = Error::Store(e.clone());
            assert_eq!(top.kind(), "store");
            assert!(
                top.to_string().contains(&dir.display().to_string()),
                "the message names the path: {top}"
            );
            assert!(top.source().is_some(), "{top} keeps its source");
            e
        }
        Err(e) => panic!("{}: expected a store error, got {e:?}", dir.display()),
        Ok(node) => {
            node.close().await;
            panic!("{}: bound", dir.display())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_is_not_a_data_dir() {
    let file = scratch("file");
    std::fs::write(&file, b"not a directory").unwrap();
    let e = store_error(&file).await;
    assert!(
        matches!(&e, StoreError::NotADirectory { path } if *path == file),
        "{e:?}"
    );
    assert_eq!(e.kind(), "not_a_directory");
    assert!(e.to_string().contains("is not a directory"), "{e}");

    // A parent that is a file: the operating system's error is kept.
    let below = file.join("sub");
    let e = store_error(&below).await;
    let io = e
        .io_error()
        .unwrap_or_else(|| panic!("no i/o error: {e:?}"));
    assert_eq!(io.kind(), std::io::ErrorKind::NotADirectory, "{e}");
    assert_eq!(e.path(), below);
    assert!(e.to_string().starts_with("cannot open "), "{e}");
    assert!(
        e.source()
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .is_some(),
        "{e:?}"
    );
    std::fs::remove_file(&file).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_in_use_is_refused_until_released() {
    let dir = scratch("in-use");
    let a = bind(&dir).await.unwrap();
    let e = store_error(&dir).await;
    assert!(
        matches!(&e, StoreError::InUse { path } if *path == dir),
        "{e:?}"
    );
    assert_eq!(e.kind(), "in_use");
    assert!(e.to_string().contains("in use by another node"), "{e}");
    a.close().await;
    drop(a);
    // Released with the last handle: the next node gets it.
    let b = bind(&dir).await.unwrap();
    b.close().await;
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_cannot_be_opened_names_the_file() {
    let dir = scratch("db-dir");
    // The database file is a directory.
    let db = dir.join("rs2p.redb");
    std::fs::create_dir_all(&db).unwrap();
    let e = store_error(&dir).await;
    assert_eq!(e.path(), db, "{e:?}");
    assert!(matches!(e, StoreError::Io { .. }), "{e:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The deepest value a local write accepts is the deepest a peer decodes,
/// and it reads back from the store after a restart (a value one level
/// deeper is refused before anything is written). Earlier the in-memory
/// table took any depth and the store's decoder stopped at 64: an
/// acknowledged write was lost on restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deepest_value_allowed_survives_a_restart() {
    use rs2p::wire::Limits;
    use rs2p::Value;
    let nested = |levels: usize| {
        let mut v = Value::from(1);
        for _ in 1..levels {
            v = Value::Array(vec![v]);
        }
        v
    };
    let max = Limits::default().max_depth;
    let dir = scratch("deep");
    let node = bind(&dir).await.unwrap();
    node.set("deep", nested(max)).await.unwrap();
    let err = node.set("deeper", nested(max + 1)).await.unwrap_err();
    assert!(matches!(err, Error::ValueTooDeep { .. }), "{err:?}");
    node.close().await;
    drop(node);
    let node = bind(&dir).await.unwrap();
    assert_eq!(node.get("deep"), Some(nested(max)));
    assert_eq!(node.get("deeper"), None);
    node.close().await;
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}
