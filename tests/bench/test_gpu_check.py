"""bench.gpu_check's driver on the CPU: a verdict per stage, the JSON written after each one, the exit
status from the verdicts. The full --dry-run takes minutes on 2 cores; it is run by hand (docs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import gpu_check


def test_each_stage_gets_a_verdict_and_the_report_survives_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "check.json"
    seen: list[int] = []

    def passing(run: gpu_check.Run) -> dict[str, Any]:
        return {"verdict": "pass", "criteria": ["always"], "results": {}}

    def crashing(run: gpu_check.Run) -> dict[str, Any]:
        seen.append(len(json.loads(out.read_text())["stages"]))  # what was on disk before this stage
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    stages = (("preflight", gpu_check.preflight), ("ok", passing), ("crash", crashing), ("after", passing))
    monkeypatch.setattr(gpu_check, "STAGES", stages)
    assert gpu_check.main(["--dry-run", "--out", str(out)]) == 1
    report = json.loads(out.read_text())
    assert [s["verdict"] for s in report["stages"]] == ["pass", "pass", "error", "pass"]
    assert seen == [2] and "illegal memory access" in report["stages"][2]["error"]
    assert report["verdict"] == "fail" and report["dry_run"] is True


def test_without_cuda_and_without_dry_run_it_says_so(tmp_path: Path) -> None:
    if gpu_check.torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    assert gpu_check.main(["--out", str(tmp_path / "x.json")]) == 2
