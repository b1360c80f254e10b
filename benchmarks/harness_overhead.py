"""How much does the latency harness add on top of a bare loop around ``session.run``?

Both loops run in the same process on the same ONNX Runtime session and input, interleaved
round by round so drift (frequency, other load) hits both alike. Reported per call:

* ``bare``: wall time of ``for _ in range(n): session.run(None, feed)`` divided by n;
* ``harness loop``: wall time of ``measure_latency``'s timed loop divided by its runs (includes
  its two clock reads and the list store per call, i.e. what the harness costs);
* ``harness mean`` / ``harness p50``: what the harness reports as latency.

The overhead that matters is ``harness mean`` vs ``bare``: it is the bias of the reported numbers
(the contract is < 5 %). Prints a table and writes JSON (``--json``).

    .venv/bin/python benchmarks/harness_overhead.py [--model student.onnx] [--runs 2000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def tiny_cnn(path: Path) -> Path:
    """A digits-sized CNN (conv 1->8, relu, conv 8->16, relu, avgpool, gemm -> 10) as ONNX."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.1, n)
             for n, s in (("w1", (8, 1, 3, 3)), ("w2", (16, 8, 3, 3)), ("wf", (16, 10)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "wf"], ["logits"])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, path)
    return path


def main() -> None:
    """Measure and print the table (see the module docstring)."""
    from edgecompress.backends import get_backend
    from edgecompress.bench import measure_latency, timed_call

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="ONNX file (default: a tiny CNN)")
    ap.add_argument("--runs", type=int, default=2000, help="calls per loop and round")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (median taken)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/harness_overhead.json"))
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or tiny_cnn(Path(tmp) / "tiny.onnx")
        runner = get_backend("onnxruntime").load(model, threads=args.threads)
        shape = [1 if isinstance(d, str) or d is None else d
                 for d in runner.session.get_inputs()[0].shape]
        batch = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        session, feed = runner.session, {runner.input_name: batch}
        call = timed_call(runner, batch)
        for _ in range(200):  # warm both paths up once
            session.run(None, feed)
        rows = []
        for _ in range(args.rounds):
            start = time.perf_counter_ns()
            for _ in range(args.runs):
                session.run(None, feed)
            bare = (time.perf_counter_ns() - start) / 1e6 / args.runs
            stats = measure_latency(call, warmup=0, runs=args.runs)
            via_run = measure_latency(lambda: runner.run(batch), warmup=0, runs=args.runs)
            rows.append({"bare_ms": bare, "harness_loop_ms": stats.seconds * 1e3 / stats.runs,
                         "harness_mean_ms": stats.mean, "harness_p50_ms": stats.p50,
                         "runner_run_mean_ms": via_run.mean})
        runner.close()
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    result = {
        "model": str(args.model or "tiny CNN (1x1x8x8 -> 10)"), "runs": args.runs,
        "rounds": args.rounds, "threads": args.threads, "median": med,
        "overhead_pct": {
            "reported_mean_vs_bare": 100 * (med["harness_mean_ms"] / med["bare_ms"] - 1),
            "harness_loop_vs_bare": 100 * (med["harness_loop_ms"] / med["bare_ms"] - 1),
            "runner_run_vs_bare": 100 * (med["runner_run_mean_ms"] / med["bare_ms"] - 1)},
        "rounds_raw": rows}
    print(f"model: {result['model']}, {args.runs} calls x {args.rounds} interleaved rounds, "
          f"{args.threads} thread(s); medians over rounds")
    print(f"{'loop':<38}{'ms/call':>10}{'vs bare':>10}")
    print(f"{'bare for-loop around session.run':<38}{med['bare_ms']:>10.5f}{'':>10}")
    for label, key in (("harness loop wall / runs", "harness_loop_ms"),
                       ("harness reported mean", "harness_mean_ms"),
                       ("harness reported p50", "harness_p50_ms"),
                       ("timing Runner.run (no prepared feed)", "runner_run_mean_ms")):
        pct = 100 * (med[key] / med["bare_ms"] - 1)
        print(f"{label:<38}{med[key]:>10.5f}{pct:>+9.2f}%")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
