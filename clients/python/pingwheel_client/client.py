"""The asyncio driver: one connection at a time, reconnecting by :mod:`.policy`'s rules.

One task runs the connection loop (token, connect, session, decision, wait); while a
connection is open, a reader hands messages to the handlers in order and a watchdog sends
an application ping after ``ping_after`` of silence and gives the connection up when
nothing arrives within ``pong_timeout`` after it. The clock, the ``connect`` function and
the random source can be replaced, which is how the unit tests drive it.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import random as _random
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional, Union
from urllib.parse import quote

from websockets.asyncio.client import connect as _ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .policy import PERMANENT_ERRORS, USER, Position, Recovered, Reconnect, Tunables

log = logging.getLogger("pingwheel_client")


@dataclass(frozen=True)
class Delivery:
    """What a handler is told besides the data."""

    channel: str
    seq: int
    epoch: str


@dataclass(frozen=True)
class TokenContext:
    """What ``get_token`` is told about the attempt it is called for."""

    #: Attempts in a row that never reached an open connection.
    failed_opens: int
    #: The last attempt was refused with HTTP 401 (an expired token, say).
    refused: bool


class Clock:
    """Real time: ``time.monotonic`` and ``asyncio.sleep``."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _Emitter:
    def __init__(self) -> None:
        self._handlers: dict[str, list[Callable[..., Any]]] = {}

    def on(self, event: str, fn: Callable[..., Any]) -> Callable[[], None]:
        """Calls ``fn`` on every ``event``; returns a function that removes it."""
        self._handlers.setdefault(event, []).append(fn)
        return lambda: self.off(event, fn)

    def off(self, event: str, fn: Callable[..., Any]) -> None:
        """Removes ``fn`` from ``event``."""
        self._handlers[event] = [f for f in self._handlers.get(event, []) if f is not fn]

    def _emit(self, event: str, *args: Any) -> None:
        for fn in list(self._handlers.get(event, [])):
            try:
                fn(*args)
            except Exception:  # an event listener must not break the connection loop
                log.exception("pingwheel_client: a %r listener raised", event)


Handler = Callable[[Any, Delivery], Union[None, Awaitable[None]]]


class Subscription(_Emitter):
    """One channel (or the per-user stream) and its position; made by
    :meth:`PingwheelClient.subscribe` / :meth:`PingwheelClient.on_user`.

    Events: ``"recovered"`` (a :class:`~.policy.Recovered`), ``"subscribed"`` (the reply,
    a dict with ``seq``, ``epoch`` and maybe ``recovered``), ``"error"`` (a dict with
    ``code`` and ``message``: the gateway refused the subscribe).
    """

    def __init__(self, client: "PingwheelClient", channel: str, handler: Handler,
                 since: Optional[dict]):
        super().__init__()
        self._client = client
        self._handler = handler
        self._pos = Position(channel, since["seq"] if since else None,
                             since["epoch"] if since else None)
        self._tries = 0
        self._retry: Optional[asyncio.Task] = None

    @property
    def channel(self) -> str:
        return self._pos.channel

    @property
    def state(self) -> str:
        """``pending``, ``subscribed``, ``failed`` or ``unsubscribed``."""
        return self._pos.state

    @property
    def position(self) -> Optional[dict]:
        """``{"seq": .., "epoch": ..}`` of the last message handed on, or ``None``."""
        return self._pos.position()

    def unsubscribe(self) -> None:
        """Stops deliveries to this handler (and tells the gateway, for a channel)."""
        if self._pos.state != "unsubscribed":
            self._pos.state = "unsubscribed"
            self._client._unsubscribe(self)


class PingwheelClient(_Emitter):
    """A pingwheel connection that reconnects, resubscribes and recovers by itself.

    ``urls`` (or ``url``) are tried in turn, one more on every reconnect. ``get_token`` is
    called before every connect (``get_token(context)`` or ``get_token()``, sync or async):
    return the JWT, ``None`` to stop (``"no_token"``); an exception is retried with backoff.
    The tunables of :class:`~.policy.Tunables` are keyword arguments (seconds).
    ``connect_kwargs`` go to ``websockets.asyncio.client.connect`` (``ssl``, ``proxy``, ...).

    Events: ``"state"`` (``state, detail``: ``connecting``, ``connected``,
    ``disconnected``, ``closed``) and ``"error"`` (a dict with ``type``).
    Use ``async with PingwheelClient(...) as client:`` or :meth:`start` / :meth:`close`.
    """

    def __init__(self, urls: Optional[list[str]] = None, *, url: Optional[str] = None,
                 get_token: Optional[Callable[..., Any]] = None,
                 connect_kwargs: Optional[dict] = None,
                 connect: Optional[Callable[..., Awaitable[Any]]] = None,
                 clock: Optional[Clock] = None,
                 random: Callable[[], float] = _random.random,
                 **tunables: float):
        super().__init__()
        self._urls = list(urls or ([url] if url else []))
        if not self._urls:
            raise ValueError("pingwheel_client: no urls")
        self._get_token = get_token
        self._token_takes_context = bool(get_token) and _takes_an_argument(get_token)
        self._connect = connect or _ws_connect
        self._connect_kwargs = dict(connect_kwargs or {})
        self._clock = clock or Clock()
        self.tunables = Tunables(**tunables)
        self._policy = Reconnect(self.tunables, random)
        #: ``connecting``, ``connected``, ``disconnected`` or ``closed``.
        self.state = "disconnected"
        self._subs: dict[str, Subscription] = {}
        self._user: Optional[Subscription] = None
        self._user_in_url: Optional[Subscription] = None
        self._pending: dict[int, Subscription] = {}
        self._next_id = 1
        self._index = 0
        self._ws: Any = None
        self._closed = False
        self._stop_requested: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None
        self._background: set[asyncio.Task] = set()
        self._last_rx = 0.0
        self._ping_at: Optional[float] = None
        self._handling = False

    # --- public surface -------------------------------------------------------------

    def subscribe(self, channel: str, handler: Handler, *,
                  since: Optional[dict] = None) -> Subscription:
        """Subscribes ``handler(data, Delivery)``; ``since={"seq":..,"epoch":..}`` resumes
        from a kept position. Deliveries reach the handler in seq order, once each."""
        if channel in self._subs:
            raise ValueError(f"pingwheel_client: already subscribed to {channel}")
        sub = Subscription(self, channel, handler, since)
        self._subs[channel] = sub
        if self.state == "connected":
            self._send_subscribe(sub)
        return sub

    def on_user(self, handler: Handler, *, since: Optional[dict] = None) -> Subscription:
        """Handles the per-user stream (deliveries on ``#user``), recovered across reconnects."""
        if self._user is not None:
            raise ValueError("pingwheel_client: on_user was already called")
        self._user = Subscription(self, USER, handler, since)
        if self.state == "connected":
            self._send_subscribe(self._user)
        return self._user

    def start(self) -> None:
        """Starts connecting (needs a running event loop)."""
        if self._task is None and not self._closed:
            self._stop_requested = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Closes for good (the connection with 1000): no reconnect after this."""
        if self._stop_requested is not None:
            self._stop_requested.set()
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            await task
        self._finish("client")
        # Pending sends, subscribe retries, and closes of abandoned connections.
        background = [t for t in self._background if t is not asyncio.current_task()]
        for pending in background:
            pending.cancel()
        await asyncio.gather(*background, return_exceptions=True)

    async def __aenter__(self) -> "PingwheelClient":
        self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # --- the connection loop ---------------------------------------------------------

    def _set_state(self, state: str, **detail: Any) -> None:
        self.state = state
        self._emit("state", state, detail)

    def _finish(self, reason: str, **detail: Any) -> None:
        if self._closed:
            return
        self._closed = True
        if reason != "client":
            self._emit("error", {"type": reason, "reason": reason, **detail})
        self._set_state("closed", reason=reason, **detail)

    async def _run(self) -> None:
        while not self._closed and not self._stop_requested.is_set():
            stop, delay = await self._attempt()
            if stop is not None:
                self._finish(stop[0], **stop[1])
                return
            if self._stop_requested.is_set() or await self._wait(delay):
                return

    async def _attempt(self) -> tuple[Optional[tuple[str, dict]], float]:
        """One connect and session: returns ``((reason, detail), 0)`` to stop, or
        ``(None, delay)`` to retry."""
        url = self._urls[self._index]
        self._set_state("connecting", url=url)
        policy = self._policy
        try:
            token = await self._token()
        except Exception as error:  # get_token's own failure: retry with backoff
            self._emit("error", {"type": "token", "error": error})
            return None, self._disconnected(0, "get_token failed", False, 0)
        if self._get_token is not None and not token:
            return ("no_token", {}), 0.0
        self._user_in_url = self._user
        if self._user is not None:
            pos = self._user._pos
            pos.state = "pending"
            since = pos.since()
            at = f"{since['seq']}:{since['epoch']}" if since else "0:"
            url += ("&" if "?" in url else "?") + "since=" + quote(f"{USER}:{at}", safe="")
        protocols = ["pingwheel.v1"] + ([f"bearer.{token}"] if token else [])
        try:
            ws = await self._open(url, protocols)
        except InvalidStatus as refusal:
            status = refusal.response.status_code
            body = refusal.response.body.decode(errors="replace").strip()
            decision = policy.after(1006, False, status=status)
            if decision.stop:
                return (decision.stop, {"status": status, "message": body}), 0.0
            return None, self._disconnected(1006, body, False, status, decision.delay)
        except Exception as error:  # unreachable, reset, timed out, bad handshake
            return None, self._disconnected(1006, str(error) or type(error).__name__, False, 0)
        code, reason, opened_at = await self._session(ws)
        if code is None:  # close() was called
            return None, 0.0
        decision = policy.after(code, True, self._clock.now() - opened_at)
        if decision.stop:
            return (decision.stop, {"code": code}), 0.0
        return None, self._disconnected(code, reason, True, 0, decision.delay)

    def _disconnected(self, code: int, reason: str, opened: bool, status: int,
                      delay: Optional[float] = None) -> float:
        if delay is None:
            decision = self._policy.after(code, opened, 0.0, status)
            delay = decision.delay
        self._index = (self._index + 1) % len(self._urls)
        detail = {"code": code, "reason": reason, "opened": opened, "delay": delay}
        if status:
            detail["status"] = status
        self._set_state("disconnected", **detail)
        return delay

    async def _token(self) -> Optional[str]:
        if self._get_token is None:
            return None
        context = TokenContext(self._policy.failed_opens, self._policy.refused > 0)
        token = self._get_token(context) if self._token_takes_context else self._get_token()
        if inspect.isawaitable(token):
            token = await token
        return token

    async def _open(self, url: str, protocols: list[str]) -> Any:
        kwargs = {"open_timeout": None, "ping_interval": None, **self._connect_kwargs}
        opening = asyncio.ensure_future(self._connect(url, subprotocols=protocols, **kwargs))
        timer = asyncio.ensure_future(self._clock.sleep(self.tunables.connect_timeout))
        done, _ = await asyncio.wait({opening, timer}, return_when=asyncio.FIRST_COMPLETED)
        timer.cancel()
        if opening in done:
            return opening.result()
        opening.cancel()
        raise asyncio.TimeoutError("connect timeout")

    async def _wait(self, delay: float) -> bool:
        """Sleeps ``delay``; True if close() was called meanwhile."""
        sleeper = asyncio.ensure_future(self._clock.sleep(delay))
        stopper = asyncio.ensure_future(self._stop_requested.wait())
        await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        sleeper.cancel()
        stopper.cancel()
        return self._stop_requested.is_set()

    async def _session(self, ws: Any) -> tuple[Optional[int], str, float]:
        """An open connection until it ends: (close code, reason, opened_at); code None
        when close() ended it."""
        self._ws = ws
        opened_at = self._last_rx = self._clock.now()
        self._ping_at = None
        self._policy.opened()
        self._set_state("connected", url=self._urls[self._index])
        for sub in list(self._subs.values()):
            self._send_subscribe(sub)
        if self._user is not None and self._user is not self._user_in_url:
            self._send_subscribe(self._user)
        reader = asyncio.ensure_future(self._read(ws))
        watchdog = asyncio.ensure_future(self._watch(ws))
        stopper = asyncio.ensure_future(self._stop_requested.wait())
        done, _ = await asyncio.wait({reader, watchdog, stopper},
                                     return_when=asyncio.FIRST_COMPLETED)
        for task in (reader, watchdog, stopper):
            task.cancel()
        self._ws = None
        self._pending.clear()
        for sub in list(self._subs.values()) + ([self._user] if self._user else []):
            if sub._retry is not None:
                sub._retry.cancel()
        if stopper in done:
            self._connection_lost(1000)
            await ws.close(1000)
            return None, "", opened_at
        if reader in done and not reader.cancelled() and reader.exception() is None:
            code, reason = reader.result()
            self._connection_lost(code)
            return code, reason, opened_at
        if reader in done and reader.exception() is not None:
            log.warning("pingwheel_client: reading failed: %r", reader.exception())
        # The watchdog gave up (or reading failed): leave the socket to close on its own.
        self._connection_lost(1011)
        self._background_task(ws.close())
        return 1011, "no answer to ping", opened_at

    def _connection_lost(self, code: int) -> None:
        for sub in list(self._subs.values()) + ([self._user] if self._user else []):
            sub._pos.lost(code)

    async def _read(self, ws: Any) -> tuple[int, str]:
        while True:
            try:
                text = await ws.recv()
            except ConnectionClosed as closed:
                frame = closed.rcvd
                return (frame.code, frame.reason) if frame is not None else (1006, "")
            self._last_rx = self._clock.now()
            self._ping_at = None
            if isinstance(text, str):
                await self._message(text)

    async def _watch(self, ws: Any) -> None:
        """Returns when the connection is considered dead."""
        t = self.tunables
        while True:
            now = self._clock.now()
            if self._handling:
                # A handler is still busy with a message: the silence is ours, not the path's.
                self._last_rx, self._ping_at = now, None
            if self._ping_at is not None:
                if now - self._ping_at >= t.pong_timeout:
                    return
                await self._clock.sleep(self._ping_at + t.pong_timeout - now)
            elif now - self._last_rx >= t.ping_after:
                self._ping_at = now
                try:
                    await ws.send('{"op":"ping"}')
                except ConnectionClosed:
                    pass  # the reader reports the close, with its code
            else:
                await self._clock.sleep(self._last_rx + t.ping_after - now)

    # --- messages --------------------------------------------------------------------

    async def _message(self, text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError as error:
            self._emit("error", {"type": "protocol", "error": error, "text": text})
            return
        if not isinstance(msg, dict):
            return
        channel = msg.get("channel")
        sub = self._user if channel == USER else self._subs.get(channel)
        op = msg.get("op")
        if op is None:
            if sub is not None and isinstance(msg.get("seq"), int):
                await self._deliver(sub, msg)
        elif op == "subscribed":
            self._pending.pop(msg.get("id"), None)
            if sub is not None and sub._pos.state != "unsubscribed":
                sub._tries = 0
                event = sub._pos.subscribed(msg)
                sub._emit("subscribed", {k: msg[k] for k in ("seq", "epoch", "recovered")
                                         if k in msg})
                if event is not None:
                    sub._emit("recovered", event)
        elif op == "position_lost":
            # The subscription stays; resubscribing with our position recovers in place.
            if sub is not None and sub._pos.state == "subscribed":
                self._send_subscribe(sub)
        elif op == "error":
            target = self._pending.pop(msg.get("id"), None)
            error = {"code": msg.get("code"), "message": msg.get("message")}
            if target is None:
                self._emit("error", {"type": "server", **error})
            elif target._pos.state != "unsubscribed":
                target._emit("error", error)
                if msg.get("code") in PERMANENT_ERRORS:
                    target._pos.state = "failed"
                else:
                    target._tries += 1
                    delay = self._policy.resubscribe_delay(target._tries)
                    target._retry = self._background_task(self._resubscribe_later(target, delay))

    async def _deliver(self, sub: Subscription, msg: dict) -> None:
        if sub._pos.state == "unsubscribed":
            return
        deliver, event = sub._pos.delivery(msg["seq"], msg.get("epoch"))
        if event is not None:
            sub._emit("recovered", event)
        if not deliver:
            return
        info = Delivery(sub.channel, msg["seq"], msg.get("epoch"))
        self._handling = True
        try:
            result = sub._handler(msg.get("data"), info)
            if inspect.isawaitable(result):
                await result
        except Exception as error:
            if self._handlers.get("error"):
                self._emit("error", {"type": "handler", "error": error})
            else:
                log.exception("pingwheel_client: a handler raised")
        finally:
            self._handling = False

    async def _resubscribe_later(self, sub: Subscription, delay: float) -> None:
        await self._clock.sleep(delay)
        self._send_subscribe(sub)

    def _send_subscribe(self, sub: Subscription) -> None:
        if sub._pos.state == "unsubscribed" or self._ws is None:
            return
        sub._pos.state = "pending"
        request_id = self._next_id
        self._next_id += 1
        self._pending[request_id] = sub
        msg: dict[str, Any] = {"op": "subscribe", "channel": sub.channel, "id": request_id}
        since = sub._pos.since()
        if since is not None:
            msg["since"] = since
        self._send(msg)

    def _unsubscribe(self, sub: Subscription) -> None:
        if sub._retry is not None:
            sub._retry.cancel()
        if sub is self._user:
            self._user = None
        elif self._subs.get(sub.channel) is sub:
            del self._subs[sub.channel]
            if self._ws is not None:
                self._send({"op": "unsubscribe", "channel": sub.channel})

    def _send(self, msg: dict) -> None:
        ws = self._ws
        if ws is None:
            return

        async def send() -> None:
            try:
                await ws.send(json.dumps(msg, separators=(",", ":")))
            except ConnectionClosed:
                pass  # the reader sees the close and reconnects

        self._background_task(send())

    def _background_task(self, coro: Awaitable[Any]) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task


def _takes_an_argument(fn: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
               for p in parameters)
