//! Presence: who has a collection open now.
//!
//! Every stream that names collections takes a [`Seat`] in those it may
//! read: its user is *present* there (an anonymous stream is counted, never
//! named) until the seat is dropped. A user with several streams (tabs) is
//! present once and leaves when the last one closes, after a grace period
//! (`--presence-grace`), so that a tab that reconnects causes no leave and
//! join; a stream ended because its session was revoked, and a collection
//! that stopped being readable, leave at once. Only a change of who is
//! present makes a frame (`event:presence`, no `id:`), handed by the hub to
//! the streams of that collection that asked for presence and may read it.
//!
//! On a shared store the presence of a collection is the union of every
//! node's: a node writes the users present through its own streams to the
//! store (a few times a second at most, only for the collections that
//! changed) and rings the others with the collections' ids (see
//! [`crate::cluster`]). A node keeps the others' presence only for the
//! collections some stream of its own *watches* (`?presence=true`): it
//! reads it when the first one arrives and again whenever the others ring
//! about it, and ignores the rest, so that a hundred thousand streams on
//! as many collections cost the database their writes, not a read of
//! everything by every node. `GET /collections/{id}/presence` of a
//! collection nobody watches here reads the others' presence from the
//! store. A node that stops saying it is alive loses its users everywhere.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use uuid::Uuid;

use crate::clock::Clock;
use crate::domain::{NodeRoom, Present};
use crate::hub::Hub;
use crate::store::{Store, StoreError};

/// Who is present in a collection: `GET /collections/{id}/presence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Presents {
    /// The collection.
    pub collection_id: Uuid,
    /// The users present, by username.
    pub users: Vec<Present>,
    /// Streams without a token.
    pub anonymous: u32,
}

/// A collection's presence on this node.
#[derive(Debug, Default)]
struct Room {
    /// This node's streams, by user; `leaving` says which pending leave
    /// (0: none) may remove a user whose connections went to 0.
    local: HashMap<Uuid, (Present, u64)>,
    anonymous: u32,
    /// Streams of this node that asked for its presence.
    watchers: u32,
    /// The other nodes', as last read from the store (while watched).
    remote: NodeRoom,
    /// Whether `remote` has been read since the collection is watched.
    loaded: bool,
}

impl Room {
    /// Everyone present, over every node.
    fn users(&self) -> HashMap<Uuid, Present> {
        let mut all = self.remote.clone();
        for (present, _) in self.local.values() {
            all.add(present.clone());
        }
        all.users
    }

    /// What this node says of the collection.
    fn mine(&self) -> NodeRoom {
        let users = self.local.iter().map(|(id, (present, _))| (*id, present.clone())).collect();
        NodeRoom { users, anonymous: self.anonymous }
    }

    /// Who is present, by username.
    fn presents(&self, collection: Uuid) -> Presents {
        let mut users: Vec<Present> = self.users().into_values().collect();
        users.sort_by(|a, b| a.username.cmp(&b.username).then(a.user_id.cmp(&b.user_id)));
        Presents {
            collection_id: collection,
            users,
            anonymous: self.anonymous + self.remote.anonymous,
        }
    }

    fn is_empty(&self) -> bool {
        self.local.is_empty() && self.anonymous == 0 && self.watchers == 0
    }
}

/// Presence on this node; shared behind an `Arc`.
pub struct Presence {
    hub: Arc<Hub>,
    clock: Clock,
    grace: Duration,
    rooms: Mutex<HashMap<Uuid, Room>>,
    /// Collections whose local presence changed since the store was told.
    changed: Mutex<HashSet<Uuid>>,
    /// Rung when `changed` gains a collection.
    ring: tokio::sync::Notify,
    /// The shared store and this node's name in it, if other nodes share
    /// it: only then is `changed` kept and others' presence read.
    cluster: Option<(Arc<dyn Store>, Uuid)>,
    pending: std::sync::atomic::AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The `event:presence` frame of a change: `{"collection_id", "type",
/// "user_id", "username", "since"}` (`type`: `join` or `leave`).
fn change_frame(collection: Uuid, kind: &str, present: &Present) -> Bytes {
    let data = serde_json::json!({
        "collection_id": collection,
        "type": kind,
        "user_id": present.user_id,
        "username": present.username,
        "since": present.since,
    });
    Bytes::from(format!("event:presence\ndata:{data}\n\n"))
}

impl Presence {
    /// Presence for `hub`'s streams; a user whose last stream closed
    /// leaves after `grace` (by `clock`).
    /// With a `cluster` (a store other nodes share, and this node's name
    /// in it), changes are kept for [`Presence::take_changed`] and the
    /// others' presence is read from it.
    pub fn new(
        hub: Arc<Hub>,
        clock: Clock,
        grace: Duration,
        cluster: Option<(Arc<dyn Store>, Uuid)>,
    ) -> Arc<Self> {
        Arc::new(Self {
            hub,
            clock,
            grace,
            rooms: Mutex::default(),
            changed: Mutex::default(),
            ring: tokio::sync::Notify::new(),
            cluster,
            pending: 0.into(),
        })
    }

    /// A seat for a stream of `user` (its id and username; `None`:
    /// anonymous) in `collections` (those it may read); `watching`: the stream asked
    /// for their presence (then, on a shared store, call
    /// [`Presence::load`] before [`Presence::list_frame`]).
    pub fn sit(
        self: &Arc<Self>,
        user: Option<(Uuid, String)>,
        collections: &[Uuid],
        watching: bool,
    ) -> Seat {
        let mut seat =
            Seat { presence: self.clone(), user, watching, collections: Vec::new(), now: false };
        seat.set(collections);
        seat
    }

    /// Reads the other nodes' presence in the watched `collections` not
    /// read yet (nothing without a shared store).
    pub async fn load(&self, collections: &[Uuid]) -> Result<(), StoreError> {
        let Some((store, node)) = &self.cluster else { return Ok(()) };
        let unread: Vec<Uuid> = {
            let rooms = lock(&self.rooms);
            let unread = |c: &&Uuid| rooms.get(c).is_some_and(|r| r.watchers > 0 && !r.loaded);
            collections.iter().filter(unread).copied().collect()
        };
        if unread.is_empty() {
            return Ok(());
        }
        let mut theirs = store.others_presence(*node, unread.clone()).await?;
        for collection in unread {
            self.remote(collection, theirs.remove(&collection).unwrap_or_default());
        }
        Ok(())
    }

    /// Who is present in `collection` now, over every node (the others'
    /// read from the store unless this node watches it; while the store
    /// cannot be reached, what this node knows).
    pub async fn of(&self, collection: Uuid) -> Presents {
        let known = lock(&self.rooms).get(&collection).is_some_and(|r| r.loaded);
        let theirs = match &self.cluster {
            Some((store, node)) if !known => {
                match store.others_presence(*node, vec![collection]).await {
                    Ok(mut rooms) => Some(rooms.remove(&collection).unwrap_or_default()),
                    Err(e) => {
                        tracing::warn!(error = %e, "presence from this node only: the store is unreachable");
                        None
                    }
                }
            }
            _ => None,
        };
        let rooms = lock(&self.rooms);
        let mut room = Room::default();
        if let Some(here) = rooms.get(&collection) {
            room.local.clone_from(&here.local);
            room.anonymous = here.anonymous;
            room.remote = theirs.unwrap_or_else(|| here.remote.clone());
        } else {
            room.remote = theirs.unwrap_or_default();
        }
        drop(rooms);
        room.presents(collection)
    }

    /// The `event:presence` frame listing who is present in `collection`
    /// as this node knows it: [`Presents`] with `"type": "list"`.
    pub fn list_frame(&self, collection: Uuid) -> Bytes {
        let presents = lock(&self.rooms).get(&collection).map(|r| r.presents(collection));
        let presents =
            presents.unwrap_or(Presents { collection_id: collection, users: vec![], anonymous: 0 });
        let mut data = serde_json::to_value(presents).unwrap_or_default();
        data["type"] = "list".into();
        Bytes::from(format!("event:presence\ndata:{data}\n\n"))
    }

    /// One more stream of `user` (or an anonymous one) in `collection`.
    fn enter(&self, collection: Uuid, user: Option<&(Uuid, String)>, watching: bool) {
        let mut rooms = lock(&self.rooms);
        let room = rooms.entry(collection).or_default();
        room.watchers += u32::from(watching);
        let Some((id, name)) = user else {
            room.anonymous += 1;
            return self.changed(collection);
        };
        let was_present = room.remote.users.contains_key(id) || room.local.contains_key(id);
        let since = self.clock.now_secs();
        let (present, leaving) = room.local.entry(*id).or_insert_with(|| {
            let present = Present { user_id: *id, username: name.clone(), connections: 0, since };
            (present, 0)
        });
        present.connections += 1;
        *leaving = 0; // back within the grace period: no leave, no join
        let frame = (!was_present).then(|| change_frame(collection, "join", present));
        drop(rooms);
        self.changed(collection);
        if let Some(frame) = frame {
            self.hub.presence(collection, frame);
        }
    }

    /// One stream fewer of `user` in `collection`; the user leaves after
    /// the grace period if it was their last, or at once with `now`.
    fn exit(self: &Arc<Self>, collection: Uuid, seat: &Seat, now: bool) {
        let mut rooms = lock(&self.rooms);
        let Some(room) = rooms.get_mut(&collection) else { return };
        if seat.watching {
            room.watchers = room.watchers.saturating_sub(1);
            if room.watchers == 0 {
                (room.remote, room.loaded) = (NodeRoom::default(), false);
            }
        }
        let Some((id, _)) = &seat.user else {
            room.anonymous = room.anonymous.saturating_sub(1);
            if room.is_empty() {
                rooms.remove(&collection);
            }
            return self.changed(collection);
        };
        let Some((present, leaving)) = room.local.get_mut(id) else { return };
        present.connections = present.connections.saturating_sub(1);
        if present.connections > 0 {
            return self.changed(collection);
        }
        let id = *id;
        if now || self.grace.is_zero() {
            drop(rooms);
            return self.leave(collection, id, 0);
        }
        let ticket = self.pending.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        *leaving = ticket;
        drop(rooms);
        self.changed(collection);
        let (presence, user) = (self.clone(), id);
        let at = self.clock.now_millis() + self.grace.as_millis() as i64;
        tokio::spawn(async move {
            presence.clock.sleep_until(at).await;
            presence.leave(collection, user, ticket);
        });
    }

    /// Takes `user` out of `collection` if they still have no stream there
    /// and `ticket` (0: any) is still their pending leave.
    fn leave(&self, collection: Uuid, user: Uuid, ticket: u64) {
        let mut rooms = lock(&self.rooms);
        let Some(room) = rooms.get_mut(&collection) else { return };
        let gone = match room.local.get(&user) {
            Some((present, leaving))
                if present.connections == 0 && (ticket == 0 || *leaving == ticket) =>
            {
                room.local.remove(&user).map(|(present, _)| present)
            }
            _ => None,
        };
        let Some(present) = gone else { return };
        let still = room.remote.users.contains_key(&user);
        if room.is_empty() {
            rooms.remove(&collection);
        }
        drop(rooms);
        self.changed(collection);
        if !still {
            self.hub.presence(collection, change_frame(collection, "leave", &present));
        }
    }

    fn changed(&self, collection: Uuid) {
        if self.cluster.is_some() && lock(&self.changed).insert(collection) {
            self.ring.notify_one();
        }
    }

    /// Waits until some collection's local presence changed, then takes
    /// them with what this node says of each now (for the store).
    pub async fn take_changed(&self) -> Vec<(Uuid, NodeRoom)> {
        loop {
            let changed: Vec<Uuid> = lock(&self.changed).drain().collect();
            if !changed.is_empty() {
                let rooms = lock(&self.rooms);
                return changed
                    .into_iter()
                    .map(|c| (c, rooms.get(&c).map(Room::mine).unwrap_or_default()))
                    .collect();
            }
            self.ring.notified().await;
        }
    }

    /// Marks every collection with local presence as changed (after the
    /// store lost what this node said).
    pub fn all_changed(&self) {
        let all: Vec<Uuid> = lock(&self.rooms).keys().copied().collect();
        lock(&self.changed).extend(all);
        self.ring.notify_one();
    }

    /// Installs what the other nodes say of `collection`, if this node
    /// watches it, and announces who joined and left through them.
    pub fn remote(&self, collection: Uuid, theirs: NodeRoom) {
        let mut rooms = lock(&self.rooms);
        let Some(room) = rooms.get_mut(&collection).filter(|r| r.watchers > 0) else { return };
        let before = room.users();
        (room.remote, room.loaded) = (theirs, true);
        let after = room.users();
        drop(rooms);
        for (id, present) in &after {
            if !before.contains_key(id) {
                self.hub.presence(collection, change_frame(collection, "join", present));
            }
        }
        for (id, present) in &before {
            if !after.contains_key(id) {
                self.hub.presence(collection, change_frame(collection, "leave", present));
            }
        }
    }

    /// Which of `collections` (`None`: any) this node watches.
    pub fn watched(&self, collections: Option<Vec<Uuid>>) -> Vec<Uuid> {
        let rooms = lock(&self.rooms);
        let watched = |c: &Uuid| rooms.get(c).is_some_and(|r| r.watchers > 0);
        match collections {
            Some(ids) => ids.into_iter().filter(watched).collect(),
            None => rooms.iter().filter(|(c, _)| watched(c)).map(|(c, _)| *c).collect(),
        }
    }
}

/// One stream's place in the presence of its collections; it leaves them
/// when dropped.
pub struct Seat {
    presence: Arc<Presence>,
    user: Option<(Uuid, String)>,
    /// Whether the stream asked for the presence of its collections.
    watching: bool,
    collections: Vec<Uuid>,
    /// Leave without the grace period (the session was revoked).
    now: bool,
}

impl Seat {
    /// Sits in exactly `collections` from now on: enters the new ones,
    /// leaves the others at once (they are no longer readable).
    pub fn set(&mut self, collections: &[Uuid]) {
        let old = std::mem::take(&mut self.collections);
        for c in old.iter().filter(|c| !collections.contains(c)) {
            self.presence.exit(*c, self, true);
        }
        for c in collections.iter().filter(|c| !old.contains(c)) {
            self.presence.enter(*c, self.user.as_ref(), self.watching);
        }
        self.collections = collections.to_vec();
    }

    /// Leaves without the grace period when dropped.
    pub fn leave_now(&mut self) {
        self.now = true;
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        for c in std::mem::take(&mut self.collections) {
            self.presence.exit(c, self, self.now);
        }
    }
}
