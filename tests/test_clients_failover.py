"""The client libraries fail over between gateways on the memory engine.

Without a shared engine, two gateways are two separate histories: each channel (and each
user stream) has its own epoch on each. What a client must do then is what it does for
any loss it cannot repair: say so. These tests check it end to end, while publishes
continue:

* two gateway processes A and B (each with history), both published to; the client
  subscribes a channel and its user stream through A; A is SIGKILLed (no close frame);
  the client moves to B (the next of its URLs), resubscribes with its positions, is told
  ``recovered: false`` for both (B's epochs), and from B's position on gets every one of
  B's messages exactly once, in order; before, exactly A's, in order (the JavaScript
  client in Chromium and in Node on ``ws``, and the Python client);
* a gateway restart on the same address: a new epoch, reported as ``recovered: false``,
  then the new epoch's messages from seq 1 (the JavaScript client; the Python client's
  case is in test_clients_recovery.py);
* the storm: 19,000 harness clients come back at once, each 20 messages behind, and
  every one recovers exactly those, in order, while publishes continue.

Failover *without* loss needs nodes sharing positions and history: the Redis engine's
cases are in tests/test_clients_failover_redis.py.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from clients_support import API_KEY, ENV, SECRET, token
from test_clients import NO_PROXY, until
from test_clients_recovery import Publisher, js_client, start_with_history
from test_loadtest import assert_passed, loadtest_bin, run  # noqa: F401 (fixture)

from pingwheel_client import PingwheelClient


def two_gateways(start_gateway, tmp_path):
    return start_with_history(start_gateway, tmp_path), start_with_history(start_gateway, tmp_path)


def check_failover(deliveries: dict, recovered: dict, on_a: Publisher, on_b: Publisher) -> None:
    """``deliveries``: channel → [(epoch, seq)] as the handler got them; ``recovered``:
    channel → [(recovered, seq, epoch, reason)] as reported."""
    for channel, published_a, published_b in (("scores", on_a.channel_seqs, on_b.channel_seqs),
                                              ("#user", on_a.user_seqs, on_b.user_seqs)):
        got = deliveries[channel]
        assert len(recovered[channel]) == 1, (channel, recovered)
        ok, top, epoch_b, reason = recovered[channel][0]
        assert (ok, reason) == (False, "not_recovered"), (channel, recovered)
        epoch_a = got[0][0]
        assert epoch_a != epoch_b, "two memory engines: two epochs"
        from_a = [seq for epoch, seq in got if epoch == epoch_a]
        from_b = [seq for epoch, seq in got if epoch == epoch_b]
        assert got == [(epoch_a, s) for s in from_a] + [(epoch_b, s) for s in from_b], (
            f"{channel}: A's messages, then B's, nothing else")
        assert from_a == published_a[:len(from_a)], f"{channel}: A's in order, once, no gap"
        assert from_a, f"{channel}: something came through A"
        assert from_b == [s for s in published_b if s > top], (
            f"{channel}: every one of B's after the reported position, once, in order")
        assert from_b, f"{channel}: something came through B"


def publish_both(a, b) -> tuple[Publisher, Publisher]:
    return (Publisher(a, user_every=5).start(), Publisher(b, user_every=5).start())


@pytest.mark.parametrize("kind", ["browser", "node"])
def test_js_client_fails_over_to_a_second_gateway_and_reports_what_it_cannot_recover(
        start_gateway, tmp_path, kind):
    a, b = two_gateways(start_gateway, tmp_path)
    with js_client(kind, [a.ws_url, b.ws_url], tmp_path, "chromium-client-failover.log",
                   channels=["scores"], user=True, quickSpread=500) as client:
        client.wait_for(lambda c: {r["channel"] for r in c.reports("subscribed")}
                        >= {"scores", "#user"}, "subscribed through A")
        on_a, on_b = publish_both(a, b)
        count = lambda c, channel: sum(d["channel"] == channel for d in c.reports("delivery"))
        client.wait_for(lambda c: count(c, "scores") >= 100 and count(c, "#user") >= 10,
                        "deliveries through A")
        on_a.stop()
        a.kill()  # SIGKILL: the connection ends without a close frame
        client.wait_for(lambda c: [d["url"] for s, d in c.states() if s == "connected"]
                        == [a.ws_url, b.ws_url], "the reconnect to B")
        client.wait_for(lambda c: len(c.reports("recovered")) == 2, "the answers from B")
        mark = len(on_b.channel_seqs)
        client.wait_for(lambda c: len(on_b.channel_seqs) >= mark + 100, "100 more on B")
        on_b.stop()
        last = lambda c, channel, seqs: [d["seq"] for d in c.reports("delivery")
                                         if d["channel"] == channel][-1:] == seqs[-1:]
        client.wait_for(lambda c: last(c, "scores", on_b.channel_seqs)
                        and last(c, "#user", on_b.user_seqs), "B's last seqs")
        deliveries = {ch: [(d["epoch"], d["seq"]) for d in client.reports("delivery")
                           if d["channel"] == ch] for ch in ("scores", "#user")}
        recovered = {ch: [(r["recovered"], r["seq"], r["epoch"], r.get("reason"))
                          for r in client.reports("recovered") if r["channel"] == ch]
                     for ch in ("scores", "#user")}
        lost = [d for s, d in client.states() if s == "disconnected"]
    assert [(d["code"], d["opened"]) for d in lost] == [(1006, True)], lost
    check_failover(deliveries, recovered, on_a, on_b)


def test_python_client_fails_over_to_a_second_gateway_and_reports_what_it_cannot_recover(
        start_gateway, tmp_path):
    a, b = two_gateways(start_gateway, tmp_path)

    async def scenario():
        deliveries = {"scores": [], "#user": []}
        recovered = {"scores": [], "#user": []}
        connected, lost = [], []
        client = PingwheelClient(urls=[a.ws_url, b.ws_url], get_token=lambda: token(),
                                 connect_kwargs=NO_PROXY, quick_spread=0.5)
        client.on("state", lambda s, d: s == "connected" and connected.append(d["url"]))
        client.on("state", lambda s, d: s == "disconnected" and lost.append(d))
        handler = lambda data, info: deliveries[info.channel].append((info.epoch, info.seq))
        sub = client.subscribe("scores", handler)
        mine = client.on_user(handler)
        for name, s in (("scores", sub), ("#user", mine)):
            s.on("recovered", lambda e, name=name: recovered[name].append(
                (e.recovered, e.seq, e.epoch, e.reason)))
        client.start()
        await until(lambda: sub.state == "subscribed" and mine.state == "subscribed",
                    what="subscribed through A")
        on_a, on_b = publish_both(a, b)
        await until(lambda: len(deliveries["scores"]) >= 100 and len(deliveries["#user"]) >= 10,
                    15, "deliveries through A")
        await asyncio.to_thread(on_a.stop)
        await asyncio.to_thread(a.kill)
        await until(lambda: connected == [a.ws_url, b.ws_url], 15, "the reconnect to B")
        await until(lambda: recovered["scores"] and recovered["#user"], 15, "the answers from B")
        mark = len(on_b.channel_seqs)
        await until(lambda: len(on_b.channel_seqs) >= mark + 100, 15, "100 more through B")
        await asyncio.to_thread(on_b.stop)
        await until(lambda: [s for _, s in deliveries["scores"][-1:]] == on_b.channel_seqs[-1:]
                    and [s for _, s in deliveries["#user"][-1:]] == on_b.user_seqs[-1:],
                    10, "B's last seqs")
        await client.close()
        return deliveries, recovered, lost, on_a, on_b

    deliveries, recovered, lost, on_a, on_b = asyncio.run(scenario())
    assert [(d["code"], d["opened"]) for d in lost] == [(1006, True)], lost
    check_failover(deliveries, recovered, on_a, on_b)


@pytest.mark.parametrize("kind", ["browser", "node"])
def test_js_client_reports_a_restart_as_not_recovered(start_gateway, tmp_path, kind):
    gw = start_with_history(start_gateway, tmp_path)
    publish = lambda g, n: g.post("/v1/publish", json={"channel": "scores", "data": n},
                                  headers={"Authorization": f"Bearer {API_KEY}"}).json()
    with js_client(kind, [gw.ws_url], tmp_path, "chromium-client-restart.log",
                   channels=["scores"], quickSpread=500) as client:
        client.wait_for(lambda c: c.reports("subscribed"), "subscribed")
        for n in range(3):
            publish(gw, n)
        client.wait_for(lambda c: len(c.reports("delivery")) == 3, "three deliveries")
        assert gw.terminate() == 0  # a drain (1001), then the process exits
        again = start_gateway("--listen", gw.listen, "--config", str(tmp_path / "history.toml"),
                              env=ENV)
        client.wait_for(lambda c: c.reports("recovered"), "the answer to the resubscribe")
        publish(again, 9)
        client.wait_for(lambda c: len(c.reports("delivery")) == 4, "the delivery after the restart")
        got = [(d["epoch"], d["seq"], d["data"]) for d in client.reports("delivery")]
        recovered = client.reports("recovered")
        lost = [d for s, d in client.states() if s == "disconnected"]
    assert [(r["recovered"], r["reason"]) for r in recovered] == [(False, "not_recovered")]
    old, new = got[0][0], recovered[0]["epoch"]
    assert old != new, "a restart starts a new epoch"
    assert got == [(old, 1, 0), (old, 2, 1), (old, 3, 2), (new, 1, 9)]
    assert lost[0]["code"] == 1001, lost


#: The storm: harness clients, channels, and how far back each recovers.
STORM_CLIENTS = 19_000
STORM_CHANNELS = 100
STORM_BACK = 20


def test_storm_of_19000_harness_clients_recovers_from_the_gateway_history(
        start_gateway, loadtest_bin, tmp_path):  # noqa: F811
    # Every client comes back at once (URL since) with a position STORM_BACK behind (what
    # a fleet holds after its path to the gateway came back), while publishes continue.
    # After a *restart* this needs history that outlives the process: the Redis engine
    # (tests/pending_clients_storm_redis.py, which does not pass yet).
    config = tmp_path / "lt.toml"
    config.write_text('[[namespace]]\nprefix = "lt-"\nhistory_size = 100\nhistory_ttl = "10m"\n')
    gw = start_gateway("--config", str(config), "--token-secret", SECRET, "--api-key", API_KEY)
    started = time.monotonic()
    code, report, output = run(
        loadtest_bin, tmp_path, "push", gw.ws_url,
        "-c", STORM_CLIENTS, "--channels", STORM_CHANNELS, "--ramp-rate", "1000000/s",
        "-d", "1s", "--settle", "500ms", "--publish-url", gw.admin_url,
        "--token-secret", SECRET, "--api-key", API_KEY, "--publish-rate", "50/s",
        "--recover-back", STORM_BACK, "--subscribe", "url", "--max-lost", 0,
    )
    report = assert_passed(code, report, output)
    recovery = report["push"]["recovery"]
    print(f"storm: {STORM_CLIENTS} clients, recovery {json.dumps(recovery)} "
          f"in {time.monotonic() - started:.1f}s")
    assert recovery == {**recovery, "back": STORM_BACK, "recovered": STORM_CLIENTS,
                        "not_recovered": 0, "complete": STORM_CLIENTS, "gaps": 0}, recovery
    push = report["push"]
    assert push["missing"] == 0 and push["reordered"] == 0 and push["duplicates"] == 0, push
