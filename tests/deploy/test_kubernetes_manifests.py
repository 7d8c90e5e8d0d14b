"""What the rendered Kubernetes manifests promise: probes, drains whose timings add up, discovery through
a headless Service, GPUs, disruption budgets, scraping, and the same images as docker compose."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.conftest import ROOT
from tests.deploy.test_kubernetes import OVERLAYS, container, env, find, needs_kubectl, one, rendered, yaml

pytestmark = needs_kubectl

MARGIN_S = 10  # what a grace period keeps beyond the drain, for the process to exit


def pod(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]


def prestop_sleep(deployment: dict[str, Any], name: str) -> int:
    command = container(deployment, name)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    return int(command[1])


def selects(selector: dict[str, str], deployment: dict[str, Any]) -> bool:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(key) == value for key, value in selector.items())


def compose_image(service: str) -> str:
    return str(yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"][service]["image"])


@pytest.mark.parametrize("name", OVERLAYS)
def test_gateway_replicas_probes_and_port(name: str) -> None:
    gateway = one(rendered(name), "Deployment", "ddpm-gateway")
    assert gateway["spec"]["replicas"] >= 2
    spec = container(gateway, "gateway")
    assert spec["image"] == compose_image("gateway")
    assert {p["name"]: p["containerPort"] for p in spec["ports"]} == {"http": 8000}
    assert spec["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert spec["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    service = one(rendered(name), "Service", "ddpm-gateway")
    assert service["spec"]["ports"][0]["port"] == 8000 and selects(service["spec"]["selector"], gateway)


@pytest.mark.parametrize("name", OVERLAYS)
def test_gateway_grace_covers_the_prestop_and_the_longest_request(name: str) -> None:
    gateway = one(rendered(name), "Deployment", "ddpm-gateway")
    settings = env(gateway, "gateway")
    longest_s = int(settings["DDPM_MAX_TIMEOUT_MS"]) / 1000
    # uvicorn waits DDPM_DRAIN_TIMEOUT_S for requests in flight: never less than a request may last.
    assert float(settings["DDPM_DRAIN_TIMEOUT_S"]) >= longest_s
    grace = pod(gateway)["terminationGracePeriodSeconds"]
    assert grace >= prestop_sleep(gateway, "gateway") + longest_s + MARGIN_S


def test_gpu_gateways_discover_workers_through_dns() -> None:
    docs = rendered("gpu")
    settings = env(one(docs, "Deployment", "ddpm-gateway"), "gateway")
    assert settings["DDPM_BACKEND"] == "triton"
    assert settings["DDPM_TRITON_RESOLVE_INTERVAL_S"] == "5"
    # Tests only; a static list would bypass discovery.
    assert "DDPM_TRITON_NAMESERVER" not in settings and "DDPM_TRITON_URLS" not in settings
    service = one(docs, "Service", settings["DDPM_TRITON_DNS"].split(".")[0])
    assert service["spec"]["clusterIP"] == "None" and not service["spec"]["publishNotReadyAddresses"]
    assert selects(service["spec"]["selector"], one(docs, "Deployment", "ddpm-triton"))
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]}["grpc"] == 8001
    assert settings["DDPM_TRITON_DNS"].endswith(":8001")


def test_cpu_overlay_runs_the_engine_in_the_gateway_without_triton() -> None:
    docs = rendered("cpu")
    settings = env(one(docs, "Deployment", "ddpm-gateway"), "gateway")
    assert settings["DDPM_BACKEND"] == "embedded" and settings["DDPM_DEVICE"] == "cpu"
    assert not [k for k in settings if k.startswith("DDPM_TRITON")]
    assert [d["metadata"]["name"] for d in find(docs, "Deployment")] == ["ddpm-gateway"]
    assert not find(docs, "ScaledObject") and not find(docs, "HorizontalPodAutoscaler")
    resources = container(one(docs, "Deployment", "ddpm-gateway"), "gateway")["resources"]
    assert resources["requests"] == resources["limits"]
    assert settings["DDPM_TORCH_THREADS"] == resources["limits"]["cpu"]


def _worker() -> tuple[dict[str, Any], dict[str, Any]]:
    workers = one(rendered("gpu"), "Deployment", "ddpm-triton")
    return workers, container(workers, "triton")


def _flag(args: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    return value


def test_workers_run_tritonserver_as_the_image_does_on_one_gpu_each() -> None:
    workers, triton = _worker()
    assert triton["image"] == compose_image("triton")
    assert "replicas" not in workers["spec"]  # the autoscaler owns it
    dockerfile = (ROOT / "docker" / "Dockerfile.triton").read_text()
    for flag in ("--model-repository=/models", "--load-model=fmnist-small", "--grpc-port=8001"):
        assert flag in triton["args"] and flag in dockerfile
    ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert _flag(triton["args"], "http-port") == "8000" and _flag(triton["args"], "metrics-port") == "8002"
    resources = triton["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1
    assert triton["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert triton["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    startup = triton["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # the model's warm-up limit


def test_worker_drain_arithmetic_agrees_with_the_grace_period() -> None:
    workers, triton = _worker()
    exit_timeout = int(_flag(triton["args"], "exit-timeout-secs"))
    grace = pod(workers)["terminationGracePeriodSeconds"]
    assert grace >= prestop_sleep(workers, "triton") + exit_timeout + MARGIN_S
    # tritonserver waits that long for the requests in flight; none may last longer than this.
    gateway = env(one(rendered("gpu"), "Deployment", "ddpm-gateway"), "gateway")
    assert exit_timeout >= int(gateway["DDPM_MAX_TIMEOUT_MS"]) / 1000
    # The preStop outlasts a DNS re-resolve period plus CoreDNS's 5 s cache.
    assert prestop_sleep(workers, "triton") >= int(gateway["DDPM_TRITON_RESOLVE_INTERVAL_S"]) + 5


def test_the_compile_cache_is_a_mounted_volume() -> None:
    workers, triton = _worker()
    cache = {e["name"]: e["value"] for e in triton["env"]}["DDPM_COMPILE_CACHE_DIR"]
    (mount,) = [m for m in triton["volumeMounts"] if m["mountPath"] == cache]
    assert mount["name"] in {v["name"] for v in pod(workers)["volumes"]}
    shm = [m for m in triton["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    assert shm, "the Python backend needs more shared memory than a container's default 64 MB"


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_deployment_has_requests_limits_and_a_disruption_budget(name: str) -> None:
    docs = rendered(name)
    budgets = find(docs, "PodDisruptionBudget")
    for deployment in find(docs, "Deployment"):
        for spec in pod(deployment)["containers"]:
            assert {"cpu", "memory"} <= spec["resources"]["requests"].keys()
            assert {"cpu", "memory"} <= spec["resources"]["limits"].keys()
        assert pod(deployment)["securityContext"]["runAsNonRoot"] is True
        covering = [b for b in budgets if selects(b["spec"]["selector"]["matchLabels"], deployment)]
        assert len(covering) == 1, deployment["metadata"]["name"]
        budget = covering[0]["spec"]
        # A budget that lets no pod go would block every node drain.
        assert budget.get("maxUnavailable", 0) >= 1 or budget["minAvailable"] < deployment["spec"]["replicas"]


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_deployment_is_scraped_on_a_port_it_exposes(name: str) -> None:
    docs = rendered(name)
    monitors = find(docs, "PodMonitor")
    for deployment in find(docs, "Deployment"):
        (monitor,) = [m for m in monitors if selects(m["spec"]["selector"]["matchLabels"], deployment)]
        ports = {p["name"] for c in pod(deployment)["containers"] for p in c["ports"]}
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert endpoint["port"] in ports and endpoint["path"] == "/metrics"


@pytest.mark.parametrize("name", OVERLAYS)
def test_the_gateway_accepts_its_rendered_environment(name: str) -> None:
    # Every DDPM_* variable is a real setting with a valid value (Settings forbids unknown fields).
    from service.api.settings import Settings

    settings = env(one(rendered(name), "Deployment", "ddpm-gateway"), "gateway")
    fields = {key.removeprefix("DDPM_").lower(): value for key, value in settings.items()}
    built = Settings(**fields)
    assert built.backend == ("triton" if name.startswith("gpu") else "embedded")
