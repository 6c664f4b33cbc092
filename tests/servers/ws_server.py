#!/usr/bin/env python3
"""A WebSocket server nobody on the pingwheel team wrote: the Python ``websockets``
library with its own keepalive, for checking that ``pingwheel-loadtest`` works against
any server.

Usage::

    ws_server.py [--host 127.0.0.1] [--port 0] [--ping-interval 1] [--ping-timeout 20] [--echo]

Prints ``ready listen=HOST:PORT`` on stdout once it accepts connections, then serves
until SIGTERM or SIGINT. Without ``--echo`` incoming messages are read and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from websockets.asyncio.server import ServerConnection, serve


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--ping-interval", type=float, default=20.0, help="seconds; 0 disables keepalive"
    )
    parser.add_argument("--ping-timeout", type=float, default=20.0, help="seconds")
    parser.add_argument("--echo", action="store_true", help="echo text and binary messages")
    return parser.parse_args(argv)


async def main(args: argparse.Namespace) -> None:
    async def handler(connection: ServerConnection) -> None:
        async for message in connection:
            if args.echo:
                await connection.send(message)

    stop = asyncio.get_running_loop().create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set_result, None)
    async with serve(
        handler,
        args.host,
        args.port,
        ping_interval=args.ping_interval or None,
        ping_timeout=args.ping_timeout or None,
        max_size=1 << 20,
        compression=None,
        backlog=4096,
    ) as server:
        host, port = server.sockets[0].getsockname()[:2]
        print(f"ready listen={host}:{port}", flush=True)
        await stop


if __name__ == "__main__":
    asyncio.run(main(parse_args(sys.argv[1:])))
