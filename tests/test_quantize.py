"""int8 prediction: export.py format=int8 calibrates, predict/evaluate rebuild the same model from
the stored calibration, precision=auto picks it only where it is measured to pay, bad set-ups fail clearly."""

import json
import logging

import numpy as np
import onnx
import pytest
import torch
from hydra import compose, initialize_config_dir

from crackseg.inference import backends
from crackseg.inference.backends import load_for_prediction
from crackseg.inference.onnx import OnnxModel
from crackseg.inference.predictor import Predictor
from crackseg.inference.quantize import calibration_path, carry_calibration, valid_calibration
from crackseg.io import file_digest
from crackseg.models.checkpoints import CheckpointError, load_model
from crackseg.models.nets import CrackSegNet
from crackseg.tasks.export import export
from crackseg.tasks.predict import predict
from tests.conftest import ROOT, copy_photos, predict_cfg


def _export_int8(ckpt, out, *overrides):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return export(compose("export", overrides=[f"ckpt={ckpt}", "format=int8", f"out={out}", "calibration_tiles=8",
                                                   *overrides]))


@pytest.fixture(scope="module")
def int8_setup(checkpoint, tiny_dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("int8")
    ckpt = folder / "model.ckpt"
    ckpt.write_bytes(checkpoint.read_bytes())
    exported = _export_int8(ckpt, folder / "model.int8.onnx", "data=folder", f"data.root={tiny_dataset}")
    return ckpt, exported


def test_int8_export_calibrates_beside_the_checkpoint_and_predicts_close_to_fp32(int8_setup):
    ckpt, exported = int8_setup
    stored = json.loads(calibration_path(ckpt).read_text())
    assert stored["data"] and calibration_path(ckpt).name == "model.int8-calibration.json"
    assert stored["model_sha256"] == [file_digest(ckpt)]
    graph = onnx.load(exported)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in graph.graph.node}
    model = OnnxModel(exported)
    assert (model.precision, model.threshold, model.tile) == ("int8", 0.5, 64)
    tiles = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        expected = load_model(ckpt)(tiles).numpy()
    result = model.run(tiles.numpy())
    assert result.shape == expected.shape and 0 <= result.min() and result.max() <= 1
    assert np.abs(result - expected).mean() < 0.02


def test_an_fp16_export_keeps_the_int8_calibration(int8_setup, tmp_path, monkeypatch):
    ckpt, _ = int8_setup
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        slim = export(compose("export", overrides=[f"ckpt={ckpt}", "format=fp16", f"out={tmp_path / 'slim.ckpt'}"]))
    carried, source = (json.loads(calibration_path(p).read_text()) for p in (slim, ckpt))
    assert carried["data"] == source["data"] and carried["model_sha256"] == [file_digest(slim)]
    monkeypatch.setattr(backends, "cpu_has_vnni", lambda: True)
    model = load_for_prediction(slim, precision="auto", onnx_cache=tmp_path / "cache")
    assert isinstance(model, OnnxModel) and model.precision == "int8"


def test_prediction_rebuilds_the_exported_int8_model_from_the_calibration(int8_setup, tmp_path, monkeypatch):
    ckpt, exported = int8_setup
    cache = tmp_path / "cache"
    model = load_for_prediction(ckpt, precision="int8", onnx_cache=cache)
    assert isinstance(model, OnnxModel) and model.precision == "int8"
    assert len(list(cache.glob("model-*-int8.onnx"))) == 1
    tiles = np.random.default_rng(1).uniform(0, 255, (3, 3, 64, 64)).astype(np.float32)
    np.testing.assert_array_equal(model.run(tiles), OnnxModel(exported).run(tiles))
    # auto: int8 only on a CPU with 8-bit dot products (where it was measured), else fp32
    monkeypatch.setattr(backends, "cpu_has_vnni", lambda: True)
    assert load_for_prediction(ckpt, precision="auto", onnx_cache=cache).precision == "int8"
    assert isinstance(load_for_prediction(ckpt, precision="auto", backend="torch", onnx_cache=cache), CrackSegNet)
    monkeypatch.setattr(backends, "cpu_has_vnni", lambda: False)
    assert load_for_prediction(ckpt, precision="auto", onnx_cache=cache).precision == "fp32"


def test_int8_without_a_fitting_calibration_fails_clearly_or_falls_back_to_fp32(int8_setup, tmp_path, monkeypatch, caplog):
    ckpt, _ = int8_setup
    bare = tmp_path / "bare.ckpt"
    bare.write_bytes(ckpt.read_bytes())
    cache = tmp_path / "cache"
    monkeypatch.setattr(backends, "cpu_has_vnni", lambda: True)
    assert load_for_prediction(bare, precision="auto", onnx_cache=cache).precision == "fp32"
    with pytest.raises(CheckpointError, match=r"bare.int8-calibration.json is missing .*format=int8"):
        load_for_prediction(bare, precision="int8", onnx_cache=cache)
    calibration_path(bare).write_text(json.dumps({"data": {"a_tensor_of_another_model": {}}}))
    with pytest.raises(CheckpointError, match="was made for another model"):
        load_for_prediction(bare, precision="int8", onnx_cache=cache)
    with caplog.at_level(logging.WARNING):
        assert load_for_prediction(bare, precision="auto", onnx_cache=cache).precision == "fp32"
    assert "running fp32" in caplog.text
    calibration_path(bare).write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable int8 calibration .*bare.int8-calibration.json"):
        load_for_prediction(bare, precision="int8", onnx_cache=cache)
    for options in [{"backend": "torch"}, {"compile": True}]:
        with pytest.raises(ValueError, match="precision=int8 quantises a checkpoint for ONNX Runtime"):
            load_for_prediction(ckpt, precision="int8", onnx_cache=cache, **options)
    with pytest.raises(ValueError, match="format=int8 calibrates on training tiles: .*data="):
        _export_int8(ckpt, tmp_path / "x.onnx")


def test_a_calibration_made_for_other_weights_is_not_used(int8_setup, tmp_path, monkeypatch, caplog):
    ckpt, _ = int8_setup
    retrained = tmp_path / "model.ckpt"  # the same path trained again: other weights, the old calibration
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    state["state_dict"] = {k: v * 1.01 if v.is_floating_point() else v for k, v in state["state_dict"].items()}
    torch.save(state, retrained)
    calibration_path(retrained).write_bytes(calibration_path(ckpt).read_bytes())
    cache = tmp_path / "cache"
    monkeypatch.setattr(backends, "cpu_has_vnni", lambda: True)
    with pytest.raises(CheckpointError, match=r"model.int8-calibration.json was made for other weights .*format=int8"):
        load_for_prediction(retrained, precision="int8", onnx_cache=cache)
    with caplog.at_level(logging.WARNING):
        assert load_for_prediction(retrained, precision="auto", onnx_cache=cache).precision == "fp32"
        assert "made for other weights" in caplog.text and "running fp32" in caplog.text
        caplog.clear()
        slim = tmp_path / "slim.fp16.ckpt"
        calibration_path(slim).write_text("{}")  # an earlier export's
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            export(compose("export", overrides=[f"ckpt={retrained}", "format=fp16", f"out={slim}"]))
    assert "made for other weights than" in caplog.text and "has no valid one" in caplog.text
    assert not calibration_path(slim).exists()
    legacy = json.loads(calibration_path(ckpt).read_text())  # a file from before the hashes: any weights
    del legacy["model_sha256"]
    calibration_path(retrained).write_text(json.dumps(legacy))
    assert load_for_prediction(retrained, precision="int8", onnx_cache=cache).precision == "int8"


def test_an_export_sharing_the_calibration_file_is_added_to_its_hashes(tmp_path):
    ckpt, export_file = tmp_path / "model.ckpt", tmp_path / "model.pt"  # one calibration path for both
    ckpt.write_bytes(b"weights")
    export_file.write_bytes(b"the same weights in fp16")
    assert calibration_path(ckpt) == calibration_path(export_file)
    calibration_path(ckpt).write_text(json.dumps({"data": {"x": {}}, "model_sha256": [file_digest(ckpt)]}))
    assert carry_calibration(ckpt, export_file, valid_calibration(ckpt)) == calibration_path(ckpt)
    stored = json.loads(calibration_path(ckpt).read_text())
    assert stored["data"] == {"x": {}} and stored["model_sha256"] == sorted([file_digest(ckpt), file_digest(export_file)])
    legacy = {"data": {"x": {}}}  # no hashes: applies to any weights, left as it is
    calibration_path(ckpt).write_text(json.dumps(legacy))
    assert carry_calibration(ckpt, export_file, valid_calibration(ckpt)) == calibration_path(ckpt)
    assert json.loads(calibration_path(ckpt).read_text()) == legacy
    assert carry_calibration(tmp_path / "none.ckpt", tmp_path / "none.fp16.ckpt", None) is None


def test_an_unreadable_calibration_stops_an_fp16_export_before_it_writes(checkpoint, tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(checkpoint.read_bytes())
    calibration_path(ckpt).write_text("{not json")
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("export", overrides=[f"ckpt={ckpt}", "format=fp16", f"out={tmp_path / 'slim.ckpt'}"])
    with pytest.raises(CheckpointError, match="unreadable int8 calibration .*model.int8-calibration.json"):
        export(cfg)
    assert not (tmp_path / "slim.ckpt").exists()


def test_predict_runs_the_int8_model_and_says_so(int8_setup, tiny_dataset, tmp_path, monkeypatch):
    ckpt, exported = int8_setup
    photos = copy_photos(tiny_dataset, tmp_path / "in", n=1)
    monkeypatch.setattr(backends, "cpu_has_vnni", lambda: True)
    cfg = predict_cfg(ckpt=str(ckpt), input=str(photos), output=str(tmp_path / "out"), measure=False, backend="auto",
                      precision="auto", onnx_cache=str(tmp_path / "cache"), scales=[1, 2, 0.5])
    assert predict(cfg) == 0
    [shard] = (tmp_path / "out" / "shards").glob("*.json")
    assert json.loads(shard.read_text())["settings"]["precision"] == "int8"
    photo = np.random.default_rng(2).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    model = OnnxModel(exported)
    prob = Predictor(model, scales=[1], tile=64)(photo)  # an int8 file runs in its own precision by default
    assert prob.shape == (70, 90) and 0 <= prob.min() and prob.max() <= 1
    with pytest.raises(ValueError, match=r"its own precision \(int8\)"):
        Predictor(model, precision="fp32")
