"""Positions, history and recovery end to end (issue 12), with Python `websockets`
clients against the real binary.

Covers: a client that missed 50 messages resubscribes with `since` while a publisher
keeps publishing and gets exactly those 50 and then the live ones (no gap, no
duplicate, in order); `recovered:false` for a wrong epoch, expired history, evicted
history and more than `--recovery-max` missing; a restart changes the epoch; the
per-user stream recovers after a reconnect; the URL form; in-place resubscribes;
positions in the publish replies; the history API. The contract is docs/protocol.md
(section 4) and docs/operations.md ("History").
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest

from conftest import Gateway, wait_for
from test_push import (
    API_KEY,
    PUSH_ENV,
    RECV_TIMEOUT,
    bearer,
    open_ws,
    publish,
    recv_json,
    request_reply,
    token,
)

CHAT = "[[namespace]]\nprefix = \"chat:\"\nhistory_size = 1000\nhistory_ttl = \"10m\"\n"


def start_history(start_gateway, tmp_path: Path, config: str = CHAT, *flags: str) -> Gateway:
    """A gateway with a token secret, an API key and the given config file."""
    path = tmp_path / "pingwheel.toml"
    path.write_text(config)
    return start_gateway("--config", str(path), *flags, env=PUSH_ENV)


def connect(gw: Gateway, user: str = "alice", **params):
    query = urlencode(list(params.items()), doseq=True, quote_via=quote)
    url = gw.ws_url + ("?" + query if query else "")
    return open_ws(url, additional_headers=bearer(token(user)))


def subscribe(ws, channel: str, since=None, id=1) -> dict:
    request = {"op": "subscribe", "channel": channel, "id": id}
    if since is not None:
        request["since"] = {"seq": since[0], "epoch": since[1]}
    return request_reply(ws, request)


def position_of(reply: dict) -> tuple[int, str]:
    return reply["seq"], reply["epoch"]


def check_delivery(message: dict, channel: str, seq: int, epoch: str) -> None:
    assert list(message) == ["channel", "seq", "epoch", "data"], message
    assert (message["channel"], message["seq"], message["epoch"]) == (channel, seq, epoch)


class Publisher(threading.Thread):
    """Publishes data 0, 1, 2, … to ``channel`` until stopped or ``limit`` is reached;
    records the position of each."""

    def __init__(self, gw: Gateway, channel: str, first: int, limit: int):
        super().__init__(daemon=True)
        self.gw, self.channel, self.next, self.limit = gw, channel, first, limit
        self.positions: dict[int, tuple[int, str]] = {}
        self.stop = threading.Event()
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set() and self.next < self.limit:
                reply = publish(self.gw, {"channel": self.channel, "data": self.next})
                self.positions[self.next] = (reply["seq"], reply["epoch"])
                self.next += 1
        except Exception as err:  # reported by the test
            self.error = err


def test_publish_replies_and_subscribe_replies_carry_positions(start_gateway, tmp_path):
    gw = start_history(start_gateway, tmp_path)
    with connect(gw) as ws:
        reply = subscribe(ws, "chat:1")
        assert list(reply) == ["op", "channel", "id", "seq", "epoch"]
        seq, epoch = position_of(reply)
        assert seq == 0 and len(epoch) == 8 and epoch.isalnum()
        first = publish(gw, {"channel": "chat:1", "data": {"n": 1}})
        assert first == {"ok": True, "seq": 1, "epoch": epoch, "subscribers": 1}
        assert ws.recv(timeout=RECV_TIMEOUT) == (
            f'{{"channel":"chat:1","seq":1,"epoch":"{epoch}","data":{{"n":1}}}}'
        )
        batch = publish(
            gw,
            {"messages": [{"channel": "chat:1", "data": 2}, {"channel": "chat:2", "data": 3},
                          {"user": "alice", "data": 4}]},
            path="/v1/batch",
        )
        results = batch["results"]
        assert [r["seq"] for r in results] == [2, 1, 1], "seq counts per stream"
        assert results[0]["epoch"] == epoch and results[1]["epoch"] != epoch
        assert (results[2]["user"], results[2]["subscribers"]) == ("alice", 1)
        check_delivery(recv_json(ws), "chat:1", 2, epoch)
        user = recv_json(ws)
        check_delivery(user, "#user", 1, results[2]["epoch"])


def test_missed_50_are_recovered_while_publishing_continues(start_gateway, tmp_path):
    gw = start_history(start_gateway, tmp_path)
    channel = "chat:busy"
    with connect(gw) as ws:
        epoch = subscribe(ws, channel)["epoch"]
        for i in range(10):
            publish(gw, {"channel": channel, "data": i})
        got = [recv_json(ws) for _ in range(10)]
        assert [m["data"] for m in got] == list(range(10))
        last = (got[-1]["seq"], got[-1]["epoch"])
    # Away: 50 messages published.
    for i in range(10, 60):
        publish(gw, {"channel": channel, "data": i})
    # And a publisher that keeps publishing during the recovery.
    publisher = Publisher(gw, channel, 60, 600)
    publisher.start()
    try:
        with connect(gw) as ws:
            wait_for(lambda: publisher.next > 80, message="the publisher running")
            reply = subscribe(ws, channel, since=last)
            assert reply["recovered"] is True, reply
            assert reply["epoch"] == epoch and reply["seq"] >= 60
            received = []
            while len(received) < 590:
                message = recv_json(ws)
                check_delivery(message, channel, message["seq"], epoch)
                received.append(message)
                if len(received) == 50:
                    assert received[-1]["seq"] == 60, "exactly the 50 missed ones first"
            publisher.join(30)
    finally:
        publisher.stop.set()
    assert publisher.error is None, publisher.error
    assert [m["data"] for m in received] == list(range(10, 600)), "no gap, no duplicate"
    assert [m["seq"] for m in received] == list(range(11, 601))
    metrics = gw.metrics()
    assert metrics.metric("pingwheel_recoveries_total", result="recovered") == 1
    assert metrics.metric("pingwheel_recovered_messages_total") >= 50


def test_recovered_false_for_a_wrong_epoch_and_when_ahead(start_gateway, tmp_path):
    gw = start_history(start_gateway, tmp_path)
    reply = publish(gw, {"channel": "chat:1", "data": 1})
    with connect(gw) as ws:
        wrong = subscribe(ws, "chat:1", since=(0, "AAAAAAAA"))
        assert wrong == {"op": "subscribed", "channel": "chat:1", "id": 1, "seq": 1,
                         "epoch": reply["epoch"], "recovered": False}
        ahead = subscribe(ws, "chat:1", since=(5, reply["epoch"]), id=2)
        assert ahead["recovered"] is False
        publish(gw, {"channel": "chat:1", "data": 2})
        # Nothing partial came: the next message is the live one.
        check_delivery(recv_json(ws), "chat:1", 2, reply["epoch"])
    assert gw.metric("pingwheel_recoveries_total", result="not_recovered") == 2


def test_recovered_false_when_history_expired(start_gateway, tmp_path):
    config = "[[namespace]]\nprefix = \"chat:\"\nhistory_size = 100\nhistory_ttl = \"1s\"\n"
    gw = start_history(start_gateway, tmp_path, config)
    first = publish(gw, {"channel": "chat:1", "data": 1})
    publish(gw, {"channel": "chat:1", "data": 2})
    with connect(gw) as ws:
        assert subscribe(ws, "chat:1", since=(0, first["epoch"]))["recovered"] is True
        assert [recv_json(ws)["data"] for _ in range(2)] == [1, 2]
    time.sleep(2.5)
    with connect(gw) as ws:
        reply = subscribe(ws, "chat:1", since=(0, first["epoch"]))
        assert (reply["recovered"], reply["seq"], reply["epoch"]) == (False, 2, first["epoch"]), (
            "expiry loses the messages, not the position")
        ws.send(json.dumps({"op": "ping"}))
        assert recv_json(ws) == {"op": "pong"}, "and nothing was delivered"


def test_recovered_false_when_history_was_evicted(start_gateway, tmp_path):
    config = "[[namespace]]\nprefix = \"\"\nhistory_size = 1000\nhistory_ttl = \"10m\"\n"
    gw = start_history(start_gateway, tmp_path, config, "--history-max-bytes", "1MiB")
    with connect(gw) as watcher:
        # Subscribed, so the channel's position is kept while its messages are evicted.
        epoch = subscribe(watcher, "old")["epoch"]
        publish(gw, {"channel": "old", "data": "first"})
        check_delivery(recv_json(watcher), "old", 1, epoch)
        pad = "x" * 4000
        batch = [{"channel": f"filler:{i % 10}", "data": pad} for i in range(200)]
        for _ in range(8):  # 6.4 MB through a 1 MiB bound
            publish(gw, {"messages": batch}, path="/v1/batch")
        assert gw.metric("pingwheel_history_bytes") <= 1 << 20
        with connect(gw) as ws:
            reply = subscribe(ws, "old", since=(0, epoch))
            assert reply["recovered"] is False
            assert reply["epoch"] != epoch and reply["seq"] == 0, "a new epoch at 0"
        # The connected subscriber learns it from the next delivery.
        publish(gw, {"channel": "old", "data": "second"})
        check_delivery(recv_json(watcher), "old", 1, reply["epoch"])


def test_recovered_false_over_recovery_max(start_gateway, tmp_path):
    gw = start_history(start_gateway, tmp_path, CHAT, "--recovery-max", "5")
    first = publish(gw, {"channel": "chat:1", "data": 0})
    for i in range(1, 10):
        publish(gw, {"channel": "chat:1", "data": i})
    with connect(gw) as ws:
        # 9 missing, 5 allowed: nothing partial, the client reloads.
        assert subscribe(ws, "chat:1", since=(1, first["epoch"]))["recovered"] is False
        ws.send(json.dumps({"op": "ping"}))
        assert recv_json(ws) == {"op": "pong"}
    with connect(gw) as ws:
        reply = subscribe(ws, "chat:1", since=(5, first["epoch"]), id=2)
        assert reply["recovered"] is True
        assert [recv_json(ws)["data"] for _ in range(5)] == [5, 6, 7, 8, 9]


def test_a_restart_changes_the_epoch(start_gateway, tmp_path):
    gw = start_history(start_gateway, tmp_path)
    before = publish(gw, {"channel": "chat:1", "data": 1})
    assert gw.terminate() == 0
    gw = start_history(start_gateway, tmp_path)
    with connect(gw) as ws:
        reply = subscribe(ws, "chat:1", since=(1, before["epoch"]))
        assert reply["recovered"] is False
        assert reply["seq"] == 0 and reply["epoch"] != before["epoch"]


def test_the_user_stream_recovers_after_a_reconnect(start_gateway, tmp_path):
    gw = start_history(start_gateway, tmp_path)  # #user keeps 16 for 5 minutes by default
    # A client with no position yet asks for it at connect.
    with connect(gw, "bob", since="#user:0:") as ws:
        reply = recv_json(ws)
        assert list(reply) == ["op", "channel", "seq", "epoch", "recovered"]
        assert (reply["op"], reply["channel"], reply["recovered"]) == ("subscribed", "#user", False)
        epoch = reply["epoch"]
        for i in range(3):
            publish(gw, {"user": "bob", "data": i})
        got = [recv_json(ws) for _ in range(3)]
        for n, message in enumerate(got, 1):
            check_delivery(message, "#user", n, epoch)
    for i in range(3, 8):
        publish(gw, {"user": "bob", "data": i})
    with connect(gw, "bob", since=f"#user:3:{epoch}") as ws:
        reply = recv_json(ws)
        assert reply == {"op": "subscribed", "channel": "#user", "seq": 8, "epoch": epoch,
                         "recovered": True}
        assert [recv_json(ws)["data"] for _ in range(5)] == [3, 4, 5, 6, 7]
        # The op form answers the user stream's position, and recovers in place.
        assert subscribe(ws, "#user")["seq"] == 8
        again = subscribe(ws, "#user", since=(2, epoch), id=2)
        assert again["recovered"] is True
        ws.send(json.dumps({"op": "ping"}))
        assert recv_json(ws) == {"op": "pong"}, "nothing sent twice on one connection"


def test_url_form_recovers_channels_before_any_delivery(start_gateway, tmp_path):
    gw = start_history(start_gateway, tmp_path)
    first = publish(gw, {"channel": "chat:a:b", "data": 0})
    for i in range(1, 4):
        publish(gw, {"channel": "chat:a:b", "data": i})
    publish(gw, {"channel": "chat:plain", "data": "old"})
    since = f"chat:a:b:1:{first['epoch']}"  # the channel name has colons itself
    with connect(gw, since=since, channel="chat:plain") as ws:
        reply = recv_json(ws)
        assert reply == {"op": "subscribed", "channel": "chat:a:b", "seq": 4,
                         "epoch": first["epoch"], "recovered": True}
        assert [recv_json(ws)["data"] for _ in range(3)] == [1, 2, 3]
        # A URL channel without since is subscribed silently, as before.
        live = publish(gw, {"channel": "chat:plain", "data": "new"})
        check_delivery(recv_json(ws), "chat:plain", live["seq"], live["epoch"])


def test_bad_url_since_is_refused_at_the_upgrade(start_gateway, tmp_path):
    from test_push import refusal, refusal_line

    gw = start_history(start_gateway, tmp_path)
    for value, message in [
        ("chat:1", "since must be CHANNEL:SEQ:EPOCH"),
        ("chat:1:x:EPOCH123", "the seq in since must be a decimal number"),
    ]:
        url = gw.ws_url + "?" + urlencode({"since": value, "token": token("alice")})
        response = refusal(url)
        assert response.status_code == 400
        assert refusal_line(response) == f"{message}: {value}"
    url = gw.ws_url + "?" + urlencode({"since": "admin:0:", "token": token("alice", ["chat:*"])})
    assert refusal(url).status_code == 403


def test_in_place_resubscribe_never_repeats_a_seq(start_gateway, tmp_path):
    gw = start_history(start_gateway, tmp_path)
    with connect(gw) as ws:
        epoch = subscribe(ws, "chat:1")["epoch"]
        for i in range(5):
            publish(gw, {"channel": "chat:1", "data": i})
        assert [recv_json(ws)["seq"] for _ in range(5)] == [1, 2, 3, 4, 5]
        # Asking again from 2: the connection already had up to 5.
        reply = subscribe(ws, "chat:1", since=(2, epoch), id=2)
        assert (reply["recovered"], reply["seq"]) == (True, 5)
        publish(gw, {"channel": "chat:1", "data": 5})
        check_delivery(recv_json(ws), "chat:1", 6, epoch)


def test_history_api(start_gateway, tmp_path):
    gw = start_history(start_gateway, tmp_path)
    first = publish(gw, {"channel": "chat:1", "data": {"n": 0}})
    epoch = first["epoch"]
    for i in range(1, 5):
        publish(gw, {"channel": "chat:1", "data": {"n": i}})

    def history(query: str, key: str = API_KEY):
        return gw.get("/v1/history?" + query, headers=bearer(key))

    response = history("channel=chat:1")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert (body["channel"], body["seq"], body["epoch"]) == ("chat:1", 5, epoch)
    assert [p["data"]["n"] for p in body["publications"]] == [0, 1, 2, 3, 4]
    assert body["publications"][0] == {"channel": "chat:1", "seq": 1, "epoch": epoch,
                                       "data": {"n": 0}}
    page = history(f"channel=chat%3A1&since=2&epoch={epoch}&limit=2").json()
    assert [p["seq"] for p in page["publications"]] == [3, 4]
    unknown = history("channel=chat:nobody").json()
    assert (unknown["seq"], unknown["publications"]) == (0, [])
    assert len(unknown["epoch"]) == 8
    publish(gw, {"user": "carol", "data": "hi"})
    user = history("user=carol").json()
    assert (user["user"], user["seq"], user["publications"][0]["channel"]) == ("carol", 1, "#user")
    for query, message in [
        ("", "exactly one of `channel` or `user` is required"),
        ("channel=chat:1&since=3", "`since` needs `epoch` (the epoch its seq counts in)"),
        ("channel=chat:1&limit=0", "`limit` must be 1 to 1000, not 0"),
        ("channel=a%20b", None),
    ]:
        response = history(query)
        assert response.status_code == 400, query
        assert response.json()["error"] == "bad_request"
        if message:
            assert response.json()["message"] == message
    assert history("channel=chat:1", key="wrong").status_code == 401
