"""Every example in docs/protocol.md, run against the real gateway.

The page marks each example with ``<!-- example: NAME -->`` before its code block, and
``<!-- reply: NAME -->`` before the exact output where it gives one. Its exact replies
assume a fresh gateway started as in ``run-gateway``, the Python client of section 1
connected, and the examples run in page order; :func:`test_every_example_runs_in_page_order`
does exactly that, only substituting the test gateway's host:port for the page's
``127.0.0.1:8080`` / ``localhost:8080`` / ``127.0.0.1:9090``. An example this file does
not know how to run fails the test, so a new example cannot go untested.

Epochs are random per stream and per run, so the page spells them as placeholders:
:class:`Epochs` learns which real epoch each placeholder stands for at its first
appearance in an output and holds the page to it from then on (one placeholder, one
stream's epoch, throughout), and puts the real epochs into requests that quote one.

The browser snippets (``browser-client``, ``browser-reconnect``) need a real browser:
tests/test_browser.py runs them in headless Chromium, and the walk here checks that it
does.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import quote

import pytest
from websockets.sync.client import connect

from conftest import ROOT, Gateway, wait_for

DOC = ROOT / "docs" / "protocol.md"
BROWSER_TEST = Path(__file__).with_name("test_browser.py")
#: The page's addresses, as its examples spell them.
DOC_WS_ADDRESSES = ("127.0.0.1:8080", "localhost:8080")
DOC_ADMIN_ADDRESS = "127.0.0.1:9090"
#: A marker comment, then a fenced code block: (kind, name, language, code).
_BLOCK = re.compile(r"<!-- (example|reply): ([\w.-]+) -->\n```(\w*)\n(.*?)^```", re.S | re.M)
_MARKER = re.compile(r"^<!-- (example|reply): ", re.M)
#: How long an example may run.
EXAMPLE_TIMEOUT = 30
#: An epoch as the gateway writes it in JSON.
_EPOCH = re.compile(r'"epoch":"([A-Za-z0-9]{8})"')
#: The JavaScript examples, each run in Chromium by tests/test_browser.py.
JS_EXAMPLES = ("browser-client", "browser-reconnect")


class Epochs:
    """The page's placeholder epochs ↔ the real ones of this run (a bijection)."""

    def __init__(self):
        self.real: dict[str, str] = {}  # placeholder -> real
        self.placeholder: dict[str, str] = {}  # real -> placeholder

    def check(self, got: str, want: str, what: str) -> None:
        """Asserts ``got`` (real output) equals ``want`` (the page) up to epochs, which
        must map one to one, consistently with every earlier output."""
        real = _EPOCH.findall(got)
        doc = _EPOCH.findall(want)
        assert len(real) == len(doc), f"{what}: {got!r} != {want!r}"
        for r, d in zip(real, doc):
            known_real = self.real.setdefault(d, r)
            known_doc = self.placeholder.setdefault(r, d)
            assert (known_real, known_doc) == (r, d), (
                f"{what}: the page's epoch {d} stood for {known_real}, now {r} "
                f"(or {r} was {known_doc})")
        assert _EPOCH.sub(lambda m: f'"epoch":"{self.placeholder[m[1]]}"', got) == want, (
            f"{what}: {got!r} != {want!r}")

    def fill(self, text: str) -> str:
        """``text`` with each placeholder the page quotes replaced by its real epoch."""
        def real(match: re.Match) -> str:
            assert match[1] in self.real, f"the page quotes epoch {match[1]} before any output showed it"
            return f'"epoch":"{self.real[match[1]]}"'
        return _EPOCH.sub(real, text)


@dataclass(frozen=True)
class Block:
    kind: str  # "example" or "reply"
    name: str
    language: str
    code: str


def doc_blocks() -> list[Block]:
    """Every marked block of docs/protocol.md, in page order."""
    text = DOC.read_text()
    blocks = [Block(*match.groups()) for match in _BLOCK.finditer(text)]
    markers = len(_MARKER.findall(text))
    assert len(blocks) == markers, (
        f"{DOC}: {markers} example/reply markers but only {len(blocks)} are directly "
        "followed by a fenced code block")
    return blocks


def doc_examples() -> dict[str, Block]:
    """The examples by name, in page order (names are unique)."""
    examples = {}
    for block in doc_blocks():
        if block.kind == "example":
            assert block.name not in examples, f"example {block.name} appears twice"
            examples[block.name] = block
    return examples


def doc_replies() -> dict[str, str]:
    return {b.name: b.code for b in doc_blocks() if b.kind == "reply"}


def doc_example(name: str) -> str:
    """The code of example ``name``."""
    examples = doc_examples()
    assert name in examples, f"docs/protocol.md has no example {name!r}"
    return examples[name].code


def doc_mint_token() -> Callable[..., str]:
    """The page's own ``mint_token`` (example ``mint-token-python``)."""
    namespace: dict = {}
    exec(doc_example("mint-token-python"), namespace)
    return namespace["mint_token"]


def adapt(code: str, gw: Gateway) -> str:
    """The example with the page's addresses replaced by ``gw``'s: nothing else changes."""
    for address in DOC_WS_ADDRESSES:
        code = code.replace(address, gw.listen)
    return code.replace(DOC_ADMIN_ADDRESS, gw.admin)


def run_gateway_command(code: str) -> tuple[dict[str, str], list[str]]:
    """The environment and the flags of example ``run-gateway`` (``export`` lines, then
    one ``pingwheel`` command), with its listen addresses turned into port 0."""
    env: dict[str, str] = {}
    flags: Optional[list[str]] = None
    for line in code.strip().splitlines():
        words = shlex.split(line)
        if words[0] == "export" and len(words) == 2 and "=" in words[1]:
            name, value = words[1].split("=", 1)
            env[name] = value
        elif words[0] == "pingwheel" and flags is None:
            flags = [re.sub(r"^(127\.0\.0\.1|localhost):\d+$", "127.0.0.1:0", w) for w in words[1:]]
        else:
            pytest.fail(f"run-gateway: don't know how to run line {line!r}")
    assert flags is not None, "run-gateway has no pingwheel command"
    return env, flags


class BackgroundScript:
    """A Python example running in its own interpreter (for one that never returns):
    its stdout lines are collected; :meth:`stop` kills it by PID."""

    def __init__(self, code: str):
        self.process = subprocess.Popen(
            [sys.executable, "-u", "-c", code],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next_line(self, timeout: float = 10.0) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"the example printed nothing within {timeout:.0f}s")
        if line is None:
            self.process.wait(5)
            pytest.fail(f"the example exited ({self.process.returncode}): "
                        f"{self.process.stderr.read()}")
        return line

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self.process.stdout.close()
        self.process.stderr.close()


def run_shell_example(code: str, env: dict[str, str]) -> str:
    """Runs a sh example; returns its stdout (failing on a non-zero exit)."""
    missing = [tool for tool in ("curl", "sh") if shutil.which(tool) is None]
    assert not missing, f"{missing} not installed: the docs' shell examples need them"
    done = subprocess.run(["sh", "-c", code], env=env, capture_output=True, text=True,
                          timeout=EXAMPLE_TIMEOUT)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr}\n{code}"
    assert done.stderr == "", done.stderr
    return done.stdout


def run_conversation(code: str, url: str, tok: str, epochs: Epochs) -> None:
    """A conversation example (``client-errors``, ``recover-user-stream``): each
    ``> request`` line is sent (with the real epochs it quotes) and the ``< reply``
    lines after it are what must come back, in order, exactly up to epochs."""
    lines = code.strip().splitlines()
    assert lines and lines[0].startswith("> "), code
    with connect(url, additional_headers={"Authorization": f"Bearer {tok}"},
                 open_timeout=5, close_timeout=2, proxy=None) as ws:
        request = None
        for line in lines:
            if line.startswith("> "):
                request = line[2:]
                ws.send(epochs.fill(request))
                continue
            assert line.startswith("< ") and request is not None, line
            epochs.check(ws.recv(timeout=5), line[2:], f"reply to {request!r}")


def check_delivery_example(code: str, gw: Gateway, tok: str, api_key: str) -> None:
    """Example ``delivery``: publishing its ``data`` on its channel (to ``gw``, a second
    gateway, so the walk's positions stay as the page says) delivers exactly that text,
    with the real seq and epoch."""
    example = code.strip()
    match = re.fullmatch(
        r'\{"channel":("[^"]*"),"seq":(\d+),"epoch":"([A-Za-z0-9]{8})","data":(.*)\}', example)
    assert match, f"delivery example has an unexpected shape: {example}"
    channel, raw_data = json.loads(match[1]), match[4]
    with connect(f"{gw.ws_url}?channel={quote(channel)}",
                 additional_headers={"Authorization": f"Bearer {tok}"},
                 open_timeout=5, close_timeout=2, proxy=None) as ws:
        body = '{"channel":%s,"data":%s}' % (json.dumps(channel), raw_data)
        response = gw.post("/v1/publish", data=body.encode(),
                           headers={"Authorization": f"Bearer {api_key}"})
        assert response.status_code == 200, response.text
        reply = response.json()
        want = example.replace(f'"seq":{match[2]}', f'"seq":{reply["seq"]}', 1)
        want = want.replace(f'"epoch":"{match[3]}"', f'"epoch":"{reply["epoch"]}"', 1)
        assert ws.recv(timeout=5) == want


#: What the page's Python client prints for the deliveries of the curl examples, in
#: order (it is user 42 on `scores` and `team:7`; seq values from the page's replies:
#: each stream counts its own).
PYTHON_CLIENT_DELIVERIES = [
    "scores 1 {'home': 2, 'away': 1}",
    "#user 1 {'text': 'your order shipped'}",
    "scores 2 kick-off in 5 minutes",
    "team:7 1 {'goal': 'Ana'}",
    "#user 2 {'badge': 'fan'}",
]


def test_every_example_runs_in_page_order(start_gateway):
    examples = doc_examples()
    replies = doc_replies()
    orphans = set(replies) - set(examples)
    assert not orphans, f"replies without an example: {orphans}"
    names = list(examples)
    assert names[0] == "run-gateway", "the page must start with how the gateway is run"

    env, flags = run_gateway_command(examples["run-gateway"].code)
    gw = start_gateway(*flags, env=env)
    shell_env = {"PATH": os.environ.get("PATH", os.defpath), **env}

    namespace: dict = {}  # shared by the in-process Python examples, as in one session
    epochs = Epochs()
    handled: list[str] = ["run-gateway"]
    compared: set[str] = set()  # examples whose output was checked against their reply
    client: Optional[BackgroundScript] = None
    try:
        for name in names[1:]:
            block = examples[name]
            code = adapt(block.code, gw)
            if name == "mint-token-python":
                exec(code, namespace)
                assert callable(namespace.get("mint_token")) and namespace.get("token")
            elif name == "python-client":
                # It reads deliveries forever: run it beside the walk, as the page says.
                client = BackgroundScript(adapt(examples["mint-token-python"].code, gw) + code)
                ack = re.search(r"print\(ws\.recv\(\)\)\s*#\s*(.+)$", block.code, re.M)
                assert ack, "python-client: the expected first reply is no longer a comment"
                epochs.check(client.next_line(), ack[1].strip(), "python-client's first reply")
            elif block.language == "python":
                exec(code, dict(namespace))
            elif block.language == "js":
                # A browser is needed: test_browser.py runs this snippet in Chromium.
                assert name in JS_EXAMPLES, f"no test runs JavaScript example {name}"
                assert f'doc_example("{name}")' in BROWSER_TEST.read_text(), (
                    f"tests/test_browser.py no longer runs example {name}")
            elif block.language == "text" and code.startswith("> "):
                run_conversation(code, gw.ws_url, namespace["token"], epochs)
            elif block.language == "json" and name == "delivery":
                fresh = start_gateway(*flags, env=env)
                check_delivery_example(code, fresh, namespace["token"], env["PINGWHEEL_API_KEY"])
            elif block.language == "sh":
                # Other connections of user 42 (the token-sources and conversation
                # examples) must be gone: the replies count the Python client only.
                wait_for(lambda: gw.metric("pingwheel_connections") == 1,
                         message="only the Python client connected")
                output = run_shell_example(code, shell_env)
                if name in replies:
                    epochs.check(output.rstrip("\n"), replies[name].rstrip("\n"), f"example {name}")
                    compared.add(name)
            else:
                pytest.fail(f"no test runs example {name} ({block.language or 'no language'})")
            handled.append(name)

        assert client is not None, "the page has no python-client example"
        printed = [client.next_line() for _ in PYTHON_CLIENT_DELIVERIES]
        assert printed == PYTHON_CLIENT_DELIVERIES
    finally:
        if client is not None:
            client.stop()
    assert handled == names
    assert compared == set(replies), f"replies never compared: {set(replies) - compared}"
