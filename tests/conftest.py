"""pytest fixtures for pingwheel's end-to-end tests.

Run them through ``scripts/test`` (it builds ``target/release/pingwheel`` and exports
``PINGWHEEL_BIN``), or by hand::

    cargo build --release --bin pingwheel
    target/venv/bin/python -m pytest tests -q

Fixtures
--------
``start_gateway``
    A factory: ``start_gateway(*flags, env=None) -> Gateway`` spawns
    ``$PINGWHEEL_BIN --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 *flags`` (a flag in
    ``flags`` replaces the default ``--listen`` / ``--admin-listen``), waits up to 10 s for
    the readiness line ``ready listen=HOST:PORT admin=HOST:PORT`` on stdout, and returns a
    :class:`Gateway`. Every process it started is killed (by PID) at teardown.
``gateway``
    One gateway started with the default flags.
``pingwheel_bin``
    The binary's path; fails (never skips) when it is missing.
``start_prometheus``
    A factory: ``start_prometheus(targets, rule_files=(), interval="1s") -> Prometheus``
    runs a real Prometheus on a free port, scraping the given admin listeners as
    ``job="pingwheel"`` (and evaluating rule files); stopped by PID at teardown.

Each gateway's stderr (its log) is kept in ``target/test-logs/<test>-<n>.stderr.log``.
Environment: ``PINGWHEEL_TOKEN_SECRET`` and ``PINGWHEEL_API_KEY`` are removed from the
gateway's environment unless passed in ``env``, so tests are hermetic; ``NO_COLOR=1`` keeps
the logs plain text.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest
import requests

#: Redis servers, gateway nodes on them, and network namespaces (tests/cluster_fixtures.py).
pytest_plugins = ("cluster_fixtures",)

ROOT = Path(__file__).resolve().parent.parent
LOG_DIR = ROOT / "target" / "test-logs"
DEFAULT_BIN = ROOT / "target" / "release" / "pingwheel"

#: How long a gateway may take to print its readiness line.
READY_TIMEOUT = 10.0
#: How long ``terminate`` waits for a clean exit (the default drain timeout is 10 s).
TERMINATE_TIMEOUT = 20.0
#: The exact readiness line the server prints on stdout once both listeners are bound.
READY_LINE = re.compile(r"^ready listen=(?P<listen>\S+) admin=(?P<admin>\S+)$")
#: Environment variables that would change a gateway's behaviour behind a test's back.
SCRUBBED_ENV = ("PINGWHEEL_TOKEN_SECRET", "PINGWHEEL_API_KEY")

_SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r"(?:\{(?P<labels>.*)\})?"
    r"\s+(?P<value>\S+)(?:\s+-?\d+)?$"
)
_LABEL = re.compile(r'\s*(?P<key>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"\s*,?')


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (another process may take it; prefer port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for(
    condition: Callable[[], object],
    timeout: float = 5.0,
    interval: float = 0.05,
    message: str = "condition",
) -> object:
    """Polls ``condition`` until it returns something truthy, and returns that; fails the
    test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.1f}s waiting for {message}")
        time.sleep(interval)


class Metrics(dict):
    """A ``/metrics`` scrape: ``{'name{label="v",...}': value}`` with labels sorted by name
    (``'pingwheel_connections_closed_total{reason="normal",worker="0"}'``), plus
    :meth:`metric` to sum series by name and a subset of labels."""

    def __init__(self, text: str):
        super().__init__()
        #: ``(name, labels, value)`` for every sample, in exposition order.
        self.samples: list[tuple[str, dict[str, str], float]] = []
        #: ``name -> type`` from the ``# TYPE`` lines.
        self.types: dict[str, str] = {}
        for line_number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) == 4 and parts[1] == "TYPE":
                    self.types[parts[2]] = parts[3]
                continue
            match = _SAMPLE.match(line)
            if match is None:
                raise ValueError(f"/metrics line {line_number} is not a sample: {line!r}")
            labels = _parse_labels(match.group("labels") or "", line)
            value = float(match.group("value"))
            name = match.group("name")
            self.samples.append((name, labels, value))
            self[series_key(name, labels)] = value

    def metric(self, name: str, **labels: str) -> float:
        """Sum of every sample called ``name`` whose labels include ``labels``
        (0.0 when none match). Label values may be given as ints: ``worker=0``."""
        wanted = {key: str(value) for key, value in labels.items()}
        return sum(
            value
            for sample_name, sample_labels, value in self.samples
            if sample_name == name
            and all(sample_labels.get(k) == v for k, v in wanted.items())
        )

    def names(self) -> set[str]:
        """Every sample name present (histograms show as ``_bucket``/``_sum``/``_count``)."""
        return {name for name, _, _ in self.samples}


def series_key(name: str, labels: dict[str, str]) -> str:
    """The :class:`Metrics` key of one series: labels sorted by name."""
    if not labels:
        return name
    inner = ",".join(f'{key}="{_escape(labels[key])}"' for key in sorted(labels))
    return f"{name}{{{inner}}}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _parse_labels(text: str, line: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    position = 0
    while position < len(text):
        match = _LABEL.match(text, position)
        if match is None:
            raise ValueError(f"cannot parse labels in /metrics line {line!r}")
        raw = match.group("value")
        labels[match.group("key")] = re.sub(
            r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), raw
        )
        position = match.end()
    return labels


class Gateway:
    """One running ``pingwheel`` process started by :func:`start_gateway`."""

    def __init__(
        self,
        process: subprocess.Popen,
        listen: str,
        admin: str,
        args: list[str],
        log_path: Path,
        stdout_lines: "queue.Queue[Optional[str]]",
    ):
        self.process = process
        #: ``HOST:PORT`` of the WebSocket listener, as printed in the readiness line.
        self.listen = listen
        #: ``HOST:PORT`` of the admin listener.
        self.admin = admin
        #: The full command line.
        self.args = args
        #: Where the gateway's stderr (its log) goes.
        self.log_path = log_path
        self._stdout_lines = stdout_lines
        self._session = requests.Session()
        #: The CA file :meth:`trust` set for an https admin listener, if any.
        self._verify: Optional[str] = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def _has_flag(self, flag: str) -> bool:
        return any(arg == flag or arg.startswith(flag + "=") for arg in self.args)

    @property
    def ws_url(self) -> str:
        """``ws://HOST:PORT/`` (``wss://`` when started with ``--tls-cert``): connect
        WebSocket clients here."""
        scheme = "wss" if self._has_flag("--tls-cert") else "ws"
        return f"{scheme}://{self.listen}/"

    @property
    def admin_url(self) -> str:
        """``http://HOST:PORT`` (``https://`` when started with ``--admin-tls-cert``) of
        the admin listener (no trailing slash)."""
        scheme = "https" if self._has_flag("--admin-tls-cert") else "http"
        return f"{scheme}://{self.admin}"

    def trust(self, ca: Path) -> None:
        """Makes :meth:`get`/:meth:`post` (and so the metric helpers) verify an https
        admin listener against the CA certificate ``ca`` (a PEM file). Passed with each
        request: a session-wide ``verify`` would lose to ``REQUESTS_CA_BUNDLE``."""
        self._verify = str(ca)

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    @property
    def admin_port(self) -> int:
        return int(self.admin.rsplit(":", 1)[1])

    def alive(self) -> bool:
        return self.process.poll() is None

    def get(self, path: str, **kwargs) -> requests.Response:
        """``GET admin_url + path`` on a kept-alive session (5 s timeout by default)."""
        kwargs.setdefault("timeout", 5)
        if self._verify is not None:
            kwargs.setdefault("verify", self._verify)
        return self._session.get(self.admin_url + path, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        """``POST admin_url + path`` on a kept-alive session (5 s timeout by default)."""
        kwargs.setdefault("timeout", 5)
        if self._verify is not None:
            kwargs.setdefault("verify", self._verify)
        return self._session.post(self.admin_url + path, **kwargs)

    def metrics_text(self) -> str:
        response = self.get("/metrics")
        response.raise_for_status()
        return response.text

    def metrics(self) -> Metrics:
        """Scrapes ``/metrics`` now."""
        return Metrics(self.metrics_text())

    def metric(self, name: str, **labels: str) -> float:
        """Scrapes and sums the series called ``name`` matching ``labels``."""
        return self.metrics().metric(name, **labels)

    def wait_metric(
        self, name: str, at_least: float, timeout: float = 5.0, **labels: str
    ) -> float:
        """Waits until ``metric(name, **labels) >= at_least`` and returns the value."""
        last = [0.0]

        def reached() -> bool:
            last[0] = self.metric(name, **labels)
            return last[0] >= at_least

        wait_for(reached, timeout, message=f"{name}{labels or ''} >= {at_least}")
        return last[0]

    def stdout(self) -> list[str]:
        """Lines printed on stdout after the readiness line, so far."""
        lines = []
        while True:
            try:
                line = self._stdout_lines.get_nowait()
            except queue.Empty:
                return lines
            if line is not None:
                lines.append(line)

    def log(self) -> str:
        """The gateway's stderr so far."""
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        """Sends ``signum`` to this gateway (by PID) if it is still running."""
        if self.alive():
            os.kill(self.pid, signum)

    def terminate(self, timeout: float = TERMINATE_TIMEOUT) -> int:
        """SIGTERM, wait for the exit, return the exit code (negative: killed by a signal).
        Fails the test, after killing the process, if it does not exit within ``timeout``."""
        self.signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def wait_exit(self, timeout: float = TERMINATE_TIMEOUT) -> int:
        """Waits for the exit (sending nothing: a second SIGTERM means "exit now", code
        1) and returns the exit code. Fails the test, after killing the process, if it
        does not exit within ``timeout``."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(
                f"pingwheel (pid {self.pid}) did not exit within {timeout:.0f}s of SIGTERM; "
                f"log: {self.log_path}"
            )

    def kill(self) -> None:
        """SIGKILL (by PID) if still running, then reap it."""
        if self.alive():
            self.process.kill()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self._session.close()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __repr__(self) -> str:
        return f"<Gateway pid={self.pid} listen={self.listen} admin={self.admin}>"


def _read_stdout(stream, lines: "queue.Queue[Optional[str]]") -> None:
    """Forwards stdout lines to ``lines`` until EOF (then puts ``None``), so the pipe never
    fills up."""
    try:
        for line in stream:
            lines.put(line.rstrip("\n"))
    except (OSError, ValueError):
        pass  # the stream was closed by kill()
    finally:
        lines.put(None)


def _log_name(node_name: str, index: int) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", node_name).strip("_")[:100]
    return f"{safe}-{index}.stderr.log"


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as err:
        return f"(cannot read {path}: {err})"


@pytest.fixture(scope="session")
def pingwheel_bin() -> Path:
    """The gateway binary: ``$PINGWHEEL_BIN`` or ``target/release/pingwheel``. Fails, not
    skips, when it is missing, so an unbuilt binary can never pass the suite."""
    configured = os.environ.get("PINGWHEEL_BIN")
    path = Path(configured) if configured else DEFAULT_BIN
    if not path.is_file() or not os.access(path, os.X_OK):
        where = f"PINGWHEEL_BIN={configured}" if configured else f"default {DEFAULT_BIN}"
        pytest.fail(
            f"pingwheel binary not found or not executable ({where}). "
            "Run scripts/test, or build it with `cargo build --release --bin pingwheel` "
            "and export PINGWHEEL_BIN.",
            pytrace=False,
        )
    return path


@pytest.fixture
def start_gateway(request, pingwheel_bin: Path) -> Iterator[Callable[..., Gateway]]:
    """Factory fixture: ``start_gateway(*flags, env=None, ready_timeout=10.0)``."""
    started: list[Gateway] = []
    # Every process spawned, ready or not, so teardown can kill each one by PID.
    processes: list[subprocess.Popen] = []
    LOG_DIR.mkdir(parents=True, exist_ok=True)

    def start(
        *flags: str,
        env: Optional[dict[str, str]] = None,
        ready_timeout: float = READY_TIMEOUT,
    ) -> Gateway:
        flags = [str(flag) for flag in flags]
        given = {flag.split("=", 1)[0] for flag in flags}
        args = [str(pingwheel_bin)]
        if "--listen" not in given:
            args += ["--listen", "127.0.0.1:0"]
        if "--admin-listen" not in given:
            args += ["--admin-listen", "127.0.0.1:0"]
        args += flags

        child_env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
        child_env["NO_COLOR"] = "1"  # plain-text logs in target/test-logs/
        child_env.update(env or {})
        log_path = LOG_DIR / _log_name(request.node.name, len(processes))
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=child_env,
                text=True,
                bufsize=1,
            )
        processes.append(process)
        lines: "queue.Queue[Optional[str]]" = queue.Queue()
        threading.Thread(
            target=_read_stdout,
            args=(process.stdout, lines),
            name=f"pingwheel-{process.pid}-stdout",
            daemon=True,
        ).start()

        def give_up(reason: str) -> None:
            if process.poll() is None:
                process.kill()
            process.wait(10)
            pytest.fail(
                f"pingwheel {reason}\ncommand: {' '.join(args)}\n"
                f"log ({log_path}):\n{_tail(log_path)}",
                pytrace=False,
            )

        deadline = time.monotonic() + ready_timeout
        early_stdout: list[str] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                give_up(
                    f"printed no readiness line within {ready_timeout:.0f}s "
                    f"(stdout so far: {early_stdout!r})"
                )
            try:
                line = lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line is None:
                give_up(
                    f"exited with status {process.wait(10)} before it was ready "
                    f"(stdout: {early_stdout!r})"
                )
            match = READY_LINE.match(line)
            if match:
                break
            early_stdout.append(line)

        gateway = Gateway(process, match["listen"], match["admin"], args, log_path, lines)
        started.append(gateway)
        return gateway

    yield start

    for gateway in started:
        gateway.kill()
    for process in processes:
        if process.poll() is None:
            process.kill()  # Popen.kill signals this process's PID only
            process.wait(10)


@pytest.fixture
def gateway(start_gateway) -> Gateway:
    """A gateway with default settings (plus loopback port-0 listeners)."""
    return start_gateway()


class Prometheus:
    """One real ``prometheus`` process started by :func:`start_prometheus`."""

    def __init__(self, process: subprocess.Popen, url: str, log_path: Path):
        self.process = process
        #: ``http://127.0.0.1:PORT`` (no trailing slash).
        self.url = url
        #: Prometheus's own log (stdout and stderr).
        self.log_path = log_path

    def api(self, path: str, **params) -> dict:
        """``GET /api/v1/<path>`` with ``params``; the decoded JSON body, whatever the
        HTTP status (a bad query answers 400 with ``status: error``)."""
        response = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        return response.json()

    def query(self, expr: str) -> dict:
        """An instant query: the decoded ``/api/v1/query`` answer."""
        return self.api("query", query=expr)

    def ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def log(self) -> str:
        return _tail(self.log_path, 80)


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[Callable[..., Prometheus]]:
    """Factory fixture: ``start_prometheus(targets, rule_files=(), interval="1s")`` runs
    ``$PROMETHEUS_BIN`` (or ``prometheus`` on ``PATH``; fails, never skips, when missing)
    on a free loopback port with a fresh TSDB under ``tmp_path``, scraping ``targets``
    (``HOST:PORT`` admin listeners) as ``job="pingwheel"`` and evaluating ``rule_files``
    every ``interval``. Waits until ``/-/ready``; killed by PID at teardown."""
    binary = os.environ.get("PROMETHEUS_BIN") or shutil.which("prometheus")
    if not binary:
        pytest.fail(
            "prometheus is missing: run scripts/test (it installs Debian's prometheus)",
            pytrace=False,
        )
    started: list[subprocess.Popen] = []

    def start(
        targets: list[str], rule_files: tuple[Path, ...] = (), interval: str = "1s"
    ) -> Prometheus:
        index = len(started)
        config = tmp_path / f"prometheus-{index}.yml"
        lines = [
            "global:",
            f"  scrape_interval: {interval}",
            f"  evaluation_interval: {interval}",
        ]
        if rule_files:
            lines.append("rule_files:")
            lines += [f"  - '{path}'" for path in rule_files]
        lines += [
            "scrape_configs:",
            "  - job_name: pingwheel",
            "    static_configs:",
            "      - targets: [" + ", ".join(f"'{t}'" for t in targets) + "]",
        ]
        config.write_text("\n".join(lines) + "\n")
        port = free_port()
        log_path = tmp_path / f"prometheus-{index}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / f'prometheus-{index}-data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        started.append(process)
        prometheus = Prometheus(process, f"http://127.0.0.1:{port}", log_path)

        def up() -> bool:
            if process.poll() is not None:
                pytest.fail(
                    f"prometheus exited with {process.returncode}:\n{prometheus.log()}",
                    pytrace=False,
                )
            return prometheus.ready()

        wait_for(up, timeout=30, interval=0.2, message="prometheus /-/ready")
        return prometheus

    yield start

    for process in started:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Tests never skip: a skip (``pytest.skip``, a ``skipif`` mark, ``importorskip``) or
    an ``xfail`` is reported as a failure naming its reason, so a missing tool or
    service can never pass the suite unnoticed."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped:
        reason = getattr(report, "wasxfail", None)
        if reason is None and isinstance(report.longrepr, tuple):
            reason = report.longrepr[2]
        report.outcome = "failed"
        report.longrepr = f"tests never skip, but this one did: {reason or report.longrepr}"
