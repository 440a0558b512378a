//! Authentication: password hashing and JSON Web Tokens.

mod jwt;
mod password;

pub use jwt::{Claims, Keys, TokenError};
pub use password::{Passwords, hex};
