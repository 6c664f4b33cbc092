"""What an operator deploys, tested like code (issue 16): the Grafana dashboard and the
Prometheus alert rules against a real Prometheus scraping a live gateway under load,
the alerts' promtool unit tests, the systemd unit, the sysctl file, and SIGHUP. The
live Prometheus scrapes two gateways: a plain one and one serving ``wss://`` (with a
failed and a good certificate reload), so the TLS panels and alerts have series too.

* ``deploy/grafana/pingwheel.json``: importable (variables, one data source, ids),
  every panel query filtered by ``$instance``, and every query, with the variables
  resolved the way Grafana resolves them, returns at least one series with a number.
* ``deploy/prometheus/alerts.yml``: loaded and evaluated by that Prometheus without an
  error, every expression parses as a query, every metric it names is exported;
  ``promtool check rules`` and ``promtool test rules alerts_test.yml`` pass, and the
  unit tests show every alert both firing and silent; each alert has a runbook section.
* ``deploy/pingwheel.service``: ``systemd-analyze verify`` with no warning,
  ``systemd-analyze security --offline`` rates it OK, and the keys the docs promise.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests
import yaml
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection

from conftest import ROOT, Gateway, Prometheus, wait_for
from test_push import API_KEY, PUSH_ENV, StalledClient, bearer, open_ws, token, ws_url
from tls_support import CertPair, Pki

DASHBOARD = ROOT / "deploy" / "grafana" / "pingwheel.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
UNIT = ROOT / "deploy" / "pingwheel.service"
SYSCTL = ROOT / "deploy" / "sysctl" / "60-pingwheel.conf"
OPERATIONS = ROOT / "docs" / "operations.md"

#: What ``$__rate_interval`` becomes here: Grafana uses at least four scrape intervals
#: (the test Prometheus scrapes every second).
RATE_INTERVAL = "10s"
#: How long the queries may take to all return data once the load is running.
QUERY_DEADLINE = 60.0


def promtool() -> str:
    path = os.environ.get("PROMTOOL_BIN") or shutil.which("promtool")
    assert path, "promtool is missing: run scripts/test (it installs Debian's prometheus)"
    return path


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    assert path, "systemd-analyze is missing: run scripts/test (it installs Debian's systemd)"
    return path


# ---- the dashboard ---------------------------------------------------------------------


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(board: dict) -> Iterator[dict]:
    """Every panel, including those inside (collapsed) rows."""
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def panel_queries(board: dict) -> list[tuple[str, str]]:
    """``(panel title, expr)`` for every query target of every panel."""
    return [
        (panel["title"], target["expr"])
        for panel in all_panels(board)
        for target in panel.get("targets", [])
    ]


def variables(board: dict) -> dict[str, dict]:
    return {variable["name"]: variable for variable in board["templating"]["list"]}


def test_dashboard_is_importable_and_every_query_uses_the_variables():
    board = dashboard()
    assert board["uid"] == "pingwheel" and board["title"] == "pingwheel"
    assert isinstance(board["schemaVersion"], int)
    assert "__inputs" not in board, "the data source is a variable, not an import-time input"

    found = variables(board)
    assert list(found) == ["datasource", "job", "node", "instance"]
    assert found["datasource"]["type"] == "datasource"
    assert found["datasource"]["query"] == "prometheus"
    for name in ("job", "node", "instance"):
        assert found[name]["type"] == "query"
        assert found[name]["datasource"]["uid"] == "${datasource}"
    # $node is the instance label without its port; $instance is filtered by $node.
    assert "$job" in found["node"]["definition"] and "$node" in found["instance"]["definition"]

    panels = list(all_panels(board))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    for panel in panels:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert 'instance=~"$instance"' in target["expr"], (
                f"{panel['title']}: every query must honour the $instance variable: "
                f"{target['expr']}"
            )

    titles = {panel["title"] for panel in panels}
    for wanted in (
        "Connections per node",
        "Connections per instance and worker",
        "Connections opened /s per instance and worker",
        "Connections closed /s by reason",
        "Ping RTT",
        "Ping RTT p50 / p99 per instance",
        "Keepalive timeouts",
        "Event-loop lag p99 per worker",
        "Deliveries /s per worker",
        "Delivery lag p50 / p99 per instance",
        "Slow-consumer closes /s",
        "Refused upgrades /s by reason",
        "Auth failures /s by reason",
        "Publish API requests /s by status",
        "History kept per instance",
        "History bytes per instance",
        "Recoveries /s by result",
        "Recovered messages /s",
        "Engine up",
        "Engine errors /s by op",
        "Engine publish p50 / p99",
        "Position gaps /s and broker messages /s",
        "TLS handshakes /s by result per node",
        "TLS handshake duration p50 / p99 per instance",
        "Certificate days left per instance and listener",
        "Certificate reloads by result",
    ):
        assert wanted in titles, f"dashboard lacks the panel {wanted!r}"
    heatmaps = [p for p in panels if p["type"] == "heatmap"]
    assert heatmaps and all(t["format"] == "heatmap" for p in heatmaps for t in p["targets"])


def regex_escape(value: str) -> str:
    """A value as Grafana puts it into a Prometheus regex: special characters behind a
    backslash, itself doubled for the PromQL string."""
    return re.sub(r"([$^*+?.()|\\\[\]{}])", r"\\\\\1", value)


def interpolate(expr: str, values: dict[str, list[str]]) -> str:
    """Replaces ``$name`` / ``${name}`` for the dashboard's variables (multi-value ones
    as Grafana does: ``(a|b)``, regex-escaped) and ``$__rate_interval``; anything else
    (``$1`` in label_replace) is left alone, as Grafana leaves it."""

    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name == "__rate_interval":
            return RATE_INTERVAL
        if name not in values:
            return match.group(0)
        options = values[name]
        if name == "job":  # single-valued
            return options[0]
        return "(" + "|".join(regex_escape(option) for option in options) + ")"

    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", replace, expr)


def label_values(prometheus: Prometheus, query: str, values: dict[str, list[str]]) -> list[str]:
    """Grafana's ``label_values(selector, label)`` through ``/api/v1/series``."""
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
    assert match, f"unexpected variable query {query!r}"
    selector = interpolate(match.group(1), values)
    reply = prometheus.api("series", **{"match[]": selector})
    assert reply["status"] == "success", reply
    return sorted({series[match.group(2)] for series in reply["data"] if match.group(2) in series})


def resolve_variables(prometheus: Prometheus, board: dict) -> dict[str, list[str]]:
    """Every query variable's options, in order, each narrowed by the ones before."""
    values: dict[str, list[str]] = {}
    for name, variable in variables(board).items():
        if variable["type"] != "query":
            continue
        options = label_values(prometheus, variable["definition"], values)
        if variable["regex"]:
            pattern = re.compile(variable["regex"].strip("/"))
            options = sorted({m.group(1) for m in map(pattern.fullmatch, options) if m})
        if not options:  # nothing scraped yet: the later variables depend on this one
            return values
        values[name] = options
    return values


# ---- the alert rules -------------------------------------------------------------------


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """The pingwheel metric names an expression refers to."""
    return set(re.findall(r"\b(pingwheel_[a-z_]+)\b", expr))


def exported_names(gw: Gateway) -> set[str]:
    """Every series name on ``/metrics``, plus the family names of histograms."""
    names = gw.metrics().names()
    return names | {re.sub(r"_(bucket|sum|count)$", "", name) for name in names}


def test_every_alert_has_a_summary_a_runbook_section_and_a_severity():
    doc = OPERATIONS.read_text()
    headings = set(re.findall(r"^#+ (\S+)\s*$", doc, re.MULTILINE))
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)), names
    for rule in alert_rules():
        name = rule["alert"]
        assert name.startswith("Pingwheel"), name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        assert annotations["runbook_url"] == f"docs/operations.md#{name.lower()}", name
        assert name in headings, f"docs/operations.md has no runbook section `### {name}`"
        section = doc.split(f"### {name}\n", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
        for part in ("**Means**", "**Check**", "**Do**"):
            assert part in section, f"the runbook of {name} lacks {part}"


def test_promtool_checks_the_rules():
    check = subprocess.run(
        [promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in check.stdout, check.stdout


def test_promtool_unit_tests_pass_and_show_every_alert_firing_and_silent():
    run = subprocess.run(
        [promtool(), "test", "rules", str(ALERTS_TEST)],
        capture_output=True, text=True, timeout=120, cwd=ALERTS_TEST.parent,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout, run.stdout

    tests = yaml.safe_load(ALERTS_TEST.read_text())
    assert tests["rule_files"] == [ALERTS.name]
    fired: set[str] = set()
    silent: set[str] = set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fired == set(), f"no unit test shows these alerts firing: {names - fired}"
    assert names - silent == set(), f"no unit test shows these alerts silent: {names - silent}"


# ---- live: a real Prometheus scraping a gateway under a little load -------------------


class Load:
    """A little of everything, so every series the dashboard and the alerts use exists
    with data: subscribers reading, a publisher (into a channel that keeps history), a
    client that resubscribes with ``since`` (recovered, and with a stale epoch not), a
    client that stops answering pings, refused upgrades and a refused publish. Bounded
    in count and time."""

    CHANNEL = "ops"
    #: The gateway's config file: the channel keeps history, so recoveries work.
    CONFIG = '[[namespace]]\nprefix = "ops"\nhistory_size = 100\nhistory_ttl = "10m"\n'
    SUBSCRIBERS = 4
    #: At most this many publishes, one every PUBLISH_PERIOD seconds.
    MAX_PUBLISHES = 600
    PUBLISH_PERIOD = 0.2
    #: At most this many resubscribes with since, one every RECOVER_PERIOD seconds.
    MAX_RECOVERIES = 200
    RECOVER_PERIOD = 0.5

    def __init__(self, gw: Gateway, stack: contextlib.ExitStack):
        self.gw = gw
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.errors: list[str] = []
        #: The channel's position after the last publish, once there was one.
        self.position: tuple[int, str] | None = None
        self.start(stack)
        # Registered last, so it runs first: the threads stop before their sockets close.
        stack.callback(self.finish)

    def start(self, stack: contextlib.ExitStack) -> None:
        """Connects the clients (closed by ``stack``) and starts the threads."""
        gw = self.gw
        for n in range(self.SUBSCRIBERS):
            ws = stack.enter_context(
                open_ws(ws_url(gw, (self.CHANNEL,), token=token(f"sub-{n}", [self.CHANNEL])))
            )
            self.spawn(self.drain, ws)
        # Upgrades, then never reads: no pong, so a 1011 keepalive timeout.
        stalled = StalledClient(gw, token("mute", [self.CHANNEL]), self.CHANNEL)
        stack.callback(stalled.close)
        self.refuse_some_upgrades()
        refused = gw.post("/v1/publish", data=b'{"channel":"ops","data":1}',
                          headers=bearer("not-the-key"))
        assert refused.status_code == 401, refused.text
        self.spawn(self.publish)
        self.spawn(self.recover)

    def spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self.threads.append(thread)

    def drain(self, ws: ClientConnection) -> None:
        while not self.stop.is_set():
            try:
                ws.recv(timeout=0.2)
            except TimeoutError:
                pass
            except Exception as err:  # noqa: BLE001 - reported by finish()
                self.errors.append(f"subscriber: {err!r}")
                return

    def publish(self) -> None:
        session = requests.Session()
        for n in range(self.MAX_PUBLISHES):
            if self.stop.wait(self.PUBLISH_PERIOD):
                break
            try:
                reply = session.post(
                    self.gw.admin_url + "/v1/publish",
                    data=json.dumps({"channel": self.CHANNEL, "data": {"n": n}}).encode(),
                    headers=bearer(API_KEY), timeout=5,
                )
            except requests.RequestException as err:
                self.errors.append(f"publish: {err!r}")
                return
            if reply.status_code != 200:
                self.errors.append(f"publish: {reply.status_code} {reply.text}")
                return
            self.position = (reply.json()["seq"], reply.json()["epoch"])
        session.close()

    def recover(self) -> None:
        """Leaves and resubscribes with ``since`` a few messages back (recovered), every
        other time with an epoch that is not the channel's (not recovered)."""
        tok = token("recoverer", [self.CHANNEL])
        with open_ws(ws_url(self.gw), additional_headers=bearer(tok)) as ws:
            for n in range(self.MAX_RECOVERIES):
                if self.stop.wait(self.RECOVER_PERIOD):
                    return
                if self.position is None:
                    continue
                seq, epoch = self.position
                since = {"seq": max(seq - 3, 0), "epoch": epoch if n % 2 else "Stale000"}
                try:
                    # Leave first: a subscribe with since in place recovers only what
                    # the connection has not been sent yet (nothing, here).
                    ws.send(json.dumps({"op": "unsubscribe", "channel": self.CHANNEL}))
                    ws.send(json.dumps({"op": "subscribe", "channel": self.CHANNEL,
                                        "since": since, "id": n}))
                    # The reply, then recovered and live deliveries: read them all.
                    while True:
                        try:
                            ws.recv(timeout=0.05)
                        except TimeoutError:
                            break
                except Exception as err:  # noqa: BLE001 - reported by finish()
                    self.errors.append(f"recoverer: {err!r}")
                    return

    def refuse_some_upgrades(self) -> None:
        for url in (ws_url(self.gw, (self.CHANNEL,)),  # no token: 401 missing
                    ws_url(self.gw, token=token("x") + "x")):  # forged: 401 bad_signature
            with pytest.raises(InvalidStatus) as refused:
                with open_ws(url):
                    pass
            assert refused.value.response.status_code == 401
        # A plain HTTP GET on the WebSocket port: 426 upgrade_required.
        with socket.create_connection((self.gw.listen.rsplit(":", 1)[0], self.gw.port), 5) as sock:
            sock.sendall(f"GET / HTTP/1.1\r\nHost: {self.gw.listen}\r\n\r\n".encode())
            assert sock.recv(4096).startswith(b"HTTP/1.1 426 "), "expected a 426"

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)
        assert not self.errors, self.errors


class TlsLoad(Load):
    """The TLS series, on a gateway started with ``--tls-cert``/``--tls-key``: subscribers
    over ``wss://`` (trusting the test CA), a client that reconnects all along (a full
    handshake every RECONNECT_PERIOD seconds, so the handshake histogram has a rate), a
    handshake that fails (garbage instead of a ClientHello), a reload that fails (a key
    that does not match the certificate) and one that succeeds (the pair restored)."""

    SUBSCRIBERS = 2
    #: At most this many reconnects, one every RECONNECT_PERIOD seconds.
    MAX_RECONNECTS = 480
    RECONNECT_PERIOD = 0.25
    #: Not a TLS record (content type 0), and not an HTTP request either.
    GARBAGE = b"\x00\x01\x02garbage, not a ClientHello\r\n\r\n"

    def __init__(self, gw: Gateway, stack: contextlib.ExitStack, pki: Pki, pair: CertPair):
        self.pki = pki
        self.pair = pair
        self.context = ssl.create_default_context(cafile=str(pki.ca))
        super().__init__(gw, stack)

    def open(self, url: str, **kwargs) -> ClientConnection:
        """``open_ws`` over TLS: ``url`` as :func:`ws_url` builds it (``wss://``, the
        gateway was started with ``--tls-cert``)."""
        assert url.startswith("wss://"), url
        return open_ws(url, ssl=self.context, **kwargs)

    def start(self, stack: contextlib.ExitStack) -> None:
        for n in range(self.SUBSCRIBERS):
            ws = stack.enter_context(self.open(
                ws_url(self.gw, (self.CHANNEL,), token=token(f"tls-sub-{n}", [self.CHANNEL]))
            ))
            self.spawn(self.drain, ws)
        self.fail_a_handshake()
        self.reload_badly_then_well()
        self.spawn(self.reconnect)

    def fail_a_handshake(self) -> None:
        before = self.gw.metric("pingwheel_tls_handshakes_total", result="failed")
        with socket.create_connection((self.gw.listen.rsplit(":", 1)[0], self.gw.port), 5) as sock:
            sock.settimeout(5)
            sock.sendall(self.GARBAGE)
            while sock.recv(4096):  # the gateway answers (an alert) and closes
                pass
        self.gw.wait_metric("pingwheel_tls_handshakes_total", before + 1, result="failed")

    def reload_badly_then_well(self) -> None:
        good_key = self.pair.key.read_bytes()
        self.pair.key.write_bytes(self.pki.issue("other").key.read_bytes())
        self.gw.signal(signal.SIGHUP)
        self.gw.wait_metric("pingwheel_tls_reloads_total", 1, timeout=10, result="failed")
        wait_for(lambda: "does not match" in self.gw.log(), timeout=5,
                 message="the failed reload's reason in the log")
        self.pair.key.write_bytes(good_key)
        self.gw.signal(signal.SIGHUP)
        self.gw.wait_metric("pingwheel_tls_reloads_total", 1, timeout=10, result="ok")

    def reconnect(self) -> None:
        tok = token("reconnecter", [self.CHANNEL])
        for _ in range(self.MAX_RECONNECTS):
            if self.stop.wait(self.RECONNECT_PERIOD):
                return
            try:
                with self.open(ws_url(self.gw), additional_headers=bearer(tok)) as ws:
                    ws.ping().wait(5)
            except Exception as err:  # noqa: BLE001 - reported by finish()
                self.errors.append(f"reconnecter: {err!r}")
                return


def finite_values(reply: dict) -> list[float]:
    values = []
    for series in reply["data"]["result"]:
        value = float(series["value"][1])
        if math.isfinite(value):
            values.append(value)
    return values


def test_every_dashboard_and_alert_query_runs_against_a_live_gateway(
    start_gateway, start_prometheus, tmp_path: Path
):
    config = tmp_path / "pingwheel.toml"
    config.write_text(Load.CONFIG)
    gw = start_gateway("--ping-interval", "1", "--ping-timeout", "1", "--workers", "2",
                       "--config", str(config), env=PUSH_ENV)
    pki = Pki(tmp_path / "pki")
    pair = pki.issue("server")  # two days left: PingwheelCertificateExpiringSoon pending
    tls_gw = start_gateway("--tls-cert", pair.cert, "--tls-key", pair.key,
                           "--ping-interval", "1", "--workers", "1", env=PUSH_ENV)
    prometheus = start_prometheus([gw.admin, tls_gw.admin], rule_files=(ALERTS,))
    board = dashboard()
    rules = alert_rules()
    with contextlib.ExitStack() as stack:
        Load(gw, stack)
        TlsLoad(tls_gw, stack, pki, pair)
        gw.wait_metric("pingwheel_ping_timeouts_total", 1, timeout=15)
        gw.wait_metric("pingwheel_deliveries_total", 1, timeout=15)
        gw.wait_metric("pingwheel_recovered_messages_total", 1, timeout=15)
        tls_gw.wait_metric("pingwheel_tls_handshakes_total", 10, timeout=15, result="full")

        # Every metric any query names is one the gateways export.
        exported = exported_names(gw) | exported_names(tls_gw)
        for where, expr in panel_queries(board) + [(r["alert"], r["expr"]) for r in rules]:
            unknown = metric_names(expr) - exported
            assert not unknown, f"{where}: no such metric {sorted(unknown)} in {expr}"

        # The variables, resolved the way Grafana does it, find both gateways (once
        # each has been scraped).
        instances = sorted([gw.admin, tls_gw.admin])
        values = wait_for(
            lambda: (found := resolve_variables(prometheus, board)).get("instance") == instances
            and found,
            timeout=QUERY_DEADLINE, interval=0.5, message=f"the dashboard variables: {instances}",
        )
        assert values == {"job": ["pingwheel"], "node": ["127.0.0.1"], "instance": instances}

        # Every panel query parses and returns at least one series with a number. The
        # load keeps running, so wait until the rate windows hold enough scrapes.
        queries = [(title, interpolate(expr, values)) for title, expr in panel_queries(board)]
        missing: dict[str, str] = {}

        def all_answered() -> bool:
            missing.clear()
            for title, expr in queries:
                reply = prometheus.query(expr)
                assert reply["status"] == "success", f"{title}: {expr}: {reply}"
                if not finite_values(reply):
                    missing[title] = f"{expr} -> {reply['data']['result']}"
            return not missing

        deadline = time.monotonic() + QUERY_DEADLINE
        while not all_answered():
            if time.monotonic() > deadline:
                pytest.fail(
                    "panel queries without a series holding a number after "
                    f"{QUERY_DEADLINE:.0f}s:\n" + "\n".join(f"{k}: {v}" for k, v in missing.items())
                )
            time.sleep(1)

        # Every alert expression parses as a query, and Prometheus evaluates every rule
        # against this gateway's series without an error.
        for rule in rules:
            reply = prometheus.query(rule["expr"])
            assert reply["status"] == "success", f"{rule['alert']}: {reply}"

        def evaluated() -> list[dict]:
            groups = prometheus.api("rules")["data"]["groups"]
            loaded = [r for g in groups for r in g["rules"]]
            done = [r for r in loaded if not r["lastEvaluation"].startswith("0001-")]
            return loaded if len(done) == len(rules) else []

        loaded = wait_for(evaluated, timeout=30, interval=0.5, message="every rule evaluated")
        assert sorted(r["name"] for r in loaded) == sorted(r["alert"] for r in rules)
        for rule in loaded:
            assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"

        # The TLS alerts see the live series: the failed reload fires at once, the
        # two-day certificate is pending (it needs 15 minutes).
        def tls_alerts_seen() -> list[dict]:
            loaded = evaluated()
            state = {r["name"]: r["state"] for r in loaded}
            return loaded if (state.get("PingwheelCertificateReloadFailed") == "firing"
                              and state.get("PingwheelCertificateExpiringSoon") == "pending") else []

        loaded = wait_for(tls_alerts_seen, timeout=30, interval=0.5,
                          message="PingwheelCertificateReloadFailed firing and "
                                  "PingwheelCertificateExpiringSoon pending")
        # Otherwise healthy loopback gateways: nothing else is firing. (The keepalive
        # timeout of the mute client may make PingwheelKeepaliveTimeoutsHigh pending,
        # never firing: it needs 10 minutes.)
        firing = [r["name"] for r in loaded if r["state"] == "firing"]
        assert firing == ["PingwheelCertificateReloadFailed"], (
            f"alerts firing on healthy gateways: {firing}"
        )
    assert gw.alive() and tls_gw.alive()


# ---- SIGHUP ----------------------------------------------------------------------------


def test_sighup_is_logged_and_harmless_and_sigterm_still_drains(start_gateway):
    gw = start_gateway("--ping-interval", "1", "--ping-timeout", "1")
    with open_ws(gw.ws_url) as ws:
        # Several, one at a time (the kernel merges pending ones): SIGHUP must not count
        # towards the "second signal" that exits at once.
        for n in range(1, 4):
            gw.signal(signal.SIGHUP)
            wait_for(lambda: gw.log().count("SIGHUP: nothing to reload") >= n, timeout=5,
                     message=f"SIGHUP number {n} logged")
        time.sleep(1.5)  # a keepalive round trip after the signals
        assert gw.alive()
        with open_ws(gw.ws_url) as second:
            second.ping().wait(5)
        ws.ping().wait(5)
        assert gw.get("/healthz").status_code == 200
        assert gw.metric("pingwheel_connections") == 1
    assert gw.terminate() == 0, "SIGTERM after SIGHUPs must drain and exit 0"
    assert "signal received: draining" in gw.log()


# ---- systemd ---------------------------------------------------------------------------


def unit_entries() -> dict[str, dict[str, list[str]]]:
    """``section -> key -> [values]`` of deploy/pingwheel.service (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"key outside a section: {line}"
        current.setdefault(key, []).append(value)
    return sections


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|min)?", value)
    assert match, value
    return int(match.group(1)) * {"ms": 0.001, "s": 1, None: 1, "min": 60}[match.group(2)]


def test_systemd_unit_has_the_promised_keys(pingwheel_bin):
    service = unit_entries()["Service"]
    start = service["ExecStart"][0].split()
    assert start[0] == "/usr/local/bin/pingwheel" and "--config" in start
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["LimitNOFILE"] == ["1048576"]
    for key, value in {
        "DynamicUser": "yes", "User": "pingwheel", "NoNewPrivileges": "yes",
        "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "PrivateDevices": "yes", "CapabilityBoundingSet": "", "KillSignal": "SIGTERM",
    }.items():
        assert service.get(key) == [value], f"{key}={service.get(key)}"
    # TimeoutStopSec must outlast the drain, or systemd SIGKILLs a drain half-way.
    help_text = subprocess.run(
        [str(pingwheel_bin), "--help"], capture_output=True, text=True, timeout=10
    ).stdout
    drain = re.search(r"--drain-timeout.*?\[default: (\w+)\]", help_text, re.DOTALL)
    assert drain, help_text
    assert seconds(service["TimeoutStopSec"][0]) >= seconds(drain.group(1)) + 10
    # Every flag on the ExecStart line is one the binary has.
    for flag in (word for word in start[1:] if word.startswith("--")):
        assert flag in help_text, f"ExecStart uses {flag}, which pingwheel does not know"


def test_the_units_exec_start_runs_with_the_shipped_config(start_gateway):
    """``ExecStart`` as written, with deploy/pingwheel.toml as the config file (only the
    listeners moved to free loopback ports: flags beat the file), starts and serves."""
    shipped = ROOT / "deploy" / "pingwheel.toml"
    assert shipped.is_file(), "deploy/pingwheel.toml (pingwheel --print-config) is missing"
    argv = unit_entries()["Service"]["ExecStart"][0].split()[1:]
    argv = [str(shipped) if word == "/etc/pingwheel/pingwheel.toml" else word for word in argv]
    assert str(shipped) in argv, argv
    gw = start_gateway(*argv)
    assert gw.get("/healthz").status_code == 200
    with open_ws(gw.ws_url) as ws:
        ws.ping().wait(5)
    assert gw.terminate() == 0


def test_systemd_analyze_verifies_the_unit_without_a_warning(pingwheel_bin, tmp_path: Path):
    # verify checks that ExecStart exists: point it at the binary just built.
    unit = tmp_path / "pingwheel.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/pingwheel", str(pingwheel_bin)))
    verify = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", str(unit)],
        capture_output=True, text=True, timeout=60,
    )
    assert verify.returncode == 0 and not verify.stderr.strip() and not verify.stdout.strip(), (
        f"systemd-analyze verify: {verify.stdout}{verify.stderr}"
    )
    security = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True, text=True, timeout=60,
    )
    level = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", security.stdout)
    assert level, security.stdout + security.stderr
    assert float(level.group(1)) <= 2.0, f"exposure {level.group(1)} {level.group(2)}"


# ---- sysctl ----------------------------------------------------------------------------


def sysctl_settings() -> dict[str, str]:
    settings = {}
    for line in SYSCTL.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, _, value = line.partition("=")
        settings[key.strip()] = " ".join(value.split())
    return settings


def test_sysctl_file_names_real_keys_and_matches_the_docs():
    settings = sysctl_settings()
    for key in ("fs.nr_open", "fs.file-max", "net.core.somaxconn",
                "net.ipv4.tcp_max_syn_backlog", "net.ipv4.ip_local_port_range",
                "net.ipv4.tcp_mem", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"):
        assert key in settings, f"{SYSCTL.name} lacks {key}"
    for key in settings:
        # A leading '-' means "ignore if this kernel lacks it" (conntrack when unloaded).
        path = Path("/proc/sys") / key.lstrip("-").replace(".", "/")
        if not key.startswith("-"):
            assert path.exists(), f"{key}: no {path} on this kernel"
    # fs.nr_open must allow the unit's LimitNOFILE.
    limit = int(unit_entries()["Service"]["LimitNOFILE"][0])
    assert int(settings["fs.nr_open"]) >= limit
    assert int(settings["fs.file-max"]) > int(settings["fs.nr_open"])
    # docs/operations.md shows the file verbatim.
    assert SYSCTL.read_text() in OPERATIONS.read_text(), (
        f"docs/operations.md must include {SYSCTL.relative_to(ROOT)} verbatim"
    )
