//! What the client commands print for people: tables and the status.

use super::*;

/// `items` for people.
pub fn items_table(j: &Json) -> String {
    let rows: Vec<Vec<String>> = entries(j)
        .iter()
        .map(|e| {
            vec![
                shown_key(&e["key"]),
                e["value"].to_string(),
                e["owner"].as_str().unwrap_or("").to_string(),
                e["timestamp"].to_string(),
                match e["lease_expires"].as_i64() {
                    Some(t) => lease_left(t),
                    None => "-".into(),
                },
            ]
        })
        .collect();
    if rows.is_empty() {
        return "(empty)\n".into();
    }
    table(&["KEY", "VALUE", "OWNER", "TIMESTAMP", "LEASE"], &rows)
}

fn lease_left(expires: i64) -> String {
    let left = expires - crate::api::unix_now();
    if left <= 0 {
        "expired".into()
    } else {
        format!("{}m{:02}s", left / 60, left % 60)
    }
}

/// `peers` for people.
pub fn peers_table(j: &Json) -> String {
    let rows: Vec<Vec<String>> = j["peers"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .map(|p| {
            vec![
                p["id"].as_str().unwrap_or("").to_string(),
                p["addr"].as_str().unwrap_or("-").to_string(),
                if p["outgoing"] == true {
                    "outgoing"
                } else {
                    "incoming"
                }
                .to_string(),
                p["kind"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "(no peers)\n".into();
    }
    table(&["ID", "ADDR", "DIRECTION", "KIND"], &rows)
}

/// `status` for people.
pub fn status_text(j: &Json) -> String {
    let s = |k: &str| match &j[k] {
        Json::String(s) => s.clone(),
        Json::Null => "-".into(),
        other => other.to_string(),
    };
    let advertised: Vec<String> = j["advertised"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    let store = &j["store"];
    let store_text = match store["state"].as_str() {
        Some("memory") | None => "in memory (no --data-dir)".to_string(),
        Some(state) => format!(
            "{state}, {} ({} commits){}",
            store["data_dir"].as_str().unwrap_or("?"),
            store["commits"],
            store["error"]
                .as_str()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ),
    };
    let uptime = j["uptime_seconds"].as_f64().unwrap_or(0.0) as u64;
    let rows = [
        ("id", s("id")),
        ("version", s("version")),
        ("subnet", s("subnet")),
        ("protocol id", s("protocol_id")),
        ("transport", s("transport")),
        ("leasing", s("leasing")),
        ("listen", s("listen")),
        ("advertised", advertised.join(", ")),
        ("api", s("api")),
        (
            "uptime",
            format!(
                "{}h{:02}m{:02}s",
                uptime / 3600,
                uptime / 60 % 60,
                uptime % 60
            ),
        ),
        (
            "peers",
            format!("{} ({} connections)", s("peers"), s("connections")),
        ),
        ("keys", s("keys")),
        ("tombstones", s("tombstones")),
        ("store", store_text),
    ];
    rows.iter()
        .map(|(k, v)| format!("{:<12} {v}\n", format!("{k}:")))
        .collect()
}
