"""Crafted report documents and a tiny ONNX classifier for the gate/compare/bench tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np


def target_entry(name: str = "cpu", **overrides: Any) -> dict[str, Any]:
    """A target that ran: accuracy 0.95 vs teacher 0.97 (2 pp), p50 1 ms, 4x speedup."""
    entry = {
        "name": name, "backend": "onnxruntime", "precision": "fp32", "threads": 1,
        "status": "ok", "reason": "", "artifact": f"engines/{name}/model.onnx",
        "size_bytes": 100_000, "teacher_size_bytes": 2_000_000,
        "accuracy": 0.95, "teacher_accuracy": 0.97, "accuracy_drop": 2.0,
        "latency_ms": {"p50": 1.0, "p90": 1.5, "p99": 2.0, "mean": 1.1, "stdev": 0.2,
                       "min": 0.9, "max": 2.5, "runs": 100, "warmup": 5, "threads": 1,
                       "batch_size": 1, "input_shape": [1, 1, 8, 8]},
        "teacher_latency_ms": {"p50": 4.0, "p90": 5.0, "p99": 6.0, "mean": 4.2, "stdev": 0.5,
                               "min": 3.5, "max": 7.0, "runs": 100, "warmup": 5, "threads": 1,
                               "batch_size": 1},
        "speedup_vs_teacher": 4.0,
        "parity": {"top1_agreement": 1.0, "max_abs_diff": 1e-5, "snr_db": 110.0},
    }
    entry.update(overrides)
    return entry


def make_report(targets: list[dict[str, Any]] | None = None,
                thresholds: dict[str, Any] | None = None,
                target_thresholds: dict[str, Any] | None = None) -> dict[str, Any]:
    """A schema-1 report whose gate was judged with the given thresholds."""
    from edgecompress.gate import judge

    targets = copy.deepcopy(targets if targets is not None else [target_entry()])
    return {
        "schema_version": 1, "recipe": {"name": "crafted"},
        "environment": {"python": "3.11", "packages": {}, "threads": 1,
                        "cpu": {"model": "Test CPU", "flags": ["avx2"], "logical_cores": 2}},
        "dataset": {"name": "digits", "eval_samples": 360, "num_classes": 10,
                    "input_shape": [1, 8, 8]},
        "teacher": {"accuracy": 0.97, "params": 1000, "macs": 10000, "size_bytes": 2_000_000},
        "student": {"accuracy_fp32": 0.95, "params": 100, "macs": 1000, "size_bytes": 100_000,
                    "baseline_accuracy_fp32": 0.94, "distillation_gain_pp": 1.0},
        "stages": [], "targets": targets,
        "gate": judge(targets, thresholds, target_thresholds),
    }


def tiny_onnx(path: Path, *, in_hw: int = 8, classes: int = 10, dynamic: bool = True) -> Path:
    """Flatten + Gemm classifier on 1xHxW inputs, built with onnx.helper (no export: instant)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(
        rng.standard_normal((in_hw * in_hw, classes)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(classes, np.float32), "b")
    batch = "N" if dynamic else 1
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w", "b"],
                                                                     ["logits"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, in_hw, in_hw])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])], [w, b])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def image_story_report() -> dict[str, Any]:
    """An image run's report with every story block: distillation with a baseline, a pruning
    plan, QAT vs PTQ with sensitivity and an accuracy criterion, and an int8 ORT target."""
    int8 = target_entry("cpu-int8", precision="int8", quant_preset="ort-x86-avx2",
                        accuracy=0.93, accuracy_drop=4.0, size_bytes=30_000,
                        int8_kernels={"QLinearConv": 10, "QGemm": 1}, fp32_nodes=["stem.0"],
                        fp32_accuracy=0.95, int8_speedup_vs_fp32=1.5)
    report = make_report([target_entry("cpu"), int8])
    report["environment"]["cpu"].update(isa="avx2", machine="x86_64", clock_ghz=2.5)
    report["environment"]["packages"] = {"python": "3.11", "torch": "2.13.0",
                                         "onnxruntime": "1.32.0"}
    report["teacher"]["accuracy"] = 0.97
    report["student"].update(accuracy_fp32_distilled=0.955, params=100, macs=1000,
                             distillation_gain_pp=1.5)
    report["distillation"] = {"loss": "kd", "temperature": 4.0, "alpha": 0.9, "kept": "distilled",
                              "distilled": {"val_accuracy": 0.96, "test_accuracy": 0.955},
                              "baseline": {"val_accuracy": 0.95, "test_accuracy": 0.94},
                              "gain_pp": 1.5, "val_gain_pp": 1.0, "search": None}
    report["quantization"] = {"mode": "qat", "fp32_test_accuracy": 0.95, "presets": {
        "ort-x86-avx2": {
            "status": "ok", "targets": ["cpu-int8"], "test_accuracy": 0.935,
            "test_drop_vs_fp32_pp": 1.5, "layers_quantized": ["conv1", "fc"],
            "fp32_layers": ["stem.0"], "rationale": "u8s7: no vpmaddubsw saturation",
            "sensitivity": [{"layer": "stem.0", "accuracy": 0.90, "accuracy_drop_pp": 6.0,
                             "logit_mse": 0.5},
                            {"layer": "fc", "accuracy": 0.95, "accuracy_drop_pp": 1.0,
                             "logit_mse": 0.01}],
            "accuracy_criterion": {"max_accuracy_drop": 2.0, "met": True, "attempts": [
                {"fp32_layers": [], "val_accuracy": 0.90, "val_drop_vs_fp32_pp": 6.0},
                {"fp32_layers": ["stem.0"], "val_accuracy": 0.945, "val_drop_vs_fp32_pp": 1.5}]},
            "qat_vs_ptq": {"kept": "qat", "qat_val_accuracy": 0.94, "ptq_val_accuracy": 0.91,
                           "ptq_calibration": "minmax"}},
        "tensorrt": {"status": "skipped", "reason": "tensorrt not installed"}}}
    report["stages"] = [
        {"name": "distill", "seconds": 1.0, "metrics": {"student": {"test_accuracy": 0.955}}},
        {"name": "prune", "seconds": 1.0, "metrics": {
            "enabled": True, "plan": "uniform", "importance": "l2", "round_to": 8,
            "params_before": 400, "params_after": 100, "macs_before": 4000, "macs_after": 1000,
            "channels": {"conv1": [64, 40], "conv2": [32, 32]},
            "test_accuracy_distilled": 0.955, "test_accuracy": 0.95,
            "steps": [{"step": 1, "goal": 0.5, "macs_ratio": 0.48,
                       "test_accuracy_pruned": 0.4, "test_accuracy_recovered": 0.95}]}},
        {"name": "qat", "seconds": 1.0, "metrics": {"enabled": True, "mode": "qat"}}]
    return report


def text_story_report() -> dict[str, Any]:
    """A text run's report: no qat stage and no distillation block; prune metrics with heads and
    FFN width; dynamic int8 at export with the teacher's quantize_dynamic census."""
    int8 = target_entry("int8", precision="int8", accuracy=0.90, size_bytes=30_000,
                        int8_kernels={"DynamicQuantizeMatMul": 5, "QAttention": 1},
                        fp32_nodes=[], fp32_accuracy=0.91, seq_len=32)
    report = make_report([target_entry("fp32", seq_len=32), int8])
    report["task"] = "text-classification"
    report["dataset"] = {"name": "reviews.csv", "eval_samples": 32, "num_classes": 2,
                         "classes": ["neg", "pos"], "input_shape": None}
    report["teacher"] = {"accuracy": 0.96875, "params": 25218, "encoder_params": 17088,
                         "macs": 4194304, "layers": 2, "size_bytes": 142837,
                         "fused_ops": {"Attention": 2}}
    report["student"] = {"accuracy_fp32": 0.91, "accuracy_fp32_distilled": 0.92,
                         "params": 12498, "encoder_params": 4368, "macs": 1048576, "layers": 1,
                         "heads": [2], "intermediate_size": 32, "size_bytes": 75346,
                         "encoder_params_ratio": 0.2556, "accuracy_retained": 0.94,
                         "baseline_accuracy_fp32": None, "distillation_gain_pp": None}
    summary = {"params": 16674, "encoder_params": 8544, "macs": 2097152, "layers": 1,
               "heads": [4], "hidden_size": 32, "intermediate_size": 64}
    report["stages"] = [
        {"name": "distill", "seconds": 1.0, "metrics": {
            "kept_layers": [1], "layer_map": [[1, 2]], "test_accuracy": 0.92,
            "summary": summary}},
        {"name": "prune", "seconds": 1.0, "metrics": {
            "enabled": True, "pruned_heads": {"0": [1, 2]}, "intermediate_size": 32,
            "summary_before": summary, "accuracy_pruned": 0.8, "test_accuracy": 0.91,
            "summary": {**summary, "params": 12498, "encoder_params": 4368, "macs": 1048576,
                        "heads": [2], "intermediate_size": 32}}},
        {"name": "export", "seconds": 1.0, "metrics": {
            "int8": {"method": "ptq_dynamic", "int8_kernels": {"DynamicQuantizeMatMul": 5,
                                                               "QAttention": 1},
                     "fp32_nodes": [], "fp32_embeddings": []},
            "teacher_int8": {"method": "quantize_dynamic",
                             "int8_kernels": {"DynamicQuantizeMatMul": 8, "QAttention": 2},
                             "fp32_nodes": []}}}]
    return report
