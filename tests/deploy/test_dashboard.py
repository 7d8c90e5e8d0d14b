"""The Grafana dashboard: well-formed, every metric its queries use is in a real gateway's /metrics, and
(with Prometheus installed) every query returns data from Prometheus scraping that gateway.

The gateway is the embedded one on a tiny calibrated model, after a few requests (one failing); the
Triton workers publish their engine metrics under the gateway's names (tests/triton_e2e checks that).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.api.app import create_app
from service.model.presets import get_preset
from service.model.store import random_model_dir
from service.quality.tradeoff import Tradeoff, TradeoffPoint, write_tradeoff
from service.triton_worker.launcher import free_port
from tests.deploy.conftest import DASHBOARD, DOCKER
from tests.triton_e2e.gateway import gateway_settings, served

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "inf", "nan",
}  # fmt: skip
# Grafana variables stand in for values a real query would have.
VARIABLES = {"$__rate_interval": "30s", "$model": ".*", "$sampler": "ddpm"}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def queries() -> list[str]:
    board = dashboard()
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    # label_values(METRIC, label) is Grafana's; what it reads from Prometheus is the series METRIC.
    templated = [v["query"]["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    exprs += [re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", q) for q in templated]
    return exprs


def query_texts() -> list[str]:
    """The dashboard's queries as Prometheus receives them: Grafana's variables given values."""
    texts = []
    for expr in queries():
        for variable, value in VARIABLES.items():
            expr = expr.replace(variable, value)
        texts.append(expr)
    return texts


def serve_sample_traffic(base: str, low_k: int = 2, high_k: int = 4) -> None:
    """Three good requests (one degraded from high_k to low_k: four images in two slots queue behind the
    first, service.engine.degrade; the gateway runs with max_batch=2) and a refused one, so that every
    dashboard panel has a series. Both K must be calibrated points (the degraded panel reads their FIDs)."""
    degraded = {"class_label": 3, "steps": high_k, "num_images": 4, "min_steps": low_k}
    plain = ({"class_label": 1, "steps": low_k}, {"class_label": 2, "steps": high_k, "num_images": 2})
    for body in (*plain, degraded):
        assert httpx.post(f"{base}/generate", json=body, timeout=60).status_code == 200
    assert "X-Degraded" in httpx.post(f"{base}/generate", json=degraded, timeout=60).headers
    assert httpx.post(f"{base}/generate", json={"class_label": 99, "steps": 2}).status_code == 422


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords, labels or
    strings (label matchers {...} and by (...) / without (...) lists are removed first)."""
    text = re.sub(r'"[^"]*"', "", expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"(?<![\w.])\d+(\.\d+)?(e[+-]?\d+)?", "", text)  # numbers such as 1e-9
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[match.end() :].lstrip()
        word = match.group(0)
        if following.startswith("(") or word.lower() in PROMQL_WORDS or word.startswith("$"):
            continue
        names.add(word)
    return names


def exposed_names(exposition: str) -> set[str]:
    """Sample names, plus the series every declared family can have (a histogram's _bucket/_sum/_count)."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


@pytest.fixture(scope="module")
def calibrated_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = random_model_dir(get_preset("tiny-test"), tmp_path_factory.mktemp("deploy") / "tiny", name="tiny")
    points = [TradeoffPoint("ddpm", k, 64, 30.0 / k, 0.5, 0.5, 0.9, 0.01 * k) for k in (2, 4)]
    write_tradeoff(model, Tradeoff("tiny", "test", "none", "none", {"64": 1.0}, points))
    return model


@pytest.fixture(scope="module")
def gateway(calibrated_model: Path) -> Iterator[str]:
    """A live gateway after serve_sample_traffic."""
    with served(create_app(gateway_settings(calibrated_model, max_batch=2))) as base:
        serve_sample_traffic(base)
        yield base


def test_dashboard_is_well_formed() -> None:
    board = dashboard()
    datasource_uid = re.search(
        r"uid:\s*(\S+)", (DOCKER / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert datasource_uid is not None
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == datasource_uid.group(1), panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert panel["targets"] and len(refs) == len(set(refs)), panel["title"]
    titles = " ".join(p["title"].lower() for p in board["panels"])
    topics = ("request rate", "error rate", "latency", "queue wait", "occupancy", "step time")
    for topic in (*topics, "images per second", "memory", "trade-off"):
        assert topic in titles, topic
    provider = (DOCKER / "grafana/provisioning/dashboards/ddpm.yml").read_text()
    assert "/var/lib/grafana/dashboards" in provider


def test_every_dashboard_metric_is_in_the_gateways_metrics(gateway: str) -> None:
    exposed = exposed_names(httpx.get(f"{gateway}/metrics").text)
    used = set().union(*(metric_names(q) for q in queries()))
    assert used, "no metric names found in the dashboard"
    assert used <= exposed, f"dashboard metrics the gateway does not expose: {sorted(used - exposed)}"


PROMETHEUS = shutil.which("prometheus")


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (apt-get install prometheus)")
def test_every_dashboard_query_returns_data(gateway: str, tmp_path: Path) -> None:
    assert PROMETHEUS is not None
    port = free_port()
    config = tmp_path / "prometheus.yml"
    target = gateway.removeprefix("http://")
    config.write_text(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n"
        f"  - job_name: gateway\n    static_configs:\n      - targets: ['{target}']\n"
    )
    command = [
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    api = f"http://127.0.0.1:{port}/api/v1/query"
    try:
        # Wait for three scrapes: rate() needs two samples in its window.
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, "Prometheus did not scrape the gateway in time"
            try:
                up = httpx.get(api, params={"query": "count_over_time(up[1m])"}, timeout=2).json()
                if up["data"]["result"] and float(up["data"]["result"][0]["value"][1]) >= 3:
                    break
            except (httpx.TransportError, KeyError, ValueError):
                pass
            time.sleep(0.5)
        empty = []
        for query in query_texts():
            answer = httpx.get(api, params={"query": query}, timeout=5).json()
            assert answer["status"] == "success", (query, answer)
            if not answer["data"]["result"]:
                empty.append(query)
        assert not empty, f"queries that returned no series: {empty}"
    finally:
        server.terminate()
        server.wait(timeout=30)
