//! HS256 JSON Web Tokens: `sub` is the user id, `exp` the expiry, `jti`
//! the token's own id (so that one token can be revoked) and `gen` the
//! account's token generation (so that all of them can).
//!
//! Expiry is checked against Broker's [`Clock`], not the library's own view
//! of time, so that it can be tested without waiting.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::clock::Clock;

/// The claims Broker puts in a token.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: Uuid,
    /// Issued at, UNIX seconds.
    pub iat: i64,
    /// Expiry, UNIX seconds.
    pub exp: i64,
    /// The token's id; none in tokens of Broker before 2.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<Uuid>,
    /// The account's token generation when it was issued (0 before 2.1).
    #[serde(default, rename = "gen")]
    pub generation: i64,
    /// The username when it was issued, for presence (none before 2.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Why a token was refused; the message is shown to the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// The token's `exp` has passed.
    #[error("token expired")]
    Expired,
    /// Bad signature, bad encoding or missing claims.
    #[error("invalid token")]
    Invalid,
}

/// Signing and verification keys with the token lifetime.
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    lifetime: i64,
}

impl Keys {
    /// Keys for `secret`, issuing tokens valid for `lifetime_secs`; fails
    /// if the secret is empty.
    pub fn new(secret: &[u8], lifetime_secs: u64) -> Result<Self, jsonwebtoken::errors::Error> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false; // checked against our clock below
        validation.set_required_spec_claims(&["sub", "exp"]);
        Ok(Self {
            encoding: EncodingKey::from_secret(secret)?,
            decoding: DecodingKey::from_secret(secret)?,
            validation,
            lifetime: i64::try_from(lifetime_secs).unwrap_or(i64::MAX),
        })
    }

    /// How long issued tokens are valid, in seconds.
    pub fn lifetime(&self) -> i64 {
        self.lifetime
    }

    /// Issues a token for `user` (in its token `generation`) valid from now.
    pub fn issue(
        &self,
        user: Uuid,
        name: Option<String>,
        generation: i64,
        clock: &Clock,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let iat = clock.now_secs();
        let claims = Claims {
            sub: user,
            iat,
            exp: iat.saturating_add(self.lifetime),
            jti: Some(Uuid::new_v4()),
            generation,
            name,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }

    /// Checks a token's signature and expiry.
    pub fn verify(&self, token: &str, clock: &Clock) -> Result<Claims, TokenError> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?
            .claims;
        if claims.exp <= clock.now_secs() {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_expiry_and_forgery() {
        let (clock, hand) = Clock::manual(1_000_000_000_000);
        let keys = Keys::new(b"secret", 60).unwrap();
        let user = Uuid::new_v4();
        let token = keys.issue(user, None, 0, &clock).unwrap();
        assert_eq!(keys.verify(&token, &clock).unwrap().sub, user);
        let forged = Keys::new(b"other", 60).unwrap().issue(user, None, 0, &clock).unwrap();
        assert_eq!(keys.verify(&forged, &clock).unwrap_err(), TokenError::Invalid);
        assert_eq!(keys.verify("1234", &clock).unwrap_err(), TokenError::Invalid);
        hand.advance(60_000);
        assert_eq!(keys.verify(&token, &clock).unwrap_err(), TokenError::Expired);
    }
}
