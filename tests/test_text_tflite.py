"""Text classification on TFLite (issue 12, "everything reaches every family"): an FP32 TFLite
target built and run by the shared ``tflite`` backend, and the validate-time refusal of TFLite
INT8 with the converter's reason, kept honest by a live check of the converter."""

from __future__ import annotations

import json

import pytest
import yaml

pytest.importorskip("transformers", reason="transformers not installed (extra: text)")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed (extra: onnx)")

from edgecompress.text.recipe import TFLITE_INT8_REFUSAL  # noqa: E402
from tests.conftest import run_cli  # noqa: E402
from tests.text_fixtures import tiny_bert_dir, write_sentiment_csv  # noqa: E402


def _recipe(tmp_path, targets: list[dict]) -> str:
    data = write_sentiment_csv(tmp_path / "reviews.csv", rows=160)
    teacher = tiny_bert_dir(tmp_path / "teacher", layers=2, hidden=32, heads=4, ffn=64)
    recipe = {
        "version": 1, "task": "text-classification", "name": "tiny-tflite",
        "data": {"path": data.name, "labels": ["neg", "pos"], "max_length": 24},
        "teacher": {"path": teacher.name, "finetune": {"epochs": 6, "lr": 0.003,
                                                         "batch_size": 16}},
        "student": {"keep_layers": [1]},
        "distill": {"epochs": 2, "lr": 0.002, "batch_size": 16},
        "quant": {"method": "ptq_dynamic", "teacher_reference": False},
        "targets": targets,
    }
    path = tmp_path / "text.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


_TIMING = {"seq_len": 32, "runs": 5, "warmup": 1, "min_runs": 5}


def test_tflite_int8_text_target_is_refused_at_validate_time(tmp_path):
    path = _recipe(tmp_path, [{"name": "arm", "backend": "tflite", "precision": "int8",
                               **_TIMING}])
    done = run_cli("validate", path)
    assert done.returncode == 2, done.stderr
    assert "targets.0" in done.stderr and "tflite int8 is not available" in done.stderr
    assert "stablehlo.uniform_dequantize" in done.stderr and "Traceback" not in done.stderr


def test_text_targets_take_profiles_local_ssh_and_adb(tmp_path):
    path = _recipe(tmp_path, [{"profile": "x86-avx2-int8", "seq_len": 32},
                              {"profile": "jetson-orin-nano", "seq_len": 32},
                              {"profile": "android-arm64", "precision": "fp32"}])
    done = run_cli("validate", path)
    assert done.returncode == 0, done.stderr
    local, jetson, phone = yaml.safe_load(done.stdout)["targets"]
    assert local["name"] == "x86-avx2-int8" and local["isa"] == "avx2"
    assert local["precision"] == "int8" and local["gate"]["max_accuracy_drop"] == 1.5
    assert jetson["backend"] == "tensorrt" and jetson["precision"] == "int8"
    assert phone["backend"] == "tflite" and phone["precision"] == "fp32"
    # ONNX Runtime on a phone over adb is not a path benchmark_model offers.
    profile = tmp_path / "phone-ort.yaml"
    profile.write_text(yaml.safe_dump({"version": 1, "name": "phone-ort",
                                       "backend": "onnxruntime", "precision": "fp32",
                                       "connection": {"kind": "adb"}}))
    done = run_cli("validate", _recipe(tmp_path, [{"profile": str(profile)}]))
    assert done.returncode == 2 and "targets.0" in done.stderr
    assert "or on tflite over adb" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_text_run_with_a_tflite_target(tmp_path):
    pytest.importorskip("litert_torch", reason="litert-torch not installed (extra: tflite)")
    pytest.importorskip("ai_edge_litert", reason="ai-edge-litert not installed (extra: tflite)")
    from edgecompress.targets import load_profile, machine_reasons

    vnni = "x86-avx512-vnni-int8"  # runs on a VNNI machine, is reported skipped elsewhere
    path = _recipe(tmp_path, [{"name": "ort-int8", "precision": "int8", **_TIMING},
                              {"name": "arm-fp32", "backend": "tflite", "precision": "fp32",
                               **_TIMING},
                              {"profile": vnni, **_TIMING, "min_runs": 5},
                              {"profile": "android-arm64", "precision": "fp32", **_TIMING},
                              {"name": "gpu-int8", "backend": "tensorrt", "precision": "int8",
                               **_TIMING}])
    out = tmp_path / "run"
    done = run_cli("run", path, "--out", str(out))
    assert done.returncode in (0, 1), done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    targets = {t["name"]: t for t in report["targets"]}
    tfl = targets["arm-fp32"]
    assert tfl["status"] == "ok" and tfl["backend"] == "tflite", tfl
    assert tfl["artifact"].endswith(".tflite") and (out / tfl["artifact"]).is_file()
    assert (out / tfl["teacher_artifact"]).suffix == ".tflite"
    # The FP32 flatbuffer computes what the PyTorch student does (texts padded to seq_len).
    assert tfl["parity"]["top1_agreement"] >= 0.99 and tfl["parity"]["max_abs_diff"] < 1e-3
    assert tfl["latency_ms"]["input_shape"] == [1, 32] and tfl["speedup_vs_teacher"] > 0
    assert abs(tfl["accuracy"] - report["student"]["accuracy_fp32"]) < 0.02
    export = json.loads((out / "export" / "stage.json").read_text())["metrics"]
    assert export["student"]["tflite"]["32"]["max_abs_diff"] < 1e-3
    # One interleaved benchmark for both targets: ORT and TFLite engines in the same rounds.
    assert len(tfl["timing"]["engines"]) == len(targets["ort-int8"]["timing"]["engines"])
    assert targets["ort-int8"]["status"] == "ok"
    assert "arm-fp32" in (out / "report.html").read_text()
    assert (out / "junit.xml").is_file()
    # A profile target: the profile's precision, ISA and budgets; skipped on another machine.
    prof = targets[vnni]
    assert prof["precision"] == "int8"
    mismatch = machine_reasons(load_profile(vnni))
    assert prof["status"] == ("skipped" if mismatch else "ok"), prof
    if mismatch:
        assert "avx512_vnni" in prof["reason"]
    assert report["recipe"]["targets"][2]["gate"]["max_accuracy_drop"] == 1.5
    # A phone over adb (skipped here without one): benchmark_model times the FP32 flatbuffer,
    # told the inputs' names and shapes and to draw token ids and mask from the data's range.
    from edgecompress.bench.adb import adb_availability, benchmark_args, tflite_inputs

    # TensorRT: the Q/DQ student with int8 symmetric activations is made and linted here;
    # the engine is built and timed where TensorRT and a GPU are (skipped here, saying so).
    trt = export["tensorrt_int8"]
    assert trt["qdq_nodes"] > 0 and (out / "export" / "student.trt.int8.onnx").is_file()
    from edgecompress.backends import get_backend
    from edgecompress.quant.trt_lint import lint_tensorrt

    assert lint_tensorrt(out / "export" / "student.trt.int8.onnx", require_qdq=True).passed
    gpu = targets["gpu-int8"]
    if get_backend("tensorrt").availability()[0]:
        assert gpu["status"] == "ok" and gpu["seq_len"] == 32, gpu
    else:
        assert gpu["status"] == "skipped" and "TensorRT" in gpu["reason"], gpu
    phone = targets["android-arm64"]
    assert phone["status"] == ("ok" if adb_availability()[0] else "skipped"), phone
    specs = tflite_inputs(out / tfl["artifact"], [(2, 150), (1, 1)])
    assert [s.shape for s in specs] == [(1, 32), (1, 32)]
    flags = benchmark_args("m.tflite", threads=1, warmup=1, runs=5, inputs=specs)
    assert f"--input_layer={specs[0].name},{specs[1].name}" in flags
    assert "--input_layer_shape=1,32:1,32" in flags
    assert f"--input_layer_value_range={specs[0].name},2,150:{specs[1].name},1,1" in flags


@pytest.mark.slow
def test_litert_still_cannot_convert_an_int8_encoder(tmp_path):
    """The refusal above is a fact about litert-torch; this fails (and says to lift it) the day
    the converter accepts a PT2E int8 BERT."""
    pytest.importorskip("litert_torch", reason="litert-torch not installed (extra: tflite)")
    import torch
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from edgecompress.errors import ModelError
    from edgecompress.export.tflite import convert_module
    from edgecompress.text.export import LogitsOnly
    from edgecompress.text.models import load_hf

    model, _ = load_hf(tiny_bert_dir(tmp_path / "bert", layers=1, hidden=32, heads=2, ffn=64))
    ids = torch.randint(5, 100, (1, 16))
    mask = torch.ones_like(ids)
    graph = torch.export.export(LogitsOnly(model).eval(), (ids, mask)).module()
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(graph, quantizer)
    prepared(ids, mask)
    with pytest.raises(ModelError, match="uniform_dequantize"):
        convert_module(convert_pt2e(prepared), (ids, mask), tmp_path / "int8.tflite")
    assert "uniform_dequantize" in TFLITE_INT8_REFUSAL
