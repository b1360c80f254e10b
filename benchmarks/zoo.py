"""The model-zoo matrix: torchvision / timm architectures through the whole pipeline.

Each row is one architecture as the student (teacher: torchvision's resnet50, trained once in the
first row and reused by weights; one row uses a timm ViT as the teacher), run by the real CLI
(``edgecompress run``) on scikit-learn's digits as 3x32x32 images: finetune -> distill -> prune
(50% MACs) -> qat (PTQ, and QAT for the rows named in ``--qat``) -> export -> ONNX Runtime int8
+ TFLite int8 (fully integer check) -> bench, plus the TensorRT Q/DQ lint of the tensorrt
preset's ONNX (``edgecompress lint``; TensorRT itself is not on this machine).

A cell is ``ok``, or ``refused`` with the message of the stage that stopped it and whether that
happened before any training (preflight, exit 2/3) or after (a late failure: what the matrix is
there to catch). The short budgets (2 epochs, 600 training images) test the path, not accuracy.

    python benchmarks/zoo.py --json benchmarks/results/zoo.json --md benchmarks/results/zoo.md

About 1-3 minutes per architecture on 2 cores; ``--only resnet18,squeezenet1_1`` runs a subset.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]

#: (row name, model id, extra kwargs). ViT: a 32x32 input, 4x4 patches (64 tokens).
STUDENTS: list[tuple[str, str, dict[str, Any]]] = [
    ("resnet18", "torchvision:resnet18", {}),
    ("resnet50", "torchvision:resnet50", {}),
    ("mobilenet_v2", "torchvision:mobilenet_v2", {}),
    ("mobilenet_v3_small", "torchvision:mobilenet_v3_small", {}),
    ("mobilenet_v3_large", "torchvision:mobilenet_v3_large", {}),
    ("efficientnet_b0", "torchvision:efficientnet_b0", {}),
    ("regnet_x_400mf", "torchvision:regnet_x_400mf", {}),
    ("shufflenet_v2_x1_0", "torchvision:shufflenet_v2_x1_0", {}),
    ("squeezenet1_1", "torchvision:squeezenet1_1", {}),
    ("convnext_tiny", "torchvision:convnext_tiny", {}),
    ("deit_tiny (timm)", "timm:deit_tiny_patch16_224", {"img_size": 32, "patch_size": 4}),
]
TEACHER = ("torchvision:resnet50", {})
VIT_TEACHER_ROW = ("resnet18 <- deit_small teacher", "torchvision:resnet18", {},
                   ("timm:deit_small_patch16_224", {"img_size": 32, "patch_size": 4}))


def make_data(path: Path, size: int) -> None:
    """scikit-learn's digits as 3-channel ``size`` x ``size`` float images (npz x/y)."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    np.savez(path, x=x.repeat(1, 3, 1, 1).numpy(), y=digits.target.astype(np.int64))


def recipe(name: str, student: tuple[str, dict], teacher: tuple[str, dict], data: Path,
           teacher_weights: Path | None, mode: str, epochs: int,
           prune: bool = True) -> dict[str, Any]:
    teacher_spec: dict[str, Any] = {"id": teacher[0], "kwargs": teacher[1]}
    if teacher_weights is not None:
        teacher_spec["weights"] = str(teacher_weights)
    return {
        "version": 1, "name": f"zoo-{name}", "seed": 0,
        "data": {"source": "npz", "path": str(data), "train_limit": 600, "eval_limit": 200,
                 "calibration_samples": 64},
        "teacher": teacher_spec,
        "student": {"id": student[0], "kwargs": student[1]},
        "stages": {
            "finetune": {"enabled": teacher_weights is None, "epochs": epochs},
            "distill": {"epochs": epochs, "baseline": False},
            "prune": {"enabled": prune, "target_macs_ratio": 0.5, "steps": 1,
                      "recovery_epochs": 1},
            "qat": {"enabled": True, "mode": mode, "epochs": 1},
        },
        "targets": [
            {"backend": "onnxruntime", "precision": "int8", "threads": 1, "warmup": 5,
             "runs": 50},
            {"backend": "tflite", "precision": "int8", "threads": 1, "warmup": 5, "runs": 50},
        ],
    }


def _last_error(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.startswith("error:")]
    if lines:
        return lines[-1][len("error:"):].strip()
    tail = [ln for ln in text.splitlines() if ln.strip()]
    return tail[-1] if tail else ""


def _stages_done(run: Path) -> list[str]:
    order = ["data", "finetune", "distill", "prune", "qat", "export", "bench", "report"]
    return [s for s in order if (run / s / "stage.json").is_file()]


def run_lint(run: Path) -> dict[str, Any]:
    """PTQ the pruned student (``prune/student.pt2``) with the tensorrt preset, export, lint."""
    import torch

    from edgecompress.prune.artifact import load_pruned
    from edgecompress.quant.presets import get_preset
    from edgecompress.quant.trt_lint import lint_tensorrt as lint

    pruned = run / "prune" / "student.pt2"
    if not pruned.is_file():
        return {"status": "skipped", "reason": "no pruned student"}
    data = np.load(run.parent / "data.npz")
    x = torch.from_numpy(data["x"][:64])
    try:
        model = load_pruned(pruned)
        preset = get_preset("tensorrt")
        prepared = preset.prepare(model, x[:2], qat=False)
        with torch.no_grad():
            for i in range(0, len(x), 16):
                prepared(x[i:i + 16])
        converted = preset.convert(prepared)
        out = run / "trt_lint" / "student_tensorrt.onnx"
        out.parent.mkdir(exist_ok=True)
        preset.export(converted, x[:2], out)
        result = lint(out, require_qdq=True)
    except Exception as exc:  # noqa: BLE001 - the matrix records the failure
        return {"status": "failed", "reason": f"{type(exc).__name__}: {str(exc)[:300]}"}
    return {"status": "ok" if result.passed else "findings",
            "findings": [str(f) for f in result.findings][:5], "qdq_nodes": result.qdq_nodes}


def summarize(run: Path, rc: int, log: str, seconds: float) -> dict[str, Any]:
    row: dict[str, Any] = {"exit_code": rc, "seconds": round(seconds, 1),
                           "stages_done": _stages_done(run)}
    if rc != 0:
        # From this run's log (a reused run directory keeps earlier stages' files).
        trained = "[finetune] running" in log or "[distill] running" in log
        row.update(status="refused", when="after training" if trained else "before training",
                   reason=_last_error(log))
        return row
    report = json.loads((run / "report.json").read_text())
    prune = next(s["metrics"] for s in report["stages"] if s["name"] == "prune")
    row.update(status="ok", params_before=prune.get("params_before"),
               params_after=prune.get("params_after"), macs_before=prune.get("macs_before"),
               macs_after=prune.get("macs_after"), groups=prune.get("groups"))
    presets = report["quantization"]["presets"]
    row["presets"] = {name: {"parity": p.get("parity"), "test_drop_vs_fp32_pp":
                             p.get("test_drop_vs_fp32_pp"), "fp32_layers": p.get("fp32_layers"),
                             "float_ops": p.get("float_ops")}
                      for name, p in presets.items()}
    row["targets"] = {t["name"]: {
        "backend": t["backend"], "status": t["status"],
        "int8_kernels": sum((t.get("int8_kernels") or {}).values()),
        "fp32_nodes": len(t.get("fp32_nodes") or []),
        "fp32_node_list": (t.get("fp32_nodes") or [])[:8],
        "int8_speedup_vs_fp32": t.get("int8_speedup_vs_fp32"),
        "accuracy": t.get("accuracy")} for t in report["targets"]}
    return row


def _run_name(name: str) -> str:
    return name.replace(" ", "_").replace("<-", "from").replace("(", "").replace(")", "")


def run_row(name: str, spec: dict[str, Any], work: Path, timeout: int) -> dict[str, Any]:
    run = work / _run_name(name)
    recipe_file = run.with_suffix(".yaml")
    recipe_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        proc = subprocess.run([sys.executable, "-m", "edgecompress", "run", str(recipe_file),
                               "--out", str(run), "--overwrite"], capture_output=True,
                              text=True, timeout=timeout, env=env, check=False)
        rc, log = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, log = 124, f"error: timed out after {timeout} s ({exc})"
    (run.parent / f"{run.name}.log").write_text(log)
    row = summarize(run, rc, log, time.perf_counter() - start)
    if row["status"] == "ok":
        row["tensorrt_lint"] = run_lint(run)
    return row


def _fmt_count(before: int | None, after: int | None) -> str:
    if not before or after is None:
        return "-"
    return f"{before / 1e6:.2f}M -> {after / 1e6:.2f}M"


def markdown(rows: dict[str, dict[str, Any]]) -> str:
    head = ("| student | status | params | MACs | ORT int8 kernels / fp32 nodes | ORT parity "
            "(top-1 agr., decisive) | ORT int8/fp32 p50 | tflite kernels / float ops | "
            "tflite int8/fp32 p50 | TensorRT lint | s |\n"
            "|---|---|---|---|---|---|---|---|---|---|---:|")
    lines = [head]
    for name, row in rows.items():
        if row["status"] != "ok":
            lines.append(f"| {name} | refused {row['when']}: {row['reason'][:160]} "
                         f"| | | | | | | | | {row['seconds']} |")
            continue
        ort = next((t for t in row["targets"].values() if t["backend"] == "onnxruntime"), {})
        tfl = next((t for t in row["targets"].values() if t["backend"] == "tflite"), {})
        ort_preset = next((p for n, p in row["presets"].items() if n.startswith("ort")), {})
        parity = ort_preset.get("parity") or {}
        agree = parity.get("top1_agreement_decisive", parity.get("top1_agreement"))
        if agree is not None and parity.get("top1_agreement") not in (None, agree):
            agree = f"{agree} ({parity['top1_agreement']} all)"

        def ratio(t: dict) -> str:
            value = t.get("int8_speedup_vs_fp32")
            return f"{value:.2f}x" if value else "-"

        lint = row.get("tensorrt_lint", {})
        lines.append(
            f"| {name} | ok | {_fmt_count(row['params_before'], row['params_after'])} | "
            f"{_fmt_count(row['macs_before'], row['macs_after'])} | "
            f"{ort.get('int8_kernels', '-')} / {ort.get('fp32_nodes', '-')} | "
            f"{agree if agree is not None else '-'} | {ratio(ort)} | "
            f"{tfl.get('int8_kernels', '-')} / {tfl.get('fp32_nodes', '-')} | {ratio(tfl)} | "
            f"{lint.get('status', '-')} | {row['seconds']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/zoo"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--md", type=Path, default=None)
    parser.add_argument("--only", default="", help="comma-separated row names")
    parser.add_argument("--qat", default="resnet18,mobilenet_v3_small",
                        help="rows also run with mode qat (comma-separated)")
    parser.add_argument("--no-prune", default="shufflenet_v2_x1_0",
                        help="rows also run with stages.prune.enabled: false (the way out "
                        "their refusal names)")
    parser.add_argument("--append", action="store_true",
                        help="merge the rows into an existing --json instead of replacing it")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite --md from --json without running anything")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--timeout", type=int, default=900)
    args = parser.parse_args()
    if args.render_only:
        rows = json.loads(args.json.read_text())["rows"]
        args.md.write_text(markdown(rows) + "\n")
        print(markdown(rows))
        return

    args.work = args.work.resolve()  # the recipes written there name the data by this path
    args.work.mkdir(parents=True, exist_ok=True)
    data = args.work / "data.npz"
    make_data(data, args.size)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    qat_rows = {s.strip() for s in args.qat.split(",") if s.strip()}

    rows: dict[str, dict[str, Any]] = {}
    first = args.work / _run_name(STUDENTS[0][0]) / "finetune" / "teacher.pt"
    teacher_weights: Path | None = first.resolve() if first.is_file() else None
    no_prune = {s.strip() for s in args.no_prune.split(",") if s.strip()}
    plan = [(n, (i, k), TEACHER, "ptq") for n, i, k in STUDENTS]
    plan += [(f"{n} (qat)", (i, k), TEACHER, "qat") for n, i, k in STUDENTS if n in qat_rows]
    plan += [(f"{n} (no prune)", (i, k), TEACHER, "ptq") for n, i, k in STUDENTS
             if n in no_prune]
    plan.append((VIT_TEACHER_ROW[0], (VIT_TEACHER_ROW[1], VIT_TEACHER_ROW[2]),
                 VIT_TEACHER_ROW[3], "ptq"))
    for name, student, teacher, mode in plan:
        if only and name.split(" (")[0] not in only and name not in only:
            continue
        weights = teacher_weights if teacher == TEACHER else None
        spec = recipe(name, student, teacher, data, weights, mode, args.epochs,
                      prune=not name.endswith("(no prune)"))
        print(f"== {name} ({mode})", flush=True)
        row = run_row(name, spec, args.work, args.timeout)
        rows[name] = row
        print(json.dumps({k: row.get(k) for k in ("status", "when", "reason", "seconds")}),
              flush=True)
        trained = args.work / _run_name(name) / "finetune" / "teacher.pt"
        if teacher == TEACHER and teacher_weights is None and trained.is_file():
            teacher_weights = trained.resolve()
    if args.append and args.json and args.json.is_file():
        rows = {**json.loads(args.json.read_text())["rows"], **rows}
    table = markdown(rows)
    print(table)
    from edgecompress.environment import cpu_description

    payload = {"cpu": cpu_description(), "size": args.size, "epochs": args.epochs, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    if args.md:
        args.md.write_text(table + "\n")


if __name__ == "__main__":
    main()
