//! Echo: during the hold each open client sends `--message-size`-byte binary messages
//! at `--message-rate` (or the next as soon as the previous echo is back) and checks
//! every echo byte for byte without keeping a copy: a message is
//! `[sequence: u64][send time: u64][pattern]`, the pattern derived from the sequence
//! and the client.

use crate::client::{Now, Shared, Transition, Turn};
use crate::codec::{Data, OpCode};
use crate::pace::{NEVER, next_on_schedule, rate_period_ns};
use crate::settings::MainLatency;

/// Bytes at the start of every echo message: sequence number and send time.
pub const ECHO_HEADER: usize = 16;

/// An echo client's own state.
#[derive(Debug)]
pub struct EchoState {
    /// When the next message is due ([`NEVER`]: not scheduled).
    next_ns: u64,
    /// Messages sent; the next one's sequence number.
    sent: u64,
    /// Echoes received; the sequence number the next echo must carry.
    received: u64,
}

impl Default for EchoState {
    fn default() -> Self {
        Self {
            next_ns: NEVER,
            sent: 0,
            received: 0,
        }
    }
}

impl EchoState {
    /// When the next message is due.
    pub fn poll_timeout(&self) -> u64 {
        self.next_ns
    }

    /// Counts the messages whose echo had not arrived when the run ended.
    pub fn at_finish(&self, cx: &mut Shared) {
        if let Some(echo) = cx.report.echo.as_mut() {
            echo.outstanding_at_end += self.sent - self.received;
        }
    }
}

/// Upgraded: open; a client that opens during the hold starts sending right away.
pub fn on_upgraded(state: &mut EchoState, turn: &mut Turn<'_>) -> Transition {
    if turn.cx.holding {
        schedule_first(state, turn.now, turn.cx);
    }
    Transition::Open
}

/// Schedules the first message at a random offset within one period (at once when
/// closed-loop), so the clients' messages do not go out in lockstep.
pub fn schedule_first(state: &mut EchoState, now: Now, cx: &mut Shared) {
    let Some(load) = cx.config.echo else {
        return;
    };
    let period = rate_period_ns(load.message_rate);
    let offset = if period == NEVER {
        0
    } else {
        cx.rng.u64(..period)
    };
    state.next_ns = now.ns + offset;
}

/// Sends the message that is due, if any, and schedules the next (rate mode).
pub fn handle_timeout(state: &mut EchoState, turn: &mut Turn<'_>) {
    let now = turn.now.ns;
    if now < state.next_ns {
        return;
    }
    let due = state.next_ns;
    state.next_ns = NEVER;
    if let (Some(load), true) = (turn.cx.config.echo, turn.cx.holding) {
        send(state, turn, load.message_size);
        let period = rate_period_ns(load.message_rate);
        if period != NEVER {
            state.next_ns = next_on_schedule(due, period, now);
        }
    }
}

/// An echo arrived: verify and time it; closed-loop, send the next one.
pub fn on_message(state: &mut EchoState, turn: &mut Turn<'_>, payload: &[u8]) {
    let Some(load) = turn.cx.config.echo else {
        return;
    };
    let now = turn.now;
    let ok = verify(payload, load.message_size, state.received, turn.local_index);
    state.received += 1;
    let mut rtt_us = None;
    if let Some(echo) = turn.cx.report.echo.as_mut() {
        echo.received += 1;
        echo.bytes_received += payload.len() as u64;
        if ok {
            let mut sent = [0u8; 8];
            sent.copy_from_slice(&payload[8..ECHO_HEADER]);
            let us = now.ns.saturating_sub(u64::from_be_bytes(sent)) / 1000;
            echo.rtt.record_us(us);
            rtt_us = Some(us);
        } else {
            echo.mismatches += 1;
        }
    }
    if let Some(us) = rtt_us {
        turn.cx.record_main(MainLatency::Echo, us, now.unix_ns);
    }
    if load.message_rate <= 0.0 && turn.cx.holding && !turn.cx.finishing {
        send(state, turn, load.message_size);
    }
}

fn send(state: &mut EchoState, turn: &mut Turn<'_>, size: usize) {
    let cx = &mut *turn.cx;
    fill(
        &mut cx.payload,
        size,
        state.sent,
        turn.now.ns,
        turn.local_index,
    );
    turn.out.frame(OpCode::Data(Data::Binary), &cx.payload);
    state.sent += 1;
    if let Some(echo) = cx.report.echo.as_mut() {
        echo.sent += 1;
        echo.bytes_sent += size as u64;
    }
}

/// Fills an echo payload: sequence, send time, then a pattern derived from both and
/// the client, so the echo can be verified without keeping a copy.
fn fill(out: &mut Vec<u8>, size: usize, seq: u64, sent_ns: u64, local_index: u32) {
    out.clear();
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&sent_ns.to_be_bytes());
    let salt = (seq as u8) ^ (local_index as u8);
    out.extend((ECHO_HEADER..size).map(|j| salt.wrapping_add(j as u8)));
}

fn verify(payload: &[u8], size: usize, seq: u64, local_index: u32) -> bool {
    if payload.len() != size || payload[..8] != seq.to_be_bytes() {
        return false;
    }
    let salt = (seq as u8) ^ (local_index as u8);
    payload[ECHO_HEADER..]
        .iter()
        .enumerate()
        .all(|(k, &b)| b == salt.wrapping_add((ECHO_HEADER + k) as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_payloads_verify_and_detect_corruption() {
        let mut payload = Vec::new();
        fill(&mut payload, 64, 9, 123, 77);
        assert_eq!(payload.len(), 64);
        assert!(verify(&payload, 64, 9, 77));
        assert!(!verify(&payload, 64, 10, 77), "wrong sequence");
        assert!(!verify(&payload, 65, 9, 77), "wrong length");
        payload[40] ^= 1;
        assert!(!verify(&payload, 64, 9, 77), "flipped bit");
        fill(&mut payload, ECHO_HEADER, 1, 2, 3);
        assert!(verify(&payload, ECHO_HEADER, 1, 3));
    }
}
