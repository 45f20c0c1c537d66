//! The two streamed answers: watches (JSON lines of ADDED/MODIFIED/DELETED/BOOKMARK/ERROR
//! events) and `pods/log` (`follow`, `tailLines`).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, header};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::Shared;
use super::server::{Body, Query, Target};
use super::status::ApiError;
use super::store::{Change, Event, name_of};
use super::verbs::{self, Filter};

/// How often a watch that asked for bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(2);

type Sender = mpsc::Sender<Result<Bytes, io::Error>>;

fn streamed(content_type: &str) -> (Sender, Response<Body>) {
    let (sender, receiver) = mpsc::channel::<Result<Bytes, io::Error>>(64);
    let response = Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::Stream(receiver))
        .expect("a valid response");
    (sender, response)
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// What a filtered watch shows of a change: an object that starts matching is ADDED, one that
/// stops matching is DELETED, as the real watch cache does.
fn shown(filter: &Filter, event: &Event) -> Option<(&'static str, Value)> {
    let now = filter.matches(&event.object);
    match event.change {
        Change::Added | Change::Deleted => now.then(|| (event.change.name(), event.object.clone())),
        Change::Modified => {
            let before = event.previous.as_ref().is_some_and(|p| filter.matches(p));
            match (before, now) {
                (true, true) => Some(("MODIFIED", event.object.clone())),
                (false, true) => Some(("ADDED", event.object.clone())),
                (true, false) => Some(("DELETED", event.object.clone())),
                (false, false) => None,
            }
        }
    }
}

/// A watch: from `resourceVersion` (or, without one or with `0`, the current objects as ADDED
/// first), until `timeoutSeconds`, the client goes, or the drop fault ends it.
pub fn watch(shared: Arc<Shared>, target: &Target, query: &Query) -> Result<Response<Body>, ApiError> {
    let filter = Filter::new(target, query)?;
    let bookmarks = query.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = query.get("timeoutSeconds").and_then(|v| v.parse::<u64>().ok()).map(Duration::from_secs);
    let since = query.get("resourceVersion").and_then(|v| v.parse::<u64>().ok()).filter(|v| *v != 0);
    let resource = target.resource;
    let (sender, response) = streamed("application/json");
    let mut changed = shared.changed.subscribe();
    tokio::spawn(async move {
        let limit = shared.faults.watch_limit();
        let mut sent = 0_usize;
        let deliver = async |sender: &Sender, bytes: Bytes, count: &mut usize| -> bool {
            if sender.send(Ok(bytes)).await.is_err() {
                return false;
            }
            *count += 1;
            if limit.is_some_and(|n| *count >= n) {
                let _ = sender.send(Err(io::Error::other("watch dropped (injected fault)"))).await;
                return false;
            }
            true
        };
        let mut last = if let Some(version) = since {
            version
        } else {
            let (initial, version) = {
                let store = shared.read();
                let objects: Vec<Value> =
                    store.list(resource, None).into_iter().filter(|o| filter.matches(o)).cloned().collect();
                (objects, store.version())
            };
            for object in initial {
                if !deliver(&sender, line("ADDED", &object), &mut sent).await {
                    return;
                }
            }
            version
        };
        let deadline = tokio::time::Instant::now() + timeout.unwrap_or(Duration::from_secs(3600));
        let mut bookmark = tokio::time::interval_at(tokio::time::Instant::now() + BOOKMARK_EVERY, BOOKMARK_EVERY);
        loop {
            let read = {
                let store = shared.read();
                store.changes_since(resource.kind, last).map(|events| (events, store.version()))
            };
            let (events, version) = match read {
                Ok(read) => read,
                Err(horizon) => {
                    let status = ApiError::expired(last, horizon).to_status();
                    let _ = sender.send(Ok(line("ERROR", &status))).await;
                    return;
                }
            };
            for event in &events {
                if let Some((kind, object)) = shown(&filter, event)
                    && !deliver(&sender, line(kind, &object), &mut sent).await
                {
                    return;
                }
            }
            last = version;
            tokio::select! {
                result = changed.changed() => if result.is_err() { return },
                () = tokio::time::sleep_until(deadline) => return,
                _ = bookmark.tick(), if bookmarks => {
                    let object = json!({"kind": resource.kind, "apiVersion": resource.api_version(),
                        "metadata": {"resourceVersion": last.to_string()}});
                    if sender.send(Ok(line("BOOKMARK", &object))).await.is_err() {
                        return;
                    }
                }
                () = sender.closed() => return,
            }
        }
    });
    Ok(response)
}

/// `pods/<name>/log`: the container's output file, its last `tailLines` lines, followed while
/// the pod runs with `follow=true`.
pub async fn log(shared: Arc<Shared>, target: &Target, query: &Query) -> Result<Response<Body>, ApiError> {
    let pod = verbs::get(&shared, target)?;
    let name = name_of(&pod).to_owned();
    let containers: Vec<String> = pod["spec"]["containers"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c["name"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let container = match (query.get("container"), containers.as_slice()) {
        (Some(c), _) if containers.contains(c) => c.clone(),
        (Some(c), _) => return Err(ApiError::bad_request(format!("container {c} is not valid for pod {name}"))),
        (None, [only]) => only.clone(),
        (None, _) => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            )));
        }
    };
    let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_owned();
    let path = super::kubelet::log_dir(&shared, &uid).join(format!("{container}.log"));
    let Ok(content) = tokio::fs::read(&path).await else {
        let reason = pod["status"]["containerStatuses"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == container.as_str()))
            .and_then(|s| s["state"]["waiting"]["reason"].as_str())
            .unwrap_or("ContainerCreating")
            .to_owned();
        return Err(ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: {reason}"
        )));
    };
    let tail = query.get("tailLines").and_then(|v| v.parse::<usize>().ok());
    let start = tail.map_or(0, |lines| tail_start(&content, lines));
    let first = Bytes::copy_from_slice(&content[start..]);
    let follow = query.get("follow").is_some_and(|v| v == "true");
    let (sender, response) = streamed("text/plain");
    let target = target.clone();
    tokio::spawn(async move {
        if sender.send(Ok(first)).await.is_err() || !follow {
            return;
        }
        let mut offset = content.len();
        loop {
            let running = verbs::get(&shared, &target).is_ok_and(|p| {
                p["metadata"]["uid"] == uid.as_str()
                    && !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
            });
            let Ok(now) = tokio::fs::read(&path).await else { return };
            if now.len() > offset {
                if sender.send(Ok(Bytes::copy_from_slice(&now[offset..]))).await.is_err() {
                    return;
                }
                offset = now.len();
            }
            if !running {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    Ok(response)
}

/// Where the last `lines` lines of `content` start.
fn tail_start(content: &[u8], lines: usize) -> usize {
    let body = content.strip_suffix(b"\n").unwrap_or(content);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == lines {
                return i + 1;
            }
        }
    }
    if lines == 0 { content.len() } else { 0 }
}
