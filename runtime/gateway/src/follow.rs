//! `GET /v1/logs?follow=true`: the matching backlog, then every new log line and invocation
//! record as it is committed, one JSON object per line (NDJSON), until the client hangs up or the
//! server shuts down.
//!
//! The feed is subscribed to before the backlog is read, so nothing committed in between is
//! missed; a follower that falls behind the feed catches up from the store.

use std::sync::Arc;

use amphi_contract::ResponseBody;
use amphi_store::logs::{LogQuery, StoredEvent};
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
    let feed = platform.logs.subscribe();
    tokio::spawn(follow(platform, query, feed, sender));
    let body = StreamBody::new(ReceiverStream::new(receiver)).boxed_unsync();
    let mut response = Response::new(body);
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    response
}

async fn follow(
    platform: Arc<Platform>,
    query: LogQuery,
    mut feed: tokio::sync::broadcast::Receiver<StoredEvent>,
    sender: mpsc::Sender<Chunk>,
) {
    let mut shutdown = platform.shutdown_signal();
    let mut last_seq = 0;
    if !catch_up(&platform, &query, &mut last_seq, &sender).await {
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
                if !catch_up(
                    &platform,
                    &LogQuery { after_seq: Some(last_seq), ..query.clone() },
                    &mut last_seq,
                    &sender,
                )
                .await
                {
                    return;
                }
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let wanted = match &event {
            StoredEvent::Log(line) => {
                let new = line.seq > last_seq;
                last_seq = last_seq.max(line.seq);
                new && matches(&query, &line.function, &line.invocation_id)
            }
            StoredEvent::Invocation(stored) => matches(&query, &stored.record.function, &stored.record.id),
        };
        if wanted && sender.send(Ok(Frame::data(event_line(&event)))).await.is_err() {
            return;
        }
    }
}

/// Sends what the store has for `query`; false when the client is gone or the store failed.
async fn catch_up(
    platform: &Arc<Platform>,
    query: &LogQuery,
    last_seq: &mut u64,
    sender: &mpsc::Sender<Chunk>,
) -> bool {
    let store = platform.logs.clone();
    let backlog_query = query.clone();
    let Ok(lines) = blocking(move || store.logs(&backlog_query).map_err(internal)).await else {
        return false;
    };
    for line in lines {
        *last_seq = (*last_seq).max(line.seq);
        if sender.send(Ok(Frame::data(event_line(&StoredEvent::Log(line))))).await.is_err() {
            return false;
        }
    }
    true
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
