//! `pingwheel-baseline`: a conventional WebSocket server, written the way most Rust
//! WebSocket servers are, to give pingwheel's numbers a reference point.
//!
//! tokio's multi-thread runtime, `tokio_tungstenite::accept_async` with default
//! settings, one task per connection and one `tokio::time::interval` per connection for
//! keepalive pings. A ping not answered within `--ping-timeout` closes the connection
//! with 1011. `--echo` sends every text and binary message back. With `--tls-cert` and
//! `--tls-key` it speaks `wss://` through `tokio-rustls` (rustls's default provider,
//! TLS 1.2 and 1.3, ALPN `http/1.1`, tickets on). Prints `ready listen=ADDR` on stdout
//! once it accepts connections.

#![deny(missing_docs, missing_debug_implementations, rust_2018_idioms)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::time::{Instant, interval_at, sleep, sleep_until};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_tungstenite::accept_async;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use pingwheel_loadtest::units::parse_duration;

fn duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| e.to_string())
}

/// A conventional tokio-tungstenite WebSocket server (the load-test baseline).
#[derive(Debug, Clone, Parser)]
#[command(name = "pingwheel-baseline", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port; see the `ready` line).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9001")]
    listen: SocketAddr,

    /// Send a ping on every connection at this interval.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration_arg)]
    ping_interval: Duration,

    /// Close a connection with 1011 when its ping is not answered within this time.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration_arg)]
    ping_timeout: Duration,

    /// Echo every text and binary message.
    #[arg(long)]
    echo: bool,

    /// Set SO_REUSEPORT so several processes can share the port.
    #[arg(long)]
    reuse_port: bool,

    /// Runtime worker threads [default: one per core].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,

    /// Serve `wss://` with this PEM certificate chain (needs `--tls-key`).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The PEM private key of `--tls-cert`.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// The TLS acceptor of `--tls-cert`/`--tls-key`, if given.
fn tls_acceptor(args: &Args) -> Result<Option<TlsAcceptor>, String> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ticketer =
        rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| format!("tickets: {e}"))?;
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// Per-connection settings.
#[derive(Debug, Clone, Copy)]
struct Keepalive {
    interval: Duration,
    timeout: Duration,
    echo: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.ping_interval.is_zero() {
        eprintln!("pingwheel-baseline: --ping-interval must be positive");
        return ExitCode::from(2);
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        builder.worker_threads(threads.max(1));
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("pingwheel-baseline: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pingwheel-baseline: {e}");
            ExitCode::from(2)
        }
    }
}

fn listen(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

async fn serve(args: Args) -> std::io::Result<()> {
    let tls = tls_acceptor(&args).map_err(std::io::Error::other)?;
    let listener = listen(args.listen, args.reuse_port)?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "ready listen={}", listener.local_addr()?)?;
    stdout.flush()?;
    let keepalive = Keepalive {
        interval: args.ping_interval,
        timeout: args.ping_timeout,
        echo: args.echo,
    };
    loop {
        match listener.accept().await {
            Ok((stream, _)) => match &tls {
                None => {
                    tokio::spawn(connection(stream, keepalive));
                }
                Some(acceptor) => {
                    let accept = acceptor.accept(stream);
                    tokio::spawn(async move {
                        if let Ok(stream) = accept.await {
                            connection(stream, keepalive).await;
                        }
                    });
                }
            },
            // Out of file descriptors or a connection reset before accept: keep serving.
            Err(e) => {
                eprintln!("pingwheel-baseline: accept: {e}");
                sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(stream: S, keepalive: Keepalive) {
    let Ok(mut ws) = accept_async(stream).await else {
        return;
    };
    let mut pings = interval_at(Instant::now() + keepalive.interval, keepalive.interval);
    let mut pong_due: Option<Instant> = None;
    loop {
        tokio::select! {
            message = ws.next() => match message {
                Some(Ok(Message::Pong(_))) => pong_due = None,
                Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) if keepalive.echo => {
                    if ws.send(message).await.is_err() {
                        return;
                    }
                }
                // tungstenite answers pings and closes on its own.
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
            _ = pings.tick() => {
                if ws.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
                pong_due.get_or_insert(Instant::now() + keepalive.timeout);
            }
            () = sleep_until(pong_due.unwrap_or_else(Instant::now)), if pong_due.is_some() => {
                let frame = CloseFrame { code: CloseCode::Error, reason: "ping timeout".into() };
                let _ = ws.close(Some(frame)).await;
                return;
            }
        }
    }
}
