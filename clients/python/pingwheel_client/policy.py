"""The client's decisions, free of IO: when to reconnect, and which deliveries to hand on.

:class:`Reconnect` turns the end of a connection (close code, HTTP status of a refused
upgrade, how long it was open) into "retry after this delay" or "stop, for this reason".
:class:`Position` keeps one channel's last ``(seq, epoch)`` and decides, for each
``subscribed`` reply and each delivery, what the handler gets. Both mirror
``clients/js/pingwheel.js`` rule for rule; docs/clients.md states the rules.
"""

from __future__ import annotations

import random as _random
from dataclasses import dataclass
from typing import Callable, Optional

#: 1001 going away (drain), 1011 keepalive timeout, 1012 restart: back soon, spread out.
QUICK_CODES = frozenset({1001, 1011, 1012})
#: Retrying cannot fix these: 1008 policy violation, and the "fix the client" codes.
FATAL_CODES = {1002: "protocol", 1003: "protocol", 1007: "protocol", 1008: "policy",
               1009: "protocol", 1010: "protocol"}
#: A subscribe refused with one of these is not retried before the next connection.
PERMANENT_ERRORS = frozenset({"forbidden", "invalid_channel", "too_many_subscriptions",
                              "bad_request", "bad_json", "unknown_op"})
#: 1013 (slow consumer) backs off from at least this attempt (2^3 * min_delay = 4 s ceiling).
SLOW_ATTEMPT = 3
#: The attempt counter stops here (the ceiling is long at max_delay by then).
MAX_ATTEMPT = 32
#: The per-user stream's channel name.
USER = "#user"


@dataclass(frozen=True)
class Tunables:
    """Delays and timeouts, in seconds (the JS client's DEFAULTS, in ms there)."""

    #: Backoff ceiling of the first retry; it doubles per failed attempt ...
    min_delay: float = 0.5
    #: ... up to this.
    max_delay: float = 30.0
    #: After close 1001/1011/1012 the next attempt is at a uniform point of [0, this).
    quick_spread: float = 5.0
    #: A connection open this long resets the backoff (not after 1013).
    stable_after: float = 10.0
    #: Silence before an application ping ``{"op":"ping"}`` ...
    ping_after: float = 25.0
    #: ... and how long its answer may take: a dead path is noticed within the sum.
    pong_timeout: float = 10.0
    #: From starting a connect to the open connection.
    connect_timeout: float = 10.0


@dataclass(frozen=True)
class Decision:
    """What to do after a connection ended: ``stop`` is a reason, or ``delay`` applies."""

    delay: float = 0.0
    stop: Optional[str] = None


class Reconnect:
    """Backoff state across attempts: exponential with full jitter, reset after a stable
    connection, the close code and (where visible) the HTTP status deciding.

    Full jitter: the delay is a uniform point of ``[0, min(max_delay, min_delay * 2**n))``,
    ``n`` counting failed attempts since the last stable connection; 1001/1011/1012 use a
    ceiling of at least ``quick_spread``; 1013 starts from ``n = SLOW_ATTEMPT`` and waits at
    least half the ceiling. A 401 is retried once at once (``get_token`` then mints a fresh
    token); a second 401 in a row, or a 4xx other than 408/429, stops (``"refused"``).
    """

    def __init__(self, tunables: Tunables = Tunables(),
                 random: Callable[[], float] = _random.random):
        self.tunables = tunables
        self.random = random
        #: Failed attempts since the last stable connection.
        self.attempt = 0
        #: Attempts in a row that never reached an open connection.
        self.failed_opens = 0
        #: HTTP 401 refusals in a row.
        self.refused = 0

    def opened(self) -> None:
        """The connection is open: refusals and failed opens are over."""
        self.failed_opens = 0
        self.refused = 0

    def after(self, code: int, opened: bool, uptime: float = 0.0,
              status: int = 0) -> Decision:
        """The decision after a connection ended with close ``code`` (1006: no close frame,
        or never opened), having been open for ``uptime`` seconds, or refused at the
        upgrade with HTTP ``status``."""
        if not opened and code == 1006:
            self.failed_opens += 1
        if status:
            retryable = status >= 500 or status in (408, 429)
            first_401 = status == 401 and self.refused == 0
            if status == 401:
                self.refused += 1
            if not retryable and not first_401:
                return Decision(stop="refused")
            if first_401:
                self._ceiling(code, opened, uptime)
                return Decision(delay=0.0)
        if code in FATAL_CODES:
            return Decision(stop=FATAL_CODES[code])
        r = self.random()
        ceiling = self._ceiling(code, opened, uptime)
        delay = r * ceiling
        if code in QUICK_CODES:
            delay = r * max(self.tunables.quick_spread, ceiling)
        if code == 1013:
            delay = ceiling / 2 + delay / 2
        return Decision(delay=delay)

    def _ceiling(self, code: int, opened: bool, uptime: float) -> float:
        t = self.tunables
        if opened and code != 1013 and uptime >= t.stable_after:
            self.attempt = 0
        if code == 1013:
            self.attempt = max(self.attempt, SLOW_ATTEMPT)
        ceiling = min(t.max_delay, t.min_delay * 2 ** self.attempt)
        self.attempt = min(self.attempt + 1, MAX_ATTEMPT)
        return ceiling

    def resubscribe_delay(self, tries: int) -> float:
        """Delay before retrying a subscribe refused for a passing reason (``rate_limited``,
        ``engine_unavailable``) for the ``tries``-th time: equal jitter."""
        t = self.tunables
        ceiling = min(t.max_delay, t.min_delay * 2 ** min(tries, MAX_ATTEMPT))
        return ceiling / 2 + self.random() * ceiling / 2


@dataclass(frozen=True)
class Recovered:
    """A ``recovered`` event: ``recovered=False`` means messages may be missing (reload this
    channel's state from your backend); ``reason`` says why."""

    recovered: bool
    seq: int
    epoch: str
    #: ``None`` when recovered; else ``"not_recovered"`` (the gateway said so),
    #: ``"epoch_changed"`` or ``"gap"`` (seen in the deliveries), or ``"recovery_failed"``
    #: (the recovery was closed as a slow consumer before its reply; not asked again).
    reason: Optional[str] = None


class Position:
    """One channel's last ``(seq, epoch)`` and the rules that make its deliveries exactly
    once and in order: a delivery of the same epoch at or below ``seq`` is a duplicate and
    dropped; a new epoch, or a gap, is reported as ``Recovered(False, ...)`` and then
    delivered (positions reset). Before the first reply of a fresh subscribe nothing is
    delivered (the gateway sends nothing then), except on the always-on user stream."""

    def __init__(self, channel: str, seq: Optional[int] = None, epoch: Optional[str] = None):
        self.channel = channel
        self.seq = seq
        self.epoch = epoch
        #: ``pending`` (subscribe not yet answered), ``subscribed``, ``failed``, ``unsubscribed``.
        self.state = "pending"
        self._recovering = False  # the pending subscribe asked for a recovery
        self._give_up = False  # the next one asks for none (see since())

    @property
    def known(self) -> bool:
        return self.epoch is not None

    def since(self) -> Optional[dict]:
        """The ``since`` of the next subscribe: the position, unless recovering it already
        ended in a slow-consumer close (1013) before the reply (the backlog does not fit
        the gateway's queue): then none, and the reply is reported as not recovered."""
        self._recovering = self.known and not self._give_up
        return {"seq": self.seq, "epoch": self.epoch} if self._recovering else None

    def position(self) -> Optional[dict]:
        """``{"seq": .., "epoch": ..}``, or ``None`` before the first reply or delivery."""
        return {"seq": self.seq, "epoch": self.epoch} if self.known else None

    def lost(self, code: int) -> None:
        """The connection ended with ``code`` while this subscription was on it."""
        if code == 1013 and self.state == "pending" and self._recovering:
            self._give_up = True
        if self.state == "subscribed":
            self.state = "pending"

    def subscribed(self, msg: dict) -> Optional[Recovered]:
        """Applies a ``subscribed`` reply; returns the ``recovered`` event it implies."""
        self.state = "subscribed"
        had = self.known
        gave_up, self._give_up, self._recovering = self._give_up, False, False
        recovered = msg.get("recovered")
        if not had or gave_up or recovered is False:
            self.seq, self.epoch = msg.get("seq"), msg.get("epoch")
        if gave_up:
            return Recovered(False, msg.get("seq"), msg.get("epoch"), "recovery_failed")
        if had and recovered is not None:
            return Recovered(bool(recovered), msg.get("seq"), msg.get("epoch"),
                             None if recovered else "not_recovered")
        return None

    def delivery(self, seq: int, epoch: str) -> tuple[bool, Optional[Recovered]]:
        """Whether to hand the delivery ``(seq, epoch)`` on, and the event it implies."""
        event = None
        if not self.known:
            if self.state == "pending" and self.channel != USER:
                return False, None
        elif epoch == self.epoch and seq <= self.seq:
            return False, None
        elif epoch != self.epoch or seq > self.seq + 1:
            reason = "epoch_changed" if epoch != self.epoch else "gap"
            event = Recovered(False, seq, epoch, reason)
        self.seq, self.epoch = seq, epoch
        return True, event
