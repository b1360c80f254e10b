"""The qat stage inside the pipeline: prune -> QAT -> int8 ORT engine, PTQ with the accuracy
criterion, and recipes that must fail before any training starts."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torchao")
pytest.importorskip("torch_pruning")

from edgecompress.quant.presets import preset_for_target  # noqa: E402
from tests.conftest import run_cli  # noqa: E402

#: The ONNX Runtime preset this machine's CPU gets (ort-x86-avx2 without VNNI, else -vnni).
ORT = preset_for_target("onnxruntime", None)
INT8_TARGET = {"name": "cpu-int8", "backend": "onnxruntime", "precision": "int8", "threads": 1,
               "warmup": 2, "runs": 50}


@pytest.mark.slow
def test_prune_then_qat_gives_an_all_int8_engine(write_recipe, tmp_path):
    recipe = write_recipe({
        "stages": {"prune": {"enabled": True, "ratio": 0.5, "recovery_epochs": 1},
                   "qat": {"enabled": True, "epochs": 2}},
        # The same pruned student also gets a TensorRT-preset model (linted on the CPU), run
        # here on ORT after the uint8 rewrite.
        "targets": [{**INT8_TARGET, "gate": {"no_fp32_fallback": True}},
                    {**INT8_TARGET, "name": "cpu-trt-preset", "quant_preset": "tensorrt"}],
    })
    out = tmp_path / "run"
    result = run_cli("run", str(recipe), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    target, trt = report["targets"]
    assert target["status"] == "ok" and target["quant_preset"] == ORT
    assert trt["status"] == "ok" and trt["quant_preset"] == "tensorrt"
    assert trt["uint8_rewrites"] > 0 and trt["parity"]["top1_agreement"] >= 0.98
    assert target["fp32_nodes"] == []
    kernels = target["int8_kernels"]
    # ResNet w0.25 d1: 9 convs + the classifier, each one int8 kernel.
    assert kernels["QLinearConv"] == 9 and kernels["QGemm"] == 1
    quant = report["quantization"]["presets"][ORT]
    assert len(quant["layers_quantized"]) == 10 and quant["fp32_layers"] == []
    qat = json.loads((out / "qat" / "stage.json").read_text())["metrics"]
    # The rebuilt pruned module is the pruned student: same test accuracy as the .pt2.
    prune = json.loads((out / "prune" / "stage.json").read_text())["metrics"]
    assert qat["fp32"]["test_accuracy"] == pytest.approx(prune["test_accuracy"])
    info = qat["presets"][ORT]["qat"]
    assert info["observers_frozen_at_step"] is not None and info["bn_frozen_at_step"] is not None
    # QAT was compared with PTQ on the validation split and the better one kept (ties: PTQ).
    best = max(info["qat_val_accuracy"], info["ptq_val_accuracy"])
    assert info["kept"] == ("qat" if info["qat_val_accuracy"] > info["ptq_val_accuracy"]
                            else "ptq")
    assert qat["presets"][ORT]["val_accuracy"] == pytest.approx(best)
    assert quant["qat_vs_ptq"]["kept"] == info["kept"]
    assert target["parity"]["top1_agreement"] >= 0.98
    assert "## INT8" in (out / "report.md").read_text()
    lint = qat["presets"]["tensorrt"]["tensorrt_lint"]
    assert lint["passed"] and lint["qdq_nodes"] > 0


@pytest.mark.slow
def test_ptq_accuracy_criterion_keeps_layers_fp32_and_the_gate_sees_them(write_recipe, tmp_path):
    recipe = write_recipe({
        "stages": {"qat": {"enabled": True, "mode": "ptq", "calibration": "percentile",
                           "max_accuracy_drop": 0.0, "max_fallback_layers": 1}},
        "targets": [{**INT8_TARGET, "gate": {"no_fp32_fallback": True}}],
    })
    out = tmp_path / "run"
    result = run_cli("run", str(recipe), "--out", str(out))
    report = json.loads((out / "report.json").read_text())
    quant = report["quantization"]["presets"][ORT]
    assert len(quant["sensitivity"]) == 10
    criterion = quant["accuracy_criterion"]
    if criterion["attempts"][0]["val_drop_vs_fp32_pp"] <= 0.0:
        # PTQ lost nothing on this split: the criterion holds with every layer int8.
        assert criterion["met"] and quant["fp32_layers"] == [] and result.returncode == 0
        return
    # The most sensitive layer was kept in FP32, the engine names it, and the gate fails on it.
    assert quant["fp32_layers"] == [quant["sensitivity"][0]["layer"]]
    (target,) = report["targets"]
    assert len(target["fp32_nodes"]) == 1
    assert result.returncode == 1
    assert "fell back to FP32" in result.stdout + result.stderr


def test_preset_not_supported_by_backend_fails_before_training(write_recipe, tmp_path):
    recipe = write_recipe({"stages": {"qat": {"enabled": True}},
                           "targets": [{**INT8_TARGET, "quant_preset": "tflite"}]})
    out = tmp_path / "run"
    result = run_cli("run", str(recipe), "--out", str(out))
    assert result.returncode == 2
    assert "'tflite'" in result.stderr and "'onnxruntime'" in result.stderr
    assert not out.exists()


def test_int8_target_needs_the_qat_stage(write_recipe, tmp_path):
    recipe = write_recipe({"targets": [INT8_TARGET]})
    out = tmp_path / "run"
    result = run_cli("run", str(recipe), "--out", str(out))
    assert result.returncode == 2
    assert "stages.qat.enabled" in result.stderr and "cpu-int8" in result.stderr
    assert not out.exists()


@pytest.mark.slow
def test_qat_without_the_ptq_comparison_keeps_the_trained_model(write_recipe, tmp_path):
    recipe = write_recipe({"stages": {"qat": {"enabled": True, "epochs": 1,
                                              "compare_with_ptq": False}},
                           "targets": [INT8_TARGET]})
    out = tmp_path / "run"
    result = run_cli("run", str(recipe), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((out / "qat" / "stage.json").read_text())["metrics"]["presets"][ORT]
    assert info["qat"]["best_epoch"] == 1 and "kept" not in info["qat"]
    report = json.loads((out / "report.json").read_text())
    assert "qat_vs_ptq" not in report["quantization"]["presets"][ORT]
