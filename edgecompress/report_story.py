"""The compression story as data: what report.md and report.html tell besides the targets.

Every function reads a report.json document only (its top-level blocks and
``report["stages"][i]["metrics"]``) and returns plain rows, or ``None``/``[]`` when the run did not
produce that fact (a ``bench`` report, a run without pruning or QAT, a text run). Renderers never
guess: a missing block is a missing section, never a crash. Both families are read here: image
runs (finetune -> distill -> prune -> qat) and text runs (teacher -> distill -> prune with heads and
FFN width -> dynamic int8 at export).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Report = Mapping[str, Any]


def stage_metrics(report: Report, name: str) -> dict[str, Any]:
    """The metrics a stage recorded (``{}`` when the stage is not in the report)."""
    for stage in report.get("stages") or []:
        if isinstance(stage, Mapping) and stage.get("name") == name:
            return dict(stage.get("metrics") or {})
    return {}


def _ok_targets(report: Report) -> list[Mapping[str, Any]]:
    return [t for t in report.get("targets") or []
            if isinstance(t, Mapping) and t.get("status") == "ok"]


def _int8_targets(report: Report) -> list[Mapping[str, Any]]:
    return [t for t in _ok_targets(report) if t.get("precision") == "int8"]


def _distilled_shape(report: Report) -> tuple[Any, Any]:
    """Params and MACs of the student before pruning (the distilled shape)."""
    student = report.get("student") or {}
    prune = stage_metrics(report, "prune")
    if prune.get("enabled"):
        before = prune.get("summary_before") or {}  # the text prune stage
        return (prune.get("params_before", before.get("params")),
                prune.get("macs_before", before.get("macs")))
    return student.get("params"), student.get("macs")


def model_ladder(report: Report) -> list[dict[str, Any]]:
    """teacher -> distilled (and the hard-label baseline) -> pruned -> int8 engines.

    Each row: ``step``, ``model``, ``params``, ``macs``, ``size_bytes`` (``None`` where no artifact
    of that step was written: the unpruned student of a pruned run is never exported),
    ``size_what`` (which artifact), ``accuracy`` (test split, fraction), ``accuracy_what``.
    """
    teacher, student = report.get("teacher") or {}, report.get("student") or {}
    if not teacher or not student:
        return []
    prune = stage_metrics(report, "prune")
    pruned = bool(prune.get("enabled"))
    params0, macs0 = _distilled_shape(report)
    rows = [{"step": "teacher", "model": "teacher (FP32)", "params": teacher.get("params"),
             "macs": teacher.get("macs"), "size_bytes": teacher.get("size_bytes"),
             "size_what": "FP32 ONNX", "accuracy": teacher.get("accuracy"),
             "accuracy_what": "PyTorch FP32"}]
    distilled_acc = student.get("accuracy_fp32_distilled", student.get("accuracy_fp32"))
    kept = (report.get("distillation") or {}).get("kept")
    forward = {"distilled": ", carried forward", "baseline": ""}
    unpruned_size = None if pruned else student.get("size_bytes")
    rows.append({"step": "distilled", "model": f"student, distilled (FP32){forward.get(kept, '')}",
                 "params": params0,
                 "macs": macs0, "size_bytes": unpruned_size,
                 "size_what": None if pruned else "FP32 ONNX", "accuracy": distilled_acc,
                 "accuracy_what": "PyTorch FP32"})
    if student.get("baseline_accuracy_fp32") is not None:
        rows.append({"step": "baseline", "model": "student, hard labels only (FP32)"
                     + (", carried forward" if kept == "baseline" else ""),
                     "params": params0, "macs": macs0, "size_bytes": None, "size_what": None,
                     "accuracy": student["baseline_accuracy_fp32"],
                     "accuracy_what": "PyTorch FP32"})
    if pruned:
        rows.append({"step": "pruned", "model": "student, pruned (FP32)",
                     "params": student.get("params"), "macs": student.get("macs"),
                     "size_bytes": student.get("size_bytes"), "size_what": "FP32 ONNX",
                     "accuracy": student.get("accuracy_fp32"), "accuracy_what": "PyTorch FP32"})
    presets = (report.get("quantization") or {}).get("presets") or {}
    for t in _int8_targets(report):
        acc, what = t.get("accuracy"), f"{t.get('backend')} engine"
        if acc is None:  # timed only (trtexec): the PyTorch int8 model's accuracy instead
            acc, what = (presets.get(t.get("quant_preset")) or {}).get("test_accuracy"), \
                "PyTorch INT8"
        rows.append({"step": "int8", "model": f"student, int8 ({t.get('name')})",
                     "params": student.get("params"), "macs": student.get("macs"),
                     "size_bytes": t.get("size_bytes"), "size_what": f"{t.get('backend')} engine",
                     "accuracy": acc, "accuracy_what": what if acc is not None else None})
    return rows


def distillation_story(report: Report) -> dict[str, Any] | None:
    """Gain over the hard-label baseline, which student was carried forward, and (text) which
    teacher layers the student kept. ``None`` when neither the student nor distill metrics exist.
    """
    student = report.get("student") or {}
    distill = stage_metrics(report, "distill")
    if not student and not distill:
        return None
    block = report.get("distillation") or {}
    # The distillation block is the distill stage's own account; the student block repeats it.
    out: dict[str, Any] = {
        "gain_pp": block.get("gain_pp", student.get("distillation_gain_pp")),
        "distilled_accuracy": (block.get("distilled") or {}).get(
            "test_accuracy", student.get("accuracy_fp32_distilled")),
        "baseline_accuracy": (block.get("baseline") or {}).get(
            "test_accuracy", student.get("baseline_accuracy_fp32")),
        "kept": block.get("kept"), "val_gain_pp": block.get("val_gain_pp"),
        "setting": ({k: block[k] for k in ("loss", "temperature", "alpha") if k in block}
                    or None),
        "search": block.get("search"),
        "kept_layers": distill.get("kept_layers"), "layer_map": distill.get("layer_map"),
    }
    if out["distilled_accuracy"] is None:
        out["distilled_accuracy"] = distill.get("test_accuracy")
    return out


def pruning_plan(report: Report) -> dict[str, Any] | None:
    """What pruning kept: channels per group (image) or heads per layer and FFN width (text),
    the plan/importance, the size/MAC ratios and the accuracy before and after recovery."""
    prune = stage_metrics(report, "prune")
    if not prune.get("enabled"):
        return None
    before = prune.get("summary_before") or {}
    after = prune.get("summary") or {}
    params0 = prune.get("params_before", before.get("params"))
    params1 = prune.get("params_after", after.get("params"))
    macs0 = prune.get("macs_before", before.get("macs"))
    macs1 = prune.get("macs_after", after.get("macs"))
    groups = []
    for name, pair in (prune.get("channels") or {}).items():
        if isinstance(pair, list | tuple) and len(pair) == 2:
            groups.append({"group": name, "unit": "channels", "before": pair[0],
                           "after": pair[1]})
    heads0, heads1 = before.get("heads"), after.get("heads")
    if isinstance(heads0, list) and isinstance(heads1, list) and len(heads0) == len(heads1):
        groups += [{"group": f"layer {i} attention", "unit": "heads", "before": h0, "after": h1}
                   for i, (h0, h1) in enumerate(zip(heads0, heads1, strict=True))]
    ffn0 = before.get("intermediate_size")
    ffn1 = after.get("intermediate_size", prune.get("intermediate_size"))
    if ffn0 is not None and ffn1 is not None:
        groups.append({"group": "FFN (every layer)", "unit": "width", "before": ffn0,
                       "after": ffn1})
    steps = [s for s in prune.get("steps") or [] if isinstance(s, Mapping)]
    return {
        "plan": prune.get("plan"), "importance": prune.get("importance"),
        "round_to": prune.get("round_to"), "target": prune.get("target"),
        "params_before": params0, "params_after": params1, "macs_before": macs0,
        "macs_after": macs1, "groups": groups,
        "pruned_heads": prune.get("pruned_heads"),
        "accuracy_before": prune.get("test_accuracy_distilled",
                                     (report.get("student") or {}).get("accuracy_fp32_distilled")),
        "accuracy_pruned": prune.get("accuracy_pruned"),  # text: before recovery
        "accuracy_after": prune.get("test_accuracy"),
        "steps": steps,
    }


def quantization_choices(report: Report) -> list[dict[str, Any]]:
    """Per int8 preset (image) or the export's int8 method (text): mode, what was kept (QAT or
    PTQ, with the validation accuracies behind the choice), int8 vs FP32 test accuracy."""
    quant = report.get("quantization") or {}
    rows = []
    for name, p in (quant.get("presets") or {}).items():
        if not isinstance(p, Mapping):
            continue
        choice = p.get("qat_vs_ptq") or {}
        rows.append({"preset": name, "status": p.get("status"), "reason": p.get("reason"),
                     "mode": quant.get("mode"), "kept": choice.get("kept") or quant.get("mode"),
                     "qat_val_accuracy": choice.get("qat_val_accuracy"),
                     "ptq_val_accuracy": choice.get("ptq_val_accuracy"),
                     "ptq_calibration": choice.get("ptq_calibration"),
                     "targets": p.get("targets") or [],
                     "fp32_accuracy": quant.get("fp32_test_accuracy"),
                     "int8_accuracy": p.get("test_accuracy"),
                     "drop_pp": p.get("test_drop_vs_fp32_pp"), "rationale": p.get("rationale")})
    if rows:
        return rows
    int8 = stage_metrics(report, "export").get("int8") or {}
    if int8.get("method"):  # the text family: dynamic int8 at export, no qat stage
        targets = _int8_targets(report)
        fp32 = next((t.get("fp32_accuracy") for t in targets if t.get("fp32_accuracy")
                     is not None), (report.get("student") or {}).get("accuracy_fp32"))
        acc = next((t.get("accuracy") for t in targets if t.get("accuracy") is not None), None)
        rows.append({"preset": "export int8", "status": "ok", "reason": None,
                     "mode": int8["method"], "kept": "ptq", "qat_val_accuracy": None,
                     "ptq_val_accuracy": None, "ptq_calibration": None,
                     "targets": [t.get("name") for t in targets], "fp32_accuracy": fp32,
                     "int8_accuracy": acc,
                     "drop_pp": None if acc is None or fp32 is None else 100 * (fp32 - acc),
                     "rationale": (f"{int8['method']} at export: int8 weights, activations "
                                   "quantized at run time; this family has no qat stage")})
    return rows


def fallbacks(report: Report) -> list[dict[str, Any]]:
    """Per int8 preset/engine: layer sensitivity (most sensitive first), the layers kept in FP32
    and why (accuracy criterion attempts), and the float nodes left in each int8 engine."""
    rows = []
    for name, p in ((report.get("quantization") or {}).get("presets") or {}).items():
        if not isinstance(p, Mapping) or p.get("status") != "ok":
            continue
        rows.append({"where": f"preset {name}", "sensitivity": p.get("sensitivity") or [],
                     "fp32_layers": p.get("fp32_layers") or [],
                     "layers_quantized": len(p.get("layers_quantized") or []),
                     "criterion": p.get("accuracy_criterion")})
    for t in _int8_targets(report):
        rows.append({"where": f"engine {t.get('name')}", "sensitivity": [],
                     "fp32_layers": list(t.get("fp32_nodes") or []), "layers_quantized": None,
                     "criterion": None})
    int8 = stage_metrics(report, "export").get("int8") or {}
    if int8.get("fp32_embeddings"):
        rows.append({"where": "export int8 (embeddings)", "sensitivity": [],
                     "fp32_layers": list(int8["fp32_embeddings"]), "layers_quantized": None,
                     "criterion": None})
    return rows


def kernel_census(report: Report) -> dict[str, Any] | None:
    """Op -> count of int8 kernels per int8 engine (``targets``: engine name -> census), the ops
    left in float, and whether the engine is fully integer (TFLite)."""
    engines = {}
    for t in _int8_targets(report):
        if isinstance(t.get("int8_kernels"), Mapping):
            engines[str(t.get("name"))] = {
                "backend": t.get("backend"), "kernels": dict(t["int8_kernels"]),
                "fp32_nodes": list(t.get("fp32_nodes") or []),
                "fully_integer": t.get("fully_integer")}
    teacher_int8 = stage_metrics(report, "export").get("teacher_int8") or {}
    if engines and isinstance(teacher_int8.get("int8_kernels"), Mapping):
        engines["teacher + quantize_dynamic"] = {
            "backend": "onnxruntime", "kernels": dict(teacher_int8["int8_kernels"]),
            "fp32_nodes": list(teacher_int8.get("fp32_nodes") or []), "fully_integer": None}
    if not engines:
        return None
    ops = sorted({op for e in engines.values() for op in e["kernels"]})
    return {"engines": engines, "ops": ops}


def environment_summary(report: Report) -> dict[str, Any] | None:
    """CPU (model, machine, ISA class, flags, cores, clock), threads, Python and versions."""
    env = report.get("environment") or {}
    if not env:
        return None
    cpu = env.get("cpu") or {}
    return {"cpu_model": cpu.get("model"), "machine": cpu.get("machine"), "isa": cpu.get("isa"),
            "flags": list(cpu.get("flags") or []), "logical_cores": cpu.get("logical_cores"),
            "clock_ghz": cpu.get("clock_ghz"), "threads": env.get("threads"),
            "python": env.get("python"),
            "packages": {k: v for k, v in (env.get("packages") or {}).items() if k != "python"}}
