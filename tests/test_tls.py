"""wss:// and https end to end (issue 15), against clients written by others.

A throwaway CA and leaf certificates are made per module by ``tests/tls_support.py``
(the ``openssl`` command line). The gateway gets them with ``--tls-cert/--tls-key`` (the
WebSocket listener) and ``--admin-tls-cert/--admin-tls-key`` (the admin listener); the
names, refusal words and metrics are those of TLS-CONTRACT (docs/operations.md).

Clients: Python ``websockets`` and Python's ``ssl`` (a hand-made wss:// client for what
``websockets`` hides: falling silent, TLS ``close_notify``, session resumption), headless
Chromium trusting the leaf's public key (``--ignore-certificate-errors-spki-list``),
``openssl s_client`` (protocol version, ALPN), ``requests`` over https, raw TCP sockets
(garbage, plain HTTP, a stalled handshake) and the Autobahn|Testsuite fuzzing client.

Autobahn over wss://: the suite's fuzzing client (tests/autobahn/) does speak wss://,
but it has no CA option: it connects with Twisted's ``ClientContextFactory``, which does
not verify the server's certificate. So the wss:// run checks the protocol over TLS,
not certificate verification (every other test here verifies against the test CA).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path
from typing import Optional

import pytest
import requests
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from conftest import ROOT, Gateway, wait_for
from test_autobahn import assert_autobahn_passes
from test_browser import PageServer, chromium
from test_core import hold
from test_push import (PUSH_ENV, SLOW_AFTER_MESSAGES, SLOW_FLAGS, FeedPublisher, TimedReader,
                       bearer, token)
from tls_support import CertPair, Pki, openssl

#: Keepalive fast enough to see several round trips (and a timeout) within seconds.
FAST_KEEPALIVE = ("--ping-interval", "1", "--ping-timeout", "1")
#: How long any single socket operation may take before the test fails.
IO_TIMEOUT = 5.0
HANDSHAKES = "pingwheel_tls_handshakes_total"
RELOADS = "pingwheel_tls_reloads_total"
EXPIRY = "pingwheel_tls_certificate_expiry_timestamp_seconds"
RTT_COUNT = "pingwheel_ping_rtt_seconds_count"


# ---- certificates, gateways and clients -----------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    """One CA per module; each test issues its own leaves (under unique names)."""
    return Pki(tmp_path_factory.mktemp("pki"))


def start_tls(start_gateway, pair: CertPair, *flags: str, env=None) -> Gateway:
    """A gateway serving ``pair`` on its WebSocket listener (wss://) plus ``flags``."""
    gw = start_gateway("--tls-cert", str(pair.cert), "--tls-key", str(pair.key), *flags, env=env)
    assert gw.ws_url.startswith("wss://"), gw.ws_url
    return gw


def trusting(pki: Pki, maximum: Optional[ssl.TLSVersion] = None) -> ssl.SSLContext:
    """A client context that verifies against the test CA only (hostname included)."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    if maximum is not None:
        context.maximum_version = maximum
    return context


def open_wss(gw: Gateway, context: ssl.SSLContext, query: str = "", **kwargs) -> ClientConnection:
    """``websockets`` over wss:// with bounded timeouts and no proxy; use it in ``with``."""
    kwargs.setdefault("open_timeout", IO_TIMEOUT)
    kwargs.setdefault("close_timeout", 2)
    kwargs.setdefault("ping_interval", None)  # only the server's keepalive runs
    return connect(gw.ws_url + query, ssl=context, proxy=None, **kwargs)


def served_certificate(gw: Gateway, context: ssl.SSLContext, port: Optional[int] = None) -> dict:
    """The (verified) leaf a new TLS connection to the WebSocket listener (or ``port``)
    is served, as ``SSLSocket.getpeercert()``."""
    with socket.create_connection(("127.0.0.1", port or gw.port), timeout=IO_TIMEOUT) as tcp:
        with context.wrap_socket(tcp, server_hostname="127.0.0.1") as tls:
            return tls.getpeercert()


def serial(certificate: dict) -> int:
    return int(certificate["serialNumber"], 16)


def not_after(pair: CertPair) -> float:
    """The leaf's notAfter in unix seconds."""
    out = openssl("x509", "-in", str(pair.cert), "-noout", "-enddate", cwd=pair.cert.parent)
    return float(ssl.cert_time_to_seconds(out.strip().split("=", 1)[1]))


class TlsWebSocket:
    """A hand-made wss:// client on Python's ``ssl``: it does the upgrade, then reads and
    writes frames only when the test says so. So it can fall silent (no pongs, not even
    reading), and it sees how the connection ends: ``recv`` returning ``b""`` is a TLS
    ``close_notify``; a TCP close without one raises ``ssl.SSLEOFError``."""

    def __init__(self, gw: Gateway, context: ssl.SSLContext,
                 session: Optional[ssl.SSLSession] = None, target: str = "/",
                 headers: str = "", receive_buffer: Optional[int] = None):
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)  # before connect
        tcp.settimeout(IO_TIMEOUT)
        tcp.connect(("127.0.0.1", gw.port))
        self.sock = context.wrap_socket(
            tcp, server_hostname="127.0.0.1", suppress_ragged_eofs=False, session=session
        )
        self.buffer = b""
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {target} HTTP/1.1\r\nHost: {gw.listen}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\n{headers}\r\n"
            ).encode()
        )
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101 "), head

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("the server ended TLS with close_notify")
        self.buffer += chunk

    def frame(self) -> tuple[int, bytes]:
        """The next frame from the server: ``(opcode, payload)``."""
        while True:
            if len(self.buffer) >= 2:
                length, at = self.buffer[1] & 0x7F, 2
                if length == 126 and len(self.buffer) >= 4:
                    length, at = struct.unpack("!H", self.buffer[2:4])[0], 4
                elif length == 127 and len(self.buffer) >= 10:
                    length, at = struct.unpack("!Q", self.buffer[2:10])[0], 10
                if length < 126 or at > 2:
                    assert not self.buffer[1] & 0x80, "server frames are never masked"
                    if len(self.buffer) >= at + length:
                        opcode = self.buffer[0] & 0x0F
                        payload = self.buffer[at : at + length]
                        self.buffer = self.buffer[at + length :]
                        return opcode, payload
            self._fill()

    def send(self, opcode: int, payload: bytes = b"") -> None:
        """One masked, final frame (payload < 126 bytes)."""
        assert len(payload) < 126
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def until_close(self) -> tuple[list[int], int]:
        """Reads frames up to the server's close frame: the opcodes seen before it, and
        the close code."""
        seen = []
        while True:
            opcode, payload = self.frame()
            if opcode == 0x8:
                assert len(payload) >= 2, f"close frame without a code: {payload!r}"
                return seen, struct.unpack("!H", payload[:2])[0]
            seen.append(opcode)

    def close(self) -> None:
        self.sock.close()


def read_until_closed(sock: socket.socket, timeout: float = IO_TIMEOUT) -> bytes:
    """Everything ``sock`` receives until the peer closes; fails if it is still open
    after ``timeout`` seconds."""
    sock.settimeout(timeout)
    received = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk
    except ConnectionResetError:
        return received
    except socket.timeout:
        pytest.fail(f"still open after {timeout:.0f}s; received {received[:200]!r}")


def client_hello(context: ssl.SSLContext) -> bytes:
    """The bytes of one real ClientHello (Python's OpenSSL), made without a socket."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16" and len(hello) > 100, hello[:16]
    return hello


def s_client(gw: Gateway, pki: Pki, *extra: str) -> str:
    """``openssl s_client`` to the WebSocket listener (verifying against the test CA,
    offering ALPN http/1.1), with stdin at EOF so it ends after the handshake."""
    done = subprocess.run(
        ["openssl", "s_client", "-connect", gw.listen, "-servername", "localhost",
         "-CAfile", str(pki.ca), "-verify_return_error", "-alpn", "http/1.1", *extra],
        input="", capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 0, f"s_client failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


# ---- Python websockets over wss:// ------------------------------------------------------


def test_websockets_over_wss_gets_pings_and_the_rtt_metric_moves(start_gateway, pki):
    gw = start_tls(start_gateway, pki.issue("pings"), *FAST_KEEPALIVE)
    before = gw.metric(RTT_COUNT)
    with open_wss(gw, trusting(pki)) as ws:
        assert ws.socket.version() == "TLSv1.3", ws.socket.version()
        hold(ws, 4)
        after = gw.metric(RTT_COUNT)
        assert after >= before + 2, f"RTT count {before} -> {after}: pings over TLS not answered?"
        assert gw.metric("pingwheel_connections") == 1
    assert gw.metric("pingwheel_ping_timeouts_total") == 0
    assert gw.metric(HANDSHAKES, result="full") >= 1


def test_silent_peer_over_wss_is_closed_with_1011(start_gateway, pki):
    gw = start_tls(start_gateway, pki.issue("silent"), *FAST_KEEPALIVE, "--close-timeout", "1s")
    silent = TlsWebSocket(gw, trusting(pki))
    try:
        # Upgraded, then it reads nothing and answers nothing.
        gw.wait_metric("pingwheel_ping_timeouts_total", 1, timeout=8)
        seen, code = silent.until_close()
        assert 0x9 in seen, f"no ping came before the close (opcodes {seen})"
        assert code == 1011, f"close code {code}"
    finally:
        silent.close()


def test_sigterm_over_wss_closes_with_1001_then_close_notify(start_gateway, pki):
    gw = start_tls(start_gateway, pki.issue("sigterm"))
    raw = TlsWebSocket(gw, trusting(pki))
    try:
        with open_wss(gw, trusting(pki)) as ws:
            wait_for(lambda: gw.metric("pingwheel_connections") == 2, timeout=5)
            gw.signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed):
                while True:
                    ws.recv(timeout=IO_TIMEOUT)
            assert ws.close_code == 1001, f"websockets saw close code {ws.close_code}"
            _, code = raw.until_close()
            assert code == 1001, f"raw client saw close code {code}"
            raw.send(0x8, struct.pack("!H", 1001))  # complete the closing handshake
            try:
                with pytest.raises(EOFError):
                    raw.frame()
            except ssl.SSLEOFError:
                pytest.fail("the gateway closed TCP after the 1001 close without a TLS close_notify")
    finally:
        raw.close()
    assert gw.wait_exit() == 0


# ---- Chromium --------------------------------------------------------------------------

TLS_PAGE = """<!doctype html>
<meta charset="utf-8">
<title>pingwheel wss test</title>
<script>
let reportNumber = 0;
function report(kind, detail) {
  fetch("/report", {method: "POST", body: JSON.stringify({n: reportNumber++, kind, detail})});
}
const ws = new WebSocket(%(url)s);
ws.onopen = () => report("open", {});
ws.onmessage = (event) => report("message", JSON.parse(event.data));
ws.onerror = () => report("error", {});
ws.onclose = (event) => report("close", {code: event.code});
</script>
"""


def spki_sha256(cert: Path) -> str:
    """Base64 of the SHA-256 of the certificate's SubjectPublicKeyInfo (DER): what
    Chromium's ``--ignore-certificate-errors-spki-list`` takes."""
    public = openssl("x509", "-in", str(cert), "-noout", "-pubkey", cwd=cert.parent)
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=public.encode(),
                         capture_output=True, check=True, timeout=30).stdout
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def test_chromium_connects_over_wss_and_receives_a_publish(start_gateway, pki, tmp_path):
    pair = pki.issue("chromium")
    gw = start_tls(start_gateway, pair)  # dev mode: anonymous clients, open publish API
    with PageServer() as server:
        server.page = TLS_PAGE % {"url": json.dumps(gw.ws_url + "?channel=news")}
        trust = f"--ignore-certificate-errors-spki-list={spki_sha256(pair.cert)}"
        with chromium(server.origin + "/", tmp_path / "profile", "chromium-wss.log", (trust,)):
            server.wait_for(lambda r: r["kind"] in ("open", "close"), "the open event")
            assert [r for r in server.seen if r["kind"] == "open"], server.seen
            reply = gw.post("/v1/publish", json={"channel": "news", "data": {"over": "wss"}})
            assert reply.status_code == 200, reply.text
            assert reply.json()["subscribers"] == 1
            message = server.wait_for(lambda r: r["kind"] == "message", "the publish")
            assert message["detail"]["channel"] == "news", message
            assert message["detail"]["data"] == {"over": "wss"}, message
            assert not [r for r in server.seen if r["kind"] in ("error", "close")], server.seen
    assert gw.metric(HANDSHAKES, result="full") >= 1


# ---- openssl s_client --------------------------------------------------------------------


def test_s_client_sees_tls13_alpn_http11_and_tls12_when_forced(start_gateway, pki):
    gw = start_tls(start_gateway, pki.issue("s-client"))
    out = s_client(gw, pki)
    assert re.search(r"^New, TLSv1\.3, Cipher is ", out, re.M), out
    assert "ALPN protocol: http/1.1" in out, out
    assert "Verify return code: 0 (ok)" in out, out
    out = s_client(gw, pki, "-tls1_2")
    assert re.search(r"^New, TLSv1\.2, Cipher is ", out, re.M), out
    assert "ALPN protocol: http/1.1" in out, out
    assert "Verify return code: 0 (ok)" in out, out
    assert gw.alive()


@pytest.mark.parametrize("suite", ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                   "TLS_CHACHA20_POLY1305_SHA256"])
def test_every_tls13_cipher_suite_is_served(start_gateway, pki, suite):
    """RFC 8446 section 9.1: a TLS 1.3 server MUST implement TLS_AES_128_GCM_SHA256 (and
    SHOULD TLS_AES_256_GCM_SHA384 and TLS_CHACHA20_POLY1305_SHA256); a client that offers
    only one of them must still connect."""
    gw = start_tls(start_gateway, pki.issue(f"suite-{suite}"))
    out = s_client(gw, pki, "-ciphersuites", suite)
    assert re.search(rf"^New, TLSv1\.3, Cipher is {suite}$", out, re.M), out


# ---- files at startup ------------------------------------------------------------------


def startup_refusal(pingwheel_bin: Path, *flags: str) -> subprocess.CompletedProcess:
    """Runs the gateway with ``flags``; it must exit non-zero without a readiness line."""
    args = [str(pingwheel_bin), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", *flags]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=10,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"pingwheel {' '.join(flags)} was still running after 10 s: "
                    "it should have refused its TLS files at startup")
    assert not done.stdout.startswith("ready "), f"it started: {done.stdout!r}"
    assert done.returncode != 0, f"exit status 0\nstderr: {done.stderr}"
    return done


def naming_lines(stderr: str, named: list[tuple[str, Path]], words: str) -> list[str]:
    """The stderr lines that name one of the ``(flag, path)`` pairs (the flag as a whole
    word: ``--tls-cert`` is not ``--admin-tls-cert``) and contain ``words``."""
    return [
        line for line in stderr.splitlines()
        for flag, path in named
        if re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", line) and str(path) in line
        and words in line
    ]


def ed448_pair(directory: Path) -> CertPair:
    """A self-signed certificate with an Ed448 key (no TLS provider here signs with it)."""
    key, cert = directory / "ed448.key", directory / "ed448.pem"
    openssl("genpkey", "-algorithm", "ED448", "-out", str(key), cwd=directory)
    openssl("req", "-x509", "-new", "-key", str(key), "-out", str(cert), "-days", "2",
            "-subj", "/CN=ed448", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            cwd=directory)
    return CertPair(cert=cert, key=key, serial="")


BAD_FILES = ["unreadable cert", "unreadable key", "no certificate", "no private key",
             "expired", "does not match", "unsupported"]


@pytest.mark.parametrize("listener", ["tls", "admin-tls"])
@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_files_are_refused_at_startup_naming_flag_file_and_problem(
        pingwheel_bin, pki, tmp_path, listener, case):
    good = pki.issue(f"good-{listener}-{case.replace(' ', '-')}")
    cert, key = good.cert, good.key
    cert_flag, key_flag = f"--{listener}-cert", f"--{listener}-key"
    if case == "unreadable cert":
        cert, words, named = tmp_path / "missing.pem", "cannot read", [(cert_flag, tmp_path / "missing.pem")]
    elif case == "unreadable key":
        key, words, named = tmp_path / "missing.key", "cannot read", [(key_flag, tmp_path / "missing.key")]
    elif case == "no certificate":
        cert = tmp_path / "only-a-key.pem"
        cert.write_text(good.key.read_text())
        words, named = "no certificate", [(cert_flag, cert)]
    elif case == "no private key":
        key = tmp_path / "only-a-cert.key"
        key.write_text(good.cert.read_text())
        words, named = "no private key", [(key_flag, key)]
    elif case == "expired":
        expired = pki.issue(f"expired-{listener}", days=-1)
        cert, key, words, named = expired.cert, expired.key, "expired", [(cert_flag, expired.cert)]
    elif case == "does not match":
        other = pki.issue(f"other-{listener}")
        key, words = other.key, "does not match"
        named = [(key_flag, other.key), (cert_flag, cert)]
    else:
        odd = ed448_pair(tmp_path)
        cert, key, words = odd.cert, odd.key, "unsupported"
        named = [(key_flag, odd.key), (cert_flag, odd.cert)]
    done = startup_refusal(pingwheel_bin, cert_flag, str(cert), key_flag, str(key))
    assert naming_lines(done.stderr, named, words), (
        f"no stderr line names {' or '.join(f'{f} {p}' for f, p in named)} and says {words!r}:\n"
        f"{done.stderr}"
    )


@pytest.mark.parametrize("key", ["ec", "rsa", "ed25519"])
def test_rsa_ecdsa_and_ed25519_keys_are_accepted_and_served(start_gateway, pki, key):
    pair = pki.issue(f"accepted-{key}", key=key)
    gw = start_tls(start_gateway, pair)
    with open_wss(gw, trusting(pki)) as ws:
        assert serial(ws.socket.getpeercert()) == int(pair.serial, 16)
        assert ws.ping().wait(IO_TIMEOUT), "no pong over TLS"


@pytest.mark.parametrize("given,missing", [
    ("--tls-cert", "--tls-key"), ("--tls-key", "--tls-cert"),
    ("--admin-tls-cert", "--admin-tls-key"), ("--admin-tls-key", "--admin-tls-cert"),
])
def test_only_one_of_a_pair_is_a_cli_error_naming_the_missing_flag(pingwheel_bin, pki, given, missing):
    pair = pki.issue(f"half-{given.strip('-')}")
    done = startup_refusal(pingwheel_bin, given, str(pair.cert if given.endswith("cert") else pair.key))
    assert done.returncode == 2, f"exit status {done.returncode} (CLI errors exit 2)\n{done.stderr}"
    assert re.search(rf"(?<![\w-]){re.escape(missing)}(?![\w-])", done.stderr), done.stderr


def test_slow_consumer_over_wss_is_cut_off_while_a_healthy_subscriber_keeps_up(start_gateway, pki):
    """The --max-queued-bytes bound holds over TLS (it counts ciphertext queued): a wss
    client that stops reading is cut off with 1013, another on the same worker gets
    every message in order."""
    gw = start_tls(start_gateway, pki.issue("slow"), *SLOW_FLAGS, env=PUSH_ENV)
    tok = token("reader", ["feed"])
    feed = FeedPublisher(gw, "feed")
    stalled = TlsWebSocket(gw, trusting(pki), target="/?channel=feed",
                           headers=f"Authorization: Bearer {tok}\r\n", receive_buffer=4096)
    try:
        with open_wss(gw, trusting(pki), "?channel=feed", additional_headers=bearer(tok)) as healthy:
            reader = TimedReader(healthy)
            reader.start()
            cut_off_after = feed.until_slow_consumers_are_cut_off()
            for _ in range(SLOW_AFTER_MESSAGES):
                feed.publish_next()
            sent = len(feed.sent_at)
            wait_for(lambda: len(reader.arrivals) >= sent, timeout=30,
                     message=f"{sent} deliveries at the healthy wss subscriber")
            reader.stop.set()
            reader.join(5)
        assert [message["data"]["i"] for _, message in reader.arrivals] == list(range(sent))
        assert gw.metric("pingwheel_connections_closed_total", reason="slow_consumer") == 1
        # The stalled client reads again: whole deliveries in order, then the end (and a
        # Close, if one fitted, says 1013).
        frames = []
        try:
            while True:
                frames.append(stalled.frame())
        except (EOFError, ssl.SSLEOFError, ConnectionResetError):
            pass
        texts = [json.loads(payload) for opcode, payload in frames if opcode == 0x1]
        assert 0 < len(texts) < cut_off_after, (len(texts), cut_off_after)
        assert [t["data"]["i"] for t in texts] == list(range(len(texts)))
        closes = [payload for opcode, payload in frames if opcode == 0x8]
        assert all(struct.unpack("!H", c[:2])[0] == 1013 for c in closes), closes
    finally:
        stalled.close()
        feed.close()


# ---- SIGHUP ------------------------------------------------------------------------------


def put(source: Path, target: Path) -> None:
    """Replaces ``target`` with a copy of ``source`` at once (rename)."""
    staging = target.with_suffix(target.suffix + ".new")
    staging.write_bytes(source.read_bytes())
    os.replace(staging, target)


def test_sighup_serves_the_new_certificate_and_a_failed_reload_keeps_the_old(
        start_gateway, pki, tmp_path):
    # Different notAfter, so the expiry gauge shows which pair is served.
    first, second = pki.issue("reload-first"), pki.issue("reload-second", days=3)
    cert, key = tmp_path / "live.pem", tmp_path / "live.key"
    put(first.cert, cert)
    put(first.key, key)
    context = trusting(pki)
    gw = start_gateway("--tls-cert", str(cert), "--tls-key", str(key), *FAST_KEEPALIVE)
    with open_wss(gw, context) as old:
        assert serial(old.socket.getpeercert()) == int(first.serial, 16)
        assert gw.metric(EXPIRY, listener="ws") == not_after(first)
        put(second.key, key)
        put(second.cert, cert)
        gw.signal(signal.SIGHUP)
        gw.wait_metric(RELOADS, 1, result="ok")
        assert serial(served_certificate(gw, context)) == int(second.serial, 16), \
            "a new connection after SIGHUP is not served the new certificate"
        assert gw.metric(EXPIRY, listener="ws") == not_after(second)
        # The open connection stays up and keeps answering the server's pings.
        rtt = gw.metric(RTT_COUNT)
        hold(old, 2.5)
        assert gw.metric(RTT_COUNT) >= rtt + 2, "the old connection's pings stopped"

        # A reload that fails: the certificate file is garbage now.
        cert.write_bytes(b"garbage, and no PEM block at all\n" + os.urandom(64).hex().encode())
        gw.signal(signal.SIGHUP)
        gw.wait_metric(RELOADS, 1, result="failed")
        assert gw.metric(RELOADS, result="ok") == 1
        warned = wait_for(
            lambda: [l for l in gw.log().splitlines() if "WARN" in l and str(cert) in l],
            timeout=5, message=f"a WARN log line naming {cert}",
        )
        assert any("no certificate" in line for line in warned), warned
        assert serial(served_certificate(gw, context)) == int(second.serial, 16), \
            "after a failed reload the gateway must keep serving the last good pair"
        assert gw.metric(EXPIRY, listener="ws") == not_after(second)
        assert old.ping().wait(IO_TIMEOUT), "the old connection died with the failed reload"
        assert gw.alive()


# ---- refusals on the TLS port --------------------------------------------------------------


def test_garbage_and_plain_http_on_the_tls_port_are_refused_without_harm(start_gateway, pki):
    gw = start_tls(start_gateway, pki.issue("refusals"), "--echo", *FAST_KEEPALIVE)
    with open_wss(gw, trusting(pki)) as bystander:
        bystander.send("before")
        assert bystander.recv(timeout=IO_TIMEOUT) == "before"

        with socket.create_connection(("127.0.0.1", gw.port), timeout=IO_TIMEOUT) as raw:
            raw.sendall(b"\x00\xff this is not TLS \r\n" * 8)
            answer = read_until_closed(raw)
        assert answer[:1] == b"\x15", f"expected a TLS alert record, got {answer[:32]!r}"
        gw.wait_metric(HANDSHAKES, 1, result="failed")

        with socket.create_connection(("127.0.0.1", gw.port), timeout=IO_TIMEOUT) as raw:
            raw.sendall(f"GET / HTTP/1.1\r\nHost: {gw.listen}\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode())
            answer = read_until_closed(raw)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer[:200]
        assert re.search(rb"(?im)^content-type:\s*text/plain", head), head
        assert b"TLS" in body and b"wss://" in body, body

        # The other connection never noticed, and new handshakes still work.
        rtt = gw.metric(RTT_COUNT)
        bystander.send("after")
        assert bystander.recv(timeout=IO_TIMEOUT) == "after"
        hold(bystander, 2.5)
        assert gw.metric(RTT_COUNT) >= rtt + 2
        with open_wss(gw, trusting(pki)) as again:
            again.send("new")
            assert again.recv(timeout=IO_TIMEOUT) == "new"
    assert gw.metric(HANDSHAKES, result="failed") >= 1


def test_a_stalled_handshake_is_cut_at_the_open_timeout(start_gateway, pki):
    context = trusting(pki)
    gw = start_tls(start_gateway, pki.issue("stall"), "--open-timeout", "1s", "--echo")
    hello = client_hello(context)
    started = time.monotonic()
    mute = socket.create_connection(("127.0.0.1", gw.port), timeout=IO_TIMEOUT)
    half = socket.create_connection(("127.0.0.1", gw.port), timeout=IO_TIMEOUT)
    try:
        half.sendall(hello[: len(hello) // 2])
        # Meanwhile a real client is unaffected.
        with open_wss(gw, context) as ws:
            ws.send("unaffected")
            assert ws.recv(timeout=IO_TIMEOUT) == "unaffected"
        for name, sock in (("nothing sent", mute), ("half a ClientHello", half)):
            read_until_closed(sock)
            elapsed = time.monotonic() - started
            assert 0.9 <= elapsed <= 3.0, f"{name}: closed {elapsed:.2f}s after connect (--open-timeout 1s)"
    finally:
        mute.close()
        half.close()
    gw.wait_metric(HANDSHAKES, 2, result="timeout")
    assert gw.alive()


# ---- admin over https ----------------------------------------------------------------------


def test_admin_over_https_serves_metrics_and_refuses_plain_http(start_gateway, pki):
    pair = pki.issue("admin")
    gw = start_gateway("--admin-tls-cert", str(pair.cert), "--admin-tls-key", str(pair.key))
    assert gw.admin_url.startswith("https://") and gw.ws_url.startswith("ws://")
    gw.trust(pki.ca)
    metrics = gw.metrics()
    assert "pingwheel_connections" in metrics.names()
    assert metrics.metric(EXPIRY, listener="admin") == not_after(pair)
    assert gw.get("/healthz").status_code == 200
    reply = gw.post("/v1/publish", json={"channel": "news", "data": 1})  # dev mode: open
    assert reply.status_code == 200, reply.text
    # Plain http to the https listener gets nothing it could use.
    try:
        plain = requests.get(f"http://{gw.admin}/metrics", timeout=IO_TIMEOUT)
    except requests.ConnectionError:
        pass
    else:
        assert plain.status_code == 400, f"plain http answered {plain.status_code}: {plain.text[:200]}"
        assert "pingwheel_connections" not in plain.text
    # The WebSocket listener stays plain ws:// without --tls-cert.
    with connect(gw.ws_url, proxy=None, open_timeout=IO_TIMEOUT, ping_interval=None) as ws:
        assert ws.ping().wait(IO_TIMEOUT)
    assert gw.alive()


# ---- metrics -------------------------------------------------------------------------------


def resume_once(gw: Gateway, context: ssl.SSLContext) -> None:
    """A full handshake (upgraded, so its tickets are read), then one that resumes it."""
    first = TlsWebSocket(gw, context)
    session = first.sock.session
    assert not first.sock.session_reused
    first.close()
    assert session is not None and session.has_ticket, "the server sent no session ticket"
    second = TlsWebSocket(gw, context, session=session)
    try:
        assert second.sock.session_reused, f"{second.sock.version()} session was not resumed"
    finally:
        second.close()


def test_handshake_metrics_count_full_and_resumed_tls13_and_tls12(start_gateway, pki):
    pair = pki.issue("metrics")
    gw = start_tls(start_gateway, pair, "--workers", "1")  # every series on worker="0"
    resume_once(gw, trusting(pki))
    resume_once(gw, trusting(pki, maximum=ssl.TLSVersion.TLSv1_2))

    def counted() -> bool:
        m = gw.metrics()
        return m.metric(HANDSHAKES, result="full") >= 2 and m.metric(HANDSHAKES, result="resumed") >= 2

    wait_for(counted, timeout=5, message="2 full and 2 resumed handshakes counted")
    metrics = gw.metrics()
    full = metrics.metric(HANDSHAKES, result="full", worker=0)
    resumed = metrics.metric(HANDSHAKES, result="resumed", worker=0)
    assert (full, resumed) == (2, 2), f"full {full}, resumed {resumed} (one worker-0 label each)"
    assert metrics.metric(HANDSHAKES, result="failed") == 0
    assert metrics.metric(HANDSHAKES, result="timeout") == 0
    assert metrics.types.get("pingwheel_tls_handshake_seconds") == "histogram", metrics.types
    count = metrics.metric("pingwheel_tls_handshake_seconds_count", worker=0)
    assert count == full + resumed, f"handshake_seconds_count {count}, handshakes {full + resumed}"
    assert metrics.metric("pingwheel_tls_handshake_seconds_sum") > 0
    assert metrics.metric(EXPIRY, listener="ws") == not_after(pair)


def test_sessions_resume_whichever_worker_accepts_the_reconnect(start_gateway, pki):
    """SO_REUSEPORT spreads connections over the workers: a ticket issued by one must
    resume on the other (reconnect storms are handshake-bound)."""
    gw = start_tls(start_gateway, pki.issue("two-workers"), "--workers", "2")
    for _ in range(4):
        resume_once(gw, trusting(pki))
    per_worker = [gw.metric(HANDSHAKES, worker=w) for w in (0, 1)]
    assert sum(per_worker) == 8, per_worker
    assert gw.metric(HANDSHAKES, result="resumed") == 4


# ---- Autobahn over wss:// ----------------------------------------------------------------


def test_autobahn_cases_1_to_10_over_wss(start_gateway, pki):
    gw = start_tls(start_gateway, pki.issue("autobahn"), "--echo", "--max-message-size", "16MiB")
    reports = ROOT / "target" / "autobahn" / "reports-wss"
    assert_autobahn_passes(gw, f"wss://{gw.listen}", reports)
    assert gw.metric(HANDSHAKES, result="full") >= 290, "every case is one TLS connection"
