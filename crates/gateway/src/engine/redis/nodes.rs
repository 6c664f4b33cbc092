//! The cluster's node list and cluster-wide operations, through Redis.
//!
//! * **Heartbeats.** Every [`HEARTBEAT_INTERVAL`] each node writes one field of the
//!   `pw:nodes` hash on the first instance: its name → [`NodeInfo`] as JSON. A node
//!   whose heartbeat is older than [`NODE_EXPIRY`] is not listed (and its field is
//!   deleted by whoever lists), so a SIGKILLed node disappears within seconds.
//!   Heartbeat times are the writers' wall clocks: nodes are expected to run NTP.
//! * **Control messages** go over the `pw:ctl` pub/sub channel on the first instance,
//!   which every node subscribes; the node that sends one receives it too, so a
//!   cluster-wide operation runs through one path on every node, its own included.
//!
//! Pure: JSON in, JSON out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// How often a node writes its heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// A heartbeat older than this means the node is gone.
pub const NODE_EXPIRY: Duration = Duration::from_secs(5);

/// One node as `GET /v1/nodes` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// `--node-name`.
    pub name: String,
    /// Open client connections on the node.
    pub connections: u64,
    /// Subscriptions on the node (a connection on two channels counts twice).
    pub subscriptions: u64,
    /// When the node wrote this, ms since the Unix epoch.
    pub heartbeat_ms: u64,
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Splits a `pw:nodes` read into the live nodes (sorted by name) and the names of the
/// expired or unreadable fields (to delete).
pub fn live_nodes(fields: Vec<(String, Vec<u8>)>, now_ms: u64) -> (Vec<NodeInfo>, Vec<String>) {
    let cutoff = now_ms.saturating_sub(NODE_EXPIRY.as_millis() as u64);
    let mut live = Vec::new();
    let mut stale = Vec::new();
    for (name, json) in fields {
        match serde_json::from_slice::<NodeInfo>(&json) {
            Ok(info) if info.heartbeat_ms >= cutoff && info.name == name => live.push(info),
            _ => stale.push(name),
        }
    }
    live.sort_by(|a, b| a.name.cmp(&b.name));
    (live, stale)
}

/// A cluster-wide operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Control {
    /// Close every connection of `user` (`POST /v1/disconnect`).
    Disconnect {
        /// The user id.
        user: String,
    },
}

impl Control {
    /// The message as sent on `pw:ctl`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A message received on `pw:ctl`; `None` for anything else (a newer node's
    /// operation this one does not know is ignored).
    pub fn parse(payload: &[u8]) -> Option<Control> {
        serde_json::from_slice(payload).ok()
    }
}

/// The default `--node-name`: the host name and a random suffix, so two gateways on
/// one host never share a name.
pub fn default_node_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it
    // or truncates, and we stop at the first NUL or the end.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let host = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    let host = if host.is_empty() {
        "pingwheel".into()
    } else {
        host
    };
    let suffix: String = (0..6)
        .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[fastrand::usize(..36)]))
        .collect();
    format!("{host}-{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, heartbeat_ms: u64) -> (String, Vec<u8>) {
        let node = NodeInfo {
            name: name.into(),
            connections: 3,
            subscriptions: 4,
            heartbeat_ms,
        };
        (name.into(), serde_json::to_vec(&node).unwrap())
    }

    #[test]
    fn lists_live_nodes_and_names_the_stale_ones() {
        let now = 100_000;
        let (live, stale) = live_nodes(
            vec![
                info("b", now - 1_000),
                info("a", now),
                info("old", now - 6_000),
                ("junk".into(), b"{".to_vec()),
            ],
            now,
        );
        assert_eq!(
            live.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(stale, ["old", "junk"]);
    }

    #[test]
    fn control_messages_round_trip() {
        let c = Control::Disconnect { user: "42".into() };
        assert_eq!(c.to_json(), r#"{"op":"disconnect","user":"42"}"#);
        assert_eq!(Control::parse(c.to_json().as_bytes()), Some(c));
        assert_eq!(Control::parse(br#"{"op":"reboot"}"#), None);
        let name = default_node_name();
        assert!(name.len() > 7 && name.contains('-'), "{name}");
        assert_ne!(name, default_node_name());
    }
}
