//! The two Lua scripts the Redis engine runs, and their replies.
//!
//! **Publish** ([`PUBLISH`]): one call carries a batch of *targets* (one message
//! each, up to [`super::node::PUBLISH_CHUNK`]; a bigger batch pipelines several calls)
//! and returns every target's position. For each target, in order, in one atomic step
//! on the stream's instance:
//!
//! 1. `HMGET meta e s x`: the stream's epoch, top seq and when its TTLs were last set;
//!    with no epoch, a new position (epoch from the call, drawn by the node: scripts
//!    have no randomness) — a fresh epoch deletes any history left from an older one;
//! 2. `HSET meta s <seq>` (the top + 1), and `x <now>` when the TTLs are renewed;
//! 3. TTLs, renewed only when `x` is at least `refresh` seconds from Redis's clock
//!    (either way: a clock that jumped renews too): `EXPIRE meta <meta_ttl + refresh>`
//!    and `EXPIRE history <history_ttl + refresh>`. Between renewals every publish
//!    comes less than `refresh` after the last one, so each key still outlives the
//!    stream's last publish by at least its TTL; it may outlive it by up to `refresh`
//!    more ([`refresh_secs`]: a tenth of the shorter TTL, 1 to 60 s). The meta TTL is
//!    longer than any history TTL, so a position outlives quiet periods and restarts;
//! 4. when the namespace keeps history: `XADD history NOMKSTREAM MAXLEN ~ <size> <seq> d
//!    <data> t <µs>` (entry id = `<seq>-0`); a history that is not there (expired,
//!    evicted, new) is created by a plain `XADD` and given its TTL at once. Trimming is
//!    approximate: Redis drops only whole stream nodes (`stream-node-max-entries`, 100
//!    by default), so a stream holds from `size` up to about `size` + 100 entries. Exact
//!    trimming rewrites the head node on every publish and cost ~10 µs of Redis CPU a
//!    message (docs/benchmarks.md); the read script hides the extra entries instead;
//! 5. `PUBLISH` the message with its position inline ([`super::message`]).
//!
//! A stream named twice in one call is looked up once (its epoch and top are carried
//! in the script), and its seqs in the call are contiguous. Redis runs scripts one at a
//! time, and a node's pub/sub connection receives `PUBLISH`es in the order they ran, so
//! seq order is delivery order on every node. A target whose `HSET` ran is numbered for
//! good: a call that fails half-way (a wrong-typed key) keeps what it did, and never
//! hands out a seq twice. The reply is `{seq₁, epoch₁, seq₂, epoch₂, …}`.
//!
//! **Read** ([`READ`]): the stream's position and, in the same atomic step, the kept
//! entries after a given seq when the epoch matches — for a recovery, a gap refill and
//! the history API. Only the newest `size` seqs count as kept (`top - size + 1 ..=
//! top`), whatever approximate trimming left older than that, so every mode answers
//! exactly what exact trimming would have kept. It also returns Redis's clock, so
//! entries older than the namespace's TTL are treated as gone (`EXPIRE` on the stream only bounds the whole
//! stream; the per-message TTL is applied when reading). With `create` set, a stream
//! without a position gets one (seq 0, a fresh epoch), so the epoch a subscriber is
//! told is the one the first publish continues.
//!
//! Both run through `EVALSHA`; a `NOSCRIPT` reply (Redis restarted, `SCRIPT FLUSH`)
//! loads the script and retries just the calls that were refused (see
//! [`super::instance`]).

use std::sync::LazyLock;

use redis::Value;

use super::keys::{self, Kind};

/// The publish script. See the module docs.
///
/// `KEYS`: meta₁, history₁, meta₂, history₂, … `ARGV`: the meta TTL, then six per
/// target: pub/sub channel, data, history size, history TTL, refresh, new epoch.
pub const PUBLISH_LUA: &str = r#"
local now = redis.call("time")
local secs = tonumber(now[1])
local micros = now[1] .. string.format("%06d", tonumber(now[2]))
local meta_ttl = tonumber(ARGV[1])
local seen = {}
local out = {}
for i = 1, #KEYS / 2 do
  local meta, history = KEYS[2 * i - 1], KEYS[2 * i]
  local a = 6 * i - 4
  local data, size, refresh = ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 4])
  local known = seen[meta]
  local epoch, seq, s
  local renew, created = false, false
  if known then
    epoch, seq = known[1], known[2] + 1
    s = string.format("%d", seq)
    redis.call("hset", meta, "s", s)
  else
    local m = redis.call("hmget", meta, "e", "s", "x")
    epoch = m[1]
    if not epoch then
      epoch, seq, renew, created = ARGV[a + 5], 1, true, true
      s = "1"
      redis.call("del", history)
      redis.call("hset", meta, "e", epoch, "s", s, "x", now[1])
    else
      seq = tonumber(m[2] or "0") + 1
      s = string.format("%d", seq)
      renew = math.abs(secs - tonumber(m[3] or "0")) >= refresh
      if renew then
        redis.call("hset", meta, "s", s, "x", now[1])
      else
        redis.call("hset", meta, "s", s)
      end
    end
    if renew then
      redis.call("expire", meta, meta_ttl + refresh)
    end
  end
  seen[meta] = {epoch, seq}
  if size ~= "0" then
    local kept = false
    if not created then
      kept = redis.call("xadd", history, "NOMKSTREAM", "MAXLEN", "~", size, s, "d", data, "t", micros)
    end
    if not kept then
      redis.call("xadd", history, "MAXLEN", "~", size, s, "d", data, "t", micros)
      renew = true
    end
    if renew then
      redis.call("expire", history, ARGV[a + 3] + refresh)
    end
  end
  redis.call("publish", ARGV[a], s .. ":" .. epoch .. ":" .. micros .. ":" .. data)
  out[2 * i - 1] = seq
  out[2 * i] = epoch
end
return out
"#;

/// The read script. See the module docs.
///
/// `KEYS`: meta, history. `ARGV`: epoch to match, after-seq, last seq to read, mode,
/// new epoch when creating (`""`: never create), meta TTL, history size. Only seqs
/// `oldest ..= top` are read, `oldest = max(1, top - size + 1)` (size 0: none). Modes:
///
/// * `r` (recovery): when the epoch matches, `max(after+1, oldest) ..= top`, but only
///   when the top is at most the last seq (a recovery never hands out part of what is
///   missing; a first entry after `after+1` tells the caller the rest is gone);
/// * `f` (fill): when the epoch matches, `max(after+1, oldest) ..= last`;
/// * `h` (history API): like `f` when the epoch matches, else at most `last - after`
///   entries from the oldest.
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
local after, last, mode, size = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[7])
local oldest = math.max(1, top - size + 1)
local entries = {}
if top > 0 and size > 0 and last > after then
  local from = string.format("%d", math.max(after + 1, oldest))
  if ARGV[1] == epoch then
    if mode == "r" then
      if after < top and top <= last then
        entries = redis.call("xrange", KEYS[2], from, string.format("%d", top))
      end
    elseif after < top then
      entries = redis.call("xrange", KEYS[2], from, string.format("%d", last))
    end
  elseif mode == "h" then
    local count = string.format("%d", last - after)
    entries = redis.call("xrange", KEYS[2], string.format("%d", oldest), "+", "COUNT", count)
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

/// How often a stream's TTLs are renewed by the publish script, in seconds: a tenth
/// of the shorter of its history TTL and the meta TTL, at least 1 and at most 60 (so a
/// key outlives its TTL by at most a minute). See the module docs.
pub fn refresh_secs(history_ttl_secs: u64, meta_ttl_secs: u64) -> u64 {
    (history_ttl_secs.min(meta_ttl_secs) / 10).clamp(1, 60)
}

/// One message of a publish-script call.
#[derive(Copy, Clone, Debug)]
pub struct Target<'a> {
    /// The stream's kind.
    pub kind: Kind,
    /// Channel name or user id.
    pub name: &'a str,
    /// The JSON payload.
    pub data: &'a [u8],
    /// Messages its namespace keeps (0: none).
    pub size: u32,
    /// How long each is kept, whole seconds (at least 1).
    pub ttl_secs: u64,
    /// The epoch a stream without a position starts with.
    pub epoch: &'a str,
}

/// A publish-script call carrying no target yet; `meta_ttl_secs` is how long a
/// position outlives its last publish. Add targets with [`add_target`].
pub fn publish_call<'a>(meta_ttl_secs: u64) -> redis::ScriptInvocation<'a> {
    let mut call = PUBLISH.prepare_invoke();
    call.arg(meta_ttl_secs.max(1));
    call
}

/// Appends `target` to `call` (made by [`publish_call`] with `meta_ttl_secs`): its two
/// keys and six arguments.
pub fn add_target(call: &mut redis::ScriptInvocation<'_>, target: &Target<'_>, meta_ttl_secs: u64) {
    let ttl = target.ttl_secs.max(1);
    call.key(keys::meta_key(target.kind, target.name))
        .key(keys::history_key(target.kind, target.name))
        .arg(keys::pubsub_channel(target.kind, target.name))
        .arg(target.data)
        .arg(target.size)
        .arg(ttl)
        .arg(refresh_secs(ttl, meta_ttl_secs.max(1)))
        .arg(target.epoch);
}

/// A publish script's reply for a call of `targets` targets: each one's position, in
/// order.
pub fn parse_published(reply: &Value, targets: usize) -> Result<Vec<(u64, String)>, BadReply> {
    let Value::Array(items) = reply else {
        return Err(BadReply("publish: not an array"));
    };
    if items.len() != 2 * targets {
        return Err(BadReply("publish: not two items per target"));
    }
    items
        .chunks_exact(2)
        .map(|pair| {
            let seq = int(&pair[0])
                .and_then(|s| u64::try_from(s).ok())
                .filter(|&s| s > 0)
                .ok_or(BadReply("publish: seq"))?;
            let epoch = text(&pair[1]).ok_or(BadReply("publish: epoch"))?;
            Ok((seq, epoch.to_owned()))
        })
        .collect()
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
    /// The namespace's history size: only the newest `size` seqs are read (0: none).
    pub size: u32,
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
            .arg(self.meta_ttl)
            .arg(self.size);
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
        let reply = Value::Array(vec![
            Value::Int(3),
            bulk("AbCdEfGh"),
            Value::Int(4),
            bulk("AbCdEfGh"),
        ]);
        assert_eq!(
            parse_published(&reply, 2),
            Ok(vec![(3, "AbCdEfGh".to_owned()), (4, "AbCdEfGh".to_owned())])
        );
        assert!(
            parse_published(&reply, 1).is_err(),
            "one target, two positions"
        );
        assert!(parse_published(&Value::Array(vec![Value::Int(0), bulk("x")]), 1).is_err());
        assert!(parse_published(&Value::Nil, 1).is_err());
    }

    #[test]
    fn ttls_are_renewed_every_tenth_of_the_shorter_ttl_within_a_minute() {
        assert_eq!(refresh_secs(600, 3600), 60);
        assert_eq!(refresh_secs(60, 3600), 6);
        assert_eq!(refresh_secs(1, 3600), 1);
        assert_eq!(refresh_secs(86_400, 86_400 * 7), 60);
        assert_eq!(refresh_secs(600, 100), 10);
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
