#!/usr/bin/env python3
"""Markdown tables from the criterion results of `cargo bench --bench wheel`.

Reads target/criterion/<workload>/<implementation>/<timers>/new/estimates.json (the
median of each benchmark) and prints one table per workload with the wheel-vs-others
ratios, for docs/benchmarks.md. Usage, from the repository root:

    python3 benches/wheel_report.py [target/criterion]
"""

import json
import sys
from pathlib import Path

WORKLOADS = [
    ("insert", "insert a timer 1..2000 ticks ahead", "per insert"),
    ("cancel", "cancel a random live timer", "per cancel"),
    ("reset", "keepalive: move a random live timer to ~20 s from now (later)", "per reset"),
    ("advance_due", "advance one tick, firing 1/200 of the timers", "per call"),
    ("advance_idle", "advance one tick, nothing due", "per call"),
]
IMPLS = ["wheel", "delay_queue", "binary_heap", "btree_map"]
SPREAD = 200  # fixture deadlines are spread over 200 ticks


def fmt_time(ns: float) -> str:
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.1f} µs"
    if ns >= 10:
        return f"{ns:.0f} ns"
    return f"{ns:.1f} ns"


def median_ns(root: Path, workload: str, impl: str, timers: int):
    path = root / workload / impl / str(timers) / "new" / "estimates.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())["median"]["point_estimate"]


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
    sizes = sorted(
        {int(p.name) for w, _, _ in WORKLOADS for i in IMPLS for p in (root / w / i).glob("*") if p.name.isdigit()}
    )
    if not sizes:
        sys.exit(f"no results under {root}")
    for workload, what, unit in WORKLOADS:
        print(f"### `{workload}`: {what} (median, {unit})\n")
        header = ["live timers", *IMPLS, "DelayQueue / wheel", "BinaryHeap / wheel", "BTreeMap / wheel"]
        print("| " + " | ".join(header) + " |")
        print("|" + "---:|" * len(header))
        for n in sizes:
            times = {i: median_ns(root, workload, i, n) for i in IMPLS}
            cells = [f"{n:,}"]
            for i in IMPLS:
                t = times[i]
                cell = "—" if t is None else fmt_time(t)
                if workload == "advance_due" and t is not None:
                    cell += f" ({fmt_time(t / (n / SPREAD))}/timer)"
                cells.append(cell)
            base = times["wheel"]
            for other in ["delay_queue", "binary_heap", "btree_map"]:
                t = times[other]
                cells.append("—" if t is None or not base else f"{t / base:.1f}×")
            print("| " + " | ".join(cells) + " |")
        print()


if __name__ == "__main__":
    main()
