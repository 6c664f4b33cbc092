//! The push scenario's publisher: a few HTTP/1.1 keep-alive connections sending
//! `POST /v1/publish` at a fixed total rate, each body stamped with its send time.
//!
//! Publisher `k` of `K` sends publishes `k, k + K, k + 2K, …`; publish `i` is due at
//! `start + delay + i / rate` ([`due_at`]; nothing is due at or after the duration) and
//! goes to channel `lt-{i mod M}`. A publisher that falls behind
//! (the server answers slower than its share of the rate) sends back to back; the
//! achieved rate is reported, nothing is dropped silently.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::engine::unix_now_ns;
use crate::hist::LatencyHistogram;
use crate::socket::io_cause;

/// Longest response head or chunk-size line accepted from the publish API.
const MAX_LINE: usize = 8 * 1024;
/// Largest response body read.
const MAX_BODY: usize = 1 << 20;
/// Socket timeout for one publish.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// What to publish and where.
#[derive(Debug, Clone)]
pub struct PublishConfig {
    /// Publish API address.
    pub addr: SocketAddr,
    /// `Host` header value.
    pub host_header: String,
    /// Request target (`/v1/publish`).
    pub path: String,
    /// Bearer token, if any.
    pub api_key: Option<String>,
    /// Channels `lt-0` … `lt-{channels-1}`.
    pub channels: u32,
    /// Publishes per second over all publishers.
    pub rate: f64,
    /// Size of the `data` object in bytes.
    pub payload_size: usize,
    /// Keep-alive connections.
    pub publishers: usize,
    /// How long to publish, counted from the start (the delay included).
    pub duration: Duration,
    /// The first publish is due this long after the start (`--publish-delay`).
    pub delay: Duration,
}

/// When publish `index` is due, counted from the publishers' start: `delay + index ÷
/// rate`, or `None` when that is at or past `duration` (the publish is not sent).
pub fn due_at(index: u64, rate: f64, delay: Duration, duration: Duration) -> Option<Duration> {
    let due = delay + Duration::try_from_secs_f64(index as f64 / rate).ok()?;
    (due < duration).then_some(due)
}

/// What the publishers did.
#[derive(Debug, Clone, Default)]
pub struct PublishStats {
    /// Publish requests attempted.
    pub attempted: u64,
    /// Publishes the API accepted (2xx), per channel.
    pub published_by_channel: Vec<u64>,
    /// Publishes that failed, by cause (`http_<status>`, `refused`, `timeout`, …).
    pub errors_by_cause: BTreeMap<String, u64>,
    /// Sum of the `subscribers` fields of the API's replies.
    pub subscribers_reported: u64,
    /// Request → response time of successful publishes.
    pub rtt: LatencyHistogram,
    /// Seconds from the first due publish to the last response.
    pub seconds: f64,
}

impl PublishStats {
    /// Accepted publishes over all channels.
    pub fn published(&self) -> u64 {
        self.published_by_channel.iter().sum()
    }

    /// Failed publishes over all causes.
    pub fn errors(&self) -> u64 {
        self.errors_by_cause.values().sum()
    }

    fn merge(&mut self, other: Self) {
        self.attempted += other.attempted;
        if self.published_by_channel.len() < other.published_by_channel.len() {
            self.published_by_channel
                .resize(other.published_by_channel.len(), 0);
        }
        for (into, from) in self
            .published_by_channel
            .iter_mut()
            .zip(&other.published_by_channel)
        {
            *into += from;
        }
        crate::counters::add_causes(&mut self.errors_by_cause, &other.errors_by_cause);
        self.subscribers_reported += other.subscribers_reported;
        self.rtt.merge(&other.rtt);
        self.seconds = self.seconds.max(other.seconds);
    }
}

/// A running publisher group; [`Publisher::join`] waits for it.
#[derive(Debug)]
pub struct Publisher {
    threads: Vec<JoinHandle<PublishStats>>,
    stop: Arc<AtomicBool>,
}

impl Publisher {
    /// Starts publishing now.
    pub fn start(config: PublishConfig) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let config = Arc::new(config);
        let start = Instant::now();
        let threads = (0..config.publishers.max(1))
            .map(|k| {
                let config = Arc::clone(&config);
                let stop = Arc::clone(&stop);
                thread::Builder::new()
                    .name(format!("publisher-{k}"))
                    .spawn(move || publish_loop(&config, k, start, &stop))
                    .expect("spawning a publisher thread")
            })
            .collect();
        Self { threads, stop }
    }

    /// Asks the publishers to stop before their duration ends.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Waits for every publisher and adds up what they did.
    pub fn join(self) -> PublishStats {
        let mut total = PublishStats::default();
        for thread in self.threads {
            match thread.join() {
                Ok(stats) => total.merge(stats),
                Err(_) => {
                    *total
                        .errors_by_cause
                        .entry("publisher_panicked".into())
                        .or_default() += 1
                }
            }
        }
        total
    }
}

fn publish_loop(
    config: &PublishConfig,
    k: usize,
    start: Instant,
    stop: &AtomicBool,
) -> PublishStats {
    let mut stats = PublishStats {
        published_by_channel: vec![0; config.channels as usize],
        ..PublishStats::default()
    };
    let mut client = HttpClient::new(config.addr);
    let step = config.publishers.max(1) as u64;
    let mut index = k as u64;
    let mut body = String::new();
    while let Some(due) = due_at(index, config.rate, config.delay, config.duration) {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let now = start.elapsed();
        if due > now {
            thread::sleep(due - now);
        }
        let channel = (index % u64::from(config.channels.max(1))) as u32;
        write_body(
            &mut body,
            channel,
            unix_now_ns(),
            index,
            config.payload_size,
        );
        stats.attempted += 1;
        let sent = Instant::now();
        match client.post(config, &body) {
            Ok((status, reply)) if (200..300).contains(&status) => {
                stats.rtt.record(sent.elapsed());
                stats.published_by_channel[channel as usize] += 1;
                if let Some(n) = subscribers_in(&reply) {
                    stats.subscribers_reported += n;
                }
            }
            Ok((status, _)) => {
                *stats
                    .errors_by_cause
                    .entry(format!("http_{status}"))
                    .or_default() += 1;
            }
            Err(cause) => *stats.errors_by_cause.entry(cause).or_default() += 1,
        }
        index += step;
    }
    stats.seconds = start.elapsed().as_secs_f64();
    stats
}

/// The recovery storm's prefill (`--recover-back N`): publishes `back` messages to every
/// channel of `config`, one request at a time on one connection, and returns each
/// channel's position afterwards, `(seq, epoch)` of its last publish.
///
/// # Errors
/// A publish that fails or a reply without a position, naming the channel.
pub fn prefill(config: &PublishConfig, back: u64) -> Result<Vec<(u64, String)>, String> {
    let mut client = HttpClient::new(config.addr);
    let mut body = String::new();
    let mut positions = Vec::with_capacity(config.channels as usize);
    let mut index = 0;
    for channel in 0..config.channels {
        let mut last = None;
        for _ in 0..back {
            write_body(
                &mut body,
                channel,
                unix_now_ns(),
                index,
                config.payload_size,
            );
            index += 1;
            let (status, reply) = client
                .post(config, &body)
                .map_err(|cause| format!("prefill of lt-{channel}: {cause}"))?;
            if !(200..300).contains(&status) {
                return Err(format!(
                    "prefill of lt-{channel}: HTTP {status}: {}",
                    String::from_utf8_lossy(&reply)
                ));
            }
            last = Some(position_in(&reply).ok_or_else(|| {
                format!(
                    "prefill of lt-{channel}: the reply has no seq and epoch: {}",
                    String::from_utf8_lossy(&reply)
                )
            })?);
        }
        positions.push(last.unwrap_or_default());
    }
    Ok(positions)
}

/// `seq` and `epoch` of a publish reply.
fn position_in(reply: &[u8]) -> Option<(u64, String)> {
    let value: serde_json::Value = serde_json::from_slice(reply).ok()?;
    Some((
        value.get("seq")?.as_u64()?,
        value.get("epoch")?.as_str()?.to_owned(),
    ))
}

/// `{"channel":"lt-C","data":{"t":T,"i":I,"pad":"…"}}` with the `data` object padded to
/// `payload_size` bytes (when it is not already larger).
pub fn write_body(
    out: &mut String,
    channel: u32,
    sent_unix_ns: u64,
    index: u64,
    payload_size: usize,
) {
    use std::fmt::Write as _;
    out.clear();
    let _ = write!(out, r#"{{"channel":"lt-{channel}","data":"#);
    let data_start = out.len();
    let _ = write!(out, r#"{{"t":{sent_unix_ns},"i":{index},"pad":""#);
    let unpadded = out.len() - data_start + 2; // the closing `"}`
    out.extend(std::iter::repeat_n(
        'x',
        payload_size.saturating_sub(unpadded),
    ));
    out.push_str(r#""}}"#);
}

fn subscribers_in(reply: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(reply)
        .ok()?
        .get("subscribers")?
        .as_u64()
}

/// A minimal blocking HTTP/1.1 keep-alive client for one publish API connection.
#[derive(Debug)]
struct HttpClient {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
    request: Vec<u8>,
}

impl HttpClient {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            conn: None,
            request: Vec::new(),
        }
    }

    /// Sends one POST; returns the status and body, or a failure-cause label. Any
    /// failure drops the connection; the next call reconnects.
    fn post(&mut self, config: &PublishConfig, body: &str) -> Result<(u16, Vec<u8>), String> {
        let result = self.try_post(config, body);
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    fn try_post(&mut self, config: &PublishConfig, body: &str) -> Result<(u16, Vec<u8>), String> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                let stream =
                    TcpStream::connect_timeout(&self.addr, IO_TIMEOUT).map_err(|e| cause(&e))?;
                stream.set_nodelay(true).map_err(|e| cause(&e))?;
                stream
                    .set_read_timeout(Some(IO_TIMEOUT))
                    .map_err(|e| cause(&e))?;
                stream
                    .set_write_timeout(Some(IO_TIMEOUT))
                    .map_err(|e| cause(&e))?;
                self.conn.insert(BufReader::new(stream))
            }
        };
        self.request.clear();
        write_request(&mut self.request, config, body);
        conn.get_mut()
            .write_all(&self.request)
            .map_err(|e| cause(&e))?;
        let response = read_response(conn).map_err(|e| cause(&e))?;
        if response.close {
            self.conn = None;
        }
        Ok((response.status, response.body))
    }
}

fn cause(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timeout".to_owned(),
        io::ErrorKind::UnexpectedEof => "eof".to_owned(),
        io::ErrorKind::InvalidData => "bad_response".to_owned(),
        _ => io_cause(error).into_owned(),
    }
}

fn write_request(out: &mut Vec<u8>, config: &PublishConfig, body: &str) {
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(config.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(config.host_header.as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: application/json\r\n");
    if let Some(key) = &config.api_key {
        out.extend_from_slice(b"Authorization: Bearer ");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body.as_bytes());
}

/// A parsed response.
#[derive(Debug, PartialEq, Eq)]
struct Response {
    status: u16,
    body: Vec<u8>,
    /// The server will close the connection after this response.
    close: bool,
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

fn read_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> io::Result<()> {
    line.clear();
    let n = reader.take(MAX_LINE as u64).read_until(b'\n', line)?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    if line.last() != Some(&b'\n') {
        return Err(invalid("line too long"));
    }
    Ok(())
}

/// Reads one HTTP/1.1 response: status line, headers, and a body framed by
/// `Content-Length` or `Transfer-Encoding: chunked`.
fn read_response(reader: &mut impl BufRead) -> io::Result<Response> {
    let mut head = Vec::new();
    let mut line = Vec::new();
    loop {
        read_line(reader, &mut line)?;
        head.extend_from_slice(&line);
        if head.len() > MAX_LINE {
            return Err(invalid("response head too long"));
        }
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    match parsed.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(invalid("malformed response head")),
    }
    let status = parsed.code.unwrap_or(0);
    let header = |name: &str| {
        parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    let close = header("connection").is_some_and(|v| v.split(',').any(|t| t.trim() == "close"))
        || parsed.version == Some(0);
    let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        loop {
            read_line(reader, &mut line)?;
            let text = String::from_utf8_lossy(&line);
            let size_text = text.trim().split(';').next().unwrap_or("");
            let size =
                usize::from_str_radix(size_text, 16).map_err(|_| invalid("bad chunk size"))?;
            if size == 0 {
                // Trailers end with an empty line.
                loop {
                    read_line(reader, &mut line)?;
                    if line == b"\r\n" || line == b"\n" {
                        break;
                    }
                }
                break;
            }
            if body.len() + size > MAX_BODY {
                return Err(invalid("response body too large"));
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..])?;
            read_line(reader, &mut line)?;
        }
    } else if let Some(length) = header("content-length") {
        let length: usize = length.parse().map_err(|_| invalid("bad content-length"))?;
        if length > MAX_BODY {
            return Err(invalid("response body too large"));
        }
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    } else if !(status == 204 || status == 304 || (100..200).contains(&status)) {
        // No framing: the body runs to the end of the connection.
        reader.take(MAX_BODY as u64).read_to_end(&mut body)?;
        return Ok(Response {
            status,
            body,
            close: true,
        });
    }
    Ok(Response {
        status,
        body,
        close,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes_are_due_after_the_delay_and_before_the_duration() {
        let (d, s) = (Duration::from_secs, Duration::from_secs_f64);
        // 2/s for 10 s: 0, 0.5, …, 9.5 s; nothing at 10 s.
        assert_eq!(due_at(0, 2.0, d(0), d(10)), Some(d(0)));
        assert_eq!(due_at(19, 2.0, d(0), d(10)), Some(s(9.5)));
        assert_eq!(due_at(20, 2.0, d(0), d(10)), None);
        // One publish 300 s into a 330 s hold: --publish-delay 300s --publish-rate 1/30s.
        assert_eq!(due_at(0, 1.0 / 30.0, d(300), d(330)), Some(d(300)));
        assert_eq!(due_at(1, 1.0 / 30.0, d(300), d(330)), None);
        // A delay at or past the duration publishes nothing, nor does a zero rate (no
        // index has a finite due time).
        assert_eq!(due_at(0, 1.0, d(30), d(30)), None);
        assert_eq!(due_at(0, 0.0, d(0), d(30)), None);
        assert_eq!(due_at(1, 0.0, d(0), d(30)), None);
    }

    #[test]
    fn bodies_are_json_padded_to_the_payload_size() {
        let mut body = String::new();
        write_body(&mut body, 3, 1_700_000_000_123_456_789, 42, 100);
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["channel"], "lt-3");
        assert_eq!(value["data"]["t"], 1_700_000_000_123_456_789u64);
        assert_eq!(value["data"]["i"], 42);
        assert_eq!(serde_json::to_string(&value["data"]).unwrap().len(), 100);
        write_body(&mut body, 0, 1, 2, 0);
        assert_eq!(body, r#"{"channel":"lt-0","data":{"t":1,"i":2,"pad":""}}"#);
    }

    #[test]
    fn content_length_responses() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{\"subscribers\":4}HTTP/1.1";
        let mut reader = &raw[..];
        let response = read_response(&mut reader).unwrap();
        assert_eq!(response.status, 200);
        assert!(!response.close);
        assert_eq!(subscribers_in(&response.body), Some(4));
        assert_eq!(reader, b"HTTP/1.1", "the next response is left unread");
    }

    #[test]
    fn chunked_and_closing_responses() {
        let raw = b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\n{\"sub\r\nc;ext=1\r\nscribers\":9}\r\n0\r\n\r\n";
        let response = read_response(&mut &raw[..]).unwrap();
        assert_eq!(response.status, 202);
        assert!(response.close);
        assert_eq!(subscribers_in(&response.body), Some(9));
    }

    #[test]
    fn errors_and_unframed_bodies() {
        let raw = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(read_response(&mut &raw[..]).unwrap().status, 401);
        let raw = b"HTTP/1.0 500 Oops\r\n\r\nbroken";
        let response = read_response(&mut &raw[..]).unwrap();
        assert_eq!((response.status, response.close), (500, true));
        assert_eq!(response.body, b"broken");
        assert!(
            read_response(&mut &b"HTTP/1.1 200 OK\r\n"[..]).is_err(),
            "truncated head"
        );
        assert!(read_response(&mut &b"nonsense\r\n\r\n"[..]).is_err());
    }

    #[test]
    fn requests_carry_auth_and_length() {
        let config = PublishConfig {
            addr: "127.0.0.1:1".parse().unwrap(),
            host_header: "127.0.0.1:1".into(),
            path: "/v1/publish".into(),
            api_key: Some("k3y".into()),
            channels: 1,
            rate: 1.0,
            payload_size: 0,
            publishers: 1,
            duration: Duration::from_secs(1),
            delay: Duration::ZERO,
        };
        let mut out = Vec::new();
        write_request(&mut out, &config, "{}");
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("POST /v1/publish HTTP/1.1\r\nHost: 127.0.0.1:1\r\n"));
        assert!(text.contains("Authorization: Bearer k3y\r\n"));
        assert!(text.ends_with("Content-Length: 2\r\n\r\n{}"));
    }

    #[test]
    fn refused_publish_is_counted_by_cause() {
        // A loopback port that was just free (bound, then released) refuses: every
        // publish fails with `refused`. (Not a fixed port: anything may listen there.)
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let config = PublishConfig {
            addr,
            host_header: addr.to_string(),
            path: "/v1/publish".into(),
            api_key: None,
            channels: 2,
            rate: 100.0,
            payload_size: 10,
            publishers: 2,
            duration: Duration::from_millis(50),
            delay: Duration::ZERO,
        };
        let stats = Publisher::start(config).join();
        assert!(stats.attempted >= 4, "{stats:?}");
        assert_eq!(stats.published(), 0);
        assert_eq!(stats.errors_by_cause.get("refused"), Some(&stats.attempted));
    }
}
