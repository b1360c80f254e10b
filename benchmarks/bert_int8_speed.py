"""INT8 student vs FP32 teacher on ONNX Runtime at sequence length 128 (batch 1, 1 thread).

Reads a finished text run (``edgecompress run examples/text-classification.yaml --out
runs/text``): the FP32 teacher as optimized by ``onnxruntime.transformers.optimizer``
(``export/teacher.opt.onnx``), the FP32 student (``export/student.opt.onnx``) and the INT8
student (``export/student.int8.onnx``). The engines are timed in interleaved rounds in one
process (same machine, same run), so background load hits all of them alike; the p50 over all
rounds' samples is reported. Prints a table and writes ``benchmarks/results/bert_int8_speed.json``.

    python benchmarks/bert_int8_speed.py --run runs/text
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np

from edgecompress.bench import LatencyStats, measure_latency
from edgecompress.io import atomic_write_json
from edgecompress.report import environment
from edgecompress.text.export import ort_session
from edgecompress.text.quant import kernel_report

ENGINES = {"teacher fp32 (ORT-optimized)": "teacher.opt.onnx",
           "student fp32 (ORT-optimized)": "student.opt.onnx",
           "student int8": "student.int8.onnx"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/text"))
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=60, help="timed calls per engine per round")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "bert_int8_speed.json")
    args = parser.parse_args()
    export = args.run / "export"
    from transformers import AutoTokenizer

    teacher_dir = args.run / "teacher" / "model"
    config = json.loads((teacher_dir / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(teacher_dir, local_files_only=True)
    rng = np.random.default_rng(0)  # token values do not change the work; the length does
    ids = rng.integers(1000 if config["vocab_size"] > 2000 else 5, config["vocab_size"],
                       size=(1, args.seq_len), dtype=np.int64)
    ids[0, 0], ids[0, -1] = tok.cls_token_id, tok.sep_token_id
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    sessions = {name: ort_session(export / file, args.threads) for name, file in ENGINES.items()}
    samples: dict[str, list[float]] = {name: [] for name in ENGINES}
    for _ in range(args.rounds):
        for name, session in sessions.items():
            stats = measure_latency(functools.partial(session.run, None, feed), warmup=5,
                                    runs=args.runs, threads=args.threads)
            samples[name] += stats.samples_ms
    summary = {name: LatencyStats.from_samples(s, threads=args.threads,
                                               input_shape=list(ids.shape)).to_dict()
               for name, s in samples.items()}
    teacher_p50 = summary["teacher fp32 (ORT-optimized)"]["p50"]
    kernels = kernel_report(export / "student.int8.onnx")
    print(f"seq_len {args.seq_len}, batch 1, {args.threads} thread(s), {args.rounds} rounds x "
          f"{args.runs} runs")
    print(f"{'engine':<32}{'p50 ms':>10}{'p90 ms':>10}{'speedup vs teacher':>20}")
    for name, s in summary.items():
        s["speedup_vs_teacher_p50"] = teacher_p50 / s["p50"]
        print(f"{name:<32}{s['p50']:>10.3f}{s['p90']:>10.3f}{s['speedup_vs_teacher_p50']:>19.2f}x")
    print(f"int8 kernels in the student engine: {kernels['int8_kernels']}, "
          f"weight matmuls left in FP32: {len(kernels['fp32_nodes'])}")
    atomic_write_json(args.out, {
        "run": str(args.run), "seq_len": args.seq_len, "batch_size": 1, "threads": args.threads,
        "rounds": args.rounds, "runs_per_round": args.runs, "engines": summary,
        "int8_kernels": kernels["int8_kernels"], "fp32_nodes": kernels["fp32_nodes"],
        "environment": environment()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
