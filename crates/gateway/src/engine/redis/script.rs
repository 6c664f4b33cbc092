//! The two Lua scripts the Redis engine runs, and their replies.
//!
//! **Publish** ([`PUBLISH`], one call per message; a batch pipelines its calls): in
//! one atomic step on the stream's instance,
//!
//! 1. read the stream's epoch from its meta hash, creating one (from `ARGV`, drawn
//!    by the node: scripts have no randomness) when there is none — a fresh epoch
//!    deletes any history left from an older one;
//! 2. `HINCRBY meta s 1`: the message's seq;
//! 3. `EXPIRE meta <meta_ttl>` (longer than any history TTL), so a position outlives
//!    quiet periods and node restarts;
//! 4. when the namespace keeps history: `XADD history MAXLEN <size> <seq> d <data> t <µs>`
//!    (entry id = `<seq>-0`, exact trimming) and `EXPIRE history <history_ttl>`;
//! 5. `PUBLISH` the message with its position inline ([`super::message`]).
//!
//! One script doing all three makes seq order delivery order on every node: Redis runs
//! scripts one at a time, and a node's pub/sub connection receives `PUBLISH`es in the
//! order they ran. The reply is `{seq, epoch}`.
//!
//! **Read** ([`READ`]): the stream's position and, in the same atomic step, the kept
//! entries after a given seq when the epoch matches — for a recovery, a gap refill and
//! the history API. It also returns Redis's clock, so entries older than the
//! namespace's TTL are treated as gone (`EXPIRE` on the stream only bounds the whole
//! stream; the per-message TTL is applied when reading). With `create` set, a stream
//! without a position gets one (seq 0, a fresh epoch), so the epoch a subscriber is
//! told is the one the first publish continues.
//!
//! Both run through `EVALSHA`; a `NOSCRIPT` reply (Redis restarted, `SCRIPT FLUSH`)
//! loads the script and retries just the calls that were refused (see
//! [`super::instance`]).

use std::sync::LazyLock;

use redis::Value;

/// The publish script. See the module docs.
pub const PUBLISH_LUA: &str = r#"
local epoch = redis.call("hget", KEYS[1], "e")
if not epoch then
  epoch = ARGV[6]
  redis.call("hset", KEYS[1], "e", epoch, "s", 0)
  redis.call("del", KEYS[2])
end
local seq = redis.call("hincrby", KEYS[1], "s", 1)
redis.call("expire", KEYS[1], ARGV[5])
local now = redis.call("time")
local micros = now[1] .. string.format("%06d", tonumber(now[2]))
local s = string.format("%d", seq)
if tonumber(ARGV[3]) > 0 then
  redis.call("xadd", KEYS[2], "MAXLEN", ARGV[3], s, "d", ARGV[2], "t", micros)
  redis.call("expire", KEYS[2], ARGV[4])
end
redis.call("publish", ARGV[1], s .. ":" .. epoch .. ":" .. micros .. ":" .. ARGV[2])
return {seq, epoch}
"#;

/// The read script. See the module docs.
///
/// `KEYS`: meta, history. `ARGV`: epoch to match, after-seq, last seq to read, mode,
/// new epoch when creating (`""`: never create), meta TTL. Modes:
///
/// * `r` (recovery): when the epoch matches, `after+1 ..= top`, but only when the top is
///   at most the last seq (a recovery never hands out part of what is missing);
/// * `f` (fill): when the epoch matches, at most `last - after` entries from `after+1`;
/// * `h` (history API): like `f` when the epoch matches, else at most `last - after`
///   entries from the oldest kept.
///
/// Reply: `{top, epoch or nil, entries, now_µs}`.
pub const READ_LUA: &str = r#"
local m = redis.call("hmget", KEYS[1], "e", "s")
local now = redis.call("time")
local micros = now[1] .. string.format("%06d", tonumber(now[2]))
local epoch, top = m[1], tonumber(m[2] or "0")
if not epoch then
  if ARGV[5] == "" then return {0, false, {}, micros} end
  epoch = ARGV[5]
  redis.call("hset", KEYS[1], "e", epoch, "s", 0)
  redis.call("expire", KEYS[1], ARGV[6])
  redis.call("del", KEYS[2])
  return {0, epoch, {}, micros}
end
local after, last, mode = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local entries = {}
if top > 0 and last > after then
  local from = string.format("%d", after + 1)
  local count = string.format("%d", last - after)
  if ARGV[1] == epoch then
    if mode == "r" then
      if after < top and top <= last then
        entries = redis.call("xrange", KEYS[2], from, string.format("%d", top))
      end
    elseif after < top then
      entries = redis.call("xrange", KEYS[2], from, "+", "COUNT", count)
    end
  elseif mode == "h" then
    entries = redis.call("xrange", KEYS[2], "-", "+", "COUNT", count)
  end
end
return {top, epoch, entries, micros}
"#;

/// The loaded form of [`PUBLISH_LUA`] (its SHA1 computed once).
pub static PUBLISH: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(PUBLISH_LUA));
/// The loaded form of [`READ_LUA`].
pub static READ: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(READ_LUA));

/// Why a reply could not be understood (a bug, or something else wrote our keys).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unexpected Redis reply: {0}")]
pub struct BadReply(pub &'static str);

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

/// A publish script's reply: the position it assigned.
pub fn parse_published(reply: &Value) -> Result<(u64, String), BadReply> {
    let Value::Array(items) = reply else {
        return Err(BadReply("publish: not an array"));
    };
    let [seq, epoch] = items.as_slice() else {
        return Err(BadReply("publish: not two items"));
    };
    let seq = int(seq)
        .and_then(|s| u64::try_from(s).ok())
        .filter(|&s| s > 0)
        .ok_or(BadReply("publish: seq"))?;
    let epoch = text(epoch).ok_or(BadReply("publish: epoch"))?;
    Ok((seq, epoch.to_owned()))
}

/// One kept message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its seq (the entry id's first part).
    pub seq: u64,
    /// The published JSON.
    pub data: Vec<u8>,
    /// Redis's clock when it was published, µs since the Unix epoch.
    pub micros: u64,
}

/// A read script's reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    /// The top seq (0: nothing published, or no position).
    pub top: u64,
    /// The epoch; `None` when the stream has no position (and none was created).
    pub epoch: Option<String>,
    /// Kept entries in seq order (possibly none).
    pub entries: Vec<Entry>,
    /// Redis's clock at the read, µs since the Unix epoch.
    pub now_micros: u64,
}

impl Read {
    /// Drops the entries older than `ttl_micros` (the namespace's per-message TTL):
    /// they are the oldest, so this only shortens the front.
    pub fn expire(&mut self, ttl_micros: u64) {
        let cutoff = self.now_micros.saturating_sub(ttl_micros);
        let keep_from = self.entries.partition_point(|e| e.micros < cutoff);
        self.entries.drain(..keep_from);
    }
}

fn parse_entry(v: Value) -> Result<Entry, BadReply> {
    let Value::Array(pair) = v else {
        return Err(BadReply("entry: not an array"));
    };
    let mut pair = pair.into_iter();
    let (Some(id), Some(Value::Array(fields))) = (pair.next(), pair.next()) else {
        return Err(BadReply("entry: shape"));
    };
    let id = text(&id).ok_or(BadReply("entry: id"))?;
    let seq = id
        .split_once('-')
        .map_or(id, |(ms, _)| ms)
        .parse()
        .map_err(|_| BadReply("entry: id"))?;
    let (mut data, mut micros) = (None, 0);
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        match text(&name) {
            Some("d") => data = bytes(value),
            Some("t") => micros = int(&value).and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
            _ => {}
        }
    }
    Ok(Entry {
        seq,
        data: data.ok_or(BadReply("entry: no data"))?,
        micros,
    })
}

/// Parses a read script's reply.
pub fn parse_read(reply: Value) -> Result<Read, BadReply> {
    let Value::Array(items) = reply else {
        return Err(BadReply("read: not an array"));
    };
    let mut items = items.into_iter();
    let (Some(top), Some(epoch), Some(entries), Some(now)) =
        (items.next(), items.next(), items.next(), items.next())
    else {
        return Err(BadReply("read: not four items"));
    };
    let top = int(&top)
        .and_then(|t| u64::try_from(t).ok())
        .ok_or(BadReply("read: top"))?;
    let epoch = match &epoch {
        Value::Nil => None,
        v => Some(text(v).ok_or(BadReply("read: epoch"))?.to_owned()),
    };
    let entries = match entries {
        Value::Array(list) => list
            .into_iter()
            .map(parse_entry)
            .collect::<Result<Vec<_>, _>>()?,
        Value::Nil => Vec::new(),
        _ => return Err(BadReply("read: entries")),
    };
    let now_micros = int(&now)
        .and_then(|n| u64::try_from(n).ok())
        .ok_or(BadReply("read: time"))?;
    Ok(Read {
        top,
        epoch,
        entries,
        now_micros,
    })
}

/// The read script's modes (see [`READ_LUA`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// `after+1 ..= top` when the epoch matches and the top is at most `last`.
    Recover,
    /// At most `last - after` entries from `after+1`, when the epoch matches.
    Fill,
    /// Like `Fill`, or from the oldest kept when the epoch does not match.
    History,
}

/// What the read script is asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadArgs<'a> {
    /// Read entries only when the stream is in this epoch (`""`: never).
    pub epoch: &'a str,
    /// Entries after this seq.
    pub after: u64,
    /// Up to this seq.
    pub last: u64,
    /// What to read (see [`READ_LUA`]).
    pub mode: ReadMode,
    /// A fresh epoch for a stream without a position (`""`: leave it without one).
    pub create: &'a str,
    /// The meta TTL in seconds, for a created position.
    pub meta_ttl: u64,
}

impl ReadArgs<'_> {
    /// Adds this read to `invocation` (after its two keys).
    pub fn apply(&self, invocation: &mut redis::ScriptInvocation<'_>) {
        invocation
            .arg(self.epoch)
            .arg(self.after)
            .arg(self.last)
            .arg(match self.mode {
                ReadMode::Recover => "r",
                ReadMode::Fill => "f",
                ReadMode::History => "h",
            })
            .arg(self.create)
            .arg(self.meta_ttl);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_a_publish_reply() {
        let reply = Value::Array(vec![Value::Int(3), bulk("AbCdEfGh")]);
        assert_eq!(parse_published(&reply), Ok((3, "AbCdEfGh".to_owned())));
        assert!(parse_published(&Value::Array(vec![Value::Int(0), bulk("x")])).is_err());
        assert!(parse_published(&Value::Nil).is_err());
    }

    #[test]
    fn parses_a_read_reply_and_expires_old_entries() {
        let entry = |seq: u64, micros: u64| {
            Value::Array(vec![
                bulk(&format!("{seq}-0")),
                Value::Array(vec![
                    bulk("d"),
                    bulk("{}"),
                    bulk("t"),
                    bulk(&micros.to_string()),
                ]),
            ])
        };
        let reply = Value::Array(vec![
            Value::Int(12),
            bulk("AbCdEfGh"),
            Value::Array(vec![entry(10, 1_000), entry(11, 5_000), entry(12, 9_000)]),
            bulk("10000"),
        ]);
        let mut read = parse_read(reply).unwrap();
        assert_eq!(read.top, 12);
        assert_eq!(read.epoch.as_deref(), Some("AbCdEfGh"));
        assert_eq!(
            read.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [10, 11, 12]
        );
        read.expire(6_000);
        assert_eq!(
            read.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [11, 12]
        );
        let none = Value::Array(vec![
            Value::Int(0),
            Value::Nil,
            Value::Array(vec![]),
            bulk("1"),
        ]);
        assert_eq!(parse_read(none).unwrap().epoch, None);
    }
}
