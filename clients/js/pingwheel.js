// pingwheel client for browsers and Node 20+: one dependency-free ES module.
//
// It keeps one WebSocket to one of `urls`, reconnects with exponential backoff and full
// jitter (the close code decides how), resubscribes every channel with its last position
// `(seq, epoch)` so the gateway replays what was missed, and hands each handler its
// deliveries in `seq` order exactly once. The rules it follows are in docs/clients.md;
// the wire format is docs/protocol.md.

/** Tunables (milliseconds, except `suspectAfter`); every one can be overridden per client. */
export const DEFAULTS = Object.freeze({
  minDelay: 500, // backoff ceiling of the first retry; doubles per failed attempt...
  maxDelay: 30000, // ...up to this
  quickSpread: 5000, // after 1001/1011/1012: reconnect at a uniform random point of [0, this)
  stableAfter: 10000, // a connection open this long resets the backoff
  pingAfter: 25000, // silence before an application ping {"op":"ping"}...
  pongTimeout: 10000, // ...and how long its answer may take: a dead path is seen within the sum
  connectTimeout: 10000, // from new WebSocket() to open
  suspectAfter: 3, // failed opens in a row before "unreachable_or_refused" is reported
});

// 1001 going away (drain), 1011 keepalive timeout, 1012 restart: come back soon, spread out.
const QUICK = [1001, 1011, 1012];
// Retrying cannot fix these: 1008 policy violation, and the "fix the client" codes.
const FATAL = { 1002: "protocol", 1003: "protocol", 1007: "protocol", 1008: "policy", 1009: "protocol", 1010: "protocol" };
// A subscribe refused with one of these is not retried before the next connection.
const PERMANENT = ["forbidden", "invalid_channel", "too_many_subscriptions", "bad_request", "bad_json", "unknown_op"];
// 1013 (slow consumer) backs off from at least this attempt: 2^3 * minDelay = 4 s ceiling.
const SLOW_ATTEMPT = 3;
const USER = "#user";

class Emitter {
  constructor() {
    this._handlers = {};
  }
  /** Calls `fn` on every `event`; returns a function that removes it. */
  on(event, fn) {
    (this._handlers[event] ||= []).push(fn);
    return () => this.off(event, fn);
  }
  /** Removes `fn` from `event`. */
  off(event, fn) {
    this._handlers[event] = (this._handlers[event] || []).filter((f) => f !== fn);
  }
  _emit(event, ...args) {
    for (const fn of this._handlers[event] || []) this._call(fn, args);
  }
}

/** One channel (or the per-user stream) and its position; made by `subscribe`/`onUser`. */
export class Subscription extends Emitter {
  constructor(client, channel, handler, since) {
    super();
    this._client = client;
    this._handler = handler;
    /** The channel name (`"#user"` for the per-user stream). */
    this.channel = channel;
    /** Last delivered seq and its epoch (`null` until the first reply or delivery). */
    this.seq = since ? since.seq : null;
    this.epoch = since ? since.epoch : null;
    /** "pending" (subscribe not yet answered) | "subscribed" | "failed" | "unsubscribed". */
    this.state = "pending";
    this._tries = 0; // transient subscribe errors in a row (rate_limited, engine_unavailable)
  }
  /** `{ seq, epoch }` of the last message handed to the handler, or `null`. */
  get position() {
    return this.epoch === null ? null : { seq: this.seq, epoch: this.epoch };
  }
  /** Stops deliveries to this handler (and tells the gateway, for a channel). */
  unsubscribe() {
    if (this.state === "unsubscribed") return;
    this.state = "unsubscribed";
    this._client._unsubscribe(this);
  }
  _call(fn, args) {
    this._client._call(fn, args);
  }
  // The `since` of the next subscribe: our position, unless recovering it already ended
  // in a slow-consumer close (1013) before the reply (the backlog does not fit the
  // gateway's queue): then none, and the reply is reported as recovered:false.
  _since() {
    this._recovering = this.epoch !== null && !this._giveUp;
    return this._recovering ? { seq: this.seq, epoch: this.epoch } : null;
  }
  // The reply to a subscribe. With `recovered` it answers our `since`: true, the missed
  // messages follow (our position stays until they arrive); false, we jump to the top.
  _subscribed(msg) {
    this.state = "subscribed";
    this._tries = 0;
    const had = this.epoch !== null;
    const gaveUp = this._giveUp;
    this._giveUp = this._recovering = false;
    if (!had || gaveUp || msg.recovered === false) {
      this.seq = msg.seq ?? null;
      this.epoch = msg.epoch ?? null;
    }
    this._emit("subscribed", { seq: msg.seq, epoch: msg.epoch, recovered: msg.recovered });
    if (gaveUp || (had && msg.recovered !== undefined)) {
      const lost = msg.recovered && !gaveUp ? {} : { reason: gaveUp ? "recovery_failed" : "not_recovered" };
      this._emit("recovered", { recovered: !!msg.recovered && !gaveUp, ...lost, seq: msg.seq, epoch: msg.epoch });
    }
  }
  // A delivery: duplicates (same epoch, seq not past ours) are dropped; a new epoch or a
  // gap is reported as `recovered: false` (messages may be missing) and then delivered.
  _deliver(msg) {
    const seq = msg.seq;
    const epoch = msg.epoch ?? null;
    if (this.epoch === null) {
      // A fresh subscribe delivers only after its reply; the user stream is always on.
      if (this.state === "pending" && this.channel !== USER) return;
    } else if (epoch === this.epoch && seq <= this.seq) {
      return;
    } else if (epoch !== this.epoch || seq > this.seq + 1) {
      const reason = epoch !== this.epoch ? "epoch_changed" : "gap";
      this.seq = seq;
      this.epoch = epoch;
      this._emit("recovered", { recovered: false, reason, seq, epoch });
    }
    this.seq = seq;
    this.epoch = epoch;
    this._call(this._handler, [msg.data, { channel: this.channel, seq, epoch }]);
  }
}

/** A pingwheel connection that reconnects, resubscribes and recovers by itself. */
export class PingwheelClient extends Emitter {
  /**
   * @param {object} options `urls` (or `url`), `getToken`, optionally `WebSocket`, any of
   *   DEFAULTS, and for tests `now`, `setTimeout`, `clearTimeout`, `random`, `window`.
   */
  constructor(options) {
    super();
    const o = { ...DEFAULTS, ...options };
    this._o = o;
    this._urls = o.urls || [o.url];
    if (!this._urls.length || !this._urls[0]) throw new TypeError("pingwheel: no urls");
    this._WS = o.WebSocket || globalThis.WebSocket;
    if (!this._WS) throw new TypeError("pingwheel: no WebSocket: pass one as options.WebSocket");
    const perf = globalThis.performance;
    this._now = o.now || (perf ? () => perf.now() : Date.now);
    this._setTimeout = o.setTimeout || ((fn, ms) => setTimeout(fn, ms));
    this._clearTimeout = o.clearTimeout || ((t) => clearTimeout(t));
    this._random = o.random || Math.random;
    this._win = o.window !== undefined ? o.window : globalThis.window;
    /** "connecting" | "connected" | "disconnected" | "closed". */
    this.state = "disconnected";
    this._subs = new Map(); // channel -> Subscription
    this._user = null; // the #user Subscription, when onUser was called
    this._pending = new Map(); // request id -> Subscription
    this._nextId = 1;
    this._ws = null;
    this._timer = null; // reconnect or connect timeout
    this._watch = null; // silence watchdog
    this._urlIndex = 0;
    this._attempt = 0; // failed attempts since the last stable connection
    this._failedOpens = 0; // attempts in a row that never reached open
    this._refused = 0; // HTTP 401s in a row (seen only where the status is visible)
    this._lastCode = 0;
    this._listen(true);
    Promise.resolve().then(() => this._connect());
  }

  /** Subscribes `handler(data, { channel, seq, epoch })`; `since` resumes from a kept position. */
  subscribe(channel, handler, { since } = {}) {
    if (this._subs.has(channel)) throw new Error(`pingwheel: already subscribed to ${channel}`);
    const sub = new Subscription(this, channel, handler, since);
    this._subs.set(channel, sub);
    if (this.state === "connected") this._sendSubscribe(sub);
    return sub;
  }

  /** Handles the per-user stream (deliveries on `#user`), recovered across reconnects. */
  onUser(handler, { since } = {}) {
    if (this._user) throw new Error("pingwheel: onUser was already called");
    this._user = new Subscription(this, USER, handler, since);
    if (this.state === "connected") this._sendSubscribe(this._user);
    return this._user;
  }

  /** Closes for good: no reconnect after this. */
  close() {
    this._stop({ reason: "client" });
  }

  // A handler that throws is reported on "error" (or the console) and does not stop the
  // others, nor the delivery of the next message.
  _call(fn, args) {
    try {
      fn(...args);
    } catch (error) {
      if (this._faulting || !(this._handlers.error || []).length) return console.error("pingwheel: a handler threw", error);
      this._faulting = true;
      this._emit("error", { type: "handler", error });
      this._faulting = false;
    }
  }

  _setState(state, detail) {
    this.state = state;
    this._emit("state", state, detail || {});
  }

  _listen(on) {
    const w = this._win;
    if (!w || !w.addEventListener) return;
    const m = on ? "addEventListener" : "removeEventListener";
    if (on) {
      this._onOnline = () => this._online();
      this._onOffline = () => this._probe();
      this._onVisible = () => w.document.visibilityState === "visible" && this._visible();
    }
    w[m]("online", this._onOnline);
    w[m]("offline", this._onOffline);
    if (w.document && w.document[m]) w.document[m]("visibilitychange", this._onVisible);
  }

  _offline() {
    const w = this._win;
    return !!(w && w.navigator && w.navigator.onLine === false);
  }

  async _connect() {
    if (this.state === "closed") return;
    this._timer = null;
    this._setState("connecting", { url: this._urls[this._urlIndex] });
    const attempt = (this._attemptId = (this._attemptId || 0) + 1);
    let token = null;
    if (this._o.getToken) {
      try {
        token = await this._o.getToken({ failedOpens: this._failedOpens, refused: this._refused > 0 });
      } catch (error) {
        if (attempt !== this._attemptId || this.state === "closed") return;
        this._emit("error", { type: "token", error });
        return this._retry({ code: 0, reason: "getToken failed" }, false);
      }
      if (attempt !== this._attemptId || this.state === "closed") return;
      if (token == null || token === "") return this._stop({ reason: "no_token" });
    }
    let url = this._urls[this._urlIndex];
    const user = (this._userInUrl = this._user);
    if (user) {
      const since = user._since();
      const pos = since ? `${since.seq}:${since.epoch}` : "0:";
      url += (url.includes("?") ? "&" : "?") + "since=" + encodeURIComponent(`${USER}:${pos}`);
      user.state = "pending";
    }
    let ws;
    try {
      ws = new this._WS(url, token ? ["pingwheel.v1", "bearer." + token] : ["pingwheel.v1"]);
    } catch (error) {
      this._emit("error", { type: "connect", error });
      return this._retry({ code: 1006, reason: String(error) }, false);
    }
    this._ws = ws;
    this._openedAt = null;
    let status = 0;
    ws.onopen = () => this._ws === ws && this._opened();
    ws.onmessage = (ev) => this._ws === ws && this._message(ev.data);
    ws.onerror = (ev) => {
      // Browsers hide a refused upgrade's status; Node's `ws` names it in the message.
      const m = /server response: (\d{3})/.exec((ev && (ev.message || (ev.error && ev.error.message))) || "");
      status = (ev && ev.status) || (m ? +m[1] : 0);
    };
    ws.onclose = (ev) => this._ws === ws && this._lost({ code: ev.code, reason: ev.reason, status });
    this._timer = this._setTimeout(() => this._abandon("connect timeout"), this._o.connectTimeout);
  }

  _opened() {
    this._clearTimeout(this._timer);
    this._timer = null;
    this._openedAt = this._lastRx = this._now();
    this._pingAt = null;
    this._failedOpens = 0;
    this._refused = 0;
    this._setState("connected", { url: this._urls[this._urlIndex] });
    for (const sub of this._subs.values()) this._sendSubscribe(sub);
    // onUser called after this socket's URL was made: ask for the user stream's position.
    if (this._user && this._user !== this._userInUrl) this._sendSubscribe(this._user);
    this._armWatch(this._o.pingAfter);
  }

  _sendSubscribe(sub) {
    if (sub.state === "unsubscribed" || this.state !== "connected") return;
    sub.state = "pending";
    const id = this._nextId++;
    this._pending.set(id, sub);
    const msg = { op: "subscribe", channel: sub.channel, id };
    const since = sub._since();
    if (since) msg.since = since;
    this._send(msg);
  }

  _unsubscribe(sub) {
    this._clearTimeout(sub._again);
    if (sub === this._user) return void (this._user = null);
    if (this._subs.get(sub.channel) !== sub) return;
    this._subs.delete(sub.channel);
    if (this.state === "connected") this._send({ op: "unsubscribe", channel: sub.channel });
  }

  _send(msg) {
    try {
      this._ws.send(JSON.stringify(msg));
    } catch (error) {
      this._emit("error", { type: "send", error });
    }
  }

  _message(text) {
    this._lastRx = this._now();
    this._pingAt = null;
    let msg;
    try {
      msg = JSON.parse(text);
    } catch (error) {
      return this._emit("error", { type: "protocol", error, text });
    }
    if (!msg || typeof msg !== "object") return;
    const sub = msg.channel === USER ? this._user : this._subs.get(msg.channel);
    if (msg.op === undefined) {
      if (sub && typeof msg.seq === "number") sub._deliver(msg);
    } else if (msg.op === "subscribed") {
      if (msg.id !== undefined) this._pending.delete(msg.id);
      if (sub && sub.state !== "unsubscribed") sub._subscribed(msg);
    } else if (msg.op === "position_lost") {
      // The subscription stays; resubscribing with our position recovers in place.
      if (sub && sub.state === "subscribed") this._sendSubscribe(sub);
    } else if (msg.op === "error") {
      const target = this._pending.get(msg.id);
      this._pending.delete(msg.id);
      if (!target) return this._emit("error", { type: "server", code: msg.code, message: msg.message });
      const err = { code: msg.code, message: msg.message };
      if (target.state === "unsubscribed") return;
      if (PERMANENT.includes(msg.code)) {
        target.state = "failed";
        return target._emit("error", err);
      }
      target._emit("error", err);
      const ceil = Math.min(this._o.maxDelay, this._o.minDelay * 2 ** ++target._tries);
      const again = () => this._sendSubscribe(target);
      target._again = this._setTimeout(again, ceil / 2 + (this._random() * ceil) / 2);
    }
  }

  // The silence watchdog: one timer, never re-armed per message. It pings after
  // `pingAfter` of silence and gives up `pongTimeout` after an unanswered ping.
  _armWatch(ms) {
    this._clearTimeout(this._watch);
    this._watch = this._setTimeout(() => this._checkSilence(), Math.max(ms, 0));
  }

  _checkSilence() {
    const o = this._o;
    const now = this._now();
    if (this.state !== "connected") return;
    if (this._pingAt !== null) {
      if (now - this._pingAt >= o.pongTimeout) return this._abandon("no answer to ping");
      return this._armWatch(this._pingAt + o.pongTimeout - now);
    }
    if (now - this._lastRx >= o.pingAfter) return this._probe();
    this._armWatch(this._lastRx + o.pingAfter - now);
  }

  // An application ping now (unless one is out): browsers never show WebSocket pings.
  _probe() {
    if (this.state !== "connected" || this._pingAt !== null) return;
    this._pingAt = this._now();
    this._send({ op: "ping" });
    this._armWatch(this._o.pongTimeout);
  }

  // Gives up on a socket that may never report its end (dead path, hung connect).
  _abandon(reason) {
    const ws = this._ws;
    if (!ws) return;
    this._ws = null;
    try {
      ws.close();
    } catch (_) {
      // already closing
    }
    this._lost({ code: this._openedAt === null ? 1006 : 1011, reason, status: 0 }, ws);
  }

  _lost({ code, reason, status }, abandoned) {
    if (!abandoned) this._ws = null;
    this._clearTimeout(this._timer);
    this._clearTimeout(this._watch);
    this._timer = this._watch = null;
    this._pending.clear();
    for (const sub of [...this._subs.values(), this._user]) {
      if (!sub) continue;
      this._clearTimeout(sub._again);
      if (code === 1013 && sub.state === "pending" && sub._recovering) sub._giveUp = true;
      if (sub.state === "subscribed") sub.state = "pending";
    }
    if (this.state === "closed") return;
    const opened = this._openedAt !== null;
    if (!opened) this._failedOpens++;
    if (status) {
      // The upgrade was refused and we could see why (Node `ws`; never in a browser).
      const retryable = status >= 500 || status === 408 || status === 429;
      if (!retryable && !(status === 401 && this._refused++ === 0)) {
        return this._stop({ reason: "refused", status });
      }
      if (status === 401) return this._retry({ code, reason, status }, opened, 0);
    }
    if (FATAL[code]) return this._stop({ reason: FATAL[code], code });
    this._retry({ code, reason, status }, opened);
  }

  // Schedules the next attempt on the next URL. Full jitter: a uniform delay in
  // [0, min(maxDelay, minDelay * 2^attempt)); 1001/1011/1012 use at least quickSpread;
  // 1013 starts from attempt SLOW_ATTEMPT and waits at least half the ceiling.
  _retry(detail, opened, fixedDelay) {
    const o = this._o;
    const r = this._random();
    const code = detail.code;
    if (opened && code !== 1013 && this._now() - this._openedAt >= o.stableAfter) this._attempt = 0;
    if (code === 1013) this._attempt = Math.max(this._attempt, SLOW_ATTEMPT);
    const ceil = Math.min(o.maxDelay, o.minDelay * 2 ** this._attempt);
    this._attempt = Math.min(this._attempt + 1, 32);
    let delay = r * ceil;
    if (QUICK.includes(code)) delay = r * Math.max(o.quickSpread, ceil);
    if (code === 1013) delay = ceil / 2 + delay / 2;
    if (fixedDelay !== undefined) delay = fixedDelay;
    this._lastCode = code;
    this._urlIndex = (this._urlIndex + 1) % this._urls.length;
    const offline = this._offline();
    this._setState("disconnected", { ...detail, opened, delay: offline ? null : delay, offline });
    if (!opened && code === 1006 && this._failedOpens >= o.suspectAfter) {
      // A refused upgrade and an unreachable gateway look the same to a browser (1006
      // before open); say so, and let getToken (told failedOpens) decide to stop.
      this._emit("error", { type: "unreachable_or_refused", failedOpens: this._failedOpens });
    }
    this._due = this._now() + delay;
    if (!offline) this._timer = this._setTimeout(() => this._connect(), delay);
  }

  // Back online: retry at once (spread over minDelay) instead of waiting out the backoff.
  _online() {
    if (this.state !== "disconnected") return;
    this._clearTimeout(this._timer);
    this._timer = this._setTimeout(() => this._connect(), this._random() * this._o.minDelay);
  }

  // The page is visible again: check a connection that may have died while it was hidden
  // (or frozen), and cut a long wait short unless the gateway asked us to slow down.
  _visible() {
    if (this.state === "connected") return this._probe();
    if (this.state === "disconnected" && this._lastCode !== 1013 && !this._offline()) {
      if (this._due - this._now() > this._o.minDelay) this._online();
    }
  }

  _stop(detail) {
    if (this.state === "closed") return;
    this._attemptId = (this._attemptId || 0) + 1;
    this._clearTimeout(this._timer);
    this._clearTimeout(this._watch);
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      try {
        ws.close(1000);
      } catch (_) {
        // already closing
      }
    }
    this._listen(false);
    if (detail.reason !== "client") this._emit("error", { type: detail.reason, ...detail });
    this._setState("closed", detail);
  }
}
