//! The live message a publish script sends on a stream's pub/sub channel.
//!
//! ```text
//! <seq>:<epoch>:<µs>:<data>
//! 42:Xy3kP0aQ:1764633600123456:{"score":3}
//! ```
//!
//! `seq` and `epoch` are the position the script assigned (so every node can check
//! that it saw every seq), `µs` is Redis's clock when the script ran (microseconds
//! since the Unix epoch, for the delivery lag), and `data` is the published JSON,
//! verbatim. Neither the seq, the epoch nor the time contains a `:`, so the first three
//! colons split it; the data may contain any bytes.
//!
//! Pure: bytes in, fields out.

/// One live message, borrowed from the pub/sub payload.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct LiveMessage<'a> {
    /// Its seq.
    pub seq: u64,
    /// Its epoch, as the script wrote it.
    pub epoch: &'a str,
    /// Redis's clock when it was published, µs since the Unix epoch.
    pub micros: u64,
    /// The published JSON.
    pub data: &'a [u8],
}

/// Why a payload is not a live message (a foreign publisher on our channel, or a bug).
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed pub/sub message")]
pub struct Malformed;

fn digits(field: &[u8]) -> Result<u64, Malformed> {
    if field.is_empty() || field.len() > 19 || !field.iter().all(u8::is_ascii_digit) {
        return Err(Malformed);
    }
    Ok(field.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

fn split_colon(bytes: &[u8]) -> Result<(&[u8], &[u8]), Malformed> {
    let at = bytes.iter().position(|&b| b == b':').ok_or(Malformed)?;
    Ok((&bytes[..at], &bytes[at + 1..]))
}

impl<'a> LiveMessage<'a> {
    /// Parses a pub/sub payload.
    ///
    /// # Errors
    /// [`Malformed`] unless it has the shape above with a seq ≥ 1.
    ///
    /// # Examples
    ///
    /// ```
    /// use pingwheel::engine::redis::message::LiveMessage;
    /// let m = LiveMessage::parse(b"42:Xy3kP0aQ:17:{\"a\":1}").unwrap();
    /// assert_eq!((m.seq, m.epoch, m.micros, m.data), (42, "Xy3kP0aQ", 17, &b"{\"a\":1}"[..]));
    /// ```
    pub fn parse(payload: &'a [u8]) -> Result<LiveMessage<'a>, Malformed> {
        let (seq, rest) = split_colon(payload)?;
        let (epoch, rest) = split_colon(rest)?;
        let (micros, data) = split_colon(rest)?;
        let seq = digits(seq)?;
        if seq == 0 || epoch.is_empty() {
            return Err(Malformed);
        }
        let epoch = std::str::from_utf8(epoch).map_err(|_| Malformed)?;
        Ok(LiveMessage {
            seq,
            epoch,
            micros: digits(micros)?,
            data,
        })
    }
}

/// Encodes a live message the way the publish script does (for tests and tools).
pub fn encode(seq: u64, epoch: &str, micros: u64, data: &[u8]) -> Vec<u8> {
    let mut out = format!("{seq}:{epoch}:{micros}:").into_bytes();
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_data_may_hold_colons() {
        let bytes = encode(7, "AbCdEfGh", 1_764_633_600_123_456, br#"{"t":"a:b:c"}"#);
        let m = LiveMessage::parse(&bytes).unwrap();
        assert_eq!(m.seq, 7);
        assert_eq!(m.epoch, "AbCdEfGh");
        assert_eq!(m.micros, 1_764_633_600_123_456);
        assert_eq!(m.data, br#"{"t":"a:b:c"}"#);
    }

    #[test]
    fn refuses_what_no_script_sends() {
        for bad in [
            &b""[..],
            b"1:e:2",
            b"x:e:2:{}",
            b"0:e:2:{}",
            b"1::2:{}",
            b"1:e::{}",
            b"-1:e:2:{}",
            b"99999999999999999999:e:2:{}",
            b"1:\xff:2:{}",
        ] {
            assert_eq!(LiveMessage::parse(bad), Err(Malformed), "{bad:?}");
        }
        assert!(LiveMessage::parse(b"1:e:2:").is_ok(), "empty data parses");
    }
}
