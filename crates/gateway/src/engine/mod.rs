//! Who assigns positions, keeps history, and (later) crosses nodes.
//!
//! | module | what | pure? |
//! |---|---|---|
//! | [`position`] | `(epoch, seq)`, the recovery decision, the URL `since` syntax | yes |
//! | [`namespace`] | `[[namespace]]` options, longest-prefix matching | yes |
//! | [`history`] | positions and bounded history in memory: blocks, TTL, byte bound, idle forgetting | yes (takes `now`) |
//! | [`recovery`] | the worker's half: per-subscription watermarks, merging an answer with buffered live frames | yes |

pub mod history;
pub mod namespace;
pub mod position;
pub mod recovery;

/// A stream of publishes with its own position: a channel, or one user's personal
/// stream (delivered as channel `#user`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Stream<'a> {
    /// A channel (a valid channel name).
    Channel(&'a str),
    /// The personal stream of this user id.
    User(&'a str),
}
