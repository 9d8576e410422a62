//! Text for people: shortened node ids, times as ages and durations, and
//! library errors with what to do about them. Machine output (`--json`)
//! keeps whole ids and unix times.

use std::time::{SystemTime, UNIX_EPOCH};

use rs2p::{Error, StoreError};

/// Ids longer than this are shortened by [`short_id`].
const SHORT_ID_OVER: usize = 12;

/// A node id for people to read: its first and last four characters
/// (`2ZRC…hhU5`); ids of 12 characters or fewer are shown whole.
pub fn short_id(id: &str) -> String {
    let chars: Vec<char> = id.chars().collect();
    if chars.len() <= SHORT_ID_OVER {
        return id.to_string();
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

/// [`short_id`] of an owner given as bytes (ids are ASCII base58).
pub fn short_owner(owner: &[u8]) -> String {
    short_id(&String::from_utf8_lossy(owner))
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A length of time, rounded to its two largest units: `42 s`, `59 m`,
/// `1 h 5 m`, `3 d 2 h`. Negative lengths count as 0.
pub fn duration(secs: i64) -> String {
    let s = secs.max(0);
    let (d, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s} s"),
        (0, 0, m) => format!("{m} m"),
        (0, h, 0) => format!("{h} h"),
        (0, h, m) => format!("{h} h {m} m"),
        (d, 0, _) => format!("{d} d"),
        (d, h, _) => format!("{d} d {h} h"),
    }
}

/// How long ago the unix time `t` was, seen at `now`: `5 s ago`, `2 h ago`;
/// a time ahead of `now` (another node's clock) is `in 3 s`.
pub fn age(t: i64, now: i64) -> String {
    if t > now {
        format!("in {}", duration(t - now))
    } else {
        format!("{} ago", duration(now - t))
    }
}

/// Where the node runs, for the hints of [`describe`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Context {
    /// The node keeps its data and id in a `--data-dir`.
    pub durable: bool,
}

/// The hint after a refused write when this node has no `--data-dir`: the
/// owner may be this very node before a restart.
const ID_HINT: &str = "if that was this node before a restart: a node keeps its id \
                       (and so its leases) across restarts only with --data-dir";

/// A library error for people: what was wrong, with ids shortened and
/// times as durations, and on a second line what to do when there is
/// something to do.
pub fn describe(e: &Error, ctx: Context) -> String {
    describe_at(e, ctx, unix_now())
}

/// [`describe`] at the unix time `now`.
pub fn describe_at(e: &Error, ctx: Context, now: i64) -> String {
    match e {
        Error::LeaseHeld {
            key,
            owner,
            expires_at,
        } => {
            let mut s = format!(
                "key {key:?} is leased by {} for {} more",
                short_id(owner),
                duration(*expires_at - now)
            );
            if !ctx.durable {
                s.push_str("\n  hint: ");
                s.push_str(ID_HINT);
            }
            s
        }
        Error::NotAMapping { key, found } => not_a_map(key, found),
        Error::Store(se) => store_error(se),
        other => other.to_string(),
    }
}

/// "a" or "an", for a value kind name (`an int`, `a str`).
pub fn article(kind: &str) -> &'static str {
    if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// A delta refused because `key` holds a `found`, not a map.
pub fn not_a_map(key: &str, found: &str) -> String {
    format!(
        "key {key:?} holds {} {found}, not a map: a delta merges into a map (or starts one at a \
         key that is not set)",
        article(found)
    )
}

/// A `--data-dir` failure: the path, the operating system's or the
/// database's reason, and what to do.
pub fn store_error(e: &StoreError) -> String {
    let path = e.path().display();
    let (what, hint) = match e {
        StoreError::NotADirectory { .. } => (
            format!("--data-dir {path} is a file, not a directory"),
            "name a folder (it is created when missing)".to_string(),
        ),
        StoreError::InUse { .. } => (
            format!("--data-dir {path} is in use: another node already uses this data dir"),
            "stop that node, or give this one a --data-dir of its own".to_string(),
        ),
        StoreError::Io { source, .. } => {
            let hint = match source.kind() {
                std::io::ErrorKind::PermissionDenied => {
                    "choose a folder this user may write to, or change its permissions"
                }
                std::io::ErrorKind::NotADirectory => {
                    "a part of the path is a file: name a folder whose parents are folders"
                }
                std::io::ErrorKind::StorageFull => "free some disk space",
                std::io::ErrorKind::ReadOnlyFilesystem => "choose a folder on a writable disk",
                _ => "check the path and its permissions",
            };
            (format!("--data-dir: {e}"), hint.to_string())
        }
        StoreError::Database { .. } => (
            format!("--data-dir: {e}"),
            "the database may be damaged or written by another version of rs2p; move the \
             folder away to start afresh (the node then gets a new id)"
                .to_string(),
        ),
        _ => (format!("--data-dir: {e}"), "check the path".to_string()),
    };
    format!("{what}\n  hint: {hint}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn ids_and_times() {
        let id = "2ZRCwEEaqX7dFhQpGuyXXNZ5ZMWs6u7W5xS2tY4x4rqNLhU3LLPmxYZLfS1GhhU5";
        assert_eq!(short_id(id), "2ZRC…hhU5");
        assert_eq!(short_id("short"), "short");
        assert_eq!(short_owner(id.as_bytes()), "2ZRC…hhU5");
        assert_eq!(duration(0), "0 s");
        assert_eq!(duration(42), "42 s");
        assert_eq!(duration(3599), "59 m");
        assert_eq!(duration(3600), "1 h");
        assert_eq!(duration(3900), "1 h 5 m");
        assert_eq!(duration(90_000), "1 d 1 h");
        assert_eq!(duration(-5), "0 s");
        assert_eq!(age(100, 105), "5 s ago");
        assert_eq!(age(110, 105), "in 5 s");
    }

    #[test]
    fn lease_message() {
        let e = Error::LeaseHeld {
            key: "mine".into(),
            owner: "2ZRCwEEaqX7dFhQpGuyXXNZ5ZMWs6u7W5xS2tY4x4rqNLhU3LLPmxYZLfS1GhhU5".into(),
            expires_at: 1000 + 3570,
        };
        let s = describe_at(&e, Context { durable: false }, 1000);
        assert!(
            s.starts_with("key \"mine\" is leased by 2ZRC…hhU5 for 59 m more"),
            "{s}"
        );
        assert!(s.contains("only with --data-dir"), "{s}");
        let s = describe_at(&e, Context { durable: true }, 1000);
        assert!(!s.contains("hint"), "{s}");
    }

    #[test]
    fn store_messages() {
        let dir = std::path::PathBuf::from("/srv/rs2p");
        let s = store_error(&StoreError::InUse { path: dir.clone() });
        assert!(s.contains("/srv/rs2p"), "{s}");
        assert!(s.contains("another node already uses this data dir"), "{s}");
        let s = store_error(&StoreError::NotADirectory { path: dir.clone() });
        assert!(s.contains("is a file, not a directory"), "{s}");
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let s = store_error(&StoreError::Io {
            path: dir,
            action: "create",
            source: Arc::new(denied),
        });
        assert!(
            s.contains("cannot create /srv/rs2p: permission denied"),
            "{s}"
        );
        assert!(s.contains("this user may write"), "{s}");
    }
}
