"""`ddpm` end to end in a subprocess: real PNG files, one-line errors and non-zero exits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image


def ddpm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli.ddpm", *args], capture_output=True, text=True, timeout=300
    )


def test_sample_writes_a_png_grid(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    result = ddpm(
        "sample",
        "--model",
        str(tiny_model_dir),
        "--class-label",
        "3",
        "--steps",
        "10",
        "--num-images",
        "4",
        "--seed",
        "0",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    image = Image.open(out)
    image.verify()
    assert Image.open(out).size == (2 * 16 + 3 * 2, 2 * 16 + 3 * 2)
    assert "sampling" in result.stderr  # progress bar


def test_same_seed_same_png(tiny_model_dir: Path, tmp_path: Path) -> None:
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for p in paths:
        ddpm(
            "sample",
            "--model",
            str(tiny_model_dir),
            "--class-label",
            "1",
            "--steps",
            "ddim5",
            "--sampler",
            "ddim",
            "--num-images",
            "2",
            "--out",
            str(p),
            "--quiet",
        )
    assert paths[0].read_bytes() == paths[1].read_bytes()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "1001", "--class-label", "0"], "steps must be between 1 and T=1000"),
        (["--steps", "0", "--class-label", "0"], "steps must be between 1 and T=1000"),
        (["--steps", "10", "--class-label", "10"], "class_label must be between 0 and 9"),
        (["--steps", "10"], "class-conditional: give class_label"),
        (["--steps", "ddim7x", "--class-label", "1"], "respacing"),
        (["--steps", "10", "--class-label", "1", "--eta", "0.5"], "eta applies to sampler 'ddim' only"),
    ],
)
def test_bad_sample_arguments_give_one_error_line(
    tiny_model_dir: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    result = ddpm("sample", "--model", str(tiny_model_dir), "--out", str(tmp_path / "x.png"), *args)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_unknown_preset_and_missing_files(tmp_path: Path) -> None:
    result = ddpm("init", "--preset", "no-such-model", "--out", str(tmp_path / "m"))
    assert result.returncode == 2 and "unknown preset 'no-such-model'" in result.stderr
    result = ddpm(
        "convert", str(tmp_path / "missing.pt"), "--preset", "tiny-test", "--out", str(tmp_path / "m")
    )
    assert result.returncode == 2 and "no such checkpoint file" in result.stderr
    result = ddpm(
        "sample", "--model", str(tmp_path / "nothing"), "--steps", "5", "--out", str(tmp_path / "x.png")
    )
    assert result.returncode == 2 and "no such model folder" in result.stderr
