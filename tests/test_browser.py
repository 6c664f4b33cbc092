"""A real browser: headless Chromium runs the browser snippets of docs/protocol.md.

The test serves a small page over HTTP on loopback. The page defines ``token`` (minted
by the page's own ``mint_token``), then runs ``doc_example("browser-client")`` (or
``doc_example("browser-reconnect")``) verbatim except for the gateway's address, and
reports everything the snippet logs (``console.log``/``warn``) plus the socket's events
back to the test server with ``fetch``. The subscribe acknowledgement is the page's
readiness signal: only then does the test publish, so every publish is guaranteed to
reach the page.

The reconnect test makes the page drop its connection itself (a published
``{"drop":true}`` makes the wrapper close the snippet's socket), publishes while it is
away, and checks that the snippet's reconnect with ``since`` recovers every message
exactly once, in order.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

import pytest

from conftest import LOG_DIR, Gateway
from test_protocol_docs import adapt, doc_example, doc_mint_token

SECRET = "browser-test-token-secret-32-bytes!"
API_KEY = "browser-test-api-key"
ENV = {"PINGWHEEL_TOKEN_SECRET": SECRET, "PINGWHEEL_API_KEY": API_KEY}
#: How long the page may take to load, connect and report.
PAGE_TIMEOUT = 30.0

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>pingwheel browser test</title>
<script>
// Everything the snippet logs goes back to the test server, numbered.
let reportNumber = 0;
function report(kind, detail) {
  fetch("/report", {method: "POST", body: JSON.stringify({n: reportNumber++, kind, detail})});
}
for (const level of ["log", "warn", "error"]) {
  const original = console[level].bind(console);
  console[level] = (...args) => { report("console." + level, args); original(...args); };
}
const token = %(token)s;
// ---- docs/protocol.md, example browser-client ----
%(snippet)s
// ---- end of the example ----
ws.addEventListener("open", () => report("open", {protocol: ws.protocol}));
</script>
"""


def chromium_binary() -> str:
    """``$CHROMIUM_BIN`` (set by scripts/test) or ``chromium`` on the PATH; fails (never
    skips) when there is none."""
    binary = os.environ.get("CHROMIUM_BIN") or shutil.which("chromium") or shutil.which(
        "chromium-browser")
    if not binary or not os.access(binary, os.X_OK):
        pytest.fail("Chromium not found: run scripts/test (it installs Debian's chromium) "
                    "or set CHROMIUM_BIN", pytrace=False)
    return binary


class PageServer:
    """Serves :attr:`page` at ``/`` and collects what the page POSTs to ``/report``.
    The port (hence the origin) is known before the page is: set :attr:`page` before
    a browser loads it."""

    def __init__(self):
        self.page = ""
        self.reports: "queue.Queue[dict]" = queue.Queue()
        self.seen: list[dict] = []
        owner, reports = self, self.reports

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/":
                    self.send_error(404)
                    return
                body = owner.page.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                reports.put(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass  # keep pytest's output clean

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        return "http://127.0.0.1:%d" % self.server.server_address[1]

    def wait_for(self, matches: Callable[[dict], bool], what: str) -> dict:
        """The first report (already seen or arriving within PAGE_TIMEOUT) that matches."""
        for seen in self.seen:
            if matches(seen):
                return seen
        deadline = time.monotonic() + PAGE_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            try:
                report = self.reports.get(timeout=max(remaining, 0.01))
            except queue.Empty:
                pytest.fail(f"the page never reported {what}; it reported: {self.seen}")
            self.seen.append(report)
            if matches(report):
                return report

    def in_order(self) -> list[dict]:
        """Every report so far in the order the page made them. Each report is its own
        `fetch`, and the threaded server may take them out of order: wait (up to
        PAGE_TIMEOUT) until none is missing below the highest number seen."""
        deadline = time.monotonic() + PAGE_TIMEOUT
        while len(self.seen) != 1 + max((r["n"] for r in self.seen), default=-1):
            try:
                self.seen.append(self.reports.get(timeout=max(deadline - time.monotonic(), 0.01)))
            except queue.Empty:
                pytest.fail(f"the page's reports have a hole: {sorted(r['n'] for r in self.seen)}")
        return sorted(self.seen, key=lambda r: r["n"])

    def __enter__(self) -> "PageServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def chromium(url: str, profile: Path, log_name: str,
             extra_args: tuple[str, ...] = ()) -> Iterator[subprocess.Popen]:
    """Headless Chromium showing ``url`` (with ``extra_args`` on its command line),
    ended (by PID) on exit."""
    args = [
        chromium_binary(), "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", *extra_args,
    ]
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to run its sandbox as root
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOG_DIR / log_name, "wb") as log:
        browser = subprocess.Popen(args + [url], stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=log, start_new_session=True)
    try:
        yield browser
    finally:
        # Its helper processes are in the process group we gave it (led by its PID,
        # which cannot be reused before we reap it): end them all, then reap.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(browser.pid, signal.SIGKILL)
        browser.wait(10)


def browser_page(gw: Gateway) -> str:
    mint_token = doc_mint_token()
    tok = mint_token(SECRET, "42", ["scores", "team:*"])
    return PAGE % {"token": json.dumps(tok), "snippet": adapt(doc_example("browser-client"), gw)}


def logged(report: dict, *prefix) -> bool:
    """Whether ``report`` is a console.log call whose first arguments are ``prefix``."""
    return report["kind"] == "console.log" and report["detail"][:len(prefix)] == list(prefix)


def publish(gw: Gateway, body: dict) -> dict:
    response = gw.post("/v1/publish", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 200, response.text
    return response.json()


def test_browser_snippet_subscribes_and_receives_in_chromium(start_gateway, tmp_path):
    with PageServer() as server:
        gw = start_gateway("--allowed-origin", server.origin, env=ENV)
        server.page = browser_page(gw)
        with chromium(server.origin + "/", tmp_path / "profile", "chromium-allowed.log"):
            opened = server.wait_for(lambda r: r["kind"] == "open", "the open event")
            assert opened["detail"] == {"protocol": "pingwheel.v1"}, "subprotocol token"
            # The page is connected and on `scores` and `team:7`: now publish.
            reply = server.wait_for(lambda r: logged(r, "reply"), "the subscribe reply")
            ack = reply["detail"][1]
            assert reply["detail"] == ["reply", {"op": "subscribed", "channel": "team:7", "id": 1,
                                                 "seq": 0, "epoch": ack["epoch"]}]

            scores = publish(gw, {"channel": "scores", "data": {"home": 2, "away": 1}})
            team = publish(gw, {"channel": "team:7", "data": {"goal": "Ana"}})
            user = publish(gw, {"user": "42", "data": {"text": "your order shipped"}})
            assert [r["subscribers"] for r in (scores, team, user)] == [1, 1, 1]

            for expected in (
                ["scores", scores["seq"], {"home": 2, "away": 1}],
                ["team:7", team["seq"], {"goal": "Ana"}],
                ["for this user", user["seq"], {"text": "your order shipped"}],
            ):
                report = server.wait_for(lambda r: logged(r, *expected[:2]), f"{expected}")
                assert report["detail"] == expected
            assert not [r for r in server.seen if r["kind"] == "console.warn"], server.seen
    assert gw.metric("pingwheel_auth_failures_total") == 0


def test_origin_allowlist_refuses_a_page_from_another_origin(start_gateway, tmp_path):
    with PageServer() as allowed, PageServer() as other:
        gw = start_gateway("--allowed-origin", allowed.origin, env=ENV)
        other.page = browser_page(gw)
        with chromium(other.origin + "/", tmp_path / "profile", "chromium-refused.log"):
            # Browsers hide the 403: the socket just fails with 1006.
            closed = other.wait_for(lambda r: logged(r, "closed"), "the close event")
            assert closed["detail"][1] == 1006
            assert not [r for r in other.seen if r["kind"] == "open"]
        refused = gw.metric("pingwheel_auth_failures_total", reason="forbidden_origin")
        assert refused >= 1
        assert gw.metric("pingwheel_auth_failures_total") == refused, "refused for its origin"


RECONNECT_PAGE = """<!doctype html>
<meta charset="utf-8">
<title>pingwheel reconnect test</title>
<script>
let reportNumber = 0;
function report(kind, detail) {
  fetch("/report", {method: "POST", body: JSON.stringify({n: reportNumber++, kind, detail})});
}
// Every socket the snippet opens reports what it sees.
const NativeWebSocket = window.WebSocket;
window.WebSocket = function (...args) {
  const socket = new NativeWebSocket(...args);
  socket.addEventListener("open", () => report("open", {}));
  socket.addEventListener("message", (event) => report("received", JSON.parse(event.data)));
  socket.addEventListener("close", (event) => report("close", {code: event.code}));
  return socket;
};
for (const level of ["log", "warn", "error"]) {
  const original = console[level].bind(console);
  console[level] = (...args) => {
    report("console." + level, args);
    original(...args);
    // The test's way to cut the line: the snippet's own socket, closed under it.
    if (args[0] === "message" && args[3] && args[3].drop) setTimeout(() => ws.close(), 0);
  };
}
const token = %(token)s;
// ---- docs/protocol.md, example browser-reconnect ----
%(snippet)s
// ---- end of the example ----
</script>
"""

RECONNECT_CONFIG = "[[namespace]]\nprefix = \"scores\"\nhistory_size = 100\nhistory_ttl = \"10m\"\n"


def test_browser_reconnects_with_since_and_recovers_every_message(start_gateway, tmp_path):
    config = tmp_path / "pingwheel.toml"
    config.write_text(RECONNECT_CONFIG)
    with PageServer() as server:
        gw = start_gateway("--allowed-origin", server.origin, "--config", str(config), env=ENV)
        mint_token = doc_mint_token()
        tok = mint_token(SECRET, "42", ["scores"])
        server.page = RECONNECT_PAGE % {
            "token": json.dumps(tok), "snippet": adapt(doc_example("browser-reconnect"), gw)}

        def subscribed(report: dict, channel: str) -> bool:
            detail = report["detail"]
            return (report["kind"] == "received" and detail.get("op") == "subscribed"
                    and detail.get("channel") == channel)

        def messages() -> list[list]:
            return [r["detail"] for r in reports if logged(r, "message")]

        with chromium(server.origin + "/", tmp_path / "profile", "chromium-reconnect.log"):
            # First connect: no positions yet, so both streams just learn theirs.
            first = server.wait_for(lambda r: subscribed(r, "scores"), "scores subscribed")
            assert first["detail"]["recovered"] is False and first["detail"]["seq"] == 0
            server.wait_for(lambda r: subscribed(r, "#user"), "#user subscribed")
            for i in range(3):
                publish(gw, {"channel": "scores", "data": i})
            server.wait_for(lambda r: logged(r, "message", "scores", 3), "scores 3")
            publish(gw, {"channel": "scores", "data": {"drop": True}})
            server.wait_for(lambda r: r["kind"] == "close", "the page dropping its socket")
            # Away: these are recovered from history when the page comes back.
            for i in range(5, 11):
                publish(gw, {"channel": "scores", "data": i})
            note = publish(gw, {"user": "42", "data": "while you were away"})
            server.wait_for(lambda r: logged(r, "message", "scores", 10), "the recovered scores")
            server.wait_for(lambda r: logged(r, "message", "#user", note["seq"]), "the user note")
            live = publish(gw, {"channel": "scores", "data": 11})
            server.wait_for(lambda r: logged(r, "message", "scores", live["seq"]), "a live one")
            reports = server.in_order()  # while the page lives: no report is still in flight

        scores = [m for m in messages() if m[1] == "scores"]
        assert [m[2] for m in scores] == list(range(1, 12)), "every seq once, in order"
        assert [m[3] for m in scores] == [0, 1, 2, {"drop": True}, 5, 6, 7, 8, 9, 10, 11]
        again = [r["detail"] for r in reports if subscribed(r, "scores")][1:]
        assert again and again[0]["recovered"] is True, again
        assert [m[3] for m in messages() if m[1] == "#user"] == ["while you were away"]
        assert not [r for r in server.seen if logged(r, "reload")], "nothing had to be reloaded"
        assert len([r for r in server.seen if r["kind"] == "open"]) >= 2
