"""Unit tests of the pure parts of `scripts/bench million` (issue 13's 1,000,000-connection
run): how many gateway processes fit the open-files limit, the kernel-limit checks, the
/proc parsers and the figures taken from a harness report. The run itself is a benchmark
(scripts/bench), never a test."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    loader = importlib.machinery.SourceFileLoader("bench", str(ROOT / "scripts" / "bench"))
    spec = importlib.util.spec_from_loader("bench", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_gateways_leave_room_for_reuseport_imbalance(bench):
    # 1,000,000 ÷ 19,800 would be 51 processes, but a binomial share of 19,608 ± 140 puts
    # the busiest of 51 past the limit; 53 keep six standard deviations of headroom.
    assert bench.gateways_needed(1_000_000, 20_000) == 53
    assert bench.gateways_needed(200_000, 20_000) == 11
    assert bench.gateways_needed(100, 20_000) == 1
    for n in (1, 19_000, 100_000, 500_000, 1_000_000):
        g = bench.gateways_needed(n, 20_000)
        mean = n / g
        assert mean + 6 * (mean * (1 - 1 / g)) ** 0.5 <= 20_000 - bench.GATEWAY_FD_RESERVE
        if g > 1:
            fewer = n / (g - 1)
            assert fewer + 6 * (fewer * (1 - 1 / (g - 1))) ** 0.5 > 20_000 - bench.GATEWAY_FD_RESERVE
    with pytest.raises(ValueError):
        bench.gateways_needed(10, 150)


def test_harness_processes_match_the_harness_default(bench):
    assert bench.harness_processes(1_000_000, 20_000) == 51
    assert bench.harness_processes(200_000, 20_000) == 11
    assert bench.harness_processes(19_900, 20_000) == 1


SYSCTLS = {
    "fs.file-max": "2466126",
    "net.ipv4.ip_local_port_range": "32768\t60999",
    "net.ipv4.tcp_mem": "287892\t383858\t575784",
    "kernel.pid_max": "32768",
    "net.netfilter.nf_conntrack_max": "262144",
    "net.netfilter.nf_conntrack_count": "0",
    "net.core.somaxconn": "4096",
    "net.ipv4.tcp_max_orphans": "131072",
}


def test_kernel_checks_pass_on_this_machine_type(bench):
    checks = bench.kernel_checks(1_000_000, 106, 253, SYSCTLS)
    assert all(ok for _, ok, _ in checks), checks


def test_kernel_checks_name_what_is_too_small(bench):
    def failing(**changes):
        sysctls = dict(SYSCTLS)
        for k, v in changes.items():
            if v is None:
                sysctls.pop(k.replace("__", "."), None)
            else:
                sysctls[k.replace("__", ".")] = v
        return {name for name, ok, _ in bench.kernel_checks(1_000_000, 106, 253, sysctls) if not ok}

    assert failing(**{"fs.file-max": "1000000"}) == {"fs.file-max"}
    assert failing(**{"fs.file-max": None}) == {"fs.file-max"}
    assert failing(**{"net.ipv4.tcp_mem": "1000 2000 3000"}) == {"net.ipv4.tcp_mem"}
    assert failing(**{"kernel.pid_max": "300"}) == {"kernel.pid_max"}
    assert failing(**{"net.core.somaxconn": "128"}) == {"net.core.somaxconn"}
    # Conntrack matters only when something is tracked.
    assert failing(**{"net.netfilter.nf_conntrack_count": "17"}) == {"net.netfilter.nf_conntrack_max"}
    assert failing(**{"net.netfilter.nf_conntrack_max": "2000000", "net.netfilter.nf_conntrack_count": "17"}) == set()
    # 28,232 ports per source: 35 sources are too few for 1,000,000 connections.
    assert {n for n, ok, _ in bench.kernel_checks(1_000_000, 106, 35, SYSCTLS) if not ok} == {
        "net.ipv4.ip_local_port_range"}


def test_proc_parsers(bench):
    mem = bench.parse_meminfo("MemTotal:       24554352 kB\nSlab:             391972 kB\nHugePages_Total:       0\n")
    assert mem == {"MemTotal": 24554352 * 1024, "Slab": 391972 * 1024, "HugePages_Total": 0}
    sock = bench.parse_sockstat(
        "sockets: used 19\nTCP: inuse 1 orphan 0 tw 3 alloc 2 mem 77\nUDP: inuse 0 mem 0\n")
    assert sock["sockets_used"] == 19
    assert (sock["TCP_inuse"], sock["TCP_tw"], sock["TCP_alloc"], sock["TCP_mem"]) == (1, 3, 2, 77)


def sample(inuse, slab, unreclaim, mem=0):
    return {"tcp_inuse": inuse, "slab": slab, "sunreclaim": unreclaim, "tcp_mem_pages": mem,
            "tcp_orphan": 0, "conntrack": 0}


def test_kernel_growth_is_taken_at_the_most_sockets(bench):
    before = sample(1, 400_000_000, 50_000_000)
    samples = [sample(1_000, 401_000_000, 50_500_000, 10),
               sample(2_000_001, 8_600_000_000, 7_000_000_000, 900),
               sample(3, 1_000_000_000, 60_000_000, 5)]
    g = bench.kernel_growth(before, samples)
    assert g["sockets"] == 2_000_000
    assert g["slab_growth"] == 8_200_000_000
    assert g["slab_per_socket"] == 4_100
    assert g["sunreclaim_per_socket"] == pytest.approx(3_475)
    assert g["tcp_mem_pages_max"] == 900


def test_figures_from_a_report(bench):
    lat = {"count": 10, "min": 1, "mean": 2, "p50": 900.0, "p90": 1, "p99": 1800.0, "p999": 1, "max": 2100.0}
    report = {
        "ok": False,
        "assertions": [{"name": "ping_interval", "ok": True, "detail": ""},
                       {"name": "max_lost", "ok": False, "detail": ""}],
        "connections": {"target": 10, "established": 10, "failed": 0, "lost": 1, "failed_by_cause": {},
                        "lost_by_cause": {"reset": 1}, "open_at_end": 9, "ramp_rate_achieved": 5.0},
        "timing": {"ramp_s": 2.0, "hold_s": 300.5},
        "push": {"published": 1, "delivered": 10, "expected": 10, "missing": 0, "reordered": 0,
                 "duplicates": 0, "latency_ms": lat},
        "pings": {"interval_ms": lat, "received_hold": 150},
        "server": {"bytes_per_connection": 300.0, "bytes_per_connection_end": 310.0, "rss_before": 1000,
                   "rss_after_ramp": 4000, "cpu_percent_of_core": 50.0, "cpu_user_seconds_hold": 10.0,
                   "cpu_seconds_hold": 150.0},
        "harness": {"cpu_percent_of_core": 60.0, "cpu_seconds_hold": 180.0, "processes": 2,
                    "bytes_per_connection": 220.0},
    }
    f = bench.million_figures(report)
    assert (f["makespan_ms"], f["p99_ms"], f["lost"], f["pings_on_time"]) == (2100.0, 1800.0, 1, True)
    assert f["server_rss_delta"] == 3000
    assert f["assertions_failed"] == ["max_lost"]
