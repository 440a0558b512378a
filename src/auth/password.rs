//! Password hashing: argon2id for new passwords; bcrypt hashes, as Broker
//! 1.x stored them, are still accepted. Hashing runs on threads of its own,
//! half the cores (at least one), at the lowest CPU priority, each resting
//! after a hash as long as the hash took: a flood of sign-ups or failed
//! logins waits in line and takes at most a quarter of the machine, and
//! only what inserts, streams and other requests leave.

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
        on_hasher(move || {
            Argon2::default()
                .hash_password(password.expose().as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| HashError(e.to_string()))
        })
        .await
        .unwrap_or_else(|| Err(HashError("the hashing threads are gone".into())))
    }

    /// Whether `password` matches `hash`; with no hash (unknown user) the
    /// decoy is checked instead and the answer is always no.
    pub async fn verify(&self, password: Password, hash: Option<String>) -> bool {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.decoy.clone());
        let matches = on_hasher(move || check(password.expose(), &hash)).await;
        known && matches == Some(true)
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs `work` on a hashing thread, after the jobs already in line; `None`
/// if the threads could not be started. A job whose caller has gone (the
/// client hung up while in line) is skipped.
async fn on_hasher<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    static HASHERS: std::sync::LazyLock<Option<std::sync::mpsc::Sender<Job>>> =
        std::sync::LazyLock::new(start_hashers);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        if !tx.is_closed() {
            let _ = tx.send(work());
        }
    });
    HASHERS.as_ref()?.send(job).ok()?;
    rx.await.ok()
}

/// Starts half the cores' worth of hashing threads (at least one) sharing
/// one queue, each at nice 19 so that the scheduler prefers everything else
/// of Broker (and of the machine) to them.
fn start_hashers() -> Option<std::sync::mpsc::Sender<Job>> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
    for i in 0..cores.div_ceil(2).max(1) {
        let rx = rx.clone();
        let thread = std::thread::Builder::new().name(format!("hasher-{i}")).spawn(move || {
            lowest_priority();
            loop {
                let job = match rx.lock() {
                    Ok(queue) => queue.recv(),
                    Err(_) => return,
                };
                let Ok(job) = job else { return };
                // A rest as long as the work: under a flood, hashing takes
                // at most half of each hasher's core.
                let started = std::time::Instant::now();
                job();
                std::thread::sleep(started.elapsed());
            }
        });
        if let Err(e) = thread {
            tracing::error!(error = %e, "cannot start a password hashing thread");
            return None;
        }
    }
    Some(tx)
}

/// Gives the calling thread the lowest CPU priority (nice 19; on Linux
/// the nice value is per thread).
fn lowest_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19) {
        tracing::warn!(error = %e, "cannot lower the priority of password hashing");
    }
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
