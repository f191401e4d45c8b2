"""The Grafana dashboard and the Prometheus alert rules only query metrics that exist.

A real server on loopback answers a few certifications (certified, abstained and failed
requests), its /metrics page is scraped over HTTP, and every metric name in the dashboard's and
the alert rules' PromQL must be one the scrape declares. Triton's ``nv_*`` names are checked
against Triton's documented metric names instead, since no Triton runs here.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from smoothserve_client.client import SmoothServeClient, SmoothServeError
from smoothserve_dev.models import write_linear_model
from smoothserve_dev.testing import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "smoothserve.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
OPERATIONS = ROOT / "docs" / "operations.md"

# Triton's metrics (docs/user_guide/metrics.md, Triton 2.51 / NGC 24.10): counters carry no
# _total suffix; the *_summary_us and histogram families are optional (--metrics-config).
TRITON_METRICS = {
    "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
    "nv_inference_exec_count", "nv_inference_pending_request_count",
    "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
    "nv_inference_request_summary_us", "nv_inference_queue_summary_us",
    "nv_inference_compute_input_summary_us", "nv_inference_compute_infer_summary_us",
    "nv_inference_compute_output_summary_us",
    "nv_gpu_utilization", "nv_gpu_memory_total_bytes", "nv_gpu_memory_used_bytes",
    "nv_gpu_power_usage", "nv_gpu_power_limit", "nv_energy_consumption",
    "nv_cpu_utilization", "nv_cpu_memory_total_bytes", "nv_cpu_memory_used_bytes",
    "nv_pinned_memory_pool_total_bytes", "nv_pinned_memory_pool_used_bytes",
    "nv_cache_num_hits_per_model", "nv_cache_num_misses_per_model",
    "nv_cache_hit_duration_per_model", "nv_cache_miss_duration_per_model",
}  # fmt: skip
# Series Prometheus makes itself for every scrape target, never on a /metrics page.
PROMETHEUS_SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan",
}  # fmt: skip
SHAPE = (1, 4, 4)
SAMPLES_LIMIT = 3_000_000


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (Grafana variables allowed)."""
    label_values = re.fullmatch(r"\s*label_values\(\s*([A-Za-z_:][\w:]*)\s*,.*\)\s*", expr)
    if label_values:  # Grafana's template-variable query, not PromQL
        return {label_values.group(1)}
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\$\{?\w+\}?", "1", text)  # Grafana variables ($__rate_interval, $model)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.:])[A-Za-z_:][\w:]*", text):
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group().lower() not in PROMQL_WORDS:
            names.add(match.group())
    return names


def dashboard_queries(dashboard: dict) -> list[str]:
    queries: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "expr" and isinstance(value, str):
                    queries.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(dashboard.get("panels", []))
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def alert_expressions(text: str) -> list[str]:
    """``expr:`` values of a rule file: one line, or a ``|``/``>`` block (no YAML library here)."""
    lines = text.splitlines()
    expressions = []
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)(?:-\s+)?expr:\s*(.*)$", line)
        if not match:
            continue
        indent, value = len(match.group(1)), match.group(2).strip()
        if value and value[0] not in "|>":
            expressions.append(value)
            continue
        block = []
        for following in lines[i + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            block.append(following.strip())
        expressions.append(" ".join(block).strip())
    return expressions


def declared_names(scrape: str) -> set[str]:
    """Every series name a /metrics page declares or shows, as written on the page.

    Read from the text itself: prometheus_client's parser renames counters to *_total, which
    Triton's counters are not.
    """
    suffixes = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}
    names = set()
    for line in scrape.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names |= {name} | {name + suffix for suffix in suffixes.get(kind, ())}
        elif line.strip() and not line.startswith("#"):
            match = re.match(r"[A-Za-z_:][\w:]*", line)
            assert match, line
            names.add(match.group())
    return names


BRIGHT, DARK = np.full(SHAPE, 0.9, np.float32), np.full(SHAPE, 0.1, np.float32)
EDGE = np.full(SHAPE, 0.5, np.float32)  # on the decision boundary: abstains


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("repo")
    # class 1 where mean(x) > 0.5; certified radius |w.x + b| / ||w||.
    w = np.full(int(np.prod(SHAPE)), 1.0)
    write_linear_model(repo, "linear", w, -0.5 * w.size, sigma=0.25, shape=SHAPE)
    with ServerProcess(repo, ["--max-samples-in-flight", str(SAMPLES_LIMIT)]) as server:
        yield server


def run_workload(server: ServerProcess) -> None:
    """Certified, abstained, predict-mode and failed requests."""
    with SmoothServeClient(server.address, timeout=60) as client:
        results = [
            client.predict("linear", BRIGHT, n0=64, n=512),
            client.predict("linear", DARK, n0=64, n=512),
            client.predict("linear", EDGE, n0=64, n=512),
            client.predict("linear", BRIGHT, mode="predict", n=256),
        ]
        assert [r.abstain for r in results[:3]] == [False, False, True]
        with pytest.raises(SmoothServeError):
            client.predict("linear", np.zeros((1, 3, 3), np.float32), n=64)  # wrong shape


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


@pytest.fixture(scope="module")
def scrape(server: ServerProcess) -> str:
    run_workload(server)
    return http_get(server.metrics_url)


def test_metric_name_parser() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, model) (rate(a_bucket{model=~"$model",x="y{z}"}'
        "[$__rate_interval]))) / on (job) group_left (model) (b > 0) * 1e6 + sum(c) by (d)"
        ' or absent(up{job="s"})'
    )
    assert metric_names(expr) == {"a_bucket", "b", "c", "up"}
    assert metric_names("label_values(m_total, model)") == {"m_total"}
    assert alert_expressions("- expr: a > 1\n  expr: |\n    b\n      / c\n  for: 1m\n") == [
        "a > 1",
        "b / c",
    ]


def test_dashboard_and_alerts_query_only_scraped_metrics(scrape: str) -> None:
    exported = declared_names(scrape)
    # The workload above produced samples, not only declarations, for the central series.
    outcomes = {
        s.labels["outcome"]
        for f in text_string_to_metric_families(scrape)
        if f.name == "smoothserve_requests"
        for s in f.samples
        if s.name.endswith("_total")
    }
    assert {"certified", "abstained", "error"} <= outcomes
    samples = {s.name: s.value for f in text_string_to_metric_families(scrape) for s in f.samples}
    assert "smoothserve_certified_radius_bucket" in samples
    # The saturation alert divides by this gauge: it must carry the configured limit.
    assert samples["smoothserve_samples_in_flight_limit"] == SAMPLES_LIMIT

    dashboard = json.loads(DASHBOARD.read_text())
    sources = {f"dashboard: {q}": q for q in dashboard_queries(dashboard)}
    sources |= {f"alerts.yml: {e}": e for e in alert_expressions(ALERTS.read_text())}
    assert len(sources) > 20
    missing, used = {}, set()
    for where, expr in sources.items():
        names = metric_names(expr)
        assert names, f"no metric in {where}"
        used |= names
        for name in names:
            if name.startswith("nv_"):
                ok = name in TRITON_METRICS  # Triton's own, scraped from Triton (port 8002)
            elif name in PROMETHEUS_SYNTHETIC:
                ok = True  # made by Prometheus per target, not exported by anyone
            else:
                ok = name in exported
            if not ok:
                missing.setdefault(name, where)
    assert not missing, f"queried but not exported: {missing}"
    # The dashboard covers what operators need (issue 7's list).
    for needed in (
        "smoothserve_requests_total", "smoothserve_certified_radius_bucket",
        "smoothserve_noisy_samples_total", "smoothserve_batch_fill_ratio_sum",
        "smoothserve_request_latency_seconds_bucket", "smoothserve_queue_depth",
        "smoothserve_samples_in_flight", "smoothserve_backend_latency_seconds_bucket",
        "nv_inference_queue_duration_us",
    ):  # fmt: skip
        assert needed in used, needed


def test_every_queried_series_has_samples(scrape: str) -> None:
    """A name the page declares with no series under it (a labelled metric none of whose
    label values was ever used) reads as "no data" in Grafana and makes an alert's ratio
    empty: after the workload, every smoothserve_* name queried has samples."""
    shown = {
        re.match(r"[A-Za-z_:][\w:]*", line).group()
        for line in scrape.splitlines()
        if line.strip() and not line.startswith("#")
    }
    queries = dashboard_queries(json.loads(DASHBOARD.read_text()))
    queries += alert_expressions(ALERTS.read_text())
    queried = set().union(*map(metric_names, queries))
    empty = sorted(n for n in queried if n.startswith("smoothserve_") and n not in shown)
    assert not empty, f"queried, declared, but no series: {empty}"


def test_every_exported_metric_is_documented(scrape: str) -> None:
    doc = OPERATIONS.read_text()
    families = {f.name for f in text_string_to_metric_families(scrape)}
    # prometheus_client's *_created series are creation timestamps, not metrics to document.
    ours = {n for n in families if n.startswith("smoothserve_") and not n.endswith("_created")}
    assert ours, "no smoothserve_ metric in the scrape"
    counters = {f.name for f in text_string_to_metric_families(scrape) if f.type == "counter"}

    def documented(name: str) -> bool:  # as queried: counters with their _total suffix
        return (f"`{name}_total`" if name in counters else f"`{name}`") in doc

    undocumented = sorted(name for name in ours if not documented(name))
    assert not undocumented, f"add these to the metrics table of docs/operations.md: {undocumented}"


def test_dashboard_structure() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "smoothserve"
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["targets"] and panel["title"] and panel["description"], panel["title"]
        assert panel["datasource"]["uid"] == "prometheus"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
    provisioned = (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    assert "uid: prometheus" in provisioned


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Prometheus) not installed")
def test_alert_rules_with_promtool() -> None:
    for command in (["check", "rules", str(ALERTS)], ["test", "rules", str(ALERT_TESTS)]):
        result = subprocess.run(["promtool", *command], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Prometheus not installed")
def test_queries_and_rules_evaluate_in_prometheus(
    server: ServerProcess, scrape: str, tmp_path: Path
) -> None:
    """A real Prometheus scrapes the server, loads alerts.yml and runs every dashboard query."""
    (tmp_path / "alerts.yml").write_text(ALERTS.read_text())
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "rule_files: [alerts.yml]\n"
        "scrape_configs:\n"
        f"  - {{job_name: smoothserve, static_configs: [{{targets: ['127.0.0.1:{server.metrics_port}']}}]}}\n"
    )
    api = f"http://127.0.0.1:{free_port()}"
    command = [
        "prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address={api[7:]}",
    ]  # fmt: skip

    def query(expr: str) -> list:
        url = f"{api}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        answer = json.loads(http_get(url))
        assert answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]

    with open(tmp_path / "prometheus.log", "wb") as log:
        prometheus = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while True:
                assert prometheus.poll() is None, (tmp_path / "prometheus.log").read_text()
                try:
                    if query('up{job="smoothserve"} == 1'):
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "Prometheus never scraped the server"
                time.sleep(0.5)
            for _ in range(3):  # traffic across several scrapes, so that rates have points
                run_workload(server)
                time.sleep(1.2)
            for expr in dashboard_queries(json.loads(DASHBOARD.read_text())):
                if expr.startswith("label_values("):
                    continue
                promql = expr.replace("$__rate_interval", "10s").replace("$model", ".*")
                query(promql)  # the query parses and evaluates
            rate = "sum by (outcome) (rate(smoothserve_requests_total[10s]))"
            assert {r["metric"]["outcome"] for r in query(rate)} >= {"certified", "abstained"}
            assert query("sum(smoothserve_samples_in_flight_limit)")[0]["value"][1] == str(
                SAMPLES_LIMIT
            )
            rules = json.loads(http_get(f"{api}/api/v1/rules"))["data"]["groups"][0]["rules"]
            assert len(rules) == len(alert_expressions(ALERTS.read_text()))
            assert all(r["health"] == "ok" for r in rules), rules
            firing = {r["name"] for r in rules if r["state"] != "inactive"}
            assert not firing & {"SmoothServeDown", "SmoothServeSamplesInFlightNearLimit"}
        finally:
            prometheus.terminate()
            prometheus.wait(30)


def test_triton_names_exist_in_a_real_triton_scrape(tmp_path: Path) -> None:
    """SmoothServe on a real tritonserver (the CPU twin): the dashboard's nv_inference_* names
    are on Triton's /metrics page, and the backend panels' series carry backend="triton"."""
    from triton_helpers import require_tritonserver

    from smoothserve_dev.triton_twin import TritonProcess, build_twin_repository

    require_tritonserver()
    repo = tmp_path / "repo"
    w = np.full(int(np.prod(SHAPE)), 1.0)
    write_linear_model(repo, "linear", w, -0.5 * w.size, sigma=0.25, shape=SHAPE)
    build_twin_repository(repo, tmp_path / "twin")
    with TritonProcess(tmp_path / "twin") as triton:
        args = ["--backend", "triton", "--triton-urls", triton.url, "--triton-timeout-s", "30"]
        with ServerProcess(repo, args) as server:
            run_workload(server)
            smoothserve_scrape = http_get(server.metrics_url)
        triton_scrape = http_get(triton.metrics_url)
    triton_names = declared_names(triton_scrape)
    queried = set().union(*map(metric_names, dashboard_queries(json.loads(DASHBOARD.read_text()))))
    inference = {n for n in queried if n.startswith("nv_inference_")}
    assert inference and inference <= triton_names, inference - triton_names
    # GPU metrics are off on a CPU twin; they stay checked against Triton's documented names.
    assert {n for n in queried if n.startswith("nv_")} <= TRITON_METRICS
    assert re.search(
        r'smoothserve_backend_latency_seconds_count\{[^}]*backend="triton"', smoothserve_scrape
    )
    served = [
        s for f in text_string_to_metric_families(triton_scrape)
        if f.name == "nv_inference_request_success" for s in f.samples
    ]  # fmt: skip
    assert served and max(s.value for s in served) > 0, "Triton counted no request"
