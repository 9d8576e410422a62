//! `rs2p watch`: the node's changes as Server-Sent Events, resumed after
//! the last event seen when the connection drops.

use super::*;

/// One Server-Sent Event.
#[derive(Debug, Default)]
struct Sse {
    id: Option<String>,
    event: String,
    data: String,
}

/// Splits SSE frames off a buffer of received bytes.
#[derive(Default)]
struct SseParser {
    buf: Vec<u8>,
    cur: Sse,
}

impl SseParser {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<Sse>) {
        self.buf.extend_from_slice(bytes);
        while let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]);
            let line = line.strip_suffix('\r').unwrap_or(&line);
            if line.is_empty() {
                let ev = std::mem::take(&mut self.cur);
                if ev.id.is_some() || !ev.event.is_empty() || !ev.data.is_empty() {
                    out.push(ev);
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => self.cur.id = Some(value.to_string()),
                "event" => self.cur.event = value.to_string(),
                "data" => {
                    if !self.cur.data.is_empty() {
                        self.cur.data.push('\n');
                    }
                    self.cur.data.push_str(value);
                }
                _ => {}
            }
        }
    }
}

/// How long `watch` keeps trying to reach a node that went away.
const WATCH_GIVE_UP: Duration = Duration::from_secs(30);

/// Streams the node's changes, resuming after the last event when the
/// connection drops. `emit` gets each line to print and says whether to go
/// on. Returns after `count` events, or when `emit` says stop.
pub async fn watch(
    ep: &Endpoint,
    prefix: &[u8],
    mut last_id: Option<String>,
    count: Option<u64>,
    output: Output,
    mut emit: impl FnMut(String) -> bool,
) -> Result<()> {
    let path = if prefix.is_empty() {
        "/v1/watch".to_string()
    } else {
        format!("/v1/watch?prefix={}", percent_encode(prefix))
    };
    let mut seen = 0u64;
    let mut connected = false;
    let mut backoff = Duration::from_millis(200);
    let mut down_since: Option<tokio::time::Instant> = None;
    loop {
        if count.is_some_and(|c| seen >= c) {
            return Ok(());
        }
        let headers: Vec<(&str, &str)> = last_id
            .as_deref()
            .map(|id| vec![("last-event-id", id)])
            .unwrap_or_default();
        let resp = match ep.send(Method::GET, &path, None, &headers).await {
            Ok(r) => r,
            Err(ClientError::Unreachable(m)) => {
                let since = *down_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= WATCH_GIVE_UP || !connected {
                    return Err(ClientError::Unreachable(m));
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            Err(e) => return Err(e),
        };
        if !resp.status().is_success() {
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let j: Json = serde_json::from_slice(&bytes).unwrap_or(Json::Null);
            let err = j.get("error").cloned().unwrap_or(Json::Null);
            return Err(ClientError::Http {
                status,
                kind: err["kind"].as_str().unwrap_or("http").to_string(),
                message: err["message"]
                    .as_str()
                    .unwrap_or("watch refused")
                    .to_string(),
                body: err,
            });
        }
        connected = true;
        down_since = None;
        backoff = Duration::from_millis(200);
        let mut body = resp.into_body();
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            let Some(data) = frame.data_ref() else {
                continue;
            };
            parser.feed(data, &mut events);
            for ev in events.drain(..) {
                if ev.id.is_some() {
                    last_id.clone_from(&ev.id);
                }
                if ev.event.is_empty() {
                    continue;
                }
                let data: Json = serde_json::from_str(&ev.data).unwrap_or(Json::Null);
                let line = match output {
                    Output::Json => {
                        let mut obj = json!({"event": ev.event, "id": ev.id});
                        if let (Some(o), Json::Object(d)) = (obj.as_object_mut(), data) {
                            o.extend(d);
                        }
                        format!("{obj}\n")
                    }
                    Output::Table => match ev.event.as_str() {
                        "update" => format!(
                            "update {} = {}  (by {}, t={})\n",
                            shown_key(&data["key"]),
                            data["value"],
                            data["owner"].as_str().unwrap_or("?"),
                            data["timestamp"]
                        ),
                        "delete" => format!("delete {}\n", shown_key(&data["key"])),
                        "reset" => {
                            eprintln!(
                                "rs2p: watch: events were missed ({}); list the keys again",
                                data["reason"].as_str().unwrap_or("reset")
                            );
                            continue;
                        }
                        "lagged" => {
                            eprintln!(
                                "rs2p: watch: the node's feed missed {} events",
                                data["missed"]
                            );
                            continue;
                        }
                        _ => continue,
                    },
                };
                if matches!(ev.event.as_str(), "update" | "delete") {
                    seen += 1;
                }
                if !emit(line) {
                    return Ok(());
                }
                if count.is_some_and(|c| seen >= c) {
                    return Ok(());
                }
            }
        }
        // The stream ended: the node closed, or dropped us; resume after
        // the last id seen (the hello carries one).
        down_since.get_or_insert_with(tokio::time::Instant::now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_frames() {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        p.feed(b"retry: 1000\n: hi\n\nid: e-1\nevent: upd", &mut out);
        assert!(out.is_empty());
        p.feed(
            b"ate\ndata: {\"a\":1}\n\nevent: x\r\ndata: 1\r\ndata: 2\r\n\r\n",
            &mut out,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].id.as_deref(), Some("e-1"));
        assert_eq!(out[0].event, "update");
        assert_eq!(out[0].data, "{\"a\":1}");
        assert_eq!(out[1].data, "1\n2");
    }
}
