//! Engines: who assigns positions, keeps history, and crosses nodes.
pub mod redis;
