#!/usr/bin/env python3
"""A small reference implementation of the push contract that ``pingwheel-loadtest push``
drives, for testing the harness independently of the gateway.

* WebSocket clients connect to ``ws://HOST:PORT/?token=<JWT>&channel=<name>``. The token
  is HS256-signed with ``--token-secret`` and must carry ``sub``, an unexpired ``exp`` and
  ``channels`` (``["*"]`` grants every channel); otherwise the upgrade gets 401/403.
  With ``--ack`` every URL channel is acknowledged with ``{"op":"subscribed","channel":..}``
  (``--subscribe url-ack``); a ``{"op":"subscribe","channel":..}`` message is always
  acknowledged that way (``--subscribe op``).
* ``POST http://HOST:HTTP_PORT/v1/publish`` with ``Authorization: Bearer <--api-key>`` and
  ``{"channel":"lt-3","data":{...}}`` sends ``{"channel":"lt-3","seq":N,"data":{...}}`` to
  every subscriber (``seq`` from one counter, increasing per channel) and answers
  ``{"ok":true,"seq":N,"subscribers":K}`` on a keep-alive HTTP/1.1 connection.

Prints ``ready listen=HOST:PORT admin=HOST:PORT`` once both listeners accept.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import signal
import sys
import time
from collections import defaultdict
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.http11 import Request


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verify(token: str, secret: bytes) -> dict | None:
    """The claims of a valid, unexpired HS256 token, else None."""
    try:
        header, claims, signature = token.split(".")
        expected = hmac.new(secret, f"{header}.{claims}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, b64url_decode(signature)):
            return None
        if json.loads(b64url_decode(header)).get("alg") != "HS256":
            return None
        body = json.loads(b64url_decode(claims))
    except (ValueError, json.JSONDecodeError):
        return None
    if not isinstance(body.get("sub"), str) or body.get("exp", 0) < time.time():
        return None
    return body


def granted(claims: dict, channel: str) -> bool:
    return any(p == "*" or p == channel for p in claims.get("channels", []))


class Hub:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.secret = args.token_secret.encode()
        self.channels: dict[str, set[ServerConnection]] = defaultdict(set)
        self.seq = 0

    def process_request(self, connection: ServerConnection, request: Request):
        query = parse_qs(urlsplit(request.path).query)
        claims = verify(query.get("token", [""])[0], self.secret)
        if claims is None:
            return connection.respond(401, "invalid token\n")
        wanted = query.get("channel", [])
        if not all(granted(claims, c) for c in wanted):
            return connection.respond(403, "channel not granted\n")
        connection.claims = claims
        connection.url_channels = wanted
        return None

    async def handler(self, connection: ServerConnection) -> None:
        joined: list[str] = []
        try:
            for channel in connection.url_channels:
                self.channels[channel].add(connection)
                joined.append(channel)
                if self.args.ack:
                    await connection.send(json.dumps({"op": "subscribed", "channel": channel}))
            async for message in connection:
                try:
                    op = json.loads(message)
                except json.JSONDecodeError:
                    continue
                channel = op.get("channel") if isinstance(op, dict) else None
                if op.get("op") == "subscribe" and isinstance(channel, str):
                    if granted(connection.claims, channel):
                        self.channels[channel].add(connection)
                        joined.append(channel)
                        await connection.send(json.dumps({"op": "subscribed", "channel": channel}))
        finally:
            for channel in joined:
                self.channels[channel].discard(connection)

    def publish(self, body: bytes) -> tuple[int, dict]:
        try:
            request = json.loads(body)
            channel = request["channel"]
            data = request["data"]
        except (json.JSONDecodeError, KeyError, TypeError):
            return 400, {"ok": False, "error": "bad body"}
        self.seq += 1
        subscribers = self.channels.get(channel, set())
        message = json.dumps({"channel": channel, "seq": self.seq, "data": data})
        broadcast(subscribers, message)
        return 200, {"ok": True, "seq": self.seq, "subscribers": len(subscribers)}

    async def http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if headers.get("authorization") != f"Bearer {self.args.api_key}":
                    status, reply = 401, {"ok": False, "error": "bad api key"}
                elif method != "POST" or path != "/v1/publish":
                    status, reply = 404, {"ok": False, "error": "not found"}
                else:
                    status, reply = self.publish(body)
                payload = json.dumps(reply).encode()
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()


async def main(args: argparse.Namespace) -> None:
    hub = Hub(args)
    stop = asyncio.get_running_loop().create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set_result, None)
    http = await asyncio.start_server(hub.http, args.host, args.http_port)
    async with serve(
        hub.handler,
        args.host,
        args.port,
        process_request=hub.process_request,
        ping_interval=args.ping_interval or None,
        compression=None,
        backlog=4096,
    ) as server:
        host, port = server.sockets[0].getsockname()[:2]
        admin_host, admin_port = http.sockets[0].getsockname()[:2]
        print(f"ready listen={host}:{port} admin={admin_host}:{admin_port}", flush=True)
        await stop
    http.close()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--http-port", type=int, default=0)
    parser.add_argument("--token-secret", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--ack", action="store_true", help="acknowledge URL channels")
    parser.add_argument("--ping-interval", type=float, default=0.0, help="seconds; 0: none")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args(sys.argv[1:])))
