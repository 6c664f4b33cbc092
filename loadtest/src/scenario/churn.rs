//! Churn: connect → upgrade → (optional text message) → close 1000 → wait for the
//! server's close, and time the whole cycle. The loop starts the cycles at
//! `--churn-rate` during the hold ([`crate::settings::EngineConfig::hold_open_rate`]).

use crate::client::{End, Shared, Transition, Turn};
use crate::codec::{Data, OpCode};

/// Upgraded: send the configured message, if any, and close.
pub fn on_upgraded(turn: &mut Turn<'_>) -> Transition {
    let size = turn.cx.config.churn.map_or(0, |c| c.message_size);
    if size > 0 {
        let payload = &mut turn.cx.payload;
        payload.clear();
        payload.resize(size, b'x');
        turn.out.frame(OpCode::Data(Data::Text), payload);
    }
    Transition::Close(1000)
}

/// A cycle that ended with the server's close completed.
pub fn on_end(end: &End, age_ns: u64, cx: &mut Shared) {
    if *end == End::Done
        && let Some(churn) = cx.report.churn.as_mut()
    {
        churn.completed += 1;
        churn.cycle.record_us(age_ns / 1000);
    }
}
