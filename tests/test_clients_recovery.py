"""The client libraries recover what they missed, against real gateways with history.

Every test keeps a publisher publishing while the client loses its connection, then
checks that each handler got every seq exactly once, in order:

* a dead path (the gateway SIGSTOPped long enough for the application ping to give up),
  with the channel and the per-user stream (Python, and the JavaScript client in
  Chromium and in Node on ``ws``);
* a slow consumer closed with 1013 backs off (at least 2 s) and recovers the rest;
* a gateway restart (new epoch) is reported as ``recovered: false`` and the client goes on
  from the new position.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time

import pytest

from clients_support import API_KEY, ENV, ClientPageServer, NodeClient, token
from test_browser import chromium
from test_clients import NO_PROXY, until

from pingwheel_client import PingwheelClient

#: History for every channel and a long one for user streams (the defaults keep none for
#: channels and 16 per user).
HISTORY = """[[namespace]]
prefix = ""
history_size = 10000
history_ttl = "10m"

[[namespace]]
prefix = "#user"
history_size = 10000
history_ttl = "10m"
"""


def start_with_history(start_gateway, tmp_path, *flags):
    config = tmp_path / "history.toml"
    config.write_text(HISTORY)
    return start_gateway("--config", str(config), *flags, env=ENV)


class Publisher:
    """Publishes ``{"n": i}`` to a channel (and every ``user_every``-th to user 42) from a
    thread until stopped; remembers every reply's seq."""

    def __init__(self, gw, channel: str = "scores", interval: float = 0.01, user_every: int = 0,
                 size: int = 0, limit: int = 0, batch: int = 0):
        self.gw, self.channel, self.interval, self.limit = gw, channel, interval, limit
        self.batch = batch
        self.user_every, self.pad = user_every, "x" * size
        self.channel_seqs: list[int] = []
        self.user_seqs: list[int] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _publish(self, body: dict) -> int:
        response = self.gw.post("/v1/publish", json=body, timeout=10,
                                headers={"Authorization": f"Bearer {API_KEY}"})
        if response.status_code != 200:
            self.errors.append(response.text)
            return 0
        return response.json()["seq"]

    def _publish_batch(self, first: int) -> None:
        messages = [{"channel": self.channel, "data": {"n": n, "pad": self.pad}}
                    for n in range(first, first + self.batch)]
        response = self.gw.post("/v1/batch", json={"messages": messages}, timeout=10,
                                headers={"Authorization": f"Bearer {API_KEY}"})
        if response.status_code != 200:
            self.errors.append(response.text)
            return
        self.channel_seqs.extend(r["seq"] for r in response.json()["results"])

    def _run(self) -> None:
        n = 0
        while self.batch and not self._stop.is_set() and not (self.limit and n >= self.limit):
            self._publish_batch(n + 1)
            n += self.batch
        while not self.batch and not self._stop.is_set() and not (self.limit and n >= self.limit):
            n += 1
            data = {"n": n, "pad": self.pad} if self.pad else {"n": n}
            self.channel_seqs.append(self._publish({"channel": self.channel, "data": data}))
            if self.user_every and n % self.user_every == 0:
                self.user_seqs.append(self._publish({"user": "42", "data": {"n": n}}))
            if self.interval:
                time.sleep(self.interval)

    def start(self) -> "Publisher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self.errors, self.errors[:3]


def blip(gw, seconds: float) -> None:
    """The gateway stops answering (SIGSTOP) for ``seconds``: a dead path to the client."""
    gw.signal(signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        gw.signal(signal.SIGCONT)


def test_python_client_recovers_after_a_dead_path_while_publishing_continues(start_gateway,
                                                                           tmp_path):
    gw = start_with_history(start_gateway, tmp_path)
    publisher = Publisher(gw, user_every=5)

    async def scenario():
        got, user, recovered, states = [], [], [], []
        client = PingwheelClient(url=gw.ws_url, get_token=lambda: token(),
                                 connect_kwargs=NO_PROXY, ping_after=0.5, pong_timeout=0.5,
                                 quick_spread=0.5)
        client.on("state", lambda s, d: states.append(s))
        sub = client.subscribe("scores", lambda data, info: got.append(info.seq))
        mine = client.on_user(lambda data, info: user.append(info.seq))
        sub.on("recovered", lambda e: recovered.append(("scores", e)))
        mine.on("recovered", lambda e: recovered.append(("#user", e)))
        client.start()
        await until(lambda: sub.state == "subscribed", what="subscribed")
        publisher.start()
        await until(lambda: len(got) >= 100, what="100 deliveries")
        await asyncio.to_thread(blip, gw, 1.5)
        await until(lambda: states.count("connected") >= 2, 15, "the reconnect")
        mark = len(publisher.channel_seqs)
        await until(lambda: len(got) >= mark + 100, 15, "100 more deliveries after the reconnect")
        await asyncio.to_thread(publisher.stop)
        await until(lambda: got and got[-1] == publisher.channel_seqs[-1], 10, "the last seq")
        await until(lambda: not publisher.user_seqs or user[-1:] == publisher.user_seqs[-1:], 10,
                    "the last user seq")
        await client.close()
        return got, user, recovered, states

    got, user, recovered, states = asyncio.run(scenario())
    assert publisher.channel_seqs == list(range(1, len(publisher.channel_seqs) + 1))
    assert got == publisher.channel_seqs, "every channel seq once, in order"
    assert user == publisher.user_seqs, "every user seq once, in order"
    assert sorted((name, e.recovered) for name, e in recovered) == [("#user", True), ("scores", True)]
    assert "disconnected" in states


def test_python_slow_consumer_backs_off_and_loses_nothing_silently(start_gateway, tmp_path):
    gw = start_with_history(start_gateway, tmp_path, "--max-queued-bytes", "256KiB",
                            "--recovery-max", "10000")

    async def scenario():
        got, closes, recovered = [], [], []
        slow = asyncio.Event()
        slow.set()

        async def handler(data, info):
            got.append(info.seq)
            if slow.is_set():
                await asyncio.sleep(0.01)  # slower than the publisher: the queue fills

        client = PingwheelClient(url=gw.ws_url, get_token=lambda: token(), connect_kwargs=NO_PROXY)
        client.on("state", lambda s, d: s == "disconnected" and closes.append(d))
        sub = client.subscribe("scores", handler)
        sub.on("recovered", recovered.append)
        client.start()
        await until(lambda: sub.state == "subscribed", what="subscribed")
        publisher = Publisher(gw, size=1000, limit=30000, batch=50).start()
        await asyncio.to_thread(gw.wait_metric, "pingwheel_slow_consumer_disconnects_total", 1, 60)
        await asyncio.to_thread(publisher.stop)
        slow.clear()  # the app catches up: it reads what was sent, then sees the close
        last = publisher.channel_seqs[-1]
        await until(lambda: (got and got[-1] == last)
                    or any(not e.recovered and e.seq >= last for e in recovered), 60,
                    "the last seq, or a reported loss reaching it")
        await client.close()
        return got, closes, recovered, publisher.channel_seqs

    got, closes, recovered, published = asyncio.run(scenario())
    assert closes[0]["code"] == 1013 and closes[0]["delay"] >= 2.0, closes[0]
    assert got == sorted(set(got)), "in order, none twice"
    missing = sorted(set(published) - set(got))
    lost = [e for e in recovered if not e.recovered]
    print(f"slow consumer: {len(published)} published, {len(got)} handled, {len(missing)} "
          f"missing, events {recovered}, closes {[c['code'] for c in closes]}")
    if missing:
        # Never silent: the client said so, and jumped past every missing seq.
        assert lost and missing[-1] <= max(e.seq for e in lost), (missing[:5], recovered)
    else:
        assert recovered and all(e.recovered for e in recovered)


def test_python_client_reports_a_restart_as_not_recovered(start_gateway, tmp_path):
    gw = start_with_history(start_gateway, tmp_path)

    async def scenario():
        got, recovered = [], []
        client = PingwheelClient(url=gw.ws_url, get_token=lambda: token(), connect_kwargs=NO_PROXY)
        sub = client.subscribe("scores", lambda data, info: got.append((info.epoch, info.seq)))
        sub.on("recovered", recovered.append)
        client.start()
        await until(lambda: sub.state == "subscribed", what="subscribed")
        for n in range(3):
            await asyncio.to_thread(gw.post, "/v1/publish", json={"channel": "scores", "data": n},
                                    headers={"Authorization": f"Bearer {API_KEY}"})
        await until(lambda: len(got) == 3, what="three deliveries")
        assert (await asyncio.to_thread(gw.terminate)) == 0
        config = tmp_path / "history.toml"
        again = await asyncio.to_thread(start_gateway, "--listen", gw.listen, "--config",
                                        str(config), env=ENV)
        await until(lambda: recovered, 15, "the answer to the resubscribe")
        await asyncio.to_thread(again.post, "/v1/publish", json={"channel": "scores", "data": 9},
                                headers={"Authorization": f"Bearer {API_KEY}"})
        await until(lambda: len(got) == 4, what="the delivery after the restart")
        await client.close()
        return got, recovered

    got, recovered = asyncio.run(scenario())
    assert len(recovered) == 1 and not recovered[0].recovered
    assert recovered[0].reason == "not_recovered"
    old, new = got[0][0], recovered[0].epoch
    assert old != new, "a restart starts a new epoch"
    assert got == [(old, 1), (old, 2), (old, 3), (new, 1)]


@contextlib.contextmanager
def js_client(kind: str, urls: list[str], tmp_path, log_name: str, **config):
    """The JS client with ``config`` (``channels``, ``user``, tunables): on a page in
    headless Chromium (``kind`` "browser") or in Node on ``ws`` ("node"). Either yields
    an object with ``reports(kind)``, ``states()`` and ``wait_for(condition, what)``."""
    if kind == "browser":
        with ClientPageServer() as page:
            page.client_page(urls, **config)
            with chromium(page.origin + "/", tmp_path / "profile", log_name):
                yield page
    else:
        with NodeClient(urls, **config) as node:
            yield node


def seqs(client, channel: str) -> list[int]:
    """The seqs the JS client's handler of ``channel`` got, in order."""
    return [d["seq"] for d in client.reports("delivery") if d["channel"] == channel]


@pytest.mark.parametrize("kind", ["browser", "node"])
def test_js_client_recovers_after_a_dead_path_while_publishing_continues(start_gateway,
                                                                       tmp_path, kind):
    gw = start_with_history(start_gateway, tmp_path)
    publisher = Publisher(gw, user_every=5)
    with js_client(kind, [gw.ws_url], tmp_path, "chromium-client-recovery.log",
                   channels=["scores"], user=True, pingAfter=500, pongTimeout=500,
                   quickSpread=500) as client:
        client.wait_for(lambda c: {r["channel"] for r in c.reports("subscribed")}
                        >= {"scores", "#user"}, "subscribed")
        publisher.start()
        client.wait_for(lambda c: len(seqs(c, "scores")) >= 100, "100 deliveries")
        blip(gw, 1.5)
        client.wait_for(lambda c: sum(s == "connected" for s, _ in c.states()) >= 2,
                        "the reconnect")
        mark = len(publisher.channel_seqs)
        client.wait_for(lambda c: len(seqs(c, "scores")) >= mark + 100,
                        "100 more deliveries after the reconnect")
        publisher.stop()
        client.wait_for(lambda c: seqs(c, "scores")[-1:] == publisher.channel_seqs[-1:],
                        "the last seq")
        client.wait_for(lambda c: seqs(c, "#user")[-1:] == publisher.user_seqs[-1:],
                        "the last user seq")
        assert seqs(client, "scores") == publisher.channel_seqs, "every channel seq once, in order"
        assert seqs(client, "#user") == publisher.user_seqs, "every user seq once, in order"
        lost = [d for s, d in client.states() if s == "disconnected"]
        assert [d["reason"] for d in lost] == ["no answer to ping"], lost
        recovered = client.reports("recovered")
        assert sorted((r["channel"], r["recovered"]) for r in recovered) == [
            ("#user", True), ("scores", True)]
