"""Latency and accuracy benchmarks of engine runners."""

from edgecompress.bench.accuracy import benchmark_runner, evaluate_accuracy
from edgecompress.bench.latency import LatencyStats, measure_latency

__all__ = ["LatencyStats", "benchmark_runner", "evaluate_accuracy", "measure_latency"]
