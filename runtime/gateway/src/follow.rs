//! `GET /v1/logs?follow=true`: the matching backlog, then every new log line and invocation
//! record as it is committed, one JSON object per line (NDJSON), until the client hangs up or the
//! server shuts down.
//!
//! The feed is subscribed to before the backlog is read, so nothing committed in between is
//! missed; a follower that falls behind the feed catches up from the store with every line and
//! record it missed, page by page, then goes on with the feed (skipping what it already sent).
//! In a cluster the feed is the shared store itself: each batch a gateway ships is announced,
//! and the follower reads what is past its cursor, so it sees the calls of every gateway.

use std::sync::Arc;

use amphi_contract::ResponseBody;
use amphi_store::logs::{InvocationQuery, LogQuery, StoredEvent};
use bytes::Bytes;
use http::{HeaderValue, Response, header};
use http_body::Frame;
use http_body_util::{BodyExt as _, StreamBody};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::platform::{Platform, blocking, internal};

type Chunk = Result<Frame<Bytes>, amphi_contract::BoxError>;

/// Starts following `query` and returns the streaming response.
pub fn stream(platform: Arc<Platform>, query: LogQuery) -> Response<ResponseBody> {
    let (sender, receiver) = mpsc::channel::<Chunk>(256);
    match platform.cluster.as_ref().map(crate::cluster::Cluster::logs_shipped) {
        Some(shipped) => {
            tokio::spawn(follow_cluster(platform, query, shipped, sender));
        }
        None => {
            let feed = platform.logs.subscribe();
            tokio::spawn(follow(platform, query, feed, sender));
        }
    }
    let body = StreamBody::new(ReceiverStream::new(receiver)).boxed_unsync();
    let mut response = Response::new(body);
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    response
}

/// Lines and records a catch-up reads from the store per query.
const CATCH_UP_PAGE: usize = 1000;

/// How far a follower has been sent: the last line and record positions.
#[derive(Default)]
struct Cursor {
    line: u64,
    record: u64,
}

async fn follow(
    platform: Arc<Platform>,
    query: LogQuery,
    mut feed: tokio::sync::broadcast::Receiver<StoredEvent>,
    sender: mpsc::Sender<Chunk>,
) {
    let mut shutdown = platform.shutdown_signal();
    let mut cursor = Cursor::default();
    if !backlog(&platform, &query, &mut cursor, &sender).await {
        return;
    }
    loop {
        let event = tokio::select! {
            _ = shutdown.changed() => return,
            _ = sender.closed() => return,
            event = feed.recv() => event,
        };
        let event = match event {
            Ok(event) => event,
            Err(RecvError::Lagged(_)) => {
                platform.follower_catch_ups.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if !catch_up(&platform, &query, &mut cursor, &sender).await {
                    return;
                }
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let wanted = match &event {
            StoredEvent::Log(line) => {
                let new = line.seq > cursor.line;
                cursor.line = cursor.line.max(line.seq);
                new && matches(&query, &line.function, &line.invocation_id)
            }
            StoredEvent::Invocation(stored) => {
                let new = stored.seq > cursor.record;
                cursor.record = cursor.record.max(stored.seq);
                new && matches(&query, &stored.record.function, &stored.record.id)
            }
        };
        if wanted && sender.send(Ok(Frame::data(event_line(&event)))).await.is_err() {
            return;
        }
    }
}

/// Longest a cluster follower waits for a shipping notice before it reads the shared store anyway
/// (a notice lost with its connection).
const CLUSTER_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Following in a cluster: the lines and records of every gateway, read from the shared store
/// past the cursor whenever a gateway announces a shipped batch.
async fn follow_cluster(
    platform: Arc<Platform>,
    query: LogQuery,
    mut shipped: tokio::sync::watch::Receiver<u64>,
    sender: mpsc::Sender<Chunk>,
) {
    let mut shutdown = platform.shutdown_signal();
    let mut cursor = Cursor::default();
    shipped.mark_unchanged();
    if !backlog(&platform, &query, &mut cursor, &sender).await {
        return;
    }
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = sender.closed() => return,
            _ = shipped.changed() => {}
            () = tokio::time::sleep(CLUSTER_RECHECK) => {}
        }
        if !catch_up(&platform, &query, &mut cursor, &sender).await {
            return;
        }
    }
}

/// Sends the last `query.limit` lines the store has for `query`, and notes where records stand;
/// false when the client is gone or the store failed.
async fn backlog(
    platform: &Arc<Platform>,
    query: &LogQuery,
    cursor: &mut Cursor,
    sender: &mpsc::Sender<Chunk>,
) -> bool {
    let store = platform.log_reader.clone();
    let backlog_query = query.clone();
    let read = blocking(move || {
        let lines = store.logs(&backlog_query).map_err(internal)?;
        let newest =
            store.invocations(&InvocationQuery { limit: 1, ..Default::default() }).map_err(internal)?;
        Ok((lines, newest.first().map_or(0, |r| r.seq)))
    });
    let Ok((lines, newest_record)) = read.await else {
        return false;
    };
    cursor.record = newest_record;
    for line in lines {
        cursor.line = cursor.line.max(line.seq);
        if sender.send(Ok(Frame::data(event_line(&StoredEvent::Log(line))))).await.is_err() {
            return false;
        }
    }
    true
}

/// After the follower fell behind the live feed: sends every line the store committed past
/// `cursor`, then every record (a call's lines before its record, as in the live feed); false
/// when the client is gone or the store failed.
async fn catch_up(
    platform: &Arc<Platform>,
    query: &LogQuery,
    cursor: &mut Cursor,
    sender: &mpsc::Sender<Chunk>,
) -> bool {
    let (store, lines_query) = (platform.log_reader.clone(), query.clone());
    let lines = move |after| {
        store.logs(&LogQuery {
            after_seq: Some(after),
            limit: CATCH_UP_PAGE,
            since_us: None,
            ..lines_query.clone()
        })
    };
    if !send_pages(sender, &mut cursor.line, lines, |line| line.seq, StoredEvent::Log).await {
        return false;
    }
    let (store, function, id) =
        (platform.log_reader.clone(), query.function.clone(), query.invocation_id.clone());
    let records = move |after| {
        store.invocations(&InvocationQuery {
            function: function.clone(),
            id: id.clone(),
            after_seq: Some(after),
            limit: CATCH_UP_PAGE,
            ..Default::default()
        })
    };
    send_pages(sender, &mut cursor.record, records, |record| record.seq, StoredEvent::Invocation).await
}

/// Sends what `read(position)` returns, page after page (moving `position` past each item), until
/// a page is shorter than [`CATCH_UP_PAGE`]; false when the client is gone or the store failed.
async fn send_pages<T: Send + 'static>(
    sender: &mpsc::Sender<Chunk>,
    position: &mut u64,
    read: impl Fn(u64) -> Result<Vec<T>, amphi_store::StoreError> + Send + Sync + 'static,
    seq: fn(&T) -> u64,
    event: fn(T) -> StoredEvent,
) -> bool {
    let read = Arc::new(read);
    loop {
        let (read, after) = (read.clone(), *position);
        let Ok(page) = blocking(move || read(after).map_err(internal)).await else {
            return false;
        };
        let last_page = page.len() < CATCH_UP_PAGE;
        for item in page {
            *position = (*position).max(seq(&item));
            if sender.send(Ok(Frame::data(event_line(&event(item))))).await.is_err() {
                return false;
            }
        }
        if last_page {
            return true;
        }
    }
}

/// A stream item of `logs?follow=true`, as sent (one JSON object per line).
fn event_line(event: &StoredEvent) -> Bytes {
    let mut line = serde_json::to_vec(event).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn matches(query: &LogQuery, function: &str, invocation_id: &str) -> bool {
    query.function.as_deref().is_none_or(|f| f == function)
        && query.invocation_id.as_deref().is_none_or(|i| i == invocation_id)
}
