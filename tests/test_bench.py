"""Tests for edgecompress.bench: latency statistics, accuracy and the combined benchmark."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from edgecompress.backends.base import Runner
from edgecompress.bench import LatencyStats, benchmark_runner, evaluate_accuracy, measure_latency
from edgecompress.errors import ConfigError, DataError


def test_stats_from_synthetic_samples() -> None:
    samples = [float(v) for v in range(1, 101)]  # 1..100 ms
    stats = LatencyStats.from_samples(samples, warmup=3, threads=2, batch_size=4)
    assert stats.p50 == pytest.approx(50.5)
    assert stats.p90 == pytest.approx(90.1)
    assert stats.p99 == pytest.approx(99.01)
    assert stats.mean == pytest.approx(50.5)
    assert stats.stdev == pytest.approx(float(np.std(samples, ddof=1)))
    assert (stats.min, stats.max) == (1.0, 100.0)
    assert (stats.runs, stats.warmup, stats.threads, stats.batch_size) == (100, 3, 2, 4)
    assert stats.samples_ms == samples
    plain = stats.to_dict()
    assert "samples_ms" not in plain and plain["p99"] == pytest.approx(99.01)
    full = json.loads(json.dumps(stats.to_dict(include_samples=True)))
    assert full["samples_ms"] == samples


def test_single_sample_has_zero_stdev() -> None:
    stats = LatencyStats.from_samples([2.5])
    assert stats.stdev == 0.0 and stats.p50 == stats.p99 == 2.5


def test_measure_latency_on_sleeps() -> None:
    delays = iter([0.0] * 2 + [0.002, 0.002, 0.002, 0.002, 0.008])  # 2 warmup, then 5 timed
    calls = []

    def fn() -> None:
        calls.append(1)
        time.sleep(next(delays))

    stats = measure_latency(fn, warmup=2, runs=5, threads=3, batch_size=8)
    assert len(calls) == 7
    assert stats.runs == 5 and len(stats.samples_ms) == 5
    assert (stats.warmup, stats.threads, stats.batch_size) == (2, 3, 8)
    assert stats.min >= 2.0  # sleep never returns early
    assert stats.samples_ms[-1] >= 8.0
    assert stats.max == max(stats.samples_ms) >= 8.0
    assert stats.min <= stats.p50 <= stats.p90 <= stats.p99 <= stats.max


@pytest.mark.parametrize(("warmup", "runs"), [(0, 0), (-1, 5)])
def test_measure_latency_rejects_bad_counts(warmup: int, runs: int) -> None:
    with pytest.raises(ConfigError):
        measure_latency(lambda: None, warmup=warmup, runs=runs)


LOGITS = np.array([[0.9, 0.1, 0.0], [0.1, 0.8, 0.1], [0.0, 0.2, 0.7], [0.6, 0.3, 0.1]],
                  dtype=np.float32)


class TableRunner(Runner):
    """Returns the logits row indexed by each input's value; records batch shapes."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def run(self, x: np.ndarray) -> np.ndarray:
        self.shapes.append(x.shape)
        return LOGITS[x.reshape(len(x), -1)[:, 0].astype(int)]

    @property
    def input_name(self) -> str:
        return "input"

    @property
    def threads(self) -> int:
        return 2


def test_accuracy_on_known_logits() -> None:
    x = np.arange(4, dtype=np.float32).reshape(4, 1)
    y = np.array([0, 1, 2, 1])  # last prediction is class 0 -> 3/4 correct
    runner = TableRunner()
    accuracy, logits = evaluate_accuracy(runner, x, y, batch_size=3)
    assert accuracy == pytest.approx(0.75)
    np.testing.assert_array_equal(logits, LOGITS)
    assert runner.shapes == [(3, 1), (1, 1)]
    accuracy_fn, _ = evaluate_accuracy(lambda b: LOGITS[b[:, 0].astype(int)], x, y)
    assert accuracy_fn == accuracy
    with pytest.raises(DataError):
        evaluate_accuracy(runner, x, y[:3])


def test_benchmark_runner() -> None:
    x = np.arange(4, dtype=np.float32).reshape(4, 1)
    y = np.array([0, 1, 2, 0])
    runner = TableRunner()
    result = benchmark_runner(runner, x, y, warmup=1, runs=3, batch_size=2)
    assert result["accuracy"] == 1.0
    assert result["logits"].shape == (4, 3)
    latency = result["latency_ms"]
    assert (latency["runs"], latency["warmup"], latency["batch_size"]) == (3, 1, 2)
    assert latency["threads"] == 2 and "samples_ms" not in latency
    assert runner.shapes[1:] == [(2, 1)] * 4  # 1 warmup + 3 timed calls on the first 2 samples
    with pytest.raises(ConfigError):
        benchmark_runner(runner, x, y, warmup=0, runs=1, batch_size=5)
