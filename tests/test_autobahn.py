"""RFC 6455 conformance: the Autobahn|Testsuite fuzzing client (cases 1-10) against
`pingwheel --echo` with the message limit raised to 16 MiB.

The runner is tests/autobahn/ (the suite's Python 3 port, see its README and NOTICE);
its run.sh installs autobahntestsuite 25.10.1 from PyPI into target/autobahn on first use.
tests/test_tls.py runs the same cases over wss:// with :func:`assert_autobahn_passes`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import Gateway

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "tests" / "autobahn"


def assert_autobahn_passes(gw: Gateway, target: str, reports: Path) -> str:
    """Runs cases 1-10 against ``target`` (``HOST:PORT``, ``ws://…`` or ``wss://…``) of
    the echoing gateway ``gw``, writing the reports to ``reports``; fails unless every
    case passed, none is non-strict and every close was clean. Returns the summary line."""
    run = SUITE / "run.sh"
    if not run.is_file():
        pytest.fail(f"Autobahn runner not found at {run}", pytrace=False)
    env = dict(os.environ, AUTOBAHN_DIR=str(ROOT / "target" / "autobahn"), AUTOBAHN_REPORTS=str(reports))
    result = subprocess.run(
        [str(run), target], capture_output=True, text=True, timeout=900, env=env, cwd=ROOT
    )
    summary = [line for line in result.stdout.splitlines() if line.startswith("autobahn:")]
    assert summary, f"no summary line\nstdout:\n{result.stdout}\nstderr:\n{result.stderr[-3000:]}"
    print(summary[0])
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|non-strict|informational|unimplemented|failed)", summary[0])}
    assert result.returncode == 0 and counts["failed"] == 0, result.stdout
    assert counts["non-strict"] == 0, f"non-strict cases: {summary[0]}"
    assert counts["passed"] >= 290, summary[0]
    # Every case closed cleanly from both sides.
    index = json.loads((reports / "index.json").read_text())
    closes = {r["behaviorClose"] for cases in index.values() for r in cases.values()}
    assert closes <= {"OK", "INFORMATIONAL"}, closes
    assert gw.alive(), "the gateway survived the fuzzer"
    return summary[0]


def test_autobahn_cases_1_to_10_all_pass_and_none_is_non_strict(start_gateway):
    gw = start_gateway("--echo", "--max-message-size", "16MiB")
    assert_autobahn_passes(gw, f"127.0.0.1:{gw.port}", ROOT / "target" / "autobahn" / "reports")
