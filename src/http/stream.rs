//! `GET /events`: the Server-Sent-Events stream.
//!
//! A new subscriber first gets the latest published event of each name,
//! then every event as it is published. The hub's cursor is taken before
//! the snapshot is read and live frames up to the snapshot's head are
//! skipped, so nothing published meanwhile is missed or sent twice.
//! Whatever has queued up since the last write goes out as one chunk.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

use super::{ApiError, AppState};
use crate::hub::{Frame, HEARTBEAT};

/// Largest chunk assembled from queued frames before it is written.
const MAX_CHUNK: usize = 64 * 1024;

/// Opens an event stream.
pub async fn subscribe(State(app): State<AppState>) -> Result<Response, ApiError> {
    let ring = app.hub.subscribe();
    let snapshot = app.store.snapshot().await?;
    let mut sync = Chunk::default();
    for published in &snapshot.latest {
        if let Frame::Event { bytes, .. } = Frame::event(published) {
            sync.push(bytes);
        }
    }
    let stream = Subscriber {
        ring,
        head: snapshot.head,
        sync: sync.take(),
        closed: false,
    };
    let body = futures_util::stream::unfold(stream, |mut s| async move {
        s.next_chunk()
            .await
            .map(|chunk| (Ok::<_, Infallible>(chunk), s))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// One open stream's state.
struct Subscriber {
    ring: broadcast::Receiver<Arc<Frame>>,
    /// Frames up to this sequence number are already in the sync.
    head: i64,
    /// The initial sync, sent first.
    sync: Option<Bytes>,
    closed: bool,
}

impl Subscriber {
    /// Waits for at least one frame, then takes every frame already queued.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(sync) = self.sync.take() {
            return Some(sync);
        }
        let mut chunk = Chunk::default();
        while !self.closed && chunk.len() < MAX_CHUNK {
            let next = if chunk.is_empty() {
                self.ring.recv().await
            } else {
                match self.ring.try_recv() {
                    Ok(frame) => Ok(frame),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                    Err(TryRecvError::Closed) => Err(RecvError::Closed),
                }
            };
            match next.as_deref() {
                Ok(Frame::Event { seq, bytes, .. }) if *seq > self.head => {
                    chunk.push(bytes.clone())
                }
                Ok(Frame::Event { .. }) => {}
                Ok(Frame::Heartbeat) => chunk.push(Bytes::from_static(HEARTBEAT)),
                Ok(Frame::Close) | Err(RecvError::Closed) => self.closed = true,
                Err(RecvError::Lagged(missed)) => {
                    tracing::info!(missed, "disconnecting a subscriber that fell behind");
                    chunk.push(Bytes::from_static(
                        b": disconnected: this client fell too far behind\n\n",
                    ));
                    self.closed = true;
                }
            }
        }
        chunk.take()
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
        let bytes = self
            .single
            .take()
            .unwrap_or_else(|| self.joined.split().freeze());
        (!bytes.is_empty()).then_some(bytes)
    }
}
