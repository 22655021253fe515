"""export.py: ONNX export, parity with PyTorch, prediction with ONNX Runtime, bad files."""

import json
import logging
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from hydra import compose, initialize_config_dir

from crackseg.tasks.export import export
from crackseg.inference import onnx as onnx_module
from crackseg.inference.onnx import OnnxModel
from crackseg.inference.backends import load_for_prediction
from crackseg.inference.predictor import Predictor
from crackseg.models.checkpoints import CheckpointError, load_model
from crackseg.models.thresholds import resolve_threshold, threshold_path, write_threshold
from crackseg.io import write_image
from crackseg.models.nets import CrackSegNet
from crackseg.tasks.predict import predict
from tests.conftest import ROOT, copy_photos as _copy_photos, predict_cfg as _predict_cfg


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("export", overrides=[f"ckpt={checkpoint}", f"out={tmp_path_factory.mktemp('onnx') / 'm.onnx'}"])
    return export(cfg)


def test_onnx_matches_pytorch_at_any_batch_and_size(checkpoint, exported):
    model, session = load_model(checkpoint), OnnxModel(exported)
    for shape in [(3, 3, 64, 64), (1, 3, 50, 90)]:
        tiles = torch.rand(shape, generator=torch.Generator().manual_seed(1)) * 255
        with torch.no_grad():
            expected = model(tiles).numpy()
        result = session.run(tiles.numpy())
        assert result.shape == (shape[0], 1, *shape[2:])
        np.testing.assert_allclose(result, expected, atol=1e-4)
    meta = {p.key: p.value for p in onnx.load(exported).metadata_props}
    assert meta == {"crackseg.threshold": "0.5", "crackseg.tile": "64"}
    assert session.threshold == 0.5 and session.tile == 64


def test_fp16_export_is_a_half_size_checkpoint_that_predicts_alike(checkpoint, tmp_path):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("export", overrides=[f"ckpt={checkpoint}", "format=fp16", f"out={tmp_path / 'slim.ckpt'}"])
    slim = export(cfg)
    stored = torch.load(slim, weights_only=True)
    assert set(stored) == {"hyper_parameters", "state_dict"}
    assert all(v.dtype == torch.float16 for v in stored["state_dict"].values() if v.is_floating_point())
    original, half = load_model(checkpoint), load_model(slim)
    assert half.tile == original.tile and half.threshold == original.threshold
    tiles = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4)) * 255
    with torch.no_grad():
        np.testing.assert_allclose(half(tiles), original(tiles), atol=2e-3)
    net_bytes = sum(v.numel() * 4 for k, v in torch.load(checkpoint, weights_only=False)["state_dict"].items() if k.startswith("net."))
    assert slim.stat().st_size < 0.5 * net_bytes + 100_000


def test_predict_with_onnx_runtime_matches_the_checkpoint(checkpoint, exported, tiny_dataset, tmp_path):
    photo = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    model = load_for_prediction(exported)
    assert isinstance(model, OnnxModel)
    prob = Predictor(model, scales=[1, 2, 0.5], tile=64, batch_size=4)(photo)
    expected = Predictor(load_model(checkpoint), scales=[1, 2, 0.5], tile=64, batch_size=4)(photo)
    np.testing.assert_allclose(prob, expected, atol=1e-4)
    with pytest.raises(ValueError, match=r"its own precision \(fp32\) with compile=false"):
        Predictor(model, precision="bf16")

    photos = _copy_photos(tiny_dataset, tmp_path / "in", n=1)
    masks = {}
    for name, ckpt, backend in [("torch", checkpoint, "torch"), ("onnx", exported, "auto"), ("cached", checkpoint, "auto")]:
        cfg = _predict_cfg(ckpt=str(ckpt), input=str(photos), output=str(tmp_path / name), measure=False,
                           backend=backend, onnx_cache=str(tmp_path / "cache"))
        cfg.tile = None  # the model's: 64 in the checkpoint and in the ONNX metadata
        assert predict(cfg) == 0
        masks[name] = next((tmp_path / name).glob("*_mask.png")).read_bytes()
    assert masks["onnx"] == masks["torch"] == masks["cached"]
    assert len(list((tmp_path / "cache").glob("*.onnx"))) == 1  # the default CPU route exported the checkpoint


def test_checkpoint_on_cpu_runs_in_onnx_runtime_exported_once(checkpoint, tmp_path, monkeypatch, caplog):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(checkpoint.read_bytes())
    cache = tmp_path / "cache"
    model = load_for_prediction(ckpt, onnx_cache=cache)
    assert isinstance(model, OnnxModel) and model.threshold == 0.5 and model.tile == 64
    [cached] = cache.glob("model-*.onnx")
    tiles = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 255
    with torch.no_grad():
        np.testing.assert_allclose(model(tiles), load_model(ckpt)(tiles),
                                   atol=1e-4)

    def no_export(*args, **kwargs):
        raise RuntimeError("the exporter broke")

    monkeypatch.setattr(onnx_module, "export_onnx", no_export)
    again = load_for_prediction(ckpt, onnx_cache=cache)
    assert isinstance(again, OnnxModel) and list(cache.glob("*.onnx")) == [cached]
    # from the cache, prediction never imports Lightning (0.26 GiB of RSS)
    script = (f"import sys; from crackseg.tasks.predict import predict; from crackseg.inference.backends import load_for_prediction;"
              f"load_for_prediction({str(ckpt)!r}, onnx_cache={str(cache)!r}); print('pytorch_lightning' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT).stdout == "False\n"

    # not exportable (here: a new checkpoint and a broken exporter): PyTorch predicts, with a warning
    other = tmp_path / "other.ckpt"
    other.write_bytes(checkpoint.read_bytes())
    torch.save({**torch.load(other, weights_only=True), "epoch": 99}, other)
    with caplog.at_level(logging.WARNING):
        fallback = load_for_prediction(other, onnx_cache=cache)
    assert isinstance(fallback, CrackSegNet) and "the exporter broke" in caplog.text
    with pytest.raises(RuntimeError, match="the exporter broke"):
        load_for_prediction(other, backend="onnxruntime", onnx_cache=cache)
    # autocast or compile run in PyTorch; no cache folder: PyTorch
    for options in [{"precision": "bf16"}, {"compile": True}, {"onnx_cache": None}]:
        assert isinstance(load_for_prediction(other, **{"onnx_cache": cache, **options}), CrackSegNet)


def test_onnx_file_takes_the_threshold_chosen_beside_it(exported, tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(exported.read_bytes())
    trained = OnnxModel(model).threshold
    assert trained == 0.5 and resolve_threshold(model, trained, None, [1]) == 0.5
    write_threshold(model, 0.61, [1], {})
    assert resolve_threshold(model, trained, None, [1]) == 0.61


def test_exports_carry_the_thresholds_chosen_on_validation(checkpoint, tmp_path):
    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes(checkpoint.read_bytes())
    write_threshold(ckpt, 0.61, [1, 2, 0.5], {"split": "val"})
    write_threshold(ckpt, 0.42, [1], {"split": "val"})
    (tmp_path / "out").mkdir()
    for fmt, name in [("fp16", "out/slim.ckpt"), ("onnx", "out/m.onnx")]:
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            out = export(compose("export", overrides=[f"ckpt={ckpt}", f"format={fmt}", f"out={tmp_path / name}"]))
        assert resolve_threshold(out, 0.5, None, [1, 2, 0.5]) == 0.61 and resolve_threshold(out, 0.5, None, [1]) == 0.42
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert meta["crackseg.threshold"] == "0.5" and json.loads(meta["crackseg.thresholds"]) == {"1,2,0.5": 0.61, "1": 0.42}
    # the ONNX file alone (its threshold file not copied with it) still picks the one of its scales
    alone = tmp_path / "alone.onnx"
    alone.write_bytes(out.read_bytes())
    session = OnnxModel(alone)
    assert session.threshold == 0.5 and session.thresholds == {"1,2,0.5": 0.61, "1": 0.42}
    for scales, expected in [([1, 2, 0.5], 0.61), ([0.5, 2, 1], 0.61), ([1], 0.42), ([0.5], 0.5)]:
        assert resolve_threshold(alone, session.threshold, None, scales, session.thresholds) == expected
    # a file beside it for one scale set (say val evaluated at [1]) leaves the others' embedded ones
    write_threshold(alone, 0.3, [1], {"split": "val"})
    assert resolve_threshold(alone, session.threshold, None, [1], session.thresholds) == 0.3
    assert resolve_threshold(alone, session.threshold, None, [1, 2, 0.5], session.thresholds) == 0.61

    # a checkpoint without chosen thresholds exported to the same names: the earlier export's go
    plain = tmp_path / "plain.ckpt"
    plain.write_bytes(checkpoint.read_bytes())
    for fmt, name in [("fp16", "out/slim.ckpt"), ("onnx", "out/m.onnx")]:
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            out = export(compose("export", overrides=[f"ckpt={plain}", f"format={fmt}", f"out={tmp_path / name}"]))
        assert not threshold_path(out).exists() and resolve_threshold(out, 0.5, None, [1, 2, 0.5]) == 0.5


def test_an_onnx_export_beside_its_checkpoint_shares_its_threshold_file(checkpoint, tmp_path, caplog):
    ckpt = tmp_path / "m.ckpt"  # exported to m.onnx: both use m.threshold.json
    ckpt.write_bytes(checkpoint.read_bytes())
    write_threshold(ckpt, 0.61, [1], {"split": "val"})
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        out = export(compose("export", overrides=[f"ckpt={ckpt}"]))
    assert out == tmp_path / "m.onnx" and threshold_path(out) == threshold_path(ckpt)
    with caplog.at_level(logging.WARNING, logger="crackseg.models.thresholds"):
        assert resolve_threshold(out, 0.5, None, [1]) == resolve_threshold(ckpt, 0.5, None, [1]) == 0.61
        write_threshold(out, 0.55, [1], {"split": "val"})  # evaluated again through the export: both follow
        assert resolve_threshold(ckpt, 0.5, None, [1]) == resolve_threshold(out, 0.5, None, [1]) == 0.55
    assert not [r for r in caplog.records if r.name == "crackseg.models.thresholds"]
    ckpt.write_bytes(checkpoint.read_bytes() + b"\0")  # retrained to the same path: only the export keeps it
    assert resolve_threshold(ckpt, 0.5, None, [1]) == 0.5 and resolve_threshold(out, 0.5, None, [1]) == 0.55


def test_a_threshold_file_of_the_older_layout_exports(checkpoint, tmp_path):
    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes(checkpoint.read_bytes())
    threshold_path(ckpt).write_text(json.dumps({"threshold": 0.4}))  # no scales recorded: any scales
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        out = export(compose("export", overrides=[f"ckpt={ckpt}", f"out={tmp_path / 'alone.onnx'}"]))
    threshold_path(out).unlink()
    session = OnnxModel(out)
    assert session.thresholds == {"*": 0.4} and resolve_threshold(out, 0.5, None, [1], session.thresholds) == 0.4


def test_bad_onnx_files_and_backends_raise_clear_errors(checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="ONNX model not found: .*missing.onnx"):
        load_for_prediction(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="not a readable ONNX model: .*junk.onnx"):
        load_for_prediction(tmp_path / "junk.onnx")
    with pytest.raises(ValueError, match="needs an onnx_cache folder"):
        load_for_prediction(checkpoint, backend="onnxruntime")
    with pytest.raises(CheckpointError, match="checkpoint not found: .*none.ckpt"):
        load_for_prediction(tmp_path / "none.ckpt", onnx_cache=tmp_path / "cache")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_for_prediction(tmp_path / "junk.onnx", backend="torch")
    with pytest.raises(ValueError, match="runs on the CPU"):
        load_for_prediction(tmp_path / "junk.onnx", device="cuda")
    with pytest.raises(ValueError, match="backend must be"):
        load_for_prediction(checkpoint, backend="tensorrt")


def test_an_export_never_overwrites_its_checkpoint(checkpoint, tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(checkpoint.read_bytes())
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("export", overrides=[f"ckpt={ckpt}", "format=fp16", f"out={tmp_path / 'sub' / '..' / 'model.ckpt'}"])
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match=r"out=.*model.ckpt is the checkpoint itself"):
        export(cfg)
    assert ckpt.read_bytes() == checkpoint.read_bytes()


def test_foreign_onnx_model_is_refused(tmp_path):
    torch.onnx.export(torch.nn.Conv2d(3, 1, 1).eval(), (torch.zeros(1, 3, 8, 8),), tmp_path / "other.onnx", dynamo=True)
    with pytest.raises(CheckpointError, match="not an ONNX model exported by crackseg"):
        OnnxModel(tmp_path / "other.onnx")


def test_clis_exit_non_zero_on_bad_input(checkpoint, tmp_path):
    for args, message in [([f"ckpt={tmp_path / 'none.ckpt'}"], "checkpoint not found"),
                          ([f"ckpt={checkpoint}", "format=tflite"], "format must be one of onnx, fp16")]:
        result = subprocess.run([sys.executable, str(ROOT / "export.py"), *args, f"hydra.run.dir={tmp_path / 'run'}"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode != 0 and message in result.stderr
    write_image(tmp_path / "p.png", np.zeros((8, 8, 3), np.uint8))
    result = subprocess.run([sys.executable, str(ROOT / "predict.py"), f"ckpt={tmp_path / 'none.onnx'}", f"input={tmp_path}",
                             f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and f"ONNX model not found: {tmp_path / 'none.onnx'}" in result.stderr
