"""Write the CRD schemas kept here from the npm tarballs of @kubernetes-models (see README.md).

    npm pack @kubernetes-models/keda@0.3.1 @kubernetes-models/prometheus-operator@4.0.0
    python deploy/kubernetes/crds/extract.py kubernetes-models-*.tgz

Each model module of those versions holds its kind's schema as one JSON object literal
(`const schema = {...};`), generated from the CRD's openAPIV3Schema. It is written out unchanged, one file
per kind; tests/deploy/test_kubernetes.py resolves its ObjectMeta reference and applies strict field
checking when it validates.
"""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The kinds these manifests use: the module inside the package, and the file written here.
KINDS = {
    "package/keda.sh/v1alpha1/ScaledObject.js": "keda.sh_v1alpha1_scaledobject.json",
    "package/monitoring.coreos.com/v1/PodMonitor.js": "monitoring.coreos.com_v1_podmonitor.json",
    "package/monitoring.coreos.com/v1/PrometheusRule.js": "monitoring.coreos.com_v1_prometheusrule.json",
}
MARKER = "const schema = "


def schema_literal(source: str) -> dict[str, object]:
    start = source.index(MARKER) + len(MARKER)
    value, _ = json.JSONDecoder().raw_decode(source[start:])
    if not isinstance(value, dict):
        raise ValueError("the schema literal is not an object")
    return value


def extract(tarball: Path) -> list[Path]:
    written = []
    with tarfile.open(tarball) as archive:
        for member in archive.getmembers():
            target = KINDS.get(member.name)
            handle = archive.extractfile(member) if target else None
            if target is None or handle is None:
                continue
            schema = schema_literal(handle.read().decode())
            path = HERE / target
            path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
            written.append(path)
    return written


def main(argv: list[str]) -> int:
    if not argv:
        sys.stderr.write(__doc__ or "")
        return 2
    for name in argv:
        for path in extract(Path(name)):
            sys.stdout.write(f"{name} -> {path.relative_to(HERE)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
