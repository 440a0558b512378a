//! Access policy: who may read and write a collection, and which sessions
//! still count. Pure values and rules, with no I/O: the store reads and
//! writes them, [`crate::access`] keeps a node's copy current, the hub and
//! the handlers apply them.
//!
//! A collection nobody claimed is what it was in Broker 1.x: anyone may
//! read and insert. A claimed one takes inserts from its owner and writers
//! only; a private one is read by its owner, writers and readers only.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Claims;
use crate::schemas::Schemas;

/// A member's role in a claimed collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May read the collection's events.
    Reader,
    /// May read and insert.
    Writer,
}

impl Role {
    /// The role as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
        }
    }

    /// The role stored as `text`, if it is one.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "reader" => Some(Role::Reader),
            "writer" => Some(Role::Writer),
            _ => None,
        }
    }
}

/// The rules of one claimed collection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// The user who claimed it.
    pub owner: Uuid,
    /// Whether only the owner and members may read it.
    pub private: bool,
    /// The other users with a role.
    pub members: HashMap<Uuid, Role>,
    /// How long its events are kept (everything unless its owner said).
    #[serde(default, skip_serializing_if = "Retention::keeps_all")]
    pub retention: Retention,
    /// The JSON Schemas inserts must match, by event name or pattern (see
    /// [`crate::schemas`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub schemas: BTreeMap<String, serde_json::Value>,
}

/// Which events of a collection are kept; without either limit, all of
/// them (Broker 1.x). Whatever the limits, the latest published event of
/// each name and every pending event are kept, so the state a stream syncs
/// never changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Drop published (and cancelled) events whose timestamp is more than
    /// this many seconds old.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "crate::domain::optional_integer")]
    #[schema(minimum = 1)]
    pub max_age: Option<i64>,
    /// Drop published events that have at least this many later published
    /// events of the same name in the collection (1: only the latest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "crate::domain::optional_integer")]
    #[schema(minimum = 1)]
    pub keep_latest: Option<i64>,
}

impl Retention {
    /// Whether nothing is ever dropped.
    pub fn keeps_all(&self) -> bool {
        self.max_age.is_none() && self.keep_latest.is_none()
    }

    /// The retention if its limits are valid (each at least 1).
    pub fn checked(self) -> Result<Self, &'static str> {
        match (self.max_age, self.keep_latest) {
            (Some(..=0), _) => Err("retention max_age must be at least 1 second"),
            (_, Some(..=0)) => Err("retention keep_latest must be at least 1"),
            _ => Ok(self),
        }
    }

    /// Parses the `--retention` syntax: comma-separated `<age>` (a number
    /// of seconds with an optional `s`, `m`, `h` or `d`) and `latest=<n>`;
    /// `all` keeps everything.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut retention = Self::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty() && *p != "all") {
            if let Some(n) = part.strip_prefix("latest=") {
                retention.keep_latest = Some(n.parse().map_err(|_| format!("bad count {n:?}"))?);
                continue;
            }
            let (digits, unit) = part.split_at(part.trim_end_matches(char::is_alphabetic).len());
            let scale = match unit {
                "" | "s" => 1,
                "m" => 60,
                "h" => 3_600,
                "d" => 86_400,
                _ => return Err(format!("bad unit in {part:?}: use s, m, h or d")),
            };
            let n: i64 = digits.parse().map_err(|_| format!("bad age {part:?}"))?;
            retention.max_age = Some(n.saturating_mul(scale));
        }
        retention.checked().map_err(str::to_owned)
    }
}

impl Rule {
    /// Whether `user` (`None`: anonymous) may read the collection.
    pub fn may_read(&self, user: Option<Uuid>) -> bool {
        !self.private || user.is_some_and(|u| u == self.owner || self.members.contains_key(&u))
    }

    /// Whether `user` may insert into the collection.
    pub fn may_write(&self, user: Uuid) -> bool {
        user == self.owner || self.members.get(&user) == Some(&Role::Writer)
    }
}

/// An account whose tokens are not all good: some were revoked at once
/// (password changed, reset or account disabled), or it is disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// Tokens carry the generation they were issued in; only the current
    /// one counts.
    pub generation: i64,
    /// Whether the account is disabled.
    pub disabled: bool,
}

/// Every access rule, as of one version of the store's.
#[derive(Debug, Default)]
pub struct AccessState {
    /// Bumped by the store with every change.
    pub version: i64,
    /// The claimed collections.
    pub collections: HashMap<Uuid, Arc<Rule>>,
    /// Accounts with a generation above 0 or disabled (others are fine).
    pub users: HashMap<Uuid, Standing>,
    /// Tokens logged out and not yet expired, by id.
    pub revoked: HashSet<Uuid>,
    /// For each user, the private collections they may read (derived from
    /// `collections` by [`AccessState::indexed`]).
    pub private_readable: HashMap<Uuid, Vec<Uuid>>,
    /// The compiled schemas of the collections that have some (derived by
    /// [`AccessState::indexed`]).
    pub schemas: HashMap<Uuid, Arc<Schemas>>,
}

impl AccessState {
    /// The same rules with [`AccessState::private_readable`] filled in, so
    /// that a subscriber's sync does not walk every claimed collection.
    pub fn indexed(mut self) -> Self {
        let mut readable: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
        for (id, rule) in self.collections.iter().filter(|(_, r)| r.private) {
            for user in std::iter::once(&rule.owner).chain(rule.members.keys()) {
                readable.entry(*user).or_default().push(*id);
            }
        }
        self.private_readable = readable;
        self.schemas = (self.collections.iter())
            .filter(|(_, rule)| !rule.schemas.is_empty())
            .map(|(id, rule)| (*id, Arc::new(Schemas::compile(&rule.schemas))))
            .collect();
        self
    }

    /// The private collections `user` may read.
    pub fn private_readable(&self, user: Uuid) -> &[Uuid] {
        self.private_readable.get(&user).map_or(&[], Vec::as_slice)
    }

    /// The collection's rule if it is private: what a published event of it
    /// carries to the streams.
    pub fn private_rule(&self, collection: &Uuid) -> Option<Arc<Rule>> {
        self.collections.get(collection).filter(|r| r.private).cloned()
    }

    /// Whether `user` may read `collection`.
    pub fn may_read(&self, collection: &Uuid, user: Option<Uuid>) -> bool {
        self.collections.get(collection).is_none_or(|r| r.may_read(user))
    }

    /// Whether `user` may insert into `collection`.
    pub fn may_write(&self, collection: &Uuid, user: Uuid) -> bool {
        self.collections.get(collection).is_none_or(|r| r.may_write(user))
    }

    /// Why a token that verified is no longer good, if it is not.
    pub fn refuses(&self, claims: &Claims) -> Option<&'static str> {
        if claims.jti.is_some_and(|jti| self.revoked.contains(&jti)) {
            return Some("token revoked");
        }
        let standing = self.users.get(&claims.sub);
        match standing {
            Some(s) if s.disabled => Some("account disabled"),
            Some(s) if s.generation != claims.generation => Some("token revoked"),
            None if claims.generation != 0 => Some("token revoked"),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sub: Uuid, jti: Option<Uuid>, generation: i64) -> Claims {
        Claims { sub, iat: 0, exp: 1, jti, generation, name: None }
    }

    #[test]
    fn rules_and_sessions() {
        let (owner, reader, writer, other) =
            (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let members = HashMap::from([(reader, Role::Reader), (writer, Role::Writer)]);
        let rule = Rule { owner, private: true, members, ..Rule::default() };
        assert!(rule.may_read(Some(owner)) && rule.may_read(Some(reader)));
        assert!(!rule.may_read(Some(other)) && !rule.may_read(None));
        assert!(rule.may_write(owner) && rule.may_write(writer) && !rule.may_write(reader));
        let public = Rule { private: false, ..rule.clone() };
        assert!(public.may_read(None) && !public.may_write(other));

        let (c, unclaimed, jti) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let state = AccessState {
            version: 1,
            collections: HashMap::from([(c, Arc::new(rule))]),
            users: HashMap::from([
                (owner, Standing { generation: 2, disabled: false }),
                (other, Standing { generation: 0, disabled: true }),
            ]),
            revoked: HashSet::from([jti]),
            ..AccessState::default()
        }
        .indexed();
        assert_eq!(state.private_readable(owner), [c]);
        assert_eq!(state.private_readable(writer), [c]);
        assert!(state.private_readable(other).is_empty());
        assert!(state.may_read(&unclaimed, None) && state.may_write(&unclaimed, other));
        assert!(!state.may_read(&c, Some(other)) && state.private_rule(&c).is_some());
        assert_eq!(state.refuses(&claims(owner, None, 2)), None);
        assert_eq!(state.refuses(&claims(owner, None, 1)), Some("token revoked"));
        assert_eq!(state.refuses(&claims(reader, Some(jti), 0)), Some("token revoked"));
        assert_eq!(state.refuses(&claims(reader, Some(Uuid::new_v4()), 0)), None);
        assert_eq!(state.refuses(&claims(reader, None, 1)), Some("token revoked"));
        assert_eq!(state.refuses(&claims(other, None, 0)), Some("account disabled"));
    }

    #[test]
    fn retention_syntax() {
        let r = |max_age, keep_latest| Retention { max_age, keep_latest };
        assert_eq!(Retention::parse("all"), Ok(r(None, None)));
        assert_eq!(Retention::parse("7d"), Ok(r(Some(604_800), None)));
        assert_eq!(Retention::parse("90, latest=3"), Ok(r(Some(90), Some(3))));
        assert_eq!(Retention::parse("latest=1"), Ok(r(None, Some(1))));
        assert!(Retention::parse("latest=0").is_err() && Retention::parse("2w").is_err());
        assert!(Retention::parse("0s").is_err() && Retention::parse("x").is_err());
    }
}
