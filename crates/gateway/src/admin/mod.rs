//! The admin HTTP listener: `/metrics`, `/healthz`, and (issue 5) the publish API.
//!
//! It runs on its own thread, `pingwheel-admin`, with a current-thread `tokio` runtime and
//! `hyper`'s HTTP/1.1 server; the workers never see it. Connections are kept alive, so a
//! publisher can send many requests over one socket.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the thread, the accept loop, graceful stop, and routing ([`route`]) |
//! | [`http`] | the body type, size-limited body reads, response builders |
//! | [`publish`] | the `/v1/*` publish routes |
//!
//! # Routes
//!
//! | method | path | answer |
//! |---|---|---|
//! | `GET`, `HEAD` | `/metrics` | 200, Prometheus text format 0.0.4 |
//! | `GET`, `HEAD` | `/healthz` | 200 `ok`, or 503 `draining` once [`AdminState::set_draining`] |
//! | any | `/v1/publish`, `/v1/broadcast`, `/v1/batch` | the publish API ([`publish`]): `POST`, else a JSON 405; every answer counted by status |
//! | `GET` | `/v1/history` | the history API ([`publish`]) |
//! | other | known path | 405 with `Allow` |
//! | any | other path | 404 |
//!
//! New routes are new arms in [`route`]'s `match (method, path)`. A route that reads a
//! request body must use [`http::read_body`], which enforces a size limit (413 when
//! exceeded) and a time limit (`--admin-body-timeout`, 408 when exceeded). Request
//! heads have their own limit ([`HEADER_READ_TIMEOUT`]); together they bound how long a
//! client that dribbles its request can hold a connection.
//!
//! # TLS
//!
//! With `--admin-tls-cert`/`--admin-tls-key` ([`AdminState::with_tls`]) every accepted
//! connection does a tokio-rustls handshake first (within [`HEADER_READ_TIMEOUT`]), with
//! the config current at its accept: a SIGHUP reload replaces it for later connections.
//!
//! # Upkeep
//!
//! The thread also calls [`Exporter::run_upkeep`] every
//! [`metrics::UPKEEP_INTERVAL`](crate::metrics::UPKEEP_INTERVAL), which drains histogram
//! samples even when nobody scrapes. The engine's own task ([`Engine::run`]: the
//! workers' requests, history timers) runs on this runtime too.

pub mod cluster;
pub mod http;
pub mod publish;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::oneshot;

use self::cluster::ClusterApi;
use self::http::{AdminBody, method_not_allowed, plain, respond};
use self::publish::PublishApi;
use crate::engine::Engine;
use crate::listener::{AcceptPauses, is_resource_exhaustion};
use crate::metrics::{Exporter, UPKEEP_INTERVAL};
use crate::push::publish::PublishRoute;

/// Content type of the Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Path of the history API.
pub const HISTORY_PATH: &str = "/v1/history";
/// Name of the admin thread.
pub const THREAD_NAME: &str = "pingwheel-admin";

/// On shutdown, how long in-flight requests get to finish before their connections are
/// dropped. Idle keep-alive connections close at once.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// A client must send a complete request head within this, or its connection is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// After an `accept` error such as EMFILE, wait this long before accepting again instead
/// of spinning.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// What the admin routes need, shared with the rest of the process.
#[derive(Debug)]
pub struct AdminState {
    /// Renders `/metrics` (the workers' own counters and the recorder's series); also
    /// the target of periodic upkeep.
    metrics: Exporter,
    /// Set when the server starts draining; `/healthz` answers 503 from then on so load
    /// balancers stop sending new clients.
    draining: AtomicBool,
    /// The publish API (`/v1/...`), when the process has workers to publish to.
    publish: Option<PublishApi>,
    /// `/readyz`, `/v1/nodes`, `/v1/disconnect`.
    cluster: Option<ClusterApi>,
    /// The engine's background task, spawned on the admin runtime at start.
    engine_task: std::sync::Mutex<Option<TaskSlot>>,
    /// The TLS config of `https://`, read once per accepted connection (a reload swaps
    /// it); `None` serves plain HTTP.
    tls: Option<Arc<RwLock<Arc<rustls::ServerConfig>>>>,
}

/// Holds the engine's task until the runtime starts it.
struct TaskSlot(EngineTask);

impl std::fmt::Debug for TaskSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EngineTask")
    }
}

/// A future an engine runs for the life of the process ([`Engine::run`]).
pub type EngineTask = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl AdminState {
    /// State for a server that is not draining.
    pub fn new(metrics: Exporter) -> AdminState {
        AdminState {
            metrics,
            draining: AtomicBool::new(false),
            publish: None,
            cluster: None,
            engine_task: std::sync::Mutex::new(None),
            tls: None,
        }
    }

    /// Serves `https://` with the config in `tls` (read at each accept).
    pub fn with_tls(mut self, tls: Arc<RwLock<Arc<rustls::ServerConfig>>>) -> AdminState {
        self.tls = Some(tls);
        self
    }

    /// Serves the cluster routes (`/readyz`, `/v1/nodes`, `/v1/disconnect`) too.
    pub fn with_cluster_api(mut self, api: ClusterApi) -> AdminState {
        self.cluster = Some(api);
        self
    }

    /// Runs `task` (the engine's [`Engine::run`]) on the admin runtime.
    pub fn with_engine_task(self, task: EngineTask) -> AdminState {
        *self
            .engine_task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(TaskSlot(task));
        self
    }

    /// Serves the publish API (`POST /v1/publish`, `/v1/broadcast`, `/v1/batch`) too.
    pub fn with_publish_api(mut self, api: PublishApi) -> AdminState {
        self.publish = Some(api);
        self
    }

    /// What `/metrics` renders.
    pub fn metrics(&self) -> &Exporter {
        &self.metrics
    }

    /// Marks the process as draining (or not); `/healthz` reflects it immediately.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Release);
    }

    fn engine(&self) -> Option<&dyn Engine> {
        self.publish.as_ref().map(|api| &*api.engine)
    }

    /// Whether the process is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// The running admin server. Dropping it, or calling [`AdminHandle::shutdown`], stops the
/// server gracefully (in-flight requests get a few seconds) and joins its thread.
#[derive(Debug)]
pub struct AdminHandle {
    local_addr: SocketAddr,
    /// `Some` until shutdown is requested.
    stop: Option<oneshot::Sender<()>>,
    /// `Some` until the thread is joined.
    thread: Option<JoinHandle<()>>,
}

impl AdminHandle {
    /// The address the server listens on (useful when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets in-flight requests finish (up to a few seconds), closes idle
    /// keep-alive connections, and joins the thread.
    ///
    /// # Errors
    ///
    /// The thread's panic payload, if it panicked.
    pub fn shutdown(mut self) -> std::thread::Result<()> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> std::thread::Result<()> {
        if let Some(stop) = self.stop.take() {
            // The thread may already be gone (it only exits on this signal or a panic);
            // either way there is nothing more to tell it.
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread.join(),
            None => Ok(()),
        }
    }
}

impl Drop for AdminHandle {
    fn drop(&mut self) {
        if self.stop_and_join().is_err() {
            tracing::error!("the admin thread panicked");
        }
    }
}

/// Builds the admin thread's runtime (current-thread, I/O and timers), for [`spawn`].
///
/// Build it before the workers start: a worker wakes the engine's task on this runtime
/// (`tokio::sync::Notify`), which can write to the runtime's I/O-driver eventfd from the
/// worker's thread, and a worker's private descriptor table holds only the descriptors
/// that existed when it started (see `worker/fdtable.rs`).
///
/// # Errors
///
/// Creating the runtime failed.
pub fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
}

/// Serves the admin routes on `listener` from a new thread named `pingwheel-admin`,
/// running `runtime` (from [`runtime`]).
///
/// The caller binds the listener, so a bind error surfaces where the address is known.
/// The listener is switched to non-blocking mode here.
///
/// # Errors
///
/// Registering the listener or spawning the thread failed.
pub fn spawn(
    runtime: tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    state: Arc<AdminState>,
) -> io::Result<AdminHandle> {
    let local_addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let listener = {
        let _context = runtime.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    let (stop_tx, stop_rx) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name(THREAD_NAME.to_owned())
        .spawn(move || runtime.block_on(serve(listener, state, stop_rx)))?;
    Ok(AdminHandle {
        local_addr,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

/// The accept loop: one task per connection, periodic upkeep, graceful stop.
async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AdminState>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let mut pauses = AcceptPauses::default();
    let mut upkeep = tokio::time::interval(UPKEEP_INTERVAL);
    upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let engine_task = state
        .engine_task
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(TaskSlot(task)) = engine_task {
        tokio::spawn(task);
    }

    loop {
        tokio::select! {
            // A send or a dropped sender both mean stop.
            _ = &mut stop => break,
            _ = upkeep.tick() => state.metrics.run_upkeep(),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Some((count, lasted)) = pauses.resumed(Instant::now()) {
                        tracing::info!(
                            "admin listener accepting again after {count} accept pauses over {lasted:.1?}"
                        );
                    }
                    // Responses are written in one go; don't let Nagle hold the tail.
                    let _ = stream.set_nodelay(true);
                    let tls_config = state.tls.as_ref().map(|tls| {
                        Arc::clone(&tls.read().unwrap_or_else(std::sync::PoisonError::into_inner))
                    });
                    let state = Arc::clone(&state);
                    let service = service_fn(move |request| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(route(&state, request).await) }
                    });
                    if let Some(config) = tls_config {
                        let acceptor = tokio_rustls::TlsAcceptor::from(config);
                        let http = http.clone();
                        let watcher = graceful.watcher();
                        tokio::spawn(async move {
                            let stream = match tokio::time::timeout(
                                HEADER_READ_TIMEOUT,
                                acceptor.accept(stream),
                            )
                            .await
                            {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(err)) => {
                                    tracing::debug!(%peer, "admin TLS handshake failed: {err}");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "admin TLS handshake timed out");
                                    return;
                                }
                            };
                            let connection =
                                watcher.watch(http.serve_connection(TokioIo::new(stream), service));
                            if let Err(err) = connection.await {
                                tracing::debug!(%peer, "admin connection ended with an error: {err}");
                            }
                        });
                        continue;
                    }
                    let connection =
                        graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                    tokio::spawn(async move {
                        if let Err(err) = connection.await {
                            tracing::debug!(%peer, "admin connection ended with an error: {err}");
                        }
                    });
                }
                Err(err) if is_resource_exhaustion(&err) => {
                    // The listener itself stays usable; retry after a pause, logging
                    // once per episode (and once when it ends) instead of every retry.
                    if pauses.paused(Instant::now()) {
                        tracing::warn!(
                            "admin listener cannot accept: {err} (raise the open-files limit); \
                             pausing accepts for {ACCEPT_ERROR_BACKOFF:?} at a time until one works"
                        );
                    }
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
                Err(err) => {
                    // A failure of one connection (ECONNABORTED and the like).
                    tracing::debug!("admin listener accept failed: {err}");
                }
            },
        }
    }

    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("admin connections still busy after {SHUTDOWN_GRACE:?}; dropping them");
    }
}

/// Answers one admin request. One arm per route; a known path with the wrong method gets
/// 405 with `Allow`, an unknown path 404.
pub async fn route(state: &AdminState, request: Request<Incoming>) -> Response<AdminBody> {
    let method = request.method();
    let path = request.uri().path();
    if let Some(cluster) = &state.cluster {
        match path {
            "/readyz" => {
                return match *method {
                    Method::GET | Method::HEAD => cluster.readyz(state.is_draining()),
                    _ => method_not_allowed("GET, HEAD"),
                };
            }
            "/v1/nodes" => return cluster.nodes(request).await,
            "/v1/disconnect" => return cluster.disconnect(request).await,
            _ => {}
        }
    }
    if let (Some(route), Some(api)) = (PublishRoute::from_path(path), &state.publish) {
        // Every answer on these paths (405 included) is counted there.
        return api.handle(route, request).await;
    }
    if let (HISTORY_PATH, Some(api)) = (path, &state.publish) {
        return if method == Method::GET {
            api.history(request).await
        } else {
            method_not_allowed("GET")
        };
    }
    match (method, path) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            if let Some(engine) = state.engine() {
                let stats = engine.stats();
                crate::metrics::set_history(stats.history_messages, stats.history_bytes);
            }
            let body = state.metrics.render();
            respond(StatusCode::OK, METRICS_CONTENT_TYPE, body)
        }
        (_, "/metrics") => method_not_allowed("GET, HEAD"),
        (&Method::GET | &Method::HEAD, "/healthz") => {
            if state.is_draining() {
                plain(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                plain(StatusCode::OK, "ok\n")
            }
        }
        (_, "/healthz") => method_not_allowed("GET, HEAD"),
        _ => plain(StatusCode::NOT_FOUND, "not found\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Instant;

    /// A parsed HTTP/1.1 response.
    #[derive(Debug)]
    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// An admin server on 127.0.0.1:0 with a private recorder holding one counter.
    fn start() -> (AdminHandle, Arc<AdminState>) {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        metrics::with_local_recorder(&recorder, || {
            metrics::counter!("pingwheel_admin_test_total").increment(3);
        });
        let state = Arc::new(AdminState::new(Exporter::new(recorder.handle())));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let handle = spawn(runtime().expect("a runtime"), listener, Arc::clone(&state))
            .expect("admin server starts");
        (handle, state)
    }

    fn connect(handle: &AdminHandle) -> TcpStream {
        let stream = TcpStream::connect(handle.local_addr()).expect("connect to admin");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set timeout");
        stream
    }

    /// Sends one request on `stream` (kept alive) and reads exactly one response.
    fn request(stream: &mut TcpStream, method: &str, path: &str) -> Reply {
        write!(stream, "{method} {path} HTTP/1.1\r\nHost: admin\r\n\r\n").expect("send request");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head_len) =
                response.parse(&buf).expect("valid response head")
            {
                let status = response.code.expect("complete head has a status");
                let headers: Vec<(String, String)> = response
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_owned(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let length: usize = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .map(|(_, v)| v.parse().expect("numeric content-length"))
                    .expect("responses carry content-length");
                let body_len = if method == "HEAD" { 0 } else { length };
                while buf.len() < head_len + body_len {
                    let n = stream.read(&mut chunk).expect("read body");
                    assert!(n > 0, "connection closed mid-body");
                    buf.extend_from_slice(&chunk[..n]);
                }
                assert_eq!(
                    buf.len(),
                    head_len + body_len,
                    "no stray bytes after one response"
                );
                let body = String::from_utf8_lossy(&buf[head_len..]).into_owned();
                return Reply {
                    status,
                    headers,
                    body,
                };
            }
            let n = stream.read(&mut chunk).expect("read head");
            assert!(n > 0, "connection closed before a response");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    #[test]
    fn routes_answer_on_one_keep_alive_connection() {
        let (handle, state) = start();
        let mut stream = connect(&handle);

        let metrics = request(&mut stream, "GET", "/metrics");
        assert_eq!(metrics.status, 200);
        assert_eq!(metrics.header("content-type"), Some(METRICS_CONTENT_TYPE));
        assert!(
            metrics.body.contains("pingwheel_admin_test_total 3\n"),
            "{}",
            metrics.body
        );

        let head = request(&mut stream, "HEAD", "/metrics");
        assert_eq!(head.status, 200);
        assert_eq!(head.body, "");

        let health = request(&mut stream, "GET", "/healthz");
        assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));

        state.set_draining(true);
        let health = request(&mut stream, "GET", "/healthz");
        assert_eq!((health.status, health.body.as_str()), (503, "draining\n"));

        let missing = request(&mut stream, "GET", "/nope");
        assert_eq!(missing.status, 404);
        assert_eq!(missing.body, "not found\n");

        for path in ["/metrics", "/healthz"] {
            let wrong = request(&mut stream, "POST", path);
            assert_eq!(wrong.status, 405, "POST {path}");
            assert_eq!(wrong.header("allow"), Some("GET, HEAD"), "POST {path}");
        }

        handle.shutdown().expect("admin thread exits cleanly");
    }

    #[test]
    fn shutdown_closes_idle_keep_alive_connections_promptly() {
        let (handle, _state) = start();
        let mut stream = connect(&handle);
        assert_eq!(request(&mut stream, "GET", "/healthz").status, 200);

        let started = Instant::now();
        handle.shutdown().expect("admin thread exits cleanly");
        assert!(
            started.elapsed() < SHUTDOWN_GRACE,
            "an idle connection must not hold up shutdown ({:?})",
            started.elapsed()
        );
        let mut rest = Vec::new();
        let n = stream
            .read_to_end(&mut rest)
            .expect("server closed the socket");
        assert_eq!(n, 0, "nothing more is sent: {rest:?}");
    }

    #[test]
    fn dropping_the_handle_stops_the_server() {
        let (handle, _state) = start();
        let addr = handle.local_addr();
        drop(handle);
        let refused = TcpStream::connect(addr);
        assert!(refused.is_err(), "the listener is closed after drop");
    }
}
