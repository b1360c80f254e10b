"""Latency and accuracy benchmarks of engine runners."""

from edgecompress.bench.accuracy import benchmark_runner, evaluate_accuracy, timed_call
from edgecompress.bench.latency import LatencyStats, measure_latency
from edgecompress.bench.parity import parity_summary, snr_db

__all__ = ["LatencyStats", "benchmark_runner", "evaluate_accuracy", "measure_latency",
           "parity_summary", "snr_db", "timed_call"]
