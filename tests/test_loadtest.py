"""End-to-end checks of ``pingwheel-loadtest``: short, small runs of every scenario
against a server nobody here wrote (Python ``websockets``), against the conventional
baseline server, against a reference implementation of the push contract, and against
the real gateway, reading the JSON report each run writes.

Binaries: ``$PINGWHEEL_LOADTEST_BIN`` (default ``target/release/pingwheel-loadtest``) and
``$PINGWHEEL_BASELINE_BIN`` (default ``target/release/pingwheel-baseline``); build them
with ``cargo build --release -p pingwheel-loadtest``. A missing binary fails the tests,
it never skips them.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest

from tls_support import Pki

ROOT = Path(__file__).resolve().parent.parent
SERVERS = Path(__file__).resolve().parent / "servers"
TOKEN_SECRET = "loadtest-token-secret"
API_KEY = "loadtest-api-key"
#: Every harness run is bounded: a few seconds of load plus start-up and teardown.
RUN_TIMEOUT = 90


def _binary(env_name: str, default: Path) -> Path:
    configured = os.environ.get(env_name)
    path = Path(configured) if configured else default
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(
            f"{path} not found or not executable ({env_name}="
            f"{configured or 'unset'}); build it with "
            "`cargo build --release -p pingwheel-loadtest`",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def loadtest_bin() -> Path:
    return _binary("PINGWHEEL_LOADTEST_BIN", ROOT / "target/release/pingwheel-loadtest")


@pytest.fixture(scope="session")
def baseline_bin() -> Path:
    return _binary("PINGWHEEL_BASELINE_BIN", ROOT / "target/release/pingwheel-baseline")


class Server:
    """A server process that printed ``ready listen=HOST:PORT [admin=HOST:PORT]``."""

    def __init__(self, process: subprocess.Popen, fields: dict[str, str]):
        self.process = process
        self.listen = fields["listen"]
        self.admin = fields.get("admin")

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def ws_url(self) -> str:
        return f"ws://{self.listen}/"

    @property
    def admin_url(self) -> str:
        return f"http://{self.admin}"


@pytest.fixture
def start_server() -> Iterator[Callable[..., Server]]:
    """Factory: ``start_server(argv)`` runs ``argv``, waits up to 10 s for its readiness
    line and returns a :class:`Server`; each process is killed by PID at teardown."""
    processes: list[subprocess.Popen] = []

    def start(argv: list[str]) -> Server:
        process = subprocess.Popen(
            [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        processes.append(process)
        lines: "queue.Queue[Optional[str]]" = queue.Queue()

        def pump() -> None:
            for line in process.stdout:
                lines.put(line.strip())
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            if line.startswith("ready "):
                fields = dict(part.split("=", 1) for part in line.split()[1:])
                return Server(process, fields)
        process.kill()
        _, stderr = process.communicate(timeout=10)
        pytest.fail(f"{argv[0]} printed no readiness line; stderr:\n{stderr}", pytrace=False)

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def python_server(start_server, *flags: str) -> Server:
    return start_server([sys.executable, SERVERS / "ws_server.py", "--port", "0", *flags])


def run(loadtest_bin: Path, tmp_path: Path, scenario: str, url: str, *flags: str):
    """Runs the harness quietly with ``--json``; returns ``(exit code, report, output)``."""
    report_path = tmp_path / f"{scenario}-{time.monotonic_ns()}.json"
    argv = [str(loadtest_bin), scenario, "--url", url, "--quiet", "--json", str(report_path)]
    argv += [str(f) for f in flags]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    output = f"$ {' '.join(argv)}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    return done.returncode, report, output


def assert_passed(code: int, report: Optional[dict], output: str) -> dict:
    assert report is not None, f"no JSON report\n{output}"
    failed = [a for a in report["assertions"] if not a["ok"]]
    assert code == 0 and report["ok"], f"failed assertions {failed}\n{output}"
    return report


def check_idle_pings(report: dict, interval_ms: float, connections: int) -> None:
    """Every connection got pings at the configured interval."""
    assert report["connections"]["established"] == connections
    assert report["connections"]["lost"] == 0
    pings = report["pings"]
    assert pings["connections_checked"] == connections
    assert pings["connections_below_expected"] == 0
    assert pings["per_connection_min"] >= 2
    assert abs(pings["interval_ms"]["p50"] - interval_ms) < 0.25 * interval_ms, pings
    names = {a["name"] for a in report["assertions"]}
    assert "ping_interval" in names


# --- a server nobody here wrote: Python websockets with its own keepalive -----------


def test_idle_against_python_websockets(loadtest_bin, start_server, tmp_path):
    server = python_server(start_server, "--ping-interval", "1")
    code, report, output = run(
        loadtest_bin, tmp_path, "idle", server.ws_url,
        "--connections", 200, "--duration", "3.5s", "--settle", "500ms",
        "--expect-ping-interval", "1s", "--server-pid", server.pid, "--max-lost", 0,
    )
    report = assert_passed(code, report, output)
    check_idle_pings(report, 1000.0, 200)
    assert report["server"]["pids"] == [server.pid]
    assert report["server"]["rss_after_ramp"] > 0
    assert report["harness"]["processes"] == 1
    assert report["connect_latency_ms"]["p99"] is not None


def test_echo_and_churn_against_python_websockets(loadtest_bin, start_server, tmp_path):
    server = python_server(start_server, "--echo")
    code, report, output = run(
        loadtest_bin, tmp_path, "echo", server.ws_url,
        "-c", 50, "-d", "2s", "--settle", "200ms", "--message-rate", "10/s",
        "--message-size", 128, "--max-lost", 0,
    )
    report = assert_passed(code, report, output)
    assert report["echo"]["received"] >= 500
    assert report["echo"]["mismatches"] == 0
    code, report, output = run(
        loadtest_bin, tmp_path, "churn", server.ws_url,
        "-c", 20, "-d", "2s", "--settle", "0s", "--churn-rate", "50/s", "--max-lost", 0,
    )
    report = assert_passed(code, report, output)
    assert report["churn"]["completed"] >= 80
    assert report["churn"]["failed"] == 0


# --- the conventional baseline server ------------------------------------------------


def test_idle_against_baseline_split_over_processes(loadtest_bin, baseline_bin, start_server, tmp_path):
    server = start_server([baseline_bin, "--listen", "127.0.0.1:0", "--ping-interval", "1s"])
    code, report, output = run(
        loadtest_bin, tmp_path, "idle", server.ws_url,
        "-c", 300, "-d", "3.5s", "--settle", "500ms", "--processes", 2,
        "--expect-ping-interval", "1s", "--client-ping-interval", "500ms",
        "--server-pid", server.pid, "--max-lost", 0, "--max-p99", "200ms",
    )
    report = assert_passed(code, report, output)
    check_idle_pings(report, 1000.0, 300)
    assert report["harness"]["processes"] == 2
    assert report["pings"]["client_rtt_ms"]["count"] > 0
    assert report["server"]["bytes_per_connection"] > 0
    assert report["server"]["cpu_per_ping_us"] is not None


def test_echo_churn_and_plot_against_baseline(loadtest_bin, baseline_bin, start_server, tmp_path):
    server = start_server([baseline_bin, "--listen", "127.0.0.1:0", "--echo"])
    plot = tmp_path / "echo.svg"
    code, report, output = run(
        loadtest_bin, tmp_path, "echo", server.ws_url,
        "-c", 50, "-d", "2s", "--settle", "200ms", "--message-rate", "0",
        "--plot", plot, "--server-pid", server.pid,
    )
    report = assert_passed(code, report, output)
    assert report["echo"]["mismatches"] == 0
    assert report["echo"]["messages_per_sec"] > 100
    assert report["server"]["cpu_per_message_us"] is not None
    assert plot.read_text().startswith("<svg")
    code, report, output = run(
        loadtest_bin, tmp_path, "churn", server.ws_url,
        "-c", 20, "-d", "2s", "--settle", "0s", "--churn-rate", "100/s", "--max-lost", 0,
    )
    report = assert_passed(code, report, output)
    assert report["churn"]["completed"] >= 150


def test_gates_and_failures_set_the_exit_status(loadtest_bin, baseline_bin, start_server, tmp_path):
    server = start_server([baseline_bin, "--listen", "127.0.0.1:0"])
    code, report, output = run(
        loadtest_bin, tmp_path, "idle", server.ws_url,
        "-c", 10, "-d", "300ms", "--settle", "0s", "--max-p99", "1us",
    )
    assert code == 1, output
    assert [a["name"] for a in report["assertions"] if not a["ok"]] == ["max_p99"]
    server.process.kill()
    server.process.wait(10)
    code, report, output = run(
        loadtest_bin, tmp_path, "idle", server.ws_url, "-c", 10, "-d", "300ms", "--settle", "0s",
    )
    assert code == 1, output
    assert report["connections"]["failed_by_cause"] == {"refused": 10}, output
    code, report, output = run(loadtest_bin, tmp_path, "idle", "https://127.0.0.1:1/")
    assert code == 2 and report is None, output


# --- push against a reference implementation of the push contract --------------------


@pytest.mark.parametrize("subscribe,ack", [("url", False), ("url-ack", True), ("op", False)])
def test_push_against_reference_server(loadtest_bin, start_server, tmp_path, subscribe, ack):
    flags = ["--token-secret", TOKEN_SECRET, "--api-key", API_KEY] + (["--ack"] if ack else [])
    server = start_server([sys.executable, SERVERS / "push_server.py", *flags])
    code, report, output = run(
        loadtest_bin, tmp_path, "push", server.ws_url,
        "-c", 100, "--channels", 4, "-d", "2s", "--settle", "200ms",
        "--publish-url", server.admin_url, "--token-secret", TOKEN_SECRET,
        "--api-key", API_KEY, "--publish-rate", "40/s", "--subscribe", subscribe,
        "--max-lost", 0,
    )
    report = assert_passed(code, report, output)
    push = report["push"]
    assert push["subscribed"] == 100
    assert push["published"] >= 70
    assert push["expected"] == push["published"] * 25
    assert push["missing"] == 0 and push["reordered"] == 0 and push["duplicates"] == 0
    assert push["delivered"] == push["subscribers_reported"]
    assert push["latency_ms"]["p99"] is not None


# --- the real gateway (tests/conftest.py: start_gateway) -----------------------------


def test_gateway_idle_pings_every_connection(loadtest_bin, start_gateway, tmp_path):
    gateway = start_gateway("--ping-interval", "1s")
    code, report, output = run(
        loadtest_bin, tmp_path, "idle", gateway.ws_url,
        "-c", 300, "-d", "3.5s", "--settle", "500ms",
        "--expect-ping-interval", "1s", "--server-pid", gateway.pid, "--max-lost", 0,
    )
    report = assert_passed(code, report, output)
    check_idle_pings(report, 1000.0, 300)
    assert report["server"]["bytes_per_connection"] is not None


def test_gateway_echo_and_churn(loadtest_bin, start_gateway, tmp_path):
    gateway = start_gateway("--echo")
    code, report, output = run(
        loadtest_bin, tmp_path, "echo", gateway.ws_url,
        "-c", 100, "-d", "2s", "--settle", "200ms", "--message-rate", "10/s", "--max-lost", 0,
    )
    report = assert_passed(code, report, output)
    assert report["echo"]["received"] >= 1000
    assert report["echo"]["mismatches"] == 0
    code, report, output = run(
        loadtest_bin, tmp_path, "churn", gateway.ws_url,
        "-c", 20, "-d", "2s", "--settle", "0s", "--churn-rate", "100/s", "--max-lost", 0,
    )
    report = assert_passed(code, report, output)
    assert report["churn"]["completed"] >= 150


def test_gateway_over_wss_idle_echo_and_resumed_churn(loadtest_bin, start_gateway, tmp_path):
    """The harness's wss:// client against the gateway's TLS listener: pings over TLS,
    echo payloads intact, reconnects resumed by default and never with --no-tls-resume,
    and a CA it does not trust refused by cause."""
    pki = Pki(tmp_path / "pki")
    pair = pki.issue("server")
    gateway = start_gateway("--ping-interval", "1s", "--echo", "--tls-cert", pair.cert, "--tls-key", pair.key)
    url = f"wss://{gateway.listen}/"
    code, report, output = run(
        loadtest_bin, tmp_path, "idle", url, "--ca-file", pki.ca,
        "-c", 200, "-d", "3.5s", "--settle", "500ms",
        "--expect-ping-interval", "1s", "--server-pid", gateway.pid, "--max-lost", 0,
    )
    report = assert_passed(code, report, output)
    check_idle_pings(report, 1000.0, 200)
    assert report["tls"]["handshakes"] == 200, output
    assert report["tls"]["handshake_ms"]["p50"] > 0

    code, report, output = run(
        loadtest_bin, tmp_path, "echo", url, "--ca-file", pki.ca,
        "-c", 20, "-d", "2s", "--settle", "200ms", "--message-rate", "10/s", "--message-size", "20KiB",
        "--max-lost", 0,
    )
    report = assert_passed(code, report, output)
    assert report["echo"]["received"] >= 300 and report["echo"]["mismatches"] == 0, output

    for resume in (True, False):
        code, report, output = run(
            loadtest_bin, tmp_path, "churn", url, "--ca-file", pki.ca,
            "-c", 20, "-d", "2s", "--settle", "0s", "--churn-rate", "100/s", "--max-lost", 0,
            *([] if resume else ["--no-tls-resume"]),
        )
        report = assert_passed(code, report, output)
        tls = report["tls"]
        assert report["churn"]["completed"] >= 150, output
        if resume:
            assert tls["resumed"] > tls["full"], output
        else:
            assert tls["resumed"] == 0 and tls["full"] >= 150, output

    other = Pki(tmp_path / "other-pki", name="another CA")
    code, report, output = run(
        loadtest_bin, tmp_path, "idle", url, "--ca-file", other.ca, "-c", 5, "-d", "300ms",
        "--settle", "0s", "--ramp-timeout", "5s",
    )
    assert code == 1, output
    assert report["connections"]["failed_by_cause"] == {"tls_unknown_issuer": 5}, output


def test_gateway_push_delivers_everything_in_order(loadtest_bin, start_gateway, tmp_path):
    gateway = start_gateway("--token-secret", TOKEN_SECRET, "--api-key", API_KEY)
    code, report, output = run(
        loadtest_bin, tmp_path, "push", gateway.ws_url,
        "-c", 200, "--channels", 10, "-d", "2s", "--settle", "200ms",
        "--publish-url", gateway.admin_url, "--token-secret", TOKEN_SECRET,
        "--api-key", API_KEY, "--publish-rate", "100/s", "--max-lost", 0,
        "--server-pid", gateway.pid,
    )
    report = assert_passed(code, report, output)
    push = report["push"]
    assert push["published"] >= 150
    assert push["missing"] == 0, push
    assert push["reordered"] == 0 and push["duplicates"] == 0, push
    assert push["delivered"] == push["expected"] == push["published"] * 20
    assert report["server"]["cpu_per_delivery_us"] is not None


def test_gateway_broadcast_after_a_publish_delay(loadtest_bin, start_gateway, tmp_path):
    # The shape of scripts/bench million, small: every client on one channel, one
    # publish 1.5 s into a 2.5 s hold; the ping intervals after it are reported apart.
    gateway = start_gateway("--token-secret", TOKEN_SECRET, "--api-key", API_KEY,
                            "--ping-interval", "300ms", "--ping-timeout", "300ms")
    code, report, output = run(
        loadtest_bin, tmp_path, "push", gateway.ws_url,
        "-c", 50, "--fanout-burst", "-d", "2.5s", "--settle", "0s", "--publish-delay", "1.5s",
        "--publish-rate", "1/1s", "--publish-url", gateway.admin_url, "--token-secret", TOKEN_SECRET,
        "--api-key", API_KEY, "--max-lost", 0, "--expect-ping-interval", "300ms",
        "--ping-tolerance", "0.5",
    )
    report = assert_passed(code, report, output)
    push, pings = report["push"], report["pings"]
    assert push["published"] == 1, push
    assert push["delivered"] == push["expected"] == 50, push
    assert pings["interval_ms"]["count"] > 0, pings
    assert pings["interval_after_publish_ms"]["count"] > 0, pings
    # The hold still lasted its whole duration.
    assert report["timing"]["hold_s"] >= 2.5, report["timing"]


@pytest.mark.parametrize("subscribe", ["url", "op"])
def test_gateway_recovery_storm_recovers_every_client(loadtest_bin, start_gateway, tmp_path,
                                                      subscribe):
    # The issue's storm at 1/19 scale: every client comes back at once, 20 back.
    config = tmp_path / "pingwheel.toml"
    config.write_text('[[namespace]]\nprefix = "lt-"\nhistory_size = 100\nhistory_ttl = "10m"\n')
    gateway = start_gateway("--config", config, "--token-secret", TOKEN_SECRET,
                            "--api-key", API_KEY)
    code, report, output = run(
        loadtest_bin, tmp_path, "push", gateway.ws_url,
        "-c", 1000, "--channels", 10, "--ramp-rate", "100000/s", "-d", "1s",
        "--settle", "200ms", "--publish-url", gateway.admin_url,
        "--token-secret", TOKEN_SECRET, "--api-key", API_KEY, "--publish-rate", "50/s",
        "--recover-back", 20, "--subscribe", subscribe, "--max-lost", 0,
    )
    report = assert_passed(code, report, output)
    recovery = report["push"]["recovery"]
    assert recovery == {**recovery, "back": 20, "recovered": 1000, "not_recovered": 0,
                        "complete": 1000, "gaps": 0}, recovery
    assert recovery["latency_ms"]["count"] == 1000
    assert report["config"]["main_latency"] == "recover"
    # Live publishes after the recovery arrive too, in order.
    push = report["push"]
    assert push["missing"] == 0 and push["reordered"] == 0 and push["duplicates"] == 0, push
    assert "recovery_complete" in {a["name"] for a in report["assertions"]}
