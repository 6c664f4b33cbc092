// Type declarations for pingwheel.js (docs/clients.md describes the behaviour).

/** A position on a channel: the last seq a client has, and the epoch it belongs to. */
export interface Position {
  seq: number;
  epoch: string;
}

/** What a handler is told besides the data. */
export interface DeliveryInfo extends Position {
  /** The channel name; `"#user"` for the per-user stream. */
  channel: string;
}

/** Delays and timeouts in milliseconds. */
export interface Tunables {
  /** Backoff ceiling of the first retry (it doubles per failed attempt). Default 500. */
  minDelay: number;
  /** Largest backoff ceiling. Default 30000. */
  maxDelay: number;
  /** After close 1001/1011/1012 the next attempt is at a uniform point of [0, quickSpread). Default 5000. */
  quickSpread: number;
  /** A connection open at least this long resets the backoff. Default 10000. */
  stableAfter: number;
  /** Silence before an application ping. Default 25000. */
  pingAfter: number;
  /** How long a ping's answer may take before the connection is given up. Default 10000. */
  pongTimeout: number;
  /** From opening the socket to its open event. Default 10000. */
  connectTimeout: number;
  /** Failed opens in a row (close 1006 before open) before "unreachable_or_refused" is reported. Default 3. */
  suspectAfter: number;
}

export const DEFAULTS: Readonly<Tunables>;

/** What `getToken` is told about the attempt it is called for. */
export interface TokenContext {
  /** Attempts in a row that closed before open (a browser cannot tell a refused token from a down gateway). */
  failedOpens: number;
  /** The last attempt was refused with HTTP 401 (only where the status is visible: Node `ws`). */
  refused: boolean;
}

/** The constructor of a WHATWG-style WebSocket (the browser's, Node 22's, or the `ws` package's). */
export type WebSocketConstructor = new (url: string, protocols: string[]) => {
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: any }) => void) | null;
  onerror: ((ev: any) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
};

export interface ClientOptions extends Partial<Tunables> {
  /** Gateway URLs; the client starts with the first and moves to the next on every reconnect. */
  urls?: string[];
  /** One gateway URL (instead of `urls`). */
  url?: string;
  /** Called before every (re)connect. Return the JWT; `null` stops the client ("no_token"); a throw is retried. Omit it in dev mode. */
  getToken?: (context: TokenContext) => string | null | undefined | Promise<string | null | undefined>;
  /** Default: `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor;
  /** For tests: the clock (ms), timers, randomness and the browser window (online/offline, visibility). */
  now?: () => number;
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (handle: unknown) => void;
  random?: () => number;
  window?: any;
}

export type ClientState = "connecting" | "connected" | "disconnected" | "closed";

/** Details of a state change. */
export interface StateDetail {
  /** connecting, connected: the URL. */
  url?: string;
  /** disconnected: the close code (1006 for a failed or abandoned socket, 0 when getToken threw). */
  code?: number;
  reason?: string;
  /** disconnected: whether the connection had opened. */
  opened?: boolean;
  /** disconnected: ms until the next attempt (`null` while the browser is offline: it waits for `online`). */
  delay?: number | null;
  offline?: boolean;
  /** The HTTP status of a refused upgrade, where visible. */
  status?: number;
}

/** Why a client closed for good (`state` "closed"). */
export interface ClosedDetail {
  reason: "client" | "refused" | "policy" | "protocol" | "no_token";
  code?: number;
  status?: number;
}

export interface ClientError {
  type: "token" | "connect" | "send" | "protocol" | "server" | "handler" | "unreachable_or_refused" | "refused" | "policy" | "no_token";
  error?: unknown;
  code?: number | string;
  status?: number;
  message?: string;
  failedOpens?: number;
}

export interface RecoveredEvent extends Position {
  /** false: messages may be missing; reload this channel's state from your backend. */
  recovered: boolean;
  /** Why not: "not_recovered" (the gateway said so), "epoch_changed", "gap", or
   * "recovery_failed" (the recovery was closed as a slow consumer before its reply). */
  reason?: "not_recovered" | "epoch_changed" | "gap" | "recovery_failed";
}

export interface SubscribedEvent extends Position {
  recovered?: boolean;
}

export interface SubscriptionError {
  code: string;
  message: string;
}

export type Handler = (data: any, info: DeliveryInfo) => void;

export class Subscription {
  readonly channel: string;
  readonly state: "pending" | "subscribed" | "failed" | "unsubscribed";
  /** The position of the last message handed to the handler (or the reply's top), or `null`. */
  readonly position: Position | null;
  on(event: "recovered", fn: (e: RecoveredEvent) => void): () => void;
  on(event: "subscribed", fn: (e: SubscribedEvent) => void): () => void;
  on(event: "error", fn: (e: SubscriptionError) => void): () => void;
  off(event: string, fn: (...args: any[]) => void): void;
  unsubscribe(): void;
}

export class PingwheelClient {
  constructor(options: ClientOptions);
  readonly state: ClientState;
  subscribe(channel: string, handler: Handler, options?: { since?: Position }): Subscription;
  onUser(handler: Handler, options?: { since?: Position }): Subscription;
  on(event: "state", fn: (state: ClientState, detail: StateDetail & Partial<ClosedDetail>) => void): () => void;
  on(event: "error", fn: (e: ClientError) => void): () => void;
  off(event: string, fn: (...args: any[]) => void): void;
  close(): void;
}
