"""The client libraries fail over between Redis-engine nodes without losing a message.

Two gateway nodes share one Redis (started by the test on a free port): a client
subscribes through node A, A is SIGKILLed while a publisher keeps publishing through node
B, and the client reconnects to B (the next of its URLs), resubscribes with its positions
and ends with every message exactly once, in order: the JavaScript client in Chromium
and in Node on ``ws``, and the Python client.

The storm after a node restart: 19,000 harness clients come back at once to a restarted
Redis-engine node, each 20 messages behind, and every one recovers exactly those from
Redis, in order, while publishes continue and none is refused.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from clients_support import API_KEY, ENV, SECRET, token
from test_clients import NO_PROXY, until
from test_clients_recovery import HISTORY, Publisher, js_client, seqs
from test_loadtest import assert_passed, loadtest_bin, run  # noqa: F401 (fixture)

from pingwheel_client import PingwheelClient


def two_nodes(start_redis, start_nodes, tmp_path):
    redis = start_redis()
    config = tmp_path / "history.toml"
    config.write_text(HISTORY)
    a, b = start_nodes(2, [redis.url], "--config", str(config), env=ENV)
    return a, b


@pytest.mark.parametrize("kind", ["browser", "node"])
def test_js_client_fails_over_to_node_b_exactly_once_in_order(start_redis, start_nodes,
                                                              tmp_path, kind):
    a, b = two_nodes(start_redis, start_nodes, tmp_path)
    publisher = Publisher(b, user_every=5)
    with js_client(kind, [a.ws_url, b.ws_url], tmp_path, "chromium-client-failover-redis.log",
                   channels=["scores"], user=True, quickSpread=500) as client:
        client.wait_for(lambda c: {r["channel"] for r in c.reports("subscribed")}
                        >= {"scores", "#user"}, "subscribed through A")
        publisher.start()
        client.wait_for(lambda c: len(seqs(c, "scores")) >= 100, "100 deliveries through A")
        a.kill()  # SIGKILL: its connections end without a close frame
        client.wait_for(lambda c: [d["url"] for s, d in c.states() if s == "connected"]
                        == [a.ws_url, b.ws_url], "the reconnect to B")
        mark = len(publisher.channel_seqs)
        client.wait_for(lambda c: len(seqs(c, "scores")) >= mark + 100, "100 more through B")
        publisher.stop()
        client.wait_for(lambda c: seqs(c, "scores")[-1:] == publisher.channel_seqs[-1:],
                        "the last seq")
        client.wait_for(lambda c: seqs(c, "#user")[-1:] == publisher.user_seqs[-1:],
                        "the last user seq")
        assert seqs(client, "scores") == publisher.channel_seqs, "every channel seq once, in order"
        assert seqs(client, "#user") == publisher.user_seqs, "every user seq once, in order"
        assert publisher.channel_seqs == list(range(1, len(publisher.channel_seqs) + 1))
        lost = [d for s, d in client.states() if s == "disconnected"]
        assert [(d["code"], d["opened"]) for d in lost] == [(1006, True)]
        recovered = client.reports("recovered")
        assert sorted((r["channel"], r["recovered"]) for r in recovered) == [
            ("#user", True), ("scores", True)]


def test_python_client_fails_over_to_node_b_exactly_once_in_order(start_redis, start_nodes,
                                                                  tmp_path):
    a, b = two_nodes(start_redis, start_nodes, tmp_path)
    publisher = Publisher(b, user_every=5)

    async def scenario():
        got, user, recovered, connected = [], [], [], []
        client = PingwheelClient(urls=[a.ws_url, b.ws_url], get_token=lambda: token(),
                                 connect_kwargs=NO_PROXY, quick_spread=0.5)
        client.on("state", lambda s, d: s == "connected" and connected.append(d["url"]))
        sub = client.subscribe("scores", lambda data, info: got.append(info.seq))
        mine = client.on_user(lambda data, info: user.append(info.seq))
        sub.on("recovered", lambda e: recovered.append(("scores", e.recovered)))
        mine.on("recovered", lambda e: recovered.append(("#user", e.recovered)))
        client.start()
        await until(lambda: sub.state == "subscribed" and mine.state == "subscribed",
                    what="subscribed through A")
        publisher.start()
        await until(lambda: len(got) >= 100, what="100 deliveries through A")
        await asyncio.to_thread(a.kill)
        await until(lambda: connected == [a.ws_url, b.ws_url], 15, "the reconnect to B")
        mark = len(publisher.channel_seqs)
        await until(lambda: len(got) >= mark + 100, 15, "100 more through B")
        await asyncio.to_thread(publisher.stop)
        await until(lambda: got[-1:] == publisher.channel_seqs[-1:], 10, "the last seq")
        await until(lambda: user[-1:] == publisher.user_seqs[-1:], 10, "the last user seq")
        await client.close()
        return got, user, recovered

    got, user, recovered = asyncio.run(scenario())
    assert got == publisher.channel_seqs, "every channel seq once, in order"
    assert user == publisher.user_seqs, "every user seq once, in order"
    assert publisher.channel_seqs == list(range(1, len(publisher.channel_seqs) + 1))
    assert sorted(recovered) == [("#user", True), ("scores", True)]


#: The storm: harness clients, channels, and how far back each recovers. 2,000 channels
#: make 2,000 distinct recoveries (the ~10 clients of a channel share one read), several
#: paced chunks' worth: as one pipeline they missed --redis-timeout together.
STORM_CLIENTS = 19_000
STORM_CHANNELS = 2_000
STORM_BACK = 20
#: Channels per /v1/batch while the history is written (200 publishes per request).
SETUP_CHANNELS_PER_BATCH = 10


def test_storm_of_19000_harness_clients_recovers_after_a_node_restart(
        start_redis, start_nodes, loadtest_bin, tmp_path):  # noqa: F811
    # Before the fix every recovery of an engine turn went to Redis as one pipeline:
    # past ~1,000 reads it missed --redis-timeout as a whole (all but ~30 clients timed
    # out, publishes answered 503, nothing was logged). Now identical recoveries share a
    # read and the rest are read in paced chunks (engine/redis/pace.rs), so every client
    # recovers, no publish is refused and nothing fails.
    redis = start_redis()
    config = tmp_path / "lt.toml"
    config.write_text('[[namespace]]\nprefix = "lt-"\nhistory_size = 100\nhistory_ttl = "10m"\n')
    flags = ["--config", str(config), "--token-secret", SECRET, "--api-key", API_KEY]
    (node,) = start_nodes(1, [redis.url], *flags)
    # The history the clients will recover: STORM_BACK messages on every channel.
    positions = []
    for first in range(0, STORM_CHANNELS, SETUP_CHANNELS_PER_BATCH):
        channels = range(first, min(first + SETUP_CHANNELS_PER_BATCH, STORM_CHANNELS))
        # The harness's own payload ({"t": sent at, ns since the epoch, "i": index}): it
        # times and checks recovered messages by it.
        body = {"messages": [{"channel": f"lt-{c}", "data": {"t": time.time_ns(), "i": i}}
                             for c in channels for i in range(STORM_BACK)]}
        reply = node.post("/v1/batch", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
        assert reply.status_code == 200, reply.text
        results = reply.json()["results"]
        for k in range(len(channels)):
            last = results[(k + 1) * STORM_BACK - 1]
            positions.append(f"{last['seq']}:{last['epoch']}")
    # The node restarts (a deploy): its memory is gone, Redis keeps positions and history.
    assert node.terminate() == 0
    (node,) = start_nodes(1, [redis.url], *flags)
    started = time.monotonic()
    code, report, output = run(
        loadtest_bin, tmp_path, "push", node.ws_url,
        "-c", STORM_CLIENTS, "--channels", STORM_CHANNELS, "--ramp-rate", "1000000/s",
        "-d", "1s", "--settle", "500ms", "--publish-url", node.admin_url,
        "--token-secret", SECRET, "--api-key", API_KEY, "--publish-rate", "50/s",
        "--recover-back", STORM_BACK, "--recover-positions", ",".join(positions),
        "--max-lost", 0,
    )
    report = assert_passed(code, report, output)
    recovery = report["push"]["recovery"]
    print(f"storm: {STORM_CLIENTS} clients after a restart, recovery "
          f"{json.dumps(recovery)} in {time.monotonic() - started:.1f}s")
    assert recovery == {**recovery, "back": STORM_BACK, "recovered": STORM_CLIENTS,
                        "not_recovered": 0, "complete": STORM_CLIENTS, "gaps": 0}, recovery
    push = report["push"]
    assert push["missing"] == 0 and push["reordered"] == 0 and push["duplicates"] == 0, push
    assert push["publish_errors"] == 0 and push["published"] > 0, push
    metrics = node.metrics()
    assert metrics.metric("pingwheel_engine_subscribe_failures_total") == 0
    assert metrics.metric("pingwheel_engine_errors_total") == 0
    assert metrics.metric("pingwheel_engine_transitions_total", state="down") == 0
    assert metrics.metric("pingwheel_recoveries_total", result="recovered") == STORM_CLIENTS
    assert " WARN " not in node.log(), node.log()[-2000:]
