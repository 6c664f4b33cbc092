"""Shared by the client-library suites (test_clients*.py, test_client_docs.py): the
Python client on the path, tokens, a page server that runs the JavaScript client in
headless Chromium, and :class:`NodeClient`, the same JavaScript client in Node on ``ws``.

The page server serves ``/`` (a page the test writes), ``/pingwheel.js`` (the module from
clients/js, as written) and ``/token`` (answered by a function the test gives: the
test stands in for the app's backend), and collects what the page POSTs to ``/report``.
The page reports in batches, numbered, so the order of events on the page survives the
parallel fetches.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional
from urllib.parse import parse_qs, urlparse

import pytest

from conftest import ROOT
from test_protocol_docs import doc_mint_token

CLIENTS_PYTHON = ROOT / "clients" / "python"
CLIENT_JS = ROOT / "clients" / "js" / "pingwheel.js"
if str(CLIENTS_PYTHON) not in sys.path:
    sys.path.insert(0, str(CLIENTS_PYTHON))

SECRET = "clients-test-token-secret-32-bytes!"
API_KEY = "clients-test-api-key"
ENV = {"PINGWHEEL_TOKEN_SECRET": SECRET, "PINGWHEEL_API_KEY": API_KEY}

mint_token = doc_mint_token()


def token(sub: str = "42", channels=("*",), ttl: int = 3600) -> str:
    """An HS256 token for the test secret (``ttl`` < -30 is expired beyond the leeway)."""
    return mint_token(SECRET, sub, list(channels), ttl)


def publish(gw, body: dict) -> dict:
    response = gw.post("/v1/publish", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 200, response.text
    return response.json()


#: The page's reporting code (a classic script, before any module runs).
REPORTER = """<script>
let reportNumber = 0;
let batch = [];
let sending = false;
function flush() {
  if (sending || !batch.length) return;
  sending = true;
  const body = JSON.stringify(batch);
  batch = [];
  fetch("/report", {method: "POST", body}).finally(() => { sending = false; flush(); });
}
function report(kind, detail) {
  batch.push({n: reportNumber++, kind, detail});
  setTimeout(flush, 10);
}
for (const level of ["log", "warn", "error"]) {
  const original = console[level].bind(console);
  console[level] = (...args) => { report("console." + level, args.map(String)); original(...args); };
}
addEventListener("error", (e) => report("page-error", String(e.message)));
addEventListener("unhandledrejection", (e) => report("page-error", String(e.reason)));
</script>
"""

#: A page that runs the JS client with ``config`` (JSON: ``options``, ``channels``,
#: ``user``) and reports its states, errors, deliveries and recovery events.
CLIENT_PAGE = REPORTER + """<script type="module">
import { PingwheelClient } from "/pingwheel.js";
const config = %(config)s;
const client = new PingwheelClient({
  ...config.options,
  getToken: async (context) => {
    report("getToken", context);
    const answer = await fetch("/token?failedOpens=" + context.failedOpens);
    return answer.status === 204 ? null : answer.text();
  },
});
client.on("state", (state, detail) => report("state", [state, detail]));
client.on("error", (e) => report("error", {type: e.type, failedOpens: e.failedOpens, code: e.code}));
const watch = (sub) => {
  sub.on("recovered", (e) => report("recovered", {channel: sub.channel, ...e}));
  sub.on("subscribed", (e) => report("subscribed", {channel: sub.channel, ...e}));
  sub.on("error", (e) => report("sub-error", {channel: sub.channel, ...e}));
};
for (const channel of config.channels) {
  watch(client.subscribe(channel, (data, info) => report("delivery", {data, ...info})));
}
if (config.user) watch(client.onUser((data, info) => report("delivery", {data, ...info})));
window.pingwheelClient = client;
</script>
"""


class ClientPageServer:
    """Serves a page, the client module and ``/token``; collects the page's reports.
    :attr:`token` answers ``/token`` requests: ``token(query) -> str | None`` (``None``:
    204, which the page's getToken turns into ``null``)."""

    def __init__(self, page: str = "", token_answer: Optional[Callable[[dict], Optional[str]]] = None):
        self.page = page
        self.token = token_answer or (lambda query: token())
        self.token_requests: list[dict] = []
        self._reports: "queue.Queue[dict]" = queue.Queue()
        self.seen: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                url = urlparse(self.path)
                if url.path == "/":
                    self._send(200, owner.page.encode(), "text/html; charset=utf-8")
                elif url.path == "/pingwheel.js":
                    self._send(200, CLIENT_JS.read_bytes(), "text/javascript")
                elif url.path == "/token":
                    query = {k: v[0] for k, v in parse_qs(url.query).items()}
                    owner.token_requests.append(query)
                    answer = owner.token(query)
                    if answer is None:
                        self._send(204, b"", "text/plain")
                    else:
                        self._send(200, answer.encode(), "text/plain")
                else:
                    self.send_error(404)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                for report in json.loads(self.rfile.read(length)):
                    owner._reports.put(report)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        return "http://127.0.0.1:%d" % self.server.server_address[1]

    def client_page(self, urls: list[str], channels=(), user: bool = False, **options) -> None:
        """Sets :attr:`page` to the JS client on ``urls`` with ``options`` (tunables)."""
        config = {"options": {"urls": urls, **options}, "channels": list(channels), "user": user}
        self.page = CLIENT_PAGE % {"config": json.dumps(config)}

    def _drain(self) -> None:
        while True:
            try:
                self.seen.append(self._reports.get_nowait())
            except queue.Empty:
                break
        self.seen.sort(key=lambda r: r["n"])

    def reports(self, kind: Optional[str] = None) -> list[dict]:
        """Every report so far in page order (only ``kind``'s details, when given)."""
        self._drain()
        if kind is None:
            return list(self.seen)
        return [r["detail"] for r in self.seen if r["kind"] == kind]

    def wait_for(self, condition: Callable[["ClientPageServer"], object], what: str,
                 timeout: float = 30.0) -> object:
        """Polls ``condition(self)`` until it is truthy; fails with the page's reports."""
        deadline = time.monotonic() + timeout
        while True:
            result = condition(self)
            if result:
                return result
            errors = self.reports("page-error")
            if errors:
                pytest.fail(f"the page failed: {errors}")
            if time.monotonic() >= deadline:
                pytest.fail(f"the page never reported {what} within {timeout:.0f}s; "
                            f"it reported: {self.reports()[-40:]}")
            time.sleep(0.05)

    def states(self) -> list[list]:
        return self.reports("state")

    def __enter__(self) -> "ClientPageServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


#: The JS client in Node on the ``ws`` package (installed by scripts/test under
#: target/node), configured like :data:`CLIENT_PAGE` from $CONFIG (JSON: ``options``,
#: ``channels``, ``user``); it prints every report as a JSON line ``{"n", "kind",
#: "detail"}`` and closes the client and exits when its stdin closes.
NODE_REPORTER = """
import { pathToFileURL } from "node:url";
import { PingwheelClient } from "./clients/js/pingwheel.js";
const { default: WebSocket } = await import(pathToFileURL(process.env.WS_MODULE).href);
const config = JSON.parse(process.env.CONFIG);
let n = 0;
const report = (kind, detail) => console.log(JSON.stringify({ n: n++, kind, detail }));
const client = new PingwheelClient({ ...config.options, WebSocket, getToken: () => process.env.TOKEN });
client.on("state", (state, detail) => report("state", [state, detail]));
client.on("error", (e) => report("error", { type: e.type, code: e.code }));
const watch = (sub) => {
  sub.on("recovered", (e) => report("recovered", { channel: sub.channel, ...e }));
  sub.on("subscribed", (e) => report("subscribed", { channel: sub.channel, ...e }));
  sub.on("error", (e) => report("sub-error", { channel: sub.channel, ...e }));
};
for (const channel of config.channels) {
  watch(client.subscribe(channel, (data, info) => report("delivery", { data, ...info })));
}
if (config.user) watch(client.onUser((data, info) => report("delivery", { data, ...info })));
process.stdin.resume();
process.stdin.on("end", () => { client.close(); process.exit(0); });
"""
WS_MODULE = ROOT / "target" / "node" / "node_modules" / "ws" / "wrapper.mjs"


class NodeClient:
    """The JS client in a Node process (:data:`NODE_REPORTER`), with the same report
    API as :class:`ClientPageServer` (``reports``, ``states``, ``wait_for``). Use it as
    a context manager: the process is ended by PID on exit."""

    def __init__(self, urls: list[str], channels=(), user: bool = False, **options):
        assert WS_MODULE.exists(), f"{WS_MODULE} is missing: run scripts/test (it installs ws)"
        config = {"options": {"urls": urls, **options}, "channels": list(channels), "user": user}
        self._config = config
        self.seen: list[dict] = []
        self._lines: "queue.Queue[str]" = queue.Queue()
        self.process = None

    def __enter__(self) -> "NodeClient":
        env = {**os.environ, "WS_MODULE": str(WS_MODULE), "CONFIG": json.dumps(self._config),
               "TOKEN": token()}
        self.process = subprocess.Popen(
            ["node", "--input-type=module", "-e", NODE_REPORTER], cwd=ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line)

    def reports(self, kind: Optional[str] = None) -> list[dict]:
        while True:
            try:
                self.seen.append(json.loads(self._lines.get_nowait()))
            except queue.Empty:
                break
        if kind is None:
            return list(self.seen)
        return [r["detail"] for r in self.seen if r["kind"] == kind]

    def states(self) -> list[list]:
        return self.reports("state")

    def wait_for(self, condition: Callable[["NodeClient"], object], what: str,
                 timeout: float = 30.0) -> object:
        """Polls ``condition(self)`` until it is truthy; fails with the client's reports
        (or its stderr, when the process ended)."""
        deadline = time.monotonic() + timeout
        while True:
            result = condition(self)
            if result:
                return result
            if self.process.poll() is not None:
                pytest.fail(f"the Node client exited ({self.process.returncode}) before "
                            f"{what}: {self.process.stderr.read()[-2000:]}")
            if time.monotonic() >= deadline:
                pytest.fail(f"the Node client never reported {what} within {timeout:.0f}s; "
                            f"it reported: {self.reports()[-40:]}")
            time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        try:
            self.process.stdin.close()  # the client closes with 1000 and the process exits
            self.process.wait(10)
        except Exception:  # noqa: BLE001 (a hung process is killed below)
            pass
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process.stdout.close()
        self.process.stderr.close()
