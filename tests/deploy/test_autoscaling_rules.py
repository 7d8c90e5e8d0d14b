"""The autoscaling signal: the recording rules pass their `promtool test rules` unit tests (busy, idle,
never-stepped and gone workers), the PrometheusRule carries exactly those rules, and both autoscalers
(KEDA by default, the HPA component) read the recorded series with the same threshold and behaviour.

promtool is Debian's `prometheus` package (CI installs it); without it the promtool tests skip."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.test_kubernetes import KUBERNETES, find, needs_kubectl, one, rendered, yaml

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)"
)
RULES = KUBERNETES / "base" / "rules"
RULES_FILE = RULES / "ddpm-autoscaling.rules.yml"
RULES_TEST = RULES / "ddpm-autoscaling.test.yml"
ADAPTER = KUBERNETES / "components" / "hpa-prometheus-adapter" / "prometheus-adapter-rules.yaml"
SIGNAL = "ddpm:backlog_seconds"


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def recorded(groups: list[dict[str, Any]]) -> set[str]:
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", RULES_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_recording_rules_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", RULES_TEST)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
@pytest.mark.parametrize(
    ("change", "what"),
    [
        ((" > 0)", ")"), "a worker that has not stepped counted in the mean pace"),
        (("clamp_min(ddpm:row_steps_per_second:avg, 1)", "ddpm:row_steps_per_second:avg"), "no zero guard"),
        (("sum by (namespace, model, instance)", "avg by (namespace, model, instance)"), "engines averaged"),
    ],
    ids=["zeros-averaged", "no-clamp", "per-engine"],
)
def test_the_unit_tests_catch_a_broken_rule(change: tuple[str, str], what: str, tmp_path: Path) -> None:
    text = RULES_FILE.read_text()
    assert change[0] in text
    (tmp_path / RULES_FILE.name).write_text(text.replace(change[0], change[1], 1))
    (tmp_path / RULES_TEST.name).write_text(RULES_TEST.read_text())
    result = promtool("test", "rules", tmp_path / RULES_TEST.name)
    assert result.returncode != 0, f"the unit tests did not notice {what}"


def test_the_prometheusrule_carries_the_rules_file() -> None:
    plain = yaml.safe_load(RULES_FILE.read_text())["groups"]
    operator = yaml.safe_load((KUBERNETES / "base" / "prometheusrule.yaml").read_text())
    assert operator["kind"] == "PrometheusRule"
    assert operator["spec"]["groups"] == plain, (
        "base/prometheusrule.yaml differs from base/rules/ddpm-autoscaling.rules.yml: copy the groups over"
    )
    assert SIGNAL in recorded(plain)


def _threshold(scaled: dict[str, Any]) -> float:
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    return float(trigger["metadata"]["threshold"])


@needs_kubectl
def test_keda_scales_the_workers_on_the_recorded_backlog() -> None:
    docs = rendered("gpu")
    scaled = one(docs, "ScaledObject")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == one(docs, "Deployment", "ddpm-triton")["metadata"]["name"]
    assert spec["minReplicaCount"] >= 1 and "idleReplicaCount" not in spec  # never to zero
    assert spec["maxReplicaCount"] > spec["minReplicaCount"]
    assert spec["fallback"]["replicas"] >= spec["minReplicaCount"]
    query = spec["triggers"][0]["metadata"]["query"]
    assert re.search(rf"\b{re.escape(SIGNAL)}\{{", query) and 'model="fmnist-small"' in query
    assert _threshold(scaled) > 0
    down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 300


@needs_kubectl
def test_the_hpa_variant_replaces_keda_with_the_same_rule() -> None:
    scaled = one(rendered("gpu"), "ScaledObject")
    keda = scaled["spec"]
    docs = rendered("gpu-hpa")
    assert not find(docs, "ScaledObject")
    hpa = one(docs, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ddpm-triton"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (keda["minReplicaCount"], keda["maxReplicaCount"])
    (metric,) = hpa["metrics"]
    assert metric["type"] == "External" and metric["external"]["target"]["type"] == "AverageValue"
    assert float(metric["external"]["target"]["averageValue"]) == _threshold(scaled)
    assert hpa["behavior"] == keda["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    # prometheus-adapter serves the recorded series under the name the HPA asks for.
    (rule,) = yaml.safe_load(ADAPTER.read_text())["rules"]["external"]
    assert rule["seriesQuery"].startswith(SIGNAL + "{")
    assert re.fullmatch(rule["name"]["matches"], SIGNAL)
    assert rule["name"]["as"] == metric["external"]["metric"]["name"]
    assert metric["external"]["metric"]["selector"]["matchLabels"] == {"model": "fmnist-small"}
