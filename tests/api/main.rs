//! Integration tests: the real server on an ephemeral port, a temporary
//! database each, real HTTP and SSE clients.

mod accounts;
mod events;
mod input;
mod process;
mod stream;
mod support;
