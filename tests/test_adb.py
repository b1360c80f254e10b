"""adb benchmark: command lines, the benchmark_model output parser, and a live run on a phone.

The parser is tested on real ``benchmark_model`` output (tests/data/benchmark_model_*.txt, each
file's first line names where it was published). The live test needs ``adb``, an attached
device and ``$EDGECOMPRESS_BENCHMARK_MODEL``; it skips naming whichever is missing.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from edgecompress.bench.adb import (
    BENCHMARK_MODEL_ENV,
    adb_availability,
    benchmark_args,
    parse_benchmark_output,
    plan_adb_benchmark,
)
from edgecompress.errors import ConfigError, DataError

DATA = Path(__file__).parent / "data"


def test_parse_android_benchmark_model_output():
    got = parse_benchmark_output((DATA / "benchmark_model_android_adb.txt").read_text())
    assert got["tool"] == "benchmark_model" and got["threads"] == 4 and got["runs"] == 50
    assert got["mean"] == pytest.approx(33.2094)
    assert got["stdev"] == pytest.approx(0.450)
    assert got["min"] == pytest.approx(32.641) and got["max"] == pytest.approx(34.005)
    assert got["init_ms"] == pytest.approx(0.855)
    assert got["first_inference_ms"] == pytest.approx(49.060)
    assert got["warmup_avg_ms"] == pytest.approx(34.8251)
    assert got["p50"] is None and got["xnnpack"] is False


def test_parse_xnnpack_int8_output_uses_timed_runs_not_warmup():
    got = parse_benchmark_output((DATA / "benchmark_model_rpi4_xnnpack_int8.txt").read_text())
    assert got["xnnpack"] is True and got["threads"] == 4
    assert got["runs"] == 50 and got["mean"] == pytest.approx(55.0432)  # not the count=9 line
    assert got["warmup_avg_ms"] == pytest.approx(57.7582)
    assert got["init_ms"] == pytest.approx(18.777)


def test_parse_bundled_python_tool_output():
    text = """
========================================
 BENCHMARK RESULTS
========================================
Model initialization:  5.39 ms
Warmup (first):        0.12 ms
Warmup (avg):          0.02 ms (20 runs)
Inference (avg):       0.01 ms (200 runs)
Inference (min):       0.01 ms
Inference (max):       0.03 ms
Inference (median):    0.01 ms
Inference (std):       0.00 ms
Inference (p5):        0.01 ms
Inference (p95):       0.02 ms
Fully accelerated:     True
========================================
"""
    got = parse_benchmark_output(text)
    assert got["tool"] == "benchmark_litert_model" and got["runs"] == 200
    assert got["p50"] == 0.01 and got["max"] == 0.03 and got["init_ms"] == 5.39


def test_parse_failure_quotes_the_tool():
    with pytest.raises(DataError, match="Failed to load model"):
        parse_benchmark_output("STARTING!\nGraph: [x.tflite]\nFailed to load model x.tflite\n")


def test_adb_command_lines_are_quoted(tmp_path):
    model, tool = tmp_path / "my model.tflite", tmp_path / "benchmark_model"
    plan = plan_adb_benchmark(model, tool, threads=4, warmup=20, runs=200, serial="R5CT",
                              workdir="/data/local/tmp/edge compress")
    assert plan.setup[0] == ["adb", "-s", "R5CT", "shell",
                             "mkdir -p '/data/local/tmp/edge compress'"]
    assert plan.setup[1] == ["adb", "-s", "R5CT", "push", str(model),
                             "/data/local/tmp/edge compress/model.tflite"]
    assert plan.setup[2][3:] == ["push", str(tool), "/data/local/tmp/edge compress/benchmark_model"]
    remote = plan.run[4]
    assert plan.run[:4] == ["adb", "-s", "R5CT", "shell"] and len(plan.run) == 5
    # The device shell must split the command back into exactly the intended argv.
    argv = shlex.split(remote)
    assert argv[0] == "/data/local/tmp/edge compress/benchmark_model"
    assert "--graph=/data/local/tmp/edge compress/model.tflite" in argv
    assert {"--num_threads=4", "--use_xnnpack=true", "--num_runs=200",
            "--warmup_runs=20"} <= set(argv)
    assert not any("pull" in cmd for cmd in plan.all())
    assert plan.cleanup[0][-1] == "rm -f '/data/local/tmp/edge compress/model.tflite'"


def test_adb_without_serial_and_bad_counts(tmp_path):
    plan = plan_adb_benchmark(tmp_path / "m.tflite", tmp_path / "bm", threads=1)
    assert plan.run[:2] == ["adb", "shell"]
    with pytest.raises(ConfigError, match="threads"):
        plan_adb_benchmark(tmp_path / "m.tflite", tmp_path / "bm", threads=0)


def test_live_adb_benchmark(tmp_path):
    """On a phone: push an FP32 .tflite of the tiny model and benchmark it there."""
    ok, why = adb_availability()
    if not ok:
        pytest.skip(why)
    if not os.environ.get(BENCHMARK_MODEL_ENV):
        pytest.skip(f"{BENCHMARK_MODEL_ENV} not set (path of TFLite's android_aarch64 "
                    "benchmark_model)")
    pytest.importorskip("litert_torch", reason="litert_torch not installed "
                        "(pip install 'edgecompress[tflite]')")
    import torch

    from edgecompress.bench.adb import run_adb_benchmark
    from edgecompress.export.tflite import export_tflite
    from edgecompress.models.tiny import build_builtin

    model = build_builtin("mobilenet", num_classes=10, in_channels=1, width=0.5, depth=1)
    path = export_tflite(model, torch.zeros(1, 1, 8, 8), tmp_path / "m.tflite")
    got = run_adb_benchmark(path, threads=1, warmup=5, runs=50)
    assert got["runs"] == 50 and got["mean"] > 0


def test_benchmark_model_is_told_the_inputs_and_their_integer_ranges():
    """Text models on a phone: token ids must stay inside the vocabulary, so the integer inputs
    are named, shaped and given value ranges (benchmark_model honours ranges only for inputs
    named in --input_layer)."""
    from edgecompress.bench.adb import InputSpec

    inputs = [InputSpec("serving_default_args_0:0", (1, 24), (0, 199)),
              InputSpec("serving_default_args_1:0", (1, 24), (1, 1)),
              InputSpec("pixels", (1, 3, 8, 8), None)]
    with pytest.raises(ConfigError, match="holds ',' or ':'"):
        benchmark_args("m.tflite", threads=2, warmup=1, runs=10, inputs=inputs)
    inputs = [InputSpec("ids", (1, 24), (0, 199)), InputSpec("mask", (1, 24), (1, 1)),
              InputSpec("pixels", (1, 3, 8, 8), None)]
    flags = benchmark_args("m.tflite", threads=2, warmup=1, runs=10, inputs=inputs)
    assert flags[-3:] == ["--input_layer=ids,mask,pixels",
                          "--input_layer_shape=1,24:1,24:1,3,8,8",
                          "--input_layer_value_range=ids,0,199:mask,1,1"]
    assert not any(f.startswith("--input_layer") for f in
                   benchmark_args("m.tflite", threads=2, warmup=1, runs=10))
