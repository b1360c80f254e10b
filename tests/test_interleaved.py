"""Interleaved timing (issue 18): round order, same-round ratios, noise flags, CPU time, and the
int8-vs-FP32 / peak figures (issue 14) and their gate threshold. A fake clock makes every
latency exact, so nothing here depends on how busy the machine is."""

from __future__ import annotations

import types

import numpy as np
import pytest

from edgecompress.bench import latency as latency_mod
from edgecompress.bench import measure_interleaved, speed
from edgecompress.bench.speed import speed_fields, throughput_fields
from edgecompress.errors import ConfigError
from edgecompress.gate import THRESHOLDS, judge


class FakeClock:
    """perf_counter_ns / thread_time_ns / process_time_ns that only move when an engine runs."""

    def __init__(self) -> None:
        self.now = 0
        self.cpu = 0

    def spend(self, wall_ms: float, cpu_ms: float | None = None) -> None:
        self.now += int(wall_ms * 1e6)
        self.cpu += int((wall_ms if cpu_ms is None else cpu_ms) * 1e6)


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(latency_mod, "time", types.SimpleNamespace(
        perf_counter_ns=lambda: fake.now, thread_time_ns=lambda: fake.cpu,
        process_time_ns=lambda: fake.cpu))
    return fake


def test_rounds_rotate_and_split_the_runs(clock) -> None:
    calls: list[str] = []

    def engine(name: str, ms: float):
        def call() -> None:
            calls.append(name)
            clock.spend(ms)
        return call

    result = measure_interleaved({"a": engine("a", 3), "b": engine("b", 2), "c": engine("c", 1)},
                                 warmup=2, runs=7, rounds=3)
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]  # warm-up first, per engine
    timed = calls[6:]
    # Bursts of 3, 2, 2 calls; each round starts one engine later: A B C, B C A, C A B.
    assert timed == (["a"] * 3 + ["b"] * 3 + ["c"] * 3 + ["b"] * 2 + ["c"] * 2 + ["a"] * 2
                     + ["c"] * 2 + ["a"] * 2 + ["b"] * 2)
    assert result.rounds == 3 and result.order == ["a", "b", "c"]
    for name, ms in (("a", 3.0), ("b", 2.0), ("c", 1.0)):
        stats = result.stats[name]
        assert stats.runs == 7 and stats.warmup == 2 and stats.rounds == 3
        assert stats.p50 == pytest.approx(ms) and stats.round_p50_ms == pytest.approx([ms] * 3)
        assert stats.cpu_p50 == pytest.approx(ms) and stats.cpu_clock == "thread_time"
    assert result.paired_ratio("a", "c")["ratio"] == pytest.approx(3.0)
    schedule = result.schedule()
    assert schedule["scheme"] == "interleaved" and schedule["engines"] == ["a", "b", "c"]


def test_same_round_pairs_cancel_a_load_change(clock) -> None:
    """The machine gets 3x slower for the last rounds: p50s mix loaded and idle calls, but every
    same-round ratio is exactly 2 (both engines were slowed in that round)."""
    state = {"calls": 0}

    def engine(ms: float):
        def call() -> None:
            state["calls"] += 1
            load = 3.0 if state["calls"] > 60 else 1.0  # load arrives mid-benchmark
            clock.spend(ms * load, cpu_ms=ms)  # the CPU time of the call itself stays
        return call

    result = measure_interleaved({"teacher": engine(2.0), "student": engine(1.0)},
                                 warmup=0, runs=50, rounds=10)
    pair = result.paired_ratio("teacher", "student")
    assert pair["ratio"] == pytest.approx(2.0) and not pair["noisy"]
    assert pair["rounds"] == 10 and pair["spread"]["rel_iqr"] == pytest.approx(0.0)
    cpu = result.paired_ratio("teacher", "student", cpu=True)
    assert cpu["ratio"] == pytest.approx(2.0)
    # The per-engine round spread shows the load change that the ratio cancelled.
    assert result.stats["student"].round_spread["max"] == pytest.approx(3.0)
    assert result.stats["student"].round_spread["min"] == pytest.approx(1.0)


def test_rounds_that_disagree_are_flagged_noisy(clock) -> None:
    state = {"round": 0}

    def teacher() -> None:
        clock.spend(2.0)

    def student() -> None:
        # Odd rounds the student alone is slowed (a neighbour hit only its burst).
        clock.spend(1.0 if state["round"] % 2 == 0 else 1.6)

    def marker() -> None:  # a cheap third engine that counts rounds
        state["round"] += 1
        clock.spend(0.01)

    result = measure_interleaved({"marker": marker, "teacher": teacher, "student": student},
                                 warmup=0, runs=10, rounds=10)
    pair = result.paired_ratio("teacher", "student")
    assert pair["noisy"] and pair["spread"]["rel_iqr"] > latency_mod.NOISE_THRESHOLD
    assert pair["spread"]["min"] < pair["ratio"] < pair["spread"]["max"]


def test_time_budget_stops_at_min_runs(clock) -> None:
    result = measure_interleaved({"a": lambda: clock.spend(1.0), "b": lambda: clock.spend(1.0)},
                                 warmup=0, runs=100, rounds=10, max_seconds=1e-6, min_runs=23)
    for stats in result.stats.values():
        assert stats.runs == 23 and stats.stopped_by == "time_budget"
    assert result.stopped_by == "time_budget"
    assert len(result.round_ms["a"]) == len(result.round_ms["b"]) == result.rounds


def test_multithreaded_engines_use_process_time(clock) -> None:
    result = measure_interleaved({"a": lambda: clock.spend(1.0)}, warmup=0, runs=5,
                                 threads={"a": 4})
    assert result.stats["a"].cpu_clock == "process_time" and result.stats["a"].threads == 4


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ConfigError):
        measure_interleaved({}, runs=5)
    with pytest.raises(ConfigError):
        measure_interleaved({"a": lambda: None}, runs=0)


def _two_engine_result(clock, int8_ms: float):
    return measure_interleaved({"teacher": lambda: clock.spend(4.0),
                                "fp32": lambda: clock.spend(1.0),
                                "int8": lambda: clock.spend(int8_ms)}, warmup=0, runs=20)


def test_speed_fields_report_int8_vs_fp32(clock) -> None:
    fast = speed_fields(_two_engine_result(clock, 0.5), student="int8", teacher="teacher",
                        fp32_twin="fp32")
    assert fast["speedup_vs_teacher"] == pytest.approx(8.0) and not fast["speedup_noisy"]
    assert fast["int8_speedup_vs_fp32"] == pytest.approx(2.0)
    assert fast["fp32_latency_ms"]["p50"] == pytest.approx(1.0)
    assert "int8_not_faster" not in fast and "notes" not in fast
    slow = speed_fields(_two_engine_result(clock, 1.25), student="int8", teacher="teacher",
                        fp32_twin="fp32")
    assert slow["int8_speedup_vs_fp32"] == pytest.approx(0.8) and slow["int8_not_faster"]
    assert "not faster than the FP32 engine" in slow["notes"][0]
    # An fp32 target is its own twin: no int8 figures.
    assert "int8_speedup_vs_fp32" not in speed_fields(
        _two_engine_result(clock, 1.0), student="fp32", teacher="teacher", fp32_twin="fp32")


def test_throughput_against_the_isa_peak(monkeypatch) -> None:
    info = types.SimpleNamespace(int8_peak_macs_per_cycle=32, fp32_peak_macs_per_cycle=16,
                                 clock_ghz=2.5, clock_source="test", isa="avx2")
    monkeypatch.setattr(speed, "_cpu_info", lambda: info)
    out = throughput_fields(2_000_000, 0.1, batch_size=1, threads=2)["throughput"]
    assert out["gmacs_per_s"] == pytest.approx(20.0)  # 2e6 MACs in 0.1 ms
    assert out["peak"]["gmacs_per_s"] == pytest.approx(32 * 2.5 * 2)
    assert out["peak_fraction"] == pytest.approx(20.0 / 160.0)
    assert "32 int8 MAC/cycle/core (avx2) x 2.5 GHz x 2 thread(s)" == out["peak"]["formula"]
    assert throughput_fields(None, 0.1) == {}
    monkeypatch.setattr(speed, "_cpu_info", lambda: None)  # no ISA module: GMAC/s only
    bare = throughput_fields(1_000_000, 1.0)["throughput"]
    assert bare["gmacs_per_s"] == pytest.approx(1.0) and bare["peak"] is None


def test_real_cpu_info_gives_a_peak() -> None:
    out = throughput_fields(10**6, 1.0)["throughput"]
    if out["peak"] is None:
        pytest.skip("edgecompress.isa not available in this checkout")
    assert out["peak"]["macs_per_cycle"] > 0 and out["peak"]["formula"]


def test_gate_min_int8_speedup() -> None:
    assert "min_int8_speedup" in THRESHOLDS
    targets = [{"name": "slow", "status": "ok", "int8_speedup_vs_fp32": 0.9},
               {"name": "fast", "status": "ok", "int8_speedup_vs_fp32": 1.8},
               {"name": "fp32", "status": "ok"}]
    gate = judge(targets, {"min_int8_speedup": 1.0})
    assert not gate["passed"] and len(gate["violations"]) == 1
    assert "slow: int8 engine 0.90x vs its FP32 twin" in gate["violations"][0]
    outcomes = {c["target"]: c["outcome"] for c in gate["checks"] if c["check"] == "int8_speedup"}
    assert outcomes == {"slow": "failed", "fast": "passed", "fp32": "skipped"}


def test_recipe_gate_accepts_min_int8_speedup() -> None:
    from edgecompress.recipe import GateConfig

    assert GateConfig(min_int8_speedup=1.2).min_int8_speedup == 1.2
    with pytest.raises(ValueError):
        GateConfig(min_int8_speedup=0)


def test_round_medians_are_ordered(clock) -> None:
    result = _two_engine_result(clock, 0.5)
    for stats in result.stats.values():
        assert len(stats.round_p50_ms) == stats.rounds == result.rounds
        assert stats.min <= float(np.median(stats.round_p50_ms)) <= stats.max


def test_speed_section_of_report_md(clock) -> None:
    from edgecompress.bench.speed import speed_markdown

    result = _two_engine_result(clock, 1.25)
    entry = {"name": "cpu-int8", "status": "ok", "precision": "int8",
             "latency_ms": result.stats["int8"].to_dict(),
             **speed_fields(result, student="int8", teacher="teacher", fp32_twin="fp32"),
             "throughput": {"gmacs_per_s": 1.5, "peak_fraction": 0.25,
                            "peak": {"formula": "32 int8 MAC/cycle/core (avx2) x 3.0 GHz x 1",
                                     "gmacs_per_s": 96.0, "clock_source": "test"}}}
    entry["speedup_noisy"] = True
    lines = "\n".join(speed_markdown({"targets": [entry, {"name": "x", "status": "skipped"}]}))
    assert "### Speed (interleaved rounds)" in lines and "20 interleaved rounds" in lines
    assert "| cpu-int8 | 3.20x (noisy) |" in lines and "| 0.80x |" in lines
    assert "| 1.50 | 25.0 |" in lines and "Peak (int8): 32 int8 MAC/cycle/core" in lines
    assert "- cpu-int8: int8 engine is not faster" in lines
    assert speed_markdown({"targets": [{"name": "x", "status": "skipped"}]}) == []
