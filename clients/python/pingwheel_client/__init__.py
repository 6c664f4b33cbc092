"""pingwheel client for asyncio: reconnects, resubscribes with positions, recovers.

    from pingwheel_client import PingwheelClient

    async with PingwheelClient(urls=["ws://a:8080/"], get_token=fetch_token) as client:
        client.subscribe("scores", lambda data, info: print(info.seq, data))
        ...

The rules (backoff, close codes, recovery, ordering) are in docs/clients.md.
"""

from .client import Clock, Delivery, PingwheelClient, Subscription, TokenContext
from .policy import Decision, Position, Reconnect, Recovered, Tunables

__all__ = [
    "Clock",
    "Decision",
    "Delivery",
    "PingwheelClient",
    "Position",
    "Reconnect",
    "Recovered",
    "Subscription",
    "TokenContext",
    "Tunables",
]
