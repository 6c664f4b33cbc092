//! A validated run: the command line checked against itself and the machine (URL
//! resolution, source addresses, the open-file limit), and split into per-process
//! engine configurations.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::cli::{Args, Scenario};
use crate::engine::unix_now_ns;
use crate::procfs;
use crate::scenario::echo::ECHO_HEADER;
use crate::settings::{
    ChurnLoad, EchoLoad, EngineConfig, MainLatency, PushClients, RecoverPlan, SubscribeMode,
};
use crate::sources;
use crate::target::Endpoint;
use crate::tls::{self, TlsOptions, TlsTarget};

/// File descriptors each process keeps for itself (pipes, stdio, the poll, publishers).
pub const RESERVED_FDS: u64 = 100;

/// How the publish API is reached (push scenario).
#[derive(Debug, Clone)]
pub struct PublishTarget {
    /// Server address.
    pub addr: SocketAddr,
    /// `Host` header value.
    pub host_header: String,
    /// Request target, `{base path}/v1/publish`.
    pub path: String,
}

/// A checked run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The command line.
    pub args: Args,
    /// The parsed `--url`.
    pub endpoint: Endpoint,
    /// Where `--url` resolved to.
    pub target: SocketAddr,
    /// TLS for a `wss://` URL (each process builds the same from the same flags).
    pub tls: Option<TlsTarget>,
    /// Source addresses over all processes.
    pub sources: Vec<IpAddr>,
    /// Processes holding connections (1: in this process).
    pub processes: usize,
    /// Most connections one process may hold.
    pub per_process_limit: u64,
    /// The publish API (push only).
    pub publish: Option<PublishTarget>,
    /// How long the coordinator waits for the ramp.
    pub ramp_timeout: Duration,
    /// Width of one timeline bucket.
    pub timeline_bucket: Duration,
    /// Unix time (ns) the run started: the timeline's origin in every process.
    pub run_start_unix_ns: u64,
    /// `--recover-back`'s channel positions, once the coordinator's prefill found them
    /// (children get them in `--recover-positions`).
    pub recover_positions: Option<Vec<(u64, String)>>,
}

impl Plan {
    /// Checks `args`; the error is a usage message (exit status 2).
    pub fn new(args: Args) -> Result<Self, String> {
        let endpoint = Endpoint::parse(&args.url, "ws").map_err(|e| e.to_string())?;
        let target = endpoint.resolve().map_err(|e| e.to_string())?;
        let tls = if endpoint.tls {
            let options = TlsOptions {
                ca_file: args.ca_file.as_deref(),
                insecure: args.insecure,
                resume: !args.no_tls_resume,
                groups: &args.tls_groups,
            };
            Some(tls::client_config(&endpoint.host, &options)?)
        } else {
            if args.ca_file.is_some()
                || args.insecure
                || args.no_tls_resume
                || !args.tls_groups.is_empty()
            {
                return Err(
                    "--ca-file, --insecure, --no-tls-resume and --tls-groups need a wss:// --url"
                        .into(),
                );
            }
            None
        };
        if args.connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        if args.ramp_rate <= 0.0 {
            return Err("--ramp-rate must be positive".into());
        }
        let source_spec = match &args.source_addrs {
            Some(spec) => spec.clone(),
            None if target.ip().is_loopback() && target.is_ipv4() => {
                sources::LOOPBACK_DEFAULT.to_owned()
            }
            None => "none".to_owned(),
        };
        let sources = sources::parse(&source_spec).map_err(|e| e.to_string())?;
        if let Some(mismatch) = sources.iter().find(|s| s.is_ipv4() != target.is_ipv4()) {
            return Err(format!(
                "--source-addrs: {mismatch} is not the same IP version as the target {target}"
            ));
        }
        let mut publish = None;
        match args.scenario {
            Scenario::Push => {
                let url = args
                    .publish_url
                    .as_deref()
                    .ok_or("push needs --publish-url (the base URL of the publish API)")?;
                let base = Endpoint::parse(url, "http").map_err(|e| e.to_string())?;
                let addr = base.resolve().map_err(|e| e.to_string())?;
                let prefix = base.path_and_query.trim_end_matches('/');
                publish = Some(PublishTarget {
                    addr,
                    host_header: base.host_header(),
                    path: format!("{prefix}/v1/publish"),
                });
                if args.token_secret.is_none() {
                    return Err("push needs --token-secret (or PINGWHEEL_TOKEN_SECRET) to sign client tokens".into());
                }
                if args.channels == 0 || args.publishers == 0 || args.publish_rate <= 0.0 {
                    return Err(
                        "push needs --channels, --publishers and --publish-rate above 0".into(),
                    );
                }
            }
            Scenario::Echo => {
                if args.message_size < ECHO_HEADER {
                    return Err(format!(
                        "--message-size must be at least {ECHO_HEADER} bytes"
                    ));
                }
                if args.message_size as u64 > args.max_message_size {
                    return Err("--message-size exceeds --max-message-size".into());
                }
            }
            Scenario::Churn => {
                if args.churn_rate <= 0.0 {
                    return Err("churn needs a positive --churn-rate".into());
                }
            }
            Scenario::Idle => {}
        }
        if args.recover_back.is_some() && args.scenario != Scenario::Push {
            return Err("--recover-back is a push option".into());
        }
        if args.recover_back == Some(0) {
            return Err("--recover-back must be at least 1".into());
        }
        if args.recover_back.is_some() && args.subscribe == SubscribeMode::UrlAck {
            return Err("--recover-back subscribes with since: use --subscribe url or op".into());
        }
        let recover_positions = match &args.recover_positions {
            Some(text) => Some(RecoverPlan::parse_positions(text)?),
            None => None,
        };
        let channels = if args.fanout_burst { 1 } else { args.channels };
        if let Some(positions) = &recover_positions
            && positions.len() != channels as usize
        {
            return Err(format!(
                "--recover-positions has {} positions for {channels} channels",
                positions.len(),
            ));
        }
        let fd_limit = procfs::raise_nofile_limit().map_err(|e| format!("getrlimit: {e}"))?;
        let per_process_limit = args
            .max_per_process
            .unwrap_or_else(|| fd_limit.saturating_sub(RESERVED_FDS))
            .max(1);
        let needed = args.connections.div_ceil(per_process_limit);
        let processes = args
            .processes
            .unwrap_or(1)
            .max(usize::try_from(needed).unwrap_or(usize::MAX))
            .clamp(1, usize::try_from(args.connections).unwrap_or(usize::MAX));
        if processes > 1024 {
            return Err(format!(
                "{} connections need {processes} processes at {per_process_limit} per process; raise the open-file limit",
                args.connections
            ));
        }
        let ramp_estimate = Duration::from_secs_f64(args.connections as f64 / args.ramp_rate);
        let ramp_timeout = args
            .ramp_timeout
            .unwrap_or(ramp_estimate + args.connect_timeout + Duration::from_secs(10));
        let expected_total = match args.scenario {
            Scenario::Churn => args.settle + args.duration,
            _ => ramp_estimate + args.settle + args.duration,
        };
        let timeline_bucket = Duration::from_millis(
            u64::try_from((expected_total / 300).as_millis())
                .unwrap_or(u64::MAX)
                .max(100),
        );
        Ok(Self {
            endpoint,
            target,
            tls,
            sources,
            processes,
            per_process_limit,
            publish,
            ramp_timeout,
            timeline_bucket,
            run_start_unix_ns: args.run_start_unix_ns.unwrap_or_else(unix_now_ns),
            recover_positions,
            args,
        })
    }

    /// The scenario's main latency.
    pub fn main_latency(&self) -> MainLatency {
        match self.args.scenario {
            Scenario::Idle if self.args.client_ping_interval.is_some() => MainLatency::ClientRtt,
            Scenario::Idle | Scenario::Churn => MainLatency::Connect,
            Scenario::Push if self.args.recover_back.is_some() => MainLatency::Recover,
            Scenario::Push => MainLatency::Push,
            Scenario::Echo => MainLatency::Echo,
        }
    }

    /// Channels used by the push scenario (1 with `--fanout-burst`).
    pub fn channels(&self) -> u32 {
        if self.args.fanout_burst {
            1
        } else {
            self.args.channels
        }
    }

    /// How long every phase may take at most; an engine finishes on its own after it.
    pub fn hard_deadline(&self) -> Duration {
        let drain = if self.args.scenario == Scenario::Push {
            self.args.drain_timeout
        } else {
            Duration::ZERO
        };
        self.ramp_timeout + self.args.settle + self.args.duration + drain + Duration::from_secs(60)
    }

    /// `(first global index, connections)` of process `index` of `count`.
    pub fn share(&self, index: usize, count: usize) -> (u64, u64) {
        let (start, len) = sources::split_evenly(
            usize::try_from(self.args.connections).unwrap_or(usize::MAX),
            index,
            count,
        );
        (start as u64, len as u64)
    }

    /// The engine configuration of process `index` of `count`.
    pub fn engine_config(&self, index: usize, count: usize) -> EngineConfig {
        let args = &self.args;
        let (first_index, connections) = self.share(index, count);
        let count_f = count as f64;
        EngineConfig {
            target: self.target,
            host_header: self.endpoint.host_header(),
            path_and_query: self.endpoint.path_and_query.clone(),
            connections,
            first_index,
            ramp_rate: args.ramp_rate / count_f,
            connect_timeout: args.connect_timeout,
            sources: sources::share(&self.sources, index, count),
            tls: self.tls.clone(),
            max_message_size: args.max_message_size,
            client_ping_interval: args.client_ping_interval,
            expect_ping_interval: args.expect_ping_interval,
            push: (args.scenario == Scenario::Push).then(|| PushClients {
                channels: self.channels(),
                token_secret: args.token_secret.clone().unwrap_or_default().into_bytes(),
                subscribe: args.subscribe,
                recover: args.recover_back.map(|back| RecoverPlan {
                    back,
                    positions: self.recover_positions.clone().unwrap_or_default(),
                }),
                publish_delay: args.publish_delay,
            }),
            echo: (args.scenario == Scenario::Echo).then_some(EchoLoad {
                message_size: args.message_size,
                message_rate: args.message_rate,
            }),
            churn: (args.scenario == Scenario::Churn).then_some(ChurnLoad {
                rate: args.churn_rate / count_f,
                message_size: args.churn_message_size,
            }),
            main_latency: self.main_latency(),
            timeline_bucket: self.timeline_bucket,
            run_start_unix_ns: self.run_start_unix_ns,
            progress_every: Duration::from_millis(250),
            hard_deadline: self.hard_deadline(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn plan(extra: &[&str]) -> Result<Plan, String> {
        let mut argv = vec!["pingwheel-loadtest"];
        argv.extend_from_slice(extra);
        Plan::new(Args::try_parse_from(argv).expect("arguments parse"))
    }

    #[test]
    fn splits_over_processes_when_asked_or_needed() {
        let p = plan(&[
            "idle",
            "--url",
            "ws://127.0.0.1:9/",
            "-c",
            "1000",
            "--processes",
            "3",
        ])
        .unwrap();
        assert_eq!(p.processes, 3);
        let shares: Vec<(u64, u64)> = (0..3).map(|i| p.share(i, 3)).collect();
        assert_eq!(shares, [(0, 334), (334, 333), (667, 333)]);
        let config = p.engine_config(1, 3);
        assert_eq!(config.connections, 333);
        assert_eq!(config.first_index, 334);
        assert!((config.ramp_rate - 5000.0 / 3.0).abs() < 1e-9);
        assert_eq!(
            config.sources.len(),
            84,
            "253 loopback sources split three ways"
        );

        let p = plan(&[
            "idle",
            "--url",
            "ws://127.0.0.1:9/",
            "-c",
            "30000",
            "--max-per-process",
            "19900",
        ])
        .unwrap();
        assert_eq!(p.processes, 2);
        let p = plan(&[
            "idle",
            "--url",
            "ws://127.0.0.1:9/",
            "-c",
            "2",
            "--processes",
            "5",
        ])
        .unwrap();
        assert_eq!(p.processes, 2, "never more processes than connections");
    }

    #[test]
    fn loopback_targets_default_to_many_sources() {
        let p = plan(&["idle", "--url", "ws://127.0.0.1:9/"]).unwrap();
        assert_eq!(p.sources.len(), 253);
        let p = plan(&[
            "idle",
            "--url",
            "ws://127.0.0.1:9/",
            "--source-addrs",
            "none",
        ])
        .unwrap();
        assert!(p.sources.is_empty());
        let p = plan(&["idle", "--url", "ws://[::1]:9/"]).unwrap();
        assert!(p.sources.is_empty(), "no IPv4 default for an IPv6 target");
        assert!(plan(&["idle", "--url", "ws://[::1]:9/", "--source-addrs", "4"]).is_err());
    }

    #[test]
    fn scenario_requirements_are_usage_errors() {
        let base = ["--url", "ws://127.0.0.1:9/"];
        let err = plan(&[&["push"][..], &base].concat()).unwrap_err();
        assert!(err.contains("--publish-url"), "{err}");
        let err = plan(
            &[
                &["push"][..],
                &base,
                &["--publish-url", "http://127.0.0.1:1"],
            ]
            .concat(),
        )
        .unwrap_err();
        assert!(err.contains("--token-secret"), "{err}");
        let err = plan(&[&["echo"][..], &base, &["--message-size", "8"]].concat()).unwrap_err();
        assert!(err.contains("--message-size"), "{err}");
        assert!(plan(&[&["churn"][..], &base, &["--churn-rate", "0"]].concat()).is_err());
        assert!(plan(&[&["idle"][..], &base, &["--ramp-rate", "0"]].concat()).is_err());
        let wss = plan(&["idle", "--url", "wss://127.0.0.1:9/", "--insecure"]).unwrap();
        assert!(wss.tls.is_some() && wss.engine_config(0, 1).tls.is_some());
        assert!(
            plan(&["idle", "--url", "ws://127.0.0.1:9/"])
                .unwrap()
                .tls
                .is_none()
        );
        let err = plan(&[&["idle"][..], &base, &["--insecure"]].concat()).unwrap_err();
        assert!(err.contains("wss://"), "{err}");
        let err = plan(&[
            "idle",
            "--url",
            "wss://127.0.0.1:9/",
            "--ca-file",
            "/nonexistent.pem",
        ])
        .unwrap_err();
        assert!(
            err.contains("cannot read") && err.contains("/nonexistent.pem"),
            "{err}"
        );
        let err = plan(&[
            "idle",
            "--url",
            "wss://127.0.0.1:9/",
            "--insecure",
            "--tls-groups",
            "x448",
        ])
        .unwrap_err();
        assert!(
            err.contains("unknown group `x448`") && err.contains("x25519"),
            "{err}"
        );
        let both = [
            "pingwheel-loadtest",
            "idle",
            "--url",
            "wss://h:9/",
            "--ca-file",
            "a",
            "--insecure",
        ];
        assert!(
            Args::try_parse_from(both).is_err(),
            "--ca-file conflicts with --insecure"
        );
        let push = [
            &["push"][..],
            &base,
            &["--publish-url", "http://127.0.0.1:1", "--token-secret", "s"],
        ]
        .concat();
        let err = plan(&[&push[..], &["--recover-back", "0"]].concat()).unwrap_err();
        assert!(err.contains("at least 1"), "{err}");
        let err = plan(
            &[
                &push[..],
                &["--recover-back", "5", "--subscribe", "url-ack"],
            ]
            .concat(),
        )
        .unwrap_err();
        assert!(err.contains("--subscribe url or op"), "{err}");
        let err = plan(&[&["idle"][..], &base, &["--recover-back", "5"]].concat()).unwrap_err();
        assert!(err.contains("push option"), "{err}");
        let err = plan(
            &[
                &push[..],
                &[
                    "--channels",
                    "2",
                    "--recover-back",
                    "5",
                    "--recover-positions",
                    "9:E",
                ],
            ]
            .concat(),
        )
        .unwrap_err();
        assert!(err.contains("1 positions for 2 channels"), "{err}");
        let p = plan(
            &[
                &push[..],
                &[
                    "--channels",
                    "2",
                    "--recover-back",
                    "5",
                    "--recover-positions",
                    "9:E,7:F",
                ],
            ]
            .concat(),
        )
        .unwrap();
        assert_eq!(p.main_latency(), MainLatency::Recover);
        let recover = p.engine_config(0, 1).push.unwrap().recover.unwrap();
        assert_eq!(recover.positions, [(9, "E".into()), (7, "F".into())]);
        assert_eq!(RecoverPlan::positions_arg(&recover.positions), "9:E,7:F");
    }

    #[test]
    fn push_targets_and_channels() {
        let p = plan(&[
            "push",
            "--url",
            "ws://127.0.0.1:9/ws",
            "--publish-url",
            "http://127.0.0.1:10/api/",
            "--token-secret",
            "s",
            "--channels",
            "7",
        ])
        .unwrap();
        let publish = p.publish.as_ref().unwrap();
        assert_eq!(publish.path, "/api/v1/publish");
        assert_eq!(publish.host_header, "127.0.0.1:10");
        assert_eq!(p.channels(), 7);
        assert_eq!(p.main_latency(), MainLatency::Push);
        let config = p.engine_config(0, 1);
        assert_eq!(config.push.unwrap().channels, 7);
    }
}
