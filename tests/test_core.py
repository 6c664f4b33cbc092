"""Gateway core against clients written by others: Python `websockets`, promtool, Prometheus.

The Rust side (tungstenite client, raw sockets, SIGTERM, bad handshakes, slow readers)
lives in crates/gateway/tests/gateway.rs.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
from websockets.sync.client import connect

from conftest import wait_for

FAST_KEEPALIVE = ("--ping-interval", "1", "--ping-timeout", "1")


def hold(ws, seconds: float) -> None:
    """Keeps a websockets connection open for `seconds`, failing if it closes.

    The library answers the server's Pings on its own background thread."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            ws.recv(timeout=0.2)
        except TimeoutError:
            pass


def test_python_websockets_client_stays_connected_and_rtt_is_measured(start_gateway):
    gw = start_gateway(*FAST_KEEPALIVE)
    before = gw.metric("pingwheel_ping_rtt_seconds_count")
    # The client sends no pings of its own here: only the server's keepalive runs.
    with connect(gw.ws_url, ping_interval=None) as ws:
        hold(ws, 5)
        after = gw.metric("pingwheel_ping_rtt_seconds_count")
        assert after >= before + 3, f"RTT count {before} -> {after}"
        assert gw.metric("pingwheel_connections") == 1
    assert gw.metric("pingwheel_ping_timeouts_total") == 0


def test_keepalive_without_ping_slack_still_pings_on_time(start_gateway, pingwheel_bin):
    # --max-ping-slack 0: every ping in its own tick instead of a shared window.
    gw = start_gateway(*FAST_KEEPALIVE, "--max-ping-slack", "0")
    with connect(gw.ws_url, ping_interval=None) as ws:
        hold(ws, 4.5)
        assert gw.metric("pingwheel_ping_rtt_seconds_count") >= 3
    assert gw.metric("pingwheel_ping_timeouts_total") == 0
    r = subprocess.run([str(pingwheel_bin), "--max-ping-slack", "2s"], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 2
    assert "--max-ping-slack" in r.stderr and "between 0 and 1s" in r.stderr, r.stderr


def test_python_websockets_own_keepalive_pings_get_pongs(start_gateway):
    gw = start_gateway("--ping-interval", "off")
    with connect(gw.ws_url, ping_interval=0.5, ping_timeout=2) as ws:
        # An explicit ping is answered with the same payload...
        pong = ws.ping(b"abc")
        assert pong.wait(2), "no pong for an explicit ping"
        # ...and the library's own keepalive keeps the connection open.
        hold(ws, 3)
        assert ws.latency > 0, "the library measured no pong latency"
        assert ws.latency < 1
    assert gw.metric("pingwheel_pings_sent_total") == 0


def test_metrics_pass_promtool(start_gateway):
    promtool = os.environ.get("PROMTOOL_BIN") or shutil.which("promtool")
    assert promtool, "promtool is missing: run scripts/test (it installs Debian's prometheus)"
    gw = start_gateway(*FAST_KEEPALIVE)
    with connect(gw.ws_url, ping_interval=None) as ws:
        hold(ws, 2.5)
        text = gw.metrics_text()
    for name in (
        "pingwheel_connections",
        "pingwheel_ping_rtt_seconds_bucket",
        "pingwheel_event_loop_lag_seconds_bucket",
        "pingwheel_pings_sent_total",
    ):
        assert name in text, f"{name} missing from /metrics"
    assert "quantile=" not in text, "histograms must not be rendered as summaries"
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, text=True, capture_output=True, timeout=30
    )
    assert check.returncode == 0, f"promtool: {check.stdout}{check.stderr}"


def test_real_prometheus_scrapes_and_answers_the_p99_rtt_query(start_gateway, start_prometheus):
    gw = start_gateway(*FAST_KEEPALIVE)
    prometheus = start_prometheus([gw.admin])
    query = "histogram_quantile(0.99, rate(pingwheel_ping_rtt_seconds_bucket[30s]))"
    answer: list[float] = []

    def has_number() -> bool:
        try:
            reply = prometheus.query(query)
        except requests.RequestException:
            return False
        if reply.get("status") != "success":
            return False
        values = [float(s["value"][1]) for s in reply["data"]["result"]]
        answer[:] = [v for v in values if math.isfinite(v)]
        return bool(answer)

    with connect(gw.ws_url, ping_interval=None) as ws:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not has_number():
            hold(ws, 1)
        assert answer, f"Prometheus never answered {query} with a number"
        assert all(0 < v < 1 for v in answer), f"p99 RTT on loopback should be well under 1 s: {answer}"
    targets = prometheus.api("targets")
    health = [t["health"] for t in targets["data"]["activeTargets"]]
    assert health == ["up"], f"scrape target health: {health}"


def test_no_arguments_just_works(pingwheel_bin, tmp_path: Path):
    """Embedded defaults: `pingwheel` with no flags listens on 8080 and 9090, unless
    those ports are taken here, in which case it must say so, naming the flag."""
    proc = subprocess.Popen(
        [str(pingwheel_bin)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()
        if line.startswith("ready "):
            assert "listen=0.0.0.0:8080" in line and "admin=127.0.0.1:9090" in line, line
        else:
            proc.wait(10)
            err = proc.stderr.read()
            assert proc.returncode != 0
            assert "--listen" in err or "--admin-listen" in err, err
    finally:
        if proc.poll() is None:
            proc.terminate()
            assert proc.wait(20) == 0


def test_cli_errors_name_the_flag(pingwheel_bin):
    r = subprocess.run(
        [str(pingwheel_bin), "--ping-interval", "20x"], capture_output=True, text=True, timeout=10
    )
    assert r.returncode == 2
    assert "--ping-interval" in r.stderr, r.stderr
    r = subprocess.run([str(pingwheel_bin), "--help"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0
    for flag in ("--listen", "--admin-listen", "--workers", "--ping-interval", "--ping-timeout",
                 "--open-timeout", "--close-timeout", "--drain-timeout", "--max-message-size",
                 "--max-queued-bytes", "--echo", "--config", "--log-level"):
        assert flag in r.stdout, f"{flag} missing from --help"


def test_config_file_and_flag_precedence(start_gateway, tmp_path: Path):
    config = tmp_path / "pingwheel.toml"
    config.write_text('ping_interval = "1s"\nping_timeout = "1s"\necho = true\n')
    gw = start_gateway("--config", str(config), "--ping-interval", "off")
    with connect(gw.ws_url, ping_interval=None) as ws:
        ws.send("from the file: echo on")
        assert ws.recv(timeout=5) == "from the file: echo on"
        hold(ws, 2.5)
    # The flag turned keepalive off despite the file.
    assert gw.metric("pingwheel_pings_sent_total") == 0


def test_bad_config_file_names_file_and_key(pingwheel_bin, tmp_path: Path):
    config = tmp_path / "bad.toml"
    config.write_text('ping_interval = "soon"\n')
    r = subprocess.run(
        [str(pingwheel_bin), "--config", str(config)], capture_output=True, text=True, timeout=10
    )
    assert r.returncode == 2
    assert str(config) in r.stderr and "ping_interval" in r.stderr, r.stderr


def test_print_config_is_the_deploy_example_and_runs(pingwheel_bin, start_gateway):
    """`--print-config` prints deploy/pingwheel.toml (never a secret from the environment),
    and the gateway runs on that file, with flags in the shared grammar on top."""
    example = Path(__file__).resolve().parent.parent / "deploy" / "pingwheel.toml"
    env = {**os.environ, "PINGWHEEL_API_KEY": "hunter2-not-printed"}
    r = subprocess.run(
        [str(pingwheel_bin), "--print-config"], capture_output=True, text=True, timeout=10, env=env
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == example.read_text(), "deploy/pingwheel.toml differs from --print-config"
    assert "hunter2" not in r.stdout
    gw = start_gateway("--config", str(example), "--close-timeout", "250000us", "--workers", "1")
    with connect(gw.ws_url, ping_interval=None) as ws:
        ws.send('{"op":"subscribe","channel":"news"}')
        assert "subscribed" in ws.recv(timeout=5)


def test_sigterm_closes_python_client_with_1001(start_gateway):
    gw = start_gateway()
    with connect(gw.ws_url, ping_interval=None) as ws:
        wait_for(lambda: gw.metric("pingwheel_connections") == 1, timeout=5)
        gw.signal(15)
        with pytest.raises(Exception) as closed:
            while True:
                ws.recv(timeout=5)
        assert ws.close_code == 1001, f"close code {ws.close_code}: {closed.value!r}"
    assert gw.wait_exit() == 0
