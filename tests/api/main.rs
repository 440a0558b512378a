//! Integration tests: the real server on an ephemeral port, a temporary
//! database each, real HTTP and SSE clients.

mod access;
mod accounts;
mod acme;
mod cluster;
mod events;
mod fanout;
mod filters;
mod input;
mod layers;
mod limits;
mod ops;
mod peers;
mod presence;
mod process;
mod resume;
mod retention;
mod schemas;
mod sessions;
mod signals;
mod store;
mod stream;
mod support;
mod tls;
mod transfer;
mod webhooks;
