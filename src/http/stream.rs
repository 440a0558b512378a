//! `GET /events`: the Server-Sent-Events stream.
//!
//! On connect a subscriber gets `retry:`, then either the latest published
//! event of each selected name (of each collection and name when the stream
//! names collections; a fresh client) or, when it presents the id
//! of the last event it saw, every selected event published since, read
//! from the store, in order. Then the live stream follows. The hub cursor is
//! taken before the store is read and live frames up to the store's head
//! at that moment are skipped, so nothing published meanwhile is missed or
//! sent twice. An unknown id gets a `reset` event, then the latest state.
//! Whatever has queued up since the last write goes out as one chunk.
//!
//! Events of private collections reach only the streams of users who may
//! read them, in the sync, the replay and live; the others see a gap in
//! the ids; a stream that names a private collection it may not read is
//! told so ([`forbidden_notice`]), on connect and whenever that changes. A
//! stream whose token is revoked (logout, password change, disabled
//! account) ends when the new rules reach it.
//!
//! The subscriber is transport-neutral: it hands out the next chunk to
//! write. [`crate::serve`] writes it straight to a connection (the lean
//! path) or, over HTTP/2 and on keep-alive connections, hands it to hyper
//! as the body of [`subscribe`]'s answer, watched for stalls
//! ([`crate::serve::stalls`]).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use uuid::Uuid;

use super::{ApiError, App, AppState, ErrorBody};
use crate::auth::Claims;
use crate::domain::{EventName, Filter, Published};
use crate::hub::{
    About, Extras, Frame, HEARTBEAT, Listener, Permit, Signals, envelope_frame, sse_frame,
};
use crate::metrics::Metrics;
use crate::policy::AccessState;
use crate::presence::Seat;
use crate::store::Store;

/// Told to a stream that asked for signals or presence without naming a
/// collection (they are those of collections).
const NO_COLLECTION: &[u8] =
    b": signals and presence are those of the collections named with collection_id: none named, none will come\n\n";

/// Largest chunk assembled from queued frames before it is written.
const MAX_CHUNK: usize = 64 * 1024;
/// Events read from the store per page while replaying.
const PAGE: usize = 512;
/// The cookie a browser may carry its token in.
pub const TOKEN_COOKIE: &str = "broker_token";

/// What a subscriber asked for in the query string.
#[derive(Default)]
struct Query {
    collections: Vec<Uuid>,
    events: Vec<String>,
    last_event_id: Option<String>,
    token: Option<String>,
    envelope: bool,
    extras: Extras,
}

fn parse_query(query: Option<&str>) -> Result<(Filter, Query), ApiError> {
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, message);
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| bad(format!("invalid query string: {e}")))?;
    let mut q = Query::default();
    for (key, value) in pairs {
        match key.as_str() {
            "collection_id" => q.collections.push(
                value.parse().map_err(|_| bad(format!("collection_id {value:?} is not a UUID")))?,
            ),
            "event" => q.events.push(value),
            "last_event_id" => q.last_event_id = Some(value),
            "token" => q.token = Some(value),
            "envelope" => {
                q.envelope = match value.as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(bad(format!("envelope must be true or false, not {value:?}"))),
                }
            }
            "presence" => {
                q.extras.presence = match value.as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(bad(format!("presence must be true or false, not {value:?}"))),
                }
            }
            "signals" => {
                q.extras.signals = match value.as_str() {
                    "true" | "1" => Signals::All,
                    "others" => Signals::Others,
                    "false" | "0" => Signals::None,
                    _ => {
                        return Err(bad(format!(
                            "signals must be true, others or false, not {value:?}"
                        )));
                    }
                }
            }
            _ => {
                return Err(bad(format!(
                    "unknown parameter {key:?}; /events takes collection_id, event, last_event_id, token, envelope, signals and presence"
                )));
            }
        }
    }
    let filter = Filter::new(std::mem::take(&mut q.collections), std::mem::take(&mut q.events))?;
    Ok((filter, q))
}

/// The subscriber's token, from the `Authorization` header, the `token`
/// query parameter or the cookie, in that order.
fn presented_token<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
) -> Result<Option<&'a str>, ApiError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let token = value.to_str().ok().and_then(|h| h.strip_prefix("Bearer ")).map(str::trim);
        return token.filter(|t| !t.is_empty()).map(Some).ok_or_else(|| {
            ApiError::unauthorized("Authorization header must be 'Bearer <token>'")
        });
    }
    if query.is_some() {
        return Ok(query);
    }
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(TOKEN_COOKIE)?.strip_prefix('='));
    Ok(cookie)
}

/// One Server-Sent Event of `GET /events`, as the API description shows it
/// (frames are written by [`sse_frame`] and [`envelope_frame`]).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct SseEvent {
    /// The publication sequence number: resume after it with `Last-Event-ID`.
    #[schema(pattern = "^[0-9]+$")]
    id: Option<String>,
    /// The event's name (none with `envelope=true`); `reset` after an
    /// unknown last event id; with `envelope=true`, `forbidden` when named
    /// collections may not be read.
    event: Option<String>,
    /// The event's data, JSON on one line. With `envelope=true`:
    /// `{"event", "collection_id", "id", "user_id", "timestamp", "data"}`;
    /// for `reset`: `{"reason", "head"}`; for `forbidden`:
    /// `{"collections", "error"}`.
    data: Option<String>,
    /// The reconnection delay in milliseconds, sent first.
    retry: Option<u64>,
}

/// The response headers of an event stream, on both serving paths.
pub(crate) const STREAM_HEADERS: [(header::HeaderName, &str); 3] = [
    (header::CONTENT_TYPE, "text/event-stream"),
    (header::CACHE_CONTROL, "no-cache"),
    (header::HeaderName::from_static("x-accel-buffering"), "no"),
];

/// Opens an event stream.
#[utoipa::path(get, path = "/events", tag = "stream",
    description = "Server-Sent Events. On connect: `retry:`, then the latest published event of each selected name (of each collection and name when `collection_id` is given), or, with a last event id, every selected event published since. Then each event as it is published: `id:` (its sequence number), `event:` (its name), `data:` (its data). With `envelope=true`, events have no `event:` line and `data:` is `{\"event\", \"collection_id\", \"id\", \"user_id\", \"timestamp\", \"data\"}`, and a named collection the caller may not read is reported by an `event: forbidden` without id, `{\"collections\", \"error\"}` (again, with the new list, when access changes; an empty list: all readable). An unknown last event id gets an `event: reset` first. A comment line every heartbeat interval.",
    params(
        ("collection_id" = Option<Vec<Uuid>>, Query, description = "Only these collections (repeatable)."),
        ("event" = Option<Vec<EventName>>, Query, description = "Only these event names (repeatable)."),
        ("last_event_id" = Option<String>, Query, description = "Resume after this event id (for clients that cannot set the header)."),
        ("token" = Option<String>, Query, description = "A token from `/login`, for clients that cannot set a header."),
        ("envelope" = Option<bool>, Query, description = "Send every event unnamed, its name inside the data, for `EventSource.onmessage`."),
        ("presence" = Option<bool>, Query, description = "Also receive who is present in the named collections: after the sync an `event: presence` frame without id per readable collection, `{\"collection_id\", \"type\": \"list\", \"users\": [{\"user_id\", \"username\", \"connections\", \"since\"}], \"anonymous\"}`, then one per change, `{\"collection_id\", \"type\": \"join\" or \"leave\", \"user_id\", \"username\", \"since\"}`. Only with `collection_id` (without, a comment says that none will come)."),
        ("signals" = Option<String>, Query, description = "`true`: also receive the signals sent to the named collections (`POST /signal`) as `event: signal` frames without id, whose data is `{\"collection_id\", \"event\", \"user_id\", \"data\"}`; `others`: only those other users sent; `false` (the default): none. Only with `collection_id` (without, a comment says that none will come).", pattern = "^(true|false|1|0|others)$"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id; wins over the query parameter."),
    ),
    security((), ("bearer" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "The event stream; it ends when the server shuts down or the token expires.",
            content_type = "text/event-stream", body = SseEvent),
        (status = 400, description = "An unknown or invalid query parameter.", body = ErrorBody),
        (status = 401, description = "A bad or expired token, or none on a private stream.", body = ErrorBody,
            headers(("www-authenticate" = String))),
        (status = 503, description = "The connection limit is reached.", body = ErrorBody,
            headers(("retry-after" = String))),
    ))]
pub async fn subscribe(
    State(app): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let subscriber = open(&app, &headers, query.as_deref()).await?;
    let chunks = futures_util::stream::unfold(subscriber, |mut subscriber| async move {
        subscriber.next_chunk().await.map(|chunk| (chunk, subscriber))
    });
    Ok((STREAM_HEADERS, Body::from_stream(app.stalls.watch(Box::pin(chunks)))).into_response())
}

/// Checks a subscription request (query, token, connection limit) and
/// prepares its stream: the initial sync or the replay position.
pub(crate) async fn open(
    app: &App,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Subscriber, ApiError> {
    let (filter, query) = parse_query(query)?;
    let session = match presented_token(headers, query.token.as_deref())? {
        Some(token) => Some(Box::new(app.session(token).await?)),
        None if app.private_stream => {
            return Err(ApiError::unauthorized(
                "this stream needs a token: Authorization: Bearer, ?token= or the broker_token cookie",
            ));
        }
        None => None,
    };
    app.rules().await?; // the sync must not go out before the rules are known
    let user = session.as_ref().map(|s| s.sub);
    let permit = app.hub.admit().ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "too many open streams; retry later")
    })?;
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .or(query.last_event_id);

    let forbidden = unreadable(&app.feed.rules(), &filter, user);
    let watching = query.extras.presence;
    let seat = match (filter.collections(), &session) {
        ([], _) => None,
        (_, None) => Some(app.presence.sit(None, &readable(&filter, &forbidden), watching)),
        (_, Some(claims)) => {
            let name = match &claims.name {
                Some(name) => name.clone(),
                // A token from before names were in tokens.
                None => {
                    app.store.user_by_id(claims.sub).await?.map(|u| u.username).unwrap_or_default()
                }
            };
            let user = Some((claims.sub, name));
            Some(app.presence.sit(user, &readable(&filter, &forbidden), watching))
        }
    };
    let (ring, delivered) = app.feed.subscribe(&filter, user, query.extras).await?;
    let mut first = Chunk::default();
    first.push(Bytes::from(format!("retry:{}\n\n", app.retry_ms)));
    if query.extras != Extras::default() && filter.collections().is_empty() {
        // Valid, but nothing will come of it: said where a developer looks.
        first.push(Bytes::from_static(NO_COLLECTION));
    }
    if !forbidden.is_empty() {
        first.push(forbidden_notice(&forbidden, user, query.envelope));
    }
    let mut replay = None;
    let known = match last_event_id.as_deref().map(str::parse::<i64>) {
        Some(Ok(seq)) if (0..=delivered).contains(&seq) => Some(seq),
        // Seen on another node, not handed to this node's hub yet: it
        // comes through the hub, like everything after it.
        Some(Ok(seq)) if seq > delivered && seq <= app.store.head().await? => Some(seq),
        _ => None,
    };
    let head = match (known, last_event_id.is_some()) {
        // Events up to the cursor's number come from the store; those after
        // it, from the hub. Nothing to read if the client is up to date.
        (Some(seq), _) => {
            replay = (seq < delivered).then_some(seq);
            seq.max(delivered)
        }
        (None, reset) => {
            let reader = Reader { user, envelope: query.envelope };
            sync(&app.feed, &filter, delivered, &mut first, reset, reader).await?
        }
    };
    if watching {
        let collections = readable(&filter, &forbidden);
        app.presence.load(&collections).await?;
        for collection in collections {
            first.push(app.presence.list_frame(collection));
        }
    }
    let expiry = session.as_ref().map(|s| s.exp).map(|exp| {
        let clock = app.clock.clone();
        let at = exp.saturating_mul(1000);
        Box::pin(async move {
            while clock.now_millis() < at {
                clock.sleep_until(at).await;
            }
        }) as Pin<Box<dyn Future<Output = ()> + Send>>
    });
    Ok(Subscriber {
        ring,
        store: app.store.clone(),
        filter,
        head,
        replay,
        first: first.take(),
        expiry,
        pending: Chunk::default(),
        busy: false,
        closed: false,
        envelope: query.envelope,
        forbidden,
        session,
        seat,
        permit,
    })
}

/// The collections `filter` names except the `forbidden` ones.
fn readable(filter: &Filter, forbidden: &[Uuid]) -> Vec<Uuid> {
    filter.collections().iter().filter(|c| !forbidden.contains(c)).copied().collect()
}

/// The collections `filter` names that `user` may not read.
fn unreadable(rules: &AccessState, filter: &Filter, user: Option<Uuid>) -> Box<[Uuid]> {
    filter.collections().iter().filter(|c| !rules.may_read(c, user)).copied().collect()
}

/// Tells a client which of the collections it named it may not read, so
/// that a missing login does not look like an empty collection. The stream
/// stays open: access granted later starts delivery, and a new notice.
/// In an envelope stream, an `event:forbidden` without an id (the resume
/// position does not move) whose data is `{"collections", "error"}`; an
/// empty list says every named collection is readable now. In a plain
/// stream, whose event names are the users' own, a comment, which every
/// SSE client (1.x's included) ignores.
fn forbidden_notice(collections: &[Uuid], user: Option<Uuid>, envelope: bool) -> Bytes {
    let error = match (collections.is_empty(), user) {
        (true, _) => serde_json::Value::Null,
        (false, None) => {
            "not logged in: a private collection is read by its owner and members only".into()
        }
        (false, Some(_)) => {
            "not a member: a private collection is read by its owner and members only".into()
        }
    };
    if !envelope {
        let ids: Vec<String> = collections.iter().map(Uuid::to_string).collect();
        return Bytes::from(match error.as_str() {
            Some(error) => format!(": forbidden: {} ({error})\n\n", ids.join(" ")),
            None => ": readable: every collection named\n\n".to_owned(),
        });
    }
    let data = serde_json::json!({"collections": collections, "error": error});
    Bytes::from(format!("event:forbidden\ndata:{data}\n\n"))
}

/// Adds the latest-state sync (after a `reset` event if asked) to `chunk`;
/// returns the head it is consistent with. `delivered` is the subscriber's
/// [`crate::feed::Feed::subscribe`] number.
async fn sync(
    feed: &crate::feed::Feed,
    filter: &Filter,
    delivered: i64,
    chunk: &mut Chunk,
    reset: bool,
    reader: Reader,
) -> Result<i64, ApiError> {
    let snapshot = feed.snapshot(filter, delivered).await?;
    // The state is the latest event of each name (1.x), or of each
    // collection and name when the stream names collections.
    let per_collection = !filter.collections().is_empty();
    fn key(p: &Published, per_collection: bool) -> (Option<Uuid>, &str) {
        (per_collection.then_some(p.event.collection_id), p.event.event.as_str())
    }
    let mut latest: HashMap<(Option<Uuid>, &str), &Published> =
        snapshot.latest.iter().map(|p| (key(p, per_collection), p)).collect();
    // The private collections this reader may read have a latest state of
    // their own, merged in; what was published after the shared snapshot
    // comes live.
    let private = match reader.user {
        Some(user) => private_state(feed, filter, user).await?,
        None => Vec::new(),
    };
    for p in private.iter().filter(|p| p.seq <= snapshot.head) {
        let slot = latest.entry(key(p, per_collection)).or_insert(p);
        if slot.seq < p.seq {
            *slot = p;
        }
    }
    let mut latest: Vec<&Published> = latest.into_values().collect();
    latest.sort_by_key(|p| p.seq);
    if reset {
        chunk.push(Bytes::from(format!(
            "id:{}\nevent:reset\ndata:{{\"reason\":\"unknown last event id\",\"head\":{}}}\n\n",
            snapshot.head, snapshot.head
        )));
    }
    for published in latest {
        chunk.push(frame(published, reader.envelope));
    }
    Ok(snapshot.head)
}

/// The latest state of the private collections `user` may read (among
/// those `filter` selects).
async fn private_state(
    feed: &crate::feed::Feed,
    filter: &Filter,
    user: Uuid,
) -> Result<Vec<Published>, ApiError> {
    let rules = feed.rules();
    let selected =
        |id: &&Uuid| filter.collections().is_empty() || filter.collections().contains(id);
    let readable: Vec<Uuid> =
        rules.private_readable(user).iter().filter(selected).copied().collect();
    if readable.is_empty() {
        return Ok(Vec::new());
    }
    Ok(feed.store().snapshot(&filter.within(readable), false).await?.latest)
}

/// Who reads a stream, and how.
#[derive(Clone, Copy)]
struct Reader {
    /// The subscriber's user, if it presented a token.
    user: Option<Uuid>,
    /// Whether events go out as [`envelope_frame`]s.
    envelope: bool,
}

/// A published event as this subscriber reads it.
fn frame(p: &Published, envelope: bool) -> Bytes {
    if envelope {
        let (event, data) = (&p.event, p.event.data.get().as_bytes());
        envelope_frame(p.seq, &event.collection_id, &event.event, &About::of(event), data)
    } else {
        Bytes::from(sse_frame(p))
    }
}

/// One open stream's state.
pub(crate) struct Subscriber {
    ring: Listener,
    store: Arc<dyn Store>,
    filter: Filter,
    /// Events up to this sequence number come from the store, not the ring.
    head: i64,
    /// While replaying: the last sequence number sent.
    replay: Option<i64>,
    /// Sent before anything else.
    first: Option<Bytes>,
    /// When the subscriber's token expires.
    expiry: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// Frames taken from the ring and not yet handed out.
    pending: Chunk,
    /// Whether an event went out since the last heartbeat.
    busy: bool,
    closed: bool,
    /// Whether events go out as [`envelope_frame`]s.
    envelope: bool,
    /// The collections the filter names that the subscriber may not read
    /// (see [`forbidden_notice`]).
    forbidden: Box<[Uuid]>,
    /// The subscriber's token, if it presented one (boxed: most have none).
    session: Option<Box<Claims>>,
    /// Its place in the presence of the collections it names.
    seat: Option<Seat>,
    permit: Permit,
}

impl Subscriber {
    /// Takes the first chunk (the `retry:` line and the sync), if not yet sent.
    pub(crate) fn take_first(&mut self) -> Option<Bytes> {
        self.first.take()
    }

    /// The next bytes to write, or `None` to end the stream.
    pub(crate) async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        if let Some(after) = self.replay {
            // Boxed: a rare state that every stream would otherwise carry.
            if let Some(chunk) = Box::pin(self.replay_page(after)).await {
                return Some(chunk);
            }
        }
        self.live().await
    }

    /// The subscriber's user, if it presented a token.
    fn user(&self) -> Option<Uuid> {
        self.session.as_ref().map(|s| s.sub)
    }

    /// The next missed events from the store that this subscriber may read.
    async fn replay_page(&mut self, mut after: i64) -> Option<Bytes> {
        let mut chunk = Chunk::default();
        while chunk.is_empty() {
            match self.store.replay(after, self.head, &self.filter, PAGE).await {
                Ok(page) => {
                    self.replay = page.last().map(|p| p.seq).filter(|_| page.len() == PAGE);
                    let rules = self.permit.hub().access.current();
                    page.iter()
                        .filter(|p| rules.may_read(&p.event.collection_id, self.user()))
                        .for_each(|p| chunk.push(frame(p, self.envelope)));
                }
                Err(e) => {
                    tracing::error!(error = %e, "replay failed; closing the stream");
                    self.closed = true;
                    self.replay = None;
                    return Some(Bytes::from_static(
                        b": disconnected: server error, reconnect to resume\n\n",
                    ));
                }
            }
            match self.replay {
                Some(next) => after = next,
                None => break,
            }
        }
        chunk.take()
    }

    /// Waits for at least one live frame, then takes every frame queued.
    ///
    /// Cancel-safe: frames taken from the ring wait in `self.pending`. Once
    /// the first frame is in, the others already queued join it without
    /// waiting: by the time a stream runs, a burst has mostly arrived. (A
    /// yield here, for more of the burst, cost a second poll per stream and
    /// event: one event to 18,000 streams was about 10 % slower with it and
    /// the burst no faster, BENCHMARKS.md.)
    async fn live(&mut self) -> Option<Bytes> {
        let (mut delivered, mut skipped) = (0, 0);
        while !self.closed && self.pending.len() < MAX_CHUNK {
            let next = if self.pending.is_empty() {
                // Counted before waiting: a stream that looked at frames and
                // wrote none still shows what it cost.
                Metrics::add(&self.permit.hub().metrics.skipped, std::mem::take(&mut skipped));
                match &mut self.expiry {
                    Some(expiry) => tokio::select! {
                        frame = self.ring.recv() => frame,
                        () = expiry.as_mut() => {
                            self.pending.push(Bytes::from_static(b": disconnected: token expired\n\n"));
                            self.closed = true;
                            break;
                        }
                    },
                    None => self.ring.recv().await,
                }
            } else {
                match self.ring.try_recv() {
                    Ok(frame) => Ok(frame),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                    Err(TryRecvError::Closed) => Err(RecvError::Closed),
                }
            };
            match next.as_deref() {
                Ok(frame @ Frame::Event { seq, collection_id, name, bytes, private, .. }) => {
                    // A public event costs no permission check at all.
                    if *seq > self.head
                        && self.filter.matches(collection_id, name)
                        && private.as_ref().is_none_or(|rule| rule.may_read(self.user()))
                    {
                        let envelope = self.envelope.then(|| frame.envelope()).flatten();
                        self.pending.push(envelope.unwrap_or_else(|| bytes.clone()));
                        self.busy = true;
                        delivered += 1;
                    } else {
                        skipped += 1;
                    }
                }
                // Signals and presence: the hub checked that this stream
                // asked for them and may read them.
                Ok(Frame::Fleeting(bytes)) => {
                    self.pending.push(bytes.clone());
                    self.busy = true;
                }
                // A stream that carried events since the last heartbeat
                // needs none: heartbeats cost nothing while traffic flows.
                Ok(Frame::Heartbeat) if std::mem::take(&mut self.busy) => {}
                Ok(Frame::Heartbeat) => self.pending.push(Bytes::from_static(HEARTBEAT)),
                Ok(Frame::Access(rules)) => {
                    if let Some(why) = self.session.as_deref().and_then(|s| rules.refuses(s)) {
                        self.pending.push(Bytes::from(format!(": disconnected: {why}\n\n")));
                        self.closed = true;
                        // Logged out or disabled: gone at once, not after the grace.
                        if let Some(seat) = &mut self.seat {
                            seat.leave_now();
                        }
                    }
                    let forbidden = unreadable(rules, &self.filter, self.user());
                    if forbidden != self.forbidden {
                        self.pending.push(forbidden_notice(&forbidden, self.user(), self.envelope));
                        if let Some(seat) = &mut self.seat {
                            seat.set(&readable(&self.filter, &forbidden));
                        }
                        self.forbidden = forbidden;
                    }
                }
                Ok(Frame::Close) | Err(RecvError::Closed) => self.closed = true,
                Err(RecvError::Lagged(missed)) => {
                    tracing::info!(missed, "disconnecting a subscriber that fell behind");
                    Metrics::add(&self.permit.hub().metrics.slow_dropped, 1);
                    self.pending.push(Bytes::from_static(
                        b": disconnected: too slow, fell too far behind; reconnect with Last-Event-ID to resume\n\n",
                    ));
                    self.closed = true;
                }
            }
        }
        let metrics = &self.permit.hub().metrics;
        Metrics::add(&metrics.deliveries, delivered);
        Metrics::add(&metrics.skipped, skipped);
        self.pending.take()
    }
}

/// Frames gathered for one write; a lone frame is passed on without a copy.
#[derive(Default)]
struct Chunk {
    single: Option<Bytes>,
    joined: BytesMut,
}

impl Chunk {
    fn push(&mut self, frame: Bytes) {
        if self.single.is_none() && self.joined.is_empty() {
            self.single = Some(frame);
            return;
        }
        if let Some(first) = self.single.take() {
            self.joined.extend_from_slice(&first);
        }
        self.joined.extend_from_slice(&frame);
    }

    fn len(&self) -> usize {
        self.single.as_ref().map_or(self.joined.len(), Bytes::len)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn take(&mut self) -> Option<Bytes> {
        let bytes = self.single.take().unwrap_or_else(|| self.joined.split().freeze());
        (!bytes.is_empty()).then_some(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_passes_one_frame_on_without_a_copy_and_joins_several_in_order() {
        let mut chunk = Chunk::default();
        assert!(chunk.take().is_none(), "nothing to write");
        let one = Bytes::from_static(b"id:1\ndata:1\n\n");
        chunk.push(one.clone());
        assert_eq!(chunk.len(), one.len());
        let taken = chunk.take().unwrap();
        assert_eq!(taken.as_ptr(), one.as_ptr(), "the frame itself, not a copy");
        for n in 2..5 {
            chunk.push(Bytes::from(format!("id:{n}\n\n")));
        }
        assert_eq!(&chunk.take().unwrap()[..], b"id:2\n\nid:3\n\nid:4\n\n");
        assert!(chunk.is_empty() && chunk.take().is_none(), "taken whole");
    }

    #[test]
    fn the_forbidden_notice_is_an_event_for_envelopes_and_a_comment_for_1x() {
        let (c, user) = (Uuid::nil(), Some(Uuid::new_v4()));
        let notice = forbidden_notice(&[c], None, true);
        let text = std::str::from_utf8(&notice).unwrap();
        assert!(text.starts_with("event:forbidden\ndata:{") && !text.contains("id:"), "{text}");
        assert!(text.contains("not logged in"), "{text}");
        assert!(
            std::str::from_utf8(&forbidden_notice(&[c], user, true))
                .unwrap()
                .contains("not a member")
        );
        let cleared = forbidden_notice(&[], user, true);
        assert_eq!(&cleared[..], b"event:forbidden\ndata:{\"collections\":[],\"error\":null}\n\n");
        for plain in [forbidden_notice(&[c], None, false), forbidden_notice(&[], user, false)] {
            assert!(plain.starts_with(b": ") && plain.ends_with(b"\n\n"), "a comment only");
        }
    }
}
