//! Domain types that validate themselves on construction.
//!
//! Handlers turn request bodies into these types first; code past that point
//! never sees an empty username, an event name that would break SSE framing
//! or a timestamp the scheduler cannot represent.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};
use uuid::Uuid;

/// Why client input was refused; the message is shown to the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct Invalid(pub String);

fn check_text(what: &str, value: &str, max_chars: usize) -> Result<(), Invalid> {
    if value.trim().is_empty() {
        return Err(Invalid(format!("{what} must not be empty")));
    }
    if value.chars().count() > max_chars {
        return Err(Invalid(format!("{what} must be at most {max_chars} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(Invalid(format!("{what} must not contain control characters")));
    }
    Ok(())
}

/// What [`check_text`] accepts, for the API description: no control
/// character, and something besides white space.
const TEXT_PATTERN: &str = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$";

/// The API description of a text field checked by [`check_text`].
fn text_schema(description: &str, max_chars: usize) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .min_length(Some(1))
        .max_length(Some(max_chars))
        .pattern(Some(TEXT_PATTERN))
        .into()
}

/// A user's login name: 1 to 128 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    /// Validates a username.
    pub fn parse(value: String) -> Result<Self, Invalid> {
        check_text("username", &value, 128)?;
        Ok(Self(value))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PartialSchema for Username {
    fn schema() -> RefOr<Schema> {
        text_schema("A login name: 1 to 128 characters, no control characters.", 128)
    }
}

impl ToSchema for Username {}

/// A clear-text password on its way to the hasher: 1 to 1024 characters.
/// Its `Debug` output never shows it.
#[derive(Clone)]
pub struct Password(String);

/// The most characters a password may have.
pub const MAX_PASSWORD_LENGTH: usize = 1024;

impl Password {
    /// Validates a password.
    pub fn parse(value: String) -> Result<Self, Invalid> {
        if value.is_empty() {
            return Err(Invalid("password must not be empty".into()));
        }
        if value.chars().count() > MAX_PASSWORD_LENGTH {
            let max = MAX_PASSWORD_LENGTH;
            return Err(Invalid(format!("password must be at most {max} characters")));
        }
        Ok(Self(value))
    }

    /// The password itself, for the hasher.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl PartialSchema for Password {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "1 to 1024 characters; a server may ask for more (`GET /users/password-rule`).",
            ))
            .min_length(Some(1))
            .max_length(Some(MAX_PASSWORD_LENGTH))
            .into()
    }
}

impl ToSchema for Password {}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// The name of an event ("the latest event of each name is the current
/// state"): 1 to 256 characters without control characters, so it can stand
/// on an SSE `event:` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventName(String);

impl EventName {
    /// Validates an event name.
    pub fn parse(value: String) -> Result<Self, Invalid> {
        check_text("event", &value, 256)?;
        Ok(Self(value))
    }

    /// The name as text.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl PartialSchema for EventName {
    fn schema() -> RefOr<Schema> {
        text_schema("An event name: 1 to 256 characters, no control characters.", 256)
    }
}

impl ToSchema for EventName {}

/// Latest timestamp accepted: 9999-12-31T23:59:59Z.
pub const MAX_TIMESTAMP: i64 = 253_402_300_799;

/// Validates an event timestamp (UNIX seconds, 0 to year 9999).
pub fn check_timestamp(timestamp: i64) -> Result<i64, Invalid> {
    if (0..=MAX_TIMESTAMP).contains(&timestamp) {
        Ok(timestamp)
    } else {
        Err(Invalid(format!("timestamp must be UNIX seconds between 0 and {MAX_TIMESTAMP}")))
    }
}

/// Deserializes a JSON integer, also written with a zero fraction (`60.0`),
/// as JSON Schema counts those as integers too.
pub fn integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    use serde::de::Error;
    let n = serde_json::Number::deserialize(d)?;
    n.as_i64()
        .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15).map(|f| f as i64))
        .ok_or_else(|| D::Error::custom(format!("{n} is not an integer")))
}

/// Like [`integer`], for an optional field (`null` or left out: `None`).
pub fn optional_integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    struct Integer(#[serde(deserialize_with = "integer")] i64);
    Ok(Option::<Integer>::deserialize(d)?.map(|Integer(n)| n))
}

/// Rewrites already-valid JSON without insignificant white space, so that it
/// fits on one SSE `data:` line. Strings, numbers and key order are kept
/// exactly as the client sent them. Refuses arrays and objects nested more
/// than `max_depth` levels: many JSON parsers (Python's, for one) recurse and
/// fail on deep nesting, so one such event would make the stream and the
/// listings unreadable for them.
pub fn compact_json(raw: &RawValue, max_depth: usize) -> Result<Box<RawValue>, Invalid> {
    let text = raw.get();
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped, mut depth) = (false, false, 0usize);
    for c in text.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else {
            match c {
                '"' => in_string = true,
                '[' | '{' => {
                    depth += 1;
                    if depth > max_depth {
                        return Err(Invalid(format!(
                            "data must not be nested more than {max_depth} levels deep"
                        )));
                    }
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                c if c.is_ascii_whitespace() => continue,
                _ => {}
            }
        }
        out.push(c);
    }
    // Removing white space outside strings keeps valid JSON valid.
    Ok(RawValue::from_string(out).unwrap_or_else(|_| raw.to_owned()))
}

/// Which published events a subscriber wants. Empty lists select all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Filter {
    collections: Vec<Uuid>,
    events: Vec<String>,
}

impl Filter {
    /// Most values of each kind in one filter.
    pub const MAX_VALUES: usize = 100;

    /// A filter on these collections and event names (each list may be empty).
    pub fn new(collections: Vec<Uuid>, events: Vec<String>) -> Result<Self, Invalid> {
        if collections.len() > Self::MAX_VALUES || events.len() > Self::MAX_VALUES {
            return Err(Invalid(format!(
                "at most {} collection_id and {} event values",
                Self::MAX_VALUES,
                Self::MAX_VALUES
            )));
        }
        let events = events
            .into_iter()
            .map(|e| EventName::parse(e).map(EventName::into_string))
            .collect::<Result<_, _>>()?;
        Ok(Self { collections, events })
    }

    /// The same event names in these collections only (no limit on their
    /// number: for filters Broker makes itself).
    pub fn within(&self, collections: Vec<Uuid>) -> Self {
        Self { collections, events: self.events.clone() }
    }

    /// The selected collections; empty means every collection.
    pub fn collections(&self) -> &[Uuid] {
        &self.collections
    }

    /// The selected event names; empty means every name.
    pub fn events(&self) -> &[String] {
        &self.events
    }

    /// Whether an event of `collection` named `event` is selected.
    pub fn matches(&self, collection: &Uuid, event: &str) -> bool {
        (self.collections.is_empty() || self.collections.contains(collection))
            && (self.events.is_empty() || self.events.iter().any(|e| e == event))
    }
}

/// One event as stored and as returned by the API, in the seed's shape.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// The event's own id.
    pub id: Uuid,
    /// The user who inserted it.
    pub user_id: Uuid,
    /// The collection it belongs to.
    pub collection_id: Uuid,
    /// Its name.
    pub event: String,
    /// When it is (or was) due, in UNIX seconds.
    #[schema(minimum = 0, maximum = 253402300799.0)]
    pub timestamp: i64,
    /// Whether it has been published to the stream.
    pub published: bool,
    /// Whether its owner cancelled it before publication.
    pub cancelled: bool,
    /// Any JSON value, compacted.
    #[schema(value_type = serde_json::Value)]
    pub data: Box<RawValue>,
}

/// A published event with the sequence number the store gave it.
#[derive(Debug, Clone)]
pub struct Published {
    /// Position in the publication log: increasing, never reused.
    pub seq: i64,
    /// The event, with `published: true`.
    pub event: Event,
}

/// A signal: a message for the streams of one collection that are open
/// now, never stored (`POST /signal`). Its JSON is the `data:` of the
/// `event:signal` frame that carries it, and what goes to other nodes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Signal {
    /// The collection whose streams receive it.
    pub collection_id: Uuid,
    /// Its name, the application's own ("typing", "cursor").
    pub event: String,
    /// The user who sent it.
    pub user_id: Uuid,
    /// Any JSON value, compacted.
    #[schema(value_type = serde_json::Value)]
    pub data: Box<RawValue>,
}

/// One user present in a collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Present {
    /// The user.
    pub user_id: Uuid,
    /// Their username.
    pub username: String,
    /// Their open streams on the collection (over every node).
    pub connections: u32,
    /// Since when they are present, in UNIX seconds.
    pub since: i64,
}

/// What one node says of one collection: its users and anonymous streams.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeRoom {
    /// The users present through this node's streams.
    pub users: std::collections::HashMap<Uuid, Present>,
    /// This node's anonymous streams.
    pub anonymous: u32,
}

impl NodeRoom {
    /// Counts `present` in: their connections add up, since the earliest.
    pub fn add(&mut self, present: Present) {
        self.users
            .entry(present.user_id)
            .and_modify(|p| {
                p.connections += present.connections;
                p.since = p.since.min(present.since);
            })
            .or_insert(present);
    }
}

/// A registered user as the store keeps it (and `broker export` writes it).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct User {
    /// The user's id.
    pub id: Uuid,
    /// The login name.
    pub username: String,
    /// An argon2id (or legacy bcrypt) hash in PHC / modular crypt format.
    pub password_hash: String,
    /// The collection holding this user's profile ("info") events.
    pub collection_id: Uuid,
    /// Whether the user may use the `/admin` endpoints.
    #[serde(default)]
    pub admin: bool,
    /// Whether the account is disabled: no login, no token works.
    #[serde(default)]
    pub disabled: bool,
    /// The token generation: tokens issued in an earlier one are revoked.
    #[serde(default)]
    pub generation: i64,
}

#[cfg(test)]
impl Event {
    /// For tests: an unpublished event "e" at timestamp 0 with data `n`,
    /// by its own user in its own collection.
    pub(crate) fn numbered(n: i64) -> Self {
        let id = Uuid::new_v4();
        Self {
            id,
            user_id: id,
            collection_id: id,
            event: "e".into(),
            timestamp: 0,
            published: false,
            cancelled: false,
            data: serde_json::value::to_raw_value(&n).expect("a number serialises"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(Username::parse("alice".into()).is_ok());
        assert!(Username::parse("".into()).is_err());
        assert!(Username::parse("  ".into()).is_err());
        assert!(Username::parse("a".repeat(129)).is_err());
        assert!(EventName::parse("line\nbreak".into()).is_err());
        assert!(Password::parse(String::new()).is_err());
        assert!(Password::parse("p".repeat(1025)).is_err());
        assert!(!format!("{:?}", Password::parse("hunter2".into()).unwrap()).contains("hunter2"));
    }

    #[test]
    fn filters_select() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let all = Filter::default();
        assert!(all.matches(&a, "x"));
        let f = Filter::new(vec![a], vec!["x".into(), "y".into()]).unwrap();
        assert!(f.matches(&a, "y"));
        assert!(!f.matches(&b, "x"));
        assert!(!f.matches(&a, "z"));
        assert!(Filter::new(vec![], vec![String::new()]).is_err());
        assert!(Filter::new(vec![a; 101], vec![]).is_err());
    }

    #[test]
    fn integers_may_have_a_zero_fraction() {
        #[derive(Deserialize)]
        struct T {
            #[serde(deserialize_with = "integer")]
            t: i64,
        }
        let t = |s: &str| serde_json::from_str::<T>(s).map(|t| t.t).ok();
        assert_eq!(t(r#"{"t": 60}"#), Some(60));
        assert_eq!(t(r#"{"t": 60.0}"#), Some(60));
        assert_eq!(t(r#"{"t": -1e3}"#), Some(-1000));
        assert_eq!(t(r#"{"t": 60.5}"#), None);
        assert_eq!(t(r#"{"t": "60"}"#), None);
    }

    #[test]
    fn timestamps_are_bounded() {
        assert!(check_timestamp(-1).is_err());
        assert!(check_timestamp(MAX_TIMESTAMP + 1).is_err());
        assert_eq!(check_timestamp(1_700_000_000), Ok(1_700_000_000));
    }

    #[test]
    fn json_is_compacted_but_strings_kept() {
        let raw: Box<RawValue> =
            serde_json::from_str("{ \"a\" : [1, 2 ,\n 3], \"s\": \"x \\\" y\\n\" , \"z\":1e400 }")
                .unwrap();
        assert_eq!(
            compact_json(&raw, 64).unwrap().get(),
            r#"{"a":[1,2,3],"s":"x \" y\n","z":1e400}"#
        );
    }

    #[test]
    fn nesting_is_bounded_outside_strings() {
        let nested = |n: usize| -> Box<RawValue> {
            serde_json::from_str(&format!("{}{}", "[".repeat(n), "]".repeat(n))).unwrap()
        };
        assert!(compact_json(&nested(64), 64).is_ok());
        assert!(compact_json(&nested(65), 64).is_err());
        let brackets_in_a_string: Box<RawValue> =
            serde_json::from_str(&format!("[\"{}\"]", "[{".repeat(100))).unwrap();
        assert!(compact_json(&brackets_in_a_string, 2).is_ok());
    }
}
