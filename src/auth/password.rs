//! Password hashing: argon2id for new passwords; bcrypt hashes, as Broker
//! 1.x stored them, are still accepted. Hashing runs on the blocking pool,
//! on at most half the cores at once.

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};

use crate::domain::Password;

/// Hashes and verifies passwords.
pub struct Passwords {
    /// A real hash of a random password, verified when the user does not
    /// exist so that both failures take the same time.
    decoy: String,
}

/// A hashing failure (never caused by the client).
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

impl Passwords {
    /// Prepares the hasher (computes the decoy hash).
    pub async fn new() -> Result<Self, HashError> {
        let mut random = [0u8; 16];
        getrandom::fill(&mut random).map_err(|e| HashError(e.to_string()))?;
        let decoy = Password::parse(hex(&random)).map_err(|e| HashError(e.to_string()))?;
        Ok(Self { decoy: Self::hash(decoy).await? })
    }

    /// Hashes a new password with argon2id and a random salt.
    pub async fn hash(password: Password) -> Result<String, HashError> {
        let _turn = turn().await;
        tokio::task::spawn_blocking(move || {
            Argon2::default()
                .hash_password(password.expose().as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| HashError(e.to_string()))
        })
        .await
        .map_err(|e| HashError(e.to_string()))?
    }

    /// Whether `password` matches `hash`; with no hash (unknown user) the
    /// decoy is checked instead and the answer is always no.
    pub async fn verify(&self, password: Password, hash: Option<String>) -> bool {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.decoy.clone());
        let _turn = turn().await;
        let matches = tokio::task::spawn_blocking(move || check(password.expose(), &hash))
            .await
            .unwrap_or(false);
        known && matches
    }
}

/// A turn to hash: at most half the cores (at least one) hash at once, so
/// that a flood of sign-ups or failed logins leaves the other half to
/// inserts and streams; the rest wait in line, in order.
async fn turn() -> Option<tokio::sync::SemaphorePermit<'static>> {
    static HASHERS: std::sync::LazyLock<tokio::sync::Semaphore> = std::sync::LazyLock::new(|| {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        tokio::sync::Semaphore::new(cores.div_ceil(2).max(1))
    });
    HASHERS.acquire().await.ok()
}

fn check(password: &str, hash: &str) -> bool {
    if hash.starts_with("$2") {
        return bcrypt::verify(password, hash).unwrap_or(false);
    }
    PasswordHash::new(hash)
        .is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

/// Lower-case hexadecimal of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn argon2_and_legacy_bcrypt() {
        let p = || Password::parse("correct horse".into()).unwrap();
        let hash = Passwords::hash(p()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(check("correct horse", &hash));
        assert!(!check("wrong", &hash));
        let legacy = bcrypt::hash("correct horse", 4).unwrap();
        assert!(check("correct horse", &legacy));
        assert!(!check("wrong", &legacy));
        let passwords = Passwords::new().await.unwrap();
        assert!(!passwords.verify(p(), None).await);
        assert!(passwords.verify(p(), Some(hash)).await);
    }
}
