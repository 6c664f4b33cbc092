// Fake sockets, a fake clock and a fake browser window for the unit tests of pingwheel.js.

/** A clock whose time moves only when a test advances it; timers fire in deadline order. */
export class FakeClock {
  constructor() {
    this.time = 0;
    this.timers = new Map(); // id -> { at, fn }
    this.nextId = 1;
    this.now = () => this.time;
    this.setTimeout = (fn, ms) => {
      const id = this.nextId++;
      this.timers.set(id, { at: this.time + Math.max(0, ms), fn, id });
      return id;
    };
    this.clearTimeout = (id) => {
      this.timers.delete(id);
    };
  }

  /** Runs every timer due within `ms`, in order (timers they set included), then settles. */
  async advance(ms) {
    const end = this.time + ms;
    await settle();
    for (;;) {
      let next = null;
      for (const t of this.timers.values()) if (t.at <= end && (!next || t.at < next.at || (t.at === next.at && t.id < next.id))) next = t;
      if (!next) break;
      this.timers.delete(next.id);
      this.time = next.at;
      next.fn();
      await settle();
    }
    this.time = end;
  }

  /** Pending timers' delays from now, sorted. */
  pending() {
    return [...this.timers.values()].map((t) => t.at - this.time).sort((a, b) => a - b);
  }
}

/** Lets promise callbacks (an awaited getToken) run. */
export async function settle() {
  for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
}

/** A WHATWG-style WebSocket the test drives by hand; every instance is recorded. */
export function fakeWebSocketClass() {
  class FakeWebSocket {
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.sent = [];
      this.closedWith = null;
      this.onopen = this.onmessage = this.onerror = this.onclose = null;
      FakeWebSocket.instances.push(this);
    }
    send(text) {
      if (this.closedWith) throw new Error("send on a closed socket");
      this.sent.push(JSON.parse(text));
    }
    close(code) {
      this.closedWith = { code };
    }
    // --- what the server / network does ---
    open() {
      this.onopen && this.onopen({});
    }
    receive(msg) {
      this.onmessage && this.onmessage({ data: typeof msg === "string" ? msg : JSON.stringify(msg) });
    }
    serverClose(code, reason = "") {
      this.onclose && this.onclose({ code, reason, wasClean: true });
    }
    /** What a browser shows for a refused upgrade or an unreachable host. */
    fail() {
      this.onerror && this.onerror({ type: "error" });
      this.onclose && this.onclose({ code: 1006, reason: "", wasClean: false });
    }
    /** What Node's `ws` package shows for a refused upgrade. */
    refuse(status) {
      const error = new Error(`Unexpected server response: ${status}`);
      this.onerror && this.onerror({ type: "error", message: error.message, error });
      this.onclose && this.onclose({ code: 1006, reason: "", wasClean: false });
    }
    /** Messages of one op sent so far. */
    ops(op) {
      return this.sent.filter((m) => m.op === op);
    }
  }
  FakeWebSocket.instances = [];
  FakeWebSocket.last = () => FakeWebSocket.instances[FakeWebSocket.instances.length - 1];
  return FakeWebSocket;
}

/** A browser window with online/offline and page visibility under the test's control. */
export class FakeWindow {
  constructor() {
    this.listeners = {};
    this.navigator = { onLine: true };
    const doc = { visibilityState: "visible", listeners: {} };
    doc.addEventListener = (type, fn) => (doc.listeners[type] ||= []).push(fn);
    doc.removeEventListener = (type, fn) => (doc.listeners[type] = (doc.listeners[type] || []).filter((f) => f !== fn));
    this.document = doc;
  }
  addEventListener(type, fn) {
    (this.listeners[type] ||= []).push(fn);
  }
  removeEventListener(type, fn) {
    this.listeners[type] = (this.listeners[type] || []).filter((f) => f !== fn);
  }
  goOffline() {
    this.navigator.onLine = false;
    for (const fn of this.listeners.offline || []) fn({});
  }
  goOnline() {
    this.navigator.onLine = true;
    for (const fn of this.listeners.online || []) fn({});
  }
  setVisibility(state) {
    this.document.visibilityState = state;
    for (const fn of this.document.listeners.visibilitychange || []) fn({});
  }
  listenerCount() {
    const count = (l) => Object.values(l).reduce((n, fns) => n + fns.length, 0);
    return count(this.listeners) + count(this.document.listeners);
  }
}
