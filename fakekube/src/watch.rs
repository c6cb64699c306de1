//! WATCH: newline-delimited watch events from the shared history, with bookmarks, selector
//! transitions (an object leaving the selector is DELETED), timeouts and 410 Expired.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use hyper::body::Frame;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::list::Filter;
use crate::route::Target;
use crate::status::ApiError;
use crate::store::{Change, ChangeKind, Store};
use crate::Shared;

/// How often an idle watch with `allowWatchBookmarks=true` gets a BOOKMARK.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);
/// Used when the client sends no `timeoutSeconds` (the real server picks 30-60 minutes).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

#[derive(Debug, Clone)]
pub(crate) struct WatchRequest {
    target: Target,
    filter: Filter,
    /// `None`: resourceVersion absent or "0", or `sendInitialEvents`: synthetic ADDED events
    /// for what exists now, then changes.
    start: Option<u64>,
    bookmarks: bool,
    initial_events_end: bool,
    timeout: Duration,
}

impl WatchRequest {
    pub fn parse(target: &Target, query: &HashMap<String, String>) -> Result<Self, ApiError> {
        let flag = |name: &str| matches!(query.get(name).map(String::as_str), Some("true" | "1"));
        let initial_events_end = flag("sendInitialEvents");
        let start =
            match query.get("resourceVersion").map(String::as_str) {
                _ if initial_events_end => None,
                None | Some("" | "0") => None,
                Some(rv) => Some(rv.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!("invalid resource version {rv:?}"))
                })?),
            };
        let timeout = match query.get("timeoutSeconds") {
            Some(t) => Duration::from_secs(
                t.parse()
                    .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
            ),
            None => DEFAULT_TIMEOUT,
        };
        Ok(WatchRequest {
            target: target.clone(),
            filter: Filter::from_query(target, query)?,
            start,
            bookmarks: flag("allowWatchBookmarks"),
            initial_events_end,
            timeout,
        })
    }
}

/// The response body of a watch: one JSON event per frame, ending at the timeout, after an
/// ERROR event, or when the server stops.
pub(crate) fn stream(
    shared: Arc<Shared>,
    req: WatchRequest,
) -> impl Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + 'static {
    let now = Instant::now();
    let mut cursor = Cursor {
        rv_rx: shared.rv_tx.subscribe(),
        shared,
        deadline: now + req.timeout,
        next_bookmark: now + BOOKMARK_INTERVAL,
        req,
        last_rv: 0,
        queue: VecDeque::new(),
        finished: false,
    };
    cursor.begin();
    futures::stream::unfold(cursor, |mut cursor| async move {
        let event = cursor.next_event().await?;
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Some((Ok(Frame::data(Bytes::from(line))), cursor))
    })
}

struct Cursor {
    shared: Arc<Shared>,
    req: WatchRequest,
    last_rv: u64,
    queue: VecDeque<Value>,
    rv_rx: tokio::sync::watch::Receiver<u64>,
    deadline: Instant,
    next_bookmark: Instant,
    finished: bool,
}

impl Cursor {
    fn begin(&mut self) {
        let shared = Arc::clone(&self.shared);
        let store = shared.lock_store();
        match self.req.start {
            None => {
                for (_, obj) in store.list(self.req.target.rt, self.req.filter.namespace.as_deref())
                {
                    if self.req.filter.matches(&self.req.target, obj) {
                        self.queue.push_back(event("ADDED", obj.clone()));
                    }
                }
                self.last_rv = store.resource_version();
                if self.req.initial_events_end {
                    let mut mark = self.bookmark();
                    mark["object"]["metadata"]["annotations"] =
                        json!({"k8s.io/initial-events-end": "true"});
                    self.queue.push_back(mark);
                }
            }
            Some(rv) => {
                self.last_rv = rv;
                self.catch_up(&store);
            }
        }
    }

    async fn next_event(&mut self) -> Option<Value> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            if self.finished {
                return None;
            }
            let bookmark_at = self.next_bookmark;
            let bookmarks = self.req.bookmarks;
            tokio::select! {
                _ = tokio::time::sleep_until(self.deadline) => self.finished = true,
                _ = tokio::time::sleep_until(bookmark_at), if bookmarks => {
                    self.next_bookmark = Instant::now() + BOOKMARK_INTERVAL;
                    self.refresh();
                    if !self.finished {
                        let mark = self.bookmark();
                        self.queue.push_back(mark);
                    }
                }
                changed = self.rv_rx.changed() => match changed {
                    Ok(()) => self.refresh(),
                    Err(_) => self.finished = true,
                },
            }
        }
    }

    fn refresh(&mut self) {
        let shared = Arc::clone(&self.shared);
        let store = shared.lock_store();
        self.catch_up(&store);
    }

    /// Queues the events after `last_rv`, or 410 Expired if they are no longer kept.
    fn catch_up(&mut self, store: &Store) {
        if self.last_rv < store.floor() {
            let err = ApiError::expired(format!(
                "too old resource version: {} ({})",
                self.last_rv,
                store.floor()
            ));
            self.queue.push_back(event("ERROR", err.to_status()));
            self.finished = true;
            return;
        }
        for change in store.changes_after(self.last_rv) {
            if std::ptr::eq(change.rt, self.req.target.rt) {
                if let Some(e) = self.translate(change) {
                    self.queue.push_back(e);
                }
            }
        }
        self.last_rv = self.last_rv.max(store.resource_version());
    }

    /// The event a filtered watcher sees for a change, judged on the object before and after.
    fn translate(&self, change: &Change) -> Option<Value> {
        let matches = |obj: &Value| self.req.filter.matches(&self.req.target, obj);
        let was = change.old.as_ref().is_some_and(matches);
        let is = matches(&change.new);
        let kind = match change.kind {
            ChangeKind::Deleted if was => "DELETED",
            ChangeKind::Deleted => return None,
            _ if was && is => "MODIFIED",
            _ if is => "ADDED",
            _ if was => "DELETED",
            _ => return None,
        };
        Some(event(kind, change.new.clone()))
    }

    fn bookmark(&self) -> Value {
        let rt = self.req.target.rt;
        event(
            "BOOKMARK",
            json!({
                "kind": rt.kind,
                "apiVersion": rt.api_version(),
                "metadata": {"resourceVersion": self.last_rv.to_string()},
            }),
        )
    }
}

fn event(kind: &str, object: Value) -> Value {
    json!({"type": kind, "object": object})
}
