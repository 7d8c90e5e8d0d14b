"""A model folder that cannot be served (corrupt weights, a broken model.json, a pickle with code where
the weights should be) is left out with a clear error in the log, runs nothing, and the other models are
served; with no servable model at all the server refuses to start."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
from pathlib import Path

import pytest

from service.backends.base import BackendStartupError
from tests.api.helpers import ModelDirs, make_settings, serve

MARKER = "pickle-ran"


class Payload:
    """Unpickling this runs code: it would create the marker file."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple:
        return (Path.write_text, (self.target, MARKER))


def broken_folders(good: Path, root: Path) -> dict[str, Path]:
    folders = {}
    for name in ("corrupt", "manifest", "pickle"):
        folder = root / name
        shutil.copytree(good, folder)
        manifest = json.loads((folder / "model.json").read_text())
        manifest["name"] = name
        (folder / "model.json").write_text(json.dumps(manifest))
        folders[name] = folder
    (folders["corrupt"] / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    (folders["manifest"] / "model.json").write_text('{"name": "manifest", "architecture": ')
    with open(folders["pickle"] / "model.safetensors", "wb") as handle:
        pickle.dump(Payload(root / "marker"), handle)
    return folders


def test_bad_folders_are_left_out_and_the_good_model_is_served(
    model_dirs: ModelDirs, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    folders = broken_folders(model_dirs.calibrated, tmp_path)
    settings = make_settings(model_dirs, model_dirs=[*folders.values(), model_dirs.calibrated])
    with serve(settings) as client:
        served = [m["name"] for m in client.get("/v1/models").json()["models"]]
        assert served == ["tiny"]
        assert client.post("/generate", json={"class_label": 1, "steps": 2}).status_code == 200
        assert (
            client.post("/generate", json={"model": "corrupt", "class_label": 1, "steps": 2}).status_code
            == 404
        )
    logged = " ".join(record.getMessage() for record in caplog.records)
    for name, folder in folders.items():
        assert f"{folder}: cannot serve the model" in logged, name
    assert not (tmp_path / "marker").exists()  # the pickle was never unpickled


def test_no_servable_model_refuses_to_start(model_dirs: ModelDirs, tmp_path: Path) -> None:
    folders = broken_folders(model_dirs.calibrated, tmp_path)
    settings = make_settings(model_dirs, model_dirs=list(folders.values()))
    with pytest.raises(BackendStartupError, match="no model could be served"), serve(settings):
        pass
    assert not (tmp_path / "marker").exists()
