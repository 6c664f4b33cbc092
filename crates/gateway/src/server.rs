//! Process setup and teardown: listeners, workers, the admin thread, signals, draining.
//!
//! Startup binds everything first (so a busy port fails fast, naming the flag), then
//! starts one [`worker`](crate::worker::spawn) per `--workers`, then prints exactly one line
//! on stdout for scripts and tests:
//!
//! ```text
//! ready listen=0.0.0.0:8080 admin=127.0.0.1:9090
//! ```
//!
//! On the first SIGINT or SIGTERM the gateway stops accepting, marks `/healthz` as
//! draining, sends Close 1001 to every connection, waits up to `--drain-timeout` for
//! the closing handshakes and exits 0. A second signal exits at once with status 1.
//!
//! With `--tls-cert`/`--tls-key` (and `--admin-tls-*`) the certificate files are loaded
//! and checked before anything is bound: a bad file stops the gateway with one line
//! naming the flag, the file and the problem, before the ready line.
//!
//! SIGHUP (`systemctl reload`) reloads the certificate and key files from the same paths:
//! the workers (through their mailboxes) and the admin listener serve new connections
//! with the new pair, open ones keep theirs. A reload that fails keeps the old pair and
//! logs a warning saying why (`pingwheel_tls_reloads_total{result}` counts both). Without
//! TLS it is logged and ignored; it never exits, and does not count towards the
//! second-signal exit.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::RwLock;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{error, info, warn};

use crate::admin::EngineTask;
use crate::admin::cluster::{Cluster, ClusterApi};
use crate::admin::publish::PublishApi;
use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::config::EngineKind;
use crate::engine::history::History;
use crate::engine::memory::MemoryEngine;
use crate::engine::redis::engine::RedisEngine;
use crate::engine::redis::instance::Timing;
use crate::engine::redis::node::NodeSettings;
use crate::engine::{Engine, Outbox, request_channel};
use crate::listener::bind_reuseport;
use crate::metrics;
use crate::push::auth::Authenticator;
use crate::tls::{ServerTls, TlsFileError};
use crate::worker::link::{Command, WorkerOutbox};
use crate::worker::{self, PushContext};

/// How long a stream's position outlives its last publish in Redis (far longer than
/// any history TTL, at most 7 days: positions survive quiet periods and node restarts).
pub const REDIS_META_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not be bound; `flag` names the setting to change.
    #[error("cannot listen on {addr} ({flag}): {source}")]
    Bind {
        /// The command-line flag that set the address.
        flag: &'static str,
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
    /// A certificate or key file cannot be served (the message names flag and file).
    #[error("{0}")]
    Tls(#[from] TlsFileError),
    /// Anything else during startup (metrics recorder, threads, signals).
    #[error("startup failed: {0}")]
    Startup(String),
    /// A worker thread failed while running.
    #[error("worker failed: {0}")]
    Worker(io::Error),
}

/// What wakes the main thread while the gateway runs.
#[derive(Debug)]
enum Wake {
    /// SIGINT or SIGTERM (the first one): drain.
    Signal(i32),
    /// SIGHUP: reload the certificates.
    Reload,
    /// Worker `id`'s thread ended although nobody asked it to.
    WorkerStopped(usize),
}

/// Runs the gateway until a signal drains it.
///
/// # Errors
/// See [`ServerError`].
pub fn run(config: Config) -> Result<(), ServerError> {
    let workers = config.workers.get();
    // Certificates first: a bad file stops the gateway before anything is bound.
    let now = SystemTime::now();
    let mut ws_tls = config
        .tls_files()
        .map(|files| ServerTls::load(files, now))
        .transpose()?;
    let mut admin_tls = config
        .admin_tls_files()
        .map(|files| ServerTls::load(files, now))
        .transpose()?;
    let mut exporter = metrics::install_recorder()
        .map_err(|e| ServerError::Startup(format!("metrics recorder: {e}")))?;
    let tls_metrics = (ws_tls.is_some() || admin_tls.is_some()).then(metrics::TlsMetrics::new);
    if let Some(m) = &tls_metrics {
        for tls in ws_tls.iter().chain(&admin_tls) {
            m.set_expiry(tls.files().listener.as_label(), tls.loaded().not_after);
        }
    }
    // The admin listener reads this once per accepted connection.
    let admin_tls_config = admin_tls
        .as_ref()
        .map(|tls| Arc::new(RwLock::new(tls.config())));

    let (listen, listeners) =
        bind_reuseport(config.listen, workers, config.backlog).map_err(|source| {
            ServerError::Bind {
                flag: "--listen",
                addr: config.listen,
                source,
            }
        })?;
    let admin_listener =
        std::net::TcpListener::bind(config.admin_listen).map_err(|source| ServerError::Bind {
            flag: "--admin-listen",
            addr: config.admin_listen,
            source,
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|e| ServerError::Startup(e.to_string()))?;

    // Signals are caught before anyone can learn we are ready.
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| ServerError::Startup(format!("signals: {e}")))?;
    let signal_handle = signals.handle();
    // What the main thread waits for: a signal, or a worker that stopped on its own.
    let (wake_tx, wake_rx) = mpsc::channel();
    let signal_tx = wake_tx.clone();
    let signal_thread = std::thread::Builder::new()
        .name("pingwheel-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for signal in signals.forever() {
                if signal == SIGHUP {
                    let _ = signal_tx.send(Wake::Reload);
                    continue;
                }
                seen += 1;
                if seen > 1 {
                    eprintln!("pingwheel: second signal ({signal}): exiting now");
                    std::process::exit(1);
                }
                let _ = signal_tx.send(Wake::Signal(signal));
            }
        })
        .map_err(|e| ServerError::Startup(format!("signal thread: {e}")))?;

    let auth = Authenticator::new(&config.auth()).map_err(|e| ServerError::Startup(e.message))?;
    let dev_mode = auth.dev_mode();
    if dev_mode {
        warn!(
            "INSECURE DEV MODE: no --token-secret or --token-public-key, so every client is \
             accepted anonymously on any channel{}; never expose this gateway beyond loopback",
            if config.api_key.is_none() {
                " and the publish API needs no key"
            } else {
                ""
            }
        );
    } else if config.api_key.is_none() {
        warn!("no --api-key: the publish API refuses every request (403)");
    }
    let limits = config.push_limits();
    // Workers send the engine their subscribes and recovery requests from the start;
    // the engine starts with the admin runtime, once it knows every worker's link.
    let (engine_sender, engine_requests) = request_channel();
    let push = PushContext {
        auth: Arc::new(auth),
        limits: limits.clone(),
        engine: engine_sender,
    };

    // Before the first worker: its private descriptor table must hold the descriptor a
    // worker's engine request wakes the engine's runtime through (see `admin::runtime`);
    // the memory engine runs on the admin runtime, the Redis engine on the broker's.
    let admin_runtime =
        admin::runtime().map_err(|e| ServerError::Startup(format!("admin runtime: {e}")))?;
    let broker = match config.engine {
        EngineKind::Redis => Some(
            crate::engine::redis::broker::spawn_runtime()
                .map_err(|e| ServerError::Startup(format!("broker runtime: {e}")))?,
        ),
        EngineKind::Memory => None,
    };
    let mut handles = Vec::with_capacity(workers);
    // Each worker closes the later workers' listeners in its private descriptor table.
    let listener_fds: Vec<RawFd> = listeners.iter().map(AsRawFd::as_raw_fd).collect();
    for (id, listener) in listeners.into_iter().enumerate() {
        let mut settings = config.worker(id);
        settings.tls = ws_tls.as_ref().map(ServerTls::config);
        let handle = worker::spawn(
            settings,
            listener,
            &listener_fds[id + 1..],
            exporter.worker(id),
            push.clone(),
            {
                let wake = wake_tx.clone();
                move || {
                    let _ = wake.send(Wake::WorkerStopped(id));
                }
            },
        )
        .map_err(|e| ServerError::Startup(format!("worker {id}: {e}")))?;
        handles.push(handle);
    }

    let links: Vec<_> = handles.iter().map(worker::WorkerHandle::link).collect();
    let outbox: Arc<dyn Outbox> = Arc::new(WorkerOutbox::new(links.clone()));
    // Every engine series exists from the first scrape.
    let engine_metrics = metrics::EngineMetrics::new();
    let node_name = config
        .node_name
        .clone()
        .unwrap_or_else(crate::engine::redis::nodes::default_node_name);
    let (engine, engine_task, cluster): (Arc<dyn Engine>, Option<EngineTask>, Cluster) =
        match config.engine {
            EngineKind::Memory => {
                // A fresh seed per process: a restart starts every stream in a new epoch.
                let history = History::new(
                    config.namespaces(),
                    config.history_limits(),
                    Instant::now(),
                    fastrand::u64(..),
                );
                let engine = Arc::new(MemoryEngine::new(history, config.recovery_max, outbox));
                engine_metrics.up.set(1.0);
                let task = Arc::clone(&engine).run(engine_requests);
                (engine, Some(task), Cluster::Local)
            }
            EngineKind::Redis => {
                let broker = broker.ok_or_else(|| {
                    ServerError::Startup("broker runtime: not started".to_owned())
                })?;
                let settings = NodeSettings {
                    urls: config.redis_urls.iter().map(|u| u.0.clone()).collect(),
                    name: node_name.clone(),
                    timing: Timing {
                        command: config.redis_timeout,
                        ..Timing::default()
                    },
                    meta_ttl: REDIS_META_TTL,
                };
                let engine = {
                    let _runtime = broker.enter();
                    RedisEngine::start(
                        settings,
                        config.namespaces(),
                        config.recovery_max,
                        outbox,
                        links.clone(),
                        engine_metrics.clone(),
                    )
                    .map_err(ServerError::Startup)?
                };
                let engine = Arc::new(engine);
                broker.spawn(Arc::clone(&engine).run(engine_requests));
                info!(node = %node_name, instances = config.redis_urls.len(), "engine: redis");
                let node = Arc::clone(engine.node());
                (engine, None, Cluster::Redis(node))
            }
        };
    let cluster_api = ClusterApi {
        cluster,
        name: node_name,
        links,
        api_key: config.api_key.clone(),
        dev_mode,
        body_timeout: config.admin_body_timeout,
        metrics: metrics::ApiMetrics::new(),
    };
    let publish_api = PublishApi {
        engine,
        api_key: config.api_key.clone(),
        dev_mode,
        limits,
        body_timeout: config.admin_body_timeout,
        metrics: metrics::ApiMetrics::new(),
        engine_metrics,
    };
    let mut admin_state = AdminState::new(exporter)
        .with_publish_api(publish_api)
        .with_cluster_api(cluster_api);
    if let Some(task) = engine_task {
        admin_state = admin_state.with_engine_task(task);
    }
    if let Some(tls) = &admin_tls_config {
        admin_state = admin_state.with_tls(Arc::clone(tls));
    }
    let admin_state = Arc::new(admin_state);
    let admin = admin::spawn(admin_runtime, admin_listener, Arc::clone(&admin_state))
        .map_err(|e| ServerError::Startup(format!("admin listener: {e}")))?;

    info!(
        %listen, admin = %admin_addr, workers, tls = ws_tls.is_some(),
        admin_tls = admin_tls.is_some(),
        ping_interval = ?config.ping_interval, ping_timeout = ?config.ping_timeout,
        echo = config.echo, "pingwheel ready"
    );
    let mut stdout = io::stdout().lock();
    let _ = writeln!(stdout, "ready listen={listen} admin={admin_addr}");
    let _ = stdout.flush();
    drop(stdout);

    // Wait for a signal, or for a worker that stops on its own (it says so as its thread
    // ends): no polling, so an idle gateway's main thread never wakes.
    drop(wake_tx);
    let result = loop {
        match wake_rx.recv() {
            Ok(Wake::Reload) => reload(
                ws_tls.as_mut(),
                admin_tls.as_mut(),
                &handles,
                admin_tls_config.as_deref(),
                tls_metrics.as_ref(),
            ),
            Ok(Wake::Signal(signal)) => {
                info!(signal, drain_timeout = ?config.drain_timeout, "signal received: draining");
                break Ok(());
            }
            Ok(Wake::WorkerStopped(id)) => {
                error!(worker = id, "a worker stopped unexpectedly: shutting down");
                break Err(());
            }
            Err(mpsc::RecvError) => break Ok(()),
        }
    };

    admin_state.set_draining(true);
    let deadline = Instant::now() + config.drain_timeout;
    for handle in &handles {
        handle.send(Command::Shutdown { deadline });
    }
    let mut failure = None;
    for handle in handles {
        if let Err(e) = handle.join() {
            error!(error = %e, "worker failed");
            failure.get_or_insert(e);
        }
    }
    if admin.shutdown().is_err() {
        warn!("admin thread panicked");
    }
    signal_handle.close();
    let _ = signal_thread.join();
    match (result, failure) {
        (_, Some(e)) => Err(ServerError::Worker(e)),
        (Err(()), None) => Err(ServerError::Worker(io::Error::other(
            "a worker stopped unexpectedly",
        ))),
        (Ok(()), None) => {
            info!("drained: exiting");
            Ok(())
        }
    }
}

/// SIGHUP: reloads each listener's certificate and key from the same paths. A pair that
/// loads goes to the workers (new connections) or the admin listener; one that does not
/// leaves the old pair serving, with a warning that says why.
fn reload(
    ws: Option<&mut ServerTls>,
    admin: Option<&mut ServerTls>,
    workers: &[worker::WorkerHandle],
    admin_config: Option<&RwLock<Arc<rustls::ServerConfig>>>,
    metrics: Option<&metrics::TlsMetrics>,
) {
    if ws.is_none() && admin.is_none() {
        info!("SIGHUP: nothing to reload (no TLS certificate); ignored");
        return;
    }
    let now = SystemTime::now();
    for (tls, is_ws) in ws
        .map(|t| (t, true))
        .into_iter()
        .chain(admin.map(|t| (t, false)))
    {
        let listener = tls.files().listener.as_label();
        match tls.reload(now) {
            Ok(loaded) => {
                info!(
                    listener,
                    serial = %loaded.serial,
                    not_after = loaded.not_after,
                    "SIGHUP: certificate reloaded; new connections get it"
                );
                if let Some(m) = metrics {
                    m.reloads_ok.increment(1);
                    m.set_expiry(listener, loaded.not_after);
                }
                if is_ws {
                    for handle in workers {
                        handle.send(Command::TlsConfig(tls.config()));
                    }
                } else if let Some(shared) = admin_config {
                    *shared
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = tls.config();
                }
            }
            Err(e) => {
                warn!(
                    listener,
                    serial = %tls.loaded().serial,
                    "SIGHUP: certificate reload failed, still serving the previous certificate: {e}"
                );
                if let Some(m) = metrics {
                    m.reloads_failed.increment(1);
                }
            }
        }
    }
}
