//! The JSON Schemas a collection's owner sets for its event names, and the
//! check of an insert's data against them.
//!
//! A schema is set for an exact event name (`card`) or for a pattern: a
//! prefix ending in `*` (`card:*` covers `card:1`, `card:x`; `*` alone
//! covers every name). An event is checked against the schema of its exact
//! name if there is one, else against the longest pattern that covers it,
//! else not at all. Schemas are JSON Schema draft 2020-12 documents,
//! compiled once per version of the access rules; a `$ref` may point
//! inside the schema only (nothing is fetched).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::Value;

/// Whether `pattern` (an event name or a prefix ending in `*`) is one a
/// schema may be set for: what an event name may be, at most 200 bytes.
pub fn valid_pattern(pattern: &str) -> bool {
    !pattern.is_empty() && pattern.len() <= 200 && !pattern.chars().any(char::is_control)
}

/// Compiles `schema`, or says why it is not a valid draft 2020-12 schema.
pub fn compile(schema: &Value) -> Result<jsonschema::Validator, String> {
    jsonschema::draft202012::new(schema).map_err(|e| format!("invalid JSON Schema: {e}"))
}

/// Why an event's data was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The JSON Pointer to the failing place in the data (`""`: the whole).
    pub path: String,
    /// What is wrong there, and which schema said so.
    pub reason: String,
}

/// One collection's schemas, compiled.
#[derive(Default, Clone)]
pub struct Schemas {
    exact: HashMap<String, Arc<jsonschema::Validator>>,
    /// Patterns without their `*`, longest first.
    prefixes: Vec<(String, Arc<jsonschema::Validator>)>,
}

impl std::fmt::Debug for Schemas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let prefixes = self.prefixes.iter().map(|(p, _)| format!("{p}*"));
        f.debug_list().entries(self.exact.keys().cloned().chain(prefixes)).finish()
    }
}

impl Schemas {
    /// Compiles the schemas of a collection, by pattern; a stored schema
    /// that no longer compiles checks nothing (it was valid when set).
    pub fn compile(schemas: &BTreeMap<String, Value>) -> Self {
        let mut compiled = Self::default();
        for (pattern, schema) in schemas {
            let Ok(validator) = compile(schema) else { continue };
            let validator = Arc::new(validator);
            match pattern.strip_suffix('*') {
                Some(prefix) => compiled.prefixes.push((prefix.to_owned(), validator)),
                None => drop(compiled.exact.insert(pattern.clone(), validator)),
            }
        }
        compiled.prefixes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        compiled
    }

    /// Checks the data of an event named `event`; the first failure found.
    pub fn check(&self, event: &str, data: &Value) -> Result<(), Refusal> {
        let covering = self.prefixes.iter().find(|(prefix, _)| event.starts_with(prefix.as_str()));
        let (pattern, validator) = match self.exact.get(event) {
            Some(validator) => (event.to_owned(), validator),
            None => match covering {
                Some((prefix, validator)) => (format!("{prefix}*"), validator),
                None => return Ok(()),
            },
        };
        match validator.iter_errors(data).next() {
            None => Ok(()),
            Some(error) => Err(Refusal {
                path: error.instance_path().as_str().to_owned(),
                reason: format!("data does not match the schema for {pattern:?}: {error}"),
            }),
        }
    }

    /// Whether no schema is set.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_exact_name_wins_then_the_longest_pattern() {
        let schemas = Schemas::compile(&BTreeMap::from([
            ("*".to_owned(), json!({"type": "object"})),
            ("card:*".to_owned(), json!({"type": "object", "required": ["title"]})),
            ("card:special".to_owned(), json!({"type": "string"})),
        ]));
        assert_eq!(schemas.check("card:1", &json!({"title": "x"})), Ok(()));
        let refused = schemas.check("card:1", &json!({"titel": "x"})).unwrap_err();
        assert_eq!(refused.path, "");
        assert!(refused.reason.contains("\"card:*\""), "{}", refused.reason);
        assert_eq!(schemas.check("card:special", &json!("text")), Ok(()));
        assert!(schemas.check("other", &json!(1)).is_err());
        let nested = Schemas::compile(&BTreeMap::from([(
            "card".to_owned(),
            json!({"properties": {"title": {"type": "string", "maxLength": 3}}}),
        )]));
        assert_eq!(nested.check("card", &json!({"title": "long"})).unwrap_err().path, "/title");
        assert_eq!(Schemas::default().check("card", &json!(null)), Ok(()));
        assert!(compile(&json!({"type": 12})).is_err());
        assert!(compile(&json!({"$ref": "https://example.com/schema.json"})).is_err());
    }
}
