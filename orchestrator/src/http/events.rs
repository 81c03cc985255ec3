//! `/api/v1/events`: the lifecycle event stream (server-sent events).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use speeddata_api::{ErrorBody, Lagged};
use tokio::sync::{broadcast, watch};

use crate::state::Event;

use super::{error, AppState};

/// How often an idle event stream carries a keep-alive comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Deserialize)]
pub(super) struct EventsQuery {
    since: Option<u64>,
}

#[utoipa::path(get, path = "/api/v1/events", tag = "events",
    params(("since" = Option<u64>, Query, description = "Replay the stored events after this seq (Last-Event-ID wins)")),
    responses((status = 200, description = "Server-sent events: each one's data is an Event, its name the event's `event`; a `lagged` event carries a Lagged", content_type = "text/event-stream", body = Event),
        (status = 400, description = "A bad since or Last-Event-ID", body = ErrorBody)))]
pub(super) async fn events(
    State(s): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let since = match query {
        Ok(Query(q)) => q.since,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    // A reconnecting client's Last-Event-ID is newer than its URL's `since`.
    // An empty one is as good as none.
    let last_id = match headers
        .get("last-event-id")
        .filter(|v| !v.as_bytes().trim_ascii().is_empty())
    {
        None => None,
        Some(v) => match v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) {
            Some(n) => Some(n),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Last-Event-ID must be an event's seq (a number)",
                )
            }
        },
    };
    // Without either, only events to come are sent.
    let (past, rx) = s.fleet.subscribe(last_id.or(since).unwrap_or(u64::MAX));
    let stream = event_stream(past, last_id.or(since), rx, s.closing).map(|item| {
        Ok::<_, Infallible>(match item {
            Item::Event(e) => sse_event(&e),
            Item::Lagged(missed) => SseEvent::default()
                .event("lagged")
                .data(serde_json::to_string(&Lagged { missed }).unwrap_or_default()),
        })
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response()
}

pub(super) fn sse_event(e: &Event) -> SseEvent {
    let data = serde_json::to_string(e).unwrap_or_else(|_| "{}".into());
    SseEvent::default()
        .id(e.seq.to_string())
        .event(e.kind.name())
        .data(data)
}

/// What an event stream carries.
#[derive(Debug)]
pub(super) enum Item {
    Event(Event),
    /// This many events could not be delivered: they fell out of the
    /// history before a replay, or this client read too slowly.
    Lagged(u64),
}

/// Replays `past` (the stored events after `after`, saying first if some
/// were already forgotten), then forwards `rx` until the server closes.
pub(super) fn event_stream(
    past: Vec<Event>,
    after: Option<u64>,
    rx: broadcast::Receiver<Event>,
    closing: watch::Receiver<bool>,
) -> impl Stream<Item = Item> + Send + 'static {
    let mut queue: VecDeque<Item> = VecDeque::with_capacity(past.len() + 1);
    if let (Some(after), Some(first)) = (after, past.first()) {
        let missed = first.seq.saturating_sub(after.saturating_add(1));
        if missed > 0 {
            queue.push_back(Item::Lagged(missed));
        }
    }
    queue.extend(past.into_iter().map(Item::Event));
    futures_util::stream::unfold(
        (queue, rx, closing),
        |(mut queue, mut rx, mut closing)| async move {
            if *closing.borrow() {
                return None;
            }
            if let Some(item) = queue.pop_front() {
                return Some((item, (queue, rx, closing)));
            }
            let next = tokio::select! {
                biased;
                _ = closing.wait_for(|c| *c) => return None,
                r = rx.recv() => r,
            };
            let item = match next {
                Ok(e) => Item::Event(e),
                Err(broadcast::error::RecvError::Lagged(n)) => Item::Lagged(n),
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            Some((item, (queue, rx, closing)))
        },
    )
}
