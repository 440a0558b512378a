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
//! On a shared store each node also keeps what the others said: a node
//! writes the users present through its own streams to the store (a few
//! times a second at most, only for the collections that changed), rings
//! the others, and reads theirs back, so that the presence of a collection
//! is the union of every node's, announced on every node (see
//! [`crate::cluster`]). A node that stops saying it is alive loses its
//! users everywhere.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use uuid::Uuid;

use crate::clock::Clock;
use crate::domain::{NodeRoom, Present};
use crate::hub::Hub;

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
    /// The other nodes', as last read from the store.
    remote: NodeRoom,
}

impl Room {
    /// Everyone present, over every node.
    fn users(&self) -> BTreeMap<Uuid, Present> {
        let mut users: BTreeMap<Uuid, Present> = BTreeMap::new();
        let local = self.local.values().map(|(present, _)| present);
        for present in local.chain(self.remote.users.values()) {
            users
                .entry(present.user_id)
                .and_modify(|p| {
                    p.connections += present.connections;
                    p.since = p.since.min(present.since);
                })
                .or_insert_with(|| present.clone());
        }
        users
    }

    /// What this node says of the collection.
    fn mine(&self) -> NodeRoom {
        let users = self.local.iter().map(|(id, (present, _))| (*id, present.clone())).collect();
        NodeRoom { users, anonymous: self.anonymous }
    }

    fn is_empty(&self) -> bool {
        self.local.is_empty() && self.anonymous == 0 && self.remote == NodeRoom::default()
    }
}

/// Presence on this node; shared behind an `Arc`.
#[derive(Debug)]
pub struct Presence {
    hub: Arc<Hub>,
    clock: Clock,
    grace: Duration,
    rooms: Mutex<HashMap<Uuid, Room>>,
    /// Collections whose local presence changed since the store was told.
    changed: Mutex<HashSet<Uuid>>,
    /// Rung when `changed` gains a collection.
    ring: tokio::sync::Notify,
    /// Whether other nodes share the store: only then is `changed` kept.
    shared: bool,
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
    /// On a `shared` store, changes are kept for [`Presence::take_changed`].
    pub fn new(hub: Arc<Hub>, clock: Clock, grace: Duration, shared: bool) -> Arc<Self> {
        Arc::new(Self {
            hub,
            clock,
            grace,
            rooms: Mutex::default(),
            changed: Mutex::default(),
            ring: tokio::sync::Notify::new(),
            shared,
            pending: 0.into(),
        })
    }

    /// A seat for a stream of `user` (`None`: anonymous, named `username`)
    /// in `collections` (those it may read).
    pub fn sit(self: &Arc<Self>, user: Option<(Uuid, String)>, collections: &[Uuid]) -> Seat {
        let mut seat = Seat { presence: self.clone(), user, collections: Vec::new(), now: false };
        seat.set(collections);
        seat
    }

    /// Who is present in `collection` now.
    pub fn of(&self, collection: Uuid) -> Presents {
        let rooms = lock(&self.rooms);
        let (users, anonymous) = rooms
            .get(&collection)
            .map(|room| (room.users(), room.anonymous + room.remote.anonymous))
            .unwrap_or_default();
        let mut users: Vec<Present> = users.into_values().collect();
        users.sort_by(|a, b| a.username.cmp(&b.username).then(a.user_id.cmp(&b.user_id)));
        Presents { collection_id: collection, users, anonymous }
    }

    /// The `event:presence` frame listing who is present in `collection`:
    /// [`Presents`] with `"type": "list"`.
    pub fn list_frame(&self, collection: Uuid) -> Bytes {
        let mut data = serde_json::to_value(self.of(collection)).unwrap_or_default();
        data["type"] = "list".into();
        Bytes::from(format!("event:presence\ndata:{data}\n\n"))
    }

    /// One more stream of `user` (or an anonymous one) in `collection`.
    fn enter(&self, collection: Uuid, user: Option<&(Uuid, String)>) {
        let mut rooms = lock(&self.rooms);
        let room = rooms.entry(collection).or_default();
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
    fn exit(self: &Arc<Self>, collection: Uuid, user: Option<&(Uuid, String)>, now: bool) {
        let mut rooms = lock(&self.rooms);
        let Some(room) = rooms.get_mut(&collection) else { return };
        let Some((id, _)) = user else {
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
        if now || self.grace.is_zero() {
            drop(rooms);
            return self.leave(collection, *id, 0);
        }
        let ticket = self.pending.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        *leaving = ticket;
        drop(rooms);
        self.changed(collection);
        let (presence, user) = (self.clone(), *id);
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
        if self.shared && lock(&self.changed).insert(collection) {
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

    /// Installs what the other nodes say of `collection` and announces who
    /// joined and left through them.
    pub fn remote(&self, collection: Uuid, theirs: NodeRoom) {
        let mut rooms = lock(&self.rooms);
        let room = rooms.entry(collection).or_default();
        let before = room.users();
        room.remote = theirs;
        let after = room.users();
        if room.is_empty() {
            rooms.remove(&collection);
        }
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

    /// The collections some other node has users or streams in.
    pub fn remote_collections(&self) -> Vec<Uuid> {
        let rooms = lock(&self.rooms);
        rooms.iter().filter(|(_, r)| r.remote != NodeRoom::default()).map(|(c, _)| *c).collect()
    }
}

/// One stream's place in the presence of its collections; it leaves them
/// when dropped.
#[derive(Debug)]
pub struct Seat {
    presence: Arc<Presence>,
    user: Option<(Uuid, String)>,
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
            self.presence.exit(*c, self.user.as_ref(), true);
        }
        for c in collections.iter().filter(|c| !old.contains(c)) {
            self.presence.enter(*c, self.user.as_ref());
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
            self.presence.exit(c, self.user.as_ref(), self.now);
        }
    }
}
