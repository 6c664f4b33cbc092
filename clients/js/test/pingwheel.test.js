// Unit tests of pingwheel.js against fake sockets and a fake clock: `node --test clients/js/test/`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { PingwheelClient, DEFAULTS } from "../pingwheel.js";
import { FakeClock, FakeWindow, fakeWebSocketClass, settle } from "./fakes.js";

/** A client on fakes. `random` is a fixed value or a function; tokens are "t1", "t2", ... */
async function setup(options = {}) {
  const clock = new FakeClock();
  const WS = fakeWebSocketClass();
  const tokenCalls = [];
  const states = [];
  const errors = [];
  const { random = 0.5, before, ...rest } = options;
  let r = random;
  const client = new PingwheelClient({
    urls: ["ws://a/", "ws://b/"],
    getToken: async (ctx) => {
      tokenCalls.push(ctx);
      return `t${tokenCalls.length}`;
    },
    WebSocket: WS,
    now: clock.now,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    random: () => (typeof r === "function" ? r() : r),
    window: null,
    ...rest,
  });
  if (before) before(client);
  client.on("state", (s, d) => states.push([s, d]));
  client.on("error", (e) => errors.push(e));
  await settle();
  // Runs timers one at a time until a new socket exists (or the client is closed).
  const nextSocket = async () => {
    const count = WS.instances.length;
    for (let i = 0; i < 100 && WS.instances.length === count && client.state !== "closed"; i++) {
      const [next] = clock.pending();
      if (next === undefined) break;
      await clock.advance(next);
    }
    return WS.last();
  };
  return { client, clock, WS, tokenCalls, states, errors, nextSocket, setRandom: (v) => (r = v) };
}

const delays = (states) => states.filter(([s]) => s === "disconnected").map(([, d]) => d.delay);

/** Opens the latest socket and answers its subscribes with `positions[channel]` (top, epoch). */
function openAndAnswer(WS, positions = {}) {
  const ws = WS.last();
  ws.open();
  for (const m of ws.ops("subscribe")) {
    const [seq, epoch] = positions[m.channel] ?? [0, "E1"];
    const reply = { op: "subscribed", channel: m.channel, id: m.id, seq, epoch };
    if (m.since) reply.recovered = true;
    ws.receive(reply);
  }
  return ws;
}

const delivery = (channel, seq, data, epoch = "E1") => ({ channel, seq, epoch, data });

test("connects to the first url with the token from getToken in the subprotocol list", async () => {
  const { WS, tokenCalls, states, nextSocket } = await setup();
  assert.equal(WS.instances.length, 1);
  assert.equal(WS.last().url, "ws://a/");
  assert.deepEqual(WS.last().protocols, ["pingwheel.v1", "bearer.t1"]);
  assert.deepEqual(tokenCalls, [{ failedOpens: 0, refused: false }]);
  WS.last().open();
  assert.deepEqual(states.map(([s]) => s), ["connecting", "connected"]);
});

test("getToken is called before every reconnect and the urls rotate", async () => {
  const { WS, clock, tokenCalls, nextSocket } = await setup();
  WS.last().open();
  for (let i = 0; i < 3; i++) {
    WS.last().serverClose(1006);
    await nextSocket();
    WS.last().open();
  }
  assert.equal(tokenCalls.length, 4);
  assert.deepEqual(WS.instances.map((w) => w.url), ["ws://a/", "ws://b/", "ws://a/", "ws://b/"]);
  assert.deepEqual(WS.instances.map((w) => w.protocols[1]), ["bearer.t1", "bearer.t2", "bearer.t3", "bearer.t4"]);
});

test("without getToken (dev mode) it offers only pingwheel.v1", async () => {
  const { WS, nextSocket } = await setup({ getToken: undefined });
  assert.deepEqual(WS.last().protocols, ["pingwheel.v1"]);
});

test("backoff: full jitter under a ceiling doubling from minDelay to maxDelay", async () => {
  const { WS, clock, states, setRandom, nextSocket } = await setup({ random: 0.999 });
  for (let i = 0; i < 9; i++) {
    WS.last().fail();
    await nextSocket();
  }
  const ceilings = [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000];
  assert.deepEqual(delays(states).map(Math.round), ceilings.map((c) => Math.round(c * 0.999)));
  // The delay is the random fraction of the ceiling: 0 is allowed (full jitter).
  setRandom(0);
  WS.last().fail();
  assert.equal(delays(states).at(-1), 0);
  setRandom(0.25);
  await clock.advance(0);
  WS.last().fail();
  assert.equal(delays(states).at(-1), 0.25 * 30000);
});

test("backoff resets after a stable connection, not after a short one", async () => {
  const { WS, clock, states, nextSocket } = await setup({ random: 0.999 });
  for (let i = 0; i < 4; i++) {
    WS.last().fail();
    await nextSocket();
  }
  // Open for less than stableAfter: the next delay keeps growing.
  WS.last().open();
  await clock.advance(DEFAULTS.stableAfter - 1);
  WS.last().serverClose(1006);
  assert.equal(Math.round(delays(states).at(-1)), Math.round(8000 * 0.999));
  await nextSocket();
  // Open for stableAfter: back to the first ceiling.
  WS.last().open();
  await clock.advance(DEFAULTS.stableAfter);
  WS.last().serverClose(1006);
  assert.equal(Math.round(delays(states).at(-1)), Math.round(500 * 0.999));
});

test("1001 and 1011 come back quickly, spread over quickSpread", async () => {
  for (const code of [1001, 1011, 1012]) {
    const seen = [];
    for (const r of [0, 0.3, 0.999]) {
      const { WS, clock, states, nextSocket } = await setup({ random: r });
      WS.last().open();
      await clock.advance(DEFAULTS.stableAfter);
      WS.last().serverClose(code, "going away");
      seen.push(delays(states).at(-1));
      await clock.advance(DEFAULTS.quickSpread);
      assert.equal(WS.instances.length, 2, `reconnected within quickSpread after ${code}`);
      assert.equal(WS.last().url, "ws://b/", "to the next url");
    }
    assert.deepEqual(seen, [0, 0.3 * DEFAULTS.quickSpread, 0.999 * DEFAULTS.quickSpread]);
  }
});

test("1013 (slow consumer) backs off: at least 2 s, growing, even after a stable connection", async () => {
  const { WS, clock, states } = await setup({ random: 0 });
  WS.last().open();
  await clock.advance(DEFAULTS.stableAfter * 2);
  WS.last().serverClose(1013, "slow consumer");
  assert.equal(delays(states).at(-1), 2000);
  await clock.advance(2000);
  assert.equal(WS.instances.length, 2);
  WS.last().open();
  await clock.advance(DEFAULTS.stableAfter * 2);
  WS.last().serverClose(1013);
  assert.equal(delays(states).at(-1), 4000);
  assert.equal(WS.instances.length, 2);
});

for (const [code, reason] of [[1008, "policy"], [1002, "protocol"], [1007, "protocol"], [1009, "protocol"]]) {
  test(`close ${code} stops for good and is reported as ${reason}`, async () => {
    const { client, WS, clock, states, errors, nextSocket } = await setup();
    WS.last().open();
    WS.last().serverClose(code, "because");
    await clock.advance(10 * DEFAULTS.maxDelay);
    assert.equal(WS.instances.length, 1, "no reconnect");
    assert.equal(client.state, "closed");
    assert.deepEqual(states.at(-1), ["closed", { reason, code }]);
    assert.deepEqual(errors, [{ type: reason, reason, code }]);
  });
}

test("a visible 401 refreshes the token once at once; a second 401 stops and reports", async () => {
  const { client, WS, clock, tokenCalls, states, errors, nextSocket } = await setup();
  WS.last().refuse(401);
  await clock.advance(0);
  assert.equal(WS.instances.length, 2, "retried without delay");
  assert.deepEqual(tokenCalls[1], { failedOpens: 1, refused: true });
  assert.equal(WS.last().protocols[1], "bearer.t2");
  WS.last().refuse(401);
  await clock.advance(10 * DEFAULTS.maxDelay);
  assert.equal(WS.instances.length, 2);
  assert.equal(client.state, "closed");
  assert.deepEqual(states.at(-1), ["closed", { reason: "refused", status: 401 }]);
  assert.equal(errors.at(-1).type, "refused");
});

test("a refreshed token after a 401 connects and clears the refusal", async () => {
  const { client, WS, clock, tokenCalls, nextSocket } = await setup();
  WS.last().refuse(401);
  await clock.advance(0);
  WS.last().open();
  assert.equal(client.state, "connected");
  WS.last().serverClose(1006);
  await nextSocket();
  assert.deepEqual(tokenCalls.at(-1), { failedOpens: 0, refused: false });
});

test("a visible 403 stops at once; 503 and 429 back off", async () => {
  let { client, WS, clock, nextSocket } = await setup();
  WS.last().refuse(403);
  await nextSocket();
  assert.equal(client.state, "closed");
  assert.equal(WS.instances.length, 1);
  for (const status of [503, 429]) {
    ({ client, WS, clock, nextSocket } = await setup());
    WS.last().refuse(status);
    await nextSocket();
    assert.equal(WS.instances.length, 2, `retried after ${status}`);
  }
});

test("browser refusal (1006 before open, no status): reported, told to getToken; null stops", async () => {
  let signedOut = false;
  const calls = [];
  const { client, WS, clock, errors, states, nextSocket } = await setup({
    random: 0.999,
    getToken: async (ctx) => {
      calls.push(ctx.failedOpens);
      return signedOut ? null : "tok";
    },
  });
  for (let i = 0; i < 3; i++) {
    WS.last().fail();
    await nextSocket();
  }
  assert.deepEqual(calls, [0, 1, 2, 3]);
  assert.deepEqual(errors.filter((e) => e.type === "unreachable_or_refused"), [{ type: "unreachable_or_refused", failedOpens: 3 }]);
  assert.equal(client.state, "connecting", "it keeps trying: a down gateway looks the same");
  // The app's backend says the session is gone: getToken answers null.
  signedOut = true;
  WS.last().fail();
  await nextSocket();
  assert.equal(client.state, "closed");
  assert.deepEqual(states.at(-1), ["closed", { reason: "no_token" }]);
  assert.equal(WS.instances.length, 4);
});

test("getToken throwing is reported and retried with backoff", async () => {
  let fail = true;
  const { client, WS, clock, errors, states, nextSocket } = await setup({
    getToken: async () => {
      if (fail) throw new Error("backend down");
      return "tok";
    },
  });
  assert.equal(WS.instances.length, 0);
  assert.equal(errors[0].type, "token");
  assert.equal(states.at(-1)[0], "disconnected");
  fail = false;
  await nextSocket();
  assert.equal(WS.instances.length, 1);
  WS.last().open();
  assert.equal(client.state, "connected");
});

test("a connect that never opens is abandoned after connectTimeout and retried", async () => {
  const { WS, clock, states, nextSocket } = await setup();
  await clock.advance(DEFAULTS.connectTimeout);
  assert.ok(WS.instances[0].closedWith, "the hung socket is closed");
  assert.deepEqual(states.at(-1)[1].code, 1006);
  assert.equal(states.at(-1)[1].reason, "connect timeout");
  await nextSocket();
  assert.equal(WS.instances.length, 2);
});

test("deliveries reach the handler in seq order once; recovered ones after a reconnect too", async () => {
  const { client, WS, clock, nextSocket } = await setup();
  const got = [];
  const recovered = [];
  const sub = client.subscribe("scores", (data, info) => got.push([data, info]));
  sub.on("recovered", (e) => recovered.push(e));
  let ws = openAndAnswer(WS, { scores: [40, "E1"] });
  for (const seq of [41, 42, 42, 41, 43]) ws.receive(delivery("scores", seq, `m${seq}`));
  ws.serverClose(1006);
  await nextSocket();
  ws = WS.last();
  ws.open();
  assert.deepEqual(ws.ops("subscribe"), [{ op: "subscribe", channel: "scores", id: 2, since: { seq: 43, epoch: "E1" } }]);
  ws.receive({ op: "subscribed", channel: "scores", id: 2, seq: 46, epoch: "E1", recovered: true });
  for (const seq of [43, 44, 45, 46, 45, 47]) ws.receive(delivery("scores", seq, `m${seq}`));
  assert.deepEqual(got.map(([d]) => d), ["m41", "m42", "m43", "m44", "m45", "m46", "m47"]);
  assert.deepEqual(got[0][1], { channel: "scores", seq: 41, epoch: "E1" });
  assert.deepEqual(recovered, [{ recovered: true, seq: 46, epoch: "E1" }]);
  assert.deepEqual(sub.position, { seq: 47, epoch: "E1" });
});

test("recovered:false is an event; the position jumps to the reply's top", async () => {
  const { client, WS, clock, nextSocket } = await setup();
  const got = [];
  const recovered = [];
  const sub = client.subscribe("scores", (d) => got.push(d), { since: { seq: 5, epoch: "OLD" } });
  sub.on("recovered", (e) => recovered.push(e));
  const ws = WS.last();
  ws.open();
  assert.deepEqual(ws.ops("subscribe")[0].since, { seq: 5, epoch: "OLD" });
  ws.receive({ op: "subscribed", channel: "scores", id: 1, seq: 9, epoch: "NEW", recovered: false });
  ws.receive(delivery("scores", 10, "m10", "NEW"));
  assert.deepEqual(recovered, [{ recovered: false, reason: "not_recovered", seq: 9, epoch: "NEW" }]);
  assert.deepEqual(got, ["m10"]);
  await clock.advance(0);
});

test("a recovery closed as a slow consumer (1013) before its reply is given up and reported", async () => {
  const { client, WS, nextSocket } = await setup();
  const recovered = [];
  const got = [];
  const sub = client.subscribe("scores", (d, { seq }) => got.push(seq), { since: { seq: 10, epoch: "E1" } });
  sub.on("recovered", (e) => recovered.push(e));
  let ws = WS.last();
  ws.open();
  assert.deepEqual(ws.ops("subscribe")[0].since, { seq: 10, epoch: "E1" });
  ws.serverClose(1013, "slow consumer"); // the backlog did not fit the gateway's queue
  ws = await nextSocket();
  ws.open();
  const [again] = ws.ops("subscribe");
  assert.equal(again.since, undefined, "the next subscribe asks for no recovery");
  ws.receive({ op: "subscribed", channel: "scores", id: again.id, seq: 900, epoch: "E1" });
  ws.receive(delivery("scores", 901, 0));
  assert.deepEqual(recovered, [{ recovered: false, reason: "recovery_failed", seq: 900, epoch: "E1" }]);
  assert.deepEqual(got, [901]);
  // A later 1013 of a live subscription recovers as usual.
  ws.serverClose(1013);
  ws = await nextSocket();
  ws.open();
  assert.deepEqual(ws.ops("subscribe")[0].since, { seq: 901, epoch: "E1" });
});

test("position_lost: resubscribe in place with since; the stream continues without duplicates", async () => {
  const { client, WS, nextSocket } = await setup();
  const got = [];
  client.subscribe("scores", (d, { seq }) => got.push(seq));
  const ws = openAndAnswer(WS, { scores: [0, "E1"] });
  ws.receive(delivery("scores", 1, 1));
  ws.receive(delivery("scores", 2, 2));
  ws.receive({ op: "position_lost", channel: "scores", seq: 5, epoch: "E1" });
  const resub = ws.ops("subscribe").at(-1);
  assert.deepEqual(resub, { op: "subscribe", channel: "scores", id: 2, since: { seq: 2, epoch: "E1" } });
  ws.receive(delivery("scores", 6, 6)); // live, before the reply: a gap, but delivered
  ws.receive({ op: "subscribed", channel: "scores", id: 2, seq: 6, epoch: "E1", recovered: true });
  ws.receive(delivery("scores", 7, 7));
  assert.deepEqual(got, [1, 2, 6, 7]);
  assert.equal(WS.instances.length, 1, "the connection stays");
});

test("a new epoch in a delivery is reported as recovered:false (positions reset) and delivered", async () => {
  const { client, WS, nextSocket } = await setup();
  const got = [];
  const recovered = [];
  const sub = client.subscribe("scores", (d, { seq, epoch }) => got.push(`${epoch}:${seq}`));
  sub.on("recovered", (e) => recovered.push(e));
  const ws = openAndAnswer(WS, { scores: [3, "E1"] });
  ws.receive(delivery("scores", 4, 0, "E1"));
  ws.receive(delivery("scores", 1, 0, "E2"));
  ws.receive(delivery("scores", 2, 0, "E2"));
  ws.receive(delivery("scores", 4, 0, "E2")); // a gap in the same epoch
  assert.deepEqual(got, ["E1:4", "E2:1", "E2:2", "E2:4"]);
  assert.deepEqual(recovered.map((e) => e.reason), ["epoch_changed", "gap"]);
});

test("a fresh subscription ignores deliveries before its reply (none are due) and starts at the top", async () => {
  const { client, WS, nextSocket } = await setup();
  const got = [];
  WS.last().open();
  client.subscribe("news", (d, { seq }) => got.push(seq));
  const ws = WS.last();
  const { id } = ws.ops("subscribe")[0];
  ws.receive(delivery("news", 3, 0));
  ws.receive({ op: "subscribed", channel: "news", id, seq: 3, epoch: "E1" });
  ws.receive(delivery("news", 3, 0));
  ws.receive(delivery("news", 4, 0));
  assert.deepEqual(got, [4]);
});

test("a subscribe refused for good fails until the next connection; a transient one is retried", async () => {
  const { client, WS, clock, nextSocket } = await setup({ random: 0 });
  const errs = { a: [], b: [] };
  const a = client.subscribe("a", () => {});
  const b = client.subscribe("b", () => {});
  a.on("error", (e) => errs.a.push(e.code));
  b.on("error", (e) => errs.b.push(e.code));
  let ws = WS.last();
  ws.open();
  const [sa, sb] = ws.ops("subscribe");
  ws.receive({ op: "error", code: "forbidden", message: "no", id: sa.id });
  ws.receive({ op: "error", code: "rate_limited", message: "slow down", id: sb.id });
  assert.equal(a.state, "failed");
  await clock.advance(DEFAULTS.minDelay * 2);
  const again = ws.ops("subscribe").slice(2);
  assert.deepEqual(again.map((m) => m.channel), ["b"], "only the transient one is retried");
  ws.receive({ op: "subscribed", channel: "b", id: again[0].id, seq: 0, epoch: "E" });
  assert.equal(b.state, "subscribed");
  assert.deepEqual(errs, { a: ["forbidden"], b: ["rate_limited"] });
  ws.serverClose(1006);
  await nextSocket();
  ws = WS.last();
  ws.open();
  assert.deepEqual(ws.ops("subscribe").map((m) => m.channel), ["a", "b"], "a is tried again on a new connection");
});

test("unsubscribe tells the gateway and stops deliveries", async () => {
  const { client, WS, nextSocket } = await setup();
  const got = [];
  const sub = client.subscribe("s", (d) => got.push(d));
  const ws = openAndAnswer(WS);
  ws.receive(delivery("s", 1, "x"));
  sub.unsubscribe();
  ws.receive(delivery("s", 2, "y"));
  assert.deepEqual(got, ["x"]);
  assert.deepEqual(ws.ops("unsubscribe"), [{ op: "unsubscribe", channel: "s" }]);
  client.subscribe("s", () => {}); // may subscribe again
  assert.throws(() => client.subscribe("s", () => {}), /already subscribed/);
});

test("the user stream recovers through the URL since, from 0: to its last position", async () => {
  const got = [];
  const recovered = [];
  const { WS, clock } = await setup({
    before(client) {
      const user = client.onUser((d, info) => got.push([d, info.channel, info.seq]));
      user.on("recovered", (e) => recovered.push(e));
    },
  });
  let ws = WS.last();
  assert.equal(ws.url, "ws://a/?since=%23user%3A0%3A");
  ws.open();
  assert.deepEqual(ws.ops("subscribe"), [], "no op subscribe for #user");
  ws.receive({ op: "subscribed", channel: "#user", seq: 7, epoch: "U1", recovered: false });
  ws.receive(delivery("#user", 8, "hi", "U1"));
  assert.deepEqual(recovered, [], "recovered:false without a position is only the position");
  ws.serverClose(1001);
  await clock.advance(DEFAULTS.quickSpread);
  ws = WS.last();
  assert.equal(ws.url, "ws://b/?since=%23user%3A8%3AU1");
  ws.open();
  ws.receive({ op: "subscribed", channel: "#user", seq: 9, epoch: "U1", recovered: true });
  ws.receive(delivery("#user", 8, "hi", "U1"));
  ws.receive(delivery("#user", 9, "again", "U1"));
  assert.deepEqual(got, [["hi", "#user", 8], ["again", "#user", 9]]);
  assert.deepEqual(recovered, [{ recovered: true, seq: 9, epoch: "U1" }]);
});

test("onUser after the socket was made asks for the user stream's position on open", async () => {
  const { client, WS } = await setup();
  const got = [];
  client.onUser((d) => got.push(d));
  const ws = WS.last();
  ws.open();
  assert.deepEqual(ws.ops("subscribe"), [{ op: "subscribe", channel: "#user", id: 1 }]);
  ws.receive(delivery("#user", 3, "early", "U")); // the user stream is always on
  ws.receive({ op: "subscribed", channel: "#user", id: 1, seq: 3, epoch: "U" });
  ws.receive(delivery("#user", 4, "next", "U"));
  assert.deepEqual(got, ["early", "next"]);
});

test("a URL with a query gets &since for the user stream", async () => {
  const { client, WS, clock, nextSocket } = await setup({ urls: ["ws://a/?v=1"] });
  client.onUser(() => {});
  WS.last().fail();
  await nextSocket();
  assert.equal(WS.last().url, "ws://a/?v=1&since=%23user%3A0%3A");
});

test("silence: a ping only after pingAfter without messages; a dead path is left within pingAfter + pongTimeout", async () => {
  const { WS, clock, states, nextSocket } = await setup();
  const ws = WS.last();
  ws.open();
  // Traffic every 10 s: never a ping.
  for (let i = 0; i < 10; i++) {
    await clock.advance(10000);
    ws.receive({ op: "pong" });
  }
  assert.deepEqual(ws.ops("ping"), []);
  // Silence: one ping at pingAfter, answered: the connection stays.
  await clock.advance(DEFAULTS.pingAfter);
  assert.equal(ws.ops("ping").length, 1);
  await clock.advance(100);
  ws.receive({ op: "pong" });
  const lastMessage = clock.now();
  await clock.advance(DEFAULTS.pongTimeout);
  assert.equal(WS.instances.length, 1);
  assert.equal(ws.ops("ping").length, 1, "the next ping waits for silence again");
  // The path dies: no answer to the next ping.
  let noticed = null;
  while (noticed === null && clock.now() - lastMessage < 60000) {
    await clock.advance(100);
    if (states.at(-1)[0] === "disconnected") noticed = clock.now() - lastMessage;
  }
  assert.equal(noticed, DEFAULTS.pingAfter + DEFAULTS.pongTimeout);
  assert.equal(ws.ops("ping").length, 2);
  assert.ok(ws.closedWith, "the dead socket is closed");
  assert.equal(states.at(-1)[1].reason, "no answer to ping");
  await clock.advance(DEFAULTS.quickSpread);
  assert.equal(WS.instances.length, 2, "reconnected");
  ws.serverClose(1006); // the dead socket's late close is ignored
  assert.equal(WS.instances.length, 2);
});

test("the watchdog keeps one timer, never one per message", async () => {
  const { WS, clock, nextSocket } = await setup();
  const ws = WS.last();
  ws.open();
  for (let i = 0; i < 1000; i++) ws.receive({ op: "pong" });
  assert.equal(clock.pending().length, 1);
});

test("offline: a connected client probes at once; a waiting one waits for online, then retries within minDelay", async () => {
  const win = new FakeWindow();
  const { client, WS, clock, states, nextSocket } = await setup({ window: win, random: 0.999 });
  const ws = WS.last();
  ws.open();
  win.goOffline();
  assert.equal(ws.ops("ping").length, 1);
  await clock.advance(DEFAULTS.pongTimeout);
  assert.equal(states.at(-1)[0], "disconnected");
  assert.equal(states.at(-1)[1].offline, true);
  assert.equal(states.at(-1)[1].delay, null);
  await clock.advance(10 * DEFAULTS.maxDelay);
  assert.equal(WS.instances.length, 1, "no attempts while offline");
  win.goOnline();
  await clock.advance(DEFAULTS.minDelay);
  assert.equal(WS.instances.length, 2);
  client.close();
  assert.equal(win.listenerCount(), 0, "close removes the window listeners");
});

test("visibility: visible again probes a connected client and cuts a long backoff short (not after 1013)", async () => {
  const win = new FakeWindow();
  const { WS, clock, nextSocket } = await setup({ window: win, random: 0.999 });
  let ws = WS.last();
  ws.open();
  win.setVisibility("hidden");
  assert.equal(ws.ops("ping").length, 0);
  win.setVisibility("visible");
  assert.equal(ws.ops("ping").length, 1);
  ws.receive({ op: "pong" });
  // A long wait (attempts failing) is cut short when the page is shown.
  for (let i = 0; i < 5; i++) {
    WS.last().serverClose(1006);
    await nextSocket();
  }
  const before = WS.instances.length;
  WS.last().serverClose(1006); // next delay ~ 30 s
  win.setVisibility("visible");
  await clock.advance(DEFAULTS.minDelay);
  assert.equal(WS.instances.length, before + 1);
  // After 1013 the page being shown does not bring the client back early.
  ws = WS.last();
  ws.open();
  ws.serverClose(1013);
  win.setVisibility("visible");
  await clock.advance(DEFAULTS.minDelay);
  assert.equal(WS.instances.length, before + 1);
});

test("close() closes the socket with 1000 and never reconnects", async () => {
  const { client, WS, clock, states, nextSocket } = await setup();
  const ws = WS.last();
  ws.open();
  client.close();
  assert.deepEqual(ws.closedWith, { code: 1000 });
  ws.serverClose(1000);
  await clock.advance(10 * DEFAULTS.maxDelay);
  assert.equal(WS.instances.length, 1);
  assert.deepEqual(states.at(-1), ["closed", { reason: "client" }]);
});

test("close() while getToken is pending opens nothing", async () => {
  let release;
  const { client, WS, nextSocket } = await setup({ getToken: () => new Promise((r) => (release = r)) });
  client.close();
  release("tok");
  await settle();
  assert.equal(WS.instances.length, 0);
});

test("a throwing handler is reported and the next delivery still arrives", async () => {
  const { client, WS, errors, nextSocket } = await setup();
  const got = [];
  client.subscribe("s", (d) => {
    if (d === "bad") throw new Error("boom");
    got.push(d);
  });
  const ws = openAndAnswer(WS);
  ws.receive(delivery("s", 1, "bad"));
  ws.receive(delivery("s", 2, "good"));
  assert.deepEqual(got, ["good"]);
  assert.equal(errors[0].type, "handler");
  assert.equal(errors[0].error.message, "boom");
});

test("exactly once and in order over many random reconnects, duplicates and replays", async () => {
  // A server model: a channel log; after each reconnect it replays from `since` (the
  // gateway's contract), sometimes resending a few old messages (which must be dropped).
  let seed = 42;
  const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  const { client, WS, clock, nextSocket } = await setup({ random: rand });
  const got = { a: [], b: [] };
  client.subscribe("a", (d, { seq }) => got.a.push(seq));
  client.subscribe("b", (d, { seq }) => got.b.push(seq));
  const top = { a: 0, b: 0 };
  for (let round = 0; round < 200; round++) {
    const ws = WS.last();
    ws.open();
    for (const m of ws.ops("subscribe")) {
      const from = m.since ? m.since.seq : top[m.channel];
      ws.receive({ op: "subscribed", channel: m.channel, id: m.id, seq: top[m.channel], epoch: "E", ...(m.since ? { recovered: true } : {}) });
      const replayFrom = Math.max(1, from + 1 - Math.floor(rand() * 3));
      for (let s = replayFrom; s <= top[m.channel]; s++) ws.receive(delivery(m.channel, s, s, "E"));
    }
    const live = Math.floor(rand() * 5);
    for (let i = 0; i < live; i++) {
      const ch = rand() < 0.5 ? "a" : "b";
      top[ch]++;
      ws.receive(delivery(ch, top[ch], top[ch], "E"));
    }
    // Publishes while the client is away.
    ws.serverClose(rand() < 0.5 ? 1006 : 1001);
    top.a += Math.floor(rand() * 3);
    top.b += Math.floor(rand() * 3);
    await nextSocket();
  }
  const ws = WS.last();
  ws.open();
  for (const m of ws.ops("subscribe")) {
    ws.receive({ op: "subscribed", channel: m.channel, id: m.id, seq: top[m.channel], epoch: "E", recovered: true });
    for (let s = m.since.seq + 1; s <= top[m.channel]; s++) ws.receive(delivery(m.channel, s, s, "E"));
  }
  for (const ch of ["a", "b"]) {
    assert.deepEqual(got[ch], Array.from({ length: top[ch] }, (_, i) => i + 1), `channel ${ch}`);
  }
  assert.ok(top.a > 100 && top.b > 100);
});
