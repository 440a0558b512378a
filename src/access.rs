//! Access control in memory: private collections and revoked sessions.
//!
//! The rules live in the store; each change there bumps one version number.
//! Every node keeps all of them in an [`AccessState`], replaced whole when
//! the version moves (at once on the node that made the change, within
//! [`crate::cluster::RULES_POLL`] elsewhere), so that checking a request, a session or a published
//! event never queries the database. A new state also goes through the hub,
//! in order with the events, so that open streams re-check their session.
//! What the rules say is [`crate::policy`].

use std::sync::{Arc, PoisonError, RwLock};

use crate::policy::AccessState;
use crate::store::{Store, StoreError};

/// A node's copy of the rules; shared behind an `Arc`.
#[derive(Debug)]
pub struct Access {
    state: RwLock<Arc<AccessState>>,
}

impl Default for Access {
    /// No rules read yet: version −1, below any the store has.
    fn default() -> Self {
        Self { state: RwLock::new(Arc::new(AccessState { version: -1, ..AccessState::default() })) }
    }
}

impl Access {
    /// The rules, or `None` while they have never been read (the database
    /// was unreachable since the start).
    pub fn loaded(&self) -> Option<Arc<AccessState>> {
        Some(self.current()).filter(|state| state.version >= 0)
    }

    /// The rules as of now.
    pub fn current(&self) -> Arc<AccessState> {
        self.state.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Reads the rules again if the store's version moved; returns the new
    /// state if it was installed (the caller tells the streams).
    pub async fn refresh(&self, store: &dyn Store) -> Result<Option<Arc<AccessState>>, StoreError> {
        let version = store.access_version().await?;
        if version == self.current().version {
            return Ok(None);
        }
        let state = Arc::new(store.access().await?.indexed());
        let mut current = self.state.write().unwrap_or_else(PoisonError::into_inner);
        // Two refreshes may race: the newer state wins.
        if state.version <= current.version {
            return Ok(None);
        }
        *current = state.clone();
        Ok(Some(state))
    }
}
