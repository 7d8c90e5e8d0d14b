"""The Fashion-MNIST feature classifier: save/load round trip, clear errors, and a short training run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from service.cli.quality_commands import add_train_classifier_parser, cmd_train_classifier
from service.data.fashion_mnist import DEFAULT_DIR
from service.quality.classifier import (
    INFO_FILE,
    WEIGHTS_FILE,
    ClassifierConfig,
    ClassifierError,
    FashionClassifier,
    load_classifier,
    save_classifier,
)
from service.quality.train_classifier import train_classifier

SMALL = ClassifierConfig(channels=(8, 16), feature_dim=24, dropout=0.1)


def _saved(tmp_path: Path) -> tuple[Path, FashionClassifier]:
    torch.manual_seed(0)
    model = FashionClassifier(SMALL).eval()
    return save_classifier(tmp_path / "clf", model, {"test_accuracy": 0.5}), model


def test_save_load_round_trip(tmp_path: Path) -> None:
    folder, model = _saved(tmp_path)
    loaded = load_classifier(folder)
    assert not loaded.training and loaded.config == SMALL
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    assert torch.equal(loaded(x), model(x)) and loaded.features(x).shape == (4, 24)
    record = json.loads((folder / INFO_FILE).read_text())
    assert record["architecture"]["channels"] == [8, 16] and record["test_accuracy"] == 0.5
    assert (folder / WEIGHTS_FILE).stat().st_mode & 0o044 == 0o044  # readable by a server's other user


def test_missing_folder_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ClassifierError, match=INFO_FILE):
        load_classifier(tmp_path / "nowhere")


def test_missing_weights_name_the_file(tmp_path: Path) -> None:
    folder, _ = _saved(tmp_path)
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(ClassifierError, match=WEIGHTS_FILE):
        load_classifier(folder)


def test_weights_that_do_not_fit_the_architecture(tmp_path: Path) -> None:
    folder, _ = _saved(tmp_path)
    record = json.loads((folder / INFO_FILE).read_text())
    record["architecture"]["channels"] = [8, 32]
    (folder / INFO_FILE).write_text(json.dumps(record))
    with pytest.raises(ClassifierError, match=rf"{WEIGHTS_FILE}.*has shape"):
        load_classifier(folder)


def test_unknown_architecture_field(tmp_path: Path) -> None:
    folder, _ = _saved(tmp_path)
    record = json.loads((folder / INFO_FILE).read_text())
    record["architecture"]["depth"] = 50
    (folder / INFO_FILE).write_text(json.dumps(record))
    with pytest.raises(ClassifierError, match="depth"):
        load_classifier(folder)


def test_wrong_input_shape_is_a_clear_error() -> None:
    with pytest.raises(ClassifierError, match=r"\[N, 1, 28, 28\]"):
        FashionClassifier(SMALL).features(torch.zeros(2, 3, 28, 28))


def test_cli_parser_defaults() -> None:
    parser = argparse.ArgumentParser(prog="ddpm")
    add_train_classifier_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train-classifier", "--epochs", "3"])
    assert args.func is cmd_train_classifier and args.epochs == 3
    assert args.out == "model_store/fmnist-classifier" and args.data_dir is None


@pytest.mark.skipif(not DEFAULT_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_short_training_run_beats_chance_by_far(tmp_path: Path) -> None:
    info = train_classifier(
        tmp_path / "clf", epochs=1, batch_size=64, seed=0, progress=False, limit=2000, test_limit=1000
    )
    assert info["test_accuracy"] > 0.5 and info["train_images"] == 2000 and info["test_images"] == 1000
    assert json.loads((tmp_path / "clf" / INFO_FILE).read_text())["test_accuracy"] == info["test_accuracy"]
    assert load_classifier(tmp_path / "clf").features(torch.zeros(2, 1, 28, 28)).shape == (2, 128)
