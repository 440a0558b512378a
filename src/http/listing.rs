//! Event listings written as they are read: `{"events": [...]}` and
//! `{"info": [...], "events": [...]}`, produced page by page from the store,
//! so that a collection of any size costs a page of memory, not the log.
//!
//! With `limit`, one page of each list is answered, with a `cursor` to pass
//! back for the next one (`null` once every list is exhausted). A cursor
//! without `limit` answers the rest of the lists. The cursor is opaque to
//! clients.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;

use super::ApiError;
use crate::store::{ListOf, Position, Store, StoreError};

/// Events read from the store at a time: events can be large, and a page
/// is what a listing holds in memory.
const PAGE: usize = 64;
/// The largest `limit`.
pub const MAX_LIMIT: usize = 1000;

/// The paging parameters of a listing's query string.
#[derive(Deserialize, Default)]
pub struct Paging {
    limit: Option<usize>,
    cursor: Option<String>,
}

impl Paging {
    /// Reads `limit` and `cursor` from a query string (other parameters are
    /// ignored, as Broker 1.x did).
    pub fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        #[derive(Deserialize)]
        struct Raw {
            limit: Option<String>,
            cursor: Option<String>,
        }
        let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
        let raw: Raw = serde_urlencoded::from_str(query.unwrap_or(""))
            .map_err(|e| bad(format!("invalid query string: {e}")))?;
        let limit = raw
            .limit
            .map(|l| match l.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
                _ => Err(bad(format!("limit must be a whole number from 1 to {MAX_LIMIT}"))),
            })
            .transpose()?;
        Ok(Self { limit, cursor: raw.cursor })
    }
}

/// One list of a listing and how far it has been read.
struct Part {
    name: &'static str,
    of: ListOf,
    after: Option<Position>,
    done: bool,
    /// Whether its name and `[` are written.
    opened: bool,
    written: usize,
}

/// Answers the named lists as one JSON object, streamed.
pub fn respond(
    store: Arc<dyn Store>,
    lists: &[(&'static str, ListOf)],
    paging: Paging,
) -> Result<Response, ApiError> {
    let mut parts: Vec<Part> = lists
        .iter()
        .map(|(name, of)| Part {
            name,
            of: *of,
            after: None,
            done: false,
            opened: false,
            written: 0,
        })
        .collect();
    if let Some(cursor) = &paging.cursor {
        resume(&mut parts, cursor)?;
    }
    let listing = Listing { store, parts, at: 0, limit: paging.limit, finished: false };
    let body = futures_util::stream::unfold(listing, |mut listing| async move {
        match listing.next_chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), listing)),
            Ok(None) => None,
            Err(e) => {
                // The status is sent already: cut the body short, so that
                // the client sees a broken answer, not a shorter list.
                tracing::error!(error = %e, "listing failed midway");
                listing.finished = true;
                Some((Err(e), listing))
            }
        }
    });
    Ok(([(header::CONTENT_TYPE, "application/json")], Body::from_stream(body)).into_response())
}

/// Sets each part's position from a cursor: `<timestamp>.<pos>` or `end`
/// for each list, joined by `~`.
fn resume(parts: &mut [Part], cursor: &str) -> Result<(), ApiError> {
    let invalid = || ApiError::new(StatusCode::BAD_REQUEST, "invalid cursor");
    let places: Vec<&str> = cursor.split('~').collect();
    if places.len() != parts.len() {
        return Err(invalid());
    }
    for (part, place) in parts.iter_mut().zip(places) {
        if place == "end" {
            part.done = true;
            continue;
        }
        let (timestamp, pos) = place.split_once('.').ok_or_else(invalid)?;
        let position = Position {
            timestamp: timestamp.parse().map_err(|_| invalid())?,
            pos: pos.parse().map_err(|_| invalid())?,
        };
        part.after = Some(position);
    }
    Ok(())
}

struct Listing {
    store: Arc<dyn Store>,
    parts: Vec<Part>,
    /// The part being written.
    at: usize,
    limit: Option<usize>,
    finished: bool,
}

impl Listing {
    /// The next piece of the JSON text, or `None` after the last.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, StoreError> {
        if self.finished {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(4096);
        while let Some(part) = self.parts.get_mut(self.at) {
            if !part.opened {
                part.opened = true;
                let comma = if self.at > 0 { "," } else { "{" };
                out.extend_from_slice(format!("{comma}\"{}\":[", part.name).as_bytes());
            }
            if !part.done {
                // A page at a time; with a limit, one more than it leaves,
                // to know whether the list goes on.
                let remaining = self.limit.map_or(usize::MAX, |l| l - part.written);
                let want = PAGE.min(remaining.saturating_add(1));
                let page = self.store.list(part.of, part.after, want).await?;
                for listed in page.iter().take(remaining) {
                    if part.written > 0 {
                        out.push(b',');
                    }
                    serde_json::to_writer(&mut out, &listed.event)
                        .map_err(|e| StoreError::Backend(e.to_string()))?;
                    part.written += 1;
                    part.after = Some(listed.position);
                }
                part.done = page.len() < want;
                if !part.done && part.written < self.limit.unwrap_or(usize::MAX) {
                    return Ok(Some(Bytes::from(out)));
                }
            }
            out.push(b']');
            self.at += 1;
        }
        if self.limit.is_some() {
            out.extend_from_slice(b",\"cursor\":");
            match self.cursor() {
                Some(cursor) => serde_json::to_writer(&mut out, &cursor)
                    .map_err(|e| StoreError::Backend(e.to_string()))?,
                None => out.extend_from_slice(b"null"),
            }
        }
        out.push(b'}');
        self.finished = true;
        Ok(Some(Bytes::from(out)))
    }

    /// Where the next page starts, or `None` when every list is exhausted.
    fn cursor(&self) -> Option<String> {
        if self.parts.iter().all(|p| p.done) {
            return None;
        }
        let places: Vec<String> = self
            .parts
            .iter()
            .map(|p| match (p.done, p.after) {
                (true, _) => "end".to_owned(),
                (false, Some(at)) => format!("{}.{}", at.timestamp, at.pos),
                (false, None) => format!("{}.{}", i64::MIN, i64::MIN),
            })
            .collect();
        Some(places.join("~"))
    }
}
