"""Makes ``pingwheel_client`` (one directory up) and the fakes importable; run with
``target/venv/bin/python -m pytest clients/python/tests`` (scripts/test does)."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
