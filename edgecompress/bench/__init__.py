"""Latency and accuracy benchmarks of engine runners."""

from edgecompress.bench.accuracy import (
    benchmark_runner,
    benchmark_runners,
    evaluate_accuracy,
    timed_call,
)
from edgecompress.bench.latency import (
    InterleavedResult,
    LatencyStats,
    measure_interleaved,
    measure_latency,
)
from edgecompress.bench.parity import parity_summary, snr_db

__all__ = ["InterleavedResult", "LatencyStats", "benchmark_runner", "benchmark_runners",
           "evaluate_accuracy", "measure_interleaved", "measure_latency", "parity_summary",
           "snr_db", "timed_call"]
