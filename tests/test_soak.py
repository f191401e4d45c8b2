"""A few seconds of scripts/soak.py: 32 concurrent clients, no errors, memory flat."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_short_soak():
    spec = importlib.util.spec_from_file_location("soak_script", ROOT / "scripts" / "soak.py")
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    report = soak.run(
        ["--duration", "4", "--warmup", "1.5", "--rss-every", "0.25", "--n", "128",
         "--hostile-clients", "1"]
    )  # fmt: skip
    assert report["clients"] == 32 and report["errors"] == {}
    assert report["requests"] >= 32, report
    assert 0 < report["p50_ms"] <= report["p99_ms"]
    assert report["rss_start_mb"] > 0 and len(report["rss_trace_mb"]) >= 3
    assert report["rss_growth_pct"] < 25, report  # the 10-minute run holds it under 10 %
    assert report["server_exit_code"] == 0
    # huge shapes, names and versions all along: each refused, none costs the server much
    assert set(report["hostile_statuses"]) == {"INVALID_ARGUMENT"}, report["hostile_statuses"]
    assert report["rss_peak_mb"] < report["rss_start_mb"] + 300, report
