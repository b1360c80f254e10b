"""trtexec: command lines per TensorRT version, and the summary parser on real trtexec output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecompress.bench.trtexec import (
    compute_times_ms,
    decode_version,
    latency_from_summary,
    parse_trtexec_summary,
    trtexec_command,
)
from edgecompress.errors import ConfigError, ModelError

DATA = Path(__file__).parent / "data"


def _read(name: str) -> str:
    return (DATA / name).read_text()


def test_trt10_summary_with_p90():
    s = parse_trtexec_summary(_read("trtexec_trt10_x86.txt"))
    assert s.gpu_compute_ms == {"min": 5.34595, "max": 13.3388, "mean": 7.58404,
                                "median": 7.14139, "p90": 10.2881, "p95": 10.8175,
                                "p99": 12.9485}
    assert s.throughput_qps == 130.298
    assert s.latency_ms["median"] == 7.16092 and s.h2d_ms["p99"] == 0.0515137
    assert s.total_gpu_compute_s == 2.96536 and s.total_host_walltime_s == 3.00082
    lat = latency_from_summary(s, warmup=10, batch_size=1, input_shape=[1, 3, 224, 224])
    assert (lat["p50"], lat["p90"], lat["p99"]) == (7.14139, 10.2881, 12.9485)
    assert lat["runs"] == 391  # 2965.36 ms of GPU time / 7.58404 ms per run
    assert lat["source"] == "trtexec GPU Compute Time"


def test_trt8_jetson_summary_without_p90():
    s = parse_trtexec_summary(_read("trtexec_trt8_jetson_nano.txt"))
    assert s.gpu_compute_ms["median"] == 100.67 and s.gpu_compute_ms["p99"] == 103.805
    assert "p90" not in s.gpu_compute_ms
    assert s.end_to_end_ms["median"] == 101.105  # TensorRT 8's extra line, not confused
    lat = latency_from_summary(s, warmup=0)
    assert lat["p90"] is None and lat["p50"] == 100.67  # never guessed


def test_status_line_gives_version():
    s = parse_trtexec_summary(_read("trtexec_trt84_orin_passed.txt"))
    assert s.status == "PASSED" and s.tensorrt_version == "8.4.1"
    assert s.gpu_compute_ms["mean"] == 7.78232 and s.d2h_ms["max"] == 1.21045
    assert decode_version(100300) == "10.3.0" and decode_version(8601) == "8.6.1"


def test_failed_run_is_a_model_error():
    # Constructed in trtexec's format (a failed build prints no summary).
    text = ("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec --onnx=m.onnx\n"
            "[E] [TRT] ModelImporter.cpp:949: ERROR: input: node 'Unique' not supported\n"
            "&&&& FAILED TensorRT.trtexec [TensorRT v100300] # trtexec --onnx=m.onnx\n")
    with pytest.raises(ModelError, match="(?s)no performance summary.*Unique"):
        parse_trtexec_summary(text)


def test_command_lines_per_version():
    trt10 = trtexec_command(onnx="m.onnx", save_engine="m.engine", precision="int8",
                            tensorrt_major=10, iterations=500, warmup_ms=300,
                            shapes={"x": [1, 1, 8, 8]}, export_times="t.json")
    assert trt10[1:] == ["--onnx=m.onnx", "--saveEngine=m.engine", "--int8", "--fp16",
                         "--shapes=x:1x1x8x8", "--warmUp=300", "--iterations=500",
                         "--duration=0", "--avgRuns=1", "--exportTimes=t.json"]
    trt11 = trtexec_command(onnx="m.onnx", precision="int8", tensorrt_major=11)
    assert "--int8" not in trt11 and "--fp16" not in trt11
    with pytest.raises(ConfigError, match="strongly typed"):
        trtexec_command(onnx="m.onnx", precision="fp16", tensorrt_major=11)
    dla = trtexec_command(onnx="m.onnx", precision="fp16", dla_core=1)
    assert "--useDLACore=1" in dla and "--allowGPUFallback" in dla
    assert "--allowGPUFallback" not in trtexec_command(onnx="m.onnx", precision="fp16",
                                                       dla_core=0, gpu_fallback=False)
    load = trtexec_command(load_engine="a b.engine", build_only=False)
    assert load[1] == "--loadEngine=a b.engine" and "--int8" not in load
    with pytest.raises(ConfigError, match="exactly one"):
        trtexec_command(onnx="a.onnx", load_engine="b.engine")
    with pytest.raises(ConfigError, match="dla_core"):
        trtexec_command(onnx="a.onnx", precision="int8", dla_core=-1)


def test_export_times(tmp_path):
    path = tmp_path / "times.json"
    path.write_text(json.dumps([{"startComputeMs": 1.0, "computeMs": 0.5, "latencyMs": 0.7},
                                {"startComputeMs": 2.0, "computeMs": 0.25, "latencyMs": 0.4}]))
    assert compute_times_ms(path) == [0.5, 0.25]
    path.write_text("[]")
    with pytest.raises(ModelError, match="computeMs"):
        compute_times_ms(path)
