"""Many nodes over Redis (issue 13) and the cluster routes, end to end against the real
binary with Python ``websockets`` clients and a real ``redis-server`` started per test
(``tests/cluster_fixtures.py``).

The memory-engine half runs first: ``/readyz``, ``/v1/nodes`` and ``/v1/disconnect`` on
one process.
"""

from __future__ import annotations

import contextlib
import json
import re
import time

import pytest
from websockets.exceptions import ConnectionClosed

from cluster_fixtures import wait_engine_ready
from conftest import wait_for
from test_push import API_KEY, PUSH_ENV, bearer, open_ws, token, ws_url

#: The close code of a connection whose user was disconnected by the operator.
DISCONNECT_CODE = 4001


def closed_with(ws, timeout: float = 5.0) -> int:
    """Reads until the connection closes; returns its close code."""
    deadline = time.monotonic() + timeout
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            ws.recv(timeout=max(0.01, deadline - time.monotonic()))
    return closed.value.rcvd.code if closed.value.rcvd else 1006


def test_memory_engine_is_ready_lists_itself_and_disconnects_a_user(start_gateway):
    gw = start_gateway("--node-name", "solo", env=PUSH_ENV)
    ready = gw.get("/readyz")
    assert (ready.status_code, ready.text) == (200, "ready\n")
    assert gw.get("/healthz").status_code == 200

    assert gw.get("/v1/nodes").status_code == 401, "the node list needs the API key"
    with open_ws(ws_url(gw, ("news",)), additional_headers=bearer(token("42"))) as a, \
            open_ws(ws_url(gw), additional_headers=bearer(token("42"))) as b, \
            open_ws(ws_url(gw), additional_headers=bearer(token("7"))) as other:
        def listed():
            nodes = gw.get("/v1/nodes", headers=bearer(API_KEY)).json()["nodes"]
            return nodes if nodes and nodes[0]["connections"] == 3 else None

        nodes = wait_for(listed, message="three connections in /v1/nodes")
        assert [n["name"] for n in nodes] == ["solo"]
        assert nodes[0]["subscriptions"] == 1
        assert abs(nodes[0]["heartbeat_ms"] / 1000 - time.time()) < 5

        for bad in ("{}", '{"user":""}', '{"user":42}', "[", '{"user":"42","x":1}'):
            reply = gw.post("/v1/disconnect", data=bad, headers=bearer(API_KEY))
            assert reply.status_code == 400, (bad, reply.text)
            assert reply.json()["error"] == "bad_request"
        assert gw.post("/v1/disconnect", data='{"user":"42"}').status_code == 401
        assert gw.get("/v1/disconnect", headers=bearer(API_KEY)).status_code == 405

        reply = gw.post("/v1/disconnect", data='{"user":"42"}', headers=bearer(API_KEY))
        assert reply.status_code == 200, reply.text
        assert reply.json() == {"ok": True, "nodes": 1}
        assert closed_with(a) == DISCONNECT_CODE
        assert closed_with(b) == DISCONNECT_CODE
        other.send(json.dumps({"op": "ping", "id": 1}))
        assert json.loads(other.recv(timeout=5))["op"] == "pong", "other users stay"
    gw.wait_metric("pingwheel_connections_closed_total", 2, reason="revoked")


# ---- many nodes over Redis --------------------------------------------------------------

import signal
import threading
from pathlib import Path
from urllib.parse import quote, urlencode

import requests

from test_push import RECV_TIMEOUT, recv_json, request_reply

#: Channels under "chat:" keep history; everything else keeps none (the default).
CHAT = '[[namespace]]\nprefix = "chat:"\nhistory_size = 20000\nhistory_ttl = "10m"\n'
#: Fast failure detection for the fault tests.
FAST = ("--redis-timeout", "200ms")


def config_file(tmp_path: Path, text: str = CHAT) -> str:
    path = tmp_path / "pingwheel.toml"
    path.write_text(text)
    return str(path)


def nodes_on(start_nodes, tmp_path, n, urls, *flags):
    return start_nodes(n, urls, "--config", config_file(tmp_path), *FAST, *flags, env=PUSH_ENV)


def connect(gw, user: str = "alice", **params):
    query = urlencode(list(params.items()), doseq=True, quote_via=quote)
    return open_ws(gw.ws_url + ("?" + query if query else ""),
                   additional_headers=bearer(token(user)))


def subscribe(ws, channel: str, since=None, id=1) -> dict:
    request = {"op": "subscribe", "channel": channel, "id": id}
    if since is not None:
        request["since"] = {"seq": since[0], "epoch": since[1]}
    reply = request_reply(ws, request)
    while "op" not in reply:  # a delivery of another subscription came first
        reply = recv_json(ws)
    return reply


def post(gw, path: str, body: dict, timeout: float = 5.0) -> requests.Response:
    return requests.post(gw.admin_url + path, data=json.dumps(body), headers=bearer(API_KEY),
                         timeout=timeout)


def publish_ok(gw, body: dict, path: str = "/v1/publish") -> dict:
    reply = post(gw, path, body)
    assert reply.status_code == 200, reply.text
    return reply.json()


def read_seqs(ws, count: int, channel: str, timeout: float = 30.0) -> list[int]:
    """Reads deliveries of ``channel`` until ``count`` arrived; returns their seqs."""
    seqs = []
    deadline = time.monotonic() + timeout
    while len(seqs) < count:
        message = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
        if message.get("channel") == channel and "seq" in message and "op" not in message:
            seqs.append(message["seq"])
    return seqs


def wait_ready(gw, ready: bool, timeout: float) -> float:
    """Waits until ``/readyz`` says ``ready``; returns how long it took."""
    started = time.monotonic()
    want = 200 if ready else 503
    wait_for(lambda: gw.get("/readyz", timeout=2).status_code == want, timeout=timeout,
             message=f"/readyz {want}")
    return time.monotonic() - started


def test_publishes_alternating_over_three_nodes_arrive_everywhere_in_order(
    start_redis, start_nodes, tmp_path
):
    redis = start_redis()
    nodes = nodes_on(start_nodes, tmp_path, 3, [redis.url])
    total, per_request = 10_000, 100
    clients = [connect(gw) for gw in nodes]
    try:
        epochs = {subscribe(ws, "scores")["epoch"] for ws in clients}
        assert len(epochs) == 1, "every node reports the same position"
        results = {}

        def reader(i, ws):
            results[i] = read_seqs(ws, total, "scores", timeout=120)

        threads = [threading.Thread(target=reader, args=(i, ws)) for i, ws in enumerate(clients)]
        for t in threads:
            t.start()
        acked = []
        for request in range(total // per_request):
            gw = nodes[request % 3]
            body = {"messages": [{"channel": "scores", "data": {"n": request * per_request + k}}
                                 for k in range(per_request)]}
            acked += [r["seq"] for r in publish_ok(gw, body, "/v1/batch")["results"]]
        assert acked == list(range(1, total + 1))
        for t in threads:
            t.join(150)
        for i in range(3):
            assert results.get(i) == list(range(1, total + 1)), f"node {i}"
        listed = publish_ok_get(nodes[0], "/v1/nodes")
        assert sorted(n["name"] for n in listed["nodes"]) == ["node0", "node1", "node2"]
    finally:
        for ws in clients:
            ws.close()


def publish_ok_get(gw, path: str) -> dict:
    reply = gw.get(path, headers=bearer(API_KEY))
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_per_user_delivery_and_disconnect_reach_every_node(start_redis, start_nodes, tmp_path):
    redis = start_redis()
    a, b, c = nodes_on(start_nodes, tmp_path, 3, [redis.url])
    with connect(a, "42") as on_a, connect(b, "42") as on_b, connect(c, "7") as other:
        for ws in (on_a, on_b):
            assert subscribe(ws, "#user")["op"] == "subscribed"
        reply = publish_ok(c, {"user": "42", "data": {"hello": 1}})
        for ws in (on_a, on_b):
            message = recv_json(ws)
            assert (message["channel"], message["seq"], message["data"]) == ("#user", reply["seq"], {"hello": 1})
        done = post(c, "/v1/disconnect", {"user": "42"})
        assert done.status_code == 200 and done.json() == {"ok": True, "nodes": 3}, done.text
        assert closed_with(on_a) == DISCONNECT_CODE
        assert closed_with(on_b) == DISCONNECT_CODE
        other.send(json.dumps({"op": "ping", "id": 1}))
        assert json.loads(other.recv(timeout=5))["op"] == "pong"


def test_recovery_after_reconnecting_to_a_different_node(start_redis, start_nodes, tmp_path):
    redis = start_redis()
    a, b = nodes_on(start_nodes, tmp_path, 2, [redis.url])
    with connect(a) as ws:
        reply = subscribe(ws, "chat:room")
        epoch = reply["epoch"]
        for n in range(5):
            publish_ok(b, {"channel": "chat:room", "data": n})
        assert read_seqs(ws, 5, "chat:room") == [1, 2, 3, 4, 5]
    for n in range(5, 30):
        publish_ok(a, {"channel": "chat:room", "data": n})
    with connect(b, channel="chat:room", since=f"chat:room:5:{epoch}") as ws:
        first = recv_json(ws)
        assert (first["op"], first["recovered"], first["seq"]) == ("subscribed", True, 30), first
        assert read_seqs(ws, 25, "chat:room") == list(range(6, 31))
        publish_ok(a, {"channel": "chat:room", "data": 30})
        assert read_seqs(ws, 1, "chat:room") == [31]


def test_two_redis_instances_share_the_streams_and_keep_them_across_a_node_restart(
    start_redis, start_nodes, start_gateway, tmp_path
):
    one, two = start_redis(), start_redis()
    urls = [one.url, two.url]
    a, b = nodes_on(start_nodes, tmp_path, 2, urls)
    channels = [f"chat:c{i}" for i in range(20)]
    body = {"channels": channels, "data": 1}
    first = {r["channel"]: (r["seq"], r["epoch"]) for r in publish_ok(a, body, "/v1/broadcast")["results"]}
    held = [int(s.command("EVAL", "return #redis.call('keys', 'pw:m:c:*')", "0")) for s in (one, two)]
    assert sum(held) == 20 and min(held) >= 3, held
    with connect(b) as ws:
        for i, channel in enumerate(channels):
            assert subscribe(ws, channel, id=i)["seq"] == 1
        b.terminate()
        again = start_gateway("--engine", "redis", "--redis-url", one.url, "--redis-url", two.url,
                              "--node-name", "node1", "--config", config_file(tmp_path), env=PUSH_ENV)
        wait_engine_ready(again)
        second = {r["channel"]: (r["seq"], r["epoch"]) for r in publish_ok(again, body, "/v1/broadcast")["results"]}
        for channel in channels:
            assert second[channel] == (2, first[channel][1]), "same instance, same epoch, next seq"
    assert [int(s.command("EVAL", "return #redis.call('keys', 'pw:m:c:*')", "0")) for s in (one, two)] == held


SMALL = CHAT + '[[namespace]]\nprefix = "small:"\nhistory_size = 10\nhistory_ttl = "10m"\n'


def test_a_history_trimmed_approximately_still_reads_exactly_its_size(
    start_redis, start_nodes, tmp_path
):
    redis = start_redis()
    a, b = start_nodes(2, [redis.url], "--config", config_file(tmp_path, SMALL), *FAST,
                       env=PUSH_ENV)
    body = {"messages": [{"channel": "small:t", "data": n} for n in range(1, 251)]}
    epoch = publish_ok(a, body, "/v1/batch")["results"][0]["epoch"]
    # `MAXLEN ~ 10` drops whole stream nodes only: Redis holds more than ten ...
    assert int(redis.command("XLEN", "pw:h:c:small:t")) > 10
    # ... yet every reader sees exactly the newest ten, on either node.
    for gw in (a, b):
        history = publish_ok_get(gw, "/v1/history?channel=small:t&limit=100")
        assert [p["seq"] for p in history["publications"]] == list(range(241, 251))
        assert [p["data"] for p in history["publications"]] == list(range(241, 251))
    with connect(b) as ws:
        reply = subscribe(ws, "small:t", since=(244, epoch))
        assert (reply["recovered"], reply["seq"]) == (True, 250), reply
        assert read_seqs(ws, 6, "small:t") == list(range(245, 251))
    with connect(b) as ws:
        # 200 is older than the newest ten: gone, though Redis may still hold it.
        reply = subscribe(ws, "small:t", since=(200, epoch))
        assert (reply["recovered"], reply["seq"], reply["epoch"]) == (False, 250, epoch), reply


class Publisher(threading.Thread):
    """Publishes 0, 1, 2, … to ``channel`` on ``gw`` until stopped; records every
    acknowledged seq and, for refusals, their status and how long after the first
    refusal's predecessor succeeded."""

    def __init__(self, gw, channel: str, period: float = 0.005):
        super().__init__(daemon=True)
        self.gw, self.channel, self.period = gw, channel, period
        self.acked: list[int] = []
        self.refused: list[tuple[int, float]] = []
        self.stop = threading.Event()
        self.n = 0

    def run(self) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                reply = session.post(self.gw.admin_url + "/v1/publish",
                                     data=json.dumps({"channel": self.channel, "data": self.n}),
                                     headers=bearer(API_KEY), timeout=5)
                if reply.status_code == 200:
                    self.acked.append(reply.json()["seq"])
                else:
                    assert reply.json()["error"] == "engine_unavailable", reply.text
                    self.refused.append((reply.status_code, time.monotonic() - started))
            except requests.RequestException as err:
                self.refused.append((0, time.monotonic() - started))
            self.n += 1
            time.sleep(self.period)


def test_redis_killed_mid_stream_answers_503_fast_and_loses_nothing_acknowledged(
    start_redis, start_nodes, tmp_path
):
    redis = start_redis(persistent=True)
    (gw,) = nodes_on(start_nodes, tmp_path, 1, [redis.url])
    with connect(gw) as ws:
        epoch = subscribe(ws, "chat:live")["epoch"]
        pub = Publisher(gw, "chat:live")
        pub.start()
        wait_for(lambda: len(pub.acked) >= 50, timeout=10, message="50 publishes")
        redis.kill()
        killed = time.monotonic()
        wait_for(lambda: pub.refused, timeout=5, message="a refused publish")
        first_refusal = time.monotonic() - killed
        assert first_refusal < 1.0, first_refusal
        assert all(status == 503 for status, _ in pub.refused), pub.refused
        assert all(took < 1.0 for _, took in pub.refused), pub.refused
        assert wait_ready(gw, False, 3) < 3
        assert gw.get("/healthz").status_code == 200, "liveness is not readiness"
        # A subscribe that needs Redis is refused with an error; the connection stays.
        reply = subscribe(ws, "chat:other", id=9)
        assert reply["op"] == "error" and reply["id"] == 9, reply
        acked_before = list(pub.acked)
        redis.start()
        wait_ready(gw, True, 10)
        wait_for(lambda: len(pub.acked) > len(acked_before) + 20, timeout=10,
                 message="publishes accepted again")
        pub.stop.set()
        pub.join(10)
    # Every acknowledged message is there for a client that recovers from the start.
    with connect(gw, channel="chat:live", since=f"chat:live:0:{epoch}") as ws:
        first = recv_json(ws)
        assert first["op"] == "subscribed" and first["recovered"] is True, first
        got = read_seqs(ws, first["seq"], "chat:live")
    assert set(pub.acked) <= set(got), sorted(set(pub.acked) - set(got))[:10]
    assert got == list(range(1, first["seq"] + 1))


def test_redis_restarted_resumes_live_delivery_and_recovery(start_redis, start_nodes, tmp_path):
    redis = start_redis(persistent=True)
    a, b = nodes_on(start_nodes, tmp_path, 2, [redis.url])
    with connect(a) as live, connect(b) as away:
        epoch = subscribe(live, "chat:r")["epoch"]
        subscribe(away, "chat:r")
        publish_ok(a, {"channel": "chat:r", "data": 1})
        assert read_seqs(live, 1, "chat:r") == [1]
        assert read_seqs(away, 1, "chat:r") == [1]
    # `away` is gone; 2 and 3 are published; then Redis restarts.
    publish_ok(b, {"channel": "chat:r", "data": 2})
    publish_ok(b, {"channel": "chat:r", "data": 3})
    with connect(a) as live:
        subscribe(live, "chat:r", since=(3, epoch))
        redis.restart()
        restarted = time.monotonic()
        wait_ready(a, True, 10)

        def delivered():
            reply = post(b, "/v1/publish", {"channel": "chat:r", "data": 4})
            return reply.status_code == 200 and reply.json()

        reply = wait_for(delivered, timeout=5, interval=0.1, message="a publish accepted")
        assert read_seqs(live, 1, "chat:r", timeout=5) == [reply["seq"]]
        assert time.monotonic() - restarted < 5 + 1
        assert reply["epoch"] == epoch, "a persistent Redis keeps the positions"
    with connect(b, channel="chat:r", since=f"chat:r:1:{epoch}") as back:
        first = recv_json(back)
        assert first["recovered"] is True, first
        assert read_seqs(back, first["seq"] - 1, "chat:r") == list(range(2, first["seq"] + 1))


def test_a_sigkilled_node_loses_only_its_own_connections(start_redis, start_nodes, tmp_path):
    redis = start_redis()
    a, b, c = nodes_on(start_nodes, tmp_path, 3, [redis.url])
    with connect(a) as on_a, connect(b) as on_b:
        epoch = subscribe(on_a, "chat:k")["epoch"]
        subscribe(on_b, "chat:k")
        publish_ok(c, {"channel": "chat:k", "data": 0})
        assert read_seqs(on_b, 1, "chat:k") == [1]
        b.signal(signal.SIGKILL)
        for n in range(1, 11):
            publish_ok(c, {"channel": "chat:k", "data": n})
        assert read_seqs(on_a, 11, "chat:k") == list(range(1, 12))
    # b's client comes back on c and recovers what it missed.
    with connect(c, channel="chat:k", since=f"chat:k:1:{epoch}") as back:
        first = recv_json(back)
        assert first["recovered"] is True
        assert read_seqs(back, 10, "chat:k") == list(range(2, 12))
    wait_for(lambda: sorted(n["name"] for n in publish_ok_get(a, "/v1/nodes")["nodes"])
             == ["node0", "node2"], timeout=10, message="the killed node leaves /v1/nodes")


def test_a_partitioned_node_notices_answers_503_and_recovers(
    netns, start_redis, start_nodes, tmp_path
):
    redis = start_redis(netns=netns)
    (gw,) = nodes_on(start_nodes, tmp_path, 1, [redis.url])
    with connect(gw) as ws:
        epoch = subscribe(ws, "chat:p")["epoch"]
        publish_ok(gw, {"channel": "chat:p", "data": 0})
        assert read_seqs(ws, 1, "chat:p") == [1]
        netns.partition()
        cut = time.monotonic()
        noticed = wait_ready(gw, False, 5)
        assert noticed < 4, f"noticed after {noticed:.1f}s"
        started = time.monotonic()
        reply = post(gw, "/v1/publish", {"channel": "chat:p", "data": 1})
        assert reply.status_code == 503 and reply.json()["error"] == "engine_unavailable"
        assert time.monotonic() - started < 0.1, "known down: refused at once"
        ws.send(json.dumps({"op": "ping", "id": 5}))
        assert recv_json(ws)["op"] == "pong", "the client connection is unaffected"
        netns.heal()
        wait_ready(gw, True, 15)
        reply = publish_ok(gw, {"channel": "chat:p", "data": 2})
        assert (reply["seq"], reply["epoch"]) == (2, epoch)
        assert read_seqs(ws, 1, "chat:p") == [2]
        print(f"partition noticed after {noticed:.2f}s; healed within {time.monotonic() - cut:.1f}s")


#: Clients that come back while the broker hangs.
HUNG_STORM = 200


def test_a_hung_redis_during_a_recovery_storm_is_loud_then_everyone_recovers(
    start_redis, start_nodes, tmp_path
):
    # A hung broker (SIGSTOP: the connections stay open, nothing answers) while a storm of
    # clients recovers: every subscribe gets an engine_unavailable error (never a silent
    # wait), the connection stays up, publishes answer 503 with a JSON error, the node
    # counts the failures and warns with their count; when Redis answers again everyone
    # recovers without a gap.
    redis = start_redis()
    (gw,) = nodes_on(start_nodes, tmp_path, 1, [redis.url])
    batch = {"messages": [{"channel": "chat:storm", "data": i} for i in range(20)]}
    epoch = publish_ok(gw, batch, "/v1/batch")["results"][-1]["epoch"]
    clients = []
    with contextlib.ExitStack() as stack:
        redis.signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            for _ in range(HUNG_STORM):
                since = f"chat:storm:0:{epoch}"
                clients.append(stack.enter_context(connect(gw, channel="chat:storm", since=since)))
            for ws in clients:
                reply = recv_json(ws, timeout=5)
                assert reply["op"] == "error" and reply["code"] == "engine_unavailable", reply
            answered = time.monotonic() - started
            assert answered < 5, answered
            refused = post(gw, "/v1/publish", {"channel": "chat:storm", "data": "x"})
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"] == "engine_unavailable", refused.text
            assert refused.elapsed.total_seconds() < 1, refused.elapsed
            # The connections are up: a ping is answered.
            ping = request_reply(clients[0], {"op": "ping", "id": "p"})
            assert ping == {"op": "pong", "id": "p"}, ping
            assert gw.metric("pingwheel_engine_subscribe_failures_total") == HUNG_STORM

            # Logged at warn with a count: the first at once, the rest within the interval.
            def warned() -> int:
                lines = [ln for ln in gw.log().splitlines()
                         if " WARN " in ln and "subscribes answered with an error" in ln]
                return sum(int(m) for ln in lines for m in re.findall(r"failed=(\d+)", ln))

            wait_for(lambda: warned() == HUNG_STORM, timeout=10,
                     message=f"warnings counting {HUNG_STORM} failed subscribes")
            assert re.search(r" WARN .*publishes answered 503 engine_unavailable", gw.log())
        finally:
            redis.signal(signal.SIGCONT)
        wait_ready(gw, True, 15)
        # Everyone subscribes again with its position and recovers all 20, in order.
        for i, ws in enumerate(clients):
            reply = subscribe(ws, "chat:storm", since=(0, epoch), id=i)
            assert reply["op"] == "subscribed" and reply["recovered"] is True, reply
            assert reply["seq"] == 20, reply
        for ws in clients:
            assert read_seqs(ws, 20, "chat:storm", timeout=10) == list(range(1, 21))
