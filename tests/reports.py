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
