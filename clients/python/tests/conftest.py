"""Makes ``pingwheel_client`` (one directory up) and the fakes importable; run with
``target/venv/bin/python -m pytest clients/python/tests`` (scripts/test does)."""

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Tests never skip (as in tests/conftest.py): a skip or an xfail is a failure."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped:
        report.outcome = "failed"
        report.longrepr = f"tests never skip, but this one did: {report.longrepr}"
