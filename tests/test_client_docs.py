"""Every example in docs/clients.md, run against the real gateway.

As in docs/protocol.md (tests/test_protocol_docs.py), each example is marked with
``<!-- example: NAME -->`` and its exact output with ``<!-- output: NAME -->``. Each client
example runs against a fresh gateway started as protocol.md's ``run-gateway`` says (only
its addresses replaced): the Python one in its own interpreter (with protocol.md's
``mint_token`` defined first), the Node one under ``node``, the browser one in headless
Chromium on a page that serves the module and a ``/token`` endpoint. Once the gateway holds
the example's subscription, the test publishes the two scores of the page and compares what
the example printed with the page's output block. An example this file does not know how to
run fails the test.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
from typing import Optional

import pytest

from clients_support import CLIENTS_PYTHON, REPORTER, ClientPageServer
from conftest import ROOT, Gateway, wait_for
from test_browser import chromium
from test_protocol_docs import adapt, doc_example, run_gateway_command

DOC = ROOT / "docs" / "clients.md"
_BLOCK = re.compile(r"<!-- (example|output): ([\w.-]+) -->\n```(\w*)\n(.*?)^```", re.S | re.M)
_MARKER = re.compile(r"^<!-- (example|output): ", re.M)
#: What the test publishes to `scores` once an example is subscribed (the page's words).
SCORES = ['{"home":2,"away":1}', '{"home":3,"away":1}']
#: The token secret of protocol.md's run-gateway, which the page's examples use.
DOC_SECRET = "change-me-token-secret"


def blocks() -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    """(examples by name -> (language, code), outputs by name), in page order."""
    text = DOC.read_text()
    found = [m.groups() for m in _BLOCK.finditer(text)]
    assert len(found) == len(_MARKER.findall(text)), "a marker without a code block after it"
    examples = {name: (lang, code) for kind, name, lang, code in found if kind == "example"}
    outputs = {name: code for kind, name, lang, code in found if kind == "output"}
    assert set(outputs) <= set(examples), f"outputs without an example: {set(outputs) - set(examples)}"
    return examples, outputs


class Background:
    """A command whose stdout lines are collected; killed by PID at :meth:`stop`."""

    def __init__(self, args: list[str], env: Optional[dict] = None, cwd=None):
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next_line(self, timeout: float = 15.0) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"the example printed nothing within {timeout:.0f}s")
        if line is None:
            self.process.wait(5)
            pytest.fail(f"the example exited ({self.process.returncode}): {self.process.stderr.read()}")
        return line

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self.process.stdout.close()
        self.process.stderr.close()


def publish_scores(gw: Gateway, env: dict) -> None:
    """Once the example's subscription is held, publishes the page's two scores."""
    wait_for(lambda: gw.metric("pingwheel_subscriptions") >= 1, 15,
             message="the example's subscription")
    for data in SCORES:
        response = gw.post("/v1/publish", data=('{"channel":"scores","data":%s}' % data).encode(),
                           headers={"Authorization": f"Bearer {env['PINGWHEEL_API_KEY']}"})
        assert response.status_code == 200, response.text


def doc_token() -> str:
    namespace: dict = {}
    exec(doc_example("mint-token-python"), namespace)
    return namespace["mint_token"](DOC_SECRET, "42", ["scores"])


def run_python(code: str, gw: Gateway, env: dict) -> list[str]:
    prelude = f"import sys\nsys.path.insert(0, {str(CLIENTS_PYTHON)!r})\n"
    script = prelude + doc_example("mint-token-python") + "\n" + adapt(code, gw)
    example = Background([sys.executable, "-u", "-c", script])
    try:
        lines = [example.next_line(), example.next_line()]
        publish_scores(gw, env)
        return lines + [example.next_line() for _ in SCORES]
    finally:
        example.stop()


def node_flags() -> list[str]:
    """``--experimental-websocket`` where the global WebSocket needs it (Node 20, 21)."""
    probe = subprocess.run(["node", "-e", "process.exit(typeof WebSocket === 'undefined' ? 1 : 0)"])
    return [] if probe.returncode == 0 else ["--experimental-websocket"]


def run_node(code: str, gw: Gateway, env: dict) -> list[str]:
    child_env = {**os.environ, "PINGWHEEL_CLIENT_TOKEN": doc_token()}
    example = Background(["node", *node_flags(), "--no-warnings", "--input-type=module", "-e",
                          adapt(code, gw)], env=child_env, cwd=ROOT)
    try:
        publish_scores(gw, env)
        return [example.next_line() for _ in SCORES]
    finally:
        example.stop()


def run_browser(code: str, gw: Gateway, env: dict, tmp_path) -> list[str]:
    with ClientPageServer(token_answer=lambda query: doc_token()) as page:
        page.page = REPORTER + '<script type="module">\n' + adapt(code, gw) + "\n</script>\n"
        with chromium(page.origin + "/", tmp_path / "profile", "chromium-client-docs.log"):
            page.wait_for(lambda p: len(p.reports("console.log")) >= 2, "the connected state")
            publish_scores(gw, env)
            page.wait_for(lambda p: len(p.reports("console.log")) >= 4, "both scores")
            return [" ".join(args) for args in page.reports("console.log")]


def test_every_example_runs_and_prints_its_output(start_gateway, tmp_path):
    examples, outputs = blocks()
    env, flags = run_gateway_command(doc_example("run-gateway"))
    assert env["PINGWHEEL_TOKEN_SECRET"] == DOC_SECRET, "the page's examples mint with this secret"
    ran = []
    for name, (language, code) in examples.items():
        if language == "sh" and name == "js-size":
            continue  # test_the_stated_size_is_the_measured_one
        gw = start_gateway(*flags, env=env)
        if language == "python":
            printed = run_python(code, gw, env)
        elif language == "js" and name == "js-node":
            printed = run_node(code, gw, env)
        elif language == "js":
            printed = run_browser(code, gw, env, tmp_path / name)
        else:
            pytest.fail(f"no test runs example {name} ({language})")
        assert printed == outputs[name].strip().splitlines(), f"example {name}"
        ran.append(name)
        gw.kill()
    assert ran == [n for n in examples if n != "js-size"]
    assert {"js-browser", "js-node", "python-asyncio"} <= set(ran)


def test_the_stated_size_is_the_measured_one():
    examples, _ = blocks()
    language, command = examples["js-size"]
    assert language == "sh"
    done = subprocess.run(["sh", "-c", command], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    size = int(done.stdout.strip())
    stated = f"{size / 1000:.1f} KB"
    text = DOC.read_text()
    assert text.count(stated) >= 2, f"docs/clients.md should say {stated} (measured {size} B)"
