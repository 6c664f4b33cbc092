"""Fakes for the unit tests of pingwheel_client: a clock the test moves, and a network
whose connections the test drives by hand (real ``websockets`` exception types)."""

from __future__ import annotations

import asyncio
import functools
import heapq
import json
from collections import deque
from typing import Any, Optional

from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Close
from websockets.http11 import Response


def run(test):
    """Runs an async test function in a fresh event loop."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 30))

    return wrapper


async def settle() -> None:
    """Lets every ready task run until nothing is left to do right now."""
    for _ in range(30):
        await asyncio.sleep(0)


class FakeClock:
    """``now`` and ``sleep`` on a clock that moves only in :meth:`advance`."""

    def __init__(self) -> None:
        self.t = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future]] = []
        self._seq = 0

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._sleepers, (self.t + max(0.0, seconds), self._seq, future))
        await future

    def pending(self) -> list[float]:
        """Delays of the sleepers still waiting, from now, sorted."""
        return sorted(at - self.t for at, _, f in self._sleepers if not f.done())

    async def advance(self, seconds: float) -> None:
        """Wakes every sleeper due within ``seconds``, in order, letting tasks run between."""
        end = self.t + seconds
        await settle()
        while True:
            while self._sleepers and self._sleepers[0][2].done():
                heapq.heappop(self._sleepers)  # cancelled
            if not self._sleepers or self._sleepers[0][0] > end:
                break
            at, _, future = heapq.heappop(self._sleepers)
            self.t = at
            future.set_result(None)
            await settle()
        self.t = end
        await settle()


class FakeConnection:
    """An open connection: ``send``/``recv``/``close`` like websockets' ClientConnection."""

    _DROP = object()

    def __init__(self, url: str, subprotocols: list[str]):
        self.url = url
        self.subprotocols = subprotocols
        self.sent: list[dict] = []
        self.closed_with: Optional[int] = None
        self._incoming: asyncio.Queue = asyncio.Queue()

    async def send(self, text: str) -> None:
        if self.closed_with is not None:
            raise ConnectionClosed(None, Close(self.closed_with, ""))
        self.sent.append(json.loads(text))

    async def recv(self) -> str:
        item = await self._incoming.get()
        if item is self._DROP:
            raise ConnectionClosed(None, None)
        if isinstance(item, Close):
            raise ConnectionClosed(item, None)
        return item

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closed_with is None:
            self.closed_with = code

    # --- what the server / network does ---
    def receive(self, msg: Any) -> None:
        self._incoming.put_nowait(msg if isinstance(msg, str) else json.dumps(msg))

    def server_close(self, code: int, reason: str = "") -> None:
        self._incoming.put_nowait(Close(code, reason))

    def drop(self) -> None:
        """The TCP connection ends without a close frame (1006)."""
        self._incoming.put_nowait(self._DROP)

    def ops(self, op: str) -> list[dict]:
        return [m for m in self.sent if m.get("op") == op]


class FakeNetwork:
    """The ``connect`` function: each attempt opens a :class:`FakeConnection` unless the
    next entry of :attr:`plan` (or :attr:`default`) says ``("refuse", status)``,
    ``"unreachable"`` or ``"hang"``."""

    def __init__(self) -> None:
        self.attempts: list[tuple[str, list[str], dict]] = []
        self.connections: list[FakeConnection] = []
        self.plan: deque = deque()
        self.default: Any = "open"

    async def connect(self, url: str, subprotocols: list[str], **kwargs: Any) -> FakeConnection:
        self.attempts.append((url, subprotocols, kwargs))
        behaviour = self.plan.popleft() if self.plan else self.default
        if behaviour == "hang":
            await asyncio.get_running_loop().create_future()
        if behaviour == "unreachable":
            raise ConnectionRefusedError(111, "Connection refused")
        if isinstance(behaviour, tuple) and behaviour[0] == "refuse":
            status = behaviour[1]
            body = f"refused with {status}\n".encode()
            raise InvalidStatus(Response(status, "Refused", Headers(), body))
        connection = FakeConnection(url, subprotocols)
        self.connections.append(connection)
        return connection

    @property
    def last(self) -> FakeConnection:
        return self.connections[-1]
