"""pytest fixtures for many gateway nodes over Redis (loaded by ``conftest.py``).

Fixtures
--------
``start_redis``
    A factory: ``start_redis(persistent=False, netns=None) -> RedisServer`` runs
    ``$REDIS_SERVER_BIN`` (or ``redis-server`` on ``PATH``; fails, never skips, when
    missing) on a free port in a fresh directory under ``tmp_path``, with
    ``--save ''`` and no AOF unless ``persistent`` (then AOF with ``fsync always``, so
    :meth:`RedisServer.restart` keeps the data). With ``netns`` (a :class:`Netns`) it
    runs inside that namespace, listening on the namespace's address. Every server is
    killed by PID at teardown.
``start_nodes``
    A factory: ``start_nodes(n, redis_urls, *flags) -> list[Gateway]`` starts ``n``
    gateways with ``--engine redis``, each ``--redis-url`` in ``redis_urls`` and
    ``--node-name node<i>`` (through ``start_gateway``, so they are killed at teardown).
``netns``
    A network namespace with a veth pair to it, created for the test and deleted after:
    the host side ``169.254.K.1/30``, the namespace side ``169.254.K.2/30`` (link-local
    addresses: never routed anywhere). :meth:`Netns.partition` sets the host side down
    (packets stop silently, no RST: what a broken network looks like),
    :meth:`Netns.heal` brings it back. Fails, never skips, when ``ip netns add`` does
    not work (the suite runs as root).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=30)


class Netns:
    """A network namespace plus a veth pair into it (see the module docs)."""

    def __init__(self, name: str, host_if: str, ns_if: str, subnet: int):
        self.name = name
        self.host_if = host_if
        self.ns_if = ns_if
        #: The host side's address.
        self.host_addr = f"169.254.{subnet}.1"
        #: The namespace side's address: servers inside listen here.
        self.addr = f"169.254.{subnet}.2"

    def exec_args(self, args: list[str]) -> list[str]:
        """``args`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *args]

    def partition(self) -> None:
        """Cuts the link: packets stop silently in both directions."""
        _check(["ip", "link", "set", self.host_if, "down"])

    def heal(self) -> None:
        """Restores the link (and the route the kernel dropped with it)."""
        _check(["ip", "link", "set", self.host_if, "up"])
        # The on-link route comes back with the address once the link is up.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            routes = _run(["ip", "route", "show", "dev", self.host_if]).stdout
            if self.addr.rsplit(".", 1)[0] in routes:
                return
            time.sleep(0.05)
        pytest.fail(f"no route back over {self.host_if} after heal: {routes!r}")

    def __repr__(self) -> str:
        return f"<Netns {self.name} {self.host_addr} <-> {self.addr}>"


def _check(args: list[str]) -> None:
    done = _run(args)
    if done.returncode != 0:
        pytest.fail(
            f"`{' '.join(args)}` failed ({done.returncode}): {done.stderr.strip()}",
            pytrace=False,
        )


@pytest.fixture
def netns() -> Iterator[Netns]:
    tag = f"{os.getpid() % 10000:04d}{os.urandom(2).hex()}"
    name = f"pw-{tag}"
    host_if, ns_if = f"pwh{tag}", f"pwn{tag}"  # at most 15 characters
    subnet = 1 + int.from_bytes(os.urandom(1), "big") % 250
    space = Netns(name, host_if, ns_if, subnet)
    created = _run(["ip", "netns", "add", name])
    if created.returncode != 0:
        pytest.fail(
            f"`ip netns add` does not work here ({created.stderr.strip()}); the partition "
            "tests need root and network namespaces",
            pytrace=False,
        )
    try:
        _check(["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if])
        _check(["ip", "link", "set", ns_if, "netns", name])
        _check(["ip", "addr", "add", f"{space.host_addr}/30", "dev", host_if])
        _check(["ip", "link", "set", host_if, "up"])
        _check(space.exec_args(["ip", "addr", "add", f"{space.addr}/30", "dev", ns_if]))
        _check(space.exec_args(["ip", "link", "set", ns_if, "up"]))
        _check(space.exec_args(["ip", "link", "set", "lo", "up"]))
        yield space
    finally:
        _run(["ip", "link", "del", host_if])  # deletes the peer too
        _run(["ip", "netns", "del", name])


class RedisServer:
    """One ``redis-server`` process started by ``start_redis``."""

    def __init__(
        self, binary: str, directory: Path, persistent: bool, netns: Optional[Netns]
    ):
        self.binary = binary
        self.dir = directory
        self.persistent = persistent
        self.netns = netns
        self.host = netns.addr if netns else "127.0.0.1"
        self.port = _free_port()
        self.process: Optional[subprocess.Popen] = None
        self.log_path = directory / "redis.log"
        self.start()

    @property
    def url(self) -> str:
        """``redis://HOST:PORT``: give it to ``--redis-url``."""
        return f"redis://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.dir),
            "--save", "",
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str(self.log_path),
        ]
        if self.netns is not None:
            # Reached over the veth pair, not loopback; nothing outside the test's own
            # namespace can reach that address.
            args += ["--protected-mode", "no"]
        if self.persistent:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        if self.netns is not None:
            args = self.netns.exec_args(args)
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            if self.process.poll() is not None:
                pytest.fail(
                    f"redis-server exited with {self.process.returncode}: "
                    f"{self.log_path.read_text(errors='replace') if self.log_path.exists() else ''}",
                    pytrace=False,
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("redis-server did not answer PING within 10 s", pytrace=False)
            time.sleep(0.02)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL by PID (its unsaved data is gone)."""
        if self.alive():
            self.process.kill()
        if self.process is not None:
            self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM by PID and wait: a persistent server flushes its AOF first."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(20)

    def restart(self) -> None:
        """Stops (SIGTERM) and starts again on the same port and directory."""
        self.stop()
        self.start()

    def signal(self, signum: int) -> None:
        """SIGSTOP / SIGCONT: a hung broker."""
        if self.alive():
            os.kill(self.pid, signum)

    def command(self, *args: str, timeout: float = 5.0) -> str:
        """Runs one command with ``redis-cli`` and returns its raw output."""
        done = subprocess.run(
            ["redis-cli", "-h", self.host, "-p", str(self.port), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return done.stdout.strip()

    def __repr__(self) -> str:
        return f"<RedisServer pid={self.process.pid if self.process else None} {self.url}>"


@pytest.fixture
def start_redis(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    binary = os.environ.get("REDIS_SERVER_BIN") or shutil.which("redis-server")
    if not binary:
        pytest.fail(
            "redis-server is missing: run scripts/test (it installs Debian's redis-server)",
            pytrace=False,
        )
    started: list[RedisServer] = []

    def start(persistent: bool = False, netns: Optional[Netns] = None) -> RedisServer:
        directory = tmp_path / f"redis-{len(started)}"
        directory.mkdir()
        server = RedisServer(binary, directory, persistent, netns)
        started.append(server)
        return server

    yield start

    for server in started:
        server.kill()


def wait_engine_ready(gw, timeout: float = 10.0) -> None:
    """Waits until ``/readyz`` answers 200: the node reached every Redis instance (the
    "ready" line only means the listeners are open; a load balancer waits the same way)."""
    from conftest import wait_for  # conftest loads this plugin: import late

    wait_for(lambda: gw.get("/readyz", timeout=2).status_code == 200, timeout=timeout,
             message="/readyz 200 (the engine is up)")


@pytest.fixture
def start_nodes(start_gateway) -> Callable[..., list]:
    def start(n: int, redis_urls: list[str], *flags: str, env=None) -> list:
        nodes = []
        for i in range(n):
            args = ["--engine", "redis", "--node-name", f"node{i}"]
            for url in redis_urls:
                args += ["--redis-url", url]
            nodes.append(start_gateway(*args, *flags, env=env))
        for gw in nodes:
            wait_engine_ready(gw)
        return nodes

    return start
