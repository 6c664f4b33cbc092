"""The client libraries (clients/js, clients/python) against real gateways.

The Python client runs in this process (one event loop per test); the JavaScript client
runs in headless Chromium on a page served by :class:`clients_support.ClientPageServer`,
whose ``/token`` stands in for the app's backend. What each test shows:

* an expired token is refreshed through getToken (401 → a fresh token, connected);
* an auth refusal stops retrying and is reported: Python, and the JS client in Node on
  the ``ws`` package, see the 401/403 and stop by themselves; a browser cannot see it,
  reports repeated failed opens, and stops when its getToken (the app) answers null;
* a SIGTERM drain (1001) brings clients back to the other gateway spread out: no more than
  DRAIN_WINDOW_SHARE of them in any 100 ms (docs/clients.md);
* a dead path (the gateway SIGSTOPped) is noticed within pingAfter + pongTimeout by the
  application ping, and the client moves to the next URL.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time

import pytest

from clients_support import ENV, REPORTER, WS_MODULE, ClientPageServer, publish, token
from conftest import ROOT, wait_for
from test_browser import chromium

from pingwheel_client import PingwheelClient

#: docs/clients.md: after a drain, at most this share of the clients in any 100 ms
#: (reconnects are uniform over quickSpread = 5 s, so 2 % on average).
DRAIN_WINDOW_SHARE = 0.10
#: How many clients the drain tests bring back.
DRAIN_CLIENTS = 500
#: The Python client's connect options in these tests (no proxy from the environment).
NO_PROXY = {"proxy": None}


async def until(condition, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.02)


def max_in_window(times: list[float], window: float = 0.1) -> int:
    """The largest number of ``times`` inside any window of ``window`` seconds."""
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


# --- Python ----------------------------------------------------------------------------


def test_python_client_refreshes_an_expired_token_through_get_token(start_gateway):
    gw = start_gateway(env=ENV)
    calls = []

    async def get_token(context):
        calls.append(context)
        return token(ttl=-120) if len(calls) == 1 else token()

    async def scenario():
        got = []
        async with PingwheelClient(url=gw.ws_url, get_token=get_token,
                                   connect_kwargs=NO_PROXY) as client:
            sub = client.subscribe("scores", lambda data, info: got.append(data))
            await until(lambda: sub.state == "subscribed", what="the subscribe reply")
            await asyncio.to_thread(publish, gw, {"channel": "scores", "data": {"home": 1}})
            await until(lambda: got, what="the delivery")
        return got

    assert asyncio.run(scenario()) == [{"home": 1}]
    assert [(c.failed_opens, c.refused) for c in calls] == [(0, False), (1, True)]
    assert gw.metric("pingwheel_auth_failures_total", reason="expired") == 1


def test_python_client_stops_on_a_refused_token_and_reports_it(start_gateway):
    gw = start_gateway(env=ENV)
    states, errors = [], []

    async def scenario():
        client = PingwheelClient(url=gw.ws_url, get_token=lambda: "not-a-jwt",
                                 connect_kwargs=NO_PROXY)
        client.on("state", lambda s, d: states.append((s, d)))
        client.on("error", errors.append)
        client.start()
        await until(lambda: client.state == "closed", what="the client to stop")
        await asyncio.sleep(2.0)  # and it stays stopped
        await client.close()

    asyncio.run(scenario())
    # A 401 is retried once with a fresh token (it may have expired on the way); the
    # second 401 in a row stops the client.
    assert gw.metric("pingwheel_auth_failures_total", reason="malformed") == 2
    assert states[-1] == ("closed", {"reason": "refused", "status": 401,
                                     "message": "malformed token"})
    assert errors[-1]["type"] == "refused" and errors[-1]["status"] == 401


def test_python_client_stops_at_once_on_403(start_gateway):
    gw = start_gateway("--allowed-origin", "https://app.example", env=ENV)

    async def scenario():
        client = PingwheelClient(url=gw.ws_url, get_token=lambda: token(),
                                 connect_kwargs=NO_PROXY)  # sends no Origin
        closed = []
        client.on("state", lambda s, d: s == "closed" and closed.append(d))
        client.start()
        await until(lambda: closed, what="the client to stop")
        await asyncio.sleep(1.0)
        await client.close()
        return closed

    assert asyncio.run(scenario()) == [{"reason": "refused", "status": 403,
                                        "message": "Origin header required"}]
    assert gw.metric("pingwheel_auth_failures_total", reason="forbidden_origin") == 1


def test_python_clients_come_back_spread_out_after_a_drain(start_gateway):
    a = start_gateway(env=ENV)
    b = start_gateway(env=ENV)
    back: dict[int, tuple[float, str]] = {}
    drained_at: dict[int, float] = {}

    async def scenario():
        loop = asyncio.get_running_loop()
        clients = []
        for i in range(DRAIN_CLIENTS):
            client = PingwheelClient(urls=[a.ws_url, b.ws_url], get_token=lambda: token(),
                                     connect_kwargs=NO_PROXY)

            def on_state(state, detail, i=i):
                if state == "disconnected" and detail.get("code") == 1001:
                    drained_at[i] = loop.time()
                elif state == "connected" and i in drained_at:
                    back[i] = (loop.time(), detail["url"])

            client.on("state", on_state)
            client.start()
            clients.append(client)
        await until(lambda: all(c.state == "connected" for c in clients), 20,
                    "every client connected to A")
        sigterm = loop.time()
        a.signal(signal.SIGTERM)
        await until(lambda: len(back) == DRAIN_CLIENTS, 20, "every client back on B")
        for client in clients:
            await client.close()
        return sigterm

    sigterm = asyncio.run(scenario())
    assert a.wait_exit() == 0, "A drained and exited"
    assert {url for _, url in back.values()} == {b.ws_url}, "every client moved to B"
    times = [t for t, _ in back.values()]
    busiest = max_in_window(times)
    spread = max(times) - min(times)
    print(f"drain: {DRAIN_CLIENTS} clients back over {spread:.2f}s, at most {busiest} "
          f"({busiest / DRAIN_CLIENTS:.1%}) in any 100 ms; last {max(times) - sigterm:.2f}s "
          "after SIGTERM")
    assert busiest <= DRAIN_WINDOW_SHARE * DRAIN_CLIENTS, busiest
    assert spread >= 4.0, "spread over most of quickSpread (5 s)"
    assert max(t - drained_at[i] for i, (t, _) in back.items()) < 5.0 + 1.0


def test_python_client_notices_a_dead_path_and_moves_on(start_gateway):
    a = start_gateway(env=ENV)
    b = start_gateway(env=ENV)

    async def scenario():
        loop = asyncio.get_running_loop()
        events = []
        client = PingwheelClient(urls=[a.ws_url, b.ws_url], get_token=lambda: token(),
                                 connect_kwargs=NO_PROXY, ping_after=1.0, pong_timeout=1.0)
        client.on("state", lambda s, d: events.append((loop.time(), s, d)))
        got = []
        sub = client.subscribe("scores", lambda data, info: got.append(data))
        client.start()
        await until(lambda: sub.state == "subscribed", what="subscribed on A")
        stopped = loop.time()
        a.signal(signal.SIGSTOP)
        try:
            await until(lambda: client.state == "connected" and sub.state == "subscribed"
                        and events[-1][2].get("url") == b.ws_url, 10, "the move to B")
        finally:
            a.signal(signal.SIGCONT)
        await asyncio.to_thread(publish, b, {"channel": "scores", "data": "on B"})
        await until(lambda: got, what="a delivery through B")
        await client.close()
        return stopped, events, got

    stopped, events, got = asyncio.run(scenario())
    lost = [(t, d) for t, s, d in events if s == "disconnected"]
    assert len(lost) == 1 and lost[0][1]["reason"] == "no answer to ping", events
    noticed = lost[0][0] - stopped
    # Silence began at the subscribe reply, before SIGSTOP: at most ping_after + pong_timeout.
    assert noticed <= 1.0 + 1.0 + 0.3, noticed
    assert got == ["on B"]


# --- JavaScript in Node, on the `ws` package (which shows a refusal's status) -----------

#: The JS client under Node with `ws` (installed by scripts/test under target/node): it
#: prints every state and delivery as a JSON line, takes its tokens in turn from
#: $TOKENS (the last one repeats), and exits when closed or after $DELIVERIES deliveries.
NODE_CLIENT = """
import { pathToFileURL } from "node:url";
import { PingwheelClient } from "./clients/js/pingwheel.js";
const { default: WebSocket } = await import(pathToFileURL(process.env.WS_MODULE).href);
const tokens = JSON.parse(process.env.TOKENS);
let calls = 0;
const say = (what) => console.log(JSON.stringify(what));
const client = new PingwheelClient({
  url: process.env.URL, WebSocket,
  getToken: (context) => { say({ getToken: context }); return tokens[Math.min(calls++, tokens.length - 1)]; },
});
let deliveries = 0;
client.on("state", (state, detail) => { say({ state, detail }); if (state === "closed") process.exit(0); });
client.subscribe("scores", (data, info) => {
  say({ delivery: data, seq: info.seq });
  if (++deliveries === +process.env.DELIVERIES) { client.close(); process.exit(0); }
});
"""


def run_node_client(gw, tokens: list[str], deliveries: int = 0, publish_after=None) -> list[dict]:
    """Runs NODE_CLIENT against ``gw``; publishes ``publish_after`` once it is subscribed."""
    assert WS_MODULE.exists(), f"{WS_MODULE} is missing: run scripts/test (it installs ws)"
    env = {**os.environ, "WS_MODULE": str(WS_MODULE), "URL": gw.ws_url,
           "TOKENS": json.dumps(tokens), "DELIVERIES": str(deliveries)}
    node = subprocess.Popen(["node", "--input-type=module", "-e", NODE_CLIENT], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if publish_after is not None:
            wait_for(lambda: gw.metric("pingwheel_subscriptions") >= 1, 15,
                     message="the Node client's subscription")
            publish(gw, publish_after)
        out, err = node.communicate(timeout=30)
    finally:
        if node.poll() is None:
            node.kill()
            node.wait(10)
    assert node.returncode == 0, err
    return [json.loads(line) for line in out.splitlines()]


def test_node_client_on_ws_refreshes_an_expired_token(start_gateway):
    gw = start_gateway(env=ENV)
    lines = run_node_client(gw, [token(ttl=-120), token()], deliveries=1,
                            publish_after={"channel": "scores", "data": "hello"})
    states = [(x["state"], x["detail"].get("status")) for x in lines if "state" in x]
    assert states == [("connecting", None), ("disconnected", 401), ("connecting", None),
                      ("connected", None), ("closed", None)]
    assert [x["getToken"] for x in lines if "getToken" in x] == [
        {"failedOpens": 0, "refused": False}, {"failedOpens": 1, "refused": True}]
    assert [x["delivery"] for x in lines if "delivery" in x] == ["hello"]


def test_node_client_on_ws_stops_on_a_refusal_and_reports_the_status(start_gateway):
    gw = start_gateway(env=ENV)
    lines = run_node_client(gw, ["not-a-jwt"])
    assert lines[-1] == {"state": "closed", "detail": {"reason": "refused", "status": 401}}
    assert gw.metric("pingwheel_auth_failures_total", reason="malformed") == 2
    origin_checked = start_gateway("--allowed-origin", "https://app.example", env=ENV)
    lines = run_node_client(origin_checked, [token()])  # ws sends no Origin: 403
    assert lines[-1] == {"state": "closed", "detail": {"reason": "refused", "status": 403}}
    assert [x for x in lines if "getToken" in x] == [{"getToken": {"failedOpens": 0,
                                                                   "refused": False}}]


# --- JavaScript in Chromium ------------------------------------------------------------


def test_browser_client_refreshes_an_expired_token_and_receives(start_gateway, tmp_path):
    gw = start_gateway(env=ENV)
    answers = iter([token(ttl=-120)])
    with ClientPageServer(token_answer=lambda q: next(answers, None) or token()) as page:
        page.client_page([gw.ws_url], channels=["scores"])
        with chromium(page.origin + "/", tmp_path / "profile", "chromium-client-token.log"):
            page.wait_for(lambda p: p.reports("subscribed"), "the subscribe reply")
            sent = [publish(gw, {"channel": "scores", "data": {"n": n}}) for n in range(3)]
            page.wait_for(lambda p: len(p.reports("delivery")) == 3, "three deliveries")
            deliveries = page.reports("delivery")
            assert [d["data"] for d in deliveries] == [{"n": 0}, {"n": 1}, {"n": 2}]
            assert [d["seq"] for d in deliveries] == [s["seq"] for s in sent]
            assert page.reports("getToken") == [{"failedOpens": 0, "refused": False},
                                                {"failedOpens": 1, "refused": False}]
            first_close = [d for s, d in page.states() if s == "disconnected"]
            assert [(d["code"], d["opened"]) for d in first_close] == [(1006, False)]
    assert gw.metric("pingwheel_auth_failures_total", reason="expired") == 1


def test_browser_client_reports_a_refusal_and_stops_when_get_token_says_so(start_gateway,
                                                                             tmp_path):
    gw = start_gateway(env=ENV)

    def backend(query):
        # The app's backend: after three failed opens with its tokens, it checks the
        # session, finds it revoked, and answers "no token" (the page's getToken: null).
        return None if int(query["failedOpens"]) >= 3 else "not-a-jwt"

    with ClientPageServer(token_answer=backend) as page:
        page.client_page([gw.ws_url], channels=["scores"])
        with chromium(page.origin + "/", tmp_path / "profile", "chromium-client-refused.log"):
            page.wait_for(lambda p: any(s == "closed" for s, _ in p.states()), "closed")
            time.sleep(1.0)
            states = page.states()
            assert states[-1] == ["closed", {"reason": "no_token"}]
            assert [e for e in page.reports("error") if e["type"] == "unreachable_or_refused"] == [
                {"type": "unreachable_or_refused", "failedOpens": 3}]
            assert [d["failedOpens"] for d in page.reports("getToken")] == [0, 1, 2, 3]
            assert not [s for s, _ in states if s == "connected"]
    assert gw.metric("pingwheel_auth_failures_total", reason="malformed") == 3
    assert gw.metric("pingwheel_auth_failures_total") == 3, "no attempt after the stop"


def test_browser_client_notices_a_dead_path_and_moves_on(start_gateway, tmp_path):
    a = start_gateway(env=ENV)
    b = start_gateway(env=ENV)
    with ClientPageServer() as page:
        page.client_page([a.ws_url, b.ws_url], channels=["scores"], pingAfter=1000,
                         pongTimeout=1000)
        with chromium(page.origin + "/", tmp_path / "profile", "chromium-client-dead.log"):
            page.wait_for(lambda p: p.reports("subscribed"), "subscribed on A")
            stopped = time.monotonic()
            a.signal(signal.SIGSTOP)
            try:
                page.wait_for(lambda p: any(s == "disconnected" for s, _ in p.states()),
                              "the dead path noticed", timeout=10)
                noticed = time.monotonic() - stopped
                page.wait_for(lambda p: len(p.reports("subscribed")) == 2, "subscribed on B")
            finally:
                a.signal(signal.SIGCONT)
            lost = [d for s, d in page.states() if s == "disconnected"]
            assert [d["reason"] for d in lost] == ["no answer to ping"]
            connected = [d["url"] for s, d in page.states() if s == "connected"]
            assert connected == [a.ws_url, b.ws_url]
            publish(b, {"channel": "scores", "data": "on B"})
            page.wait_for(lambda p: p.reports("delivery"), "a delivery through B")
    # Silence began at the subscribe reply, before SIGSTOP; the report takes a fetch.
    assert noticed <= 1.0 + 1.0 + 0.5, noticed


def test_browser_clients_come_back_spread_out_after_a_drain(start_gateway, tmp_path):
    a = start_gateway(env=ENV)
    b = start_gateway(env=ENV)
    clients = 200
    page_code = """<script type="module">
import { PingwheelClient } from "/pingwheel.js";
const tok = await (await fetch("/token?failedOpens=0")).text();
for (let i = 0; i < %(n)d; i++) {
  const client = new PingwheelClient({ urls: %(urls)s, getToken: () => tok });
  let drained = false;
  client.on("state", (state, detail) => {
    if (state === "disconnected" && detail.code === 1001) drained = true;
    if (state === "connected") report(drained ? "back" : "up", {i, url: detail.url, t: performance.now()});
  });
}
</script>"""
    with ClientPageServer() as page:
        page.page = REPORTER + page_code % {"n": clients, "urls": f'["{a.ws_url}", "{b.ws_url}"]'}
        with chromium(page.origin + "/", tmp_path / "profile", "chromium-client-drain.log"):
            page.wait_for(lambda p: len(p.reports("up")) == clients, "every client on A")
            wait_for(lambda: a.metric("pingwheel_connections") == clients, 10,
                     message="A counts every client")
            a.signal(signal.SIGTERM)
            page.wait_for(lambda p: len(p.reports("back")) == clients, "every client on B")
            back = page.reports("back")
    assert a.wait_exit() == 0
    assert {r["url"] for r in back} == {b.ws_url}
    times = [r["t"] / 1000 for r in back]
    busiest = max_in_window(times)
    spread = max(times) - min(times)
    print(f"browser drain: {clients} clients back over {spread:.2f}s, at most {busiest} "
          f"({busiest / clients:.1%}) in any 100 ms")
    assert busiest <= DRAIN_WINDOW_SHARE * clients, busiest
    assert spread >= 4.0
