"""`ddpm calibrate` and `ddpm grid` end to end on a small random model and an untrained classifier."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from service.data.fashion_mnist import DEFAULT_DIR
from service.model.presets import get_preset
from service.model.store import random_model_dir
from service.quality.classifier import ClassifierConfig, FashionClassifier, save_classifier
from service.quality.tradeoff import Tradeoff, TradeoffPoint, read_tradeoff, write_tradeoff

needs_data = pytest.mark.skipif(
    not (DEFAULT_DIR / "t10k-images-idx3-ubyte.gz").exists(),
    reason="needs the Debian package dataset-fashion-mnist (.ci/run installs it)",
)


def ddpm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli.ddpm", *args], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def fmnist_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("calib")
    model = random_model_dir(get_preset("fmnist-small"), root / "model", seed=0)
    classifier = save_classifier(
        root / "classifier", FashionClassifier(ClassifierConfig()), {"test_accuracy": 0.1}
    )
    return model, classifier


@needs_data
def test_calibrate_writes_table_and_plot(fmnist_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    model, classifier = fmnist_dirs
    plot = tmp_path / "tradeoff.png"
    result = ddpm(
        "calibrate",
        "--model",
        str(model),
        "--classifier",
        str(classifier),
        "--steps",
        "2,4",
        "--samplers",
        "ddpm,fixed-small",
        "--num-samples",
        "12",
        "--bpd-images",
        "4",
        "--plot",
        str(plot),
    )
    assert result.returncode == 0, result.stderr
    table = read_tradeoff(model)
    assert table is not None
    assert {(p.sampler, p.steps) for p in table.points} == {
        ("ddpm", 2),
        ("ddpm", 4),
        ("fixed-small", 2),
        ("fixed-small", 4),
    }
    for point in table.points:
        assert (
            point.num_samples == 12
            and point.fid >= 0
            and 0 <= point.precision <= 1
            and point.seconds_per_image > 0
        )
        assert (point.bpd is not None) == (point.sampler == "ddpm")
    assert table.real_vs_real_fid["num_samples"] == 12
    assert Image.open(plot).size[0] > 500
    # A second run with another sampler adds points and keeps the old ones.
    result = ddpm(
        "calibrate",
        "--model",
        str(model),
        "--classifier",
        str(classifier),
        "--steps",
        "2",
        "--samplers",
        "ddim,dpm++2m",
        "--num-samples",
        "10",
        "--plot",
        str(plot),
    )
    assert result.returncode == 0, result.stderr
    table = read_tradeoff(model)
    assert table is not None and len(table.points) == 6
    assert Image.open(tmp_path / "frontier.png").size[0] > 500
    # Analytic variance needs the model's Gamma table; the error names the command that makes it.
    result = ddpm(
        "calibrate", "--model", str(model), "--classifier", str(classifier), "--samplers", "analytic"
    )
    assert result.returncode == 2 and "ddpm gamma" in result.stderr, result.stderr
    # Each sample count keeps its own real-vs-real floor: FID is only comparable at equal counts.
    assert list(table.noise_floors) == ["12", "10"] and table.real_vs_real_fid["num_samples"] == 10
    table_text = ddpm("tradeoff", "--model", str(model))
    assert table_text.returncode == 0 and table_text.stdout.count("\n| ") == 7  # header + 6 points
    assert "(train vs test, 10 images)" in table_text.stdout and "; 12 images:" in table_text.stdout


def test_grid_has_one_row_per_class_and_one_column_per_k(
    fmnist_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    model, _ = fmnist_dirs
    out = tmp_path / "samples.png"
    result = ddpm("grid", "--model", str(model), "--steps", "2,3,5", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert Image.open(out).size == (3 * 30 + 2, 10 * 30 + 2)


def test_bad_calibration_arguments() -> None:
    result = ddpm("calibrate", "--model", "x", "--samplers", "ddpm,euler", "--num-samples", "100")
    assert result.returncode == 2 and "unknown sampler 'euler'" in result.stderr
    result = ddpm("calibrate", "--model", "x", "--num-samples", "5")
    assert result.returncode == 2 and "--num-samples must be >= 10" in result.stderr


def test_tradeoff_round_trip_and_merge(tmp_path: Path) -> None:
    point = TradeoffPoint("ddpm", 10, 100, 5.0, 0.5, 0.4, 0.8, 0.01)
    table = Tradeoff("m", "cpu", "features", "test", {"num_samples": 100, "fid": 1.0}, [point])
    table.merge([TradeoffPoint("ddpm", 10, 200, 4.0, 0.6, 0.5, 0.9, 0.01)])
    write_tradeoff(tmp_path, table)
    again = read_tradeoff(tmp_path)
    assert again is not None and len(again.points) == 1 and again.points[0].num_samples == 200
    (tmp_path / "tradeoff.json").write_text(json.dumps({"model": 1}))
    with pytest.raises(ValueError, match="not a valid trade-off table"):
        read_tradeoff(tmp_path)


def test_the_frontier_keeps_each_point_better_than_every_cheaper_one() -> None:
    """FID against K across variants, at the table's largest sample count only (FID is biased by it)."""

    def point(kind: str, k: int, fid: float, n: int = 500) -> TradeoffPoint:
        return TradeoffPoint(kind, k, n, fid, 0.5, 0.5, None, 0.01 * k)

    table = Tradeoff("m", "cpu", "f", "r", points=[
        point("ddpm", 10, 13.0), point("ddpm", 50, 3.0), point("ddpm", 100, 2.0),
        point("dpm++2m", 10, 4.0), point("dpm++2m", 25, 3.5), point("dpm++2m", 50, 3.2),
        point("analytic", 25, 2.5), point("analytic", 50, 2.5),  # no better than its cheaper self
        point("ddim", 5, 0.5, n=100),  # another count: not a rival
    ])  # fmt: skip
    assert [(p.sampler, p.steps) for p in table.frontier()] == [
        ("dpm++2m", 10), ("analytic", 25), ("ddpm", 100),
    ]  # fmt: skip
    assert [(p.sampler, p.steps) for p in table.frontier(max_steps=50)] == [("dpm++2m", 10), ("analytic", 25)]
    assert Tradeoff("m", "cpu", "f", "r").frontier() == []


def test_a_table_from_before_noise_floors_reads_its_one_floor(tmp_path: Path) -> None:
    legacy = {
        "model": "m",
        "machine": "cpu",
        "feature_extractor": "f",
        "reference_set": "r",
        "real_vs_real_fid": {"num_samples": 100, "fid": 9.5},
        "points": [],
    }
    (tmp_path / "tradeoff.json").write_text(json.dumps(legacy))
    table = read_tradeoff(tmp_path)
    assert table is not None and table.noise_floors == {"100": 9.5}
    table.set_real_vs_real(500, 1.7)
    assert table.noise_floors == {"500": 1.7, "100": 9.5}
    assert table.real_vs_real_fid == {"num_samples": 500, "fid": 1.7}


def _table(floor_count: int, *points: TradeoffPoint, features: str = "features") -> Tradeoff:
    return Tradeoff(
        "m", "cpu", features, "test", {"num_samples": floor_count, "fid": 1.0 / floor_count}, list(points)
    )


def test_tables_of_parallel_runs_merge_keeping_the_larger_sample_count(tmp_path: Path) -> None:
    """One model calibrated as several copies at once (one process per core) ships one table."""
    small = TradeoffPoint("ddpm", 10, 500, 4.0, 0.5, 0.4, 0.8, 0.01)
    large = TradeoffPoint("ddpm", 10, 1000, 3.0, 0.6, 0.5, 0.9, 0.01)
    other = TradeoffPoint("ddim", 25, 500, 5.0, 0.5, 0.4, 0.8, 0.01)
    first, second, third = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for folder, table in (
        (first, _table(1000, large)),
        (second, _table(500, small, other)),
        (third, _table(500, features="another classifier")),
    ):
        folder.mkdir()
        write_tradeoff(folder, table)
    target = tmp_path / "model"
    target.mkdir()
    plot = tmp_path / "plots" / "tradeoff.png"
    plot.parent.mkdir()
    result = ddpm(
        "tradeoff", "--model", str(target), "--merge", str(first), "--merge", str(second), "--plot", str(plot)
    )
    assert result.returncode == 0, result.stderr
    merged = read_tradeoff(target)
    assert merged is not None
    assert {(p.sampler, p.steps, p.num_samples) for p in merged.points} == {
        ("ddim", 25, 500),
        ("ddpm", 10, 1000),
    }
    assert list(merged.noise_floors) == ["1000", "500"] and merged.real_vs_real_fid["num_samples"] == 1000
    assert Image.open(plot).size[0] > 500 and (plot.parent / "frontier.png").is_file()
    assert "| ddim | 25 | 500 |" in result.stdout
    # Another feature space: FIDs do not compare, so the merge is refused and the table left as it was.
    result = ddpm("tradeoff", "--model", str(target), "--merge", str(third))
    assert result.returncode == 2 and "different feature_extractor" in result.stderr, result.stderr
    assert read_tradeoff(target) == merged
    result = ddpm("tradeoff", "--model", str(target), "--merge", str(tmp_path / "none"))
    assert result.returncode == 2 and "no tradeoff.json" in result.stderr
