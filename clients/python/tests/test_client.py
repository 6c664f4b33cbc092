"""Unit tests of pingwheel_client against a fake network and a fake clock."""

from __future__ import annotations

import asyncio
import random

import pytest

from fakes import FakeClock, FakeNetwork, run, settle
from pingwheel_client import PingwheelClient, Reconnect, Recovered, Tunables

T = Tunables()


class Harness:
    """A client on fakes; tokens are "t1", "t2", ...; states and errors recorded."""

    def __init__(self, random_value=0.5, **kwargs):
        self.clock = FakeClock()
        self.net = FakeNetwork()
        self.token_calls = []
        self.states = []
        self.errors = []
        self.r = random_value

        async def get_token(context):
            self.token_calls.append(context)
            return f"t{len(self.token_calls)}"

        options = {"get_token": get_token, **kwargs}
        self.client = PingwheelClient(
            urls=kwargs.pop("urls", ["ws://a/", "ws://b/"]), connect=self.net.connect,
            clock=self.clock, random=lambda: self.r() if callable(self.r) else self.r,
            **{k: v for k, v in options.items() if k != "urls"})
        self.client.on("state", lambda s, d: self.states.append((s, d)))
        self.client.on("error", self.errors.append)

    async def start(self):
        self.client.start()
        await settle()
        return self

    def delays(self):
        return [d["delay"] for s, d in self.states if s == "disconnected"]

    async def next_connection(self):
        """Advances time until one more connection attempt happened."""
        count = len(self.net.attempts)
        for _ in range(100):
            if len(self.net.attempts) > count or self.client.state == "closed":
                break
            pending = self.clock.pending()
            if not pending:
                await settle()
                continue
            await self.clock.advance(pending[0])
        await settle()

    def answer(self, positions=None):
        """Answers the last connection's subscribes with positions[channel] = (top, epoch)."""
        ws = self.net.last
        for m in ws.ops("subscribe"):
            seq, epoch = (positions or {}).get(m["channel"], (0, "E1"))
            reply = {"op": "subscribed", "channel": m["channel"], "id": m["id"], "seq": seq,
                     "epoch": epoch}
            if "since" in m:
                reply["recovered"] = True
            ws.receive(reply)
        return ws


def delivery(channel, seq, data, epoch="E1"):
    return {"channel": channel, "seq": seq, "epoch": epoch, "data": data}


@run
async def test_connects_with_the_token_in_the_subprotocols_and_rotates_urls():
    h = await Harness().start()
    assert h.client.state == "connected"
    url, protocols, kwargs = h.net.attempts[0]
    assert (url, protocols) == ("ws://a/", ["pingwheel.v1", "bearer.t1"])
    assert kwargs["ping_interval"] is None, "the application ping replaces websockets' own"
    for _ in range(3):
        h.net.last.drop()
        await h.next_connection()
    assert [a[0] for a in h.net.attempts] == ["ws://a/", "ws://b/", "ws://a/", "ws://b/"]
    assert [a[1][1] for a in h.net.attempts] == ["bearer.t1", "bearer.t2", "bearer.t3", "bearer.t4"]
    assert [(c.failed_opens, c.refused) for c in h.token_calls] == [(0, False)] * 4
    await h.client.close()


@run
async def test_get_token_may_be_sync_and_take_no_argument():
    clock, net = FakeClock(), FakeNetwork()
    client = PingwheelClient(url="ws://a/", get_token=lambda: "plain", connect=net.connect,
                             clock=clock)
    client.start()
    await settle()
    assert net.attempts[0][1] == ["pingwheel.v1", "bearer.plain"]
    await client.close()
    dev = PingwheelClient(url="ws://a/", connect=net.connect, clock=clock)
    dev.start()
    await settle()
    assert net.attempts[1][1] == ["pingwheel.v1"], "no get_token: dev mode"
    await dev.close()


@run
async def test_backoff_full_jitter_under_a_doubling_bounded_ceiling():
    h = Harness(random_value=0.999)
    h.net.default = "unreachable"
    await h.start()
    for _ in range(8):
        await h.next_connection()
    ceilings = [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert [round(d, 6) for d in h.delays()] == [round(c * 0.999, 6) for c in ceilings]
    once = iter([0.0])
    h.r = lambda: next(once, 0.5)
    await h.next_connection()
    assert h.delays()[-2:] == [0.0, 15.0], "full jitter: zero is a possible delay"
    await h.client.close()


def test_delays_stay_within_the_ceiling_for_any_random_value():
    rng = random.Random(7)
    policy = Reconnect(Tunables(), rng.random)
    for attempt in range(200):
        code = rng.choice([1006, 1000, 1001, 1011, 1013, 1012])
        decision = policy.after(code, opened=rng.random() < 0.5, uptime=rng.random() * 20)
        assert decision.stop is None
        assert 0 <= decision.delay <= max(T.max_delay, T.quick_spread), (attempt, decision)


@run
async def test_backoff_resets_after_a_stable_connection_not_a_short_one():
    h = Harness(random_value=0.999)
    h.net.plan.extend(["unreachable"] * 3)
    await h.start()
    for _ in range(3):
        await h.next_connection()
    assert h.client.state == "connected"
    await h.clock.advance(T.stable_after - 1)
    h.net.last.drop()
    await settle()
    assert round(h.delays()[-1], 6) == round(4 * 0.999, 6), "short connection: still growing"
    await h.next_connection()
    await h.clock.advance(T.stable_after)
    h.net.last.drop()
    await settle()
    assert round(h.delays()[-1], 6) == round(0.5 * 0.999, 6), "stable connection: reset"
    await h.client.close()


@pytest.mark.parametrize("code", [1001, 1011, 1012])
@pytest.mark.parametrize("r", [0.0, 0.3, 0.999])
def test_going_away_and_keepalive_timeout_come_back_quickly_spread(code, r):
    @run
    async def scenario():
        h = await Harness(random_value=r).start()
        await h.clock.advance(T.stable_after)
        h.net.last.server_close(code, "going away")
        await settle()
        assert h.delays()[-1] == pytest.approx(r * T.quick_spread)
        await h.clock.advance(T.quick_spread)
        assert [a[0] for a in h.net.attempts] == ["ws://a/", "ws://b/"]
        await h.client.close()

    scenario()


@run
async def test_slow_consumer_backs_off_at_least_two_seconds_and_grows():
    h = await Harness(random_value=0.0).start()
    await h.clock.advance(2 * T.stable_after)
    h.net.last.server_close(1013, "slow consumer")
    await settle()
    assert h.delays()[-1] == 2.0
    await h.clock.advance(2.0)
    await h.clock.advance(2 * T.stable_after)
    h.net.last.server_close(1013)
    await settle()
    assert h.delays()[-1] == 4.0, "a stable connection does not reset a 1013 backoff"
    await h.client.close()


@pytest.mark.parametrize("code,reason", [(1008, "policy"), (1002, "protocol"),
                                         (1007, "protocol"), (1009, "protocol")])
def test_fatal_close_codes_stop_and_report(code, reason):
    @run
    async def scenario():
        h = await Harness().start()
        h.net.last.server_close(code, "because")
        await settle()
        await h.clock.advance(10 * T.max_delay)
        assert len(h.net.attempts) == 1
        assert h.client.state == "closed"
        assert h.states[-1] == ("closed", {"reason": reason, "code": code})
        assert h.errors == [{"type": reason, "reason": reason, "code": code}]

    scenario()


@run
async def test_a_401_refreshes_the_token_once_at_once_and_a_second_stops():
    h = Harness()
    h.net.plan.extend([("refuse", 401), ("refuse", 401)])
    await h.start()
    await h.clock.advance(0)
    assert len(h.net.attempts) == 2, "retried at once"
    assert (h.token_calls[1].failed_opens, h.token_calls[1].refused) == (1, True)
    assert h.net.attempts[1][1][1] == "bearer.t2"
    await h.clock.advance(10 * T.max_delay)
    assert len(h.net.attempts) == 2
    assert h.client.state == "closed"
    assert h.states[-1] == ("closed", {"reason": "refused", "status": 401,
                                       "message": "refused with 401"})


@run
async def test_an_expired_token_refreshed_connects():
    h = Harness()
    h.net.plan.append(("refuse", 401))
    await h.start()
    await h.clock.advance(0)
    assert h.client.state == "connected"
    h.net.last.drop()
    await h.next_connection()
    assert (h.token_calls[-1].failed_opens, h.token_calls[-1].refused) == (0, False)
    await h.client.close()


@pytest.mark.parametrize("status,retried", [(403, False), (400, False), (503, True), (429, True)])
def test_refusal_status_decides(status, retried):
    @run
    async def scenario():
        h = Harness()
        h.net.plan.append(("refuse", status))
        await h.start()
        await h.clock.advance(T.max_delay)
        assert (len(h.net.attempts) == 2) is retried
        assert (h.client.state == "closed") is not retried
        await h.client.close()

    scenario()


@run
async def test_get_token_raising_is_retried_and_none_stops():
    answers = [RuntimeError("backend down"), "tok", None]
    calls = []

    def get_token(context):
        calls.append(context)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    h = Harness(get_token=get_token)
    await h.start()
    assert h.errors[0]["type"] == "token"
    assert h.net.attempts == []
    await h.next_connection()
    assert h.client.state == "connected"
    h.net.last.drop()
    await h.next_connection()
    assert h.client.state == "closed"
    assert h.states[-1] == ("closed", {"reason": "no_token"})


@run
async def test_a_connect_that_hangs_is_given_up_after_connect_timeout():
    h = Harness()
    h.net.plan.append("hang")
    await h.start()
    await h.clock.advance(T.connect_timeout)
    assert h.states[-1][0] == "disconnected"
    assert h.states[-1][1]["reason"] == "connect timeout"
    await h.next_connection()
    assert h.client.state == "connected"
    await h.client.close()


@run
async def test_deliveries_in_order_once_each_recovered_ones_too():
    h = await Harness().start()
    got, recovered = [], []
    sub = h.client.subscribe("scores", lambda d, info: got.append((d, info)))
    sub.on("recovered", recovered.append)
    await settle()
    ws = h.answer({"scores": (40, "E1")})
    for seq in (41, 42, 42, 41, 43):
        ws.receive(delivery("scores", seq, f"m{seq}"))
    await settle()
    ws.drop()
    await h.next_connection()
    ws = h.net.last
    assert ws.ops("subscribe") == [{"op": "subscribe", "channel": "scores", "id": 2,
                                    "since": {"seq": 43, "epoch": "E1"}}]
    ws.receive({"op": "subscribed", "channel": "scores", "id": 2, "seq": 46, "epoch": "E1",
                "recovered": True})
    for seq in (43, 44, 45, 46, 45, 47):
        ws.receive(delivery("scores", seq, f"m{seq}"))
    await settle()
    assert [d for d, _ in got] == ["m41", "m42", "m43", "m44", "m45", "m46", "m47"]
    assert (got[0][1].channel, got[0][1].seq, got[0][1].epoch) == ("scores", 41, "E1")
    assert recovered == [Recovered(True, 46, "E1")]
    assert sub.position == {"seq": 47, "epoch": "E1"}
    await h.client.close()


@run
async def test_async_handlers_are_awaited_in_order():
    h = await Harness().start()
    got = []

    async def handler(data, info):
        await asyncio.sleep(0.001 * (5 - info.seq))  # real time: later ones are quicker
        got.append(info.seq)

    h.client.subscribe("s", handler)
    await settle()
    ws = h.answer()
    for seq in range(1, 5):
        ws.receive(delivery("s", seq, seq))
    for _ in range(50):
        if len(got) == 4:
            break
        await asyncio.sleep(0.005)
    assert got == [1, 2, 3, 4]
    await h.client.close()


@run
async def test_recovered_false_is_an_event_and_the_position_jumps_to_the_top():
    h = Harness()
    got, recovered = [], []
    sub = h.client.subscribe("scores", lambda d, i: got.append(d),
                             since={"seq": 5, "epoch": "OLD"})
    sub.on("recovered", recovered.append)
    await h.start()
    ws = h.net.last
    assert ws.ops("subscribe")[0]["since"] == {"seq": 5, "epoch": "OLD"}
    ws.receive({"op": "subscribed", "channel": "scores", "id": 1, "seq": 9, "epoch": "NEW",
                "recovered": False})
    ws.receive(delivery("scores", 10, "m10", "NEW"))
    await settle()
    assert recovered == [Recovered(False, 9, "NEW", "not_recovered")]
    assert got == ["m10"]
    await h.client.close()


@run
async def test_a_recovery_closed_as_a_slow_consumer_before_its_reply_is_given_up():
    h = Harness()
    got, recovered = [], []
    sub = h.client.subscribe("scores", lambda d, i: got.append(i.seq),
                             since={"seq": 10, "epoch": "E1"})
    sub.on("recovered", recovered.append)
    await h.start()
    ws = h.net.last
    assert ws.ops("subscribe")[0]["since"] == {"seq": 10, "epoch": "E1"}
    ws.server_close(1013, "slow consumer")  # the backlog did not fit the gateway's queue
    await h.next_connection()
    ws = h.net.last
    again = ws.ops("subscribe")[0]
    assert "since" not in again, "the next subscribe asks for no recovery"
    ws.receive({"op": "subscribed", "channel": "scores", "id": again["id"], "seq": 900,
                "epoch": "E1"})
    ws.receive(delivery("scores", 901, 0))
    await settle()
    assert recovered == [Recovered(False, 900, "E1", "recovery_failed")]
    assert got == [901]
    ws.server_close(1013)  # a live subscription's 1013 recovers as usual
    await h.next_connection()
    assert h.net.last.ops("subscribe")[0]["since"] == {"seq": 901, "epoch": "E1"}
    await h.client.close()


@run
async def test_position_lost_resubscribes_in_place():
    h = await Harness().start()
    got = []
    h.client.subscribe("scores", lambda d, info: got.append(info.seq))
    await settle()
    ws = h.answer()
    ws.receive(delivery("scores", 1, 1))
    ws.receive(delivery("scores", 2, 2))
    ws.receive({"op": "position_lost", "channel": "scores", "seq": 5, "epoch": "E1"})
    await settle()
    assert ws.ops("subscribe")[-1] == {"op": "subscribe", "channel": "scores", "id": 2,
                                       "since": {"seq": 2, "epoch": "E1"}}
    ws.receive({"op": "subscribed", "channel": "scores", "id": 2, "seq": 5, "epoch": "E1",
                "recovered": True})
    for seq in (3, 4, 5, 6):
        ws.receive(delivery("scores", seq, seq))
    await settle()
    assert got == [1, 2, 3, 4, 5, 6]
    assert len(h.net.attempts) == 1, "the connection stays"
    await h.client.close()


@run
async def test_a_new_epoch_or_a_gap_is_reported_and_delivered():
    h = await Harness().start()
    got, recovered = [], []
    sub = h.client.subscribe("s", lambda d, i: got.append(f"{i.epoch}:{i.seq}"))
    sub.on("recovered", recovered.append)
    await settle()
    ws = h.answer({"s": (3, "E1")})
    for seq, epoch in ((4, "E1"), (1, "E2"), (2, "E2"), (4, "E2")):
        ws.receive(delivery("s", seq, 0, epoch))
    await settle()
    assert got == ["E1:4", "E2:1", "E2:2", "E2:4"]
    assert [e.reason for e in recovered] == ["epoch_changed", "gap"]
    await h.client.close()


@run
async def test_a_fresh_subscription_starts_at_the_reply_top():
    h = await Harness().start()
    got = []
    h.client.subscribe("news", lambda d, i: got.append(i.seq))
    await settle()
    ws = h.net.last
    request = ws.ops("subscribe")[0]
    ws.receive(delivery("news", 3, 0))
    ws.receive({"op": "subscribed", "channel": "news", "id": request["id"], "seq": 3,
                "epoch": "E1"})
    ws.receive(delivery("news", 3, 0))
    ws.receive(delivery("news", 4, 0))
    await settle()
    assert got == [4]
    await h.client.close()


@run
async def test_subscribe_errors_permanent_until_reconnect_transient_retried():
    h = await Harness(random_value=0.0).start()
    errs = {"a": [], "b": []}
    a = h.client.subscribe("a", lambda d, i: None)
    b = h.client.subscribe("b", lambda d, i: None)
    a.on("error", lambda e: errs["a"].append(e["code"]))
    b.on("error", lambda e: errs["b"].append(e["code"]))
    await settle()
    ws = h.net.last
    sa, sb = ws.ops("subscribe")
    ws.receive({"op": "error", "code": "forbidden", "message": "no", "id": sa["id"]})
    ws.receive({"op": "error", "code": "engine_unavailable", "message": "later", "id": sb["id"]})
    await settle()
    assert a.state == "failed"
    await h.clock.advance(2 * T.min_delay)
    again = ws.ops("subscribe")[2:]
    assert [m["channel"] for m in again] == ["b"]
    ws.receive({"op": "subscribed", "channel": "b", "id": again[0]["id"], "seq": 0, "epoch": "E"})
    await settle()
    assert b.state == "subscribed"
    assert errs == {"a": ["forbidden"], "b": ["engine_unavailable"]}
    ws.drop()
    await h.next_connection()
    assert [m["channel"] for m in h.net.last.ops("subscribe")] == ["a", "b"]
    await h.client.close()


@run
async def test_unsubscribe_tells_the_gateway_and_stops_deliveries():
    h = await Harness().start()
    got = []
    sub = h.client.subscribe("s", lambda d, i: got.append(d))
    await settle()
    ws = h.answer()
    ws.receive(delivery("s", 1, "x"))
    await settle()
    sub.unsubscribe()
    ws.receive(delivery("s", 2, "y"))
    await settle()
    assert got == ["x"]
    assert ws.ops("unsubscribe") == [{"op": "unsubscribe", "channel": "s"}]
    with pytest.raises(ValueError):
        h.client.subscribe("t", lambda d, i: None)
        h.client.subscribe("t", lambda d, i: None)
    await h.client.close()


@run
async def test_the_user_stream_recovers_through_the_url_since():
    h = Harness()
    got, recovered = [], []
    user = h.client.on_user(lambda d, info: got.append((d, info.channel, info.seq)))
    user.on("recovered", recovered.append)
    await h.start()
    ws = h.net.last
    assert ws.url == "ws://a/?since=%23user%3A0%3A"
    assert ws.ops("subscribe") == []
    ws.receive({"op": "subscribed", "channel": "#user", "seq": 7, "epoch": "U1",
                "recovered": False})
    ws.receive(delivery("#user", 8, "hi", "U1"))
    await settle()
    assert recovered == []
    ws.server_close(1001)
    await h.next_connection()
    ws = h.net.last
    assert ws.url == "ws://b/?since=%23user%3A8%3AU1"
    ws.receive({"op": "subscribed", "channel": "#user", "seq": 9, "epoch": "U1",
                "recovered": True})
    ws.receive(delivery("#user", 8, "hi", "U1"))
    ws.receive(delivery("#user", 9, "again", "U1"))
    await settle()
    assert got == [("hi", "#user", 8), ("again", "#user", 9)]
    assert recovered == [Recovered(True, 9, "U1")]
    await h.client.close()


@run
async def test_on_user_while_connected_asks_for_the_position():
    h = Harness(urls=["ws://a/?v=1"])
    await h.start()
    got = []
    h.client.on_user(lambda d, i: got.append(d))
    await settle()
    ws = h.net.last
    assert ws.ops("subscribe") == [{"op": "subscribe", "channel": "#user", "id": 1}]
    ws.receive(delivery("#user", 3, "early", "U"))
    ws.receive({"op": "subscribed", "channel": "#user", "id": 1, "seq": 3, "epoch": "U"})
    ws.receive(delivery("#user", 4, "next", "U"))
    await settle()
    assert got == ["early", "next"]
    ws.drop()
    await h.next_connection()
    assert h.net.last.url == "ws://a/?v=1&since=%23user%3A4%3AU"
    await h.client.close()


@run
async def test_ping_only_after_silence_and_a_dead_path_within_ping_after_plus_pong_timeout():
    h = await Harness().start()
    ws = h.net.last
    for _ in range(10):
        await h.clock.advance(10)
        ws.receive({"op": "pong"})
    assert ws.ops("ping") == []
    await h.clock.advance(T.ping_after)
    assert len(ws.ops("ping")) == 1
    await h.clock.advance(0.1)
    ws.receive({"op": "pong"})
    await settle()
    last_message = h.clock.now()
    await h.clock.advance(T.pong_timeout)
    assert len(h.net.attempts) == 1
    noticed = None
    while noticed is None and h.clock.now() - last_message < 60:
        await h.clock.advance(0.1)
        if h.states[-1][0] == "disconnected":
            noticed = h.clock.now() - last_message
    assert noticed == pytest.approx(T.ping_after + T.pong_timeout, abs=0.11)
    assert len(ws.ops("ping")) == 2
    assert ws.closed_with is not None, "the dead connection is closed"
    assert h.states[-1][1]["reason"] == "no answer to ping"
    await h.client.close()


@run
async def test_a_slow_handler_is_not_mistaken_for_a_dead_path():
    h = await Harness().start()
    release = asyncio.Event()

    async def slow(data, info):
        await release.wait()

    h.client.subscribe("s", slow)
    await settle()
    ws = h.answer()
    ws.receive(delivery("s", 1, 1))
    await h.clock.advance(3 * (T.ping_after + T.pong_timeout))
    assert len(h.net.attempts) == 1 and h.client.state == "connected"
    release.set()
    await h.client.close()


@run
async def test_close_closes_with_1000_and_never_reconnects():
    h = await Harness().start()
    ws = h.net.last
    await h.client.close()
    assert ws.closed_with == 1000
    await h.clock.advance(10 * T.max_delay)
    assert len(h.net.attempts) == 1
    assert h.states[-1] == ("closed", {"reason": "client"})


@run
async def test_a_raising_handler_is_reported_and_the_next_delivery_arrives():
    h = await Harness().start()
    got = []

    def handler(data, info):
        if data == "bad":
            raise ValueError("boom")
        got.append(data)

    h.client.subscribe("s", handler)
    await settle()
    ws = h.answer()
    ws.receive(delivery("s", 1, "bad"))
    ws.receive(delivery("s", 2, "good"))
    await settle()
    assert got == ["good"]
    assert h.errors[0]["type"] == "handler"
    await h.client.close()


@run
async def test_exactly_once_in_order_over_many_random_reconnects():
    rng = random.Random(42)
    h = Harness(random_value=rng.random)
    got = {"a": [], "b": []}
    h.client.subscribe("a", lambda d, i: got["a"].append(i.seq))
    h.client.subscribe("b", lambda d, i: got["b"].append(i.seq))
    await h.start()
    top = {"a": 0, "b": 0}
    for _ in range(150):
        ws = h.net.last
        for m in ws.ops("subscribe"):
            start = m["since"]["seq"] if "since" in m else top[m["channel"]]
            reply = {"op": "subscribed", "channel": m["channel"], "id": m["id"],
                     "seq": top[m["channel"]], "epoch": "E"}
            if "since" in m:
                reply["recovered"] = True
            ws.receive(reply)
            for s in range(max(1, start + 1 - rng.randrange(3)), top[m["channel"]] + 1):
                ws.receive(delivery(m["channel"], s, s, "E"))
        for _ in range(rng.randrange(5)):
            ch = rng.choice("ab")
            top[ch] += 1
            ws.receive(delivery(ch, top[ch], top[ch], "E"))
        await settle()
        ws.server_close(rng.choice([1001, 1011, 1000]))
        top["a"] += rng.randrange(3)
        top["b"] += rng.randrange(3)
        await h.next_connection()
    ws = h.net.last
    for m in ws.ops("subscribe"):
        ws.receive({"op": "subscribed", "channel": m["channel"], "id": m["id"],
                    "seq": top[m["channel"]], "epoch": "E", "recovered": True})
        for s in range(m["since"]["seq"] + 1, top[m["channel"]] + 1):
            ws.receive(delivery(m["channel"], s, s, "E"))
    await settle()
    for ch in "ab":
        assert got[ch] == list(range(1, top[ch] + 1)), ch
    assert top["a"] > 100 and top["b"] > 100
    await h.client.close()
