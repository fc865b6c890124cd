//! Local HTTP: the sidecars' API server, and bounded GETs to endpoints on this host or task
//! (ECS task metadata, a sidecar's readiness).
//!
//! - [`server`]: where a sidecar listens, and its accept loop
//! - [`client`]: one bounded GET

pub mod client;
pub mod server;
