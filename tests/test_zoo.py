"""Model ids (torchvision:/timm:/hf:): resolution, refusals before any training, head swaps."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import yaml

from edgecompress.errors import BackendUnavailable, ConfigError, ModelError
from edgecompress.models import load_model
from edgecompress.models.zoo import (
    build_zoo_model,
    check_model_id,
    import_torchvision,
    parse_model_id,
)
from tests.conftest import TINY_RECIPE, deep_update, run_cli, run_main

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torchvision") is None,
                                reason="torchvision is not installed (pip install "
                                "'edgecompress[zoo]')")


def test_torchvision_imports_next_to_the_cpu_torch_wheel() -> None:
    tv = import_torchvision()
    model = tv.models.get_model("resnet18", weights=None, num_classes=4).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 4)
    if not tv.extension._has_ops():  # the CUDA wheel's C++ ops: a clear error, not a crash
        with pytest.raises(RuntimeError, match="Couldn't load custom C"):
            tv.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)


@pytest.mark.parametrize(("text", "fragment"), [
    ("resnet18", "must look like"),
    ("torchvision:", "must look like"),
    ("keras:resnet50", "unknown source 'keras'"),
])
def test_malformed_ids(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_model_id(text)


def test_unknown_architecture_suggests_close_names() -> None:
    with pytest.raises(ConfigError, match="no model 'resnet19'.*did you mean.*resnet18"):
        check_model_id("torchvision:resnet19")
    with pytest.raises(ConfigError, match="timm has no model"):
        check_model_id("timm:not_a_model_at_all")
    assert str(check_model_id("timm:resnet10t")) == "timm:resnet10t"


def test_timm_model_built_without_download() -> None:
    model = build_zoo_model("timm:resnet10t", num_classes=3, role="student").eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    with pytest.raises(ModelError, match="student 'torchvision:resnet18' cannot be built.*"
                       "not_a_kwarg"):
        build_zoo_model("torchvision:resnet18", num_classes=3, kwargs={"not_a_kwarg": 1},
                        role="student")


def test_hf_local_directory(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32,
                                    num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=64, num_labels=5)
    transformers.ViTForImageClassification(config).save_pretrained(tmp_path / "vit")
    model = build_zoo_model(f"hf:{tmp_path / 'vit'}", num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)  # head resized to the data
    with pytest.raises(ModelError, match="not a Hugging Face model directory"):
        check_model_id(f"hf:{tmp_path}")


def test_local_weights_with_another_class_count_swap_the_head(tmp_path) -> None:
    source = build_zoo_model("torchvision:mobilenet_v3_small", num_classes=7)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    model = load_model("zoo", model_id="torchvision:mobilenet_v3_small", id_classes=7,
                       weights=tmp_path / "w.pt", num_classes=10, in_channels=3)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    first = "features.0.0.weight"
    assert torch.equal(model.state_dict()[first], source.state_dict()[first])
    with pytest.raises(ModelError, match="classifier.3.weight"):  # 7-class file, 10-class model
        load_model("zoo", model_id="torchvision:mobilenet_v3_small", weights=tmp_path / "w.pt",
                   num_classes=10, in_channels=3)


def test_recipe_id_implies_kind_zoo(tmp_path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**TINY_RECIPE, "student": {"id": "torchvision:resnet18"}}))
    code, out = run_main("validate", path)
    assert code == 0, out
    assert "kind: zoo" in out and "id: torchvision:resnet18" in out
    path.write_text(yaml.safe_dump(deep_update(TINY_RECIPE, {
        "student": {"kind": "builtin", "id": "torchvision:resnet18"}})))
    code, out = run_main("validate", path)
    assert code == 2 and "only read by kind 'zoo'" in out


def _zoo_recipe(tmp_path, model_id: str):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(deep_update(TINY_RECIPE, {
        "student": {"kind": "zoo", "id": model_id}})))
    return path


def test_missing_package_is_exit_3_before_any_data_or_training(tmp_path, monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "timm" else real(name, *a))
    recipe = _zoo_recipe(tmp_path, "timm:resnet10t")
    code, out = run_main("validate", recipe)
    assert code == 3, out
    assert "'timm' package, which is not installed" in out and "pip install" in out
    code, out = run_main("run", recipe, "--out", tmp_path / "run")
    assert code == 3 and not (tmp_path / "run").exists(), out
    with pytest.raises(BackendUnavailable):
        check_model_id("timm:resnet10t")


def test_broken_package_is_exit_3_naming_the_cause(tmp_path) -> None:
    shadow = tmp_path / "shadow" / "timm"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('half-installed: no timm.layers')\n")
    recipe = _zoo_recipe(tmp_path, "timm:resnet10t")
    result = run_cli("validate", str(recipe), env={"PYTHONPATH": f"{shadow.parent}"})
    assert result.returncode == 3, result.stderr
    assert "does not import (ImportError: half-installed" in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- the whole path

#: Four architectures covering residual adds (resnet18), hardswish + squeeze-excite + depthwise
#: (mobilenet_v3_small), a 1x1-conv classifier and concat (squeezenet1_1) and attention with
#: LayerNorm/GELU (a timm DeiT, 8x8 patches). benchmarks/zoo.py runs the full matrix.
#: The flag says whether the case also builds a TFLite int8 engine (conversion is the slow part).
ZOO_CASES = {
    "resnet18": ("torchvision:resnet18", {}, True),
    "mobilenet_v3_small": ("torchvision:mobilenet_v3_small", {}, True),
    "squeezenet1_1": ("torchvision:squeezenet1_1", {}, False),
    "deit_tiny": ("timm:deit_tiny_patch16_224", {"img_size": 32, "patch_size": 8}, False),
}


@pytest.fixture(scope="module")
def rgb_digits(tmp_path_factory):
    """scikit-learn's digits as 3x32x32 images (SqueezeNet needs >= 32 px), written as npz."""
    import numpy as np
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    path = tmp_path_factory.mktemp("zoo") / "digits_rgb32.npz"
    np.savez(path, x=x.numpy(), y=digits.target.astype(np.int64))
    return path


def _zoo_run_recipe(data, student: str, kwargs: dict, tflite: bool = True) -> dict:
    targets = [{"backend": "onnxruntime", "precision": "int8", "threads": 1, "warmup": 2,
                "runs": 50}]
    if tflite:
        targets.append({"backend": "tflite", "precision": "int8", "threads": 1, "warmup": 2,
                        "runs": 50})
    return {
        "version": 1, "name": "zoo", "seed": 0, "device": "cpu",
        "data": {"source": "npz", "path": str(data), "train_limit": 160, "eval_limit": 60,
                 "calibration_samples": 32},
        "teacher": {"id": "torchvision:resnet18"},
        "student": {"id": student, "kwargs": kwargs},
        "stages": {"finetune": {"epochs": 1}, "distill": {"epochs": 1, "baseline": False},
                   "prune": {"enabled": True, "target_macs_ratio": 0.6, "steps": 1,
                             "recovery_epochs": 1},
                   "qat": {"enabled": True, "mode": "ptq"}},
        "targets": targets,
    }


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(ZOO_CASES))
def test_zoo_student_whole_path(case, rgb_digits, tmp_path) -> None:
    student, kwargs, tflite = ZOO_CASES[case]
    if tflite:
        pytest.importorskip("litert_torch")
    recipe = tmp_path / "zoo.yaml"
    recipe.write_text(yaml.safe_dump(_zoo_run_recipe(rgb_digits, student, kwargs, tflite)))
    result = run_cli("run", str(recipe), "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    report = json.loads((tmp_path / "run" / "report.json").read_text())
    prune = next(s["metrics"] for s in report["stages"] if s["name"] == "prune")
    assert prune["macs_after"] <= 0.6 * prune["macs_before"] * 1.001
    assert prune["params_after"] < prune["params_before"]
    targets = {t["backend"]: t for t in report["targets"]}
    assert {t["status"] for t in targets.values()} == {"ok"}
    assert sum(targets["onnxruntime"]["int8_kernels"].values()) > 0
    if tflite:
        assert sum(targets["tflite"]["int8_kernels"].values()) > 0
    for name, preset in report["quantization"]["presets"].items():
        assert preset["parity"]["top1_agreement_decisive"] >= 0.97, (name, preset["parity"])
    if case == "resnet18":  # torchvision's in-place residual adds are int8 on TFLite too
        assert targets["tflite"]["fp32_nodes"] == []
        assert targets["tflite"]["int8_kernels"].get("ADD", 0) == 8


def test_untraceable_student_refused_before_training(rgb_digits, tmp_path) -> None:
    spec = _zoo_run_recipe(rgb_digits, "torchvision:shufflenet_v2_x0_5", {}, tflite=False)
    recipe = tmp_path / "zoo.yaml"
    recipe.write_text(yaml.safe_dump(spec))
    code, out = run_main("run", recipe, "--out", tmp_path / "run")
    assert code == 2, out
    assert "torch-pruning cannot trace the student" in out and "channel shuffle" in out
    assert "stages.prune.enabled: false" in out
    assert not (tmp_path / "run").exists()


def test_convnext_prunes_and_rebuilds_before_training() -> None:
    """LayerNorm2d and ConvNeXt's bare layer_scale tensors follow the pruned channels."""
    from edgecompress.prune.pruner import PruneTarget
    from edgecompress.recipe import PruneConfig
    from edgecompress.stages.prune import _dry_run

    model = build_zoo_model("torchvision:convnext_tiny", num_classes=10).eval()
    _dry_run(model, torch.randn(1, 3, 32, 32), PruneTarget("target_macs_ratio", 0.5),
             PruneConfig(enabled=True, target_macs_ratio=0.5))


def test_rebuild_check_refuses_a_model_that_computes_something_else() -> None:
    from edgecompress.prune.rebuild import check_rebuild

    torch.manual_seed(0)
    pruned = torch.nn.Linear(4, 3)
    check_rebuild(pruned, pruned, torch.randn(2, 4))
    with pytest.raises(ModelError, match="differs from the pruned one.*ignored_layers"):
        check_rebuild(torch.nn.Linear(4, 3), pruned, torch.randn(2, 4))
    with pytest.raises(ModelError, match="the resized model fails"):
        check_rebuild(torch.nn.Linear(5, 3), pruned, torch.randn(2, 4))


@pytest.mark.slow
def test_convnext_tflite_refused_before_training(rgb_digits, tmp_path) -> None:
    """litert-torch rejects ConvNeXt once its LayerNorm affine is non-trivial (a trained model);
    the preflight converts a nudged copy, so the refusal comes before any training."""
    pytest.importorskip("litert_torch")
    spec = _zoo_run_recipe(rgb_digits, "torchvision:convnext_tiny", {}, tflite=True)
    recipe = tmp_path / "zoo.yaml"
    recipe.write_text(yaml.safe_dump(spec))
    code, out = run_main("run", recipe, "--out", tmp_path / "run")
    assert code == 2, out[-2000:]
    assert "the student cannot be converted to TFLite" in out and "tfl.batch_matmul" in out
    assert "drop those targets" in out
    assert not (tmp_path / "run").exists()
