"""Did distillation pay? The INT8 student against the FP32 teacher and against the obvious
alternative, the teacher through ONNX Runtime's ``quantize_dynamic``, on ONNX Runtime (batch 1,
1 thread by default), at sequence lengths 64 and 128.

Reads a finished text run (e.g. ``edgecompress run examples/text-classification-minilm.yaml
--out runs/text-minilm``): ``export/teacher.opt.onnx`` (FP32 teacher, ORT-optimized),
``export/teacher.int8.onnx`` (teacher + quantize_dynamic, written by the export stage when
``quant.teacher_reference`` is on, the default), ``export/student.opt.onnx`` (FP32 student) and
``export/student.int8.onnx`` (our INT8 student). With ``--static`` a static QDQ INT8 student
(``quantize_static``, uint8 activations calibrated on training texts) is built and timed too,
to see whether static beats dynamic on this CPU.

Every engine is timed in the same interleaved rounds per sequence length (A B C D, B C D A,
...; :func:`edgecompress.bench.measure_interleaved`), so background load hits all alike;
speedups are medians of same-round ratios. Accuracy is each engine's on the run's test split
(padded batches through the same ONNX Runtime sessions), sizes are the files' bytes. Prints a
table per sequence length with the CPU model and its ISA, and writes
``benchmarks/results/bert_int8_speed.json``.

    python benchmarks/bert_int8_speed.py --run runs/text-minilm
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
from pathlib import Path
from typing import Any

from edgecompress.bench import measure_interleaved
from edgecompress.io import atomic_write_json
from edgecompress.report import environment

ENGINES = {"teacher fp32": "teacher.opt.onnx",
           "teacher + quantize_dynamic": "teacher.int8.onnx",
           "student fp32": "student.opt.onnx",
           "student int8 (ours)": "student.int8.onnx"}
REFERENCE = "teacher + quantize_dynamic"


def cpu_summary() -> dict[str, Any]:
    """Model name and the instruction sets that decide int8 speed, from /proc/cpuinfo."""
    from edgecompress.isa import cpu_info

    info = cpu_info()
    flags = info.flags
    return {"model": info.model, "avx2": "avx2" in flags,
            "avx512": sorted(f for f in flags if f.startswith("avx512")),
            "vnni": sorted(f for f in flags if "vnni" in f)}


def _context(run: Path):
    from edgecompress.text.context import TextContext
    from edgecompress.text.recipe import parse_text_recipe

    recipe = parse_text_recipe(json.loads((run / "recipe.json").read_text()),
                               source=str(run / "recipe.json"))
    return TextContext(recipe, run, None)


def _static_student(ctx, export: Path, out: Path, samples: int = 128) -> Path:
    from edgecompress.text.data import collate
    from edgecompress.text.quant import quantize_static_int8

    data, feeds = ctx.encoded("train"), []
    count = min(samples, len(data))
    for start in range(0, count, 16):
        i, m = collate(data.take(range(start, min(start + 16, count))), ctx.pad_id)
        feeds.append((i.numpy(), m.numpy()))
    return quantize_static_int8(export / "student.onnx", out, feeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/text-minilm"))
    parser.add_argument("--seq-len", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=200, help="timed calls per engine")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--static", action="store_true",
                        help="also build and time a static QDQ INT8 student")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "bert_int8_speed.json")
    args = parser.parse_args()
    from edgecompress.backends.onnxruntime import OnnxRuntimeRunner
    from edgecompress.bench.accuracy import evaluate
    from edgecompress.text.data import fixed_length_input
    from edgecompress.text.evalset import TokenEvalSet
    from edgecompress.text.export import ort_session
    from edgecompress.text.quant import QDQ_DISABLED, kernel_report

    export = args.run / "export"
    paths = {name: export / file for name, file in ENGINES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise SystemExit(f"missing engine files (rerun the export stage): {', '.join(missing)}")
    ctx = _context(args.run)
    limit = json.loads((ctx.teacher_dir / "config.json").read_text())["max_position_embeddings"]
    if max(args.seq_len) > limit:
        raise SystemExit(f"--seq-len {max(args.seq_len)}: the model takes at most {limit} tokens")
    tmp = Path(tempfile.mkdtemp(prefix="bert_int8_speed_"))
    disabled: dict[str, list[str] | None] = dict.fromkeys(paths)
    if args.static:
        paths["student int8 static QDQ"] = _static_student(ctx, export, tmp / "static.onnx")
        disabled["student int8 static QDQ"] = QDQ_DISABLED
    sessions = {name: ort_session(path, args.threads, disabled=disabled[name])
                for name, path in paths.items()}
    engines: dict[str, dict[str, Any]] = {}
    tok = ctx.tokenizer
    test = TokenEvalSet(ctx.encoded("test"), ctx.pad_id, max(args.seq_len), tok.cls_token_id,
                        tok.sep_token_id)
    for name, path in paths.items():
        acc, _ = evaluate(OnnxRuntimeRunner(sessions[name], args.threads), test, batch_size=64)
        kr = kernel_report(path, disabled=disabled[name])
        engines[name] = {"file": str(path), "size_bytes": path.stat().st_size, "accuracy": acc,
                         "int8_kernels": kr["int8_kernels"], "fp32_nodes": len(kr["fp32_nodes"]),
                         "fp32_embeddings": len(kr["fp32_embeddings"]),
                         "fused": {op: kr["ops"].get(op, 0)
                                   for op in ("Attention", "QAttention", "SkipLayerNormalization",
                                              "BiasGelu", "EmbedLayerNormalization",
                                              "QEmbedLayerNormalization") if kr["ops"].get(op)},
                         "latency_ms": {}}
    speed: dict[str, Any] = {}
    for seq in args.seq_len:
        ids, mask = fixed_length_input(ctx.encoded("test"), seq, 1, tok.cls_token_id,
                                       tok.sep_token_id)
        feed = {"input_ids": ids, "attention_mask": mask}
        calls = {name: functools.partial(s.run, None, feed) for name, s in sessions.items()}
        result = measure_interleaved(calls, warmup=args.warmup, runs=args.runs,
                                     threads=args.threads, input_shape=list(ids.shape))
        per = {}
        for name in sessions:
            stats = result.stats[name].to_dict()
            engines[name]["latency_ms"][str(seq)] = {k: stats[k] for k in
                                                     ("p50", "p90", "mean", "runs", "rounds")}
            vs_t = result.paired_ratio("teacher fp32", name)
            vs_r = result.paired_ratio(REFERENCE, name)
            vs_r_cpu = result.paired_ratio(REFERENCE, name, cpu=True)
            per[name] = {"p50_ms": stats["p50"],
                         "speedup_vs_teacher": vs_t["ratio"] if vs_t else 1.0,
                         "speedup_vs_reference": vs_r["ratio"] if vs_r else 1.0,
                         "speedup_vs_reference_cpu": vs_r_cpu["ratio"] if vs_r_cpu else 1.0,
                         "cpu_p50_ms": stats.get("cpu_p50"),
                         "noisy": bool((vs_t and vs_t["noisy"]) or (vs_r and vs_r["noisy"]))}
        speed[str(seq)] = per
    cpu = cpu_summary()
    teacher_size = engines["teacher fp32"]["size_bytes"]
    print(f"CPU: {cpu['model']}; AVX2 {'yes' if cpu['avx2'] else 'no'}; AVX-512 "
          f"{', '.join(cpu['avx512']) or 'no'}; VNNI {', '.join(cpu['vnni']) or 'no'}")
    print(f"batch 1, {args.threads} thread(s), {args.runs} timed calls per engine, interleaved; "
          f"accuracy on {len(ctx.encoded('test').labels)} test texts")
    for seq, per in speed.items():
        print(f"\nseq_len {seq}")
        print(f"{'engine':<28}{'acc':>8}{'MB':>8}{'size/teacher':>14}{'p50 ms':>9}"
              f"{'vs teacher':>12}{'vs t+qdyn':>11}{'(CPU time)':>12}")
        for name, row in per.items():
            e = engines[name]
            print(f"{name:<28}{e['accuracy']:>8.4f}{e['size_bytes'] / 1e6:>8.1f}"
                  f"{e['size_bytes'] / teacher_size:>14.3f}{row['p50_ms']:>9.2f}"
                  f"{row['speedup_vs_teacher']:>11.2f}x{row['speedup_vs_reference']:>10.2f}x"
                  f"{row['speedup_vs_reference_cpu']:>11.2f}x"
                  f"{' (noisy)' if row['noisy'] else ''}")
    for name, e in engines.items():
        print(f"{name}: kernels {e['int8_kernels'] or '-'}, fused {e['fused']}, weight matmuls "
              f"in FP32 {e['fp32_nodes']}, FP32 embedding lookups {e['fp32_embeddings']}")
    atomic_write_json(args.out, {
        "run": str(args.run), "batch_size": 1, "threads": args.threads, "runs": args.runs,
        "warmup": args.warmup, "cpu": cpu, "engines": engines, "speed": speed,
        "test_samples": len(ctx.encoded("test").labels), "environment": environment()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
