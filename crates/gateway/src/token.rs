//! Connection identities that cannot alias a reused slab slot.
//!
//! slab warns that "keys may be reused": a bare slab index used as a mio token or a
//! timer value could reach the *next* connection in that slot. A [`ConnId`] adds the
//! generation the worker gave the connection when it was accepted; the worker drops
//! any event or timer whose generation does not match the slot's current occupant
//! (mio's "sporadic events").

use mio::Token;

const _: () = assert!(usize::BITS == 64, "ConnId packs two u32s into a mio Token");

/// The listening socket's token.
pub const LISTENER: Token = Token(usize::MAX);
/// The worker's cross-thread waker.
pub const WAKER: Token = Token(usize::MAX - 1);

/// Slab index plus the generation of the connection that owned the slot when it
/// was registered.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConnId {
    /// Index in the worker's slab.
    pub index: u32,
    /// Per-worker accept counter at the time this connection was accepted.
    pub generation: u32,
}

impl ConnId {
    /// Packs the id into a mio token (generation in the high 32 bits).
    pub fn token(self) -> Token {
        Token(((self.generation as usize) << 32) | self.index as usize)
    }

    /// Unpacks a token made by [`ConnId::token`].
    pub fn from_token(token: Token) -> ConnId {
        ConnId {
            index: token.0 as u32,
            generation: (token.0 >> 32) as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips_and_never_collides_with_reserved_tokens() {
        for (index, generation) in [
            (0, 0),
            (1, 7),
            (u32::MAX - 2, u32::MAX - 1),
            (12345, 0xdead_beef),
        ] {
            let id = ConnId { index, generation };
            assert_eq!(ConnId::from_token(id.token()), id);
        }
        // Generations are handed out below u32::MAX, so the reserved tokens never occur.
        let top = ConnId {
            index: u32::MAX,
            generation: u32::MAX - 1,
        };
        assert_ne!(top.token(), LISTENER);
        assert_ne!(top.token(), WAKER);
    }
}
