//! The settings each part of the gateway takes, built from the one [`Config`]: the only
//! place that maps settings onto parts (the parts keep no defaults of their own for
//! these; `ConnConfig::default()` and `PushLimits::default()` are checked against
//! [`Config::default`] by the tests below).

use crate::conn::ConnConfig;
use crate::conn::keepalive::KeepaliveConfig;
use crate::engine::history::HistoryLimits;
use crate::engine::namespace::Namespaces;
use crate::push::PushLimits;
use crate::push::auth::AuthSettings;
use crate::tls::{CertFiles, Listener};
use crate::worker::WorkerSettings;

use super::Config;

/// Size of each worker's shared read buffer (not a setting: 64 KiB is a fraction of a
/// millisecond of parsing and keeps a flooding peer's turn short).
const READ_BUFFER_SIZE: usize = 64 << 10;

impl Config {
    /// The connection state machine's settings.
    pub fn conn(&self) -> ConnConfig {
        ConnConfig {
            keepalive: KeepaliveConfig {
                ping_interval: self.ping_interval,
                ping_timeout: self.ping_timeout,
                max_ping_slack: self.max_ping_slack,
            },
            open_timeout: self.open_timeout,
            close_timeout: self.close_timeout,
            max_message_size: self.max_message_size,
            max_queued_bytes: self.max_queued_bytes,
            max_handshake_size: self.max_handshake_size,
            echo: self.echo,
        }
    }

    /// The settings of worker `id`.
    pub fn worker(&self, id: usize) -> WorkerSettings {
        WorkerSettings {
            id,
            conn: self.conn(),
            tick: self.tick,
            read_buffer_size: READ_BUFFER_SIZE,
            // The loaded certificate is not a setting: `server.rs` fills this in.
            tls: None,
        }
    }

    /// The WebSocket listener's certificate and key files, when it serves `wss://`
    /// (loading [`Config`] guarantees both or neither).
    pub fn tls_files(&self) -> Option<CertFiles> {
        Some(CertFiles {
            listener: Listener::Ws,
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
        })
    }

    /// The admin listener's certificate and key files, when it serves `https://`.
    pub fn admin_tls_files(&self) -> Option<CertFiles> {
        Some(CertFiles {
            listener: Listener::Admin,
            cert: self.admin_tls_cert.clone()?,
            key: self.admin_tls_key.clone()?,
        })
    }

    /// The push layer's abuse limits: the inbound burst equals the rate
    /// (`--max-inbound-rate` sets both); the limits without a flag keep
    /// `PushLimits::default()`'s values.
    pub fn push_limits(&self) -> PushLimits {
        PushLimits {
            max_subscriptions: self.max_subscriptions,
            max_channel_name: self.max_channel_name,
            inbound_rate_per_sec: self.max_inbound_rate,
            inbound_burst: self.max_inbound_rate,
            max_publish_body: self.max_publish_body,
            ..PushLimits::default()
        }
    }

    /// The namespaces history is kept by (validated when the file was read).
    pub fn namespaces(&self) -> Namespaces {
        Namespaces::new(self.namespaces.clone())
            .unwrap_or_else(|e| unreachable!("namespaces are validated at load: {e}"))
    }

    /// The memory engine's global history bounds.
    pub fn history_limits(&self) -> HistoryLimits {
        HistoryLimits {
            max_bytes: self.history_max_bytes,
            idle_forget: self.channel_idle_forget,
            ..HistoryLimits::default()
        }
    }

    /// Client authentication's settings.
    pub fn auth(&self) -> AuthSettings {
        AuthSettings {
            token_secret: self
                .token_secret
                .as_ref()
                .map(|s| s.expose().as_bytes().to_vec()),
            token_public_key: self.token_public_key.clone(),
            allowed_origins: self.allowed_origins.clone(),
            max_channel_name: self.max_channel_name,
            max_subscriptions: self.max_subscriptions,
            max_token_channels: self.max_token_channels,
        }
    }

    /// True when no token verification key is configured: clients connect anonymously and
    /// may use any channel. The gateway must log this loudly at start-up.
    pub fn is_insecure_dev_mode(&self) -> bool {
        self.token_secret.is_none() && self.token_public_key.is_none()
    }

    /// True when the publish API accepts unauthenticated requests: dev mode and no
    /// [`api_key`](Config::api_key).
    pub fn is_publish_api_open(&self) -> bool {
        self.is_insecure_dev_mode() && self.api_key.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn the_parts_defaults_are_the_configs() {
        let defaults = Config::default();
        assert_eq!(defaults.conn(), ConnConfig::default());
        assert_eq!(defaults.push_limits(), PushLimits::default());
        assert_eq!(defaults.history_limits(), HistoryLimits::default());
        assert_eq!(defaults.namespaces(), Namespaces::default());
    }

    #[test]
    fn auth_settings_come_from_the_config() {
        let config = Config {
            token_secret: Some(Secret::new("s3cret")),
            allowed_origins: vec!["https://a.example".to_owned()],
            ..Config::default()
        };
        let settings = config.auth();
        assert_eq!(settings.token_secret.as_deref(), Some(&b"s3cret"[..]));
        assert_eq!(settings.allowed_origins, ["https://a.example"]);
        assert_eq!(
            (
                settings.max_channel_name,
                settings.max_subscriptions,
                settings.max_token_channels
            ),
            (128, 64, 256)
        );
    }

    #[test]
    fn worker_settings_carry_the_conn_settings_and_tick() {
        let config = Config {
            tick: std::time::Duration::from_millis(5),
            echo: true,
            ..Config::default()
        };
        let worker = config.worker(3);
        assert_eq!((worker.id, worker.tick), (3, config.tick));
        assert_eq!(worker.conn, config.conn());
        assert!(worker.conn.echo);
    }
}
