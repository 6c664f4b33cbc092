//! The Redis engine: many gateway nodes over one or more Redis instances.
//!
//! | file | what | pure? |
//! |---|---|---|
//! | [`engine`] | [`engine::RedisEngine`], the seam's second implementation over [`node`] | broker runtime |
//! | [`node`] | one node: its subscriptions, the order check, refills, publishing, heartbeats, control | broker runtime |
//! | [`broker`] | the `pingwheel-broker` thread and its runtime | — |
//! | [`keys`] | key and pub/sub names, jump-consistent-hash sharding over instances | yes |
//! | [`script`] | the publish script (seq + history + `PUBLISH`) and the read script, their replies | yes |
//! | [`message`] | the live message format (`<seq>:<epoch>:<µs>:<data>`) | yes |
//! | [`gaps`] | per-stream order on a node: duplicates, gaps to refill, lost positions | yes |
//! | [`nodes`] | heartbeats for `GET /v1/nodes`, control messages for `/v1/disconnect` | yes |
//! | [`pace`] | chunk sizes of bulk reads (recovery storms), failure tallies for warnings | yes |
//! | [`instance`] | one instance's connections, batched (un)subscribes, the liveness probe, reconnects | broker runtime |
pub mod broker;
pub mod engine;
pub mod gaps;
pub mod instance;
pub mod keys;
pub mod message;
pub mod node;
pub mod nodes;
pub mod pace;
pub mod script;
